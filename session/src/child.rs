//! Starting the Postfix programs we hand work to (postdrop, postlog,
//! postconf, postmap) with an environment we chose, not the one we got.
//!
//! rsmtp runs under sshd for a peer we do not trust, bsmtp-ssh under pipe(8);
//! postdrop and a set-gid postlog are privileged. So a child gets a cleared
//! environment with a fixed `PATH` and `LANG=C` (error texts we may pass on
//! stay in one language), plus only what its caller adds on purpose, the way
//! Postfix's own `import_environment` works. Arguments are always a vector,
//! never a shell string.

use std::ffi::OsStr;
use std::process::Command;

/// The `PATH` children get: the system directories only.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A command for `program` with the cut-down environment.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", SAFE_PATH).env("LANG", "C");
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_see_only_the_allowlist() {
        let output = command("/usr/bin/env")
            .env("MAIL_CONFIG", "/x")
            .output()
            .expect("run env");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["LANG", "MAIL_CONFIG", "PATH"], "{text}");
    }
}
