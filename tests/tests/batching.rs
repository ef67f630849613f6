//! The batching transport end to end: the leaf's Postfix delivers through
//! lmtp(8) to spawn(8), which runs `bsmtp-ssh lmtp`, which carries every
//! message of the cached connection over one SSH session to the hub's
//! rsmtp; Postfix's qmgr keeps concurrency, retries and bounces.

use std::time::Duration;

use bsmtp_ssh_tests::once;
use bsmtp_ssh_tests::util::poll;
use bsmtp_ssh_tests::{Env, EnvOptions, Log};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_mins(3);

fn message(id: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@leaf.test>\nTo: bob@hub.test\nMessage-ID: <{id}@leaf.test>\nSubject: {subject}\n\nbody of {id}\n.\n..two\n"
    )
    .into_bytes()
}

/// Every id in `ids` arrived exactly once in each of `users`' Maildirs.
fn assert_exactly_once(env: &Env, users: &[&str], ids: &[String]) {
    once::assert_exactly_once(env, users, ids, DELIVERY);
}

fn logins(env: &Env) -> usize {
    env.log_lines(Log::Sshd, "Accepted publickey").len()
}

/// 200 messages with 3 recipients each arrive exactly once, over about as
/// many SSH sessions as lmtp(8) runs at once (4), not one per message.
#[test]
fn two_hundred_messages_over_a_few_sessions() {
    let env = Env::start_with("batching_200", EnvOptions::default().batching());
    let ids: Vec<String> = (0..200).map(|i| format!("bulk{i}")).collect();
    for id in &ids {
        env.leaf_sendmail(
            "alice@leaf.test",
            &["bob@hub.test", "carol@hub.test", "dave@hub.test"],
            &message(id, "bulk"),
        );
    }
    assert_exactly_once(&env, &["bob", "carol", "dave"], &ids);
    env.wait_leaf_queue_empty(DELIVERY);
    let sessions = logins(&env);
    assert!(
        (1..=4 + 6).contains(&sessions),
        "{sessions} SSH logins for 200 messages"
    );
    // Each recipient's own line, with the hub's queue ID.
    assert_eq!(
        env.log_lines(Log::Leaf, "status=sent (250 2.0.0 Ok: queued as ")
            .len(),
        600,
        "{}",
        env.leaf_log()
    );
}

/// One recipient the hub's policy refuses bounces alone; the others in the
/// same transaction are delivered, once.
#[test]
fn a_refused_recipient_bounces_alone() {
    let env = Env::start_with(
        "batching_refused_rcpt",
        EnvOptions::default().batching().rsmtp_args([
            "--allow-sender",
            "@leaf.test",
            "--allow-recipient",
            "bob@hub.test",
            "--allow-recipient",
            "carol@hub.test",
        ]),
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test", "carol@hub.test", "dave@hub.test"],
        &message("mixed", "three recipients"),
    );
    assert_exactly_once(&env, &["bob", "carol"], &["mixed".to_owned()]);
    let bounced = env.wait_log(Log::Leaf, "status=bounced", DELIVERY);
    assert!(
        bounced.contains("to=<dave@hub.test>") && bounced.contains("554 5.7.1"),
        "{bounced}"
    );
    let notices = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert!(
        notice.contains("Final-Recipient: rfc822; dave@hub.test")
            && notice.contains("Status: 5.7.1")
            && !notice.contains("Final-Recipient: rfc822; bob@hub.test")
            && !notice.contains("Final-Recipient: rfc822; carol@hub.test"),
        "{notice}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("dave")).is_empty());
}

/// The SSH session dies in the middle of a stream of messages: Postfix
/// retries what was not acknowledged, and in the end every message is
/// there exactly once.
#[test]
fn session_killed_mid_stream_loses_and_doubles_nothing() {
    let env = Env::start_with("batching_killed", EnvOptions::default().batching());
    let ids: Vec<String> = (0..60).map(|i| format!("cut{i}")).collect();
    for id in &ids[..30] {
        env.leaf_sendmail(
            "alice@leaf.test",
            &["bob@hub.test"],
            &message(id, "first half"),
        );
    }
    // Cut every session as soon as some mail went through.
    poll(DELIVERY, || {
        (!Env::read_maildir(&env.hub_maildir("bob")).is_empty()).then_some(())
    })
    .unwrap_or_else(|| env.fail("nothing arrived"));
    let killed = env.kill_ssh_sessions();
    for id in &ids[30..] {
        env.leaf_sendmail(
            "alice@leaf.test",
            &["bob@hub.test"],
            &message(id, "second half"),
        );
    }
    env.leaf_flush();
    assert_exactly_once(&env, &["bob"], &ids);
    assert!(killed > 0, "no SSH session was running to be cut");
}

/// (SPEC invariant 3) The hub commits, the leaf's patience ends before the
/// 250: Postfix retries through the batching transport and the message is
/// on the hub once, the retry answered with the first queue ID.
#[test]
fn lost_acknowledgement_after_a_slow_commit_is_not_queued_twice() {
    use bsmtp_ssh_tests::lost_ack::{env, run, Loss};
    run(
        &env("batching_slow_ack", true, Loss::SlowCommit),
        Loss::SlowCommit,
    );
}

/// The same when the session is cut after the commit.
#[test]
fn lost_acknowledgement_after_a_killed_session_is_not_queued_twice() {
    use bsmtp_ssh_tests::lost_ack::{env, run, Loss};
    run(
        &env("batching_killed_ack", true, Loss::SessionKilled),
        Loss::SessionKilled,
    );
}
