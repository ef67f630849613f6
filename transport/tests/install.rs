//! `bsmtp-ssh postfix-install`: the snippets parse, every placeholder is
//! replaced, the master.cf entry runs the real CLI, and the installer against
//! a scratch Postfix config directory (real postconf and postfix check) is
//! exact in `--dry-run` and idempotent for real.

use std::path::{Path, PathBuf};
use std::process::Command;

use bsmtp_ssh::install::{
    batching_items, has_envid_macro, hub_items, is_ours, leaf_items, leftover_placeholder,
    ours_to_remove, parse_main_cf, parse_master_cf, routes_in_main_cf, routes_in_table,
    routing_hint, spool_items, substitute, table_sources, Item, Values, BATCHING_MAIN_CF,
    BATCHING_MASTER_CF, BATCHING_PLACEHOLDERS, HUB_INJECT_MASTER_CF, LEAF_MAIN_CF, LEAF_MASTER_CF,
    PLACEHOLDERS, SPOOL_MAIN_CF, SPOOL_MASTER_CF, SPOOL_PLACEHOLDERS,
};
use clap::Parser;

const BIN: &str = env!("CARGO_BIN_EXE_bsmtp-ssh");

fn values(transport: &str) -> Values {
    Values {
        program: "/opt/bin/bsmtp-ssh".to_owned(),
        user: "mailpipe".to_owned(),
        transport: transport.to_owned(),
        config: "/etc/bsmtp-ssh/leaf.conf".to_owned(),
        peer: String::new(),
        envid: false,
        spool: false,
        listen: String::new(),
    }
}

#[test]
fn every_placeholder_is_used_and_substituted() {
    let both = format!("{LEAF_MASTER_CF}{LEAF_MAIN_CF}");
    for placeholder in PLACEHOLDERS {
        assert!(both.contains(placeholder), "{placeholder} unused");
    }
    for template in [LEAF_MASTER_CF, LEAF_MAIN_CF] {
        assert!(leftover_placeholder(template).is_some());
        let text = substitute(template, &values("bsmtp")).unwrap();
        assert_eq!(leftover_placeholder(&text), None, "{text}");
    }
}

/// pipe(8) defers every message on a macro it does not know, so
/// `${envid}` goes into the entry only for Postfix 3.9 and later.
#[test]
fn envid_is_passed_only_where_pipe_knows_the_macro() {
    for (version, known) in [
        ("3.7.11", false),
        ("3.8.6", false),
        ("3.9.0", true),
        ("3.10-20240101", true),
        ("4.0", true),
        ("2.11.3", false),
        ("", false),
    ] {
        assert_eq!(has_envid_macro(version), known, "{version}");
    }
    let argv = |envid: bool| {
        let items = leaf_items(&Values {
            envid,
            ..values("bsmtp")
        })
        .unwrap();
        items[0].wanted()
    };
    assert!(
        argv(true).ends_with("--size ${size} --envid ${envid} -- ${recipient}"),
        "{}",
        argv(true)
    );
    assert!(
        argv(false).ends_with("--size ${size} -- ${recipient}"),
        "{}",
        argv(false)
    );
}

#[test]
fn unknown_placeholder_is_an_error() {
    assert_eq!(leftover_placeholder("a@b.c @NEW_ONE@ x"), Some("@NEW_ONE@"));
    assert_eq!(leftover_placeholder("user@EXAMPLE.COM"), None);
    assert!(substitute("x = @NEW@\n", &values("bsmtp")).is_err());
}

#[test]
fn leaf_items_follow_the_transport_name() {
    let items = leaf_items(&values("relay2")).unwrap();
    let keys: Vec<String> = items.iter().map(Item::key).collect();
    assert_eq!(
        keys,
        [
            "master.cf: relay2/unix",
            "main.cf: relay2_destination_recipient_limit",
            "main.cf: relay2_time_limit",
        ]
    );
    let Item::Master { fields, .. } = &items[0] else {
        panic!("{items:?}")
    };
    assert_eq!(
        fields[..8],
        ["relay2", "unix", "-", "n", "n", "-", "-", "pipe"]
    );
    assert!(fields.contains(&"user=mailpipe".to_owned()));
    assert!(fields.contains(&"argv=/opt/bin/bsmtp-ssh".to_owned()));
    assert!(fields.contains(&"null_sender=".to_owned()));
    // bsmtp-ssh dot-stuffs itself: pipe(8) must not do it again.
    assert!(fields.contains(&"flags=q".to_owned()));
}

#[test]
fn time_limit_stays_above_the_deadline() {
    let items = leaf_items(&values("bsmtp")).unwrap();
    let limit = items
        .iter()
        .find_map(|item| match item {
            Item::Main { name, value } if name == "bsmtp_time_limit" => Some(value.clone()),
            _ => None,
        })
        .unwrap();
    let seconds: u64 = limit.strip_suffix('s').unwrap().parse().unwrap();
    assert!(seconds > bsmtp_ssh::config::DEFAULT_DEADLINE, "{limit}");
}

#[test]
fn parsers_follow_postfix_line_rules() {
    let main = parse_main_cf("# c\n\na = 1\n  # indented comment\nb =\n  two words\n").unwrap();
    assert_eq!(
        main,
        [
            Item::Main {
                name: "a".into(),
                value: "1".into()
            },
            Item::Main {
                name: "b".into(),
                value: "two words".into()
            },
        ]
    );
    assert!(parse_main_cf("no equals sign\n").is_err());
    assert!(parse_master_cf("x unix - n n - - \n").is_err());
    let master = parse_master_cf("x unix - n n - - pipe\n  argv=/bin/true\n").unwrap();
    assert_eq!(master[0].wanted(), "x unix - n n - - pipe argv=/bin/true");
}

#[test]
fn routing_hint_names_the_transport() {
    let hint = routing_hint(&values("relay2")).unwrap().join("\n");
    assert!(hint.contains("default_transport = relay2:hub"), "{hint}");
}

