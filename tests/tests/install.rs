//! `bsmtp-ssh postfix-install` on a real leaf Postfix: the harness's
//! hand-written transport is replaced by the snippet's, a second run changes
//! nothing, `postfix check` passes, and mail then flows through the installed
//! entry (so its `argv=` line parses and runs), bounces included.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bsmtp_ssh_tests::util::{run_timeout, COMMAND_TIMEOUT};
use bsmtp_ssh_tests::{Env, LEAF_PIPE_USER, PIPE_TRANSPORT};

const DELIVERY: Duration = Duration::from_secs(90);

/// Runs the installed `bsmtp-ssh postfix-install` against the leaf.
fn install(env: &Env, extra: &[&str]) -> Output {
    let mut command = Command::new(env.bin_dir().join("bsmtp-ssh"));
    command
        .arg("postfix-install")
        .arg("--config-directory")
        .arg(env.leaf_config_dir())
        .args(["--user", LEAF_PIPE_USER, "--config"])
        .arg(env.transport_config())
        .args(extra);
    run_timeout(&mut command, b"", COMMAND_TIMEOUT)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

#[test]
fn postfix_install_is_idempotent_and_delivers() {
    let env = Env::start("postfix_install");
    let etc = env.leaf_config_dir();
    let bin = env.bin_dir().join("bsmtp-ssh");

    let dry = install(&env, &["--dry-run"]);
    let dry_text = text(&dry);
    assert_eq!(dry.status.code(), Some(0), "{dry_text}");
    let before = (read(&etc.join("main.cf")), read(&etc.join("master.cf")));

    let first = install(&env, &[]);
    let first_text = text(&first);
    assert_eq!(first.status.code(), Some(0), "{first_text}");
    // The dry run announced exactly the changes the real run made.
    let changed = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("(was: "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(changed(&dry_text), changed(&first_text), "{first_text}");
    // The harness already set the recipient limit; the entry differs
    // (null_sender=), the time limit was unset.
    for says in [
        format!("main.cf: {PIPE_TRANSPORT}_destination_recipient_limit = 1 (unchanged)\n"),
        format!("main.cf: {PIPE_TRANSPORT}_time_limit = 1000s (was: unset)\n"),
    ] {
        assert!(first_text.contains(&says), "{says} missing: {first_text}");
    }
    assert!(first_text.contains("postfix check: ok"), "{first_text}");
    let after_first = (read(&etc.join("main.cf")), read(&etc.join("master.cf")));
    assert_ne!(after_first, before);

    let second = install(&env, &[]);
    let second_text = text(&second);
    assert_eq!(second.status.code(), Some(0), "{second_text}");
    assert!(
        second_text.contains("\nnothing to change\n"),
        "{second_text}"
    );
    assert!(!second_text.contains("(was: "), "{second_text}");
    assert_eq!(
        (read(&etc.join("main.cf")), read(&etc.join("master.cf"))),
        after_first,
        "the second run changed the files"
    );

    // What Postfix reads back is the snippet's entry, with our values.
    let entry = env
        .leaf()
        .command("postconf")
        .arg("-c")
        .arg(&etc)
        .args(["-M", &format!("{PIPE_TRANSPORT}/unix")])
        .output();
    let entry = String::from_utf8_lossy(&entry.expect("postconf -M").stdout).into_owned();
    let words: Vec<&str> = entry.split_whitespace().collect();
    let config = env.transport_config();
    let argv_flag = format!("argv={}", bin.display());
    let user_flag = format!("user={LEAF_PIPE_USER}");
    let config_arg = config.to_string_lossy();
    for expected in [
        "flags=q",
        "null_sender=",
        &user_flag,
        &argv_flag,
        &config_arg,
        "${nexthop}",
        "${recipient}",
    ] {
        assert!(words.contains(&expected), "{expected} missing: {entry}");
    }

    assert!(env.leaf().check().status.success());
    env.leaf().postfix(&["reload"]);

    // Mail flows through the installed entry: its argv= parses and runs.
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"Subject: installed\n\nthrough the installed transport\n",
    );
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert!(String::from_utf8_lossy(&delivered[0]).contains("through the installed transport"));

    // A bounce (null sender) arrives as one: null_sender= passes -f ''.
    env.leaf_sendmail("", &["bob@hub.test"], b"Subject: a bounce\n\nnull sender\n");
    let delivered = env.wait_maildir("bob", 2, DELIVERY);
    let bounce = delivered
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .find(|m| m.contains("null sender"))
        .expect("the null-sender message");
    assert!(bounce.contains("Return-Path: <>\n"), "{bounce}");
}

/// `postfix-install --batching --peer hub` on a real leaf: the spawn(8)
/// service and the lmtp(8) transport are added, a second run changes
/// nothing, `postfix check` passes, and mail routed to the printed value
/// flows through the installed entries to the hub.
#[test]
fn postfix_install_batching_is_idempotent_and_delivers() {
    let env = Env::start("install_batching");
    let etc = env.leaf_config_dir();
    let first = install(&env, &["--batching", "--peer", "hub"]);
    let first_text = text(&first);
    assert_eq!(first.status.code(), Some(0), "{first_text}");
    for added in [
        "master.cf: bsmtp-hub/unix = bsmtp-hub unix - n n - - spawn ",
        "master.cf: bsmtp-hub-lmtp/unix = bsmtp-hub-lmtp unix - - n - - lmtp ",
        "main.cf: bsmtp-hub-lmtp_destination_concurrency_limit = 4 (was: unset)",
    ] {
        assert!(first_text.contains(added), "{added}\n{first_text}");
    }
    assert!(first_text.contains("postfix check: ok"), "{first_text}");
    let route = "bsmtp-hub-lmtp:unix:private/bsmtp-hub";
    assert!(
        first_text.contains(&format!("hint:   default_transport = {route}")),
        "{first_text}"
    );
    let after_first = (read(&etc.join("main.cf")), read(&etc.join("master.cf")));

    let second = install(&env, &["--batching", "--peer", "hub"]);
    let second_text = text(&second);
    assert_eq!(second.status.code(), Some(0), "{second_text}");
    assert!(
        second_text.contains("\nnothing to change\n"),
        "{second_text}"
    );
    assert_eq!(
        (read(&etc.join("main.cf")), read(&etc.join("master.cf"))),
        after_first,
        "the second run changed the files"
    );

    // Route hub.test to the printed value: mail goes over the batching path.
    std::fs::write(etc.join("transport"), format!("hub.test {route}\n")).unwrap();
    env.leaf().postfix(&["reload"]);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test", "carol@hub.test"],
        b"Subject: batching\n\nthrough the installed batching transport\n",
    );
    env.wait_maildir("bob", 1, DELIVERY);
    env.wait_maildir("carol", 1, DELIVERY);
    let line = env.wait_log(bsmtp_ssh_tests::Log::Leaf, "status=sent", DELIVERY);
    assert!(line.contains("postfix-leaf/lmtp["), "{line}");
}

