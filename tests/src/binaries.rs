//! Builds `bsmtp-ssh` and `rsmtp` once per test process: Cargo builds only a
//! package's own binaries before its integration tests, and these belong to
//! other packages of the workspace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::{describe, explain, run_timeout};

/// Where the freshly built binaries are, in the workspace's target directory.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The transport, `bsmtp-ssh`.
    pub bsmtp_ssh: PathBuf,
    /// The receiver, `rsmtp`.
    pub rsmtp: PathBuf,
}

static BUILT: OnceLock<Result<Binaries, String>> = OnceLock::new();

/// The workspace root: this package's parent directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs `$CARGO build -p bsmtp-ssh -p rsmtp` (with `--release` when
/// `BSMTP_TEST_RELEASE=1`) the first time it is called, and panics with Cargo's
/// output if the build fails.
pub fn binaries() -> Binaries {
    match BUILT.get_or_init(build) {
        Ok(b) => b.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

fn build() -> Result<Binaries, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "bsmtp-ssh", "-p", "rsmtp"])
        .arg("--message-format=json-render-diagnostics");
    if std::env::var("BSMTP_TEST_RELEASE").is_ok_and(|v| v == "1") {
        cmd.arg("--release");
    }
    let what = describe(&cmd);
    let out = run_timeout(&mut cmd, b"", Duration::from_mins(30));
    if !out.status.success() {
        return Err(explain(
            &what,
            out.status,
            b"(JSON messages omitted)",
            &out.stderr,
        ));
    }
    // Cargo names each built executable in a `compiler-artifact` message;
    // reading it there follows CARGO_TARGET_DIR, build.target-dir and profiles.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let executable = |name: &str| {
        stdout
            .lines()
            .filter_map(|line| line.split_once("\"executable\":\"").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_once('"').map(|(path, _)| PathBuf::from(path)))
            .find(|path| path.file_name().is_some_and(|f| f == name))
            .ok_or_else(|| format!("{what}: no executable named {name} in Cargo's output"))
    };
    Ok(Binaries {
        bsmtp_ssh: executable("bsmtp-ssh")?,
        rsmtp: executable("rsmtp")?,
    })
}
