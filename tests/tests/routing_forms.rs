//! Routing forms in a recipient's local part (audit H1, SPEC invariant 7):
//! `victim%external.test@hub.test`, `external.test!victim@hub.test` and
//! `"victim@external.test"@hub.test` name hub.test, but a hub with Postfix's
//! default trivial-rewrite(8) (`allow_percent_hack`, `swap_bangpath`,
//! `resolve_dequoted_address`) strips its own domain and sends all three to
//! victim@external.test. A peer allowed only `@hub.test` relayed anywhere
//! through both injection routes (postdrop; the fast path, whose smtpd lets
//! rsmtp in by `permit_mynetworks`). rsmtp refuses them now, each with
//! 554 5.7.1 and alone, unless rsmtp.conf opts that peer in. The leaf's
//! `bsmtp-ssh pull` refuses them too: there the leaf's own Postfix would relay.
//!
//! Here the hub sends every domain but its own to discard(8), a stand-in
//! for the Internet that takes everything (the harness's usual error(8)
//! would make the fast path's smtpd refuse the resolved address itself and
//! hide the relay): a line naming victim@external.test in the hub's log is
//! mail relayed out.

use std::time::Duration;

use bsmtp_ssh_tests::sshd::free_port;
use bsmtp_ssh_tests::util::{explain, poll};
use bsmtp_ssh_tests::{Env, EnvOptions, Log, PostlogMode, LEAF_PEER};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_mins(3);

/// The three routing forms, as the leaf's sendmail is given them.
const ROUTED: [&str; 3] = [
    "victim%external.test@hub.test",
    "external.test!victim@hub.test",
    "\"victim@external.test\"@hub.test",
];

/// What the hub's trivial-rewrite makes of each of them.
const RESOLVED: &str = "victim@external.test";

/// What the hub's discard(8) says for mail to any other domain.
const INTERNET: &str = "stand-in for the Internet";

/// The peer is restricted to the hub's own domain, as in the audit.
fn restricted() -> EnvOptions {
    EnvOptions::default()
        .batching()
        .postlog(PostlogMode::SetGid)
        .rsmtp_args([
            "--allow-sender",
            "@leaf.test",
            "--allow-recipient",
            "@hub.test",
        ])
}

/// Starts the environment with the hub relaying every other domain to
/// [`INTERNET`] (set with postconf once the hub runs, so main.cf has no
/// duplicate entry), and waits until its master reloaded.
fn start(name: &str, options: EnvOptions) -> Env {
    let env = Env::start_with(name, options);
    let reloads = || env.log_lines(Log::Hub, "reload -- version").len();
    let before = reloads();
    let internet = format!("discard:{INTERNET}");
    env.hub().postconf(&[
        ("default_transport", internet.as_str()),
        ("relay_transport", internet.as_str()),
    ]);
    if poll(DELIVERY, || (reloads() > before).then_some(())).is_none() {
        env.fail("the hub's master did not reload");
    }
    env
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@leaf.test>\nTo: bob@hub.test\nMessage-ID: <{id}@leaf.test>\n\
         Subject: {id}\n\nbody of {id}\n"
    )
    .into_bytes()
}

/// Sends one message to bob and the three routing forms, and waits until
/// everything settled: bob's copy arrived, and both queues are empty (the
/// hub's bounces, if any, went to its postmaster), so every recipient's
/// fate is in the logs and no late line can still come.
fn send_and_settle(env: &Env, id: &str) {
    let mut to = vec!["bob@hub.test"];
    to.extend(ROUTED);
    env.leaf_sendmail("alice@leaf.test", &to, &message(id));
    let got = env.wait_maildir("bob", 1, DELIVERY);
    assert!(
        String::from_utf8_lossy(&got[0]).contains(&format!("Message-ID: <{id}@leaf.test>")),
        "bob got another message"
    );
    env.wait_leaf_queue_empty(DELIVERY);
    let hub_empty = poll(DELIVERY, || {
        env.hub_queue()
            .contains("Mail queue is empty")
            .then_some(())
    });
    if hub_empty.is_none() {
        env.fail("the hub's queue did not empty");
    }
}

