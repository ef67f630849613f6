//! Table push end to end (the mailhub scenario): the leaf's `bsmtp-ssh
//! push-table` sends a `relay_recipients` source over SSH to the hub's
//! rsmtp (`put-table`, granted with `--allow-table relay_recipients`),
//! which builds it with the real postmap into `table_directory` (here
//! `<base>/tables`, as `/var/lib/bsmtp-ssh/tables` on a real hub).
//! The hub's own smtpd, on a loopback port, then answers RCPT TO from that
//! table, driven by a scripted SMTP client.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bsmtp_ssh_tests::util::{chown_to, lookup_user, mkdir, poll, read_lossy, write_file};
use bsmtp_ssh_tests::{Env, EnvOptions, Log, HUB_SSH_USER, LEAF_PIPE_USER};

/// The table every test pushes, and the only one leaf1 is granted.
const TABLE: &str = "relay_recipients";
/// What `table_max_size` is set to here: room for the 200 000
/// recipients of the big table, which is larger than an SSH channel's
/// window (2 MiB), as is a source just over the limit.
const MAX_SIZE: u64 = 8 * 1024 * 1024;
/// Recipients in the big table.
const MANY: usize = 200_000;
/// Reads and writes of the SMTP client.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the hub's smtpd may take to see a new table.
const SETTLE: Duration = Duration::from_secs(20);

fn start(name: &str) -> Env {
    let env = Env::start_with(
        name,
        EnvOptions::default()
            .rsmtp_args(["--allow-sender", "@leaf.test", "--allow-table", TABLE])
            .rsmtp_conf("table_directory = \"{base}/tables\"")
            .rsmtp_conf(&format!("table_max_size = {MAX_SIZE}")),
    );
    // As the package's postinst does for /var/lib/bsmtp-ssh/tables.
    let dir = table_directory(&env);
    mkdir(&dir, 0o755);
    chown_to(&dir, HUB_SSH_USER, None);
    env
}

fn table_directory(env: &Env) -> PathBuf {
    env.base().join("tables")
}

/// Writes a table source on the leaf, readable by the leaf's account.
fn source(env: &Env, file: &str, text: &str) -> PathBuf {
    let path = env.base().join(file);
    write_file(&path, text, 0o644);
    path
}

fn push(env: &Env, name: &str, source: &Path) -> Output {
    env.bsmtp_ssh_as_leaf(&["push-table", "hub", name, &source.display().to_string()])
}

fn shown(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file of the table directory with its bytes, but the tables'
/// lock files.
fn snapshot(env: &Env) -> BTreeMap<String, Vec<u8>> {
    snapshot_of(&table_directory(env))
}

fn snapshot_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            !entry
                .as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        })
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().into_string().unwrap(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect()
}

/// The shipped main.cf lines for a hub in front of a mailbox server.
const RELAY_RECIPIENTS_CF: &str = include_str!("../../postfix-snippets/hub/relay-recipients.cf");

/// Starts the hub's smtpd with the shipped snippet's main.cf lines, the
/// domain and table directory made this test's.
fn start_smtpd(env: &Env) -> u16 {
    let dir = table_directory(env).display().to_string();
    let mut params: Vec<(String, String)> = RELAY_RECIPIENTS_CF
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.split_once('=').expect("name = value");
            let value = value
                .trim()
                .replace("example.com", "relay.test")
                .replace("/var/lib/bsmtp-ssh/tables", &dir);
            (name.trim().to_owned(), value)
        })
        .collect();
    assert_eq!(
        params.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["relay_domains", "relay_recipient_maps"]
    );
    // Not the harness's error transport, which smtpd would answer for
    // every relay recipient; still nothing leaves the machine.
    params.push((
        "relay_transport".to_owned(),
        "discard:bsmtp-ssh-tests".to_owned(),
    ));
    let params: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    env.start_hub_smtpd(&params)
}

