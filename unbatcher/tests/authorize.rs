//! `rsmtp authorize`: the line it writes, the file's mode, and every refusal
//! leaving the file as it was.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Parser;

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDQ84D7SJHDRwVUBR8pRKeRsEDa+VSkXl+XQSCq4FZ4e leaf1@test\n";
const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNBgYa6ljHGJTYs1Rq3XTGZIkgHcrgdtAxN/dVW7vWF6QL4JpZg6ooef1+Otsy5vrGgEzkY9fd3s3D451ybWaZo= hub-admin@test\n";
const RSMTP: &str = "/usr/sbin/rsmtp";

/// A private directory with a key file and an `authorized_keys` path.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("leaf1.pub"), key).unwrap();
        Setup { dir }
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("leaf1.pub")
    }

    fn authorized_keys(&self) -> PathBuf {
        self.dir.path().join("authorized_keys")
    }

    /// Runs `rsmtp authorize --key KEY --authorized-keys FILE --rsmtp RSMTP`
    /// plus `extra`; returns the exit code and stdout.
    fn authorize(&self, extra: &[&str]) -> (u8, String) {
        let mut argv: Vec<OsString> = vec!["rsmtp".into(), "authorize".into()];
        argv.extend(["--key".into(), self.key().into()]);
        argv.extend(["--authorized-keys".into(), self.authorized_keys().into()]);
        if !extra.contains(&"--rsmtp") {
            argv.extend(["--rsmtp".into(), RSMTP.into()]);
        }
        argv.extend(extra.iter().map(OsString::from));
        run(argv)
    }
}

