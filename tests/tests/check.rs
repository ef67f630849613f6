//! `bsmtp-ssh check` against a real sshd and rsmtp: it passes on a good
//! setup and names a wrong host key, a missing key and a refused login in
//! plain words.

use std::process::Output;

use bsmtp_ssh_tests::Env;

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
