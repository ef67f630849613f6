//! A satellite with no MTA (a laptop, a container): `bsmtp-ssh sendmail`,
//! run by the name `sendmail` as mail user agents run it, hands each
//! message to the hub over SSH at once, or spools it when the hub is away
//! for `flush` to send; it prints nothing when it worked.

use std::time::Duration;

use bsmtp_ssh_tests::util::poll;
use bsmtp_ssh_tests::{Env, EnvOptions, HUB_PEER};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);

fn explain(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exit 0 and not a byte of output (Emacs's sendmail-send-it takes any
/// output as a failure).
fn assert_silent_success(out: &std::process::Output) {
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        explain(out)
    );
}

/// The way mutt, git send-email and Emacs call it: the message reaches the
/// hub at once, and nothing stays spooled.
#[test]
fn satellite_mail_reaches_the_hub() {
    let env = Env::start_with(
        "satellite",
        EnvOptions::default().leaf_conf("sender_domain = \"leaf.test\""),
    );
    let mutt = env.satellite_sendmail(
        &["-oem", "-oi", "-f", "alice@leaf.test", "--", "bob@hub.test"],
        b"From: alice@leaf.test\nSubject: mutt\n\nfrom mutt\n",
    );
    assert_silent_success(&mutt);
    let emacs = env.satellite_sendmail(
        &["-oi", "-t"],
        b"From: alice@leaf.test\nTo: carol@hub.test\nBcc: dave@hub.test\nSubject: emacs\n\n.\nfrom emacs\n",
    );
    assert_silent_success(&emacs);
    env.wait_maildir("bob", 1, DELIVERY);
    let carol = env.wait_maildir("carol", 1, DELIVERY);
    let dave = env.wait_maildir("dave", 1, DELIVERY);
    let text = String::from_utf8_lossy(&carol[0]);
    assert!(
        !text.contains("Bcc:") && text.ends_with("\n.\nfrom emacs\n"),
        "{text}"
    );
    // No -f: the login name at sender_domain, as sendmail makes it.
    let text = String::from_utf8_lossy(&dave[0]);
    assert!(text.contains("Return-Path: <alice@leaf.test>"), "{text}");
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}

/// The hub is away: the message is spooled (exit 0, silent), and a later
/// flush delivers it once.
#[test]
fn with_the_hub_down_it_spools_and_a_flush_delivers_once() {
    let mut env = Env::start("satellite_down");
    env.stop_sshd();
    let out = env.satellite_sendmail(
        &["-i", "-f", "alice@leaf.test", "bob@hub.test"],
        b"From: alice@leaf.test\nMessage-ID: <away@leaf.test>\nSubject: away\n\nlater\n",
    );
    assert_silent_success(&out);
    assert_eq!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).len(), 1);
    env.start_sshd();
    let flushed = env.flush();
    assert!(flushed.status.success(), "{}", explain(&flushed));
    env.wait_maildir("bob", 1, DELIVERY);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}

/// A refusal while the user waits: the hub's reply on standard error, an
/// exit status mail user agents understand, nothing kept; bad flags get
/// `EX_USAGE`.
#[test]
fn a_refusal_is_told_to_the_user() {
    let env = Env::start_with(
        "satellite_refused",
        EnvOptions::default().rsmtp_args([
            "--allow-sender",
            "@leaf.test",
            "--allow-recipient",
            "bob@hub.test",
        ]),
    );
    let out = env.satellite_sendmail(
        &["-i", "-f", "alice@leaf.test", "carol@hub.test"],
        b"Subject: no\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(77), "{}", explain(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<carol@hub.test>") && stderr.contains("5.7.1") && out.stdout.is_empty(),
        "{}",
        explain(&out)
    );
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
    let usage = env.satellite_sendmail(&["-bp"], b"");
    assert_eq!(usage.status.code(), Some(64), "{}", explain(&usage));
    // `--help` prints the usage (exit 0), a bare `-h` too (exit 64):
    // neither sends anything.
    let help = env.satellite_sendmail(&["--help"], b"");
    assert_eq!(help.status.code(), Some(0), "{}", explain(&help));
    assert!(
        String::from_utf8_lossy(&help.stdout).starts_with("usage: sendmail")
            && help.stderr.is_empty(),
        "{}",
        explain(&help)
    );
    let bare = env.satellite_sendmail(&["-h"], b"");
    assert_eq!(bare.status.code(), Some(64), "{}", explain(&bare));
    assert!(String::from_utf8_lossy(&bare.stderr).starts_with("usage: sendmail"));
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}

