//! A mistake in the hub's own setup, seen from both sides: rsmtp says why
//! it stopped in the hub's mail log and on its stderr, which the leaf's
//! deferral and `check` show; `rsmtp check` names it before any peer
//! finds out.

use std::time::Duration;

use bsmtp_ssh_tests::{Env, EnvOptions, Log, PostlogMode, LEAF_PEER};

const DELIVERY: Duration = Duration::from_secs(90);

/// Regression (issue 19, 5.2): `max_recipents = 1000` in rsmtp.conf stopped
/// every leaf; the leaf deferred "lost connection ... (see the receiver's
/// log)", `check` guessed at the forced command, and the hub logged nothing.
#[test]
fn typo_in_rsmtp_conf_is_named_on_both_sides() {
    let env = Env::start_with(
        "hub_config_typo",
        // The hub's rsmtp reaches the mail log (upstream's set-gid postlog),
        // as on a hub whose admin ran the fix `bsmtp-ssh check` names.
        EnvOptions::default()
            .postlog(PostlogMode::SetGid)
            .rsmtp_conf("max_recipents = 1000"),
    );
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"Subject: typo\r\n\r\nbody\r\n",
    );
    let deferred = env.wait_pipe_status("deferred", DELIVERY);
    assert!(
        deferred.contains("max_recipents") && deferred.contains("said on stderr"),
        "the deferral must carry rsmtp's own words: {deferred}"
    );
    let logged = env.wait_log(Log::Hub, "max_recipents", DELIVERY);
    assert!(
        logged.contains("rsmtp") && logged.contains("fatal: "),
        "{logged}"
    );

    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let session = stdout
        .lines()
        .find(|l| l.starts_with("FAIL: peer hub: session: "))
        .unwrap_or_else(|| panic!("no FAIL line for the session:\n{stdout}"));
    assert!(
        session.contains("max_recipents") && !session.contains("is the key's forced command"),
        "{session}"
    );

    let rsmtp = env.bin_dir().join("rsmtp");
    let out = std::process::Command::new(&rsmtp)
        .arg("check")
        .arg("--config")
        .arg(env.rsmtp_config())
        .arg("--authorized-keys")
        .arg(env.authorized_keys())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{stdout}");
    assert!(
        stdout.contains(&format!("FAIL: config {}", env.rsmtp_config().display()))
            && stdout.contains("max_recipents"),
        "{stdout}"
    );
    // The peer's key line, by file, line and comment: its forced command
    // reads the broken file.
    let key_line = format!(
        "FAIL: {} line 1 ({LEAF_PEER}): ",
        env.authorized_keys().display()
    );
    assert!(stdout.contains(&key_line), "{stdout}");
}

/// `rsmtp check` names a key whose forced command does not parse with
/// rsmtp's command line, and passes a good setup.
#[test]
fn rsmtp_check_names_a_key_whose_forced_command_does_not_parse() {
    let env = Env::start("hub_config_key_typo");
    let rsmtp = env.bin_dir().join("rsmtp");
    let run = || {
        std::process::Command::new(&rsmtp)
            .arg("check")
            .arg("--config")
            .arg(env.rsmtp_config())
            .arg("--authorized-keys")
            .arg(env.authorized_keys())
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&format!("peer {LEAF_PEER}")), "{stdout}");

    let good = std::fs::read_to_string(env.authorized_keys()).unwrap();
    std::fs::write(
        env.authorized_keys(),
        good.replacen("--peer", "--max-recipents 5 --peer", 1),
    )
    .unwrap();
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(78), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAIL: {} line 1 ({LEAF_PEER}): forced command does not parse",
            env.authorized_keys().display()
        )) && stdout.contains("--max-recipents"),
        "{stdout}"
    );
}

