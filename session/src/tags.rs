//! Exactly-once delivery on the receiving side: the tag store, and the one
//! claim / commit / answer-a-retry path every receiver goes through
//! ([`TagStore::begin`], [`Once`]). SPEC invariants 3 and 6.
//!
//! The promise. A transaction retried after its acknowledgement was lost
//! is not queued twice, and nothing but a true retry is taken for one. A
//! sender tags each transaction ([`bsmtp::tag::Tag::mint`]). When the
//! receiver has committed a tagged message, it records, durably and before
//! it replies 250, a [`Record`]: the digest of the content and the queue ID
//! of each recipient the commit covered. A later transaction with the same
//! tag is answered from the record for each recipient the record covers,
//! and every other recipient (refused or deferred the first time) is
//! judged and queued as new; if its content differs from the record's, it
//! is another message under a recurring tag (Postfix reuses short queue
//! IDs once a message has left its queue, so the first can never be
//! retried again): the record is dropped and the sender told to try again
//! (451), and its next try is queued as a new message. Mail that comes
//! without a tag (offline batches, the sendmail verb) is tagged by its
//! content at the dot, for a shorter time ([`DEFAULT_CONTENT_LIFETIME`]).
//!
//! The store. One record file per tag in a directory per peer
//! (`DIR/PEER/TAG`), replaced atomically (temp file, fsync, rename, fsync
//! of the directory). A session *claims* a tag with an open-file-description
//! lock on one byte of `DIR/PEER/.claims` chosen by the tag's hash: the
//! kernel drops the lock when the session ends however it ends, so there
//! are no stale claims to guess about and no claim files, and two sessions
//! can never both hold one tag. A session that finds a tag held answers
//! "try again later": the holder may be committing right now (a slow
//! commit that outlived the sender's patience is exactly when the retry
//! comes). The store is bounded: records past their lifetime go, and
//! beyond the entry limit the oldest go (with a warning, since that
//! weakens the guarantee), in a sweep at most once an hour.
//!
//! The window left: a crash after the next hop committed and before the
//! record is renamed into place (one fsync and one rename) leaves the
//! message queued with no record; the sender never got its 250, retries,
//! and the message is queued twice. A failure to write the record is
//! logged, never turned into a refusal (that would make the sender retry,
//! and queue it twice for sure).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bsmtp::tag::{Digest, Digester, Record, Tag};
use sha2::{Digest as _, Sha256};

use crate::atomic;

/// Default place of the store.
pub const DEFAULT_DIRECTORY: &str = "/var/lib/bsmtp-ssh/tags";
/// The store under the peers' account's home when the default is not
/// there or not writable (see [`fallback_directory`]).
pub const HOME_DIRECTORY: &str = ".bsmtp-ssh/tags";
/// Default time a committed tag is kept: longer than Postfix's default
/// `maximal_queue_lifetime` (5 days), so a sender's last retry finds it.
pub const DEFAULT_LIFETIME: Duration = Duration::from_hours(7 * 24);
/// Default time a content tag is kept: long enough for a caller to send
/// again after it lost the exit status of the first try, short enough
/// that a script's identical alert an hour later is queued again.
pub const DEFAULT_CONTENT_LIFETIME: Duration = Duration::from_mins(10);
/// Default most entries per peer.
pub const DEFAULT_LIMIT: usize = 100_000;
/// How often a store is swept at most.
const SWEEP_EVERY: Duration = Duration::from_hours(1);
/// The sweep's marker file (a tag never starts with a dot).
const SWEPT: &str = ".swept";
/// The file whose bytes are the claims' locks.
const CLAIMS: &str = ".claims";

/// One peer's tags.
#[derive(Debug, Clone)]
pub struct TagStore {
    dir: PathBuf,
    lifetime: Duration,
    content_lifetime: Duration,
    limit: usize,
    /// Bytes to keep free on the store's file system.
    min_free: u64,
}

/// What a session may do with a tag.
#[derive(Debug)]
pub enum Claim {
    /// Another session holds the tag right now: try again later.
    Busy,
    /// Ours until dropped: commit a record under it, or forget it.
    Held(TagClaim),
}

/// A claimed tag, with what an earlier session recorded under it; the
/// claim is released when this is dropped.
#[derive(Debug)]
pub struct TagClaim {
    /// The open description that holds the lock.
    _lock: File,
    dir: PathBuf,
    name: String,
    expires: u64,
    earlier: Option<Record>,
}

