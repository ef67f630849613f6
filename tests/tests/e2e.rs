//! End to end, with the real thing: leaf Postfix -> pipe(8) -> bsmtp-ssh ->
//! sshd forced command -> rsmtp -> postdrop -> hub Postfix -> local(8) ->
//! Maildir. Each test starts its own Postfix pair and sshd (see the harness).

use std::time::{Duration, Instant};

use bsmtp_ssh_tests::proc_tree;
use bsmtp_ssh_tests::{Env, EnvOptions, Log, PostlogMode};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);

/// A message with headers and `body`, LF line ends as sendmail takes it.
fn message(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut text = format!(
        "From: Alice <alice@leaf.test>\nTo: Bob <bob@hub.test>\nSubject: {subject}\n\
         MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\n"
    )
    .into_bytes();
    text.extend_from_slice(body);
    text
}

/// The body of a delivered message: everything after the first empty line.
fn body_of(delivered: &[u8]) -> &[u8] {
    let at = delivered
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a delivered message has a header/body separator");
    &delivered[at + 2..]
}

/// Every value of a header in a delivered message, unfolded.
fn headers(delivered: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(delivered);
    let head = text.split("\n\n").next().unwrap_or_default();
    let mut found: Vec<String> = Vec::new();
    let mut in_wanted = false;
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let (true, Some(value)) = (in_wanted, found.last_mut()) {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        in_wanted = false;
        if let Some((key, value)) = line.split_once(':') {
            if key.eq_ignore_ascii_case(name) {
                found.push(value.trim().to_owned());
                in_wanted = true;
            }
        }
    }
    found
}

/// Pseudo-random base64 lines, like a 1 MB attachment (no RNG crate needed).
fn attachment(bytes: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(bytes + bytes / 76 + 1);
    while out.len() < bytes {
        for _ in 0..76 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.push(ALPHABET[usize::try_from(state % 64).unwrap()]);
        }
        out.push(b'\n');
    }
    out
}