/// A satellite has no Postfix to bounce into: what the hub refuses at a
/// later flush comes back to the sender as a notice sent through the hub.
#[test]
fn a_later_refusal_comes_back_through_the_hub() {
    let mut env = Env::start_with(
        "satellite_notice",
        EnvOptions::default()
            .hub_returns_to_leaf()
            .leaf_conf("postdrop = \"/nonexistent/postdrop\"")
            .rsmtp_args([
                "--allow-sender",
                "@leaf.test",
                "--allow-recipient",
                "@leaf.test",
                "--allow-recipient",
                "bob@hub.test",
            ]),
    );
    env.stop_sshd();
    let out = env.satellite_sendmail(
        &["-i", "-f", "alice@leaf.test", "carol@hub.test"],
        b"From: alice@leaf.test\nMessage-ID: <refused-later@leaf.test>\nSubject: later\n\nx\n",
    );
    assert_silent_success(&out);
    env.start_sshd();
    // The first flush gets the refusal and spools the notice; the next
    // one carries the notice to the hub, which routes it to alice.
    let delivered = poll(DELIVERY, || {
        let _ = env.flush();
        let got = Env::read_maildir(&env.leaf_maildir("alice"));
        (!got.is_empty()).then_some(got)
    })
    .unwrap_or_else(|| env.fail("no notice reached alice"));
    let notice = String::from_utf8_lossy(&delivered[0]);
    for expected in [
        "Final-Recipient: rfc822; carol@hub.test",
        "Action: failed",
        "Status: 5.7.1",
        "Message-ID: <refused-later@leaf.test>",
    ] {
        assert!(notice.contains(expected), "no {expected:?} in\n{notice}");
    }
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}

/// Regression (audit M4): `sendmail root` (what at(1), cron and `mail
/// root` run) was spooled unqualified, the spool's reader refused it for
/// ever, and sendmail exited 0; and Debian's cron argv was refused with
/// 64. Now a bare name takes `recipient_domain` and both are delivered.
#[test]
fn sendmail_root_and_cron_mail_are_delivered_qualified() {
    let env = Env::start_with(
        "satellite_root",
        EnvOptions::default()
            .leaf_conf("sender_domain = \"leaf.test\"")
            .leaf_conf("recipient_domain = \"hub.test\""),
    );
    // Debian at 3.2, atd.c: execl(SENDMAIL, "sendmail", "-i", mailname).
    let at = env.satellite_sendmail(
        &["-i", "root"],
        b"Subject: Output from your job 7\nTo: root\n\nat output\n",
    );
    assert_silent_success(&at);
    // Debian cron 3.0pl1: sendmail -FCronDaemon -i -B8BITMIME -oem USER,
    // with the job's output, 8-bit bytes and all.
    let cron = env.satellite_sendmail(
        &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "bob"],
        "From: root (Cron Daemon)\nTo: bob\nSubject: Cron <bob@leaf> ls\n\ncaf\u{e9}\n".as_bytes(),
    );
    assert_silent_success(&cron);
    // The hub's aliases send root to its postmaster mailbox.
    let root = env.wait_maildir("postmaster", 1, DELIVERY);
    let text = String::from_utf8_lossy(&root[0]);
    assert!(
        text.contains("X-Original-To: root@hub.test") && text.contains("at output"),
        "{text}"
    );
    assert!(text.contains("Return-Path: <alice@leaf.test>"), "{text}");
    let bob = env.wait_maildir("bob", 1, DELIVERY);
    let text = String::from_utf8_lossy(&bob[0]);
    assert!(
        text.contains("X-Original-To: bob@hub.test") && text.contains("caf\u{e9}"),
        "{text}"
    );
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}

