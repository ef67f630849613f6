//! The fast injection path end to end (issue 10 §1): rsmtp hands received
//! mail to the hub's dedicated smtpd listener (installed by
//! `bsmtp-ssh postfix-install --hub`, the shipped snippet) instead of
//! postdrop. The same policy applies before smtpd; smtpd's refusals reach
//! the leaf per recipient with smtpd's own code; the leaf logs smtpd's
//! real queue ID, which the hub's log lines (smtpd's, with the peer's
//! name, and rsmtp's) carry too; tags keep a retry from being queued
//! twice; smtpd down defers and loses nothing.

use std::time::Duration;

use bsmtp_ssh_tests::sshd::free_port;
use bsmtp_ssh_tests::util::{explain, poll, run_timeout, COMMAND_TIMEOUT};
use bsmtp_ssh_tests::{Env, EnvOptions, Log, PostlogMode};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_mins(3);

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@leaf.test>\nTo: Bob <bob@hub.test>\nSubject: {subject}\n\
         Message-ID: <{}@leaf.test>\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{body}",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// A body with the lines SMTP is touchy about, and 8-bit text.
const BODY: &str = ".leading dot\n.\n..\nGr\u{fc}\u{df}e \u{20ac}\nlast line\n";

/// The Postfix queue ID after `marker` in a log line.
fn id_after(line: &str, marker: &str) -> String {
    let at = line
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {line}"));
    line[at + marker.len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// The leaf queue ID that starts a `QUEUEID: to=<...>` line.
fn leaf_id(line: &str) -> String {
    let before = line
        .split(": to=<")
        .next()
        .unwrap_or_else(|| panic!("no ': to=<' in {line}"));
    before
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim_end_matches(':')
        .to_owned()
}

/// An environment whose rsmtp injects through the listener on a port of
/// its own: told by the forced command (`--inject`) in pipe mode, by
/// rsmtp.conf (`inject = ...`) in batching mode, so both ways are used.
fn fast_env(name: &str, options: EnvOptions, install: bool) -> (Env, u16) {
    let port = free_port();
    let inject = format!("smtp:127.0.0.1:{port}");
    let options = if options.batching {
        options.rsmtp_conf(&format!("inject = \"{inject}\""))
    } else {
        let mut args = options.rsmtp_args.clone();
        args.extend(["--inject".to_owned(), inject]);
        options.rsmtp_args(args)
    };
    let env = Env::start_with(name, options);
    if install {
        env.install_hub_listener(port);
    }
    (env, port)
}

/// Pipe mode through the fast path: the body arrives byte for byte; the
/// leaf logs smtpd's queue ID; the hub's smtpd logs that ID with the
/// peer's name and the leaf's queue ID (XFORWARD), rsmtp logs it with the
/// peer; no pickup(8) was involved; both Received: headers name the peer.
#[test]
fn pipe_mode_delivers_and_both_logs_carry_smtpds_queue_id() {
    // postlog set-gid (upstream's mode), so rsmtp's lines reach the log.
    let (env, _) = fast_env(
        "fast_pipe",
        EnvOptions::default().postlog(PostlogMode::SetGid),
        true,
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("fast pipe", BODY),
    );
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    let text = String::from_utf8_lossy(&delivered[0]).into_owned();
    assert!(text.ends_with(BODY), "body changed: {text}");
    let sent = env.wait_pipe_status("sent", DELIVERY);
    let hub_id = id_after(&sent, "queued as ");
    let leaf_queue_id = leaf_id(&sent);
    assert!(hub_id.len() >= 6 && leaf_queue_id.len() >= 6, "{sent}");
    // smtpd names rsmtp as the client and the peer as the original one
    // (XFORWARD), with the leaf's queue ID.
    let smtpd = env.wait_log(Log::Hub, &format!("{hub_id}: client="), DELIVERY);
    assert!(
        smtpd.contains("postfix/bsmtp-inject/smtpd[")
            && smtpd.contains(&format!(
                "orig_queue_id={leaf_queue_id}, orig_client=leaf1[127.0.0.1]"
            )),
        "{smtpd}"
    );
    let rsmtp = poll(DELIVERY, || {
        env.log_lines(Log::Hub, " rsmtp[")
            .into_iter()
            .find(|l| l.contains(&format!("{hub_id}: from=<alice@leaf.test>, size=")))
    })
    .unwrap_or_else(|| env.fail(&format!("no rsmtp line names {hub_id}")));
    assert!(
        rsmtp.contains("message-id=<fast-pipe@leaf.test>, peer=leaf1, status=queued"),
        "{rsmtp}"
    );
    assert!(
        env.log_lines(Log::Hub, "/pickup[").is_empty(),
        "the fast path must not go through pickup:\n{}",
        env.hub_log()
    );
    assert!(
        text.contains(&format!("(Postfix) with ESMTP id {hub_id}"))
            && text.contains("(peer leaf1)"),
        "{text}"
    );
    assert!(env.leaf_queue_is_empty(), "{}", env.leaf_queue());
}

/// Batching mode through the fast path (rsmtp.conf's `inject`), with
/// smtpd knowing the hub's local recipients: a message to a known and an
/// unknown recipient is delivered to the one and bounced on the leaf for
/// the other with smtpd's own 550 5.1.1; more messages in the same
/// session follow on the same smtpd connection, each once.
#[test]
fn batching_mode_refuses_an_unknown_recipient_with_smtpds_code() {
    let (env, _) = fast_env(
        "fast_batching",
        EnvOptions::default()
            .batching()
            .hub_param("local_recipient_maps", "$alias_maps"),
        true,
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test", "nosuch@hub.test"],
        &message("mixed", BODY),
    );
    for i in 0..5 {
        env.leaf_sendmail(
            "alice@leaf.test",
            &["carol@hub.test"],
            &message(&format!("more {i}"), "more\n"),
        );
    }
    let bob = env.wait_maildir("bob", 1, DELIVERY);
    assert!(String::from_utf8_lossy(&bob[0]).ends_with(BODY));
    env.wait_maildir("carol", 5, DELIVERY);
    let bounced = env.wait_log(Log::Leaf, "to=<nosuch@hub.test>", DELIVERY);
    assert!(
        bounced.contains("status=bounced")
            && bounced.contains("550 5.1.1 <nosuch@hub.test>")
            && bounced.contains("User unknown in local recipient table"),
        "{bounced}"
    );
    let sent = env.wait_log(Log::Leaf, "to=<bob@hub.test>", DELIVERY);
    assert!(sent.contains("status=sent"), "{sent}");
    let hub_id = id_after(&sent, "queued as ");
    let smtpd = env.wait_log(Log::Hub, &format!("{hub_id}: client="), DELIVERY);
    assert!(smtpd.contains("orig_client=leaf1[127.0.0.1]"), "{smtpd}");
    // smtpd refused it at RCPT; rsmtp counted it, and queued nothing for it.
    assert!(
        !env.hub_log().contains("to=<nosuch@hub.test>, relay=local"),
        "{}",
        env.hub_log()
    );
    let notices = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert!(
        notice.contains("nosuch@hub.test") && notice.contains("5.1.1"),
        "{notice}"
    );
    env.wait_leaf_queue_empty(DELIVERY);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    assert_eq!(Env::read_maildir(&env.hub_maildir("carol")).len(), 5);
    // One smtpd connection per SSH session, not one per message (and
    // one for the harness's probe of the listener).
    let sessions = env.log_lines(Log::Sshd, "Accepted publickey").len();
    let smtpd_connects = env
        .log_lines(Log::Hub, "bsmtp-inject/smtpd[")
        .iter()
        .filter(|l| l.contains(": connect from "))
        .count();
    assert!(
        sessions > 0 && smtpd_connects <= sessions + 1,
        "{smtpd_connects} smtpd connections for {sessions} SSH sessions:\n{}",
        env.hub_log()
    );
}

/// The peer's policy applies before smtpd: a sender leaf1 may not use
/// bounces with rsmtp's 5.7.1, and smtpd never sees the message.
#[test]
fn spoofed_sender_gets_5_7_1_before_smtpd() {
    let (env, _) = fast_env(
        "fast_spoofed",
        EnvOptions::default().rsmtp_args(["--allow-sender", "@other.test"]),
        true,
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("spoofed", "no\n"),
    );
    let bounced = env.wait_pipe_status("bounced", DELIVERY);
    assert!(
        bounced.contains("dsn=5.7.1") && bounced.contains("not allowed for peer leaf1"),
        "{bounced}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
    assert!(
        env.log_lines(Log::Hub, "orig_client=leaf1[").is_empty(),
        "smtpd must not see a refused sender:\n{}",
        env.hub_log()
    );
}

/// The hub's smtpd listener is not there: the leaf defers with 4.4.1 and
/// keeps the message; once the listener is installed, the retry delivers
/// it exactly once.
#[test]
fn smtpd_down_defers_then_delivers_once() {
    let (env, port) = fast_env("fast_smtpd_down", EnvOptions::default(), false);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("smtpd down", "kept\n"),
    );
    let deferred = env.wait_pipe_status("deferred", DELIVERY);
    assert!(
        deferred.contains("4.4.1") && deferred.contains("cannot connect to smtpd at"),
        "{deferred}"
    );
    assert!(env.leaf_queue().contains("bob@hub.test"));
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
    env.install_hub_listener(port);
    env.leaf_flush();
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert!(String::from_utf8_lossy(&delivered[0]).ends_with("kept\n"));
    env.wait_leaf_queue_empty(DELIVERY);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    assert_eq!(env.pipe_lines("sent").len(), 1);
}

/// One BSMTP session straight to rsmtp over SSH; its stdout.
fn session(env: &Env, batch: &str) -> String {
    let out = env.ssh_exec("", batch.as_bytes());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exactly once through the fast path: a transaction retried with its tag
/// (its 250 lost) is answered with smtpd's first queue ID and not handed
/// to smtpd again. The DSN request, BODY=8BITMIME and the peer reach
/// smtpd's queue file (the hub holds the mail: `defer_transports`).
#[test]
fn tagged_retry_is_not_injected_twice_and_dsn_reaches_smtpd() {
    let (env, _) = fast_env(
        "fast_tag_retry",
        EnvOptions::default()
            .hub_param("defer_transports", "local")
            .postlog(PostlogMode::SetGid),
        true,
    );
    let batch = "EHLO leaf.test\r\n\
        MAIL FROM:<alice@leaf.test> BODY=8BITMIME RET=HDRS ENVID=env+2B1 XTXID=4XTAG1.0123abcd\r\n\
        RCPT TO:<bob@hub.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40hub.test\r\n\
        DATA\r\nSubject: once\r\n\r\nGr\u{fc}\u{df}e\r\n.\r\nQUIT\r\n";
    let first = session(&env, batch);
    assert!(first.contains("250 2.0.0 Ok: queued as "), "{first}");
    let hub_id = id_after(&first, "queued as ");
    let second = session(&env, batch);
    assert!(
        second.contains(&format!("250 2.0.0 Ok: queued as {hub_id}\r\n")),
        "the retry must get the first queue ID {hub_id}: {second}"
    );
    env.wait_log(Log::Hub, "was committed before as", DELIVERY);
    // One message on the hub, from smtpd, once.
    let queued = poll(DELIVERY, || {
        let queue = env.hub_queue();
        queue.contains(&hub_id).then_some(queue)
    })
    .unwrap_or_else(|| env.fail(&format!("{hub_id} not in the hub's queue")));
    assert_eq!(queued.matches("alice@leaf.test").count(), 1, "{queued}");
    assert_eq!(
        env.log_lines(Log::Hub, "orig_client=leaf1[127.0.0.1]")
            .len(),
        1,
        "{}",
        env.hub_log()
    );
    let records = env.hub().postcat(&hub_id);
    for wanted in [
        "envelope_id=env+1",
        "ret_flags=2",
        "encoding=8bit",
        "notify_flags=6",
        "dsn_orig_rcpt=rfc822;bob@hub.test",
        "log_client_name=leaf1",
        "log_helo_name=leaf.test",
        "log_ident=4XTAG1",
    ] {
        assert!(records.contains(wanted), "{wanted} missing:\n{records}");
    }
}

/// smtpd's refusal after the dot (here the hub's `header_checks`
/// REJECT, applied by cleanup) reaches the leaf with smtpd's own code and
/// text, and the leaf bounces the message; nothing is delivered.
#[test]
fn refusal_after_the_dot_bounces_with_smtpds_code() {
    let (env, _) = fast_env("fast_after_dot", EnvOptions::default(), true);
    let checks = env.base().join("header_checks");
    std::fs::write(&checks, "/^Subject: reject me/ REJECT no thanks\n").unwrap();
    env.hub()
        .postconf(&[("header_checks", &format!("regexp:{}", checks.display()))]);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("reject me", "no\n"),
    );
    let bounced = env.wait_pipe_status("bounced", DELIVERY);
    assert!(
        bounced.contains("dsn=5.7.1") && bounced.contains("no thanks"),
        "{bounced}"
    );
    // It went through the listener (smtpd logged the peer), and cleanup
    // refused it there.
    env.wait_log(Log::Hub, "reject: header Subject: reject me", DELIVERY);
    assert!(
        !env.log_lines(Log::Hub, "orig_client=leaf1[127.0.0.1]")
            .is_empty(),
        "{}",
        env.hub_log()
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
}

/// The UNIX socket listener, what `postfix-install --hub` installs by
/// default (audit L10: no TCP port any local process could relay through):
/// smtpd answers on `public/bsmtp-inject` in the hub's queue directory, and
/// rsmtp (`--inject smtp:unix:public/bsmtp-inject`, a path relative to the
/// queue directory) delivers through it, smtpd's queue ID in its 250 and
/// the peer in smtpd's log. rsmtp runs here as root with `SSH_CONNECTION`
/// set (an online session): the peers' login would need group postdrop to
/// enter `public/`, which the test machine's account does not have.
#[test]
fn unix_socket_listener_delivers() {
    let env = Env::start("fast_unix");
    let out = run_timeout(
        std::process::Command::new(env.bin_dir().join("bsmtp-ssh"))
            .args(["postfix-install", "--hub"])
            .arg("--config-directory")
            .arg(env.hub_config_dir()),
        b"",
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        explain(
            "postfix-install --hub",
            out.status,
            &out.stdout,
            &out.stderr
        )
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("master.cf: bsmtp-inject/unix = bsmtp-inject unix ")
            && said.contains("inject = \"smtp:unix:public/bsmtp-inject\"")
            && !said.contains("TCP listener"),
        "{said}"
    );
    env.hub().postfix(&["reload"]);
    let socket = env.hub().dir.join("spool/public/bsmtp-inject");
    if poll(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })
    .is_none()
    {
        env.fail(&format!("no smtpd on {}", socket.display()));
    }
    let batch = b"EHLO leaf.test\r\nMAIL FROM:<alice@leaf.test>\r\nRCPT TO:<bob@hub.test>\r\n\
        DATA\r\nSubject: over the socket\r\n\r\nhello\r\n.\r\nQUIT\r\n";
    let out = run_timeout(
        env.rsmtp_command()
            .args(["--allow-sender", "@leaf.test"])
            .args(["--inject", "smtp:unix:public/bsmtp-inject"])
            .env("SSH_CONNECTION", "127.0.0.1 40022 127.0.0.1 22"),
        batch,
        COMMAND_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("250 2.0.0 Ok: queued as "),
        "{}",
        explain(
            "rsmtp --inject smtp:unix:...",
            out.status,
            &out.stdout,
            &out.stderr
        )
    );
    let hub_id = id_after(&stdout, "queued as ");
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert!(String::from_utf8_lossy(&delivered[0]).ends_with("hello\n"));
    let smtpd = env.wait_log(Log::Hub, &format!("{hub_id}: client="), DELIVERY);
    assert!(smtpd.contains("orig_client=leaf1[127.0.0.1]"), "{smtpd}");
}