/// The hub queue ID in the leaf's `status=sent (... queued as ID)` line.
fn queued_as(line: &str) -> String {
    let at = line
        .find("queued as ")
        .unwrap_or_else(|| panic!("no 'queued as' in {line}"));
    line[at + "queued as ".len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// Dots at line starts, a lone dot, 8-bit UTF-8 and a 1 MB attachment reach
/// the hub's Maildir byte for byte; the leaf logs the hub's queue ID, which
/// the hub's copy carries in rsmtp's Received: header.
#[test]
fn delivers_body_byte_identical_and_logs_hub_queue_id() {
    let env = Env::start("byte_identical");
    let mut body = b".leading dot\n.\n..\n...three\nx.\n. space\n\
        Gr\xc3\xbc\xc3\x9fe, \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xe2\x82\xac\n\
        From the start of a line\n\n\n--boundary\n"
        .to_vec();
    body.extend_from_slice(&attachment(1024 * 1024));
    body.extend_from_slice(b".\n.last line starts with a dot\n");
    let original = message("byte identical", &body);
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &original);

    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert_eq!(delivered.len(), 1);
    let got = body_of(&delivered[0]);
    if got != body.as_slice() {
        env.fail(&format!(
            "body differs: sent {} bytes, got {}; first difference at byte {:?}",
            body.len(),
            got.len(),
            got.iter().zip(&body).position(|(a, b)| a != b)
        ));
    }
    let sent_line = env.wait_pipe_status("sent", DELIVERY);
    let hub_id = queued_as(&sent_line);
    assert!(hub_id.len() >= 6, "{sent_line}");
    let received = headers(&delivered[0], "Received");
    assert!(
        received
            .iter()
            .any(|r| r.contains(&format!("with ESMTP id {hub_id}")) && r.contains("peer leaf1")),
        "rsmtp's Received header should name the peer and the queue ID the leaf logged ({hub_id}): {received:?}"
    );
    assert!(env.leaf_queue_is_empty(), "{}", env.leaf_queue());
}

/// With the hub's sshd down the leaf defers and keeps the message; once sshd
/// is back and the queue is flushed, it arrives exactly once.
#[test]
fn hub_down_defers_then_delivers_once() {
    let mut env = Env::start("hub_down");
    env.stop_sshd();
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("while the hub was down", b"hello\n"),
    );
    let deferred = env.wait_pipe_status("deferred", DELIVERY);
    assert!(
        deferred.contains("4.4.1") && deferred.contains("Connection refused"),
        "{deferred}"
    );
    let queue = env.leaf_queue();
    assert!(
        queue.contains("bob@hub.test"),
        "message must stay queued: {queue}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());

    env.start_sshd();
    env.leaf_flush();
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert_eq!(body_of(&delivered[0]), b"hello\n");
    env.wait_leaf_queue_empty(DELIVERY);
    // Give a duplicate the chance to show up before counting.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    assert_eq!(env.pipe_lines("sent").len(), 1);
}

/// A changed host key defers with a message that names the mismatch, and
/// nothing reaches the hub.
#[test]
fn host_key_changed_defers_and_delivers_nothing() {
    let mut env = Env::start("host_key_changed");
    env.replace_host_key();
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("to an impostor", b"secret\n"),
    );
    let deferred = env.wait_pipe_status("deferred", DELIVERY);
    assert!(
        deferred.contains("4.7.0") && deferred.contains("host key mismatch"),
        "{deferred}"
    );
    assert!(env.leaf_queue().contains("bob@hub.test"));
    assert!(
        !env.sshd_log().contains("Accepted publickey"),
        "we must not log in to a host whose key does not match:\n{}",
        env.sshd_log()
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
}

/// A sender the peer's policy does not allow bounces, with the hub's 5.7.1,
/// back to the sender on the leaf.
#[test]
fn sender_not_allowed_bounces_with_hub_code() {
    let env = Env::start_with(
        "sender_not_allowed",
        EnvOptions::default().rsmtp_args(["--allow-sender", "@other.test"]),
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("not allowed", b"should bounce\n"),
    );
    let bounced = env.wait_pipe_status("bounced", DELIVERY);
    assert!(
        bounced.contains("dsn=5.7.1") && bounced.contains("not allowed for peer leaf1"),
        "{bounced}"
    );
    let notices = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert!(
        notice.contains("5.7.1") && notice.contains("bob@hub.test"),
        "bounce notice: {notice}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
}

/// The SSH session dies in the middle of DATA: the hub injects nothing of
/// that message, the leaf defers, and the retry delivers it exactly once.
#[test]
fn session_killed_mid_data_injects_nothing_then_retry_delivers_once() {
    let limit = "104857600";
    let env = Env::start_with(
        "killed_mid_data",
        EnvOptions::default()
            .rsmtp_args(["--allow-sender", "@leaf.test", "--max-size", limit])
            .leaf_param("message_size_limit", limit)
            .hub_param("message_size_limit", limit)
            .hub_param("mailbox_size_limit", "0"),
    );
    // Big enough that the transfer is still running when we act.
    let body = attachment(40 * 1024 * 1024);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("cut in the middle", &body),
    );
    let sshd = proc_tree::find_by_cmdline(&env.base().to_string_lossy(), "sshd")
        .unwrap_or_else(|| env.fail("cannot find our sshd process"));
    // Freeze postdrop as soon as the hub is inside DATA, so the message
    // cannot complete while we cut the session.
    let postdrop = poll_for(DELIVERY, || {
        proc_tree::descendants(sshd)
            .into_iter()
            .find(|p| proc_tree::comm(*p).as_deref() == Some("postdrop"))
    })
    .unwrap_or_else(|| env.fail("rsmtp never started postdrop"));
    proc_tree::signal(postdrop, nix::sys::signal::Signal::SIGSTOP);
    // The per-connection sshd processes (monitor and network child) below
    // the listener: killing them drops the TCP connection.
    for session in proc_tree::descendants(sshd) {
        if proc_tree::comm(session).as_deref() == Some("sshd") {
            proc_tree::signal(session, nix::sys::signal::Signal::SIGKILL);
        }
    }
    proc_tree::signal(postdrop, nix::sys::signal::Signal::SIGCONT);

    let deferred = env.wait_pipe_status("deferred", DELIVERY);
    assert!(deferred.contains("dsn=4."), "{deferred}");
    // rsmtp saw the stream end inside DATA and dropped the message.
    wait_until(Duration::from_secs(30), || !proc_tree::alive(postdrop))
        .unwrap_or_else(|| env.fail("postdrop still running after the session died"));

    // Postfix retries (the harness's backoff is short; flush to be sure).
    env.leaf_flush();
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert!(
        body_of(&delivered[0]) == body.as_slice(),
        "retried body differs"
    );
    env.wait_leaf_queue_empty(DELIVERY);
    std::thread::sleep(Duration::from_secs(2));
    // Had the cut session injected anything, there would be two copies and
    // two pickups.
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    assert_eq!(
        env.log_lines(Log::Hub, "from=<alice@leaf.test>")
            .iter()
            .filter(|l| l.contains("pickup"))
            .count(),
        1,
        "exactly one message may enter the hub's queue"
    );
    let maildrop = env.hub().dir.join("spool/maildrop");
    let left = wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&maildrop).is_ok_and(|mut d| d.next().is_none())
    });
    assert!(
        left.is_some(),
        "maildrop files left behind in {}",
        maildrop.display()
    );
}