/// Regression (audit M4): `-t` with `To: John Smith john@x` was spooled
/// as the recipient `John Smith john@x` and lost with exit 0. Now it is
/// refused with `EX_DATAERR` and a message, and nothing is spooled; the
/// same address on the command line gets `EX_NOUSER`.
#[test]
fn a_malformed_address_is_refused_and_nothing_spooled() {
    let env = Env::start("satellite_malformed");
    let header = env.satellite_sendmail(
        &["-oi", "-t"],
        b"From: alice@leaf.test\nTo: John Smith john@x\nSubject: s\n\nbody\n",
    );
    assert_eq!(header.status.code(), Some(65), "{}", explain(&header));
    let stderr = String::from_utf8_lossy(&header.stderr);
    assert!(
        stderr.contains("<John Smith john@x>") && stderr.contains("To:"),
        "{}",
        explain(&header)
    );
    let argument = env.satellite_sendmail(&["-i", "John Smith john@x"], b"Subject: s\n\nx\n");
    assert_eq!(argument.status.code(), Some(67), "{}", explain(&argument));
    let sender = env.satellite_sendmail(&["-i", "-f", "a b", "bob@hub.test"], b"x\n");
    assert_eq!(sender.status.code(), Some(67), "{}", explain(&sender));
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}

/// Regression (audit M4): a spool file the reader refuses stayed in the
/// spool for ever, and flush and queue said nothing and exited 0. Now
/// flush moves it to quarantine/ and both name it and exit 65. And
/// (audit) queue escapes the C1 control characters it used to print raw.
#[test]
fn an_unreadable_spool_file_is_quarantined_and_reported() {
    use bsmtp_ssh_tests::util::{chown_to, mkdir, write_file};
    let mut env = Env::start("satellite_quarantine");
    env.stop_sshd();
    let dir = env.leaf_spool_directory().join(HUB_PEER);
    mkdir(&dir, 0o700);
    chown_to(&dir, bsmtp_ssh_tests::LEAF_PIPE_USER, None);
    let corrupt = dir.join("0000000001.000000000.1.bsmtp");
    write_file(
        &corrupt,
        b"MAIL FROM:<alice@leaf.test>\r\nRCPT TO:<root>\r\nDATA\r\nx\r\n.\r\n",
        0o600,
    );
    chown_to(&corrupt, bsmtp_ssh_tests::LEAF_PIPE_USER, None);
    // Readable, with a C1 CSI (U+009B) in the sender's local part.
    let odd = dir.join("0000000002.000000000.1.bsmtp");
    write_file(
        &odd,
        "MAIL FROM:<a\u{9b}2Jb@leaf.test>\r\nRCPT TO:<bob@hub.test>\r\nDATA\r\nx\r\n.\r\n",
        0o600,
    );
    chown_to(&odd, bsmtp_ssh_tests::LEAF_PIPE_USER, None);

    let flushed = env.flush();
    assert_eq!(flushed.status.code(), Some(65), "{}", explain(&flushed));
    let said = String::from_utf8_lossy(&flushed.stdout);
    assert!(
        said.contains("0000000001.000000000.1") && said.contains("unqualified"),
        "{}",
        explain(&flushed)
    );
    assert!(!corrupt.exists());
    assert!(dir.join("quarantine/0000000001.000000000.1.bsmtp").exists());
    assert!(dir.join("quarantine/0000000001.000000000.1.why").exists());

    let queue = env.bsmtp_ssh_as_leaf(&["queue"]);
    assert_eq!(queue.status.code(), Some(65), "{}", explain(&queue));
    let listing = String::from_utf8_lossy(&queue.stdout);
    assert!(
        listing.contains("0000000001.000000000.1") && listing.contains("quarantined"),
        "{listing}"
    );
    assert!(listing.contains("<a\\u{9b}2Jb@leaf.test>"), "{listing}");
    assert!(!listing.contains('\u{9b}'), "raw C1 in {listing:?}");
    assert!(listing.contains("-- 1 message"), "{listing}");
}

