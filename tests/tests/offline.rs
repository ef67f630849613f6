//! Offline rsmtp (`rsmtp --peer NAME < batch`, no SSH, nobody reading the
//! replies), as UUCP's rsmtp and `exim -bS` are used: the whole batch is
//! read, a refused transaction is reported to its sender through Postfix,
//! the exit status says "done" (0) or "read it again" (75), and reading a
//! batch again doubles nothing. So `rsmtp < f && rm f` loses nothing.

use std::fmt::Write as _;
use std::time::Duration;

use bsmtp_ssh_tests::util::{poll, set_mode, write_file};
use bsmtp_ssh_tests::{Env, EnvOptions, Log};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_mins(2);

fn transaction(from: &str, to: &[&str], id: &str) -> String {
    let mut text = format!("MAIL FROM:<{from}>\n");
    for rcpt in to {
        let _ = writeln!(text, "RCPT TO:<{rcpt}>");
    }
    let _ = write!(
        text,
        "DATA\nFrom: {from}\nMessage-ID: <{id}@leaf.test>\nSubject: {id}\n\nbody of {id}\n.\n"
    );
    text
}

/// The peer's policy, on the command line as in its forced command.
const POLICY: [&str; 6] = [
    "--allow-sender",
    "@leaf.test",
    "--allow-recipient",
    "bob@hub.test",
    "--allow-recipient",
    "dave@hub.test",
];

