//! Several hubs under one destination (`[peer.hub] failover = ["hub1",
//! "hub2"]`), end to end: a dead first hub costs one connect timeout and
//! the second takes the mail, in pipe mode, batching mode and flush; a
//! wrong host key on the first hub is a warning naming it; when every hub
//! fails the worst reason defers; a message whose acknowledgement was lost
//! on hub 1 waits for hub 1 (never a second copy through hub 2); `check`
//! reports every hub.
//!
//! The second hub is a second sshd with its own host key and its own
//! rsmtp tag store in front of the same hub Postfix, so every copy of a
//! message lands in the one Maildir counted here.

use std::time::{Duration, Instant};

use bsmtp_ssh_tests::hubs::{DeadHub, SilentHub};
use bsmtp_ssh_tests::lost_ack::{install_slow_postdrop, PAUSE};
use bsmtp_ssh_tests::util::poll;
use bsmtp_ssh_tests::{Env, EnvOptions, Log, PostlogMode, HUB_PEER};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);

/// The connect timeout the tests give a failover destination.
const CONNECT_TIMEOUT: u64 = 2;

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: alice@leaf.test\nTo: bob@hub.test\nMessage-ID: <{id}@leaf.test>\nSubject: {id}\n\n{id} body\n"
    )
    .into_bytes()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The failover pins the leaf holds for the destination `hub`.
fn pins(env: &Env) -> Vec<String> {
    std::fs::read_dir(env.base().join("leaf-tags/.pinned").join(HUB_PEER))
        .map(|dir| {
            dir.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

fn copies(env: &Env, message_id: &str) -> usize {
    Env::read_maildir(&env.hub_maildir("bob"))
        .iter()
        .filter(|m| String::from_utf8_lossy(m).contains(message_id))
        .count()
}

/// Asserts that `deliver` succeeded through the second hub (this
/// environment's own sshd) and returns what it said.
fn delivered_by_hub2(env: &Env, out: &std::process::Output) -> String {
    let said = text(out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.starts_with(&format!(
            "2.0.0 delivered via 127.0.0.1[127.0.0.1]:{}: 250 ",
            env.sshd_port()
        )),
        "{said}"
    );
    said
}

/// Pipe mode: the first hub is down (its connect times out), the second
/// takes the message, and that cost one connect timeout.
#[test]
fn pipe_mode_fails_over_when_the_first_hub_is_down() {
    let env = Env::start("failover_pipe_down");
    let dead = DeadHub::start();
    assert!(dead.is_dead(), "the dead hub's port answered a connect");
    let timeout = format!("connect_timeout = {CONNECT_TIMEOUT}");
    env.write_failover_config(
        &[dead.spec(&env, "hub1"), env.hub_spec("hub2")],
        &[&timeout],
    );
    let started = Instant::now();
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4FAIL1"],
        &["bob@hub.test"],
        &message("down.1"),
    );
    let took = started.elapsed();
    let said = delivered_by_hub2(&env, &out);
    assert!(
        took >= Duration::from_secs(CONNECT_TIMEOUT)
            && took < Duration::from_secs(CONNECT_TIMEOUT + 8),
        "a dead first hub must cost one connect timeout ({CONNECT_TIMEOUT}s), took {took:?}: {said}"
    );
    env.wait_maildir("bob", 1, DELIVERY);
    assert!(
        pins(&env).is_empty(),
        "a pin outlived its 250: {:?}",
        pins(&env)
    );
    // And through the leaf's Postfix.
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("down.2"));
    env.wait_maildir("bob", 2, DELIVERY);
    let sent = env.wait_pipe_status("sent", DELIVERY);
    assert!(
        sent.contains(&format!(":{}: 250 ", env.sshd_port())),
        "{sent}"
    );
}

/// A first hub that accepts the connection and never answers (a hung
/// sshd) costs one idle timeout in the handshake; the second takes the
/// message.
#[test]
fn pipe_mode_fails_over_when_the_first_hub_never_answers() {
    let env = Env::start("failover_pipe_silent");
    let silent = SilentHub::start();
    env.write_failover_config(
        &[silent.spec(&env, "hub1"), env.hub_spec("hub2")],
        &["idle_timeout = 2"],
    );
    let started = Instant::now();
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4SILENT1"],
        &["bob@hub.test"],
        &message("silent.1"),
    );
    let took = started.elapsed();
    let said = delivered_by_hub2(&env, &out);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "a silent first hub must cost one idle timeout (2s), took {took:?}: {said}"
    );
    env.wait_maildir("bob", 1, DELIVERY);
}

