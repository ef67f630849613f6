//! The satellite under the programs that call sendmail: each test drives
//! the real program (cron, at(1), bsd-mailx's `mail`, mutt, `git
//! send-email`, a script's `sendmail -t`) on a satellite whose
//! `/usr/sbin/sendmail` is bsmtp-ssh (see the harness's
//! `satellite` module), unchanged, and checks that the message reached
//! the hub once, with the envelope sender and recipients the program
//! meant.

use std::time::Duration;

use bsmtp_ssh_tests::satellite::Satellite;
use bsmtp_ssh_tests::util::poll;
use bsmtp_ssh_tests::{Env, EnvOptions, HUB_PEER, LEAF_PIPE_USER};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);
/// A program's own run.
const RUN: Duration = Duration::from_mins(1);

/// A hub and a satellite: bare names take `leaf.test` as a sender and
/// `hub.test` as a recipient, and the user's own name is an alias of
/// bob's mailbox on the hub (where cron and at mail the user).
fn satellite(name: &str) -> (Env, Satellite) {
    let env = Env::start_with(
        name,
        EnvOptions::default()
            .leaf_conf("sender_domain = \"leaf.test\"")
            .leaf_conf("recipient_domain = \"hub.test\"")
            .hub_alias(LEAF_PIPE_USER, "bob"),
    );
    let satellite = Satellite::new(&env);
    (env, satellite)
}

fn explain(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ran(out: &std::process::Output) {
    assert!(out.status.success(), "{}", explain(out));
}

/// Waits for one message in each of `mailboxes`, then until the
/// satellite's spool and the hub's queue are empty, and checks that each
/// mailbox still holds exactly one: delivered once. Returns bob's (or the
/// first mailbox's) message as text.
fn delivered_once(env: &Env, mailboxes: &[&str]) -> String {
    let first = env.wait_maildir(mailboxes[0], 1, DELIVERY);
    for mailbox in &mailboxes[1..] {
        env.wait_maildir(mailbox, 1, DELIVERY);
    }
    let spool_empty = poll(DELIVERY, || {
        Env::spooled(&env.leaf_spool_directory(), HUB_PEER)
            .is_empty()
            .then_some(())
    });
    if spool_empty.is_none() {
        env.fail("the satellite's spool is not empty");
    }
    env.wait_hub_queue_empty(DELIVERY);
    for mailbox in mailboxes {
        let got = Env::read_maildir(&env.hub_maildir(mailbox));
        assert_eq!(got.len(), 1, "{mailbox} got {} messages", got.len());
    }
    String::from_utf8_lossy(&first[0]).into_owned()
}

/// The envelope as the hub's local(8) wrote it.
fn assert_envelope(text: &str, sender: &str, recipient: &str) {
    assert!(
        text.contains(&format!("Return-Path: <{sender}>\n")),
        "sender is not {sender}:\n{text}"
    );
    assert!(
        text.contains(&format!("X-Original-To: {recipient}\n")),
        "recipient is not {recipient}:\n{text}"
    );
}

/// bsd-mailx's `mail` runs `/usr/sbin/sendmail -i -t` (its path is
/// compiled in) with the message it built.
#[test]
fn bsd_mailx_mail_reaches_the_hub() {
    let (env, satellite) = satellite("satellite_mailx");
    let out = satellite.run_as_user(
        &["/usr/bin/bsd-mailx", "-s", "from mailx", "bob@hub.test"],
        &[],
        b"sent with bsd-mailx\n",
        RUN,
    );
    assert_ran(&out);
    let text = delivered_once(&env, &["bob"]);
    assert_envelope(
        &text,
        &format!("{LEAF_PIPE_USER}@leaf.test"),
        "bob@hub.test",
    );
    assert!(
        text.contains("Subject: from mailx") && text.contains("sent with bsd-mailx"),
        "{text}"
    );
}

/// mutt with its default `$sendmail` (`/usr/sbin/sendmail -oem -oi`),
/// `use_envelope_from` (`-f`) and DSN settings (`-N`, `-R`), in batch
/// mode as scripts use it.
#[test]
fn mutt_mail_reaches_the_hub() {
    let (env, satellite) = satellite("satellite_mutt");
    let muttrc = satellite.write_home_file(
        ".muttrc",
        "set from = \"alice@leaf.test\"\nset use_envelope_from = yes\n\
         set dsn_notify = \"failure,delay\"\nset dsn_return = hdrs\n\
         set copy = no\nset record = \"\"\n",
        0o600,
    );
    assert!(muttrc.exists());
    let home_muttrc = satellite.home_path(".muttrc");
    let out = satellite.run_as_user(
        &[
            "/usr/bin/mutt",
            "-n",
            "-F",
            &home_muttrc.to_string_lossy(),
            "-s",
            "from mutt",
            "--",
            "bob@hub.test",
            "carol@hub.test",
        ],
        &[],
        b"sent with mutt\n",
        RUN,
    );
    assert_ran(&out);
    let text = delivered_once(&env, &["bob", "carol"]);
    assert_envelope(&text, "alice@leaf.test", "bob@hub.test");
    assert!(
        text.contains("Subject: from mutt") && text.contains("sent with mutt"),
        "{text}"
    );
}

/// `git send-email` finds `/usr/sbin/sendmail` by itself and runs it
/// with `-i`, `-f` (`--envelope-sender`) and the To: and Cc: recipients.
#[test]
fn git_send_email_reaches_the_hub() {
    let (env, satellite) = satellite("satellite_git");
    satellite.write_home_file(
        "0001-fix.patch",
        "From 1234567890abcdef1234567890abcdef12345678 Mon Sep 17 00:00:00 2001\n\
         From: Alice <alice@leaf.test>\nDate: Tue, 8 Dec 2026 04:00:00 +0000\n\
         Subject: [PATCH] fix the frobnicator\n\nIt frobbed twice.\n---\n a | 1 +\n\n\
         diff --git a/a b/a\n--- a/a\n+++ b/a\n@@ -0,0 +1 @@\n+fixed\n",
        0o644,
    );
    let patch = satellite.home_path("0001-fix.patch");
    let out = satellite.run_as_user(
        &[
            "git",
            "send-email",
            "--confirm=never",
            "--from=Alice <alice@leaf.test>",
            "--envelope-sender=alice@leaf.test",
            "--to=bob@hub.test",
            "--cc=carol@hub.test",
            "--suppress-cc=self",
            "--no-validate",
            &patch.to_string_lossy(),
        ],
        &[
            ("GIT_AUTHOR_NAME", "Alice"),
            ("GIT_AUTHOR_EMAIL", "alice@leaf.test"),
            ("GIT_COMMITTER_NAME", "Alice"),
            ("GIT_COMMITTER_EMAIL", "alice@leaf.test"),
        ],
        b"",
        RUN,
    );
    assert_ran(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Sendmail: /usr/sbin/sendmail"),
        "{}",
        explain(&out)
    );
    let text = delivered_once(&env, &["bob", "carol"]);
    assert_envelope(&text, "alice@leaf.test", "bob@hub.test");
    assert!(
        text.contains("Subject: [PATCH] fix the frobnicator") && text.contains("+fixed"),
        "{text}"
    );
}

/// A script's `sendmail -t`: recipients from To: and Bcc:, Bcc: removed,
/// the sender the login name at `sender_domain`.
#[test]
fn a_scripts_sendmail_t_reaches_the_hub() {
    let (env, satellite) = satellite("satellite_script");
    satellite.write_home_file(
        "report.sh",
        "#!/bin/sh\nset -e\nprintf 'To: bob@hub.test\\nBcc: dave@hub.test\\nSubject: nightly report\\n\\nall well\\n' |\n    /usr/sbin/sendmail -t -oi\n",
        0o755,
    );
    let script = satellite.home_path("report.sh");
    let out = satellite.run_as_user(&[&script.to_string_lossy()], &[], b"", RUN);
    assert_ran(&out);
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        explain(&out)
    );
    let text = delivered_once(&env, &["bob", "dave"]);
    assert_envelope(
        &text,
        &format!("{LEAF_PIPE_USER}@leaf.test"),
        "bob@hub.test",
    );
    assert!(
        !text.contains("Bcc:") && text.contains("all well"),
        "{text}"
    );
}

