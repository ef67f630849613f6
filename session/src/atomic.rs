//! Replacing a file so that a reader, or a crash, sees the old contents or
//! the new, never a mix: a temp file in the same directory, its mode and
//! owner set, written and fsynced, renamed over the name, and the directory
//! fsynced so that the rename itself is on disk (crymap's
//! `support/file_ops.rs` does all but the last step).
//!
//! Every step is relative to a descriptor of the directory, opened without
//! following symlinks: whoever owns the directory cannot redirect a
//! privileged write elsewhere with a symlink.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

/// How the new file is made.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Its permission bits, set exactly (the umask takes nothing away).
    pub mode: u32,
    /// Its owner and group, when not the caller's (needs root).
    pub owner: Option<(Uid, Gid)>,
}

impl Options {
    /// A private file of the caller's: mode 0600.
    pub const PRIVATE: Options = Options {
        mode: 0o600,
        owner: None,
    };
}

/// Opens the directory `path` for [`replace_at`], refusing a symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", path.display()),
        )
    })
}

/// Replaces `name` in the directory `dir` (shown as `dir_path` in errors)
/// with `bytes`, atomically and durably; on error nothing changed.
pub fn replace_at(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &Path,
    bytes: &[u8],
    options: Options,
) -> io::Result<()> {
    let at = |what: &Path, e: Errno| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", dir_path.join(what).display()),
        )
    };
    let temp = Path::new(".").join(format!(".{}.tmp-{}", name.display(), std::process::id()));
    let fd = fcntl::openat(
        dir,
        &temp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| at(&temp, e))?;
    let written = fill(File::from(fd), bytes, options)
        .map_err(|e| at(&temp, e))
        .and_then(|()| fcntl::renameat(dir, &temp, dir, name).map_err(|e| at(name, e)));
    if let Err(err) = written {
        let _ = nix::unistd::unlinkat(dir, &temp, nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(err);
    }
    // The rename is durable only once the directory is on disk.
    nix::unistd::fsync(dir.as_fd()).map_err(|e| at(Path::new("."), e))
}

/// Replaces the file at `path` (see [`replace_at`]).
pub fn replace(path: &Path, bytes: &[u8], options: Options) -> io::Result<()> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            },
            name,
        ),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a file name", path.display()),
            ))
        }
    };
    replace_at(&open_dir(dir)?, dir, Path::new(name), bytes, options)
}

fn fill(mut file: File, bytes: &[u8], options: Options) -> nix::Result<()> {
    let os = |e: io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32));
    file.set_permissions(std::fs::Permissions::from_mode(options.mode))
        .map_err(os)?;
    if let Some((uid, gid)) = options.owner {
        nix::unistd::fchown(file.as_fd(), Some(uid), Some(gid))?;
    }
    file.write_all(bytes).map_err(os)?;
    file.sync_all().map_err(os)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn replaces_whole_with_its_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        std::fs::write(&path, b"old").unwrap();
        replace(
            &path,
            b"new contents",
            Options {
                mode: 0o640,
                owner: None,
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }

    #[test]
    fn refuses_a_symlinked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = replace(&link.join("f"), b"x", Options::PRIVATE).unwrap_err();
        assert!(err.to_string().contains("link"), "{err}");
        assert!(!real.join("f").exists());
    }
}
