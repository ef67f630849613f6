//! `bsmtp-ssh check` against a real sshd and rsmtp: it passes on a good
//! setup and names a wrong host key, a missing key and a refused login in
//! plain words.

use std::process::Output;

use bsmtp_ssh_tests::{Env, EnvOptions, PostlogMode};

fn check(env: &Env, config: &std::path::Path) -> (Option<i32>, String) {
    let config = config.display().to_string();
    let Output { status, stdout, .. } = env.bsmtp_ssh(&["check", "--config", &config], b"");
    (status.code(), String::from_utf8_lossy(&stdout).into_owned())
}

#[test]
fn check_passes_on_a_working_setup() {
    let env = Env::start("check_ok");
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(0), "{out}");
    for what in ["config", "key", "known_hosts", "login", "session"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("ok:   peer hub: ") && l.contains(&format!(": {what}: "))),
            "no ok line for {what}:\n{out}"
        );
    }
    assert!(out.contains("rsmtp answered: 250 "), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn check_names_a_changed_host_key() {
    let mut env = Env::start("check_host_key");
    env.replace_host_key();
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL: peer hub: host key: host key mismatch for [127.0.0.1]:"),
        "{out}"
    );
    assert!(
        out.contains("update"),
        "the line must say what to do: {out}"
    );
}

#[test]
fn check_names_a_missing_key() {
    let env = Env::start("check_missing_key");
    let config = env.base().join("missing-key.conf");
    let text = std::fs::read_to_string(env.transport_config()).unwrap();
    let key = env.leaf_key().display().to_string();
    std::fs::write(&config, text.replace(&key, "/nonexistent/id_ed25519")).unwrap();
    let (code, out) = check(&env, &config);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL: peer hub: key: cannot read /nonexistent/id_ed25519")
            && out.contains("ssh-keygen"),
        "{out}"
    );
}

#[test]
fn check_names_a_refused_login() {
    let env = Env::start("check_refused");
    std::fs::write(env.authorized_keys(), "").unwrap();
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL: peer hub: login: ") && out.contains("refused"),
        "{out}"
    );
    assert!(
        out.contains("authorized_keys"),
        "the line must say what to do: {out}"
    );
}

#[test]
fn check_names_a_forced_command_that_is_not_rsmtp() {
    let env = Env::start("check_not_rsmtp");
    env.set_forced_command("/bin/echo hello");
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL: peer hub: session: "), "{out}");
    assert!(out.contains("forced command"), "{out}");
}

#[test]
fn check_refuses_an_unknown_peer() {
    let env = Env::start("check_unknown_peer");
    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config, "nosuchpeer"], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("no [peer.nosuchpeer] section") && stdout.contains("known peers: hub"),
        "{stdout}"
    );
}

/// `check` against the leaf instance, which logs to a `maillog_file`.
fn check_leaf(env: &Env) -> (Option<i32>, String) {
    let config = env.transport_config().display().to_string();
    let leaf = env.leaf_config_dir().display().to_string();
    let Output { status, stdout, .. } = env.bsmtp_ssh(
        &["check", "--config", &config, "--config-directory", &leaf],
        b"",
    );
    (status.code(), String::from_utf8_lossy(&stdout).into_owned())
}

/// Regression (fresh machine): with Debian's 0755 postlog the transport's
/// log lines were lost without a word. `check` names the condition and the
/// fix, and still passes: mail flows, and Postfix logs each status.
#[test]
fn check_warns_when_postlog_cannot_log_for_the_transport_user() {
    let env = Env::start_with(
        "check_postlog",
        EnvOptions::default().postlog(PostlogMode::Debian),
    );
    let (code, out) = check_leaf(&env);
    assert_eq!(code, Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("warn: log: "))
        .unwrap_or_else(|| panic!("no log warning:\n{out}"));
    assert!(
        line.contains("not set-gid postdrop")
            && line.contains("user bsmtp-leaf")
            && line
                .contains("dpkg-statoverride --update --add root postdrop 2755 /usr/sbin/postlog"),
        "{line}"
    );
}