/// Regression: libssh2's channel "flush" discards incoming data, which once
/// swallowed the 354 and paired the final reply with DATA. A body refused
/// after the dot must be reported as the reply to the end of DATA.
#[test]
fn oversized_body_without_size_is_refused_after_the_dot() {
    let env = Env::start_with(
        "oversized_body",
        EnvOptions::default().rsmtp_args(["--allow-sender", "@leaf.test", "--max-size", "100000"]),
    );
    let out = env.deliver_by_hand(
        "alice@leaf.test",
        &[],
        &["bob@hub.test"],
        &message("too big", &attachment(2 * 1024 * 1024)),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{stdout}");
    assert!(
        stdout.starts_with("5.3.4 ") && stdout.contains("(in reply to end of DATA)"),
        "{stdout}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
}

/// Hostile `SSH_ORIGINAL_COMMAND` values are refused with a clear message; no
/// command runs and nothing is injected.
#[test]
fn hostile_original_commands_are_refused() {
    let env = Env::start("hostile_commands");
    let marker = env.base().join("pwned");
    let marker = marker.display();
    let long = "receive ".repeat(200);
    let cases = [
        format!("receive; touch {marker}"),
        format!("$(touch {marker})"),
        format!("`touch {marker}`"),
        format!("receive && touch {marker}"),
        format!("receive | touch {marker}"),
        format!("touch {marker}"),
        "pull ../../etc/passwd".to_owned(),
        // Not "sendmail -bs": sendmail is a verb now, and an ungranted one
        // defers (75, see sendmail.rs), as a refused "receive" does by 421.
        "exim -bS".to_owned(),
        "postdrop -r".to_owned(),
        "/bin/sh -c id".to_owned(),
        "receive\nid".to_owned(),
        long,
    ];
    let batch = b"MAIL FROM:<alice@leaf.test>\nRCPT TO:<bob@hub.test>\nDATA\nhi\n.\nQUIT\n";
    for case in &cases {
        let out = env.ssh_exec(case, batch);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(77),
            "{case:?} must exit EX_NOPERM\nstdout: {stdout}\nstderr: {stderr}"
        );
        assert!(
            stderr.contains("refused SSH command") && stderr.contains("may run only \"receive\""),
            "{case:?}: {stderr}"
        );
        // 421: a refused command defers the leaf's mail, never bounces it.
        assert!(stdout.starts_with("421 4.7.0 "), "{case:?}: {stdout}");
        assert!(
            !stdout.contains("250"),
            "{case:?} must not accept mail: {stdout}"
        );
    }
    assert!(
        !std::path::Path::new(&marker.to_string()).exists(),
        "a hostile command ran"
    );
    // The same batch with the allowed verb is accepted: the refusals above
    // were about the command, not the batch.
    let out = env.ssh_exec("receive", batch);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("250 2.0.0 Ok: queued as"), "{stdout}");
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert_eq!(delivered.len(), 1);
}

fn poll_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> Option<()> {
    poll_for(timeout, || probe().then_some(()))
}