/// One SMTP session with the hub's smtpd: EHLO, MAIL FROM, one RCPT TO per
/// recipient, QUIT; returns the last line of each RCPT reply.
fn rcpt_replies(env: &Env, port: u16, recipients: &[&str]) -> Vec<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|err| env.fail(&format!("connect to the hub's smtpd: {err}")));
    stream.set_read_timeout(Some(SMTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(SMTP_TIMEOUT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut reply = |command: Option<&str>| -> String {
        if let Some(command) = command {
            writer
                .write_all(format!("{command}\r\n").as_bytes())
                .unwrap_or_else(|err| env.fail(&format!("send {command}: {err}")));
        }
        // A multi-line reply ends with "NNN " (bounded: smtpd sends a few).
        for _ in 0..50 {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => env.fail(&format!("smtpd closed or stalled after {command:?}")),
                Ok(_) => {}
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_owned();
            }
        }
        env.fail(&format!("endless reply to {command:?}"))
    };
    let greeting = reply(None);
    assert!(greeting.starts_with("220 "), "{greeting}");
    let ehlo = reply(Some("EHLO leaf.test"));
    assert!(ehlo.starts_with("250 "), "{ehlo}");
    let mail = reply(Some("MAIL FROM:<alice@leaf.test>"));
    assert!(mail.starts_with("250 "), "{mail}");
    let replies = recipients
        .iter()
        .map(|r| reply(Some(&format!("RCPT TO:<{r}>"))))
        .collect();
    let _ = reply(Some("QUIT"));
    replies
}

fn accepted(reply: &str) -> bool {
    reply.starts_with("250 ")
}

fn unknown(reply: &str) -> bool {
    reply.starts_with("550 5.1.1 ") && reply.contains("User unknown in relay recipient table")
}

/// The mailhub scenario: a pushed `relay_recipients` makes the hub's smtpd
/// accept a listed recipient and reject an unknown one; a second push (by
/// `--all`, from the config's `tables`) takes effect without a reload.
#[test]
fn pushed_relay_recipients_make_the_hub_reject_unknown_recipients() {
    let env = start("tables-push");
    let first = source(&env, "relay_recipients", "bob@relay.test OK\n");
    let out = push(&env, TABLE, &first);
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hub relay_recipients: 250 2.0.0 table relay_recipients installed (18 bytes)\n"
    );
    let dir = table_directory(&env);
    let hub_uid = lookup_user(HUB_SSH_USER).uid.as_raw();
    for file in [TABLE.to_owned(), format!("{TABLE}.db")] {
        let meta = std::fs::metadata(dir.join(&file)).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (hub_uid, 0o644),
            "{file}"
        );
    }
    assert_eq!(
        snapshot(&env).keys().collect::<Vec<_>>(),
        [TABLE, "relay_recipients.db"]
    );

    let port = start_smtpd(&env);
    let replies = rcpt_replies(&env, port, &["bob@relay.test", "carol@relay.test"]);
    assert!(accepted(&replies[0]), "{replies:?}");
    assert!(unknown(&replies[1]), "{replies:?}");

    // The config lists the table for the hub: push-table --all sends it,
    // now with many more recipients.
    let mut text = String::from("bob@relay.test OK\ncarol@relay.test OK\n");
    for n in 0..MANY {
        let _ = writeln!(text, "user{n}@relay.test OK");
    }
    let second = source(&env, "relay_recipients", &text);
    let mut conf = read_lossy(&env.transport_config());
    let _ = writeln!(conf, "tables = {{ {TABLE} = \"{}\" }}", second.display());
    let conf_path = env.base().join("push.conf");
    write_file(&conf_path, conf, 0o644);
    chown_to(&conf_path, LEAF_PIPE_USER, None);
    let out = env.bsmtp_ssh_as_leaf_with(&conf_path, &["push-table", "--all"]);
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "hub relay_recipients: 250 2.0.0 table relay_recipients installed ({} bytes)\n",
            text.len()
        )
    );
    // No reload: the idle smtpd sees its table replaced and restarts.
    let replies = poll(SETTLE, || {
        let replies = rcpt_replies(
            &env,
            port,
            &[
                "carol@relay.test",
                "user199999@relay.test",
                "eve@relay.test",
            ],
        );
        accepted(&replies[0]).then_some(replies)
    })
    .unwrap_or_else(|| env.fail("carol@relay.test is still refused after the second push"));
    assert!(accepted(&replies[1]), "{replies:?}");
    assert!(unknown(&replies[2]), "{replies:?}");
    env.wait_log(Log::Hub, "has changed -- restarting", SETTLE);
}

