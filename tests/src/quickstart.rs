//! README.md's "Quick start (by hand)" ([`by_hand`], the test
//! `tests/tests/quickstart.rs`) and the Debian package's quick start (in
//! "Debian package", [`with_the_package`], the `package-quickstart` binary
//! scripts/test-package runs with the package installed), each followed
//! literally in a harness
//! environment: the shell lines of the section's code blocks are read from
//! README.md and run one by one, with only what must differ here
//! substituted (the example host names, system paths such as /etc/bsmtp-ssh
//! and /usr/sbin moved under the environment's directory, the `bsmtp` user
//! of each side, the private Postfix instances' `-c`, sshd's port). A line
//! this test does not know how to run fails the test, so a changed quick
//! start is noticed. Then a message sent with the leaf's sendmail must arrive
//! at the hub. The leaf's master.cf holds Debian's stock `bsmtp` pipe(8)
//! entry, as on a stock Debian leaf, and keeps it unchanged.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::binaries::workspace_root;
use crate::util::{chown_to, explain, mkdir, run_timeout, write_file, COMMAND_TIMEOUT};
use crate::{Env, HUB_SSH_USER, LEAF_PIPE_USER, PIPE_TRANSPORT};

const DELIVERY: Duration = Duration::from_secs(90);

/// Debian's stock master.cf entry of its own named `bsmtp`, as `postconf
/// -M` prints it (single-spaced).
const DEBIAN_STOCK_BSMTP: &str = "bsmtp unix - n n - - pipe flags=Fq. user=bsmtp \
                                  argv=/usr/lib/bsmtp/bsmtp -t$nexthop -f$sender $recipient";

/// Which machine a README line is run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Hub,
    Leaf,
    /// "Try a delivery by hand" (on the leaf).
    Try,
}

/// The by-hand quick start: its own section.
const BY_HAND: &str = "## Quick start (by hand)";
/// The package's quick start: the end of the "Debian package" section.
const WITH_THE_PACKAGE: &str = "Quick start with the package";

/// The code lines from `start` to the end of its section, with the side
/// each belongs to, in order.
fn quick_start_lines(readme: &str, start: &str) -> Vec<(Side, String)> {
    let start = readme
        .find(start)
        .unwrap_or_else(|| panic!("README.md has no \"{start}\""));
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut side = None;
    let mut lines = Vec::new();
    for line in section[..end].lines().skip(1) {
        if let Some(code) = line.strip_prefix("    ") {
            let side = side.unwrap_or_else(|| panic!("code before \"On the hub/leaf\": {line}"));
            if !code.trim().is_empty() {
                lines.push((side, code.trim().to_owned()));
            }
        } else if line.starts_with("On the hub") {
            side = Some(Side::Hub);
        } else if line.starts_with("On the leaf") {
            side = Some(Side::Leaf);
        } else if line.starts_with("Try a delivery") {
            side = Some(Side::Try);
        }
    }
    lines
}

/// Replaces the whole word `word` (between whitespace or the line's ends).
fn replace_word(line: &str, word: &str, with: &str) -> String {
    let mut out = String::new();
    let mut done = 0;
    while let Some(found) = line[done..].find(word) {
        let (at, end) = (done + found, done + found + word.len());
        let whole = line[..at].chars().last().is_none_or(char::is_whitespace)
            && line[end..].chars().next().is_none_or(char::is_whitespace);
        out.push_str(&line[done..at]);
        out.push_str(if whole { with } else { word });
        done = end;
    }
    out.push_str(&line[done..]);
    out
}

/// Where this test puts what the README puts in system directories.
struct Places {
    /// Stands for /etc/bsmtp-ssh.
    etc: PathBuf,
    /// Stands for /usr/sbin.
    sbin: PathBuf,
    /// Stands for /var/lib/bsmtp-ssh.
    var: PathBuf,
}

impl Places {
    fn conf(&self) -> PathBuf {
        self.etc.join("bsmtp-ssh.conf")
    }
}