/// With upstream's set-gid postlog the same check is fine.
#[test]
fn check_accepts_a_set_gid_postlog() {
    let env = Env::start_with(
        "check_postlog_ok",
        EnvOptions::default().postlog(PostlogMode::SetGid),
    );
    let (code, out) = check_leaf(&env);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok:   log: maillog_file = ") && l.contains("user bsmtp-leaf")),
        "{out}"
    );
}

/// A revoked pin is named as such, and a CA line as unsupported.
#[test]
fn check_names_a_revoked_key_and_a_cert_authority_line() {
    let env = Env::start("check_revoked");
    let pin = std::fs::read_to_string(env.known_hosts()).unwrap();
    let key = pin.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    std::fs::write(env.known_hosts(), format!("{pin}@revoked * {key}\n")).unwrap();
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL: peer hub: host key: host key of [127.0.0.1]:")
            && out.contains("revoked"),
        "{out}"
    );
    std::fs::write(env.known_hosts(), format!("{pin}@cert-authority * {key}\n")).unwrap();
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL: peer hub: known_hosts: ")
            && out.contains("@cert-authority is not supported"),
        "{out}"
    );
}

/// Regression (issue 19, 5.4): `check` run as root passed while the
/// transport's user could not read the key, so every real delivery
/// deferred. It now checks the key and the pins as that user (from
/// master.cf's `user=`) and, for a file that exists, says chown/chmod,
/// not "create it".
#[test]
fn check_as_root_names_a_key_the_transport_user_cannot_read() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::start("check_key_access");
    let (code, out) = check_leaf(&env);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok:   peer hub: key: "), "{out}");

    let key = env.leaf_key();
    std::os::unix::fs::chown(&key, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out) = check_leaf(&env);
    assert_eq!(code, Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL: peer hub: key: "))
        .unwrap_or_else(|| panic!("no FAIL line for the key:\n{out}"));
    assert!(
        line.contains("user bsmtp-leaf")
            && line.contains(&format!("chown bsmtp-leaf {}", key.display()))
            && line.contains("chmod 600")
            && !line.contains("create it"),
        "{line}"
    );
    // No login is tried with a key the transport could not use.
    assert!(!out.contains("peer hub: login: "), "{out}");

    // The pins too.
    let user = bsmtp_ssh_tests::util::lookup_user("bsmtp-leaf");
    std::os::unix::fs::chown(&key, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    let pins = env.known_hosts();
    std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&pins, Some(0), Some(0)).unwrap();
    let (code, out) = check_leaf(&env);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL: peer hub: known_hosts: ")
                && l.contains("chown bsmtp-leaf")),
        "{out}"
    );
}

/// Regression (issue 19, 5.3): `ssh-keyscan` against a hub without sshd
/// writes an empty `known_hosts`, and `check` said only "pins no host key for
/// HOST"; it now names the empty or key-less file and the hub's missing sshd.
#[test]
fn check_names_an_empty_or_keyless_known_hosts() {
    let env = Env::start("check_empty_known_hosts");
    let path = env.known_hosts();
    std::fs::write(&path, "").unwrap();
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL: peer hub: known_hosts: "))
        .unwrap_or_else(|| panic!("no FAIL line for known_hosts:\n{out}"));
    assert!(
        line.contains(&format!("{} is empty", path.display()))
            && line.contains("openssh-server")
            && line.contains("ssh-keyscan -p "),
        "{line}"
    );
    std::fs::write(&path, "# ssh-keyscan found nothing\n\n").unwrap();
    let (code, out) = check(&env, &env.transport_config());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "FAIL: peer hub: known_hosts: {} holds no host key",
            path.display()
        )) && out.contains("openssh-server"),
        "{out}"
    );
}
