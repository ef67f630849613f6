//! Exactly-once against the real receiver: rsmtp and the hub's Postfix,
//! driven as a leaf whose acknowledgement was lost drives them, by sending
//! the same tagged transaction again (audit findings M1 and M2).

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use bsmtp_ssh_tests::sshd::free_port;
use bsmtp_ssh_tests::util::{run_timeout, COMMAND_TIMEOUT};
use bsmtp_ssh_tests::{Env, EnvOptions};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_mins(3);

/// A tag as bsmtp-ssh mints them: the leaf's queue ID, a dot, a hash.
const TAG: &str = "4XQ1ABC.0123456789abcdef";

/// One online session of rsmtp (as sshd runs it) with `input`; its
/// replies.
fn session(env: &Env, extra: &[String], input: &str) -> String {
    let mut command: Command = env.rsmtp_command();
    command
        .args(["--allow-sender", "@leaf.test"])
        .args(extra)
        .env("SSH_CONNECTION", "127.0.0.1 40022 127.0.0.1 22");
    let out = run_timeout(&mut command, input.as_bytes(), COMMAND_TIMEOUT);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reply to the final dot of a one-transaction session (the one
/// before QUIT's 221).
fn dot_reply(replies: &str) -> &str {
    let lines: Vec<&str> = replies.lines().collect();
    lines
        .iter()
        .rev()
        .find(|l| !l.starts_with("221"))
        .copied()
        .unwrap_or_default()
}

fn transaction(recipients: &[&str], subject: &str) -> String {
    let mut text = format!("EHLO leaf.test\r\nMAIL FROM:<alice@leaf.test> XTXID={TAG}\r\n");
    for r in recipients {
        let _ = write!(text, "RCPT TO:<{r}>\r\n");
    }
    let _ = write!(
        text,
        "DATA\r\nFrom: alice@leaf.test\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n.\r\nQUIT\r\n"
    );
    text
}

/// (Audit M1) Tags recur: Postfix reuses a short queue ID once its message
/// left the queue, so a later report with the same sender, recipient and
/// size carries the same tag. It was answered "queued before" and lost;
/// now the record's content digest tells it apart: deferred once (the old
/// record is dropped), then queued. A true retry still queues nothing.
#[test]
fn a_recurring_tag_with_other_content_is_queued_not_dropped() {
    let env = Env::start("recurring_tag");
    let first = session(&env, &[], &transaction(&["bob@hub.test"], "report 1"));
    assert!(dot_reply(&first).starts_with("250 2.0.0"), "{first}");
    let second = session(&env, &[], &transaction(&["bob@hub.test"], "report 2"));
    assert!(
        dot_reply(&second).starts_with("451 4.3.0"),
        "another message under a committed tag must be deferred, not taken for a retry:\n{second}"
    );
    let third = session(&env, &[], &transaction(&["bob@hub.test"], "report 2"));
    assert!(dot_reply(&third).starts_with("250 2.0.0"), "{third}");
    // The leaf's real retry of report 2 (its acknowledgement lost): the
    // same queue ID, nothing queued.
    let retry = session(&env, &[], &transaction(&["bob@hub.test"], "report 2"));
    assert_eq!(dot_reply(&retry), dot_reply(&third), "{retry}");
    env.wait_maildir("bob", 2, DELIVERY);
    env.wait_hub_queue_empty(DELIVERY);
    assert_eq!(env.hub_subjects("bob"), ["report 1", "report 2"]);
}

/// (Audit M2) Fast path: smtpd refuses nouser@ at RCPT, the message is
/// committed for bob@, the acknowledgement is lost. The retry used to skip
/// smtpd and release a 250 for nouser@, so the leaf reported it delivered
/// and no bounce was ever sent. Now bob@ is answered from the record and
/// nouser@ is asked about again: smtpd's 550 again, and nothing queued
/// twice.
#[test]
fn a_retry_does_not_turn_a_refused_recipient_into_delivered() {
    let port = free_port();
    let inject = vec!["--inject".to_owned(), format!("smtp:127.0.0.1:{port}")];
    let env = Env::start_with(
        "retry_refused_rcpt",
        EnvOptions::default().hub_param("local_recipient_maps", "$alias_maps"),
    );
    env.install_hub_listener(port);
    let input = transaction(&["bob@hub.test", "nouser@hub.test"], "once");
    let first = session(&env, &inject, &input);
    assert!(first.contains("\r\n550 5.1.1 <nouser@hub.test>"), "{first}");
    assert!(dot_reply(&first).starts_with("250 2.0.0"), "{first}");
    let retry = session(&env, &inject, &input);
    assert!(
        retry.contains("\r\n550 5.1.1 <nouser@hub.test>"),
        "the refused recipient must be refused again on a retry:\n{retry}"
    );
    assert_eq!(dot_reply(&retry), dot_reply(&first), "{retry}");
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_hub_queue_empty(DELIVERY);
    assert_eq!(env.hub_subjects("bob"), ["once"]);
}

/// (SPEC invariant 8) Exactly once with no setup: a hub whose rsmtp.conf
/// names no `tag_directory`, and whose account cannot write the packaged
/// default, keeps its records under the account's home, announces XTXID,
/// and `bsmtp-ssh check` on the leaf says so.
#[test]
fn a_hub_set_up_by_hand_keeps_tags_with_no_step() {
    let options = EnvOptions {
        hub_default_tags: true,
        ..EnvOptions::default()
    };
    let env = Env::start_with("default_tags", options);
    let home = nix::unistd::User::from_name(bsmtp_ssh_tests::HUB_SSH_USER)
        .unwrap()
        .unwrap()
        .dir;
    let store = home.join(".bsmtp-ssh/tags");
    // Left by an earlier run: this test is the only user of the home store.
    let _ = std::fs::remove_dir_all(home.join(".bsmtp-ssh"));
    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("exactly-once: ") && text.contains("keeps transaction tags"),
        "{text}"
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"Subject: tagged\n\nkept\n",
    );
    env.wait_maildir("bob", 1, DELIVERY);
    let records: Vec<_> = std::fs::read_dir(store.join("leaf1"))
        .unwrap_or_else(|e| panic!("no home store {}: {e}\n{}", store.display(), env.hub_log()))
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&store).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert!(
        !env.hub_log().contains("transaction tags off"),
        "{}",
        env.hub_log()
    );
    let _ = std::fs::remove_dir_all(home.join(".bsmtp-ssh"));
}

