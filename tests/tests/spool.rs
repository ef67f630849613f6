//! Store-and-forward end to end: the leaf's Postfix hands mail for the hub
//! to `bsmtp-ssh enqueue` (pipe(8)), which spools it; `bsmtp-ssh flush`
//! sends the spool over one SSH session; `bsmtp-ssh queue` lists it. And
//! the other way round: the hub spools mail for a leaf that `pull`s it.

use std::time::Duration;

use bsmtp_ssh_tests::util::poll;
use bsmtp_ssh_tests::{Env, EnvOptions, Log, PostlogMode, HUB_PEER, LEAF_PEER};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_mins(2);

fn message(id: &str, to: &str) -> Vec<u8> {
    format!(
        "From: alice@leaf.test\nTo: {to}\nMessage-ID: <{id}@leaf.test>\nSubject: {id}\n\n\
         body of {id}\n.\n..two dots\n"
    )
    .into_bytes()
}

/// Waits until the leaf's Postfix handed `count` messages to the spool
/// transport, and returns the spooled IDs.
fn wait_spooled(env: &Env, count: usize) -> Vec<String> {
    // One line per recipient, each naming the spool ID of its message.
    let named = poll(DELIVERY, || {
        let lines: Vec<String> = env
            .log_lines(Log::Leaf, "relay=bsmtp-spool, ")
            .into_iter()
            .filter(|l| l.contains("status=sent"))
            .collect();
        assert!(
            lines.iter().all(
                |l| l.contains("(delivered via bsmtp-spool service (2.0.0 spooled for hub as ")
            ),
            "{lines:?}"
        );
        let mut ids: Vec<String> = lines
            .iter()
            .filter_map(|l| l.split("spooled for hub as ").nth(1))
            .map(|rest| rest.trim_end_matches(')').to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        (ids.len() >= count).then_some(ids)
    })
    .unwrap_or_else(|| env.fail(&format!("{count} messages were not spooled")));
    let ids = Env::spooled(&env.leaf_spool_directory(), HUB_PEER);
    assert_eq!(ids, named);
    ids
}

/// How many copies of each Message-ID a Maildir holds.
fn copies(env: &Env, maildir: &std::path::Path) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for message in Env::read_maildir(maildir) {
        let text = String::from_utf8_lossy(&message);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or("(none)")
            .to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    let _ = env;
    seen
}

fn output(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The hub is unreachable for a while: mail waits in the spool (listed,
/// with the reason); once the hub is back, one flush delivers each message
/// exactly once over one SSH session, and a second flush has nothing to do.
#[test]
fn spooled_mail_waits_for_the_hub_and_one_flush_delivers_it_once() {
    let mut env = Env::start_with("spool_flush", EnvOptions::default().spool());
    env.stop_sshd();
    for i in 0..3 {
        env.leaf_sendmail(
            "alice@leaf.test",
            &["bob@hub.test", "carol@hub.test"],
            &message(&format!("m{i}"), "bob@hub.test"),
        );
    }
    wait_spooled(&env, 3);
    assert!(env.leaf_queue_is_empty(), "{}", env.leaf_queue());
    let down = env.flush();
    assert_eq!(down.status.code(), Some(75), "{}", output(&down));
    let listing = env.spool_listing();
    assert!(
        listing.contains("-- 3 messages (6 recipients,") && listing.contains("4.4.1 "),
        "{listing}"
    );
    assert_eq!(listing.matches("<carol@hub.test>").count(), 3, "{listing}");

    env.start_sshd();
    let logins_before = env.log_lines(Log::Sshd, "Accepted publickey").len();
    let up = env.flush();
    assert!(up.status.success(), "{}", output(&up));
    assert!(
        String::from_utf8_lossy(&up.stdout).contains("hub: 6 delivered, 0 bounced, 0 deferred"),
        "{}",
        output(&up)
    );
    assert_eq!(
        env.log_lines(Log::Sshd, "Accepted publickey").len(),
        logins_before + 1,
        "one SSH session for the whole spool"
    );
    for user in ["bob", "carol"] {
        env.wait_maildir(user, 3, DELIVERY);
        let seen = copies(&env, &env.hub_maildir(user));
        assert_eq!(seen.len(), 3, "{user}: {seen:?}");
        assert!(seen.values().all(|&n| n == 1), "{user}: {seen:?}");
    }
    let arrived = &Env::read_maildir(&env.hub_maildir("bob"))[0];
    assert!(
        arrived.ends_with(b"\n.\n..two dots\n"),
        "{}",
        String::from_utf8_lossy(arrived)
    );
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
    let again = env.flush();
    assert!(
        again.status.success() && again.stdout.is_empty(),
        "{}",
        output(&again)
    );
    assert!(env.spool_listing().contains("-- 0 messages"));
}

/// Each recipient gets its own fate at flush: the hub refuses carol for
/// good (a bounce reaches alice on the leaf, naming carol and the hub's
/// reply), and defers dave (too many recipients for one transaction):
/// dave stays spooled alone and goes with the next flush.
#[test]
fn flush_bounces_what_the_hub_refuses_and_keeps_what_it_defers() {
    let env = Env::start_with(
        "spool_fates",
        EnvOptions::default().spool().rsmtp_args([
            "--allow-sender",
            "@leaf.test",
            "--allow-recipient",
            "bob@hub.test",
            "--allow-recipient",
            "dave@hub.test",
            "--max-recipients",
            "1",
        ]),
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test", "carol@hub.test", "dave@hub.test"],
        &message("fates", "bob@hub.test"),
    );
    wait_spooled(&env, 1);
    let first = env.flush();
    assert!(first.status.success(), "{}", output(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("1 delivered, 1 bounced, 1 deferred"),
        "{}",
        output(&first)
    );
    env.wait_maildir("bob", 1, DELIVERY);
    let bounce = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let bounce = String::from_utf8_lossy(&bounce[0]);
    for expected in [
        "Final-Recipient: rfc822; carol@hub.test",
        "Action: failed",
        "Status: 5.7.1",
        "not allowed for peer leaf1",
        "Message-ID: <fates@leaf.test>",
    ] {
        assert!(bounce.contains(expected), "no {expected:?} in\n{bounce}");
    }
    assert!(!bounce.contains("dave@hub.test"), "{bounce}");
    let listing = env.spool_listing();
    assert!(
        listing.contains("<dave@hub.test>")
            && !listing.contains("<bob@hub.test>")
            && listing.contains("452 4.5.3"),
        "{listing}"
    );
    let second = env.flush();
    assert!(second.status.success(), "{}", output(&second));
    env.wait_maildir("dave", 1, DELIVERY);
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    assert!(Env::read_maildir(&env.hub_maildir("carol")).is_empty());
}

/// A message that waited past `spool_lifetime` bounces at the next flush,
/// even with the hub still down, with the last error in the notice.
#[test]
fn expired_mail_bounces_with_its_last_error() {
    let mut env = Env::start_with(
        "spool_expiry",
        EnvOptions::default()
            .spool()
            .leaf_conf("spool_lifetime = 2"),
    );
    env.stop_sshd();
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("old", "bob@hub.test"),
    );
    wait_spooled(&env, 1);
    assert_eq!(env.flush().status.code(), Some(75));
    std::thread::sleep(Duration::from_secs(3));
    let out = env.flush();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 delivered, 1 bounced"),
        "{}",
        output(&out)
    );
    let bounce = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let bounce = String::from_utf8_lossy(&bounce[0]);
    for expected in [
        "Final-Recipient: rfc822; bob@hub.test",
        "Action: failed",
        "Status: 4.4.1",
        "expired",
    ] {
        assert!(bounce.contains(expected), "no {expected:?} in\n{bounce}");
    }
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}

/// A leaf with no sshd of its own pulls the mail the hub spooled for it:
/// it lands in the leaf's Maildir once; a second pull brings nothing; a
/// pull with another peer's key gets nothing of it, and a key not granted
/// `pull` is refused.
#[test]
fn pull_fetches_the_leafs_own_mail_once() {
    let env = Env::start_with("spool_pull", EnvOptions::default().pull());
    for i in 0..2 {
        env.hub_sendmail(
            "bob@hub.test",
            &["alice@leaf.test"],
            &format!(
                "From: bob@hub.test\nTo: alice@leaf.test\nMessage-ID: <p{i}@hub.test>\nSubject: p{i}\n\nfor the leaf\n"
            )
            .into_bytes(),
        );
    }
    let spooled = poll(DELIVERY, || {
        let ids = Env::spooled(&env.hub_spool_directory(), LEAF_PEER);
        (ids.len() == 2).then_some(ids)
    });
    if spooled.is_none() {
        env.fail("the hub did not spool 2 messages for leaf1");
    }
    // Another peer, granted pull, pulls its own (empty) spool, never
    // leaf1's; a key not granted pull is told so, and gets nothing.
    let leaf2 = env.add_peer_key("leaf2", &["--allow-verb", "pull"]);
    let other = env.bsmtp_ssh_as_leaf_with(&leaf2, &["pull", HUB_PEER]);
    assert!(
        other.status.success() && other.stdout.is_empty(),
        "{}",
        output(&other)
    );
    let leaf3 = env.add_peer_key("leaf3", &[]);
    let refused = env.bsmtp_ssh_as_leaf_with(&leaf3, &["pull", HUB_PEER]);
    assert_eq!(refused.status.code(), Some(78), "{}", output(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("not granted to peer leaf3"),
        "{}",
        output(&refused)
    );
    assert_eq!(Env::spooled(&env.hub_spool_directory(), LEAF_PEER).len(), 2);
    assert!(Env::read_maildir(&env.leaf_maildir("alice")).is_empty());
    let first = env.pull();
    assert!(first.status.success(), "{}", output(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("2 message(s) pulled"),
        "{}",
        output(&first)
    );
    let got = env.wait_leaf_maildir("alice", 2, DELIVERY);
    assert_eq!(got.len(), 2);
    assert!(Env::spooled(&env.hub_spool_directory(), LEAF_PEER).is_empty());
    let second = env.pull();
    assert!(second.status.success(), "{}", output(&second));
    assert!(second.stdout.is_empty(), "{}", output(&second));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(Env::read_maildir(&env.leaf_maildir("alice")).len(), 2);
}

/// Exactly one copy on `maildir` of the Message-ID `id`, after giving a
/// duplicate time to show.
fn assert_one_copy(env: &Env, maildir: &std::path::Path, id: &str) {
    std::thread::sleep(Duration::from_secs(bsmtp_ssh_tests::lost_ack::PAUSE + 2));
    let seen = copies(env, maildir);
    if seen.get(id) != Some(&1) || seen.len() != 1 {
        env.fail(&format!("after a lost acknowledgement: {seen:?}"));
    }
}

/// Flushes again until the spool is empty (a retry may first find the
/// earlier transaction's claim still held: 451, kept for the next flush).
fn flush_until_empty(env: &Env) {
    let emptied = poll(DELIVERY, || {
        let _ = env.flush();
        Env::spooled(&env.leaf_spool_directory(), HUB_PEER)
            .is_empty()
            .then_some(())
    });
    if emptied.is_none() {
        env.fail("the spool never emptied");
    }
}

/// The hub commits a flushed message, but its 250 comes after the leaf
/// stopped waiting: the message stays spooled, and the next flush is
/// recognised by its tag, so the hub queues it once.
#[test]
fn flush_after_a_lost_acknowledgement_queues_once() {
    let env = Env::start_with(
        "spool_lost_ack",
        EnvOptions::default()
            .spool()
            .rsmtp_conf("postdrop = \"{base}/slow-postdrop\"")
            .peer_conf("idle_timeout = 3"),
    );
    bsmtp_ssh_tests::lost_ack::install_slow_postdrop(&env);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("lost", "bob@hub.test"),
    );
    wait_spooled(&env, 1);
    let first = env.flush();
    assert_eq!(first.status.code(), Some(75), "{}", output(&first));
    assert_eq!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).len(), 1);
    env.wait_maildir("bob", 1, DELIVERY);
    flush_until_empty(&env);
    assert_one_copy(&env, &env.hub_maildir("bob"), "<lost@leaf.test>");
    let pickups = env
        .log_lines(Log::Hub, "from=<alice@leaf.test>")
        .iter()
        .filter(|l| l.contains("/pickup["))
        .count();
    assert_eq!(pickups, 1, "{}", env.hub_log());
}

/// The same with the roles turned: the leaf commits a pulled message but
/// the hub stops waiting for its 250; the message stays in the hub's
/// spool, and the next pull is recognised by the leaf's tag store.
#[test]
fn pull_after_a_lost_acknowledgement_queues_once() {
    let env = Env::start_with(
        "spool_pull_lost_ack",
        EnvOptions::default()
            .pull()
            .rsmtp_args(["--allow-sender", "@leaf.test", "--idle-timeout", "3"])
            .leaf_conf("postdrop = \"{base}/slow-postdrop\""),
    );
    bsmtp_ssh_tests::lost_ack::install_slow_postdrop(&env);
    env.hub_sendmail(
        "bob@hub.test",
        &["alice@leaf.test"],
        b"From: bob@hub.test\nTo: alice@leaf.test\nMessage-ID: <pulled@hub.test>\nSubject: once\n\nonce\n",
    );
    let spooled = poll(DELIVERY, || {
        (Env::spooled(&env.hub_spool_directory(), LEAF_PEER).len() == 1).then_some(())
    });
    if spooled.is_none() {
        env.fail("nothing spooled for leaf1");
    }
    // The leaf may not notice (its late 250 can still be written into
    // the closing channel); the hub did not hear it, and keeps the mail.
    let _ = env.pull();
    let base = env.base().to_string_lossy().into_owned();
    let ended = poll(DELIVERY, || {
        bsmtp_ssh_tests::proc_tree::find_by_cmdline(&base, "rsmtp")
            .is_none()
            .then_some(())
    });
    if ended.is_none() {
        env.fail("the hub's rsmtp did not end");
    }
    assert_eq!(Env::spooled(&env.hub_spool_directory(), LEAF_PEER).len(), 1);
    env.wait_leaf_maildir("alice", 1, DELIVERY);
    let emptied = poll(DELIVERY, || {
        let _ = env.pull();
        Env::spooled(&env.hub_spool_directory(), LEAF_PEER)
            .is_empty()
            .then_some(())
    });
    if emptied.is_none() {
        env.fail("the hub's spool never emptied");
    }
    assert_one_copy(&env, &env.leaf_maildir("alice"), "<pulled@hub.test>");
}

const MIB: u64 = 1024 * 1024;

/// Fills a file system to leave about `left` bytes free, with a file at
/// `path`; returns it, for removing later.
fn fill(path: &std::path::Path, left: u64) -> std::path::PathBuf {
    let dir = path.parent().unwrap();
    let stat = nix::sys::statvfs::statvfs(dir).unwrap();
    let free = stat.blocks_available() * stat.fragment_size();
    let size = usize::try_from(free.saturating_sub(left)).unwrap();
    std::fs::write(path, vec![b'x'; size]).unwrap();
    path.to_path_buf()
}

/// The spool's file system below `min_free`: enqueue refuses (4.3.1, exit
/// 75) and writes nothing, the leaf's Postfix keeps the message, and once
/// space is freed it is spooled and delivered once.
#[test]
fn a_full_spool_refuses_and_loses_nothing() {
    let env = Env::start_with(
        "spool_full",
        EnvOptions::default().spool().leaf_spool_size(4 * MIB),
    );
    let filler = fill(&env.leaf_spool_directory().join("filler"), MIB / 2);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("full", "bob@hub.test"),
    );
    let deferred = env.wait_log(Log::Leaf, "relay=bsmtp-spool, ", DELIVERY);
    assert!(
        deferred.contains("dsn=4.3.1, status=deferred") && deferred.contains("below min_free"),
        "{deferred}"
    );
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
    assert!(!env.leaf_queue_is_empty());
    std::fs::remove_file(filler).unwrap();
    env.leaf_flush();
    wait_spooled(&env, 1);
    let out = env.flush();
    assert!(out.status.success(), "{}", output(&out));
    env.wait_maildir("bob", 1, DELIVERY);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
}