/// Batching mode (spawn(8), lmtp(8), `bsmtp-ssh lmtp`): the same.
#[test]
fn batching_mode_fails_over_when_the_first_hub_is_down() {
    let env = Env::start_with("failover_lmtp_down", EnvOptions::default().batching());
    let dead = DeadHub::start();
    let timeout = format!("connect_timeout = {CONNECT_TIMEOUT}");
    env.write_failover_config(
        &[dead.spec(&env, "hub1"), env.hub_spec("hub2")],
        &[&timeout],
    );
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("lmtp.1"));
    env.wait_maildir("bob", 1, DELIVERY);
    let sent = env.wait_log(Log::Leaf, "status=sent", DELIVERY);
    assert!(sent.contains("to=<bob@hub.test>"), "{sent}");
    env.wait_leaf_queue_empty(DELIVERY);
    assert!(pins(&env).is_empty(), "{:?}", pins(&env));
}

/// `flush`: the spool goes to the second hub.
#[test]
fn flush_fails_over_when_the_first_hub_is_down() {
    let env = Env::start_with("failover_flush_down", EnvOptions::default().spool());
    let dead = DeadHub::start();
    let timeout = format!("connect_timeout = {CONNECT_TIMEOUT}");
    env.write_failover_config(
        &[dead.spec(&env, "hub1"), env.hub_spec("hub2")],
        &[&timeout],
    );
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("flush.1"));
    let spooled = poll(DELIVERY, || {
        (Env::spooled(&env.leaf_spool_directory(), HUB_PEER).len() == 1).then_some(())
    });
    assert!(spooled.is_some(), "{}", env.diagnostics());
    let out = env.flush();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 delivered"), "{}", text(&out));
    env.wait_maildir("bob", 1, DELIVERY);
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
    assert!(pins(&env).is_empty(), "{:?}", pins(&env));
}

/// `pull` through a failover destination: the first hub is down, the
/// second serves the leaf's spool (both hubs front the same hub here).
#[test]
fn pull_fails_over_when_the_first_hub_is_down() {
    let env = Env::start_with("failover_pull_down", EnvOptions::default().pull());
    let dead = DeadHub::start();
    let timeout = format!("connect_timeout = {CONNECT_TIMEOUT}");
    env.write_failover_config(
        &[dead.spec(&env, "hub1"), env.hub_spec("hub2")],
        &[&timeout],
    );
    env.hub_sendmail(
        "bob@hub.test",
        &["alice@leaf.test"],
        b"From: bob@hub.test\nTo: alice@leaf.test\nMessage-ID: <pulled.1@hub.test>\nSubject: p\n\nfor the leaf\n",
    );
    let spooled = poll(DELIVERY, || {
        (Env::spooled(&env.hub_spool_directory(), bsmtp_ssh_tests::LEAF_PEER).len() == 1)
            .then_some(())
    });
    assert!(spooled.is_some(), "{}", env.diagnostics());
    let out = env.pull();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 message(s) pulled"), "{}", text(&out));
    env.wait_leaf_maildir("alice", 1, DELIVERY);
}

/// A wrong host key on the first hub: a warning naming that hub, and the
/// second hub delivers. With no hub left that works, the worst reason (the
/// host key, not the dead hub's timeout) defers.
#[test]
fn a_wrong_host_key_on_the_first_hub_warns_and_the_second_delivers() {
    // postlog set-gid: bsmtp-ssh's own warnings reach the mail log (pipe(8)
    // logs only the start of a successful delivery's output).
    let mut env = Env::start_with(
        "failover_host_key",
        EnvOptions::default().postlog(PostlogMode::SetGid),
    );
    let second = env.start_second_hub("hub2");
    env.replace_host_key();
    let dead = DeadHub::start();
    let timeout = format!("connect_timeout = {CONNECT_TIMEOUT}");
    // Every hub fails: a dead one and one with a wrong key.
    env.write_failover_config(
        &[dead.spec(&env, "hub0"), env.hub_spec("hub1")],
        &[&timeout],
    );
    let out = env.deliver_as_leaf("alice@leaf.test", &[], &["bob@hub.test"], &message("k.0"));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.starts_with("4.7.0 ") && said.contains("host key mismatch for [127.0.0.1]:"),
        "every hub failed: the host key must be the reason, not the timeout: {said}"
    );
    assert!(
        said.contains("hub hub1: host key mismatch")
            && said.contains("every hub of peer hub failed: hub0 (unreachable), hub1 (host key)"),
        "each hub's failure is logged by name: {said}"
    );
    // The second hub works.
    env.write_failover_config(&[env.hub_spec("hub1"), second.spec("hub2")], &[]);
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("k.1"));
    env.wait_maildir("bob", 1, DELIVERY);
    let sent = env.wait_pipe_status("sent", DELIVERY);
    assert!(
        sent.contains(&format!(":{}: 250 ", second.sshd.port())),
        "{sent}"
    );
    let warning = env.wait_log(Log::Leaf, "hub hub1: ", DELIVERY);
    assert!(
        warning.contains("warning") && warning.contains("host key mismatch"),
        "{warning}"
    );
}