/// A table postmap does not take whole (here it only warns about a line
/// with an unbalanced quote, and would leave it out) is refused with
/// postmap's words; the previous table stays, byte for byte, and keeps
/// working.
#[test]
fn a_table_postmap_rejects_leaves_the_previous_one_working() {
    let env = start("tables-postmap");
    let good = source(&env, "good", "bob@relay.test OK\n");
    let out = push(&env, TABLE, &good);
    assert!(out.status.success(), "{}", shown(&out));
    let before = snapshot(&env);
    let port = start_smtpd(&env);

    let bad = source(&env, "bad", "carol\"@relay.test OK\nbob@relay.test OK\n");
    let out = push(&env, TABLE, &bad);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(65), "{}", shown(&out));
    assert!(
        stdout.starts_with("hub relay_recipients: 554 5.6.0 table relay_recipients refused: postmap warned: postmap: warning: relay_recipients, line 1: unbalanced '\"'"),
        "{}",
        shown(&out)
    );
    assert!(
        stdout.contains("the installed table is unchanged"),
        "{stdout}"
    );
    assert_eq!(snapshot(&env), before, "the table directory changed");

    let replies = rcpt_replies(&env, port, &["bob@relay.test", "carol@relay.test"]);
    assert!(accepted(&replies[0]), "{replies:?}");
    assert!(unknown(&replies[1]), "{replies:?}");
}

/// The table directory and the hub's main.cf, to show a refusal changed
/// neither.
struct Before {
    tables: BTreeMap<String, Vec<u8>>,
    main_cf: Vec<u8>,
}

impl Before {
    /// Installs a first table, then takes the picture.
    fn installed(env: &Env) -> Before {
        let good = source(env, "good", "bob@relay.test OK\n");
        let out = push(env, TABLE, &good);
        assert!(out.status.success(), "{}", shown(&out));
        Before {
            tables: snapshot(env),
            main_cf: std::fs::read(env.hub_config_dir().join("main.cf")).unwrap(),
        }
    }

    fn unchanged(&self, env: &Env, what: &str) {
        assert_eq!(
            snapshot(env),
            self.tables,
            "{what}: the table directory changed"
        );
        let etc = env.hub_config_dir();
        assert_eq!(
            std::fs::read(etc.join("main.cf")).unwrap(),
            self.main_cf,
            "{what}: main.cf changed"
        );
        assert!(!etc.join("main.cf.db").exists(), "{what}: main.cf.db");
    }
}

/// Lets the hub take `put-table NAME` without size and SHA-256.
fn allow_unchecked(env: &Env) {
    let conf = read_lossy(&env.rsmtp_config());
    let (head, rest) = conf.split_once('\n').unwrap();
    write_file(
        &env.rsmtp_config(),
        format!("{head}\ntable_require_checksum = false\n{rest}"),
        0o644,
    );
}

/// Asserts the exit status and that stdout starts with `reply`.
fn assert_refused(out: &Output, status: i32, reply: &str) {
    assert_eq!(out.status.code(), Some(status), "{}", shown(out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(reply),
        "{}",
        shown(out)
    );
}

/// Pushes the hub must refuse change nothing: a name that climbs out of
/// the table directory (refused by push-table before it connects, and by
/// rsmtp when asked directly), a table this peer is not granted, a push
/// cut short (fewer bytes than announced: a dropped link), and the plain
/// `put-table NAME` form, without size and checksum, which installs only
/// once rsmtp.conf says `table_require_checksum = false`.
#[test]
fn refused_pushes_change_nothing() {
    let env = start("tables-refused");
    let before = Before::installed(&env);
    let good = env.base().join("good");

    let out = push(&env, "../main.cf", &good);
    assert_refused(
        &out,
        64,
        "hub ../main.cf: bad table name \"../main.cf\": character \"/\" is not allowed",
    );
    before.unchanged(&env, "push-table ../main.cf");

    let out = env.ssh_exec("put-table ../main.cf", b"bob@relay.test OK\n");
    assert_refused(&out, 64, "501 5.5.4 bad table name \"../main.cf\"");
    before.unchanged(&env, "ssh put-table ../main.cf");

    let out = push(&env, "transport", &good);
    assert_refused(
        &out,
        77,
        "hub transport: 550 5.7.1 table transport is not granted to peer leaf1",
    );
    before.unchanged(&env, "not granted");

    // Announces 1000 bytes, sends 18, then EOF: what a dropped link
    // looks like to rsmtp.
    let mut sum = bsmtp::table::Checksum::new();
    sum.update(&[b'x'; 1000]);
    let cut = bsmtp::table::PutTable {
        name: TABLE.into(),
        expected: Some(sum.finish()),
    };
    let out = env.ssh_exec(&cut.command(), b"eve@relay.test OK\n");
    assert_refused(
        &out,
        75,
        "451 4.4.2 table relay_recipients: received 18 bytes that do not match the 1000 bytes",
    );
    before.unchanged(&env, "truncated");

    // `ssh hub put-table NAME < file`: no size, no checksum: a cut-off
    // upload would look whole, so it is refused unless the hub opts out.
    let plain = b"bob@relay.test OK\ncarol@relay.test OK\n";
    let out = env.ssh_exec(&format!("put-table {TABLE}"), plain);
    assert_refused(
        &out,
        77,
        "554 5.7.0 table relay_recipients: the request gives no size and SHA-256",
    );
    before.unchanged(&env, "no checksum");
    allow_unchecked(&env);
    let out = env.ssh_exec(
        &format!("put-table {TABLE}"),
        b"bob@relay.test OK\ncarol@relay.test OK\n",
    );
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "250 2.0.0 table relay_recipients installed (38 bytes)\r\n"
    );
    assert_eq!(
        std::fs::read(table_directory(&env).join(TABLE)).unwrap(),
        b"bob@relay.test OK\ncarol@relay.test OK\n"
    );
}