impl TagStore {
    /// Opens (creating, mode 0700) the store of `peer` under `base`, and
    /// sweeps it if that is due.
    pub fn open(base: &Path, peer: &str, lifetime: Duration, limit: usize) -> io::Result<Self> {
        let dir = base.join(peer);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(at(&dir, &err)),
        }
        // Refuses a symlink put in the directory's place.
        drop(atomic::open_dir(&dir)?);
        let store = TagStore {
            dir,
            lifetime,
            content_lifetime: DEFAULT_CONTENT_LIFETIME.min(lifetime),
            limit,
            min_free: 0,
        };
        // Opened once now, so a store we cannot lock in fails here, not
        // on the first message.
        drop(store.claims()?);
        store.sweep_if_due();
        Ok(store)
    }

    /// Claims nothing while fewer than `bytes` are free on the store's
    /// file system (a record costs a block and an inode; a full store is
    /// better a deferral than a hub that stops keeping its promise).
    #[must_use]
    pub fn with_min_free(mut self, bytes: u64) -> Self {
        self.min_free = bytes;
        self
    }

    /// Keeps content tags ([`Tag::of_content`]) this long instead.
    #[must_use]
    pub fn with_content_lifetime(mut self, lifetime: Duration) -> Self {
        self.content_lifetime = lifetime;
        self
    }

    /// The directory of this peer's tags.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record under `tag`, if one is there and alive (a look that
    /// claims nothing).
    pub fn record(&self, tag: &Tag) -> Option<Record> {
        read_record(&self.dir.join(tag.as_str()), self.lifetime)
    }

    /// Claims `tag`: [`Claim::Busy`] while another session holds it.
    pub fn claim(&self, tag: &Tag) -> io::Result<Claim> {
        self.check_room()?;
        let lock = self.claims()?;
        let range = nix::libc::flock {
            // Both constants are small (1 and 0): the casts keep them.
            #[allow(clippy::cast_possible_truncation)]
            l_type: nix::libc::F_WRLCK as i16,
            #[allow(clippy::cast_possible_truncation)]
            l_whence: nix::libc::SEEK_SET as i16,
            l_start: lock_offset(tag),
            l_len: 1,
            l_pid: 0,
        };
        match nix::fcntl::fcntl(lock.as_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&range)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Ok(Claim::Busy),
            Err(err) => return Err(at(&self.dir.join(CLAIMS), &err.into())),
        }
        Ok(Claim::Held(TagClaim {
            _lock: lock,
            earlier: read_record(&self.dir.join(tag.as_str()), self.lifetime),
            dir: self.dir.clone(),
            name: tag.as_str().to_owned(),
            expires: unix_now().saturating_add(self.lifetime.as_secs()),
        }))
    }

    /// At MAIL of a transaction tagged `tag`: claims the tag for the
    /// transaction, with what an earlier commit recorded under it
    /// ([`Once::covered`] then says which recipients to answer from it).
    pub fn begin(&self, tag: &Tag) -> Result<Once, Held> {
        match self.claim(tag) {
            Ok(Claim::Held(claim)) => Ok(Once {
                digester: Digester::new(),
                by: By::Tag(claim),
            }),
            Ok(Claim::Busy) => Err(Held::Busy),
            Err(err) => Err(Held::Failed(err)),
        }
    }

    /// For a transaction that came without a tag, tagged by its content
    /// at the dot ([`Once::settle`]): `scope` tells apart two identical
    /// messages that are not retries of each other (a batch file's
    /// identity and the transaction's place in it: such a tag is kept the
    /// whole lifetime); with an empty scope (the sendmail verb) identical
    /// messages are one for the content lifetime only. `sender` and
    /// `recipients` are part of the content.
    pub fn by_content(&self, scope: &str, sender: &str, recipients: &[String]) -> Once {
        Once {
            digester: Digester::new(),
            by: By::Content {
                store: self.clone(),
                scope: scope.to_owned(),
                sender: sender.to_owned(),
                recipients: recipients.to_vec(),
            },
        }
    }

    fn check_room(&self) -> io::Result<()> {
        if self.min_free == 0 {
            return Ok(());
        }
        let free = crate::spool::free_space(&self.dir)?;
        if free >= self.min_free {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{}: {free} bytes free, under min_free ({}): free some space or move tag_directory",
                self.dir.display(),
                self.min_free
            ),
        ))
    }

    fn claims(&self) -> io::Result<File> {
        let path = self.dir.join(CLAIMS);
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|err| at(&path, &err))
    }

    fn sweep_if_due(&self) {
        if !sweep_due(&self.dir) {
            return;
        }
        let now = SystemTime::now();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept: Vec<(SystemTime, PathBuf)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temp files of a crashed commit start with a dot too; those
            // older than a lifetime go with the rest.
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            let ours =
                Tag::parse(&name).is_some() || (name.starts_with('.') && name.contains(".tmp-"));
            if !ours {
                continue;
            }
            // Content tags of the sendmail verb are void sooner (their
            // records say when), and go with the rest.
            if now.duration_since(modified).unwrap_or_default() > self.lifetime {
                let _ = fs::remove_file(entry.path());
            } else if !name.starts_with('.') {
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

/// Why a tag could not be claimed.
#[derive(Debug)]
pub enum Held {
    /// Another session holds it: try again later.
    Busy,
    /// The store failed.
    Failed(io::Error),
}

/// The exactly-once state of one transaction, from DATA to the reply at
/// the dot: it sees the content go by, then says whether this is a retry.
#[derive(Debug)]
pub struct Once {
    digester: Digester,
    by: By,
}

#[derive(Debug)]
enum By {
    Tag(TagClaim),
    Content {
        store: TagStore,
        scope: String,
        sender: String,
        recipients: Vec<String>,
    },
}

/// What [`Once::settle`] found at the dot.
#[derive(Debug)]
pub enum Settled {
    /// Queue what is being queued, then [`Commit::record`] it.
    Proceed(Commit),
    /// The same content was committed before: queue nothing; answer each
    /// recipient with the queue ID it went under.
    Retry(Record),
    /// Another message carried the tag of one committed before and
    /// some recipients were taken for [`Once::covered`]: queue nothing,
    /// answer 451 (the record is gone, the next try is queued as new).
    Differs,
    /// Another session holds this content's tag: queue nothing, 451.
    Busy,
    /// The store failed: queue nothing, 451.
    Failed(io::Error),
}

/// A tag held while its message is committed.
#[derive(Debug)]
pub struct Commit {
    claim: TagClaim,
    record: Record,
}

impl Once {
    /// The queue ID an earlier commit of this tag put `recipient` under:
    /// answer it from the record and queue it nothing. `None`: judge and
    /// queue it as new.
    pub fn covered(&self, recipient: &str) -> Option<&str> {
        match &self.by {
            By::Tag(claim) => claim.earlier.as_ref()?.queue_id_of(recipient),
            By::Content { .. } => None,
        }
    }

    /// Adds a piece of a content line (no line terminator).
    pub fn observe(&mut self, bytes: &[u8], end_of_line: bool) {
        self.digester.update(bytes, end_of_line);
    }

    /// At the dot, before the message is committed: retry or not.
    /// `partial` says that recipients [`Once::covered`] were left out of
    /// what is being queued.
    pub fn settle(self, partial: bool) -> Settled {
        let digest = self.digester.finish();
        match self.by {
            By::Tag(claim) => settle_tag(claim, digest, partial),
            By::Content {
                store,
                scope,
                sender,
                recipients,
            } => {
                let tag = Tag::of_content(&format!("{scope}\0{sender}"), &recipients, &digest);
                let lifetime = if scope.is_empty() {
                    store.content_lifetime
                } else {
                    store.lifetime
                };
                match store.claim(&tag) {
                    Ok(Claim::Held(claim)) => match claim.earlier {
                        Some(earlier) => Settled::Retry(earlier),
                        None => Settled::Proceed(Commit {
                            record: Record::new(
                                digest,
                                unix_now().saturating_add(lifetime.as_secs()),
                            ),
                            claim,
                        }),
                    },
                    Ok(Claim::Busy) => Settled::Busy,
                    Err(err) => Settled::Failed(err),
                }
            }
        }
    }
}

fn settle_tag(claim: TagClaim, digest: Digest, partial: bool) -> Settled {
    match &claim.earlier {
        Some(earlier) if earlier.same_content(&digest) => {
            let mut record = earlier.clone();
            record.expires = claim.expires;
            Settled::Proceed(Commit { claim, record })
        }
        Some(_) if partial => {
            log::warn!(
                "transaction tag {}: a message with other content than the one committed under this tag: an older message's tag came round again; dropping its record, deferring this one (its next try is queued as new)",
                claim.name
            );
            if let Err(err) = claim.forget() {
                return Settled::Failed(err);
            }
            Settled::Differs
        }
        _ => Settled::Proceed(Commit {
            record: Record::new(digest, claim.expires),
            claim,
        }),
    }
}

impl Commit {
    /// The record as it stands before this commit.
    pub fn so_far(&self) -> &Record {
        &self.record
    }

    /// Records that `covered` (recipient, queue ID) went to the next hop,
    /// durably: the caller replies 250 only after this returned. The
    /// message is queued whatever happens here, so the caller logs an
    /// error, never turns it into a refusal.
    pub fn record<'a>(
        mut self,
        covered: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> io::Result<()> {
        for (recipient, queue_id) in covered {
            self.record.cover(recipient, queue_id);
        }
        let dir = atomic::open_dir(&self.claim.dir)?;
        atomic::replace_at(
            &dir,
            &self.claim.dir,
            Path::new(&self.claim.name),
            self.record.encode().as_bytes(),
            atomic::Options::PRIVATE,
        )
    }
}

impl TagClaim {
    /// What an earlier session recorded under this tag.
    pub fn earlier(&self) -> Option<&Record> {
        self.earlier.as_ref()
    }

    /// Records "done, as `queue_id`" under this tag, durably (a notice
    /// sent, so a batch read again sends no second one).
    pub fn mark(self, queue_id: &str) -> io::Result<()> {
        let expires = self.expires;
        Commit {
            claim: self,
            record: Record::done(queue_id, expires),
        }
        .record([])
    }

    /// Drops the record under this tag: it is another message's.
    pub fn forget(self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(&self.name)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(at(&self.dir.join(&self.name), &err))
            }
            _ => Ok(()),
        }
    }
}