/// Issue 19, part 4: on a hub whose sshd reads `AuthorizedKeysFile
/// DIR/%u` (the harness's sshd does), `rsmtp authorize
/// --authorized-keys-dir DIR` writes the peers' keys root-owned 0644 in a
/// root-owned directory; delivery works, and the peers' account can
/// neither rewrite its keys file nor add another beside it.
#[test]
fn root_owned_keys_file_works_and_the_peers_account_cannot_write_it() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::start("hub_root_owned_keys");
    let file = env.authorized_keys();
    let dir = file.parent().unwrap().to_path_buf();
    let user = bsmtp_ssh_tests::HUB_SSH_USER;
    assert_eq!(
        file.file_name().unwrap(),
        user,
        "the harness's sshd reads DIR/%u"
    );
    std::fs::remove_file(&file).unwrap();
    let rsmtp = env.bin_dir().join("rsmtp");
    let out = std::process::Command::new(&rsmtp)
        .arg("authorize")
        .arg("--authorized-keys-dir")
        .arg(&dir)
        .args([
            "--user",
            user,
            "--peer",
            LEAF_PEER,
            "--allow-sender",
            "@leaf.test",
        ])
        .arg("--key")
        .arg(env.leaf_key().with_extension("pub"))
        .arg("--rsmtp")
        .arg(&rsmtp)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("added to {}", file.display())),
        "{said}"
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.mode() & 0o022, 0);

    // The hub here is a private Postfix instance: point the line at it
    // (root rewrites the file in place; owner and mode stay).
    let keys = std::fs::read_to_string(&file).unwrap();
    let instance = format!(
        "--peer {LEAF_PEER} --postfix-config {} --config {}",
        env.hub_config_dir().display(),
        env.rsmtp_config().display()
    );
    std::fs::write(
        &file,
        keys.replacen(&format!("--peer {LEAF_PEER}"), &instance, 1),
    )
    .unwrap();
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        b"Subject: root-owned keys\r\n\r\nbody\r\n",
    );
    env.wait_maildir("bob", 1, DELIVERY);

    // `rsmtp check` finds DIR/USER by itself and passes.
    let out = std::process::Command::new(&rsmtp)
        .arg("check")
        .arg("--config")
        .arg(env.rsmtp_config())
        .arg("--authorized-keys-dir")
        .arg(&dir)
        .args(["--user", user])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("ok:   {} line 1", file.display())),
        "{said}"
    );

    // As the peers' account: no rewrite, no new file beside it.
    let account = bsmtp_ssh_tests::util::lookup_user(user);
    let as_peer = |script: &str, path: &std::path::Path| {
        std::process::Command::new("/usr/bin/setpriv")
            .arg(format!("--reuid={}", account.uid))
            .arg(format!("--regid={}", account.gid))
            .args(["--clear-groups", "--", "/bin/sh", "-c", script, "sh"])
            .arg(path)
            .output()
            .unwrap()
    };
    let append = as_peer("echo 'ssh-ed25519 AAAA evil' >> \"$1\"", &file);
    assert!(!append.status.success(), "the account appended to its keys");
    let beside = as_peer(": > \"$1\"", &dir.join("evil"));
    assert!(
        !beside.status.success(),
        "the account created a file in {}",
        dir.display()
    );
    let replace = as_peer("mv \"$1\" \"$1.old\"", &file);
    assert!(!replace.status.success(), "the account moved its keys file");
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 1);
}

/// The channel's stderr is kept apart and drained as replies are read: a
/// forced command that writes a megabyte there (rsmtp's log lines when no
/// mail log answers, over a long session) neither stalls the session nor
/// gets into the replies.
#[test]
fn a_chatty_stderr_does_not_stall_the_session() {
    let env = Env::start_with(
        "hub_config_chatty_stderr",
        EnvOptions::default().forced_command(
            "head -c 1048576 /dev/zero | tr '\\000' x >&2; exec {bin}/rsmtp --peer leaf1 \
             --postfix-config {hub_etc} --config {base}/hub/rsmtp.conf --allow-sender @leaf.test",
        ),
    );
    for i in 0..3 {
        env.leaf_sendmail(
            "alice@leaf.test",
            &["bob@hub.test"],
            format!("Subject: chatty {i}\r\n\r\nbody\r\n").as_bytes(),
        );
    }
    env.wait_maildir("bob", 3, DELIVERY);
}