/// The hub's queue file system below rsmtp's `min_free`: MAIL FROM gets
/// `452 4.3.1`, the leaf keeps the message; once space is freed it
/// arrives once.
#[test]
fn a_full_hub_queue_answers_452_and_loses_nothing() {
    let env = Env::start_with(
        "queue_full",
        EnvOptions::default()
            .hub_queue_size(32 * MIB)
            .rsmtp_conf(&format!("min_free = {}", 8 * MIB))
            // rsmtp's own lines in the hub's maillog_file.
            .postlog(PostlogMode::SetGid),
    );
    let filler = fill(&env.base().join("hub/spool/filler"), 4 * MIB);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("qfull", "bob@hub.test"),
    );
    let deferred = env.wait_pipe_status("deferred", DELIVERY);
    assert!(
        deferred.contains("452 4.3.1 Insufficient system storage"),
        "{deferred}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
    // Regression (issue 19, 5.8): the hub logged this ordinary deferral
    // as "fatal: ... keep the batch" (there is no batch in a live session).
    let ended = env.wait_log(Log::Hub, " command(s) refused", DELIVERY);
    assert!(
        ended.contains(" rsmtp[") && ended.contains("]: warning: peer leaf1: "),
        "{ended}"
    );
    let rsmtp_lines = env.log_lines(Log::Hub, " rsmtp[").join("\n");
    assert!(
        !rsmtp_lines.contains("fatal:") && !rsmtp_lines.contains("keep the batch"),
        "{rsmtp_lines}"
    );
    std::fs::remove_file(filler).unwrap();
    env.leaf_flush();
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_leaf_queue_empty(DELIVERY);
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
}

