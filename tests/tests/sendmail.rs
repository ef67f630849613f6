//! rsmtp's `sendmail` and `rsendmail` verbs over a real sshd: a host that
//! calls `ssh hub sendmail ...` the rsendmail way keeps working, within
//! the peer's policy, and nothing but sending mail is possible.

use std::time::Duration;

use bsmtp_ssh_tests::{Env, EnvOptions, Log};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);

fn env(name: &str) -> Env {
    Env::start_with(
        name,
        EnvOptions::default().rsmtp_args([
            "--allow-sender",
            "@leaf.test",
            "--allow-recipient",
            "@hub.test",
            "--allow-verb",
            "sendmail",
        ]),
    )
}

fn message(id: &str) -> Vec<u8> {
    format!("From: alice@leaf.test\nMessage-ID: <{id}@leaf.test>\nSubject: {id}\n\nbody of {id}\n")
        .into_bytes()
}

fn explain(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The command lines rsendmail's client (`sshsendmail` 1.1.4) sends:
/// `rsendmail [-f SENDER] RECIPIENT...`, space-joined (no -f for a bounce's
/// empty sender); and the usual sendmail forms.
#[test]
fn rsendmail_client_command_lines_are_accepted() {
    let env = env("sendmail_verb");
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "rsendmail -f alice@leaf.test bob@hub.test",
            "plain",
            &["bob"],
        ),
        ("rsendmail bob@hub.test", "bounce", &["bob"]),
        (
            "rsendmail -f alice@leaf.test bob@hub.test carol@hub.test",
            "two",
            &["bob", "carol"],
        ),
        (
            "sendmail -oi -f alice@leaf.test -- dave@hub.test",
            "oi",
            &["dave"],
        ),
        (
            "sendmail -falice@leaf.test -i dave@hub.test",
            "glued",
            &["dave"],
        ),
    ];
    for (command, id, _) in cases {
        let out = env.ssh_exec(command, &message(id));
        assert!(out.status.success(), "{command}: {}", explain(&out));
        assert!(out.stdout.is_empty(), "{command}: {}", explain(&out));
    }
    env.wait_maildir("bob", 3, DELIVERY);
    env.wait_maildir("dave", 2, DELIVERY);
    assert_eq!(env.hub_subjects("bob"), ["bounce", "plain", "two"]);
    assert_eq!(env.hub_subjects("carol"), ["two"]);
    assert_eq!(env.hub_subjects("dave"), ["glued", "oi"]);
    // The bounce form went out from the null sender.
    let bounce = Env::read_maildir(&env.hub_maildir("bob"))
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .find(|m| m.contains("Subject: bounce"))
        .unwrap();
    assert!(bounce.contains("Return-Path: <>"), "{bounce}");
}

/// `-t` takes the recipients from the headers and drops `Bcc:`; without
/// `-i` a line holding only `.` ends the message.
#[test]
fn minus_t_and_the_dot_line() {
    let env = env("sendmail_t");
    let out = env.ssh_exec(
        "sendmail -t -f alice@leaf.test",
        b"From: alice@leaf.test\nTo: bob@hub.test\nBcc: carol@hub.test\nSubject: headers\n\nkept\n.\nnot part of it\n",
    );
    assert!(out.status.success(), "{}", explain(&out));
    let bob = env.wait_maildir("bob", 1, DELIVERY);
    let carol = env.wait_maildir("carol", 1, DELIVERY);
    for copy in [&bob[0], &carol[0]] {
        let text = String::from_utf8_lossy(copy);
        assert!(!text.contains("Bcc:"), "{text}");
        assert!(text.ends_with("\nkept\n"), "{text}");
    }
}