/// (Audit M2, a deferral) Fast path: smtpd defers grey@ at RCPT the first
/// time (`450`: an unknown local recipient with a soft reject code, as a
/// table lookup failure or greylisting would), the message is committed
/// for bob@, the acknowledgement is lost. Meanwhile grey@ became known.
/// The retry used to skip smtpd and release a 250 for grey@: reported
/// delivered, never queued. Now grey@ is asked about again and queued,
/// once; bob@ is answered from the record.
#[test]
fn a_retry_queues_a_recipient_deferred_the_first_time() {
    let port = free_port();
    let inject = vec!["--inject".to_owned(), format!("smtp:127.0.0.1:{port}")];
    let env = Env::start_with(
        "retry_deferred_rcpt",
        EnvOptions::default()
            .hub_param("local_recipient_maps", "$alias_maps")
            .hub_param("unknown_local_recipient_reject_code", "450"),
    );
    env.install_hub_listener(port);
    let input = transaction(&["bob@hub.test", "grey@hub.test"], "greylisted");
    let first = session(&env, &inject, &input);
    assert!(first.contains("\r\n450 4.1.1 <grey@hub.test>"), "{first}");
    assert!(dot_reply(&first).starts_with("250 2.0.0"), "{first}");
    // grey@ is now a known recipient: carol's mailbox.
    let aliases = env.hub_config_dir().join("aliases");
    let mut text = std::fs::read_to_string(&aliases).unwrap();
    let carol = env.hub_maildir("carol");
    let _ = writeln!(text, "grey {}/", carol.display());
    std::fs::write(&aliases, text).unwrap();
    env.hub().postfix(&["reload"]);
    std::thread::sleep(Duration::from_secs(2));
    let retry = session(&env, &inject, &input);
    assert!(
        !retry.contains("<grey@hub.test>") && dot_reply(&retry).starts_with("250 2.0.0"),
        "grey@ must be asked about again and taken now:\n{retry}"
    );
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_maildir("carol", 1, DELIVERY);
    env.wait_hub_queue_empty(DELIVERY);
    assert_eq!(env.hub_subjects("bob"), ["greylisted"]);
    assert_eq!(env.hub_subjects("carol"), ["greylisted"]);
}
