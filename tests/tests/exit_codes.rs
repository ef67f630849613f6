//! The exit-code table (`bsmtp/src/status.rs`, README "Exit status"), tested
//! against Postfix itself: for each failure class the leaf's pipe(8)
//! transport gets mail for bob@hub.test and Postfix DEFERS or BOUNCES it as
//! the table says, with the table's enhanced status code in the leaf's log.
//!
//! Classes covered elsewhere (not repeated here), all in `e2e.rs`:
//! - connect refused (sshd down) -> deferred 4.4.1:
//!   `hub_down_defers_then_delivers_once`;
//! - host key mismatch -> deferred 4.7.0:
//!   `host_key_changed_defers_and_delivers_nothing`;
//! - remote 5xx, sender not allowed -> bounced 5.7.1:
//!   `sender_not_allowed_bounces_with_hub_code`.

use std::time::Duration;

use bsmtp_ssh_tests::util::{set_mode, shell_quote, write_file};
use bsmtp_ssh_tests::{Env, EnvOptions, Log};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);

/// A message from alice@leaf.test to bob@hub.test, LF line ends.
fn message(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut text =
        format!("From: Alice <alice@leaf.test>\nTo: Bob <bob@hub.test>\nSubject: {subject}\n\n")
            .into_bytes();
    text.extend_from_slice(body);
    text
}

/// Sends one message alice -> bob@hub.test through the leaf's Postfix.
fn send(env: &Env, subject: &str) {
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message(subject, b"hello\n"),
    );
}

/// The leaf's first pipe(8) result line for the bsmtp transport; panics
/// unless it has `dsn=<dsn>` and `status=<status>`.
fn expect_result(env: &Env, dsn: &str, status: &str) -> String {
    let line = env.wait_log(Log::Leaf, "relay=bsmtp", DELIVERY);
    if !(line.contains(&format!("dsn={dsn},")) && line.contains(&format!("status={status} ("))) {
        env.fail(&format!(
            "expected dsn={dsn}, status={status} in the leaf's pipe(8) line:\n{line}"
        ));
    }
    line
}

/// A deferred message stays queued on the leaf, nothing reached the hub and
/// nothing bounced back to the sender.
fn expect_kept(env: &Env) {
    let queue = env.leaf_queue();
    assert!(
        queue.contains("bob@hub.test"),
        "a deferred message must stay in the leaf's queue:\n{queue}"
    );
    assert!(
        Env::read_maildir(&env.hub_maildir("bob")).is_empty(),
        "nothing may reach the hub"
    );
    let bounced = env.log_lines(Log::Leaf, "status=bounced");
    assert!(
        bounced.is_empty(),
        "a deferral must never bounce: {bounced:?}"
    );
    assert!(
        Env::read_maildir(&env.leaf_maildir("alice")).is_empty(),
        "no bounce notice may reach the sender"
    );
}

/// A bounced message comes back to alice@leaf.test with `dsn` in the notice,
/// leaves the leaf's queue and never reaches the hub.
fn expect_bounce_notice(env: &Env, dsn: &str, recipient_hint: &str) {
    let notices = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert!(
        notice.contains(&format!("Status: {dsn}")) && notice.contains(recipient_hint),
        "the bounce notice must carry {dsn} for {recipient_hint}:\n{notice}"
    );
    env.wait_leaf_queue_empty(DELIVERY);
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
}

