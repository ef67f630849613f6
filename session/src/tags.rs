//! The exactly-once tag store of a receiving session (SPEC invariant 3).
//!
//! A sender tags each transaction ([`bsmtp::extensions::transaction_tag`]);
//! a retry of the same delivery carries the same tag. When the receiver has
//! committed a message, it records its tag with the queue ID, durably,
//! before it replies 250; a retry whose acknowledgement was lost then gets
//! `250` with the original queue ID and nothing is injected twice.
//!
//! One file per tag in a directory per peer (`DIR/PEER/TAG`), so concurrent
//! sessions of one peer need no lock: a session *claims* a tag by creating
//! its file with `O_EXCL` (`pending PID START`), and *commits* it by
//! replacing the file atomically with `queued QUEUEID` (fsync of the file
//! and the directory). A claim that is dropped uncommitted removes its file.
//! A second session that finds a live claim answers "try again later": the
//! first may be committing right now (a slow commit that outlived the
//! sender's patience is exactly when the retry comes). A claim whose
//! process is gone is stale and taken over.
//!
//! The store is bounded: entries older than the lifetime go, and beyond the
//! entry limit the oldest go (with a warning, since that weakens the
//! guarantee), in a sweep at most once an hour.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::atomic;

/// Default place of the store.
pub const DEFAULT_DIRECTORY: &str = "/var/lib/bsmtp-ssh/tags";
/// Default time a committed tag is kept: longer than Postfix's default
/// `maximal_queue_lifetime` (5 days), so a sender's last retry finds it.
pub const DEFAULT_LIFETIME: Duration = Duration::from_hours(7 * 24);
/// Default most entries per peer.
pub const DEFAULT_LIMIT: usize = 100_000;
/// How long a claim file may stay unreadable before it is taken over (it
/// is written right after it is created).
const CLAIM_GRACE: Duration = Duration::from_mins(1);
/// How often a store is swept at most.
const SWEEP_EVERY: Duration = Duration::from_hours(1);
/// The sweep's marker file (a tag never starts with a dot).
const SWEPT: &str = ".swept";

/// One peer's tags.
#[derive(Debug)]
pub struct TagStore {
    dir: PathBuf,
    lifetime: Duration,
    limit: usize,
}

/// What a session may do with a tagged transaction.
#[derive(Debug)]
pub enum Claim {
    /// Already committed under this queue ID: inject nothing, say 250.
    Duplicate(String),
    /// Another session holds the tag right now: try again later.
    Busy,
    /// Ours to inject; commit it once the next hop committed the message.
    New(TagClaim),
}

/// A claimed tag; dropped without [`TagClaim::commit`], it is released.
#[derive(Debug)]
pub struct TagClaim {
    dir: PathBuf,
    name: String,
    committed: bool,
}

impl TagStore {
    /// Opens (creating, mode 0700) the store of `peer` under `base`, and
    /// sweeps it if that is due.
    pub fn open(base: &Path, peer: &str, lifetime: Duration, limit: usize) -> io::Result<Self> {
        let dir = base.join(peer);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("{}: {err}", dir.display()),
                ))
            }
        }
        // Refuses a symlink put in the directory's place.
        drop(atomic::open_dir(&dir)?);
        let store = TagStore {
            dir,
            lifetime,
            limit,
        };
        store.sweep_if_due();
        Ok(store)
    }

    /// Claims `tag` (a valid one: see [`bsmtp::extensions::valid_tag`]).
    pub fn claim(&self, tag: &str) -> io::Result<Claim> {
        let path = self.dir.join(tag);
        // Twice at most: once more after taking over a stale claim.
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(mut file) => {
                    // Not synced: a claim that a crash loses was never
                    // committed, so there is nothing to remember.
                    let me = std::process::id();
                    if let Err(err) = writeln!(file, "pending {me} {}", start_time(me).unwrap_or(0))
                    {
                        // Not left behind as a claim nobody holds.
                        let _ = fs::remove_file(&path);
                        return Err(at(&path, &err));
                    }
                    return Ok(Claim::New(TagClaim {
                        dir: self.dir.clone(),
                        name: tag.to_owned(),
                        committed: false,
                    }));
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(at(&path, &err)),
            }
            let mut text = String::new();
            match File::open(&path).and_then(|mut f| f.read_to_string(&mut text)) {
                Ok(_) => {}
                // Released or taken over meanwhile: try again.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(at(&path, &err)),
            }
            let mut words = text.split_ascii_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("queued"), Some(queue_id), _) => {
                    return Ok(Claim::Duplicate(queue_id.to_owned()))
                }
                (Some("pending"), Some(pid), Some(start)) if !alive(pid, start) => {
                    // Its session died before it committed: take over.
                    log::warn!(
                        "transaction tag {tag}: taking over the stale claim of process {pid}"
                    );
                    let _ = fs::remove_file(&path);
                }
                (Some("pending"), Some(_), Some(_)) => return Ok(Claim::Busy),
                // Being written right now, or left unreadable (a full disk
                // at the wrong moment): wait a little, then take it over.
                _ if !older_than(&path, CLAIM_GRACE) => return Ok(Claim::Busy),
                _ => {
                    log::warn!("transaction tag {tag}: taking over an unreadable claim");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(Claim::Busy)
    }

    /// The queue ID `tag` was committed under, if it was (a look that
    /// claims nothing: [`TagStore::claim`] still decides). Lets a receiver
    /// skip work for a retry it will answer from the store.
    pub fn committed(&self, tag: &str) -> Option<String> {
        let text = fs::read_to_string(self.dir.join(tag)).ok()?;
        let mut words = text.split_ascii_whitespace();
        match (words.next(), words.next()) {
            (Some("queued"), Some(queue_id)) => Some(queue_id.to_owned()),
            _ => None,
        }
    }

    /// The directory of this peer's tags.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sweep_if_due(&self) {
        let marker = self.dir.join(SWEPT);
        let now = SystemTime::now();
        let due = fs::metadata(&marker)
            .and_then(|m| m.modified())
            .map_or(true, |at| {
                now.duration_since(at).unwrap_or_default() >= SWEEP_EVERY
            });
        if !due {
            return;
        }
        let _ = File::create(&marker);
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept: Vec<(SystemTime, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if now.duration_since(modified).unwrap_or_default() > self.lifetime {
                let _ = fs::remove_file(entry.path());
            } else {
                kept.push((modified, entry.path()));
            }
        }
        if kept.len() > self.limit {
            kept.sort();
            let extra = kept.len() - self.limit;
            log::warn!(
                "transaction tags in {}: {} entries, over the limit of {}; removing the {extra} oldest (their retries could be queued twice); raise tag_limit",
                self.dir.display(),
                kept.len(),
                self.limit
            );
            for (_, path) in kept.into_iter().take(extra) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

impl TagClaim {
    /// Records that the message is committed as `queue_id`, durably: the
    /// caller replies 250 only after this returned.
    pub fn commit(mut self, queue_id: &str) -> io::Result<()> {
        let dir = atomic::open_dir(&self.dir)?;
        atomic::replace_at(
            &dir,
            &self.dir,
            Path::new(&self.name),
            format!("queued {queue_id}\n").as_bytes(),
            atomic::Options::PRIVATE,
        )?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TagClaim {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(self.dir.join(&self.name));
        }
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|at| SystemTime::now().duration_since(at).unwrap_or_default() > age)
}

fn at(path: &Path, err: &io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22): with the PID, it names one process for good.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.split(' ').nth(19)?.parse().ok()
}