/// A source over `table_max_size` changes nothing. Just over the limit is
/// also larger than the SSH channel's window: the hub answers from the
/// announced size without reading, and push-table, stalled in its writes,
/// still gets the answer at once (it used to wait for its idle timeout).
/// Without an announced size the hub stops reading at the limit.
#[test]
fn a_table_over_the_limit_changes_nothing() {
    let env = start("tables-limit");
    let before = Before::installed(&env);
    // Lines of 25 bytes, each key its own.
    let lines = usize::try_from(MAX_SIZE).unwrap() / 25 + 1;
    let mut text = String::new();
    for n in 0..lines {
        let _ = writeln!(text, "u{n:09}@relay.test OK");
    }
    assert_eq!(text.len(), lines * 25);
    let big = source(&env, "big", &text);
    let out = push(&env, TABLE, &big);
    assert_refused(
        &out,
        65,
        &format!(
            "hub relay_recipients: 552 5.3.4 table relay_recipients: {} bytes is over the hub's limit of {MAX_SIZE}",
            text.len()
        ),
    );
    before.unchanged(&env, "too big");

    allow_unchecked(&env);
    let out = env.ssh_exec(&format!("put-table {TABLE}"), &std::fs::read(&big).unwrap());
    assert_refused(
        &out,
        65,
        &format!(
            "552 5.3.4 table relay_recipients: more than {MAX_SIZE} bytes is over the hub's limit"
        ),
    );
    before.unchanged(&env, "too big, unannounced");
}