/// The leaf's lmtp(8) lines (its Postfix's verdict; the bridge logs its
/// own too) with `status=STATUS`.
fn leaf_lmtp(env: &Env, status: &str) -> Vec<String> {
    env.log_lines(Log::Leaf, "postfix-leaf/lmtp[")
        .into_iter()
        .filter(|l| l.contains(&format!("status={status} ")))
        .collect()
}

/// The three routing forms bounced on the leaf with rsmtp's 554 5.7.1, bob
/// was delivered once, and the hub never had a recipient outside hub.test.
fn assert_refused_alone(env: &Env) {
    let lmtp = env.log_lines(Log::Leaf, "postfix-leaf/lmtp[");
    for routed in ROUTED {
        let line = lmtp
            .iter()
            .find(|l| l.contains(&format!("to=<{routed}>")))
            .unwrap_or_else(|| env.fail(&format!("no lmtp line for {routed} on the leaf")));
        assert!(
            line.contains("status=bounced")
                && line.contains("554 5.7.1")
                && line.contains("routes elsewhere")
                && line.contains("allow_routing_forms"),
            "{routed} not refused by the hub:\n{line}"
        );
    }
    let sent = leaf_lmtp(env, "sent");
    assert!(
        sent.len() == 1 && sent[0].contains("to=<bob@hub.test>"),
        "only bob must be sent: {sent:#?}"
    );
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    // Alice's notice names the three and not bob.
    let notices = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert!(
        notice.contains("Final-Recipient: rfc822; victim%external.test@hub.test")
            && notice.contains("Final-Recipient: rfc822; external.test!victim@hub.test")
            && notice.contains("Status: 5.7.1")
            && !notice.contains("Final-Recipient: rfc822; bob@hub.test"),
        "{notice}"
    );
    // Nothing for another destination ever entered the hub's queue.
    let hub_log = env.hub_log();
    assert!(
        !hub_log.contains(&format!("to=<{RESOLVED}>"))
            && !hub_log.contains("orig_to=<victim")
            && !hub_log.contains(INTERNET),
        "the hub took a routed recipient:\n{hub_log}"
    );
    // rsmtp told the hub's admin why, and what to set.
    let warning = env.wait_log(
        Log::Hub,
        "routes elsewhere (Postfix allow_percent_hack)",
        DELIVERY,
    );
    assert!(
        warning.contains("set allow_routing_forms = true in the [peer.leaf1] section"),
        "{warning}"
    );
}

/// Regression (audit H1): through postdrop, a peer allowed `@hub.test`
/// relayed to external.test with `%`, `!` and a quoted `@`.
#[test]
fn routing_forms_are_refused_through_postdrop() {
    let env = start("routing_postdrop", restricted());
    send_and_settle(&env, "routed-postdrop");
    assert_refused_alone(&env);
    assert!(
        !env.log_lines(Log::Hub, "/pickup[").is_empty(),
        "this route goes through postdrop and pickup"
    );
}

/// Regression (audit H1): through the fast path (`--inject smtp:`), whose
/// smtpd takes rsmtp's connection by `permit_mynetworks`, the same.
#[test]
fn routing_forms_are_refused_through_the_fast_path() {
    let port = free_port();
    let mut options = restricted();
    options
        .rsmtp_args
        .extend(["--inject".to_owned(), format!("smtp:127.0.0.1:{port}")]);
    let env = start("routing_fast", options);
    env.install_hub_listener(port);
    send_and_settle(&env, "routed-fast");
    assert_refused_alone(&env);
    assert!(
        env.log_lines(Log::Hub, "/pickup[").is_empty(),
        "this route goes through smtpd, not pickup"
    );
    assert!(
        !env.log_lines(Log::Hub, "postfix/bsmtp-inject/smtpd[")
            .is_empty(),
        "bob's copy must have come through the listener"
    );
}