/// The acknowledgement of a message is lost on hub 1 (it committed; the
/// leaf gave up before the 250), then hub 1 goes down. The retry must not
/// go to hub 2, whose tag store never saw the message: it waits for hub 1
/// (deferred, naming it), and once hub 1 is back it answers the retry
/// from its tag store. One copy.
#[test]
fn a_lost_acknowledgement_on_hub1_waits_for_hub1_and_gives_one_copy() {
    lost_acknowledgement_waits_for_hub1("failover_lost_ack", false);
}

/// The same in batching mode: the LMTP bridge's session goes to hub 2,
/// and for the pinned message it moves to hub 1, or refuses it with a 4xx
/// while hub 1 is down.
#[test]
fn batching_mode_lost_acknowledgement_on_hub1_waits_for_hub1() {
    lost_acknowledgement_waits_for_hub1("failover_lmtp_lost_ack", true);
}

fn lost_acknowledgement_waits_for_hub1(name: &str, batching: bool) {
    let mut options = EnvOptions::default()
        .rsmtp_conf("postdrop = \"{base}/slow-postdrop\"")
        .leaf_param("minimal_backoff_time", "300s")
        .leaf_param("maximal_backoff_time", "300s");
    if batching {
        options = options.batching();
    }
    let mut env = Env::start_with(name, options);
    install_slow_postdrop(&env);
    let second = env.start_second_hub("hub2");
    env.write_failover_config(
        &[env.hub_spec("hub1"), second.spec("hub2")],
        &["deadline = 3", "idle_timeout = 3"],
    );
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("lost.1"));
    let deferred = env.wait_log(Log::Leaf, "status=deferred", DELIVERY);
    assert!(deferred.contains("to=<bob@hub.test>"), "{deferred}");
    env.wait_maildir("bob", 1, DELIVERY);
    // Hub 1 goes down (its session in progress still records the tag).
    env.stop_sshd();
    assert_eq!(pins(&env), ["hub1\n"], "the lost ack must leave a pin");
    std::thread::sleep(Duration::from_secs(PAUSE + 1));
    env.leaf_flush();
    let waiting = env.wait_log(Log::Leaf, "waiting for hub hub1 of peer hub", DELIVERY);
    assert!(waiting.contains("status=deferred"), "{waiting}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        copies(&env, "<lost.1@leaf.test>"),
        1,
        "{}",
        env.diagnostics()
    );
    let hub2_tags =
        std::fs::read_dir(second.tags.join(bsmtp_ssh_tests::LEAF_PEER)).map_or(0, |d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        });
    assert_eq!(hub2_tags, 0, "the retry reached hub 2");
    assert!(!env.leaf_queue_is_empty(), "{}", env.diagnostics());
    // Hub 1 is back: the retry goes there and is recognised.
    env.start_sshd();
    let sent = poll(DELIVERY, || {
        env.leaf_flush();
        std::thread::sleep(Duration::from_secs(1));
        env.log_lines(Log::Leaf, "status=sent").into_iter().next()
    })
    .unwrap_or_else(|| env.fail("the retry never got its 250 from hub 1"));
    if !batching {
        assert!(
            sent.contains(&format!(":{}: 250 ", env.sshd_port())),
            "{sent}"
        );
    }
    env.wait_leaf_queue_empty(DELIVERY);
    assert_eq!(
        copies(&env, "<lost.1@leaf.test>"),
        1,
        "{}",
        env.diagnostics()
    );
    assert!(pins(&env).is_empty(), "{:?}", pins(&env));
}