/// The substitutions every line gets.
fn substitute(env: &Env, places: &Places, side: Side, line: &str) -> String {
    let user = if side == Side::Hub {
        HUB_SSH_USER
    } else {
        LEAF_PIPE_USER
    };
    let mut line = substitute_paths(env, places, line);
    line = replace_word(&line, "bsmtp", user).replace("user=bsmtp ", &format!("user={user} "));
    let leaf_etc = env.leaf_config_dir().display().to_string();
    let sbin = places.sbin.display();
    let conf = places.conf().display().to_string();
    line.replace("postconf -e", &format!("postconf -c {leaf_etc} -e"))
        .replace("postfix reload", &format!("postfix -c {leaf_etc} reload"))
        .replace(
            "ssh-keyscan ",
            &format!("ssh-keyscan -p {} ", env.sshd_port()),
        )
        // Our commands: installed under the stand-in of /usr/sbin, with the
        // stand-in config and the private Postfix instances.
        .replace(
            "bsmtp-ssh postfix-install",
            &format!(
                "{sbin}/bsmtp-ssh postfix-install --config-directory {leaf_etc} --user {LEAF_PIPE_USER} --config {conf}"
            ),
        )
        .replace("bsmtp-ssh check", &format!("{sbin}/bsmtp-ssh check --config {conf}"))
        .replace(
            "bsmtp-ssh deliver ",
            &format!("{sbin}/bsmtp-ssh deliver --config {conf} "),
        )
        .replace(
            "rsmtp authorize ",
            &format!(
                "{sbin}/rsmtp authorize --authorized-keys {} ",
                env.authorized_keys().display()
            ),
        )
        .replace(" leaf1.pub", &format!(" {}/id_ed25519.pub", places.etc.display()))
}

/// System paths and example names replaced by this environment's.
fn substitute_paths(env: &Env, places: &Places, line: &str) -> String {
    let sbin = places.sbin.display().to_string();
    // First, while the line holds only the README's own paths: the test
    // root itself starts with /var/lib/bsmtp-ssh.
    line.replace("/var/lib/bsmtp-ssh", &places.var.display().to_string())
        .replace("/etc/bsmtp-ssh", &places.etc.display().to_string())
        .replace("/usr/sbin/rsmtp", &format!("{sbin}/rsmtp"))
        .replace("/usr/sbin/bsmtp-ssh", &format!("{sbin}/bsmtp-ssh"))
        .replace("target/release/", &format!("{}/", env.bin_dir().display()))
        .replace("hub.example.com", "127.0.0.1")
        .replace("you@example.com", "bob@hub.test")
        .replace("leaf1.example.com", "leaf.test")
}