/// `postfix-install --spool` on a real leaf: the spool transport is added
/// (the harness's own entry is the same snippet, so it is unchanged), and
/// mail routed to the printed value is spooled, then sent by `flush`.
#[test]
fn postfix_install_spool_is_idempotent_and_spools() {
    let env = Env::start("install_spool");
    let etc = env.leaf_config_dir();
    let first = install(&env, &["--spool"]);
    let first_text = text(&first);
    assert_eq!(first.status.code(), Some(0), "{first_text}");
    assert!(
        first_text.contains("master.cf: bsmtp-spool/unix = bsmtp-spool unix - n n - - pipe "),
        "{first_text}"
    );
    assert!(first_text.contains("postfix check: ok"), "{first_text}");
    let route = "bsmtp-spool:hub";
    assert!(
        first_text.contains(&format!("hint:   default_transport = {route}")),
        "{first_text}"
    );
    let second = install(&env, &["--spool"]);
    assert!(
        text(&second).contains("\nnothing to change\n"),
        "{}",
        text(&second)
    );
    std::fs::write(etc.join("transport"), format!("hub.test {route}\n")).unwrap();
    env.leaf().postfix(&["reload"]);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"Subject: spool\n\nthrough the installed spool transport\n",
    );
    let line = env.wait_log(bsmtp_ssh_tests::Log::Leaf, "relay=bsmtp-spool", DELIVERY);
    assert!(
        line.contains("status=sent") && line.contains("spooled for hub as"),
        "{line}"
    );
    let flushed = env.flush();
    assert!(flushed.status.success(), "{}", text(&flushed));
    env.wait_maildir("bob", 1, DELIVERY);
}

