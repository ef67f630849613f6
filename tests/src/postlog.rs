//! Which postlog(1) an environment's bsmtp-ssh and rsmtp log through.
//!
//! Debian installs postlog 0755; upstream Postfix (and `dpkg-statoverride`
//! or `postfix set-permissions` afterwards) makes it set-gid postdrop. Our
//! logging behaves differently in the two cases, and the suite must pass on
//! either machine, so a test can pin the mode it means: the harness copies
//! postlog into the environment with that mode and names the copy in
//! bsmtp-ssh.conf and rsmtp.conf (`postlog = ...`). Nothing changes for the
//! rest of the machine, and it works in a chroot too (a mount namespace
//! would not: there `/` is no mount point whose propagation can change).

use std::path::{Path, PathBuf};

use crate::util::{chown_to, set_mode};

/// The system's postlog.
pub const POSTLOG: &str = "/usr/sbin/postlog";

/// The postlog an environment's bsmtp-ssh and rsmtp use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PostlogMode {
    /// Whatever this machine has.
    #[default]
    System,
    /// As a new Debian 12 installs it: 0755 root:root.
    Debian,
    /// As upstream installs it: 2755 root:postdrop.
    SetGid,
}

impl PostlogMode {
    /// Copies postlog to `dir/postlog` with this mode; `None` for
    /// [`PostlogMode::System`], which needs no copy.
    pub fn prepare(self, dir: &Path) -> Option<PathBuf> {
        let (group, mode) = match self {
            PostlogMode::System => return None,
            PostlogMode::Debian => ("root", 0o755),
            PostlogMode::SetGid => ("postdrop", 0o2755),
        };
        let copy = dir.join("postlog");
        std::fs::copy(POSTLOG, &copy)
            .unwrap_or_else(|err| panic!("copy {POSTLOG} to {}: {err}", copy.display()));
        chown_to(&copy, "root", Some(group));
        // chown clears set-id bits: set the mode afterwards.
        set_mode(&copy, mode);
        Some(copy)
    }
}