/// Whether the directory's sweep is due (at most once an hour, across
/// processes: a marker file's time says when the last began); when it is,
/// the marker is touched, so the caller sweeps and others wait an hour.
/// The tag store and the failover pins sweep this way.
pub(crate) fn sweep_due(dir: &Path) -> bool {
    let marker = dir.join(SWEPT);
    let due = fs::metadata(&marker)
        .and_then(|m| m.modified())
        .map_or(true, |at| {
            SystemTime::now().duration_since(at).unwrap_or_default() >= SWEEP_EVERY
        });
    if due {
        let _ = File::create(&marker);
    }
    due
}

/// The store for a receiver whose tag directory is not configured:
/// `default` ([`DEFAULT_DIRECTORY`]) when it exists and this account can write it, else
/// [`HOME_DIRECTORY`] under `home` (the peers' account's home, which holds
/// its `authorized_keys`), so a hub installed by hand keeps tags with no
/// step by the admin (SPEC invariant 8).
pub fn fallback_directory(default: &Path, home: Option<&Path>) -> PathBuf {
    let writable = nix::unistd::access(default, nix::unistd::AccessFlags::W_OK).is_ok();
    match home {
        Some(home) if !writable && !home.as_os_str().is_empty() && home != Path::new("/") => {
            home.join(HOME_DIRECTORY)
        }
        _ => default.to_path_buf(),
    }
}