/// The hub's `authorized_keys` no longer lists the leaf's key: SSH login is
/// refused, and Postfix defers with 4.7.0 (an admin fixes keys; mail waits).
#[test]
fn auth_refused_defers_4_7_0() {
    let env = Env::start("auth_refused");
    // Another key entirely: the leaf's is no longer listed.
    let other = env.base().join("other_key");
    bsmtp_ssh_tests::util::run_ok(
        std::process::Command::new("/usr/bin/ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "someone-else", "-f"])
            .arg(&other),
    );
    let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    write_file(
        &env.authorized_keys(),
        format!("restrict,command=\"/bin/false\" {public}"),
        0o644,
    );
    send(&env, "key no longer authorized");
    let line = expect_result(&env, "4.7.0", "deferred");
    assert!(line.contains("refused"), "{line}");
    expect_kept(&env);
    assert!(
        !env.sshd_log().contains("Accepted publickey"),
        "sshd must not have let the leaf in:\n{}",
        env.sshd_log()
    );
}

/// rsmtp cannot hand the message to Postfix (postdrop refuses `-c` for a
/// config directory not in `alternate_config_directories`): rsmtp answers
/// 451 4.3.0 after the dot and the leaf defers with the hub's own 4.3.0.
#[test]
fn remote_4xx_defers_with_hub_code_4_3_0() {
    let env = Env::start("remote_4xx");
    let bogus = env.base().join("bogus-etc");
    bsmtp_ssh_tests::util::mkdir(&bogus, 0o755);
    std::fs::copy(env.hub_config_dir().join("main.cf"), bogus.join("main.cf")).unwrap();
    let command = [
        env.bin_dir().join("rsmtp").to_string_lossy().into_owned(),
        "--peer".into(),
        "leaf1".into(),
        "--postfix-config".into(),
        bogus.to_string_lossy().into_owned(),
        "--allow-sender".into(),
        "@leaf.test".into(),
    ]
    .iter()
    .map(|w| shell_quote(w))
    .collect::<Vec<_>>()
    .join(" ");
    env.set_forced_command(&command);
    send(&env, "postdrop will refuse");
    let line = expect_result(&env, "4.3.0", "deferred");
    assert!(
        line.contains("said: 451 4.3.0"),
        "the hub's own 451 reply must be logged: {line}"
    );
    expect_kept(&env);
}

/// A message over rsmtp's `--max-size` bounces with the hub's 5.3.4 and a
/// bounce notice reaches the sender.
#[test]
fn message_too_large_bounces_5_3_4() {
    let env = Env::start_with(
        "too_large",
        EnvOptions::default().rsmtp_args(["--allow-sender", "@leaf.test", "--max-size", "1000"]),
    );
    let body = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n".repeat(80);
    assert!(body.len() > 5000);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("five kilobytes", body.as_bytes()),
    );
    let line = expect_result(&env, "5.3.4", "bounced");
    assert!(line.contains("said: 552 5.3.4"), "{line}");
    expect_bounce_notice(&env, "5.3.4", "bob@hub.test");
}