/// The spool is plain Batch SMTP: exim 4.96's `exim -bS` reads each file
/// `enqueue` wrote (dot-stuffed lines, 8-bit text, several recipients)
/// and queues the same envelope and the same message, byte for byte.
#[test]
fn spool_files_are_batch_smtp_that_exim_reads() {
    let mut env = Env::start_with("spool_exim", EnvOptions::default().spool());
    env.stop_sshd();
    let sent = [
        (
            vec!["bob@hub.test", "carol@hub.test"],
            b"From: alice@leaf.test\nSubject: dots\n\n.\n..\n.leading dot\nend\n".to_vec(),
        ),
        (
            vec!["bob@hub.test"],
            "From: alice@leaf.test\nSubject: 8-bit\n\nGr\u{fc}\u{df}e\nno final newline"
                .as_bytes()
                .to_vec(),
        ),
    ];
    for (to, content) in &sent {
        env.leaf_sendmail("alice@leaf.test", to, content);
    }
    let ids = wait_spooled(&env, 2);
    let exim = bsmtp_ssh_tests::exim::Exim::new(&env.base().join("exim"));
    let mut read = Vec::new();
    for id in &ids {
        let bytes = std::fs::read(
            env.leaf_spool_directory()
                .join(HUB_PEER)
                .join(format!("{id}.bsmtp")),
        )
        .unwrap();
        let result = exim.read_bsmtp(&bytes);
        assert!(result.status.success(), "{id}: {}", result.explain());
        assert_eq!(result.queued.len(), 1, "{id}: {}", result.explain());
        read.extend(result.queued);
    }
    for (to, content) in &sent {
        let subject = String::from_utf8_lossy(content)
            .lines()
            .find(|l| l.starts_with("Subject: "))
            .unwrap()
            .to_owned();
        let queued = read
            .iter()
            .find(|q| String::from_utf8_lossy(&q.message).contains(&subject))
            .unwrap_or_else(|| panic!("exim did not queue {subject}"));
        assert_eq!(queued.sender, "alice@leaf.test");
        assert_eq!(queued.recipients, *to);
        let mut body = content
            .split(|&b| b == b'\n')
            .skip_while(|l| !l.is_empty())
            .skip(1)
            .collect::<Vec<_>>()
            .join(&b'\n');
        if !body.ends_with(b"\n") {
            body.push(b'\n');
        }
        assert_eq!(
            String::from_utf8_lossy(queued.body()),
            String::from_utf8_lossy(&body),
            "{subject}"
        );
    }
}