fn run(argv: Vec<OsString>) -> (u8, String) {
    let mut out = Vec::new();
    let code = match rsmtp::run(argv, None, false, &mut std::io::empty(), &mut out) {
        Ok(()) => 0,
        Err(err) => err.exit_code() as u8,
    };
    (code, String::from_utf8(out).unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn happy_path_appends_the_restricted_line_with_mode_0600() {
    let setup = Setup::new(ED25519);
    // An existing file without a final newline keeps its line intact.
    std::fs::write(setup.authorized_keys(), "ssh-ed25519 AAAAother admin").unwrap();
    std::fs::set_permissions(
        setup.authorized_keys(),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, stdout) = setup.authorize(&[
        "--peer",
        "leaf1",
        "--allow-sender",
        "@leaf1.example.com",
        "--allow-sender",
        "*",
        "--max-size",
        "20480000",
        "--max-recipients",
        "50",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let written = std::fs::read_to_string(setup.authorized_keys()).unwrap();
    insta::assert_snapshot!(written);
    assert_eq!(mode(&setup.authorized_keys()), 0o600);
    assert!(
        stdout.contains("forced command runs /usr/sbin/rsmtp"),
        "{stdout}"
    );
    // No temp file left behind.
    let names: Vec<_> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn new_file_is_created_with_mode_0600_and_a_keyless_comment_gets_the_peer() {
    let setup = Setup::new(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDQ84D7SJHDRwVUBR8pRKeRsEDa+VSkXl+XQSCq4FZ4e\n",
    );
    let (code, _) = setup.authorize(&["--peer", "leaf1"]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(setup.authorized_keys()).unwrap(),
        "restrict,command=\"/usr/sbin/rsmtp --peer leaf1\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDQ84D7SJHDRwVUBR8pRKeRsEDa+VSkXl+XQSCq4FZ4e leaf1\n"
    );
    assert_eq!(mode(&setup.authorized_keys()), 0o600);
}

#[test]
fn dry_run_prints_the_line_and_the_running_binary_and_writes_nothing() {
    let setup = Setup::new(ECDSA);
    // Without --rsmtp the running program is used; the test binary stands
    // in for it here.
    let mut argv: Vec<OsString> = vec!["rsmtp".into(), "authorize".into(), "--dry-run".into()];
    argv.extend(["--peer".into(), "hub-admin".into()]);
    argv.extend(["--key".into(), setup.key().into()]);
    argv.extend(["--authorized-keys".into(), setup.authorized_keys().into()]);
    let (code, stdout) = run(argv);
    assert_eq!(code, 0, "{stdout}");
    let exe = std::env::current_exe().unwrap();
    assert!(
        stdout.starts_with(&format!("rsmtp: forced command runs {}\n", exe.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "restrict,command=\"{} --peer hub-admin\" ecdsa-sha2-nistp256 ",
            exe.display()
        )),
        "{stdout}"
    );
    assert!(!setup.authorized_keys().exists());
}

/// A refusal: what, key file contents, arguments, exit code, message.
type Case = (&'static str, String, Vec<&'static str>, u8, &'static str);

// A table, one row per refusal: long because rustfmt spreads each row.
#[allow(clippy::too_many_lines)]
fn refusal_cases() -> Vec<Case> {
    let private = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ==\n-----END OPENSSH PRIVATE KEY-----\n";
    let two = format!("{ED25519}{ECDSA}");
    let wrong_type = ED25519.replace("ssh-ed25519", "ecdsa-sha2-nistp256");
    let bad_base64 = ED25519.replace("AAAAC3", "AA!AC3");
    let truncated = ED25519.replace("AAAAC3NzaC1lZDI1NTE5", "AAAAC3Nz");
    let with_options = format!("restrict {ED25519}");
    vec![
        (
            "peer with a slash",
            ED25519.into(),
            vec!["--peer", "../x"],
            65,
            "bad peer name",
        ),
        (
            "peer with a space",
            ED25519.into(),
            vec!["--peer", "a b"],
            65,
            "bad peer name",
        ),
        (
            "peer with a quote",
            ED25519.into(),
            vec!["--peer", "a\"b"],
            65,
            "bad peer name",
        ),
        (
            "private key",
            private.into(),
            vec!["--peer", "leaf1"],
            65,
            "private key",
        ),
        ("two keys", two, vec!["--peer", "leaf1"], 65, "2 lines"),
        (
            "empty file",
            String::new(),
            vec!["--peer", "leaf1"],
            65,
            "no public key",
        ),
        (
            "unknown type",
            ED25519.replace("ssh-ed25519", "ssh-dss"),
            vec!["--peer", "leaf1"],
            65,
            "unknown key type",
        ),
        (
            "options in the .pub",
            with_options,
            vec!["--peer", "leaf1"],
            65,
            "unknown key type",
        ),
        (
            "type mismatch",
            wrong_type,
            vec!["--peer", "leaf1"],
            65,
            "not a ecdsa-sha2-nistp256 key",
        ),
        (
            "bad base64",
            bad_base64,
            vec!["--peer", "leaf1"],
            65,
            "not valid base64",
        ),
        (
            "truncated key",
            truncated,
            vec!["--peer", "leaf1"],
            65,
            "not a ssh-ed25519 key",
        ),
        (
            "unparsable sender",
            ED25519.into(),
            vec!["--peer", "leaf1", "--allow-sender", "alice"],
            65,
            "bad address pattern",
        ),
        (
            // Regression (audit 2.9): the pattern became its own word in
            // the forced command, which rsmtp then refused: a dead key.
            "sender pattern starting with a dash",
            ED25519.into(),
            vec!["--peer", "leaf1", "--allow-sender=--peer=x@y"],
            65,
            "must not start with '-'",
        ),
        (
            "quote in sender",
            ED25519.into(),
            vec!["--peer", "leaf1", "--allow-sender", "a\"b@x.test"],
            65,
            "forced command",
        ),
        (
            "backslash in sender",
            ED25519.into(),
            vec!["--peer", "leaf1", "--allow-sender", "a\\b@x.test"],
            65,
            "forced command",
        ),
        (
            "single quote in sender",
            ED25519.into(),
            vec!["--peer", "leaf1", "--allow-sender", "o'neil@x.test"],
            65,
            "cannot be quoted",
        ),
        (
            "table name climbing out of the table directory",
            ED25519.into(),
            vec!["--peer", "leaf1", "--allow-table", "../main.cf"],
            65,
            "bad table name",
        ),
        (
            "relative rsmtp",
            ED25519.into(),
            vec!["--peer", "leaf1", "--rsmtp", "rsmtp"],
            65,
            "absolute path",
        ),
        (
            "rsmtp with a space",
            ED25519.into(),
            vec!["--peer", "leaf1", "--rsmtp", "/usr/local/my rsmtp"],
            65,
            "absolute path",
        ),
    ]
}

/// Each refusal: exit code, message, and the file byte for byte as before.
#[test]
fn refusals_leave_the_file_untouched() {
    const BEFORE: &str = "# hub keys\nssh-rsa AAAAB3Nza admin\n";
    let cases = refusal_cases();
    for (what, key, extra, code, message) in cases {
        let setup = Setup::new(&key);
        std::fs::write(setup.authorized_keys(), BEFORE).unwrap();
        let mut argv: Vec<OsString> = vec!["rsmtp".into(), "authorize".into()];
        argv.extend(["--key".into(), setup.key().into()]);
        argv.extend(["--authorized-keys".into(), setup.authorized_keys().into()]);
        if !extra.contains(&"--rsmtp") {
            argv.extend(["--rsmtp".into(), RSMTP.into()]);
        }
        argv.extend(extra.iter().map(OsString::from));
        let mut out = Vec::new();
        let err = rsmtp::run(argv, None, false, &mut std::io::empty(), &mut out).expect_err(what);
        assert_eq!(err.exit_code() as u8, code, "{what}: {err}");
        assert!(err.to_string().contains(message), "{what}: {err}");
        assert!(err.to_string().is_ascii(), "{what}: {err}");
        assert_eq!(
            std::fs::read_to_string(setup.authorized_keys()).unwrap(),
            BEFORE,
            "{what}"
        );
        assert_eq!(
            std::fs::read_dir(setup.dir.path()).unwrap().count(),
            2,
            "{what}"
        );
    }
}

#[test]
fn key_already_present_is_refused_whatever_its_options() {
    let blob = ED25519.split(' ').nth(1).unwrap();
    for existing in [
        ED25519.to_owned(),
        format!("restrict,command=\"/usr/sbin/rsmtp --peer other\" ssh-ed25519 {blob} other\n"),
        format!("from=\"10.0.0.1\",command=\"echo a b\" ssh-ed25519 {blob}\n# comment\n"),
        format!("ssh-rsa AAAAB3Nza admin\n  no-pty   ssh-ed25519 {blob} x"),
    ] {
        let setup = Setup::new(ED25519);
        std::fs::write(setup.authorized_keys(), &existing).unwrap();
        let (code, _) = setup.authorize(&["--peer", "leaf1"]);
        assert_eq!(code, 65, "{existing}");
        assert_eq!(
            std::fs::read_to_string(setup.authorized_keys()).unwrap(),
            existing
        );
    }
    // The blob inside another option or comment is not the key itself.
    let setup = Setup::new(ED25519);
    std::fs::write(setup.authorized_keys(), format!("# {blob}-old\n")).unwrap();
    assert_eq!(setup.authorize(&["--peer", "leaf1"]).0, 0);
}

#[test]
fn symlinked_authorized_keys_is_refused() {
    let setup = Setup::new(ED25519);
    let elsewhere = setup.dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "").unwrap();
    std::os::unix::fs::symlink(&elsewhere, setup.authorized_keys()).unwrap();
    let (code, _) = setup.authorize(&["--peer", "leaf1"]);
    assert_eq!(code, 65);
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "");
    assert!(setup.authorized_keys().is_symlink());
}

/// Audit: a hard-linked `authorized_keys` (a second name, perhaps another
/// account's file) or one owned by someone else is refused, unchanged.
#[test]
fn hard_linked_or_foreign_owned_authorized_keys_is_refused() {
    let setup = Setup::new(ED25519);
    std::fs::write(setup.authorized_keys(), "").unwrap();
    let other = setup.dir.path().join("other_keys");
    std::fs::hard_link(setup.authorized_keys(), &other).unwrap();
    let (code, _) = setup.authorize(&["--peer", "leaf1"]);
    assert_eq!(code, 65);
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "");
    std::fs::remove_file(&other).unwrap();
    // Owned by another account than the directory's owner.
    nix::unistd::chown(
        &setup.authorized_keys(),
        Some(nix::unistd::Uid::from_raw(54321)),
        None,
    )
    .expect("the tests run as root");
    let (code, _) = setup.authorize(&["--peer", "leaf1"]);
    assert_eq!(code, 65);
    assert_eq!(
        std::fs::read_to_string(setup.authorized_keys()).unwrap(),
        ""
    );
    // Given back, it takes the key.
    nix::unistd::chown(
        &setup.authorized_keys(),
        Some(nix::unistd::Uid::from_raw(0)),
        None,
    )
    .unwrap();
    let (code, _) = setup.authorize(&["--peer", "leaf1"]);
    assert_eq!(code, 0);
}

#[test]
fn unknown_user_is_refused_with_how_to_create_it() {
    let setup = Setup::new(ED25519);
    let argv: Vec<OsString> = [
        "rsmtp",
        "authorize",
        "--peer",
        "leaf1",
        "--user",
        "no-such-user-rsmtp-test",
        "--rsmtp",
        RSMTP,
        "--key",
    ]
    .iter()
    .map(OsString::from)
    .chain([setup.key().into()])
    .collect();
    let mut out = Vec::new();
    let err = rsmtp::run(argv, None, false, &mut std::io::empty(), &mut out).unwrap_err();
    assert_eq!(err.exit_code() as u8, 67, "{err}");
    assert!(err.to_string().contains("useradd"), "{err}");
}

/// The written command, split by a real shell as sshd has it run, parses
/// with rsmtp's own command line into the policy that was asked for.
#[test]
fn written_forced_command_parses_with_rsmtp_args() {
    let setup = Setup::new(ED25519);
    // Files a shell glob would match, were `*` left unquoted.
    std::fs::write(setup.dir.path().join("glob-bait"), "").unwrap();
    let (code, stdout) = setup.authorize(&[
        "--peer",
        "leaf1",
        "--allow-sender",
        "*",
        "--allow-sender",
        "@.leaf1.example.com",
        "--allow-sender",
        "bounce+$x@leaf1.test",
        "--max-size",
        "1000",
        "--max-recipients",
        "7",
        "--allow-table",
        "relay_recipients",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let line = std::fs::read_to_string(setup.authorized_keys()).unwrap();
    let Some((command, _)) = line
        .strip_prefix("restrict,command=\"")
        .and_then(|rest| rest.split_once("\" ssh-ed25519 "))
    else {
        panic!("no forced command in {line}");
    };
    let output = std::process::Command::new("/bin/sh")
        .current_dir(setup.dir.path())
        .arg("-c")
        .arg(format!("set -- {command}; printf '%s\\n' \"$@\""))
        .output()
        .unwrap();
    assert!(output.status.success());
    let words: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(words[0], RSMTP);
    let args = rsmtp::Args::try_parse_from(&words).unwrap();
    assert_eq!(args.peer.as_deref(), Some("leaf1"));
    assert_eq!(
        args.policy.allow_sender,
        ["*", "@.leaf1.example.com", "bounce+$x@leaf1.test"]
    );
    assert_eq!(
        (args.policy.max_size, args.policy.max_recipients),
        (Some(1000), Some(7))
    );
    assert_eq!(args.policy.allow_table, ["relay_recipients"]);
    assert!(args.command.is_none());
}

/// `authorize` exists for the admin only: the client's command never
/// reaches clap, and command.rs knows no such verb.
#[test]
fn authorize_is_not_reachable_through_ssh_original_command() {
    let refused = rsmtp::command::parse(Some(b"authorize --peer x --key /tmp/k.pub")).unwrap_err();
    assert!(refused.reason.contains("unknown verb"), "{refused}");
    // And the forced command's own arguments cannot be combined with it.
    let err = rsmtp::Args::try_parse_from(["rsmtp", "--peer", "leaf1", "authorize"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
}

/// Issue 19 (part 4): the package makes the account with no shell (a leaf
/// needs none); authorizing a key makes this host a hub, where sshd runs
/// the forced command through the account's shell, so the account gets
/// `/bin/sh`, and the output says so.
#[test]
fn authorizing_a_key_gives_a_nologin_account_a_shell() {
    const NAME: &str = "bsmtp-authz-test";
    let setup = Setup::new(ED25519);
    let home = setup.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let _ = std::process::Command::new("/usr/sbin/userdel")
        .arg(NAME)
        .stderr(std::process::Stdio::null())
        .status();
    let made = std::process::Command::new("/usr/sbin/useradd")
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg("--home-dir")
        .arg(&home)
        .arg(NAME)
        .status()
        .expect("the tests run as root, with useradd");
    assert!(made.success());
    let mut argv: Vec<OsString> = vec!["rsmtp".into(), "authorize".into()];
    argv.extend(["--key".into(), setup.key().into()]);
    argv.extend(["--rsmtp".into(), RSMTP.into()]);
    argv.extend(["--peer", "leaf1", "--user", NAME].map(OsString::from));
    let (code, out) = run(argv);
    let shell = nix::unistd::User::from_name(NAME).unwrap().unwrap().shell;
    let _ = std::process::Command::new("/usr/sbin/userdel")
        .arg(NAME)
        .status();
    assert_eq!(code, 0, "{out}");
    assert_eq!(shell, Path::new("/bin/sh"));
    assert!(
        out.contains("shell was /usr/sbin/nologin, now /bin/sh"),
        "{out}"
    );
    assert!(std::fs::read_to_string(home.join(".ssh/authorized_keys"))
        .unwrap()
        .contains("--peer leaf1"));
}