/// The same for `flush`: a flush cut short on hub 1 pins the spool to
/// hub 1; while hub 1 is down the next flush waits (exit 75, naming it)
/// rather than hand the message to hub 2.
#[test]
fn flush_after_a_lost_acknowledgement_on_hub1_waits_for_hub1() {
    let mut env = Env::start_with(
        "failover_flush_lost_ack",
        EnvOptions::default()
            .spool()
            .rsmtp_conf("postdrop = \"{base}/slow-postdrop\""),
    );
    install_slow_postdrop(&env);
    let second = env.start_second_hub("hub2");
    env.write_failover_config(
        &[env.hub_spec("hub1"), second.spec("hub2")],
        &["idle_timeout = 3"],
    );
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("flost.1"));
    let spooled = poll(DELIVERY, || {
        (Env::spooled(&env.leaf_spool_directory(), HUB_PEER).len() == 1).then_some(())
    });
    assert!(spooled.is_some(), "{}", env.diagnostics());
    let first = env.flush();
    assert_eq!(first.status.code(), Some(75), "{}", text(&first));
    env.wait_maildir("bob", 1, DELIVERY);
    env.stop_sshd();
    assert_eq!(pins(&env), ["hub1\n"], "the cut flush must leave a pin");
    std::thread::sleep(Duration::from_secs(PAUSE + 1));
    let waiting = env.flush();
    assert_eq!(waiting.status.code(), Some(75), "{}", text(&waiting));
    assert!(
        text(&waiting).contains("waiting for hub hub1 of peer hub"),
        "{}",
        text(&waiting)
    );
    assert_eq!(copies(&env, "<flost.1@leaf.test>"), 1);
    env.start_sshd();
    let done = poll(DELIVERY, || {
        let out = env.flush();
        Env::spooled(&env.leaf_spool_directory(), HUB_PEER)
            .is_empty()
            .then_some(out)
    })
    .unwrap_or_else(|| env.fail("the spool never emptied once hub 1 was back"));
    assert!(done.status.success(), "{}", text(&done));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        copies(&env, "<flost.1@leaf.test>"),
        1,
        "{}",
        env.diagnostics()
    );
    assert!(pins(&env).is_empty(), "{:?}", pins(&env));
}

/// `failover_hold = 0`: the documented other side of the rule. A message
/// whose acknowledgement was lost on a hub that then went down goes to
/// the next hub at once, which may deliver a second copy (it does here:
/// hub 1 had queued it). The log says so.
#[test]
fn without_a_failover_hold_a_lost_acknowledgement_may_give_two_copies() {
    let mut env = Env::start_with(
        "failover_no_hold",
        EnvOptions::default()
            .postlog(PostlogMode::SetGid)
            .rsmtp_conf("postdrop = \"{base}/slow-postdrop\"")
            .leaf_param("minimal_backoff_time", "300s")
            .leaf_param("maximal_backoff_time", "300s"),
    );
    install_slow_postdrop(&env);
    let second = env.start_second_hub("hub2");
    env.write_failover_config(
        &[env.hub_spec("hub1"), second.spec("hub2")],
        &["deadline = 3", "idle_timeout = 3", "failover_hold = 0"],
    );
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("nohold.1"));
    env.wait_log(Log::Leaf, "status=deferred", DELIVERY);
    env.wait_maildir("bob", 1, DELIVERY);
    env.stop_sshd();
    std::thread::sleep(Duration::from_secs(1));
    let sent = poll(DELIVERY, || {
        env.leaf_flush();
        std::thread::sleep(Duration::from_secs(1));
        env.pipe_lines("sent").into_iter().next()
    })
    .unwrap_or_else(|| env.fail("hub 2 never took the message"));
    assert!(
        sent.contains(&format!(":{}: 250 ", second.sshd.port())),
        "{sent}"
    );
    env.wait_maildir("bob", 2, DELIVERY);
    assert_eq!(copies(&env, "<nohold.1@leaf.test>"), 2);
    let warned = env.wait_log(Log::Leaf, "which may deliver a second copy", DELIVERY);
    assert!(warned.contains("hub hub1"), "{warned}");
}

/// `check` reports every hub of a failover destination, each by name.
#[test]
fn check_reports_every_hub() {
    let env = Env::start("failover_check");
    let second = env.start_second_hub("hub2");
    let dead = DeadHub::start();
    let timeout = format!("connect_timeout = {CONNECT_TIMEOUT}");
    env.write_failover_config(
        &[
            dead.spec(&env, "hub0"),
            env.hub_spec("hub1"),
            second.spec("hub2"),
        ],
        &[&timeout],
    );
    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config, HUB_PEER], b"");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("ok:   peer hub: config: hubs in failover order: hub0 (host 127.0.0.1"),
        "{said}"
    );
    assert!(
        said.contains("FAIL: peer hub via hub0: connect: "),
        "{said}"
    );
    for hub in ["hub1", "hub2"] {
        assert!(
            said.contains(&format!("ok:   peer hub via {hub}: session: ")),
            "{hub}: {said}"
        );
    }
}
