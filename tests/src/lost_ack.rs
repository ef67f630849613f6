//! Lost acknowledgements after the hub committed (SPEC invariant 3), for
//! pipe mode and batching mode alike: the hub's postdrop is wrapped so that
//! it pauses after its commit, and the leaf gives up (its deadline or idle
//! limit) or its session is cut before the 250 arrives. Postfix retries;
//! the message must be queued on the hub once.

use std::time::Duration;

use crate::util::{poll, set_mode, write_file};
use crate::{Env, EnvOptions, Log};

/// How long the hub's postdrop pauses after each commit.
pub const PAUSE: u64 = 8;

/// How the acknowledgement gets lost.
#[derive(Clone, Copy, Debug)]
pub enum Loss {
    /// The leaf stops waiting (deadline or idle limit of 3 s).
    SlowCommit,
    /// The SSH session is killed after the commit.
    SessionKilled,
}

/// The environment for a lost-acknowledgement test.
pub fn env(name: &str, batching: bool, loss: Loss) -> Env {
    let mut options = EnvOptions::default().rsmtp_conf("postdrop = \"{base}/slow-postdrop\"");
    if batching {
        options = options.batching();
    }
    if let Loss::SlowCommit = loss {
        options = options
            .peer_conf("deadline = 3")
            .peer_conf("idle_timeout = 3");
    }
    let env = Env::start_with(name, options);
    install_slow_postdrop(&env);
    env
}

/// Writes `{base}/slow-postdrop`: postdrop, then a pause of [`PAUSE`]
/// seconds after its commit, so the 250 comes too late. Name it with
/// `postdrop = "{base}/slow-postdrop"` in a config.
pub fn install_slow_postdrop(env: &Env) {
    write_file(
        &env.base().join("slow-postdrop"),
        format!(
            "#!/bin/sh\n# postdrop, then a pause after its commit: the 250 comes too late.\n\
             /usr/sbin/postdrop \"$@\"\nrc=$?\nsleep {PAUSE}\nexit $rc\n"
        ),
        0o755,
    );
    set_mode(&env.base().join("slow-postdrop"), 0o755);
}

/// Sends one message, loses its acknowledgement, and checks that the
/// retries end with exactly one copy on the hub and the leaf's queue empty.
pub fn run(env: &Env, loss: Loss) {
    let delivery = Duration::from_mins(2);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"From: alice@leaf.test\nTo: bob@hub.test\nMessage-ID: <lost-ack@leaf.test>\nSubject: once\n\nonly once\n",
    );
    if let Loss::SessionKilled = loss {
        // The hub's pickup saw the committed queue file: cut the session
        // while rsmtp still waits on postdrop, before its 250.
        env.wait_log(Log::Hub, "from=<alice@leaf.test>", delivery);
        if env.kill_ssh_sessions() == 0 {
            env.fail("no SSH session to cut after the commit");
        }
        // And hang up on rsmtp, as a vanished client can: it must still
        // record the tag of what it committed.
        let base = env.base().to_string_lossy().into_owned();
        let rsmtp = crate::proc_tree::find_by_cmdline(&base, "rsmtp")
            .unwrap_or_else(|| env.fail("no rsmtp running after the commit"));
        crate::proc_tree::signal(rsmtp, nix::sys::signal::Signal::SIGHUP);
    }
    let deferred = env.wait_log(Log::Leaf, "status=deferred", delivery);
    assert!(deferred.contains("to=<bob@hub.test>"), "{deferred}");
    env.wait_maildir("bob", 1, delivery);
    // Keep retrying until the leaf hears the original queue ID.
    let sent = poll(delivery, || {
        env.leaf_flush();
        std::thread::sleep(Duration::from_secs(1));
        env.log_lines(Log::Leaf, "status=sent").into_iter().next()
    })
    .unwrap_or_else(|| env.fail("the retry never got its 250"));
    assert!(sent.contains("to=<bob@hub.test>"), "{sent}");
    env.wait_leaf_queue_empty(delivery);
    std::thread::sleep(Duration::from_secs(PAUSE + 2));
    let copies = Env::read_maildir(&env.hub_maildir("bob")).len();
    if copies != 1 {
        env.fail(&format!(
            "{copies} copies on the hub after a lost acknowledgement"
        ));
    }
    let pickups = env
        .log_lines(Log::Hub, "from=<alice@leaf.test>")
        .iter()
        .filter(|l| l.contains("/pickup["))
        .count();
    assert_eq!(pickups, 1, "{}", env.hub_log());
    // The retry was answered with the first commit's queue ID.
    let hub_id = sent
        .split("queued as ")
        .nth(1)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned();
    // One record, naming the recipient and the queue ID it went under.
    let records = std::fs::read_dir(env.tag_directory().join("leaf1"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = bsmtp::tag::Record::parse(&records[0], 0)
        .unwrap_or_else(|| panic!("not a tag record: {:?}", records[0]));
    assert_eq!(
        record.queue_id_of("bob@hub.test"),
        Some(hub_id.as_str()),
        "{sent}"
    );
    assert!(record.digest.is_some(), "{records:?}");
}
