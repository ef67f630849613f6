//! Transactions of an offline batch whose `MAIL FROM` was refused for good,
//! kept for the hub's admin instead of being reported to their sender.
//!
//! A refused sender is exactly what a forged batch names: mailing it a
//! notice, with the batch's content, would make the hub a reflector
//! (SPEC invariant 7: no notice is ever mailed to a sender the peer's
//! policy refused). So the transaction is logged, counted as settled, and
//! written here as BSMTP, one file per transaction in a directory per peer
//! (`DIR/PEER/HASH.bsmtp`), where the admin can read it and, after fixing
//! the policy, feed it again with `rsmtp --peer PEER --batch < FILE`.
//!
//! A file is named by the transaction's content (SHA-1 of sender,
//! recipients and body), so reading a batch again writes nothing twice. It
//! begins with `#` comment lines (the reason, the reply, the time), which a
//! reader answers with `500` and otherwise ignores. It is bounded: the
//! body up to [`bsmtp::bounce::DEFAULT_SIZE_LIMIT`] bytes and the listed
//! recipients as the offline transcript keeps them; a file cut short has
//! no final `.`, so reading it again queues nothing of it. A peer's
//! directory holds at most [`MAX_FILES`]; beyond that a refused
//! transaction is only logged.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use bsmtp_session::atomic;

/// Default place of the reject files.
pub const DEFAULT_DIRECTORY: &str = "/var/lib/bsmtp-ssh/rejects";
/// Most reject files kept per peer: with the body cut at 50000 bytes, a
/// peer's directory stays within about 50 MB plus recipient lists.
pub const MAX_FILES: usize = 1000;

/// What became of a transaction to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Written to this file now, or found there from an earlier reading.
    File(PathBuf),
    /// The peer's directory holds [`MAX_FILES`] already.
    Full(PathBuf),
    /// Reject files are turned off (`reject_directory = ""`).
    Off,
}

/// One peer's reject directory, created on first use.
#[derive(Debug)]
pub struct Rejects {
    dir: Option<PathBuf>,
    /// Files in it, counted on first use.
    files: Option<usize>,
}

impl Rejects {
    /// The reject files of `peer` under `base` (`None`: the default; an
    /// empty path turns them off).
    pub fn new(base: Option<&Path>, peer: &str) -> Self {
        let base = base.unwrap_or(Path::new(DEFAULT_DIRECTORY));
        Rejects {
            dir: (!base.as_os_str().is_empty()).then(|| base.join(peer)),
            files: None,
        }
    }

    /// Keeps `text` as `NAME.bsmtp`, unless a file of that name is there.
    pub fn keep(&mut self, name: &str, text: &[u8]) -> io::Result<Kept> {
        let Some(dir) = &self.dir else {
            return Ok(Kept::Off);
        };
        let file = Path::new(name).with_extension("bsmtp");
        let path = dir.join(&file);
        let files = if let Some(files) = self.files {
            files
        } else {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
            let files = std::fs::read_dir(dir)?
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".bsmtp"))
                .count();
            *self.files.insert(files)
        };
        if path.exists() {
            return Ok(Kept::File(path));
        }
        if files >= MAX_FILES {
            return Ok(Kept::Full(dir.clone()));
        }
        let fd = atomic::open_dir(dir)?;
        atomic::replace_at(&fd, dir, &file, text, atomic::Options::PRIVATE)?;
        self.files = Some(files + 1);
        Ok(Kept::File(path))
    }
}

/// A refused transaction as a BSMTP file: `comments` as `#` lines, then
/// `MAIL`, `RCPT`s, `DATA`, the dot-stuffed `content`, and the final `.`
/// only when `whole` (a cut body must not be queued when read again).
pub fn bsmtp(
    comments: &[String],
    sender: &str,
    recipients: &[&str],
    content: &[u8],
    whole: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 1024);
    for comment in comments {
        out.extend_from_slice(b"# ");
        out.extend(
            comment
                .bytes()
                .map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        out.push(b'\n');
    }
    out.extend_from_slice(format!("MAIL FROM:<{sender}>\n").as_bytes());
    for recipient in recipients {
        out.extend_from_slice(format!("RCPT TO:<{recipient}>\n").as_bytes());
    }
    out.extend_from_slice(b"DATA\n");
    let mut line_start = true;
    for &byte in content {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    if !line_start {
        out.push(b'\n');
    }
    if whole {
        out.extend_from_slice(b".\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_dot_stuffed_and_a_cut_one_has_no_final_dot() {
        let text = bsmtp(
            &["reason\nwith a newline".into()],
            "v@x.test",
            &["a@h.test", "b@h.test"],
            b".hidden\nx\n..two\nlast",
            true,
        );
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "# reason with a newline\nMAIL FROM:<v@x.test>\nRCPT TO:<a@h.test>\n\
             RCPT TO:<b@h.test>\nDATA\n..hidden\nx\n...two\nlast\n.\n"
        );
        let cut = bsmtp(&[], "v@x.test", &["a@h.test"], b"line\n", false);
        assert!(cut.ends_with(b"DATA\nline\n"), "{cut:?}");
    }

    #[test]
    fn a_file_is_kept_once_and_the_directory_is_bounded() {
        let base = tempfile::tempdir().unwrap();
        let mut rejects = Rejects::new(Some(base.path()), "leaf1");
        let first = rejects.keep("abc", b"one").unwrap();
        assert_eq!(first, Kept::File(base.path().join("leaf1/abc.bsmtp")));
        assert_eq!(rejects.keep("abc", b"two").unwrap(), first);
        assert_eq!(
            std::fs::read(base.path().join("leaf1/abc.bsmtp")).unwrap(),
            b"one"
        );
        rejects.files = Some(MAX_FILES);
        assert_eq!(
            rejects.keep("def", b"three").unwrap(),
            Kept::Full(base.path().join("leaf1"))
        );
        assert_eq!(
            Rejects::new(Some(Path::new("")), "leaf1")
                .keep("x", b"")
                .unwrap(),
            Kept::Off
        );
    }
}