/// A recipient address longer than 1024 bytes (RFC 5321's path limit is
/// 256): Postfix accepts and routes it, bsmtp-ssh refuses the envelope
/// before connecting (exit 65, 5.1.3) and Postfix bounces it.
#[test]
fn bad_envelope_bounces_5_1_3() {
    let env = Env::start("bad_envelope");
    let recipient = format!("{}@hub.test", "b".repeat(1100));
    env.leaf_sendmail(
        "alice@leaf.test",
        &[&recipient],
        &message("absurd recipient", b"hello\n"),
    );
    let line = expect_result(&env, "5.1.3", "bounced");
    assert!(line.contains("malformed recipient address"), "{line}");
    expect_bounce_notice(&env, "5.1.3", "bbbbbbbbbbbbbbbb@hub.test");
    assert!(
        !env.sshd_log().contains("Accepted publickey"),
        "a bad envelope is refused before connecting:\n{}",
        env.sshd_log()
    );

    // The same refusal straight from bsmtp-ssh: exit 65 (EX_DATAERR) and
    // the 5.1.3 status line pipe(8) reads.
    let out = env.deliver_by_hand(
        "alice@leaf.test",
        &[],
        &[&recipient],
        &message("direct", b"hi\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(65), "{stdout}");
    assert!(stdout.starts_with("5.1.3 malformed recipient"), "{stdout}");
}

/// The transport's key is unreadable by the transport user: a local
/// configuration error, which defers with 4.3.5 so nothing is lost while
/// the admin fixes it.
#[test]
fn config_error_defers_4_3_5() {
    let env = Env::start("config_error");
    set_mode(&env.leaf_key(), 0o000);
    send(&env, "key unreadable");
    let line = expect_result(&env, "4.3.5", "deferred");
    assert!(
        line.contains("cannot read key") && line.contains("Permission denied"),
        "{line}"
    );
    expect_kept(&env);
    assert!(
        !env.sshd_log().contains("Accepted publickey"),
        "{}",
        env.sshd_log()
    );
}

/// Something other than rsmtp answers on the hub (a broken forced command):
/// the peer broke the protocol, so Postfix defers with 4.5.0; the message is
/// never delivered and never bounced.
#[test]
fn peer_protocol_error_defers_4_5_0() {
    let env = Env::start("peer_protocol");
    env.set_forced_command("/bin/echo hello");
    send(&env, "to something that is not rsmtp");
    let line = expect_result(&env, "4.5.0", "deferred");
    // Postfix retries within seconds: every attempt must defer the same way.
    env.leaf_flush();
    std::thread::sleep(Duration::from_secs(3));
    let results = env.log_lines(Log::Leaf, "relay=bsmtp");
    assert!(
        results
            .iter()
            .all(|l| l.contains("dsn=4.5.0") && l.contains("status=deferred")),
        "{results:#?}"
    );
    assert!(line.contains("hub"), "{line}");
    expect_kept(&env);

    // The same with a peer that says nothing at all and exits.
    env.set_forced_command("/bin/true");
    env.leaf_flush();
    let before = results.len();
    let more = bsmtp_ssh_tests::util::poll(DELIVERY, || {
        let now = env.log_lines(Log::Leaf, "relay=bsmtp");
        (now.len() > before).then_some(now)
    })
    .unwrap_or_else(|| env.fail("no retry after the flush"));
    let last = more.last().unwrap();
    assert!(
        last.contains("dsn=4.5.0") && last.contains("status=deferred"),
        "{last}"
    );
    expect_kept(&env);
}

/// bsmtp-ssh's own deadline fires long before Postfix's time limit (whose
/// expiry would bounce): a hub that never answers defers with 4.4.2.
#[test]
fn deadline_defers_4_4_2() {
    let env = Env::start("deadline");
    env.set_forced_command("sleep 20");
    let mut conf = std::fs::read_to_string(env.transport_config()).unwrap();
    assert!(conf.trim_end().ends_with(&format!(
        "known_hosts = \"{}\"",
        env.known_hosts().display()
    )));
    conf.push_str("deadline = 3\n");
    write_file(&env.transport_config(), conf, 0o644);
    send(&env, "to a hub that never answers");
    let started = std::time::Instant::now();
    let line = expect_result(&env, "4.4.2", "deferred");
    assert!(line.contains("did not finish within 3s"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline, not the hub, must end the attempt ({:?})",
        started.elapsed()
    );
    assert!(!line.contains("time limit"), "{line}");
    expect_kept(&env);
}

/// Regression (audit 2.2): a verb the hub does not grant (here the leaf's
/// config asks for `pull`) was refused with 554 and bsmtp-ssh exited 69, so
/// Postfix bounced every queued message. A refused session is a
/// configuration fault on one side: it defers (4.3.5), and nothing runs.
#[test]
fn refused_ssh_command_defers_4_3_5() {
    let env = Env::start("refused_command");
    let mut conf = std::fs::read_to_string(env.transport_config()).unwrap();
    conf.push_str("command = \"pull\"\n");
    write_file(&env.transport_config(), conf, 0o644);
    send(&env, "the hub refuses the command");
    let line = expect_result(&env, "4.3.5", "deferred");
    assert!(
        line.contains("refused the session") && line.contains("421 4.7.0 refused SSH command"),
        "{line}"
    );
    expect_kept(&env);

    // A receiver that refuses with a 5xx before any mail: still a deferral.
    env.set_forced_command("printf '554 5.7.0 not for you\\r\\n'");
    retry_expect(&env, "554 5.7.0 not for you", "4.3.5");
}

/// Flushes the leaf's queue and waits for a pipe(8) line containing
/// `needle`; it must defer with `dsn`, and the message stay queued.
fn retry_expect(env: &Env, needle: &str, dsn: &str) {
    env.leaf_flush();
    let retried = bsmtp_ssh_tests::util::poll(DELIVERY, || {
        env.log_lines(Log::Leaf, "relay=bsmtp")
            .into_iter()
            .find(|l| l.contains(needle))
    })
    .unwrap_or_else(|| env.fail(&format!("no retry logged with {needle:?}")));
    assert!(
        retried.contains(&format!("dsn={dsn},")) && retried.contains("status=deferred"),
        "{retried}"
    );
    expect_kept(env);
}

/// Regression (audit 2.3): a reply of the wrong kind where another was due
/// (a 220 greeting answering EHLO, a 250 answering DATA) made the status
/// line start with 2.0.0, and pipe(8) bounces any status whose class is not
/// 4, even with exit 75. A peer out of step defers with 4.5.0.
#[test]
fn replies_out_of_step_defer_4_5_0() {
    let env = Env::start("out_of_step");
    // A `sendmail -bs`-style receiver: greets first, so every reply after
    // is one step behind.
    env.set_forced_command(
        "printf '220 hub ESMTP\\r\\n'; while read -r line; do printf '250 2.0.0 Ok\\r\\n'; done",
    );
    send(&env, "to a greeting receiver");
    let line = expect_result(&env, "4.5.0", "deferred");
    assert!(
        line.contains("answered EHLO with an unexpected reply: 220 hub ESMTP"),
        "{line}"
    );
    expect_kept(&env);

    // One that says 250 to everything, DATA included.
    env.set_forced_command("while read -r line; do printf '250 2.0.0 Ok\\r\\n'; done");
    retry_expect(&env, "answered DATA", "4.5.0");
}

/// Regression (audit 2.4): libssh2 reads `@revoked` as a host name, so a
/// revoked host key was accepted and mail delivered where OpenSSH refuses
/// the same file. Now it defers with 4.7.0 naming the revocation.
#[test]
fn revoked_host_key_defers_4_7_0() {
    let env = Env::start("revoked_key");
    let pin = std::fs::read_to_string(env.known_hosts()).unwrap();
    let key = pin.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    write_file(
        &env.known_hosts(),
        format!("{pin}@revoked * {key}\n"),
        0o644,
    );
    send(&env, "to a revoked key");
    let line = expect_result(&env, "4.7.0", "deferred");
    assert!(line.contains("revoked"), "{line}");
    expect_kept(&env);
}

/// An `@cert-authority` line would trust any host key the CA signed, which
/// is not pinning: a configuration error (4.3.5) that says so.
#[test]
fn cert_authority_line_defers_4_3_5() {
    let env = Env::start("cert_authority");
    let pin = std::fs::read_to_string(env.known_hosts()).unwrap();
    let key = pin.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    write_file(
        &env.known_hosts(),
        format!("{pin}@cert-authority *.test {key}\n"),
        0o644,
    );
    send(&env, "with a CA line");
    let line = expect_result(&env, "4.3.5", "deferred");
    assert!(
        line.contains("@cert-authority is not supported") && line.contains("line 2"),
        "{line}"
    );
    expect_kept(&env);
}

/// Regression (audit 2.8): rsmtp's size limit counted content only and
/// defaulted to Postfix's own `message_size_limit`, but postdrop cannot
/// write a queue file over that limit, and its records and rsmtp's
/// Received header add to the content. A message just under the limit was
/// answered 451 and retried for days; now it bounces with 552 5.3.4, and
/// rsmtp never advertises more than the hub takes.
#[test]
fn message_over_the_hubs_size_limit_bounces_5_3_4() {
    let env = Env::start_with(
        "hub_size_limit",
        EnvOptions::default().hub_param("message_size_limit", "200000"),
    );
    // 200-byte lines cost postdrop one more length byte each than their
    // CRLF: the queue file outgrows the content.
    let line = format!("{}\n", "x".repeat(198));
    let body = line.repeat(997);
    let out = env.deliver_by_hand(
        "alice@leaf.test",
        &[],
        &["bob@hub.test"],
        &message("just under", body.as_bytes()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{stdout}");
    assert!(
        stdout.starts_with("5.3.4 ") && stdout.contains("552 5.3.4 Error: message file too big"),
        "{stdout}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());

    // An admin's larger max_size is lowered to the hub's limit.
    let ehlo = env.ssh_exec("receive", b"EHLO leaf.test\r\nQUIT\r\n");
    let replies = String::from_utf8_lossy(&ehlo.stdout);
    assert!(replies.contains("250-SIZE 200000\r\n"), "{replies}");
}