/// Replaces pipe(8)'s macros in the `argv=` part of a master.cf entry with
/// sample values, as pipe(8) would, each word one argument.
fn pipe_argv(entry: &str, sender: &str) -> Vec<String> {
    let words: Vec<&str> = entry.split_whitespace().collect();
    let start = words
        .iter()
        .position(|w| w.starts_with("argv="))
        .expect("argv= in the entry");
    let mut argv = vec![words[start].trim_start_matches("argv=").to_owned()];
    argv.extend(words[start + 1..].iter().map(|w| {
        w.replace("${nexthop}", "hub")
            .replace("${sender}", sender)
            .replace("${queue_id}", "4XyZ1AbC")
            .replace("${size}", "4096")
            .replace("${recipient}", "bob@hub.test")
    }));
    argv
}

#[test]
fn snippet_argv_parses_with_the_real_cli() {
    let items = leaf_items(&values("bsmtp")).unwrap();
    for sender in ["alice@leaf.test", ""] {
        let argv = pipe_argv(&items[0].wanted(), sender);
        let cli = bsmtp_ssh::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let shown = format!("{cli:?}");
        assert!(shown.contains(&format!("sender: {sender:?}")), "{shown}");
        assert!(shown.contains("peer: Some(\"hub\")"), "{shown}");
        assert!(shown.contains("recipients: [\"bob@hub.test\"]"), "{shown}");
    }
}

/// A scratch Postfix config directory: postconf -c works on any directory
/// with a main.cf; its own queue and data directories keep `postfix check`
/// away from the system's.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        std::fs::create_dir(path.join("queue")).unwrap();
        std::fs::write(
            path.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {0}/queue\n\
                 data_directory = {0}/data\n",
                path.display()
            ),
        )
        .unwrap();
        std::fs::write(
            path.join("master.cf"),
            "smtp      unix  -       -       n       -       -       smtp\n",
        )
        .unwrap();
        // The peer of the batching installs (postfix-install checks it).
        std::fs::write(
            path.join("bsmtp-ssh.conf"),
            "[peer.hub]\nhost = \"hub.example\"\n",
        )
        .unwrap();
        Scratch { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap()
    }

    /// Runs `bsmtp-ssh postfix-install` on this directory; (exit code,
    /// output with the paths that vary replaced).
    fn install(&self, extra: &[&str]) -> (i32, String) {
        let config = self.path().join("bsmtp-ssh.conf");
        let mut command = Command::new(BIN);
        command
            .arg("postfix-install")
            .arg("--config-directory")
            .arg(self.path());
        // Defaults that keep warnings about this machine out of the output,
        // unless the test gives its own.
        let defaults = [
            ("--user", Path::new("nobody")),
            ("--program", Path::new(BIN)),
            ("--config", &config),
        ];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                command.arg(flag).arg(value);
            }
        }
        let out = command.args(extra).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), self.filter(&text))
    }

    fn filter(&self, text: &str) -> String {
        text.replace(BIN, "[BSMTP_SSH]")
            .replace(&self.path().display().to_string(), "[DIR]")
    }
}

