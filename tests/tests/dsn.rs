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
    assert!(
        ignored.is_empty(),
        "postdrop dropped attributes: {ignored:?}"
    );
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

/// `bsmtp-ssh deliver --envid` (what the pipe snippet passes from Postfix
/// 3.9's `${envid}`) reaches the hub: its bounce names the envelope ID.
#[test]
fn deliver_passes_the_envelope_id_on() {
    let env = env("dsn_deliver_envid", false);
    let out = env.deliver_by_hand(
        "alice@leaf.test",
        &["--envid", "by+hand 7"],
        &["nosuch@hub.test"],
        &message("by-hand", "nosuch@hub.test"),
    );
    assert!(out.status.success(), "{out:?}");
    let notices = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert!(
        notice.contains("Original-Envelope-Id: by+hand 7"),
        "{notice}"
    );
}

/// An 8-bit body with a UTF-8 header field, every 8-bit byte value, and a
/// non-ASCII recipient.
fn eight_bit_message() -> Vec<u8> {
    let mut message = "From: alice@leaf.test\nTo: ü@hub.test\nMessage-ID: <utf8@leaf.test>\n\
         Date: Wed, 2 Dec 2026 00:00:00 +0000\nSubject: Grüße\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
         Grüße aus 日本\n"
        .as_bytes()
        .to_vec();
    message.extend(0x80..=0xff_u8);
    message.push(b'\n');
    message
}

/// Sends [`eight_bit_message`] to ü@hub.test while the hub defers local
/// delivery; returns the hub's queue file (postcat), then lets it go and
/// checks it arrived byte for byte.
fn eight_bit_through(env: &Env, sendmail_options: &[&str]) -> String {
    let message = eight_bit_message();
    env.leaf_sendmail_with(
        sendmail_options,
        "alice@leaf.test",
        &["ü@hub.test"],
        &message,
    );
    let deferred = env.wait_log(Log::Hub, "status=deferred (deferred transport)", DELIVERY);
    let queue_id = deferred
        .split("]: ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| env.fail(&format!("no queue ID in {deferred}")))
        .to_owned();
    let queue_file = env.hub().postcat(&queue_id);
    env.hub().postconf(&[("defer_transports", "")]);
    env.hub().postfix(&["reload"]);
    env.hub().flush();
    let arrived = env.wait_maildir("bob", 1, DELIVERY);
    assert!(
        arrived[0].ends_with(&message),
        "not byte-identical:\n{}",
        String::from_utf8_lossy(&arrived[0])
    );
    queue_file
}

fn eight_bit_env(name: &str, batching: bool) -> Env {
    let options = EnvOptions::default()
        .hub_alias("ü", "bob")
        .hub_param("defer_transports", "local");
    Env::start_with(
        name,
        if batching {
            options.batching()
        } else {
            options
        },
    )
}

/// The envelope part of a postcat listing (the message's own attributes,
/// before the headers; cleanup adds more it finds in the headers later).
fn envelope_records(queue_file: &str) -> &str {
    queue_file
        .split("*** MESSAGE CONTENTS")
        .next()
        .unwrap_or_default()
}

/// Postfix's SMTPUTF8 flags: the last field of the size record.
fn smtputf8_flags(queue_file: &str) -> u32 {
    queue_file
        .lines()
        .find_map(|l| l.strip_prefix("message_size:"))
        .and_then(|fields| fields.split_whitespace().last())
        .and_then(|flags| flags.parse().ok())
        .unwrap_or_else(|| panic!("no size record in\n{queue_file}"))
}

/// The batching transport declares what the leaf's sender declared:
/// `BODY=8BITMIME` becomes the queue file's envelope encoding, `SMTPUTF8`
/// reaches rsmtp (its Received header says UTF8SMTP, as smtpd's would),
/// the UTF-8 original recipient arrives decoded, and the hub flags the
/// message SMTPUTF8.
#[test]
fn batching_declares_8bitmime_and_smtputf8() {
    let env = eight_bit_env("utf8_batching", true);
    let queue_file = eight_bit_through(&env, &["-B", "8BITMIME"]);
    let envelope = envelope_records(&queue_file);
    for expected in [
        "named_attribute: encoding=8bit",
        "named_attribute: dsn_orig_rcpt=utf-8;\u{fc}@hub.test",
        "recipient: \u{fc}@hub.test",
    ] {
        assert!(
            envelope.contains(expected),
            "no {expected:?} in\n{queue_file}"
        );
    }
    assert!(
        queue_file.contains("(rsmtp) with UTF8SMTP id"),
        "{queue_file}"
    );
    assert_eq!(smtputf8_flags(&queue_file) & 1, 1, "{queue_file}");
}

/// Pipe mode passes 8-bit mail unchanged but cannot declare it (pipe(8)
/// does not say): the hub's envelope has no encoding, and its cleanup
/// marks the message 8bit from the Content-Transfer-Encoding header, as
/// for mail from sendmail. A non-ASCII address makes bsmtp-ssh declare
/// SMTPUTF8.
#[test]
fn pipe_mode_passes_8bit_and_declares_smtputf8_for_utf8_addresses() {
    let env = eight_bit_env("utf8_pipe", false);
    let queue_file = eight_bit_through(&env, &["-B", "8BITMIME"]);
    assert!(
        !envelope_records(&queue_file).contains("encoding="),
        "{queue_file}"
    );
    assert!(
        queue_file.contains("*** HEADER EXTRACTED")
            && queue_file.contains("named_attribute: encoding=8bit"),
        "{queue_file}"
    );
    assert!(
        queue_file.contains("(rsmtp) with UTF8SMTP id"),
        "{queue_file}"
    );
    assert_eq!(smtputf8_flags(&queue_file) & 1, 1, "{queue_file}");
}