/// Whether the claim's process still runs (the same process: a reused PID
/// has another start time).
fn alive(pid: &str, start: &str) -> bool {
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    start_time(pid).is_some_and(|now| start == 0 || now == start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> TagStore {
        TagStore::open(dir, "leaf1", DEFAULT_LIFETIME, 3).unwrap()
    }

    #[test]
    fn claim_commit_then_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        let Claim::New(claim) = tags.claim("Q1.ab").unwrap() else {
            panic!("a new tag must be claimable");
        };
        assert!(matches!(tags.claim("Q1.ab").unwrap(), Claim::Busy));
        claim.commit("4XQID").unwrap();
        match tags.claim("Q1.ab").unwrap() {
            Claim::Duplicate(id) => assert_eq!(id, "4XQID"),
            other => panic!("{other:?}"),
        }
        // Survives a new session (a restart): it is on disk.
        match store(dir.path()).claim("Q1.ab").unwrap() {
            Claim::Duplicate(id) => assert_eq!(id, "4XQID"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dropped_claim_is_released_and_a_dead_ones_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        let Claim::New(claim) = tags.claim("Q2.ab").unwrap() else {
            panic!()
        };
        drop(claim);
        assert!(matches!(tags.claim("Q2.ab").unwrap(), Claim::New(_)));
        // A claim left by a process that no longer runs.
        std::fs::write(tags.dir().join("Q3.ab"), "pending 999999999 5\n").unwrap();
        assert!(matches!(tags.claim("Q3.ab").unwrap(), Claim::New(_)));
        // An unreadable one: busy while it may be being written, taken over
        // after the grace time.
        let empty = tags.dir().join("Q4.ab");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(tags.claim("Q4.ab").unwrap(), Claim::Busy));
        File::options()
            .write(true)
            .open(&empty)
            .unwrap()
            .set_modified(SystemTime::now() - CLAIM_GRACE * 2)
            .unwrap();
        assert!(matches!(tags.claim("Q4.ab").unwrap(), Claim::New(_)));
    }

    #[test]
    fn the_store_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        for (i, tag) in ["A.1", "A.2", "A.3", "A.4", "A.5"].iter().enumerate() {
            let Claim::New(claim) = tags.claim(tag).unwrap() else {
                panic!()
            };
            claim.commit(&format!("Q{i}")).unwrap();
            let at = SystemTime::now() - Duration::from_secs(100 - i as u64);
            File::options()
                .write(true)
                .open(tags.dir().join(tag))
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        // An old one, past the lifetime.
        std::fs::write(tags.dir().join("OLD.1"), "queued Q9\n").unwrap();
        File::options()
            .write(true)
            .open(tags.dir().join("OLD.1"))
            .unwrap()
            .set_modified(SystemTime::now() - DEFAULT_LIFETIME - Duration::from_mins(1))
            .unwrap();
        std::fs::remove_file(tags.dir().join(SWEPT)).unwrap();
        let swept = store(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(swept.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        left.sort();
        assert_eq!(left, ["A.3", "A.4", "A.5"]);
    }
}