/// Regression (issue 19, 5.6): sendmail exited 0 and silent when the hub
/// offered a changed host key (a possible man in the middle) or refused
/// the key. Now only a hub that is away is silent; these are said on
/// standard error with exit 75, and the message stays spooled (never
/// lost) until a flush after the fix delivers it once.
#[test]
fn a_changed_host_key_or_a_refused_key_is_said_and_the_message_kept() {
    let mut env = Env::start("satellite_mitm");
    env.replace_host_key();
    let mitm = env.satellite_sendmail(
        &["-i", "-f", "alice@leaf.test", "bob@hub.test"],
        b"Message-ID: <mitm@leaf.test>\nSubject: one\n\nx\n",
    );
    assert_eq!(mitm.status.code(), Some(75), "{}", explain(&mitm));
    let said = String::from_utf8_lossy(&mitm.stderr);
    assert!(
        said.starts_with("sendmail: ")
            && said.contains("host key")
            && said.contains("kept in")
            && said.contains("bsmtp-ssh flush"),
        "{}",
        explain(&mitm)
    );
    assert!(mitm.stdout.is_empty(), "{}", explain(&mitm));
    env.pin_host_key();
    let keys = std::fs::read(env.authorized_keys()).unwrap();
    std::fs::write(env.authorized_keys(), "").unwrap();
    let refused = env.satellite_sendmail(
        &["-i", "-f", "alice@leaf.test", "carol@hub.test"],
        b"Message-ID: <refused@leaf.test>\nSubject: two\n\nx\n",
    );
    assert_eq!(refused.status.code(), Some(75), "{}", explain(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("4.7.") && said.contains("kept in"),
        "{}",
        explain(&refused)
    );
    assert_eq!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).len(), 2);
    std::fs::write(env.authorized_keys(), keys).unwrap();
    let flushed = env.flush();
    assert!(flushed.status.success(), "{}", explain(&flushed));
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_maildir("carol", 1, DELIVERY);
    env.wait_hub_queue_empty(DELIVERY);
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
    assert_eq!(Env::read_maildir(&env.hub_maildir("bob")).len(), 1);
    assert_eq!(Env::read_maildir(&env.hub_maildir("carol")).len(), 1);
}

/// Regression (issue 19, 5.6): `queue`, `flush` and `check` read only
/// `/etc/bsmtp-ssh/bsmtp-ssh.conf`, though sendmail (and the README) look
/// in `~/.config/bsmtp-ssh/` first; and `check` on a satellite with no
/// Postfix reported on `/etc/postfix/main.cf`. In a satellite root (no
/// Postfix config, a system config that would not load), the user's own
/// config serves all four.
#[test]
fn queue_flush_and_check_read_the_users_own_config_like_sendmail() {
    use bsmtp_ssh_tests::satellite::Satellite;
    let mut env = Env::start_with(
        "satellite_own_config",
        EnvOptions::default().leaf_conf("sender_domain = \"leaf.test\""),
    );
    let satellite = Satellite::new(&env);
    satellite.set_system_config("this is not the config [\n");
    let own = std::fs::read(env.transport_config()).unwrap();
    bsmtp_ssh_tests::util::mkdir(&satellite.home().join(".config/bsmtp-ssh"), 0o755);
    bsmtp_ssh_tests::util::chown_to(
        &satellite.home().join(".config"),
        bsmtp_ssh_tests::LEAF_PIPE_USER,
        None,
    );
    satellite.write_home_file(".config/bsmtp-ssh/bsmtp-ssh.conf", own, 0o600);
    let program = env.bin_dir().join("bsmtp-ssh");
    let program = program.to_string_lossy();
    let run = |args: &[&str], stdin: &[u8]| {
        let mut argv = vec![program.as_ref()];
        argv.extend_from_slice(args);
        satellite.run_as_user(&argv, &[], stdin, Duration::from_mins(1))
    };
    env.stop_sshd();
    let sent = satellite.run_as_user(
        &["/usr/sbin/sendmail", "-i", "bob@hub.test"],
        &[],
        b"Message-ID: <own@leaf.test>\nSubject: own config\n\nx\n",
        Duration::from_mins(1),
    );
    assert_silent_success(&sent);
    let queue = run(&["queue"], b"");
    assert!(queue.status.success(), "{}", explain(&queue));
    let listing = String::from_utf8_lossy(&queue.stdout);
    assert!(
        listing.contains("<bob@hub.test>") && listing.contains("-- 1 message"),
        "{listing}"
    );
    env.start_sshd();
    let check = run(&["check"], b"");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{}", explain(&check));
    assert!(
        report.contains("ok:   peer hub: session") && report.contains("no Postfix on this host"),
        "{report}"
    );
    assert!(!report.contains("/etc/postfix"), "{report}");
    let flushed = run(&["flush"], b"");
    assert!(flushed.status.success(), "{}", explain(&flushed));
    let bob = env.wait_maildir("bob", 1, DELIVERY);
    let text = String::from_utf8_lossy(&bob[0]);
    let sender = format!(
        "Return-Path: <{}@leaf.test>",
        bsmtp_ssh_tests::LEAF_PIPE_USER
    );
    assert!(text.contains(&sender), "{text}");
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
}