/// Regression (audit M6, then the README's quick start on Debian): with
/// Debian's stock `bsmtp` pipe(8) entry in the leaf's master.cf, the
/// default install leaves it byte for byte and mail flows through the
/// installed `bsmtp-ssh` entry; asked for `--transport bsmtp`, the install
/// refuses (exit 1, the entry shown, neither master.cf nor main.cf
/// changed, the dry run alike).
#[test]
fn postfix_install_keeps_debians_stock_bsmtp_entry() {
    let env = Env::start("install_debian_stock");
    let etc = env.leaf_config_dir();
    let stock = "bsmtp unix - n n - - pipe flags=Fq. user=bsmtp \
                 argv=/usr/lib/bsmtp/bsmtp -t$nexthop -f$sender $recipient";
    let postconf = env
        .leaf()
        .command("postconf")
        .arg("-c")
        .arg(&etc)
        .args(["-M", &format!("bsmtp/unix={stock}")])
        .output()
        .expect("postconf -M");
    assert!(postconf.status.success(), "{}", text(&postconf));
    let files = || (read(&etc.join("main.cf")), read(&etc.join("master.cf")));
    let before = files();
    let stock_text = String::from_utf8(before.1.clone()).unwrap();
    let stock_at = stock_text.find("\nbsmtp ").expect("the stock entry") + 1;
    let stock_lines = &stock_text[stock_at..];
    let stock_lines = &stock_lines[..stock_lines
        .find("\nbsmtp-ssh ")
        .unwrap_or(stock_lines.len())];

    for flags in [
        &["--transport", "bsmtp", "--dry-run"][..],
        &["--transport", "bsmtp"][..],
    ] {
        let refused = install(&env, flags);
        let said = text(&refused);
        assert_eq!(refused.status.code(), Some(1), "{flags:?}: {said}");
        for says in [
            "postfix-install: error: master.cf: bsmtp/unix exists and is not bsmtp-ssh's entry:\n",
            &format!("\n  {stock}\n"),
            "nothing was changed",
            "--force",
        ] {
            assert!(said.contains(says), "{flags:?}: {says} missing: {said}");
        }
        assert_eq!(files(), before, "{flags:?}: the files changed");
    }

    let installed = install(&env, &[]);
    let installed_text = text(&installed);
    assert_eq!(installed.status.code(), Some(0), "{installed_text}");
    assert!(
        installed_text.contains("postfix check: ok") && !installed_text.contains("bsmtp/unix"),
        "{installed_text}"
    );
    let after = String::from_utf8(read(&etc.join("master.cf"))).unwrap();
    assert!(
        after.contains(stock_lines),
        "{stock_lines:?} changed:\n{after}"
    );
    let entry = env
        .leaf()
        .command("postconf")
        .arg("-c")
        .arg(&etc)
        .args(["-M", "bsmtp/unix"])
        .output()
        .expect("postconf -M");
    let entry = String::from_utf8_lossy(&entry.stdout);
    assert_eq!(
        entry.split_whitespace().collect::<Vec<_>>().join(" "),
        stock,
        "{entry}"
    );

    env.leaf().postfix(&["reload"]);
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"Subject: beside\n\nbeside the stock entry\n",
    );
    let delivered = env.wait_maildir("bob", 1, DELIVERY);
    assert!(String::from_utf8_lossy(&delivered[0]).contains("beside the stock entry"));
    env.wait_pipe_status("sent", DELIVERY);
}