/// An empty `-f ''` is the null sender: a bounce relayed through the hub
/// arrives with `Return-Path: <>`.
#[test]
fn null_sender_is_relayed_as_null() {
    let env = Env::start("null_sender");
    let out = env.deliver_by_hand(
        "",
        &["--queue-id", "NULLTEST"],
        &["bob@hub.test"],
        &message("a bounce", b"Your message could not be delivered.\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("2.0.0 delivered via "), "{stdout}");
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert_eq!(
        headers(&delivered[0], "Return-Path"),
        ["<>"],
        "{}",
        String::from_utf8_lossy(&delivered[0])
    );
}

/// Sends one message with a Message-ID and a `known_hosts` line bsmtp-ssh
/// warns about (and skips), and returns the leaf's queue ID.
fn send_logged_message(env: &Env) -> String {
    let mut pins = std::fs::read_to_string(env.known_hosts()).unwrap();
    pins.push_str("garbage-host ssh-ed25519 not-base64!\n");
    std::fs::write(env.known_hosts(), pins).unwrap();
    let mut sent = message("logged", b"hello\n");
    sent.splice(0..0, b"Message-ID: <logtest.1@leaf.test>\n".iter().copied());
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &sent);
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_log(Log::Leaf, "postfix-leaf/pickup", DELIVERY)
        .split(": ")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// With postlog set-gid postdrop (upstream's mode), both sides log where
/// Postfix logs, in Postfix's shape: the leaf `QUEUEID: to=<..>, relay=..,
/// delay=.., status=sent (..)` and its warnings, the hub the maildrop queue
/// ID with the facts pickup logs too, so the two correlate.
#[test]
fn logs_in_postfix_style_on_both_sides_with_set_gid_postlog() {
    let env = Env::start_with(
        "logs_setgid",
        EnvOptions::default().postlog(PostlogMode::SetGid),
    );
    let leaf_queue_id = send_logged_message(&env);
    // pipe(8)'s own line says relay=bsmtp-ssh; this one is bsmtp-ssh's.
    let sent = env.wait_log(
        Log::Leaf,
        &format!("{leaf_queue_id}: to=<bob@hub.test>, relay=127.0.0.1[127.0.0.1]:"),
        DELIVERY,
    );
    assert!(
        sent.contains(" bsmtp-ssh[")
            && sent.contains(", delay=")
            && sent.contains(", status=sent (250 2.0.0 Ok: queued as "),
        "{sent}"
    );
    let warning = env.wait_log(Log::Leaf, "warning: known_hosts ", DELIVERY);
    assert!(
        warning.contains(" bsmtp-ssh[") && warning.contains("line 2"),
        "{warning}"
    );
    let hub_id = queued_as(&sent);
    let theirs = env.wait_log(Log::Hub, " rsmtp[", DELIVERY);
    assert!(
        theirs.contains(&format!("{hub_id}: from=<alice@leaf.test>, size="))
            && theirs
                .contains("nrcpt=1, message-id=<logtest.1@leaf.test>, peer=leaf1, status=queued"),
        "{theirs}"
    );
    let pickup = env.wait_log(Log::Hub, "postfix-hub/pickup", DELIVERY);
    assert!(pickup.contains("from=<alice@leaf.test>"), "{pickup}");
}

/// Regression (fresh machine): Debian installs postlog 0755, so postlog run
/// as pipe(8)'s user could not reach postlogd and every bsmtp-ssh line was
/// lost. Now each delivery's outcome is in pipe(8)'s own status line (the
/// relay and the hub's queue ID), and bsmtp-ssh's warnings follow in its
/// text, which Postfix logs whole for a deferral (a success keeps only its
/// first 100 characters, pipe.c).
#[test]
fn logs_reach_the_mail_log_with_debian_postlog() {
    let mut env = Env::start_with(
        "logs_debian",
        EnvOptions::default().postlog(PostlogMode::Debian),
    );
    let leaf_queue_id = send_logged_message(&env);
    let status = env.wait_pipe_status("sent", DELIVERY);
    assert!(
        status.contains(&format!("{leaf_queue_id}: to=<bob@hub.test>"))
            && status.contains("(2.0.0 delivered via 127.0.0.1[127.0.0.1]:")
            && status.contains(": 250 2.0.0 Ok: queued as "),
        "{status}"
    );
    assert!(
        env.log_lines(Log::Leaf, " bsmtp-ssh[").is_empty(),
        "postlog cannot log for the transport user here; nothing was expected from it"
    );
    // The hub's own lines tie the message to the leaf: pickup logs the
    // sender, and rsmtp's Received header names the peer.
    let pickup = env.wait_log(Log::Hub, "postfix-hub/pickup", DELIVERY);
    assert!(pickup.contains("from=<alice@leaf.test>"), "{pickup}");
    let delivered = Env::read_maildir(&env.hub_maildir("bob"));
    let received = headers(&delivered[0], "Received");
    assert!(
        received.iter().any(|r| r.contains("peer leaf1")),
        "{received:?}"
    );

    // A deferral: the reason, then the warning, both in the mail log.
    env.stop_sshd();
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("deferred", b"hello\n"),
    );
    let deferred = env.wait_pipe_status("deferred", DELIVERY);
    assert!(
        deferred.contains("dsn=4.4.1")
            && deferred.contains("Connection refused")
            && deferred.contains("warning: known_hosts ")
            && deferred.contains("line 2"),
        "bsmtp-ssh's warning must follow in pipe(8)'s status text: {deferred}"
    );
}

/// A bounce made on the leaf for a sender at the hub goes out through the
/// bsmtp transport with the null sender (pipe(8)'s `null_sender=` in the
/// shipped entry), not as "MAILER-DAEMON", which the hub would refuse.
#[test]
fn leaf_bounce_is_relayed_with_null_sender() {
    let env = Env::start("relayed_bounce");
    env.leaf_sendmail(
        "bob@hub.test",
        &["nosuchuser@leaf.test"],
        &message("to nobody", b"this bounces back to the hub\n"),
    );
    let notices = env.wait_maildir("bob", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert_eq!(headers(&notices[0], "Return-Path"), ["<>"], "{notice}");
    assert!(notice.contains("nosuchuser@leaf.test"), "{notice}");
    assert!(env
        .wait_pipe_status("sent", DELIVERY)
        .contains("to=<bob@hub.test>"));
}

/// Regression (audit 2.1): rsmtp wrote `"john..doe"@hub.test` into the
/// queue as it came, so Postfix looked for the mailbox `"john..doe"`
/// (logging `"\"john..doe\""`) and bounced; and bsmtp-ssh refused a legal
/// quoted local part holding `<` or `>` (5.1.3). Postfix keeps addresses
/// unquoted inside: now the mail arrives, sender and recipients alike.
#[test]
fn quoted_local_parts_reach_their_mailboxes() {
    let env = Env::start_with(
        "quoted_local_parts",
        EnvOptions::default()
            .hub_alias("john..doe", "carol")
            .hub_alias("odd<box>", "dave"),
    );
    env.leaf_sendmail(
        "\"al ice\"@leaf.test",
        &["\"john..doe\"@hub.test", "\"odd<box>\"@hub.test"],
        &message("quoted", b"hello\n"),
    );
    for mailbox in ["carol", "dave"] {
        let delivered = env.wait_maildir(mailbox, 1, DELIVERY);
        assert_eq!(
            headers(&delivered[0], "Return-Path"),
            ["<\"al ice\"@leaf.test>"],
            "{}",
            String::from_utf8_lossy(&delivered[0])
        );
    }
    // Postfix logs the external form of what it holds: one pair of quotes.
    for to in ["to=<\"john..doe\"@hub.test>", "to=<\"odd<box>\"@hub.test>"] {
        let line = env.wait_log(Log::Hub, to, DELIVERY);
        assert!(line.contains("status=sent"), "{line}");
    }
    assert!(
        !env.hub_log().contains("\\\""),
        "no address may arrive quoted twice:\n{}",
        env.hub_log()
    );
    assert_eq!(env.pipe_lines("sent").len(), 2, "{}", env.leaf_log());
}

/// Regression (audit 2.6): 200,000 empty lines over one session got
/// 200,000 replies and 9.4 MB of hub log. As Postfix's smtpd
/// (`smtpd_hard_error_limit`, 20): 421 after 20 errors, the session ends,
/// and the hub logs a bounded number of lines.
#[test]
fn error_limit_ends_a_flood_of_bad_lines() {
    let env = Env::start_with(
        "error_limit",
        EnvOptions::default().postlog(PostlogMode::SetGid),
    );
    let flood = b"\n".repeat(200_000);
    let out = env.ssh_exec("receive", &flood);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 21, "{stdout}");
    assert!(
        replies[..20].iter().all(|r| r.starts_with("500 5.5.2 ")),
        "{stdout}"
    );
    assert!(
        replies[20].starts_with("421 4.7.0 ") && replies[20].contains("too many errors"),
        "{stdout}"
    );
    let logged = env.wait_log(
        Log::Hub,
        "more warnings in this session not logged",
        DELIVERY,
    );
    assert!(logged.contains("rsmtp["), "{logged}");
    let lines = env.log_lines(Log::Hub, " rsmtp[").len();
    assert!(
        (10..=15).contains(&lines),
        "rate-limited log: {lines} lines\n{}",
        env.hub_log()
    );
}

/// Regression (audit 2.7): a peer that sends commands but never reads the
/// replies left rsmtp blocked in write for ever, with a postdrop child
/// alive. Now the idle timeout applies to writes too: rsmtp gives up, drops
/// the open message (nothing queued) and exits.
#[test]
fn peer_that_never_reads_replies_is_dropped() {
    let env = Env::start("write_timeout");
    // Enough replies to fill the 64 KiB pipe nobody reads, then a message
    // left open: rsmtp reads all of it at once from the file.
    let mut batch = b"NOOP\r\n".repeat(8000);
    batch.extend_from_slice(
        b"MAIL FROM:<alice@leaf.test>\r\nRCPT TO:<bob@hub.test>\r\nDATA\r\nSubject: never\r\n\r\nopen\r\n",
    );
    // A peer over SSH, as sshd runs rsmtp: SSH_CONNECTION set and a pipe on
    // stdin (a file, or no SSH_CONNECTION, is an offline batch: no replies,
    // nothing blocks, and postdrop may come and go before it is seen). The
    // whole batch is in the pipe before rsmtp starts, so its first read
    // takes all of it; the pipe stays open, as a live peer's would.
    assert!(batch.len() < 60_000, "the batch must fit in the pipe");
    let (stdin, mut peer) = std::io::pipe().unwrap();
    std::io::Write::write_all(&mut peer, &batch).unwrap();
    let mut child = env
        .rsmtp_command()
        .args(["--allow-sender", "@leaf.test", "--idle-timeout", "2"])
        // The NOOPs are junk past 100 (smtpd_junk_command_limit): each
        // counts as an error, so the error limit must not end it first.
        .args(["--hard-error-limit", "100000"])
        .env("SSH_CONNECTION", "127.0.0.1 40022 127.0.0.1 22")
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    // postdrop started for the open message, under rsmtp.
    let postdrop = poll_for(DELIVERY, || {
        proc_tree::descendants(pid)
            .into_iter()
            .find(|p| proc_tree::comm(*p).as_deref() == Some("postdrop"))
    })
    .unwrap_or_else(|| env.fail("rsmtp never started postdrop"));
    let exited = poll_for(Duration::from_mins(1), || child.try_wait().ok().flatten());
    let Some(status) = exited else {
        let _ = child.kill();
        env.fail("rsmtp still blocked writing 60 s after a 2 s idle timeout");
    };
    assert!(!status.success(), "{status}");
    drop(peer);
    wait_until(Duration::from_secs(30), || !proc_tree::alive(postdrop))
        .unwrap_or_else(|| env.fail("postdrop still running after rsmtp gave up"));
    drop(child);
    let maildrop = env.hub().dir.join("spool/maildrop");
    assert!(
        std::fs::read_dir(&maildrop).is_ok_and(|mut d| d.next().is_none()),
        "nothing may be queued"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
    // It was the write timeout that ended it, not the end of the input.
    assert!(
        env.hub_log()
            .contains("read none of our replies for 2s (write timeout)"),
        "{}",
        env.hub_log()
    );
}

/// (SPEC invariant 3, audit) The hub commits, the leaf's deadline ends
/// before the 250: Postfix retries and the message is on the hub once, the
/// retry answered with the first queue ID (pipe mode).
#[test]
fn lost_acknowledgement_after_a_slow_commit_is_not_queued_twice() {
    use bsmtp_ssh_tests::lost_ack::{env, run, Loss};
    run(
        &env("pipe_slow_ack", false, Loss::SlowCommit),
        Loss::SlowCommit,
    );
}

/// The same when the session is cut after the commit (pipe mode).
#[test]
fn lost_acknowledgement_after_a_killed_session_is_not_queued_twice() {
    use bsmtp_ssh_tests::lost_ack::{env, run, Loss};
    run(
        &env("pipe_killed_ack", false, Loss::SessionKilled),
        Loss::SessionKilled,
    );
}
