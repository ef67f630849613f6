//! What SMTP carries besides the message, end to end through real Postfix
//! on both sides: DSN requests (`RET`, `ENVID`, `NOTIFY`, `ORCPT`),
//! `8BITMIME` and `SMTPUTF8`. The batching transport carries all of them;
//! pipe mode carries what pipe(8) gives, as the README's table says. The
//! hub routes leaf.test back to the leaf, so its notices reach alice.

use std::time::Duration;

use bsmtp_ssh_tests::system::postfix_has_envid_macro;
use bsmtp_ssh_tests::util::poll;
use bsmtp_ssh_tests::{Env, EnvOptions, Log};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_mins(3);

/// A body line a `RET=HDRS` notice must leave out.
const BODY_MARK: &str = "only the full message carries this line";

/// `sendmail` options of the message that asks for every notice.
const ASK_ALL: [&str; 6] = ["-N", "success,delay,failure", "-V", "envid42", "-R", "hdrs"];

fn message(id: &str, to: &str) -> Vec<u8> {
    format!(
        "From: alice@leaf.test\nTo: {to}\nMessage-ID: <{id}@leaf.test>\n\
         Date: Wed, 2 Dec 2026 00:00:00 +0000\nSubject: {id}\n\n{BODY_MARK}\n"
    )
    .into_bytes()
}

fn env(name: &str, batching: bool) -> Env {
    let options = EnvOptions::default().hub_returns_to_leaf();
    Env::start_with(
        name,
        if batching {
            options.batching()
        } else {
            options
        },
    )
}

/// Sends the DSN test messages: `ask` (every notice, envid42, headers
/// only) to bob, who gets it, and nosuch, who does not exist on the hub;
/// `never` (`NOTIFY=NEVER`) to nosuch.
fn send_dsn_messages(env: &Env) {
    env.leaf_sendmail_with(
        &ASK_ALL,
        "alice@leaf.test",
        &["bob@hub.test", "nosuch@hub.test"],
        &message("ask", "bob@hub.test, nosuch@hub.test"),
    );
    env.leaf_sendmail_with(
        &["-N", "never"],
        "alice@leaf.test",
        &["nosuch@hub.test"],
        &message("never", "nosuch@hub.test"),
    );
}

/// Waits until both queues are empty and the hub has bounced nosuch twice,
/// then returns alice's notices, which must be `count`.
fn settled_notices(env: &Env, count: usize) -> Vec<String> {
    env.wait_leaf_maildir("alice", count, DELIVERY);
    let settled = poll(DELIVERY, || {
        let bounced = env
            .log_lines(Log::Hub, "to=<nosuch@hub.test>")
            .iter()
            .filter(|l| l.contains("status=bounced"))
            .count();
        let empty = env.hub_queue().contains("Mail queue is empty")
            && env.leaf_queue().contains("Mail queue is empty");
        (bounced == 2 && empty).then_some(())
    });
    if settled.is_none() {
        env.fail("the hub did not bounce nosuch twice and empty both queues");
    }
    let notices: Vec<String> = Env::read_maildir(&env.leaf_maildir("alice"))
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    let ignored = env.log_lines(Log::Hub, "ignoring attribute record");
    assert!(ignored.is_empty(), "postdrop dropped attributes: {ignored:?}");
    if notices.len() != count {
        env.fail(&format!(
            "alice got {} notices, expected {count}:\n{}",
            notices.len(),
            notices.join("\n=====\n")
        ));
    }
    notices
}

/// The one notice whose report has `Action: ACTION` for `recipient`.
fn notice<'a>(env: &Env, notices: &'a [String], action: &str, recipient: &str) -> &'a str {
    let wanted = |n: &&String| {
        n.contains(&format!("Final-Recipient: rfc822; {recipient}"))
            && n.contains(&format!("Action: {action}"))
    };
    let found: Vec<&String> = notices.iter().filter(wanted).collect();
    match found.as_slice() {
        [one] => one,
        _ => env.fail(&format!(
            "{} notices with Action: {action} for {recipient}:\n{}",
            found.len(),
            notices.join("\n=====\n")
        )),
    }
}

/// The batching transport carries every DSN request: the hub's own success
/// notice (not the leaf's "relayed") and failure notice both carry the
/// envelope ID, the failure returns headers only (`RET=HDRS`) and names
/// the original recipient (`ORCPT`), and `NOTIFY=NEVER` silences a bounce.
#[test]
fn batching_carries_dsn_requests() {
    let env = env("dsn_batching", true);
    send_dsn_messages(&env);
    let notices = settled_notices(&env, 2);
    // "expanded": the hub's bob is an alias of a Maildir.
    let success = notice(&env, &notices, "expanded", "bob@hub.test");
    assert!(
        success.contains("Reporting-MTA: dns; hub.test"),
        "{success}"
    );
    assert!(
        success.contains("Original-Envelope-Id: envid42"),
        "{success}"
    );
    let failure = notice(&env, &notices, "failed", "nosuch@hub.test");
    for expected in [
        "Reporting-MTA: dns; hub.test",
        "Original-Envelope-Id: envid42",
        "Original-Recipient: rfc822;nosuch@hub.test",
        "Status: 5.1.1",
        "Message-ID: <ask@leaf.test>",
    ] {
        assert!(failure.contains(expected), "no {expected:?} in\n{failure}");
    }
    assert!(!failure.contains(BODY_MARK), "RET=HDRS ignored:\n{failure}");
    assert!(
        notices.iter().all(|n| !n.contains("<never@leaf.test>")),
        "NOTIFY=NEVER ignored"
    );
    assert_eq!(env.wait_maildir("bob", 1, DELIVERY).len(), 1);
}

/// Pipe mode carries no DSN request but `${envid}` (Postfix 3.9 on): the
/// leaf's pipe(8) reports bob "relayed", the hub bounces nosuch with the
/// whole message, and `NOTIFY=NEVER` does not reach the hub.
#[test]
fn pipe_mode_carries_what_pipe_gives() {
    let env = env("dsn_pipe", false);
    send_dsn_messages(&env);
    let notices = settled_notices(&env, 3);
    let relayed = notice(&env, &notices, "relayed", "bob@hub.test");
    assert!(
        relayed.contains("Reporting-MTA: dns; leaf.test"),
        "{relayed}"
    );
    assert!(
        relayed.contains("Original-Envelope-Id: envid42"),
        "{relayed}"
    );
    let failures: Vec<&String> = notices
        .iter()
        .filter(|n| n.contains("Action: failed") && n.contains("Reporting-MTA: dns; hub.test"))
        .collect();
    assert_eq!(failures.len(), 2, "{notices:?}");
    for failure in failures {
        assert!(
            failure.contains(BODY_MARK),
            "pipe mode cannot carry RET:\n{failure}"
        );
        assert_eq!(
            failure.contains("Original-Envelope-Id: envid42"),
            failure.contains("<ask@leaf.test>") && postfix_has_envid_macro(),
            "ENVID is carried exactly when pipe(8) has ${{envid}}:\n{failure}"
        );
    }
}