/// at(1): the real `at` queues a job, the real `atd -s` runs it and mails
/// its output with `sendmail -i USER` (its path compiled in), with
/// `LOGNAME` unset: the user's name qualified both ways.
#[test]
fn at_job_output_reaches_the_hub() {
    let (env, satellite) = satellite("satellite_at");
    let queued = satellite.run_as_user(&["/usr/bin/at", "now"], &[], b"echo at job output\n", RUN);
    assert_ran(&queued);
    let ran = satellite.run_as_root(&["/usr/sbin/atd", "-s"], b"", RUN);
    assert_ran(&ran);
    let text = delivered_once(&env, &["bob"]);
    let user = format!("{LEAF_PIPE_USER}@");
    assert_envelope(
        &text,
        &format!("{user}leaf.test"),
        &format!("{user}hub.test"),
    );
    assert!(text.contains("at job output"), "{text}");
}

/// cron: the real cron daemon runs the user's crontab and mails the
/// job's output with `sendmail -FCronDaemon -i -B8BITMIME -oem USER` (its
/// path compiled in). The job prints once only, so cron mails once even
/// if it runs again before the test stops it.
#[test]
fn cron_job_output_reaches_the_hub() {
    let (env, satellite) = satellite("satellite_cron");
    let flag = satellite.home_path("ran");
    satellite.install_crontab(&format!(
        "* * * * * [ -e {0} ] || {{ touch {0}; echo cron job output; }}\n",
        flag.display()
    ));
    let cron = satellite.start_cron();
    // cron runs jobs at the top of the minute.
    let wait = DELIVERY + Duration::from_mins(1);
    let got = poll(wait, || {
        let got = Env::read_maildir(&env.hub_maildir("bob"));
        (!got.is_empty()).then_some(())
    });
    if got.is_none() {
        env.fail("cron's mail did not reach bob");
    }
    drop(cron);
    let text = delivered_once(&env, &["bob"]);
    let user = format!("{LEAF_PIPE_USER}@");
    assert_envelope(
        &text,
        &format!("{user}leaf.test"),
        &format!("{user}hub.test"),
    );
    assert!(
        text.contains("cron job output") && text.contains("Subject: Cron <"),
        "{text}"
    );
}
