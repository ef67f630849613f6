//! The harness's own tests: each daemon it starts does its job, without
//! `bsmtp-ssh` or `rsmtp` (other packages, maybe unfinished).

use std::time::Duration;

use bsmtp_ssh_tests::{Env, EnvOptions, Log};

const WAIT: Duration = Duration::from_secs(30);

fn options() -> EnvOptions {
    EnvOptions::default().without_binaries()
}

fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!("From: <{from}>\nTo: <{to}>\nSubject: {subject}\n\nHello from the harness.\n.\nEnd.\n")
        .into_bytes()
}

#[test]
fn hub_sendmail_delivers_to_hub_maildir() {
    let env = Env::start_with("hub_sendmail", options());
    env.hub_sendmail(
        "root@hub.test",
        &["bob@hub.test"],
        &message("root@hub.test", "bob@hub.test", "hub-local"),
    );
    let mail = env.wait_maildir("bob", 1, WAIT);
    assert_eq!(mail.len(), 1);
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(text.contains("Subject: hub-local"), "{text}");
    // -i: a line holding only "." is content, not the end of input.
    assert!(text.contains("\n.\nEnd."), "{text}");
    env.wait_log(Log::Hub, "status=sent (delivered to maildir)", WAIT);
}

#[test]
fn postfix_check_accepts_both_instances() {
    let env = Env::start_with("postfix_check", options());
    for pf in [env.hub(), env.leaf()] {
        // Other tests' environments add and remove themselves in the default
        // main.cf's alternate_config_directories meanwhile; postconf reads
        // that file twice and warns when it changed in between. Hold the
        // harness's lock so that the check sees one version.
        let lock = bsmtp_ssh_tests::util::global_lock();
        let out = pf.check();
        drop(lock);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("warning"),
            "{} postfix check: {stderr}",
            pf.name
        );
    }
}

#[test]
fn leaf_sendmail_delivers_to_leaf_maildir() {
    let env = Env::start_with("leaf_sendmail", options());
    env.leaf_sendmail(
        "root@leaf.test",
        &["alice@leaf.test"],
        &message("root@leaf.test", "alice@leaf.test", "leaf-local"),
    );
    let mail = env.wait_leaf_maildir("alice", 1, WAIT);
    assert!(String::from_utf8_lossy(&mail[0]).contains("Subject: leaf-local"));
    env.wait_leaf_queue_empty(WAIT);
    assert!(env.leaf_queue_is_empty());
}

#[test]
fn leaf_routes_hub_test_through_bsmtp_pipe() {
    // Without the binaries the pipe fails; what matters is the route taken.
    let env = Env::start_with("leaf_route", options());
    env.leaf_sendmail(
        "alice@leaf.test",
        &["bob@hub.test"],
        &message("alice@leaf.test", "bob@hub.test", "routed"),
    );
    let line = env.wait_log(Log::Leaf, "relay=bsmtp", WAIT);
    assert!(line.contains("to=<bob@hub.test>"), "{line}");
}

#[test]
fn ssh_runs_forced_command_with_pinned_host_key() {
    let mut env = Env::start_with(
        "ssh_forced",
        options().forced_command("/bin/echo forced; printf '%s' \"$SSH_ORIGINAL_COMMAND\" >&2"),
    );
    let out = env.ssh_exec("rsmtp --anything; rm -rf /", b"");
    assert!(out.status.success(), "{:?}\n{}", out, env.diagnostics());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "forced\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "rsmtp --anything; rm -rf /"
    );
    env.wait_log(Log::Sshd, "Accepted publickey for bsmtp-hub", WAIT);

    env.replace_host_key();
    let out = env.ssh_exec("anything", b"");
    assert!(!out.status.success(), "ssh must refuse a changed host key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{stderr}"
    );

    env.pin_host_key();
    let out = env.ssh_exec("", b"");
    assert!(out.status.success(), "{:?}\n{}", out, env.diagnostics());
}

#[test]
fn sshd_stops_and_starts_on_the_same_port() {
    let mut env = Env::start_with("sshd_restart", options().forced_command("/bin/cat"));
    let port = env.sshd_port();
    env.stop_sshd();
    assert!(!env.ssh_exec("", b"").status.success());
    env.start_sshd();
    assert_eq!(env.sshd_port(), port);
    let out = env.ssh_exec("", b"through stdin");
    assert_eq!(out.stdout, b"through stdin", "{out:?}");
}

#[test]
fn binaries_are_built_and_installed_for_the_pipe_user() {
    // Cargo builds only this package's binaries before its tests: the harness
    // builds bsmtp-ssh and rsmtp itself and copies them where bsmtp-leaf and
    // bsmtp-hub can run them.
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start("binaries");
    for name in ["bsmtp-ssh", "rsmtp"] {
        let path = env.bin_dir().join(name);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o755,
            "{}",
            path.display()
        );
    }
}

#[test]
fn leaf_bounce_notice_reaches_the_local_sender() {
    let env = Env::start_with("leaf_bounce", options());
    env.leaf_sendmail(
        "alice@leaf.test",
        &["nosuchuser@leaf.test"],
        &message("alice@leaf.test", "nosuchuser@leaf.test", "undeliverable"),
    );
    let notices = env.wait_leaf_maildir("alice", 1, WAIT);
    let text = String::from_utf8_lossy(&notices[0]);
    assert!(
        text.contains("Undelivered Mail Returned to Sender"),
        "{text}"
    );
    assert!(text.contains("Subject: undeliverable"), "{text}");
}