/// Every file under `dir` owned by root, as paths.
fn root_owned(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() == 0 {
            found.push(path.display().to_string());
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found
}

/// Regression (issue 19, 5.1): `bsmtp-ssh flush` run as root with the hub
/// down rewrote the `.meta` files root-owned and left a root `.lock`; the
/// timer's flush (as the spool's owner) then delivered nothing, and its
/// exit 75 counted as success. Now root's flush, queue and enqueue refuse,
/// naming `runuser -u OWNER --`, and write nothing; a file the owner cannot
/// use is a local error (74), not "the hub is away" (75).
#[test]
fn flush_as_root_refuses_and_leaves_no_root_owned_file() {
    let mut env = Env::start_with("spool_root_flush", EnvOptions::default().spool());
    env.stop_sshd();
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("root1", "bob@hub.test"),
    );
    wait_spooled(&env, 1);
    let spool = env.leaf_spool_directory();
    assert!(root_owned(&spool).is_empty(), "{:?}", root_owned(&spool));
    let config = env.transport_config().display().to_string();
    let owner = bsmtp_ssh_tests::LEAF_PIPE_USER;
    for command in ["flush", "queue"] {
        let out = env.bsmtp_ssh(&[command, "--config", &config], b"");
        assert_eq!(out.status.code(), Some(77), "{}", output(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!(
                "runuser -u {owner} -- bsmtp-ssh {command} --config {config}"
            )),
            "{}",
            output(&out)
        );
    }
    let out = env.bsmtp_ssh(
        &[
            "enqueue",
            "--config",
            &config,
            "--peer",
            HUB_PEER,
            "-f",
            "a@leaf.test",
            "--",
            "b@hub.test",
        ],
        b"Subject: x\n\nbody\n",
    );
    assert_eq!(out.status.code(), Some(75), "{}", output(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("4.3.0 ")
            && String::from_utf8_lossy(&out.stdout).contains("runuser -u "),
        "{}",
        output(&out)
    );
    assert!(root_owned(&spool).is_empty(), "{:?}", root_owned(&spool));
    assert_eq!(Env::spooled(&spool, HUB_PEER).len(), 1);

    // A spool already jammed by an older root flush: the owner's flush
    // names the fix and fails (74), so the timer shows it.
    let lock = spool.join(HUB_PEER).join(".lock");
    let _ = std::fs::remove_file(&lock);
    std::fs::write(&lock, b"").unwrap();
    std::fs::set_permissions(&lock, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let jammed = env.flush();
    assert_eq!(jammed.status.code(), Some(74), "{}", output(&jammed));
    assert!(
        String::from_utf8_lossy(&jammed.stdout).contains(&format!("chown -R {owner}: ")),
        "{}",
        output(&jammed)
    );
    std::fs::remove_file(&lock).unwrap();

    env.start_sshd();
    let up = env.flush();
    assert!(up.status.success(), "{}", output(&up));
    env.wait_maildir("bob", 1, DELIVERY);
    assert!(root_owned(&spool).is_empty(), "{:?}", root_owned(&spool));
}