/// The shipped hub `authorized_keys` lines run rsmtp with a command line
/// rsmtp takes, and the mailbox server's line grants `relay_recipients`.
#[test]
fn shipped_authorized_keys_lines_parse() {
    let snippet = include_str!("../../postfix-snippets/hub/authorized_keys");
    let mut tables = Vec::new();
    for line in snippet.lines().filter(|l| l.starts_with("restrict,")) {
        let Some((command, _)) = line
            .split_once("command=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
        else {
            panic!("no forced command: {line}");
        };
        let args = <rsmtp::Args as clap::Parser>::try_parse_from(command.split(' '))
            .unwrap_or_else(|err| panic!("{command}: {err}"));
        tables.extend(args.policy.allow_table);
    }
    assert_eq!(tables, [TABLE]);
}

/// Regression (audit L6): a line starting with white space was joined by
/// postmap to the line before (bob vanished into carol's value) and the
/// push got 250. rsmtp now refuses it, naming the line, and keeps the old
/// table; push-table refuses it before it connects.
#[test]
fn a_continuation_line_is_refused_not_merged() {
    let env = start("tables-continuation");
    Before::installed(&env);
    let port = start_smtpd(&env);
    let before = Before::installed(&env);
    let text = "carol@relay.test OK\n  bob@relay.test OK\n";

    // Straight to rsmtp, in the checksummed form push-table sends.
    let mut sum = bsmtp::table::Checksum::new();
    sum.update(text.as_bytes());
    let request = bsmtp::table::PutTable {
        name: TABLE.into(),
        expected: Some(sum.finish()),
    };
    let out = env.ssh_exec(&request.command(), text.as_bytes());
    assert_refused(
        &out,
        65,
        "554 5.6.0 table relay_recipients refused: line 2 starts with white space, which postmap would join to the line before",
    );
    before.unchanged(&env, "continuation line");

    let bad = source(&env, "bad", text);
    let out = push(&env, TABLE, &bad);
    assert_refused(
        &out,
        65,
        &format!(
            "hub relay_recipients: {}: line 2 starts with white space",
            bad.display()
        ),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not pushed"),
        "{}",
        shown(&out)
    );
    before.unchanged(&env, "push-table of a continuation line");

    let replies = rcpt_replies(&env, port, &["bob@relay.test", "carol@relay.test"]);
    assert!(accepted(&replies[0]), "{replies:?}");
    assert!(unknown(&replies[1]), "{replies:?}");
}

/// Regression (audit L7): the default table directory was
/// /etc/postfix/bsmtp-tables, owned by the peers' account, and `postfix
/// check` warned about it on every run. A hub whose main.cf uses a table
/// pushed into the new default layout (a directory of its own outside the
/// config directory, owned by that account) passes `postfix check`
/// without a warning; the old layout, in the same instance, warns.
#[test]
fn the_default_table_layout_passes_postfix_check() {
    let env = start("tables-check");
    let good = source(&env, "good", "bob@relay.test OK\n");
    let out = push(&env, TABLE, &good);
    assert!(out.status.success(), "{}", shown(&out));
    let map = format!("hash:{}", table_directory(&env).join(TABLE).display());
    env.hub().postconf(&[
        ("relay_domains", "relay.test"),
        ("relay_recipient_maps", &map),
    ]);
    let check = || {
        // Other tests edit the default main.cf's alternate_config_directories
        // meanwhile (see harness.rs postfix_check_accepts_both_instances).
        let lock = bsmtp_ssh_tests::util::global_lock();
        let logged = env.hub().log().len();
        let out = env.hub().check();
        drop(lock);
        // postfix-script warns through postlog, into the maillog_file.
        format!(
            "{}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            &env.hub().log()[logged..]
        )
    };
    let said = check();
    assert!(!said.contains("warning"), "postfix check: {said}");

    // What the old default looked like: a table directory in the config
    // directory, owned by the peers' account.
    let old = env.hub_config_dir().join("bsmtp-tables");
    mkdir(&old, 0o755);
    chown_to(&old, HUB_SSH_USER, None);
    let said = check();
    assert!(
        said.contains("not owned by root") && said.contains("bsmtp-tables"),
        "postfix check: {said}"
    );
}

/// Regression (audit L11): push-table to a destination with several hubs
/// installed the table on the first hub that answered only. Each hub has
/// its own table directory here, as each real hub has its own disk: the
/// table reaches both, one line per hub; with the second hub down, the
/// first is updated and the push fails naming the second.
#[test]
fn push_table_installs_on_every_hub_of_a_failover_destination() {
    let env = start("tables-failover");
    let mut second = env.start_second_hub("hub2");
    let second_dir = env.base().join("tables-hub2");
    mkdir(&second_dir, 0o755);
    chown_to(&second_dir, HUB_SSH_USER, None);
    let second_conf = env.base().join("hub/rsmtp-hub2.conf");
    let conf = read_lossy(&second_conf);
    let dir = table_directory(&env).display().to_string();
    assert!(conf.contains(&dir), "{conf}");
    write_file(
        &second_conf,
        conf.replace(&dir, &second_dir.display().to_string()),
        0o644,
    );
    env.write_failover_config(
        &[env.hub_spec("hub1"), second.spec("hub2")],
        &["connect_timeout = 3"],
    );

    let first = source(&env, "first", "bob@relay.test OK\n");
    let out = push(&env, TABLE, &first);
    assert!(out.status.success(), "{}", shown(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hub1 relay_recipients: 250 2.0.0 table relay_recipients installed (18 bytes)\n\
         hub2 relay_recipients: 250 2.0.0 table relay_recipients installed (18 bytes)\n"
    );
    for dir in [table_directory(&env), second_dir.clone()] {
        assert_eq!(
            snapshot_of(&dir).get(TABLE).map(Vec::as_slice),
            Some(&b"bob@relay.test OK\n"[..]),
            "{}: {:?}",
            dir.display(),
            snapshot_of(&dir).keys()
        );
    }

    // hub2 goes down: hub1 still takes the new table, the push fails.
    second.sshd.stop();
    let next = source(&env, "next", "bob@relay.test OK\ncarol@relay.test OK\n");
    let out = push(&env, TABLE, &next);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(75), "{}", shown(&out));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", shown(&out));
    assert_eq!(
        lines[0],
        "hub1 relay_recipients: 250 2.0.0 table relay_recipients installed (38 bytes)"
    );
    assert!(lines[1].starts_with("hub2 relay_recipients: "), "{stdout}");
    assert!(
        lines[2].starts_with("hub relay_recipients: table relay_recipients not installed on every hub of peer hub: failed on hub2 (1 of 2 installed it)"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(table_directory(&env).join(TABLE)).unwrap(),
        b"bob@relay.test OK\ncarol@relay.test OK\n"
    );
    assert_eq!(
        std::fs::read(second_dir.join(TABLE)).unwrap(),
        b"bob@relay.test OK\n"
    );
}