/// Every flag that does more than send is refused with `EX_USAGE` before
/// anything is read, and nothing is queued.
#[test]
fn flags_that_do_more_than_send_are_refused() {
    let env = env("sendmail_flags");
    for flag in [
        "-bp",
        "-bi",
        "-bd",
        "-q",
        "-q1h",
        "-bs",
        "-bv",
        "-C/etc/postfix",
        "-O",
        "-X/tmp/log",
        "-oQ/tmp",
        "-oem",
    ] {
        let out = env.ssh_exec(&format!("sendmail {flag} bob@hub.test"), &message("flag"));
        assert_eq!(out.status.code(), Some(64), "{flag}: {}", explain(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not allowed") && stderr.contains("only -f SENDER"),
            "{flag}: {stderr}"
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        env.log_lines(Log::Hub, "/pickup[").is_empty(),
        "{}",
        env.hub_log()
    );
}

/// The peer's policy holds: a sender it may not use, a recipient it may
/// not reach (nothing is queued, not even for the others), a message cut
/// mid-line, and a key not granted the verb.
#[test]
fn policy_and_truncation_refusals_queue_nothing() {
    let env = env("sendmail_refused");
    let cases: [(&str, &[u8], i32, &str); 3] = [
        (
            "sendmail -f mallory@evil.test bob@hub.test",
            b"Subject: a\n\nx\n",
            77,
            "5.7.1",
        ),
        (
            "sendmail -f alice@leaf.test bob@hub.test eve@other.test",
            b"Subject: b\n\nx\n",
            77,
            "5.7.1",
        ),
        (
            "sendmail -f alice@leaf.test bob@hub.test",
            b"Subject: c\n\ncut in the mid",
            75,
            "cut short",
        ),
    ];
    for (command, stdin, status, says) in cases {
        let out = env.ssh_exec(command, stdin);
        assert_eq!(
            out.status.code(),
            Some(status),
            "{command}: {}",
            explain(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{command}: {}",
            explain(&out)
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
    assert!(
        env.log_lines(Log::Hub, "/pickup[").is_empty(),
        "{}",
        env.hub_log()
    );
}

/// A key not granted the verb gets 75 (a Postfix pipe(8) behind the
/// client defers while the admin grants it), and nothing is read.
#[test]
fn a_key_not_granted_the_verb_is_deferred() {
    let env = Env::start("sendmail_denied");
    let out = env.ssh_exec(
        "rsendmail -f alice@leaf.test bob@hub.test",
        &message("denied"),
    );
    assert_eq!(out.status.code(), Some(75), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-verb sendmail"),
        "{}",
        explain(&out)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        env.log_lines(Log::Hub, "/pickup[").is_empty(),
        "{}",
        env.hub_log()
    );
}

/// (Audit M5) A script's alert with no Date or Message-ID, sent twice
/// quickly (its first exit status lost), is queued once and the drop is
/// logged; the same alert after `content_tag_lifetime` is a new message,
/// queued again. It used to be dropped for the 7 days of `tag_lifetime`.
#[test]
fn an_identical_alert_is_dropped_only_within_content_tag_lifetime() {
    let env = Env::start_with(
        "sendmail_alert",
        EnvOptions::default()
            .rsmtp_args([
                "--allow-sender",
                "@leaf.test",
                "--allow-recipient",
                "@hub.test",
                "--allow-verb",
                "sendmail",
            ])
            .rsmtp_conf("content_tag_lifetime = 2"),
    );
    let send = || {
        env.ssh_exec(
            "sendmail -f alice@leaf.test bob@hub.test",
            b"backup FAILED\n",
        )
    };
    let first = send();
    assert_eq!(first.status.code(), Some(0), "{}", explain(&first));
    let resend = send();
    assert_eq!(resend.status.code(), Some(0), "{}", explain(&resend));
    // rsmtp's log line (on the client's stderr, with the stock 0755
    // postlog) says what happened.
    let said = String::from_utf8_lossy(&resend.stderr);
    assert!(
        said.contains("a duplicate of") && said.contains("not queued"),
        "{}",
        explain(&resend)
    );
    std::thread::sleep(Duration::from_secs(3));
    let later = send();
    assert_eq!(later.status.code(), Some(0), "{}", explain(&later));
    env.wait_maildir("bob", 2, DELIVERY);
    env.wait_hub_queue_empty(DELIVERY);
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 2);
}