/// `allow_routing_forms = true` in `[peer.leaf1]` of rsmtp.conf gives leaf1
/// the old behaviour (the hub's trivial-rewrite resolves the forms and
/// relays them out); another peer of the same hub is still refused.
#[test]
fn opt_in_restores_routing_forms_for_that_peer_only() {
    let options = restricted()
        .rsmtp_conf("[peer.leaf1]")
        .rsmtp_conf("allow_routing_forms = true");
    let env = start("routing_opt_in", options);
    send_and_settle(&env, "routed-opt-in");
    let sent = leaf_lmtp(&env, "sent");
    assert_eq!(sent.len(), 4, "{sent:#?}");
    let resolved: Vec<String> = env
        .log_lines(Log::Hub, &format!("to=<{RESOLVED}>"))
        .into_iter()
        .filter(|l| l.contains("status=sent") && l.contains(INTERNET))
        .collect();
    for routed in ROUTED {
        assert!(
            resolved
                .iter()
                .any(|l| l.contains(&format!("orig_to=<{routed}>"))),
            "the hub did not route {routed} to {RESOLVED}: {resolved:#?}\n{}",
            env.hub_log()
        );
    }
    // leaf2, on the same hub with the same flags but no opt-in.
    let leaf2 = env.add_peer_key(
        "leaf2",
        &[
            "--allow-sender",
            "@leaf.test",
            "--allow-recipient",
            "@hub.test",
        ],
    );
    let leaf2 = leaf2.display().to_string();
    let out = env.bsmtp_ssh(
        &[
            "deliver",
            "--config",
            &leaf2,
            "--peer",
            "hub",
            "-f",
            "alice@leaf.test",
            "--",
            ROUTED[0],
        ],
        &message("routed-leaf2"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && stdout.contains("5.7.1")
            && stdout.contains("not allowed for peer leaf2 without allow_routing_forms"),
        "{}",
        explain("deliver as leaf2", out.status, &out.stdout, &out.stderr)
    );
}

/// Regression (audit H1, the other direction): the hub routes
/// `victim%external.test@leaf.test` to the leaf by its domain (its own
/// trivial-rewrite leaves a non-local address alone) and spools it for
/// leaf1; `bsmtp-ssh pull` must not hand it to the leaf's Postfix, for
/// which leaf.test is local and which would relay it to external.test.
/// Refused, it bounces on the hub alone; alice gets her copy.
#[test]
fn pull_refuses_routing_forms() {
    let env = Env::start_with(
        "routing_pull",
        EnvOptions::default().pull().postlog(PostlogMode::SetGid),
    );
    let reloads = || env.log_lines(Log::Leaf, "reload -- version").len();
    let before = reloads();
    let internet = format!("discard:{INTERNET}");
    env.leaf().postconf(&[
        ("default_transport", internet.as_str()),
        ("relay_transport", internet.as_str()),
    ]);
    if poll(DELIVERY, || (reloads() > before).then_some(())).is_none() {
        env.fail("the leaf's master did not reload");
    }
    let routed = "victim%external.test@leaf.test";
    env.hub_sendmail(
        "bob@hub.test",
        &["alice@leaf.test", routed],
        b"From: bob@hub.test\nTo: alice@leaf.test\nMessage-ID: <routed-pull@hub.test>\nSubject: pull\n\nfor the leaf\n",
    );
    let spooled = poll(DELIVERY, || {
        (!Env::spooled(&env.hub_spool_directory(), LEAF_PEER).is_empty()).then_some(())
    });
    if spooled.is_none() {
        env.fail("the hub spooled nothing for leaf1");
    }
    let out = env.pull();
    let got = env.wait_leaf_maildir("alice", 1, DELIVERY);
    assert!(
        String::from_utf8_lossy(&got[0]).contains("routed-pull@hub.test"),
        "{}",
        explain("pull", out.status, &out.stdout, &out.stderr)
    );
    env.wait_leaf_queue_empty(DELIVERY);
    let leaf_log = env.leaf_log();
    assert!(
        !leaf_log.contains(&format!("to=<{RESOLVED}>")) && !leaf_log.contains(INTERNET),
        "the leaf relayed a pulled routing form:\n{leaf_log}"
    );
    assert!(
        leaf_log.contains("routes elsewhere (Postfix allow_percent_hack)"),
        "the leaf did not log why:\n{leaf_log}"
    );
    // The hub bounced the routed recipient alone, back to bob.
    let notices = env.wait_maildir("bob", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notices[0]);
    assert!(
        notice.contains(&format!("Final-Recipient: rfc822; {routed}"))
            && notice.contains("Status: 5.7.1")
            && !notice.contains("Final-Recipient: rfc822; alice@leaf.test"),
        "{notice}"
    );
}