/// Creates `base`, and the directories above it up to an existing one,
/// mode 0700: the home store's `.bsmtp-ssh/tags`.
pub fn create_base(base: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(|err| at(base, &err))
}

fn read_record(path: &Path, lifetime: Duration) -> Option<Record> {
    let mut text = String::new();
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    // A record is small; one from elsewhere that is not is no record.
    file.by_ref().take(1 << 20).read_to_string(&mut text).ok()?;
    let written = file.metadata().and_then(|m| m.modified()).ok()?;
    // An older rsmtp's record says nothing of its time: its file does.
    let legacy_expires = unix(written).saturating_add(lifetime.as_secs());
    let record = Record::parse(&text, legacy_expires)?;
    (record.expires > unix_now()).then_some(record)
}

/// The byte of the claims file that stands for `tag`: 62 bits of its
/// hash (two tags meeting on one byte only make one wait).
fn lock_offset(tag: &Tag) -> i64 {
    let hash = Sha256::digest(tag.as_str().as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash[..8]);
    i64::from_be_bytes(bytes) & 0x3fff_ffff_ffff_ffff
}

fn at(path: &Path, err: &io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn unix_now() -> u64 {
    unix(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> TagStore {
        TagStore::open(dir, "leaf1", DEFAULT_LIFETIME, 3).unwrap()
    }

    fn tag(text: &str) -> Tag {
        Tag::parse(text).unwrap()
    }

    fn rcpts(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    fn feed(once: &mut Once, body: &str) {
        for line in body.lines() {
            once.observe(line.as_bytes(), true);
        }
    }

    /// Begins `t` for `to`, feeds `body`, settles, and records what was
    /// not answered from the record under `queue_id`.
    fn deliver(store: &TagStore, t: &Tag, to: &[&str], body: &str, queue_id: &str) -> Settled {
        let mut once = store.begin(t).unwrap();
        let fresh: Vec<&str> = to
            .iter()
            .copied()
            .filter(|r| once.covered(r).is_none())
            .collect();
        feed(&mut once, body);
        let settled = once.settle(fresh.len() < to.len());
        match settled {
            Settled::Proceed(commit) => {
                commit.record(fresh.iter().map(|r| (*r, queue_id))).unwrap();
                Settled::Retry(store.record(t).unwrap())
            }
            other => other,
        }
    }

    #[test]
    fn a_retry_is_answered_from_the_record_per_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        let t = tag("Q1.ab");
        // First try: only ok@ was committed (nouser@ refused).
        let mut once = tags.begin(&t).unwrap();
        assert_eq!(once.covered("ok@h"), None);
        feed(&mut once, "hello\n");
        let Settled::Proceed(commit) = once.settle(false) else {
            panic!()
        };
        commit.record([("ok@h", "4XQ1")]).unwrap();
        // The retry: ok@ answered from the record, nouser@ judged anew.
        let once = tags.begin(&t).unwrap();
        assert_eq!(once.covered("ok@h"), Some("4XQ1"));
        assert_eq!(once.covered("nouser@h"), None);
        // Survives a restart: it is on disk.
        drop(once);
        let again = store(dir.path()).begin(&t).unwrap();
        assert_eq!(again.covered("ok@h"), Some("4XQ1"));
    }

    #[test]
    fn a_recurring_tag_with_other_content_is_not_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        let t = tag("Q2.ab");
        assert!(matches!(
            deliver(&tags, &t, &["a@h"], "first report\n", "4XA"),
            Settled::Retry(_)
        ));
        // Same tag, other content: the recipient was taken for covered,
        // so the transaction is deferred and the record dropped...
        assert!(matches!(
            deliver(&tags, &t, &["a@h"], "second report\n", "4XB"),
            Settled::Differs
        ));
        assert!(tags.record(&t).is_none());
        // ...and its next try is queued as new.
        let Settled::Retry(record) = deliver(&tags, &t, &["a@h"], "second report\n", "4XB") else {
            panic!()
        };
        assert_eq!(record.queue_id_of("a@h"), Some("4XB"));
    }

    #[test]
    fn a_second_session_waits_while_one_holds_the_tag() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        let t = tag("Q3.ab");
        let Claim::Held(held) = tags.claim(&t).unwrap() else {
            panic!()
        };
        // Another open description, as another process would have.
        assert!(matches!(store(dir.path()).claim(&t).unwrap(), Claim::Busy));
        assert!(matches!(tags.claim(&tag("Q4.ab")).unwrap(), Claim::Held(_)));
        drop(held);
        assert!(matches!(tags.claim(&t).unwrap(), Claim::Held(_)));
    }

    #[test]
    fn content_tags_are_scoped_and_unscoped_ones_short_lived() {
        let dir = tempfile::tempdir().unwrap();
        let settle = |tags: &TagStore, scope: &str| {
            let mut once = tags.by_content(scope, "a@x", &rcpts(&["b@h"]));
            feed(&mut once, "backup FAILED\n");
            once.settle(false)
        };
        let tags = store(dir.path());
        for scope in ["batch1#1", ""] {
            let Settled::Proceed(commit) = settle(&tags, scope) else {
                panic!()
            };
            commit.record([("b@h", "4XC")]).unwrap();
            let Settled::Retry(record) = settle(&tags, scope) else {
                panic!("{scope:?}: the same content again is a duplicate")
            };
            assert_eq!(record.queue_id_of("b@h"), Some("4XC"));
        }
        // Another batch's identical message is new.
        assert!(matches!(settle(&tags, "batch2#1"), Settled::Proceed(_)));
        // Past the content lifetime, an unscoped one is new; a scoped one
        // (a batch read again days later) is still a duplicate.
        let short = store(dir.path()).with_content_lifetime(Duration::ZERO);
        let mut once = short.by_content("", "c@x", &rcpts(&["b@h"]));
        feed(&mut once, "backup FAILED\n");
        let Settled::Proceed(commit) = once.settle(false) else {
            panic!()
        };
        commit.record([("b@h", "4XD")]).unwrap();
        let mut once = short.by_content("", "c@x", &rcpts(&["b@h"]));
        feed(&mut once, "backup FAILED\n");
        assert!(
            matches!(once.settle(false), Settled::Proceed(_)),
            "an unscoped content tag outlived its lifetime"
        );
        assert!(matches!(settle(&short, "batch1#1"), Settled::Retry(_)));
    }

    #[test]
    fn an_older_rsmtps_record_still_answers() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        fs::write(tags.dir().join("Q5.ab"), "queued 4XOLD\n").unwrap();
        let once = tags.begin(&tag("Q5.ab")).unwrap();
        assert_eq!(once.covered("a@h"), Some("4XOLD"));
    }

    #[test]
    fn a_record_whose_directory_sync_failed_is_kept() {
        // The claim never removes a record, whatever commit returned: the
        // record file and the claim are apart.
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        let t = tag("Q6.ab");
        deliver(&tags, &t, &["a@h"], "x\n", "4XQ");
        let Claim::Held(claim) = tags.claim(&t).unwrap() else {
            panic!()
        };
        drop(claim);
        assert!(tags.record(&t).is_some());
    }

    #[test]
    fn the_store_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path());
        for (i, name) in ["A.1", "A.2", "A.3", "A.4", "A.5"].iter().enumerate() {
            deliver(&tags, &tag(name), &["a@h"], "x\n", &format!("Q{i}"));
            let at = SystemTime::now() - Duration::from_secs(100 - i as u64);
            File::options()
                .write(true)
                .open(tags.dir().join(name))
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        // An old one, past the lifetime.
        fs::write(tags.dir().join("OLD.1"), "queued Q9\n").unwrap();
        File::options()
            .write(true)
            .open(tags.dir().join("OLD.1"))
            .unwrap()
            .set_modified(SystemTime::now() - DEFAULT_LIFETIME - Duration::from_mins(1))
            .unwrap();
        fs::remove_file(tags.dir().join(SWEPT)).unwrap();
        let swept = store(dir.path());
        let mut left: Vec<String> = fs::read_dir(swept.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        left.sort();
        assert_eq!(left, ["A.3", "A.4", "A.5"]);
    }

    #[test]
    fn the_home_store_when_the_default_is_not_there() {
        let dir = tempfile::tempdir().unwrap();
        let home = Path::new("/home/bsmtp");
        assert_eq!(fallback_directory(dir.path(), Some(home)), dir.path());
        let missing = dir.path().join("missing");
        assert_eq!(
            fallback_directory(&missing, Some(home)),
            home.join(HOME_DIRECTORY)
        );
        // No home to fall back on: the default, and its error says why.
        assert_eq!(fallback_directory(&missing, None), missing);
    }

    /// Audit: the records' disk use counts against `min_free`: under it, a
    /// tag is not claimed (the transaction is deferred), not recorded on a
    /// full disk.
    #[test]
    fn no_claim_under_min_free() {
        let dir = tempfile::tempdir().unwrap();
        let tags = store(dir.path()).with_min_free(u64::MAX);
        let err = tags.claim(&tag("Q7.ab")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
        assert!(err.to_string().contains("min_free"), "{err}");
        let tags = store(dir.path()).with_min_free(1);
        assert!(matches!(tags.claim(&tag("Q7.ab")).unwrap(), Claim::Held(_)));
    }
}