/// `postconf -M bsmtp-ssh/unix`: the entry on one line, as Postfix reads it.
fn postconf_entry(scratch: &Scratch) -> String {
    let out = Command::new("/usr/sbin/postconf")
        .arg("-c")
        .arg(scratch.path())
        .args(["-M", "bsmtp-ssh/unix"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn dry_run_prints_the_commands_and_changes_nothing() {
    let scratch = Scratch::new();
    let before = (scratch.read("main.cf"), scratch.read("master.cf"));
    let (code, output) = scratch.install(&["--dry-run"]);
    assert_eq!(code, 0, "{output}");
    insta::assert_snapshot!(output);
    assert_eq!((scratch.read("main.cf"), scratch.read("master.cf")), before);
}

#[test]
fn install_twice_changes_once() {
    let scratch = Scratch::new();
    let original = (scratch.read("main.cf"), scratch.read("master.cf"));
    let (code, first) = scratch.install(&[]);
    assert_eq!(code, 0, "{first}");
    insta::assert_snapshot!("install_first_run", first);
    let after_first = (scratch.read("main.cf"), scratch.read("master.cf"));
    // The lines added to main.cf and the entry as Postfix reads it back
    // (postconf rewraps master.cf at a width the temp path would shift).
    let added: Vec<&str> = after_first
        .0
        .lines()
        .filter(|line| !original.0.lines().any(|l| l == *line))
        .collect();
    let entry = postconf_entry(&scratch);
    insta::assert_snapshot!(
        "install_written_files",
        scratch.filter(&format!(
            "main.cf:\n{}\nmaster.cf:\n{entry}",
            added.join("\n")
        ))
    );
    assert!(after_first.1.starts_with(&original.1));

    let (code, second) = scratch.install(&[]);
    assert_eq!(code, 0, "{second}");
    assert!(second.contains("\nnothing to change\n"), "{second}");
    assert!(!second.contains("(was:"), "{second}");
    assert_eq!(
        (scratch.read("main.cf"), scratch.read("master.cf")),
        after_first
    );
    // A dry run after the install has nothing to do either.
    let (_, dry) = scratch.install(&["--dry-run"]);
    assert!(dry.contains("dry run: 0 changes not made"), "{dry}");

    // What Postfix itself reads back runs the real CLI.
    let argv = pipe_argv(&entry, "");
    assert_eq!(PathBuf::from(&argv[0]), PathBuf::from(BIN));
    bsmtp_ssh::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
}

#[test]
fn install_replaces_a_different_entry_and_value() {
    let scratch = Scratch::new();
    let (code, _) = scratch.install(&[]);
    assert_eq!(code, 0);
    let status = Command::new("/usr/sbin/postconf")
        .arg("-c")
        .arg(scratch.path())
        .args(["-e", "bsmtp-ssh_time_limit = 60s"])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, output) = scratch.install(&["--user", "daemon"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("main.cf: bsmtp-ssh_time_limit = 1000s (was: 60s)\n"),
        "{output}"
    );
    assert!(output.contains("user=daemon"), "{output}");
    assert!(output.contains("2 changes made"), "{output}");
}

#[test]
fn bad_values_are_refused_before_anything_runs() {
    let scratch = Scratch::new();
    for (flags, says) in [
        (&["--user", "root"][..], "--user root"),
        (&["--transport", "b smtp"][..], "--transport"),
        (&["--config", "relative.conf"][..], "absolute path"),
        (&["--program", "/opt/my bin/bsmtp-ssh"][..], "white space"),
    ] {
        let (code, output) = scratch.install(flags);
        assert_eq!(code, 64, "{flags:?}: {output}");
        assert!(output.contains(says), "{flags:?}: {output}");
    }
    let (code, output) = scratch.install(&["--postconf", "/nonexistent/postconf"]);
    assert_eq!(code, 69, "{output}");
    assert!(output.contains("is Postfix installed?"), "{output}");
}

#[test]
fn missing_config_directory_says_so() {
    let out = Command::new(BIN)
        .args([
            "postfix-install",
            "--config-directory",
            "/nonexistent/postfix",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("/nonexistent/postfix/main.cf: No such file"),
        "{text}"
    );
}

fn batching_values() -> Values {
    Values {
        peer: "hub".to_owned(),
        ..values("bsmtp")
    }
}

#[test]
fn batching_snippets_use_every_placeholder() {
    let both = format!("{BATCHING_MASTER_CF}{BATCHING_MAIN_CF}");
    for placeholder in BATCHING_PLACEHOLDERS {
        assert!(both.contains(placeholder), "{placeholder} unused");
    }
    for template in [BATCHING_MASTER_CF, BATCHING_MAIN_CF] {
        let text = substitute(template, &batching_values()).unwrap();
        assert_eq!(leftover_placeholder(&text), None, "{text}");
    }
}

/// The spawn service runs `bsmtp-ssh lmtp` for the peer, the lmtp
/// transport caches connections to that socket (path without `unix:`) and
/// sends XFORWARD; the hint names the value to route with.
#[test]
fn batching_items_name_the_peer() {
    let items = batching_items(&batching_values()).unwrap();
    let keys: Vec<String> = items.iter().map(Item::key).collect();
    assert_eq!(
        keys,
        [
            "master.cf: bsmtp-hub/unix",
            "master.cf: bsmtp-hub-lmtp/unix",
            "main.cf: bsmtp-hub-lmtp_destination_concurrency_limit",
        ]
    );
    assert_eq!(
        items[0].wanted(),
        "bsmtp-hub unix - n n - - spawn user=mailpipe argv=/opt/bin/bsmtp-ssh lmtp --config /etc/bsmtp-ssh/leaf.conf --peer hub"
    );
    assert!(items[1]
        .wanted()
        .contains("-o lmtp_connection_cache_destinations=private/bsmtp-hub"));
    assert!(items[1]
        .wanted()
        .contains("-o lmtp_send_xforward_command=yes"));
    let hint = routing_hint(&batching_values()).unwrap().join("\n");
    assert!(
        hint.contains("default_transport = bsmtp-hub-lmtp:unix:private/bsmtp-hub"),
        "{hint}"
    );
}

/// The argv the spawn entry runs parses with the real command line.
#[test]
fn batching_argv_parses() {
    let items = batching_items(&batching_values()).unwrap();
    let entry = items[0].wanted();
    let argv: Vec<&str> = entry
        .split_whitespace()
        .skip_while(|w| !w.starts_with("argv="))
        .collect();
    let mut words = vec!["bsmtp-ssh"];
    words.extend(argv.iter().skip(1));
    bsmtp_ssh::Cli::try_parse_from(words).unwrap();
}

fn spool_values() -> Values {
    Values {
        spool: true,
        ..values("bsmtp")
    }
}

/// The spool transport: one pipe(8) entry, service TRANSPORT-spool, that
/// runs `bsmtp-ssh enqueue` for ${nexthop} with the real CLI; the hint
/// shows both ends of store-and-forward.
#[test]
fn spool_items_run_enqueue_for_the_nexthop() {
    let both = format!("{SPOOL_MASTER_CF}{SPOOL_MAIN_CF}");
    for placeholder in SPOOL_PLACEHOLDERS {
        assert!(both.contains(placeholder), "{placeholder} unused");
    }
    let items = spool_items(&spool_values()).unwrap();
    let keys: Vec<String> = items.iter().map(Item::key).collect();
    assert_eq!(keys, ["master.cf: bsmtp-spool/unix"]);
    let entry = items[0].wanted();
    assert!(entry.contains("user=mailpipe"), "{entry}");
    let argv = pipe_argv(&entry, "alice@leaf.test");
    assert_eq!(argv[1], "enqueue");
    let cli = bsmtp_ssh::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let shown = format!("{cli:?}");
    assert!(
        shown.contains("Enqueue(") && shown.contains("peer: \"hub\""),
        "{shown}"
    );
    let hint = routing_hint(&spool_values()).unwrap().join("\n");
    assert!(
        hint.contains("default_transport = bsmtp-spool:hub") && hint.contains("bsmtp-spool:leaf1"),
        "{hint}"
    );
}

fn hub_values(listen: &str) -> Values {
    Values {
        listen: listen.to_owned(),
        ..values("bsmtp")
    }
}

/// `--hub`: one smtpd entry on loopback (or the UNIX socket
/// public/bsmtp-inject) that lets only local clients in, relays for them,
/// takes their XFORWARD; the hint names rsmtp's `inject` value.
#[test]
fn hub_listener_is_a_locked_down_smtpd() {
    assert!(leftover_placeholder(HUB_INJECT_MASTER_CF).is_some());
    let items = hub_items(&hub_values("127.0.0.1:10025")).unwrap();
    let keys: Vec<String> = items.iter().map(Item::key).collect();
    assert_eq!(keys, ["master.cf: 127.0.0.1:10025/inet"]);
    let entry = items[0].wanted();
    assert!(
        entry.starts_with("127.0.0.1:10025 inet n - n - - smtpd "),
        "{entry}"
    );
    for override_ in [
        "-o mynetworks=127.0.0.0/8",
        "-o smtpd_authorized_xforward_hosts=127.0.0.0/8",
        "-o smtpd_client_restrictions=permit_mynetworks,reject",
        "-o smtpd_relay_restrictions=permit_mynetworks,reject",
        "-o smtpd_recipient_restrictions=permit_mynetworks,reject",
    ] {
        assert!(entry.contains(override_), "{override_} missing: {entry}");
    }
    // Address mappings apply: this mail is new to the hub.
    assert!(!entry.contains("no_address_mappings"), "{entry}");
    let hint = routing_hint(&hub_values("127.0.0.1:10025"))
        .unwrap()
        .join("\n");
    assert!(hint.contains("inject = \"smtp:127.0.0.1:10025\""), "{hint}");
    let unix = hub_items(&hub_values("unix")).unwrap();
    assert!(unix[0]
        .wanted()
        .starts_with("bsmtp-inject unix n - n - - smtpd "));
    let hint = routing_hint(&hub_values("unix")).unwrap().join("\n");
    assert!(
        hint.contains("inject = \"smtp:unix:public/bsmtp-inject\""),
        "{hint}"
    );
    for bad in [
        "0.0.0.0:10025",
        "192.0.2.1:25",
        "127.0.0.1",
        "localhost:x",
        "[::1]:0",
    ] {
        assert!(hub_values(bad).validate_listen().is_err(), "{bad}");
    }
    assert!(hub_values("[::1]:10025").validate_listen().is_ok());
}

/// `postfix-install --hub` on a real config directory: the dry run
/// changes nothing, the first run adds the listener, the second changes
/// nothing, and `postfix check` is happy.
#[test]
fn hub_install_is_exact_in_dry_run_and_idempotent() {
    let scratch = Scratch::new();
    let before = (scratch.read("main.cf"), scratch.read("master.cf"));
    let (code, dry) = scratch.install(&["--hub", "--listen", "127.0.0.1:10026", "--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert!(
        dry.contains("master.cf: 127.0.0.1:10026/inet = 127.0.0.1:10026 inet n - n - - smtpd"),
        "{dry}"
    );
    assert!(
        dry.contains("would run: /usr/sbin/postconf -c [DIR] -M '127.0.0.1:10026/inet="),
        "{dry}"
    );
    assert!(dry.contains("dry run: 1 change not made"), "{dry}");
    assert_eq!((scratch.read("main.cf"), scratch.read("master.cf")), before);
    let (code, first) = scratch.install(&["--hub", "--listen", "127.0.0.1:10026"]);
    assert_eq!(code, 0, "{first}");
    assert!(
        first.contains("1 change made") && first.contains("postfix check: ok"),
        "{first}"
    );
    assert!(scratch
        .read("master.cf")
        .contains("smtpd_authorized_xforward_hosts=127.0.0.0/8"));
    let (code, second) = scratch.install(&["--hub", "--listen", "127.0.0.1:10026"]);
    assert_eq!(code, 0, "{second}");
    assert!(
        second.contains("(unchanged)") && second.contains("nothing to change"),
        "{second}"
    );
    let (code, refused) = scratch.install(&["--hub", "--listen", "0.0.0.0:25"]);
    assert_eq!(code, 64, "{refused}");
}

/// Postfix's `FILTER_README` and amavis: the content filter's re-injection
/// listener, which must keep its `-o content_filter=` (without it, filtered
/// mail goes back into the filter, in a loop).
const CONTENT_FILTER_REINJECTION: &str =
    "127.0.0.1:10025 inet n  -       n       -       -       smtpd
    -o content_filter=
    -o local_recipient_maps=
    -o relay_recipient_maps=
    -o smtpd_restriction_classes=
    -o smtpd_delay_reject=no
    -o smtpd_client_restrictions=permit_mynetworks,reject
    -o smtpd_helo_restrictions=
    -o smtpd_sender_restrictions=
    -o smtpd_recipient_restrictions=permit_mynetworks,reject
    -o mynetworks=127.0.0.0/8
    -o smtpd_error_sleep_time=0
    -o smtpd_soft_error_limit=1001
    -o smtpd_hard_error_limit=1000
    -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks
    -o smtpd_authorized_xforward_hosts=127.0.0.0/8
";

/// Debian 12's stock master.cf entry for a bsmtp program of its own.
const DEBIAN_STOCK_BSMTP: &str = "bsmtp     unix  -       n       n       -       -       pipe
  flags=Fq. user=bsmtp argv=/usr/lib/bsmtp/bsmtp -t$nexthop -f$sender $recipient
";

impl Scratch {
    /// Appends `text` to master.cf.
    fn add_master(&self, text: &str) {
        let mut master = self.read("master.cf");
        master.push_str(text);
        std::fs::write(self.path().join("master.cf"), master).unwrap();
    }

    /// Both files, to show that nothing changed.
    fn files(&self) -> (String, String) {
        (self.read("main.cf"), self.read("master.cf"))
    }

    /// `postconf -M SERVICE/TYPE`: the entry on one line, as Postfix reads
    /// it, single-spaced (as postfix-install shows it).
    fn entry(&self, key: &str) -> String {
        let out = Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(self.path())
            .args(["-M", key])
            .output()
            .unwrap();
        fields(&String::from_utf8_lossy(&out.stdout)).join(" ")
    }
}

fn fields(entry: &str) -> Vec<String> {
    entry.split_whitespace().map(str::to_owned).collect()
}

/// "Recognisably ours": every entry the installer writes, also as an
/// earlier version or another program path wrote it, and nothing else at
/// the same place.
#[test]
fn is_ours_knows_our_entries_from_any_version_and_no_others() {
    let mine = |items: Vec<Item>, at: usize| match &items[at] {
        Item::Master { fields, .. } => fields.clone(),
        Item::Main { .. } => panic!("{items:?}"),
    };
    let leaf = mine(leaf_items(&values("bsmtp")).unwrap(), 0);
    assert!(is_ours(&leaf, &leaf));
    // An earlier version's entry, another path to bsmtp-ssh, other values.
    let earlier = fields(
        "bsmtp unix - n n - - pipe flags=q user=bsmtp argv=/usr/local/sbin/bsmtp-ssh \
         deliver --peer ${nexthop} -f ${sender} -- ${recipient}",
    );
    assert!(is_ours(&earlier, &leaf));
    for theirs in [
        // Debian's stock entry.
        "bsmtp unix - n n - - pipe flags=Fq. user=bsmtp argv=/usr/lib/bsmtp/bsmtp \
         -t$nexthop -f$sender $recipient",
        // bsmtp-ssh, but not what the installer puts at this name.
        "bsmtp unix - n n - - pipe user=bsmtp argv=/usr/sbin/bsmtp-ssh enqueue --peer x",
        // Our program under another command.
        "bsmtp unix - n n - - spawn user=bsmtp argv=/usr/sbin/bsmtp-ssh deliver",
        // A name that only ends like ours.
        "bsmtp unix - n n - - pipe user=bsmtp argv=/usr/sbin/not-bsmtp-ssh deliver",
    ] {
        assert!(!is_ours(&fields(theirs), &leaf), "{theirs}");
    }

    let spawn = mine(batching_items(&batching_values()).unwrap(), 0);
    let lmtp = mine(batching_items(&batching_values()).unwrap(), 1);
    assert!(is_ours(
        &fields("bsmtp-hub unix - n n - - spawn user=b argv=/opt/bsmtp-ssh lmtp --peer hub"),
        &spawn
    ));
    assert!(is_ours(
        &fields(
            "bsmtp-hub-lmtp unix - - n - - lmtp -o lmtp_connection_cache_destinations=private/bsmtp-hub"
        ),
        &lmtp
    ));
    assert!(!is_ours(
        &fields("bsmtp-hub-lmtp unix - - n - - lmtp -o lmtp_send_xforward_command=yes"),
        &lmtp
    ));

    for listen in ["unix", "127.0.0.1:10025"] {
        let hub = mine(hub_items(&hub_values(listen)).unwrap(), 0);
        let service = &hub[0];
        let kind = &hub[1];
        // An earlier listener of ours at this place, with fewer overrides.
        let earlier = fields(&format!(
            "{service} {kind} n - n - - smtpd -o syslog_name=postfix/bsmtp-inject \
             -o mynetworks=127.0.0.0/8"
        ));
        assert!(is_ours(&earlier, &hub), "{listen}");
        let filter = parse_master_cf(
            &CONTENT_FILTER_REINJECTION
                .replace("127.0.0.1:10025 inet", &format!("{service} {kind}")),
        )
        .unwrap();
        assert!(!is_ours(&fields(&filter[0].wanted()), &hub), "{listen}");
    }
}

/// Audit M6: `postfix-install --hub` replaced amavis's re-injection
/// listener on 127.0.0.1:10025 (dropping `-o content_filter=`, so filtered
/// mail looped) and exited 0. Now the default is the UNIX socket, which
/// leaves it alone; asked for 127.0.0.1:10025, the install refuses (exit
/// 1, the entry shown, nothing changed, in a dry run too) until --force;
/// after that the entry is ours and a second run changes nothing.
#[test]
fn hub_install_never_replaces_a_content_filter_reinjection_listener() {
    let scratch = Scratch::new();
    scratch.add_master(CONTENT_FILTER_REINJECTION);
    let filter_key = "127.0.0.1:10025/inet";
    let filter = scratch.entry(filter_key);
    assert!(filter.contains("-o content_filter="), "{filter}");

    // The default: the socket, beside the filter's listener.
    let (code, output) = scratch.install(&["--hub"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("master.cf: bsmtp-inject/unix = bsmtp-inject unix n - n - - smtpd "),
        "{output}"
    );
    assert!(
        output.contains("inject = \"smtp:unix:public/bsmtp-inject\""),
        "{output}"
    );
    assert!(!output.contains("TCP listener"), "{output}");
    assert_eq!(scratch.entry(filter_key), filter);
    assert!(scratch
        .read("master.cf")
        .contains(CONTENT_FILTER_REINJECTION));

    // Asked for the filter's own address: refused, in a dry run too.
    let before = scratch.files();
    for dry_run in [true, false] {
        let mut flags = vec!["--hub", "--listen", "127.0.0.1:10025"];
        if dry_run {
            flags.push("--dry-run");
        }
        let (code, output) = scratch.install(&flags);
        assert_eq!(code, 1, "{flags:?}: {output}");
        for says in [
            "postfix-install: error: master.cf: 127.0.0.1:10025/inet exists and is not \
             bsmtp-ssh's entry:\n",
            &format!("\n  {filter}\n"),
            "content filter's re-injection listener",
            "nothing was changed",
            "--listen (unix, or a free loopback port)",
            "--force",
        ] {
            assert!(output.contains(says), "{flags:?}: {says} missing: {output}");
        }
        assert!(!output.contains("would run"), "{output}");
        assert_eq!(scratch.files(), before, "{flags:?}");
    }

    // --force replaces it, and says so; then the entry is ours.
    let (code, forced) = scratch.install(&["--hub", "--listen", "127.0.0.1:10025", "--force"]);
    assert_eq!(code, 0, "{forced}");
    assert!(
        forced.contains("; not bsmtp-ssh's, replaced by --force)")
            && forced.contains("forge XFORWARD"),
        "{forced}"
    );
    let replaced = scratch.entry(filter_key);
    assert!(
        replaced.contains("syslog_name=postfix/bsmtp-inject")
            && !replaced.contains("content_filter"),
        "{replaced}"
    );
    let after = scratch.files();
    let (code, again) = scratch.install(&["--hub", "--listen", "127.0.0.1:10025"]);
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(scratch.files(), after);
}

/// Debian's stock master.cf, as the postfix package ships it (its postinst
/// copies it to /etc/postfix/master.cf on a fresh install).
const DEBIAN_MASTER_CF_DIST: &str = "/usr/share/postfix/master.cf.dist";

/// Regression: on a stock Debian leaf the README's `bsmtp-ssh
/// postfix-install` exited 1, its default service name `bsmtp` being
/// Debian's own entry. With the defaults, against Debian's stock master.cf
/// in a scratch config directory, the install succeeds, `postfix check`
/// passes, everything the package wrote (its `bsmtp` entry included) stays
/// byte for byte, and the new entry is `bsmtp-ssh`, with its main.cf limits
/// under that name.
#[test]
fn default_install_succeeds_beside_debians_stock_master_cf() {
    let stock_master = std::fs::read_to_string(DEBIAN_MASTER_CF_DIST).unwrap_or_else(|err| {
        panic!("read {DEBIAN_MASTER_CF_DIST}: {err}; install Postfix: apt-get install postfix")
    });
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("master.cf"), &stock_master).unwrap();
    let stock = scratch.entry("bsmtp/unix");
    assert!(
        stock.starts_with("bsmtp unix - n n - - pipe ")
            && stock.contains("argv=/usr/lib/bsmtp/bsmtp"),
        "{DEBIAN_MASTER_CF_DIST} no longer has Debian's bsmtp entry: {stock:?}"
    );

    let (code, dry) = scratch.install(&["--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert_eq!(scratch.read("master.cf"), stock_master);
    let (code, output) = scratch.install(&[]);
    assert_eq!(code, 0, "{output}");
    for says in [
        "master.cf: bsmtp-ssh/unix = bsmtp-ssh unix - n n - - pipe ",
        "main.cf: bsmtp-ssh_destination_recipient_limit = 1 (was: unset)\n",
        "main.cf: bsmtp-ssh_time_limit = 1000s (was: unset)\n",
        "postfix check: ok",
        "hint:   default_transport = bsmtp-ssh:hub\n",
    ] {
        assert!(output.contains(says), "{says} missing: {output}");
    }
    assert!(!output.contains("bsmtp/unix"), "{output}");
    // The stock file is still there byte for byte; ours follows it.
    let master = scratch.read("master.cf");
    assert!(master.starts_with(&stock_master), "{master}");
    assert_eq!(scratch.entry("bsmtp/unix"), stock);
    assert!(scratch.entry("bsmtp-ssh/unix").contains(" deliver "));

    // Postfix itself is happy, knows the limits as the transport's own
    // (no "unused parameter" warning), and a second run changes nothing.
    let check = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(scratch.path())
        .arg("check")
        .output()
        .unwrap();
    assert!(
        check.status.success() && check.stderr.is_empty(),
        "postfix check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let limits = Command::new("/usr/sbin/postconf")
        .arg("-c")
        .arg(scratch.path())
        .args([
            "bsmtp-ssh_destination_recipient_limit",
            "bsmtp-ssh_time_limit",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&limits.stdout),
        "bsmtp-ssh_destination_recipient_limit = 1\nbsmtp-ssh_time_limit = 1000s\n"
    );
    assert!(
        limits.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&limits.stderr)
    );
    let after = scratch.files();
    let (code, again) = scratch.install(&[]);
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("\nnothing to change\n"), "{again}");
    assert_eq!(scratch.files(), after);
}

/// Debian's stock `bsmtp` pipe(8) entry (/usr/lib/bsmtp/bsmtp) where an
/// admin asks for `--transport bsmtp`: the install refuses to replace it
/// (exit 1, the entry shown, neither master.cf nor main.cf changed, in a
/// dry run too), the default name installs beside it, --force replaces
/// it, and the install is idempotent after that.
#[test]
fn leaf_install_never_replaces_debians_stock_bsmtp_entry() {
    let scratch = Scratch::new();
    scratch.add_master(DEBIAN_STOCK_BSMTP);
    let stock = scratch.entry("bsmtp/unix");
    assert!(stock.contains("argv=/usr/lib/bsmtp/bsmtp"), "{stock}");
    let before = scratch.files();
    for flags in [
        &["--transport", "bsmtp"][..],
        &["--transport", "bsmtp", "--dry-run"][..],
    ] {
        let (code, output) = scratch.install(flags);
        assert_eq!(code, 1, "{flags:?}: {output}");
        for says in [
            "postfix-install: error: master.cf: bsmtp/unix exists and is not bsmtp-ssh's entry:\n",
            &format!("\n  {stock}\n"),
            "nothing was changed",
            "--transport NAME",
            "--force",
        ] {
            assert!(output.contains(says), "{flags:?}: {says} missing: {output}");
        }
        // Not even the main.cf settings named after the transport.
        assert!(!output.contains("main.cf: "), "{output}");
        assert_eq!(scratch.files(), before, "{flags:?}");
    }

    let (code, beside) = scratch.install(&[]);
    assert_eq!(code, 0, "{beside}");
    assert_eq!(scratch.entry("bsmtp/unix"), stock);
    assert!(scratch.entry("bsmtp-ssh/unix").contains(" deliver "));

    let (code, forced) = scratch.install(&["--transport", "bsmtp", "--force"]);
    assert_eq!(code, 0, "{forced}");
    assert!(
        forced.contains(&format!(
            "(was: {stock}; not bsmtp-ssh's, replaced by --force)\n"
        )),
        "{forced}"
    );
    assert!(scratch.entry("bsmtp/unix").contains(" deliver "));
    let after = scratch.files();
    let (code, again) = scratch.install(&["--transport", "bsmtp"]);
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("\nnothing to change\n"), "{again}");
    assert_eq!(scratch.files(), after);
}

/// The leaf's other entries get the same protection, and every entry is
/// checked before the first write: a foreign lmtp(8) transport at
/// bsmtp-hub-lmtp stops the batching install before its spawn(8) entry,
/// which comes first, is added; a foreign bsmtp-spool stops `--spool`.
#[test]
fn leaf_entries_are_all_checked_before_the_first_write() {
    let scratch = Scratch::new();
    scratch.add_master(
        "bsmtp-hub-lmtp unix - - n - - lmtp\n  -o lmtp_send_xforward_command=yes\n\
         bsmtp-spool unix - n n - - pipe\n  user=nobody argv=/usr/local/bin/spooler ${recipient}\n",
    );
    let before = scratch.files();
    for (flags, key) in [
        (
            &["--batching", "--peer", "hub"][..],
            "master.cf: bsmtp-hub-lmtp/unix",
        ),
        (&["--spool"][..], "master.cf: bsmtp-spool/unix"),
    ] {
        let (code, output) = scratch.install(flags);
        assert_eq!(code, 1, "{flags:?}: {output}");
        assert!(
            output.contains(&format!("{key} exists and is not bsmtp-ssh's entry")),
            "{output}"
        );
        assert_eq!(scratch.files(), before, "{flags:?}");
    }
    assert_eq!(scratch.entry("bsmtp-hub/unix"), "");
}

/// An entry this tool wrote earlier, with another program path and older
/// fields, is ours to update without --force (an admin who installed the
/// pipe transport as `bsmtp`, the old default, keeps it with `--transport
/// bsmtp`); so is an earlier hub listener. Switching the hub to the socket
/// names the TCP listener left behind.
#[test]
fn our_own_earlier_entries_are_updated_without_force() {
    let scratch = Scratch::new();
    scratch.add_master(
        "bsmtp unix - n n - - pipe\n  flags=q user=bsmtp argv=/usr/local/sbin/bsmtp-ssh deliver \
         --peer ${nexthop} -f ${sender} -- ${recipient}\n\
         127.0.0.1:10040 inet n - n - - smtpd\n  -o syslog_name=postfix/bsmtp-inject\n  \
         -o mynetworks=127.0.0.0/8\n",
    );
    let (code, leaf) = scratch.install(&["--transport", "bsmtp"]);
    assert_eq!(code, 0, "{leaf}");
    assert!(
        leaf.contains(
            "(was: bsmtp unix - n n - - pipe flags=q user=bsmtp argv=/usr/local/sbin/bsmtp-ssh"
        ),
        "{leaf}"
    );
    assert!(!leaf.contains("--force"), "{leaf}");
    let (code, tcp) = scratch.install(&["--hub", "--listen", "127.0.0.1:10040"]);
    assert_eq!(code, 0, "{tcp}");
    assert!(
        tcp.contains("master.cf: 127.0.0.1:10040/inet = ") && tcp.contains("1 change made"),
        "{tcp}"
    );
    let (code, unix) = scratch.install(&["--hub"]);
    assert_eq!(code, 0, "{unix}");
    assert!(
        unix.contains(
            "note: master.cf also has 127.0.0.1:10040/inet, another bsmtp-ssh listener, left as it is"
        ) && unix.contains("postconf -MX 127.0.0.1:10040/inet"),
        "{unix}"
    );
}

/// `--help` says what a TCP listener allows, that unix is the default, and
/// the pipe transport's default name.
#[test]
fn help_warns_about_a_tcp_listener() {
    let out = Command::new(BIN)
        .args(["postfix-install", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("forge XFORWARD")
            && help.contains("[default: unix]")
            && help.contains("--force")
            && help.contains("[default: bsmtp-ssh]"),
        "{help}"
    );
}

/// Issue 19 (5.5): nothing undid postfix-install. `--remove` takes out
/// every entry of ours (pipe, spool, batching, hub listener, by their marks
/// and not their names) and the main.cf settings made for them, and
/// nothing else (Debian's stock `bsmtp` entry and a content filter's
/// listener stay byte for byte); it refuses, changing nothing, while
/// main.cf or a transport table still routes mail to them (Postfix would
/// defer that mail for ever); a second run has nothing to do.
#[test]
fn remove_takes_out_only_our_entries_and_not_while_mail_is_routed_to_them() {
    let scratch = Scratch::new();
    scratch.add_master(DEBIAN_STOCK_BSMTP);
    scratch.add_master(CONTENT_FILTER_REINJECTION);
    let before = scratch.files();
    for flags in [
        &[][..],
        &["--spool"][..],
        &["--batching", "--peer", "hub"][..],
        &["--hub"][..],
    ] {
        let (code, output) = scratch.install(flags);
        assert_eq!(code, 0, "{flags:?}: {output}");
    }
    let ours = [
        "bsmtp-ssh/unix",
        "bsmtp-spool/unix",
        "bsmtp-hub/unix",
        "bsmtp-hub-lmtp/unix",
        "bsmtp-inject/unix",
    ];
    for key in ours {
        assert_ne!(scratch.entry(key), "", "{key} not installed");
    }
    let table = scratch.path().join("transport");
    std::fs::write(
        &table,
        "# the spool for one domain\nexample.com  bsmtp-spool:hub\nother.test smtp:[relay.test]\n",
    )
    .unwrap();
    let postconf = |setting: &str| {
        let done = Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(scratch.path())
            .args(["-e", setting])
            .status()
            .unwrap();
        assert!(done.success(), "postconf -e {setting}");
    };
    postconf("default_transport = bsmtp-ssh:hub");
    postconf(&format!("transport_maps = texthash:{}", table.display()));
    let routed = scratch.files();

    for flags in [&["--remove"][..], &["--remove", "--dry-run"][..]] {
        let (code, output) = scratch.install(flags);
        assert_eq!(code, 1, "{flags:?}: {output}");
        for says in [
            "postfix-install: error: mail is still routed to bsmtp-ssh's transports",
            "\n  main.cf: default_transport = bsmtp-ssh:hub\n",
            "\n  [DIR]/transport line 2: example.com  bsmtp-spool:hub\n",
            "nothing was changed",
        ] {
            assert!(output.contains(says), "{flags:?}: {says} missing: {output}");
        }
        assert!(!output.contains("other.test"), "{output}");
        assert_eq!(scratch.files(), routed, "{flags:?}: the files changed");
    }

    // Routed elsewhere: a dry run lists it all and changes nothing.
    postconf("default_transport = smtp");
    std::fs::write(&table, "other.test smtp:[relay.test]\n").unwrap();
    let rerouted = scratch.files();
    let (code, dry) = scratch.install(&["--remove", "--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    for says in [
        "would run: /usr/sbin/postconf -c [DIR] -MX bsmtp-ssh/unix\n",
        "would run: /usr/sbin/postconf -c [DIR] -MX bsmtp-hub-lmtp/unix\n",
        "would run: /usr/sbin/postconf -c [DIR] -X bsmtp-ssh_time_limit\n",
        "would run: /usr/sbin/postconf -c [DIR] -X bsmtp-hub-lmtp_destination_concurrency_limit\n",
        "dry run: 8 changes not made",
    ] {
        assert!(dry.contains(says), "{says} missing: {dry}");
    }
    assert_eq!(scratch.files(), rerouted);

    let (code, output) = scratch.install(&["--remove"]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("8 changes made\npostfix check: ok"),
        "{output}"
    );
    assert!(output.contains("bsmtp-ssh flush"), "{output}");
    for key in ours {
        assert_eq!(scratch.entry(key), "", "{key} left: {output}");
    }
    // Back to the files before the installs, but for the routing the
    // admin changed: the stock entry and the filter's listener untouched.
    let (main, master) = scratch.files();
    assert_eq!(master, before.1);
    assert!(!main.contains("bsmtp"), "{main}");
    let (code, again) = scratch.install(&["--remove"]);
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(scratch.files(), (main, master));
}

/// What `--remove` takes for ours, by marks and not by names: a spawn(8)
/// or lmtp(8) entry that only looks alike is not, and a route to
/// `bsmtp-ssh2` is not a route to `bsmtp-ssh`.
#[test]
fn remove_recognises_our_entries_and_routes_by_their_marks() {
    let master = "\
        bsmtp unix - n n - - pipe flags=Fq. user=bsmtp argv=/usr/lib/bsmtp/bsmtp -t$nexthop -f$sender $recipient
        mine unix - n n - - pipe flags=q user=b argv=/opt/x/bsmtp-ssh deliver --peer ${nexthop} -- ${recipient}
        relay2 unix - n n - - spawn user=b argv=/usr/local/bin/other lmtp
        relay2-lmtp unix - - n - - lmtp -o lmtp_connection_cache_destinations=private/relay2
        b-hub unix - n n - - spawn user=b argv=/usr/sbin/bsmtp-ssh lmtp --peer hub
        b-hub-lmtp unix - - n - - lmtp -o lmtp_connection_cache_destinations=private/b-hub
        pipe-other unix - n n - - pipe user=b argv=/usr/sbin/bsmtp-ssh check
    ";
    let found = ours_to_remove(master, "/usr/sbin/bsmtp-ssh");
    let names: Vec<(&str, bool, Vec<String>)> = found
        .iter()
        .map(|i| (i.service.as_str(), i.transport, i.parameters.clone()))
        .collect();
    assert_eq!(
        names,
        [
            (
                "mine",
                true,
                vec![
                    "mine_destination_recipient_limit".to_owned(),
                    "mine_time_limit".to_owned()
                ]
            ),
            ("b-hub", false, vec![]),
            (
                "b-hub-lmtp",
                true,
                vec!["b-hub-lmtp_destination_concurrency_limit".to_owned()]
            ),
        ]
    );
    let main = "default_transport = bsmtp-ssh2:hub\nrelay_transport = mine\n\
                mine_time_limit = 1000s\nfallback_transport = smtp, b-hub-lmtp:unix:private/b-hub\n";
    assert_eq!(
        routes_in_main_cf(
            main,
            &["mine", "b-hub-lmtp", "bsmtp-ssh"],
            &["mine_time_limit".to_owned()]
        ),
        [
            "main.cf: relay_transport = mine",
            "main.cf: fallback_transport = smtp, b-hub-lmtp:unix:private/b-hub"
        ]
    );
    assert_eq!(
        routes_in_table(
            "# mine:x\nmine mine:\n/x/ mine\nmine.test smtp:\n",
            &["mine"]
        ),
        [(2, "mine mine:".to_owned()), (3, "/x/ mine".to_owned())]
    );
    assert_eq!(
        table_sources("hash:/etc/postfix/transport, proxy:lmdb:/t2 ldap:/etc/x.cf inline:{a=b}"),
        [
            PathBuf::from("/etc/postfix/transport"),
            PathBuf::from("/t2")
        ]
    );
}

/// Regression (issue 19, 5.8): `--batching --peer NAME` installed a
/// transport for a peer the config does not have, so every message routed
/// there deferred. It is refused (exit 78, nothing changed, a dry run
/// alike), naming the config file and the peers it has; so is a config
/// that cannot be read.
#[test]
fn batching_install_refuses_a_peer_missing_from_the_config() {
    let scratch = Scratch::new();
    let before = scratch.files();
    for flags in [
        &["--batching", "--peer", "hbu"][..],
        &["--batching", "--peer", "hbu", "--dry-run"][..],
    ] {
        let (code, output) = scratch.install(flags);
        assert_eq!(code, 78, "{flags:?}: {output}");
        assert!(
            output.contains(
                "postfix-install: error: --batching --peer hbu: [DIR]/bsmtp-ssh.conf has no \
                 [peer.hbu] section (its peers: hub)"
            ) && output.contains("nothing was changed"),
            "{flags:?}: {output}"
        );
        assert_eq!(scratch.files(), before, "{flags:?}");
    }
    let missing = scratch.path().join("missing.conf");
    let missing = missing.to_str().unwrap();
    let (code, output) = scratch.install(&["--batching", "--peer", "hub", "--config", missing]);
    assert_eq!(code, 78, "{output}");
    assert!(
        output.contains("cannot read config [DIR]/missing.conf")
            && output.contains("write its [peer.hub] section first"),
        "{output}"
    );
    assert_eq!(scratch.files(), before);
}