/// Runs one shell line with /bin/sh in the workspace root; panics unless it
/// succeeds.
fn sh(env: &Env, readme_line: &str, line: &str) -> String {
    let out = run_timeout(
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("set -e; {line}"))
            .current_dir(workspace_root())
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
        b"",
        COMMAND_TIMEOUT,
    );
    if !out.status.success() {
        env.fail(&format!(
            "README quick-start line failed:\n  {readme_line}\nrun here as:\n  {line}\n{}",
            explain("sh", out.status, &out.stdout, &out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// "edit host/user" in the copied bsmtp-ssh.conf: point it at this sshd.
fn edit_transport_config(env: &Env, places: &Places) {
    let path = places.conf();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut edited = Vec::new();
    let mut changed = [false; 3];
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let new = match key {
            "host" => {
                changed[0] = true;
                "host = \"127.0.0.1\"".to_owned()
            }
            "port" => {
                changed[1] = true;
                format!("port = {}", env.sshd_port())
            }
            "user" => {
                changed[2] = true;
                format!("user = \"{HUB_SSH_USER}\"")
            }
            // The snippet's paths are /etc/bsmtp-ssh's.
            _ => line.replace("/etc/bsmtp-ssh", &places.etc.display().to_string()),
        };
        edited.push(new);
    }
    assert_eq!(
        changed, [true; 3],
        "postfix-snippets/leaf/bsmtp-ssh.conf should have host, port and user lines:\n{text}"
    );
    write_file(&path, edited.join("\n") + "\n", 0o644);
}

/// The hub here is a private Postfix instance: the line `rsmtp authorize`
/// wrote gets `--postfix-config` so that postdrop writes into it (a real hub
/// uses the system's instance and needs nothing), and an rsmtp.conf that
/// says nothing of the tag store, as the README's hub has none: rsmtp
/// picks its store itself (SPEC invariant 8).
fn point_authorized_keys_at_hub_instance(env: &Env, places: &Places) {
    let rsmtp = format!("{}/rsmtp --peer leaf1", places.sbin.display());
    let keys = std::fs::read_to_string(env.authorized_keys()).unwrap();
    assert!(
        keys.contains(&rsmtp),
        "rsmtp authorize wrote no line for leaf1:\n{keys}"
    );
    let conf = places.etc.join("rsmtp.conf");
    write_file(
        &conf,
        "# The README's hub: no rsmtp.conf settings.\n",
        0o644,
    );
    let keys = keys.replace(
        &rsmtp,
        &format!(
            "{rsmtp} --postfix-config {} --config {}",
            env.hub_config_dir().display(),
            conf.display()
        ),
    );
    write_file(&env.authorized_keys(), keys, 0o644);
}

/// The stand-ins of the README's system directories, made as the package's
/// postinst or the by-hand quick start's first lines expect them.
fn make_places(env: &Env, installed: Option<PathBuf>) -> Places {
    let package = installed.is_some();
    let places = Places {
        etc: env.base().join("quickstart/etc-bsmtp-ssh"),
        sbin: installed.unwrap_or_else(|| env.base().join("quickstart/sbin")),
        var: env.base().join("quickstart/var-lib-bsmtp-ssh"),
    };
    // /usr/sbin exists on any machine; its stand-in must too.
    mkdir(&env.base().join("quickstart"), 0o755);
    if package {
        // The installed package: its postinst made these (README "Debian
        // package"); their stand-ins get the same modes and owner.
        mkdir(&places.etc, 0o755);
        mkdir(&places.var, 0o755);
        let tags = places.var.join("tags");
        mkdir(&tags, 0o700);
        chown_to(&tags, HUB_SSH_USER, None);
    } else {
        mkdir(&places.sbin, 0o755);
    }
    places
}

/// A fresh Debian leaf: the harness's transport and routing undone (the
/// README's own steps must install the transport and route mail to the
/// hub), and Debian's stock `bsmtp` entry in master.cf.
fn fresh_debian_leaf(env: &Env) {
    sh(
        env,
        "(undo the harness's transport and routing; add Debian's stock bsmtp entry)",
        &format!(
            "postconf -c {0} -X transport_maps {PIPE_TRANSPORT}_destination_recipient_limit && postconf -c {0} -MX {PIPE_TRANSPORT}/unix && postconf -c {0} -M 'bsmtp/unix={DEBIAN_STOCK_BSMTP}' && postfix -c {0} reload",
            env.leaf_config_dir().display()
        ),
    );
}

/// Debian's stock `bsmtp` entry is as [`fresh_debian_leaf`] left it.
fn assert_debian_stock_entry_kept(env: &Env) {
    let stock = sh(
        env,
        "(Debian's stock bsmtp entry)",
        &format!(
            "postconf -c {} -M bsmtp/unix",
            env.leaf_config_dir().display()
        ),
    );
    assert_eq!(
        stock.split_whitespace().collect::<Vec<_>>().join(" "),
        DEBIAN_STOCK_BSMTP
    );
}

/// Follows the quick start that begins at `start`, with the programs in
/// `installed` (where the README says `/usr/sbin`), or else with copies of
/// this build under a stand-in of `/usr/sbin`.
fn follow_quick_start(name: &str, start: &str, installed: Option<PathBuf>) {
    let env = Env::start(name);
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let lines = quick_start_lines(&readme, start);
    assert!(
        lines.iter().any(|(s, _)| *s == Side::Hub)
            && lines.iter().any(|(s, _)| *s == Side::Leaf)
            && lines.iter().any(|(s, _)| *s == Side::Try),
        "{lines:#?}"
    );
    let places = make_places(&env, installed);
    fresh_debian_leaf(&env);

    let mut tried = Vec::new();
    for (side, readme_line) in &lines {
        let line = substitute(&env, &places, *side, readme_line);
        let command = line.split_whitespace().next().unwrap_or("").to_owned();
        if command == "useradd" {
            // The harness made the users; check the one the line names.
            let words = line.split(" #").next().unwrap_or_default();
            let user = words.split_whitespace().last().unwrap();
            sh(&env, readme_line, &format!("id -u {user} >/dev/null"));
        } else if *side == Side::Try {
            // Needs both sides set up: run last, in order.
            tried.push((readme_line.clone(), line));
        } else {
            let line = if command == "ssh-keyscan" {
                // Must pin the key; an empty file would only fail later.
                format!("{line} && test -s {}/known_hosts", places.etc.display())
            } else {
                line
            };
            sh(&env, readme_line, &line);
            if command == "cp" && line.contains("bsmtp-ssh.conf ") {
                edit_transport_config(&env, &places);
            }
            if line.contains("/rsmtp authorize ") {
                point_authorized_keys_at_hub_instance(&env, &places);
            }
        }
    }

    assert_eq!(tried.len(), 2, "check and one delivery by hand: {tried:?}");
    let check = sh(&env, &tried[0].0, &tried[0].1);
    assert!(
        check.contains("session: ") && !check.contains("FAIL"),
        "{check}"
    );
    let status = sh(&env, &tried[1].0, &tried[1].1);
    assert!(status.starts_with("2.0.0 delivered via "), "{status}");
    let by_hand = env.wait_maildir("bob", 1, DELIVERY);
    assert!(
        String::from_utf8_lossy(&by_hand[0]).contains("Subject: test"),
        "{}",
        String::from_utf8_lossy(&by_hand[0])
    );

    // And through Postfix: the leaf's sendmail, pipe(8), the README's transport.
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"From: alice@leaf.test\nTo: bob@hub.test\nSubject: quick start\n\nvia postfix\n",
    );
    let delivered = env.wait_maildir("bob", 2, DELIVERY);
    assert!(
        delivered
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("Subject: quick start")),
        "the sendmail message must arrive at the hub"
    );
    // The hub kept the message's tag with no step by the admin: in the
    // packaged default when the peers' account can write it, else under
    // that account's home.
    let home = nix::unistd::User::from_name(crate::HUB_SSH_USER)
        .unwrap()
        .unwrap()
        .dir;
    let stores = [
        std::path::PathBuf::from("/var/lib/bsmtp-ssh/tags/leaf1"),
        home.join(".bsmtp-ssh/tags/leaf1"),
    ];
    let tags: usize = stores
        .iter()
        .map(|store| {
            std::fs::read_dir(store).map_or(0, |d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
        })
        .sum();
    assert!(tags >= 1, "no transaction tag in {stores:?}");
    // Logged as the README's "Logs" section says, whatever the machine's
    // postlog: the outcome, the relay and the hub's queue ID are in
    // pipe(8)'s own line.
    let logged = env.wait_pipe_status("sent", DELIVERY);
    assert!(
        logged.contains("to=<bob@hub.test>")
            && logged.contains("(2.0.0 delivered via 127.0.0.1[127.0.0.1]:")
            && logged.contains(": 250 2.0.0 Ok: queued as "),
        "{logged}"
    );
    // It went through the README's master.cf entry and config, not the harness's.
    let master_cf = std::fs::read_to_string(env.leaf_config_dir().join("master.cf")).unwrap();
    assert!(
        master_cf.contains(&places.conf().display().to_string())
            && !master_cf.contains(&env.transport_config().display().to_string()),
        "{master_cf}"
    );
    // Debian's own entry is still there, untouched.
    assert_debian_stock_entry_kept(&env);
    env.wait_leaf_queue_empty(DELIVERY);
}

/// Follows the by-hand quick start with freshly built programs.
pub fn by_hand() {
    follow_quick_start("quickstart", BY_HAND, None);
}

/// Follows the package's quick start with the installed package's
/// programs in `installed` (`/usr/sbin`) and its example config.
pub fn with_the_package(installed: PathBuf) {
    assert!(
        std::path::Path::new("/usr/share/doc/bsmtp-ssh/examples/bsmtp-ssh.conf").exists(),
        "the package is not installed"
    );
    follow_quick_start("quickstart_package", WITH_THE_PACKAGE, Some(installed));
}