fn env(name: &str) -> Env {
    Env::start_with(
        name,
        EnvOptions::default()
            .hub_returns_to_leaf()
            .rsmtp_args(POLICY),
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A batch with one refused transaction: the others are queued, the
/// refused one is reported to its sender (a notice with its headers and
/// the hub's reply), and the batch is done: exit 0, so `&& rm f` is safe.
#[test]
fn a_refused_transaction_is_reported_and_the_batch_is_done() {
    let env = env("offline_refused");
    let batch = [
        transaction("alice@leaf.test", &["bob@hub.test"], "first"),
        transaction("alice@leaf.test", &["carol@hub.test"], "refused"),
        transaction("alice@leaf.test", &["dave@hub.test"], "third"),
    ]
    .concat();
    let out = env.rsmtp_offline(&POLICY, batch.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "offline, no replies on stdout");
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_maildir("dave", 1, DELIVERY);
    let notice = env.wait_leaf_maildir("alice", 1, DELIVERY);
    let notice = String::from_utf8_lossy(&notice[0]);
    for expected in [
        "Subject: Undelivered Mail Returned to Sender",
        "Final-Recipient: rfc822; carol@hub.test",
        "Action: failed",
        "Status: 5.7.1",
        "not allowed for peer leaf1",
        "Message-ID: <refused@leaf.test>",
    ] {
        assert!(notice.contains(expected), "no {expected:?} in\n{notice}");
    }
    assert!(Env::read_maildir(&env.hub_maildir("carol")).is_empty());
}

/// A batch that hits a temporary failure exits 75 ("read it again"); read
/// again, it queues only what was not queued the first time, and reports
/// its refused transaction only once.
#[test]
fn a_batch_read_again_after_a_temporary_failure_doubles_nothing() {
    let env = Env::start_with(
        "offline_again",
        EnvOptions::default()
            .hub_returns_to_leaf()
            .rsmtp_args(POLICY)
            .rsmtp_conf("postdrop = \"{base}/flaky-postdrop\""),
    );
    // postdrop fails once, on its second run, before it says anything: a
    // queue file write error.
    let base = env.base().display().to_string();
    write_file(
        &env.base().join("flaky-postdrop"),
        format!(
            "#!/bin/sh\nn=$(cat {base}/postdrop-runs 2>/dev/null || echo 0)\nn=$((n+1))\n\
             echo $n > {base}/postdrop-runs\n\
             if [ $n = 2 ]; then exit 75; fi\nexec /usr/sbin/postdrop \"$@\"\n"
        ),
        0o755,
    );
    set_mode(&env.base().join("flaky-postdrop"), 0o755);
    let batch = [
        transaction("alice@leaf.test", &["bob@hub.test"], "one"),
        transaction("alice@leaf.test", &["dave@hub.test"], "two"),
        transaction("alice@leaf.test", &["carol@hub.test"], "refused"),
        transaction(
            "alice@leaf.test",
            &["bob@hub.test", "dave@hub.test"],
            "three",
        ),
    ]
    .concat();
    let first = env.rsmtp_offline(&POLICY, batch.as_bytes());
    assert_eq!(first.status.code(), Some(75), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("keep the batch and feed it again later"),
        "{}",
        stderr(&first)
    );
    let again = env.rsmtp_offline(&POLICY, batch.as_bytes());
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let third = env.rsmtp_offline(&POLICY, batch.as_bytes());
    assert_eq!(third.status.code(), Some(0), "{}", stderr(&third));
    env.wait_maildir("bob", 2, DELIVERY);
    env.wait_maildir("dave", 2, DELIVERY);
    env.wait_leaf_maildir("alice", 1, DELIVERY);
    // Give a duplicate time to show.
    let settled = poll(DELIVERY, || {
        (env.hub_queue().contains("Mail queue is empty")
            && env.leaf_queue().contains("Mail queue is empty"))
        .then_some(())
    });
    assert!(settled.is_some());
    std::thread::sleep(Duration::from_secs(2));
    for (user, want) in [
        ("bob", ["<one@leaf.test>", "<three@leaf.test>"]),
        ("dave", ["<three@leaf.test>", "<two@leaf.test>"]),
    ] {
        let mut ids: Vec<String> = Env::read_maildir(&env.hub_maildir(user))
            .iter()
            .map(|m| {
                String::from_utf8_lossy(m)
                    .lines()
                    .find_map(|l| l.strip_prefix("Message-ID: ").map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        ids.sort();
        assert_eq!(ids, want, "{user}");
    }
    assert_eq!(Env::read_maildir(&env.leaf_maildir("alice")).len(), 1);
    assert!(
        env.log_lines(Log::Hub, "pickup").len() >= 4,
        "{}",
        env.hub_log()
    );
}

/// Both queues empty: whatever this test queued was delivered (or bounced).
fn settle(env: &Env) {
    let settled = poll(DELIVERY, || {
        (env.hub_queue().contains("Mail queue is empty")
            && env.leaf_queue().contains("Mail queue is empty"))
        .then_some(())
    });
    assert!(settled.is_some(), "{}", env.hub_log());
}

/// Regression (audit L1): offline mode was chosen by an absent
/// `SSH_CONNECTION`, so an admin logged in over SSH who ran `rsmtp --peer X
/// < batch && rm batch` got a live session: replies on stdout, no notice,
/// exit 75, and every reading queued the accepted mail again. A file on
/// stdin is a batch whatever the environment says, and so is a pipe with
/// `--batch`.
#[test]
fn a_batch_file_read_in_an_ssh_login_is_read_offline() {
    const SSH_CONNECTION: &str = "192.0.2.7 50022 192.0.2.1 22";
    let env = env("offline_ssh_login");
    let batch = [
        transaction("alice@leaf.test", &["bob@hub.test"], "login-one"),
        transaction("alice@leaf.test", &["carol@hub.test"], "login-refused"),
    ]
    .concat();
    for reading in ["first", "again"] {
        let mut command = env.rsmtp_command();
        command.env("SSH_CONNECTION", SSH_CONNECTION);
        let out = env.rsmtp_batch_file(&mut command, &POLICY, batch.as_bytes());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{reading} reading: stdout {}\nstderr {}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        assert!(
            out.stdout.is_empty(),
            "{reading} reading: replies written as on a session: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // `cat batch | rsmtp --batch` under sshd: offline too.
    let piped = transaction("alice@leaf.test", &["dave@hub.test"], "login-piped");
    let out = bsmtp_ssh_tests::util::run_timeout(
        env.rsmtp_command()
            .env("SSH_CONNECTION", SSH_CONNECTION)
            .args(POLICY)
            .arg("--batch"),
        piped.as_bytes(),
        DELIVERY,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_maildir("dave", 1, DELIVERY);
    let notice = env.wait_leaf_maildir("alice", 1, DELIVERY);
    assert!(
        String::from_utf8_lossy(&notice[0]).contains("Final-Recipient: rfc822; carol@hub.test"),
        "{}",
        String::from_utf8_lossy(&notice[0])
    );
    settle(&env);
    assert_eq!(
        Env::read_maildir(&env.hub_maildir("bob")).len(),
        1,
        "queued twice"
    );
    assert_eq!(
        Env::read_maildir(&env.leaf_maildir("alice")).len(),
        1,
        "reported twice"
    );
}

/// Regression (audit M3): a transaction whose sender the peer's policy
/// refused got a full notice, from MAILER-DAEMON with the batch's content,
/// mailed to that sender: a forged batch made the hub a reflector. Now no
/// notice goes to a refused sender; the transaction is kept in a reject
/// file for the admin and the batch is done. A refusal after MAIL was
/// accepted is still reported.
#[test]
fn a_refused_sender_gets_no_notice_and_is_kept_for_the_admin() {
    let env = env("offline_refused_sender");
    // carol@hub.test is not an allowed sender for leaf1: a notice to her
    // would land in her maildir on the hub.
    let forged = transaction(
        "carol@hub.test",
        &["bob@hub.test", "dave@hub.test"],
        "forged",
    );
    // A dot-stuffed line: the body line is ".leading dot".
    let forged = forged.replace("body of forged\n", "body of forged\n..leading dot\n");
    let batch = [
        forged.clone(),
        transaction("alice@leaf.test", &["nobody@hub.test"], "refused-rcpt"),
    ]
    .concat();
    for reading in ["first", "again"] {
        let out = env.rsmtp_offline(&POLICY, batch.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{reading}: {}", stderr(&out));
    }
    // The control: a refused recipient is still reported, once.
    let notice = env.wait_leaf_maildir("alice", 1, DELIVERY);
    assert!(
        String::from_utf8_lossy(&notice[0]).contains("Final-Recipient: rfc822; nobody@hub.test"),
        "{}",
        String::from_utf8_lossy(&notice[0])
    );
    settle(&env);
    for user in ["carol", "bob", "dave"] {
        let mail = Env::read_maildir(&env.hub_maildir(user));
        assert!(
            mail.is_empty(),
            "{user} got mail:\n{}",
            mail.iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
    assert_eq!(Env::read_maildir(&env.leaf_maildir("alice")).len(), 1);
    // Kept once, as BSMTP the admin can read and feed again.
    let dir = env.reject_directory().join("leaf1");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let kept = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        kept.starts_with("# rsmtp: peer leaf1: refused at MAIL FROM"),
        "{kept}"
    );
    assert!(
        kept.contains("# reply: 553 5.7.1 <carol@hub.test>"),
        "{kept}"
    );
    let transaction_part = &kept[kept.find("MAIL FROM:").unwrap()..];
    assert_eq!(
        transaction_part, forged,
        "the transaction as BSMTP, dot-stuffed"
    );
    let logged = env.wait_log(Log::Hub, "refused at MAIL FROM", DELIVERY);
    assert!(logged.contains("no notice to the sender"), "{logged}");
}

/// Regression (audit L2): offline, recipients over `max_recipients` got
/// 452 on every reading, so the batch exited 75 for ever. A batch has
/// nobody to send them in a second transaction: the limit is raised.
#[test]
fn recipients_over_max_recipients_are_queued_offline() {
    let env = env("offline_max_rcpts");
    let batch = transaction(
        "alice@leaf.test",
        &["bob@hub.test", "dave@hub.test"],
        "over-limit",
    );
    let args = [&POLICY[..], &["--max-recipients", "1"]].concat();
    let out = env.rsmtp_offline(&args, batch.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_maildir("dave", 1, DELIVERY);
}

/// The peak resident set of the process `pid` so far, in KiB (0 once it
/// has exited).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Regression (audit L3): the offline transcript kept every RCPT (2M
/// RCPTs in 56 MB took 646 MB). A transaction with 200,000 recipients is
/// read within SPEC's 32 MiB (the peak measured from /proc while it
/// runs; unbounded, the transcript alone is several times that).
#[test]
fn a_batch_with_many_recipients_is_read_in_bounded_memory() {
    const RCPTS: usize = 200_000;
    const CEILING_KIB: u64 = 32 * 1024;
    let env = env("offline_many_rcpts");
    let mut batch = String::from("MAIL FROM:<alice@leaf.test>\nRCPT TO:<bob@hub.test>\n");
    for i in 0..RCPTS {
        let _ = writeln!(batch, "RCPT TO:<u{i}@hub.test>");
    }
    batch.push_str("DATA\nSubject: many\nMessage-ID: <many@leaf.test>\n\nmany\n.\n");
    let path = env.base().join("many.bsmtp");
    std::fs::write(&path, &batch).unwrap();
    let log = env.base().join("many.stderr");
    let mut child = env
        .rsmtp_command()
        .args(POLICY)
        .stdin(std::fs::File::open(&path).unwrap())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = poll(DELIVERY, || {
        peak = peak.max(peak_rss_kib(child.id()));
        child.try_wait().ok().flatten()
    })
    .unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("rsmtp still reading {RCPTS} RCPTs after {DELIVERY:?}")
    });
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(peak > 0, "no peak RSS read from /proc");
    println!("rsmtp's peak RSS for {RCPTS} RCPTs: {peak} KiB");
    assert!(
        peak < CEILING_KIB,
        "rsmtp's peak RSS {peak} KiB for {RCPTS} RCPTs, over {CEILING_KIB} KiB"
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    env.wait_maildir("bob", 1, DELIVERY);
    let notice = env.wait_leaf_maildir("alice", 1, DELIVERY);
    assert!(
        String::from_utf8_lossy(&notice[0]).contains("Final-Recipient: rfc822; u0@hub.test"),
        "no notice naming the refused recipients"
    );
}

/// (Audit M5, offline) A tool that writes batches without Date or
/// Message-ID sends the same message in two batch files: two messages,
/// both queued. Each file read again still doubles nothing: content tags
/// are kept per batch file, not across batches.
#[test]
fn identical_messages_in_two_batch_files_are_both_queued() {
    let env = Env::start("offline_identical");
    let batch = "MAIL FROM:<alice@leaf.test>\nRCPT TO:<bob@hub.test>\nDATA\n\
                 Subject: backup FAILED\n\nsame text\n.\n";
    for name in ["monday.bsmtp", "tuesday.bsmtp"] {
        let path = env.base().join(name);
        std::fs::write(&path, batch).unwrap();
        for _ in 0..2 {
            let out = bsmtp_ssh_tests::util::run_timeout_file(
                env.rsmtp_command().args(POLICY),
                &path,
                bsmtp_ssh_tests::util::COMMAND_TIMEOUT,
            );
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        }
    }
    env.wait_maildir("bob", 2, DELIVERY);
    env.wait_hub_queue_empty(DELIVERY);
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 2);
}
