//! The store-and-forward spool: messages waiting for a peer that is not
//! reachable now (the leaf's `bsmtp-ssh enqueue`), or that fetches its own
//! mail (the hub's spool for a pulling leaf).
//!
//! One directory per peer under `spool_directory`. Each message is two
//! files:
//! - `ID.bsmtp`: the transaction as plain RFC 2442 Batch SMTP (`MAIL FROM`,
//!   `RCPT TO`..., `DATA`, the dot-stuffed body, `.`; CRLF; no parameters),
//!   which `exim -bS` and `rsmtp` both read;
//! - `ID.meta`: what BSMTP cannot say, as `name=value` lines: the leaf's
//!   queue ID, arrival time, DSN requests, 8BITMIME and SMTPUTF8, and the
//!   delivery state (recipients done, attempts, last error).
//!
//! A message exists once its `.bsmtp` file does: it is written under
//! `tmp/`, fsynced, its `.meta` put in place, then renamed into the peer's
//! directory, whose entry is fsynced before anyone is told. A `.meta`
//! without its `.bsmtp` is left over from a crash before the rename, and is
//! removed. IDs sort in arrival order.
//!
//! A message whose file the decoder cannot read (a `.bsmtp` put there by
//! another program, a file damaged on disk) would never be sent, expired
//! or bounced. [`Spool::quarantine`] moves it aside, into the peer's
//! `quarantine/` directory, with a `.why` file saying what was wrong and
//! when; `flush` and `queue` name every quarantined message and exit
//! non-zero while any is there, until an admin repairs it (and moves it
//! back) or removes it. Nothing we spool ourselves gets there: every
//! address is checked before it is written ([`SpoolError::BadAddress`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bsmtp::codec::{encode_command, BodyEncoder, Command, Decoder, Event};
use bsmtp::dsn::{parse_notify, MailDsn, RcptDsn, Ret};
use bsmtp::text::one_line;
use nix::fcntl::{Flock, FlockArg};

/// Where spools live unless `spool_directory` says otherwise.
pub const DEFAULT_DIRECTORY: &str = "/var/spool/bsmtp-ssh";
/// Free space kept on the spool's file system unless `min_free` says
/// otherwise: 64 MiB.
pub const DEFAULT_MIN_FREE: u64 = 64 * 1024 * 1024;

const BSMTP: &str = "bsmtp";
const META: &str = "meta";
const WHY: &str = "why";
/// The directory, in a peer's, of messages that cannot be read.
pub const QUARANTINE: &str = "quarantine";

/// One peer's spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    peer: String,
}

/// What a new message brings besides its content.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    /// Envelope sender, SMTP form; empty for the null sender.
    pub sender: String,
    /// Envelope recipients, SMTP form.
    pub recipients: Vec<String>,
    /// The sender's queue ID (Postfix's `${queue_id}`), if known.
    pub queue_id: Option<String>,
    /// The message's DSN request.
    pub dsn: MailDsn,
    /// Each recipient's DSN request (may be shorter than `recipients`).
    pub recipient_dsn: Vec<RcptDsn>,
}

/// What the `.meta` file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The sender's queue ID.
    pub queue_id: Option<String>,
    /// When the message was spooled (seconds since the epoch).
    pub arrival: u64,
    /// Content size in bytes (as delivered, before dot-stuffing).
    pub size: u64,
    /// The content has 8-bit bytes (sent with `BODY=8BITMIME`).
    pub eight_bit: bool,
    /// An address is not ASCII (sent with `SMTPUTF8`).
    pub smtputf8: bool,
    /// `RET`, `ENVID`.
    pub dsn: MailDsn,
    /// `NOTIFY`, `ORCPT` by recipient index.
    pub recipient_dsn: Vec<RcptDsn>,
    /// Recipients (by index) that need nothing more: delivered, or bounced.
    pub done: BTreeSet<usize>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the last attempt ended (seconds since the epoch).
    pub last_attempt: Option<u64>,
    /// Why the last attempt did not finish the message.
    pub last_error: Option<String>,
}

/// One spooled message: its envelope, from the `.bsmtp` file, and its
/// `.meta`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its ID in the spool.
    pub id: String,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// All envelope recipients, in the file's order.
    pub recipients: Vec<String>,
    /// The metadata.
    pub meta: Meta,
}

impl Entry {
    /// Indexes of the recipients still to be delivered.
    pub fn pending(&self) -> Vec<usize> {
        (0..self.recipients.len())
            .filter(|i| !self.meta.done.contains(i))
            .collect()
    }

    /// How long it has been spooled.
    pub fn age(&self, now: SystemTime) -> Duration {
        Duration::from_secs(unix(now).saturating_sub(self.meta.arrival))
    }

    /// The ID that names the message in logs: the sender's queue ID, else
    /// the spool ID.
    pub fn log_id(&self) -> &str {
        self.meta.queue_id.as_deref().unwrap_or(&self.id)
    }
}

/// A message moved aside because it cannot be read: see
/// [`Spool::quarantine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Its ID, in the spool and in `quarantine/`.
    pub id: String,
    /// What the decoder said.
    pub reason: String,
    /// When it was quarantined (seconds since the epoch).
    pub since: u64,
    /// Its `.bsmtp` file, where it now is.
    pub path: PathBuf,
}

/// Why a message could not be spooled. Each means "try again later",
/// except [`SpoolError::BadAddress`].
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An address that the spool's reader would refuse (not qualified,
    /// malformed): nothing was written. The caller must refuse it.
    #[error("<{0}>: not a valid address (user@domain): not spooled")]
    BadAddress(String),
    /// The file system is below its floor.
    #[error("{dir}: only {free} bytes free, below min_free {floor} (plus the message): not spooled; free space or lower min_free")]
    NoRoom {
        /// The spool directory.
        dir: String,
        /// Bytes available.
        free: u64,
        /// The floor.
        floor: u64,
    },
    /// Reading the message or writing the spool failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// An exclusive hold on a peer's spool: one sender at a time.
pub struct Lock {
    _lock: Flock<File>,
}

impl Spool {
    /// The spool of `peer` under `base`.
    pub fn new(base: &Path, peer: &str) -> Spool {
        Spool {
            dir: base.join(peer),
            peer: peer.to_owned(),
        }
    }

    /// The peer's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The peer's name.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Creates the peer's directory and its `tmp/` (mode 0700) if missing;
    /// the parent must exist.
    pub fn create(&self) -> io::Result<()> {
        let mut builder = fs::DirBuilder::new();
        builder.mode(0o700);
        for dir in [self.dir.clone(), self.dir.join("tmp")] {
            match builder.create(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(with_path(&dir, &err)),
            }
        }
        Ok(())
    }

    /// Takes the peer's lock, or `None` when another process holds it.
    pub fn lock(&self) -> io::Result<Option<Lock>> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| with_path(&path, &e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(Lock { _lock: lock })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, err)) => Err(with_path(&path, &err.into())),
        }
    }

    /// Bytes available to us on the spool's file system.
    pub fn free_space(&self) -> io::Result<u64> {
        free_space(&self.dir)
    }

    /// Spools one message whose raw content (LF or CRLF lines, as pipe(8)
    /// gives it) comes from `content`. Returns its ID once it is durable.
    /// Refuses when fewer than `min_free` bytes (plus `size_hint`) would be
    /// left.
    pub fn enqueue(
        &self,
        message: &NewMessage,
        content: &mut impl Read,
        min_free: u64,
        size_hint: u64,
    ) -> Result<String, SpoolError> {
        let addresses = std::iter::once(&message.sender)
            .filter(|sender| !sender.is_empty())
            .chain(&message.recipients);
        for address in addresses {
            if !bsmtp::address::is_wire_form(address) {
                return Err(SpoolError::BadAddress(bsmtp::text::printable(
                    address.as_bytes(),
                )));
            }
        }
        if message.recipients.is_empty() {
            return Err(SpoolError::BadAddress(String::new()));
        }
        self.create()?;
        let free = self.free_space()?;
        if free < min_free.saturating_add(size_hint) {
            return Err(SpoolError::NoRoom {
                dir: self.dir.display().to_string(),
                free,
                floor: min_free,
            });
        }
        let id = new_id();
        let temp = self.dir.join("tmp").join(format!("{id}.{BSMTP}"));
        let written = write_bsmtp(&temp, message, content);
        let (size, eight_bit) = match written {
            Ok(found) => found,
            Err(err) => {
                let _ = fs::remove_file(&temp);
                return Err(err.into());
            }
        };
        let smtputf8 =
            !message.sender.is_ascii() || message.recipients.iter().any(|r| !r.is_ascii());
        let meta = Meta {
            queue_id: message.queue_id.clone(),
            arrival: unix(SystemTime::now()),
            size,
            eight_bit,
            smtputf8,
            dsn: message.dsn.clone(),
            recipient_dsn: message.recipient_dsn.clone(),
            ..Meta::default()
        };
        let placed = self
            .save_meta(&id, &meta)
            .and_then(|()| rename_durably(&temp, &self.path(&id, BSMTP), &self.dir));
        if let Err(err) = placed {
            let _ = fs::remove_file(&temp);
            let _ = fs::remove_file(self.path(&id, META));
            return Err(err.into());
        }
        Ok(id)
    }

    /// The IDs of the spooled messages, oldest first; leftover `.meta`
    /// files of messages never completed are removed on the way.
    pub fn ids(&self) -> io::Result<Vec<String>> {
        let listing = match fs::read_dir(&self.dir) {
            Ok(listing) => listing,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(with_path(&self.dir, &err)),
        };
        let mut messages = Vec::new();
        let mut metas = Vec::new();
        for item in listing {
            let name = item.map_err(|e| with_path(&self.dir, &e))?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".bsmtp").filter(|id| valid_id(id)) {
                messages.push(id.to_owned());
            } else if let Some(id) = name.strip_suffix(".meta").filter(|id| valid_id(id)) {
                metas.push(id.to_owned());
            }
        }
        messages.sort();
        for orphan in metas
            .iter()
            .filter(|id| messages.binary_search(id).is_err())
        {
            // Written just before the rename of its message: give a spooler
            // in progress its time.
            let path = self.path(orphan, META);
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_hours(1));
            if old {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(messages)
    }

    /// Reads a message's envelope and metadata. A `.bsmtp` file without a
    /// `.meta` (put there by hand, or by another program) gets defaults
    /// from the file itself. A file the decoder refuses gives an error of
    /// kind [`io::ErrorKind::InvalidData`] (see [`is_unreadable`]).
    pub fn load(&self, id: &str) -> io::Result<Entry> {
        let path = self.path(id, BSMTP);
        let file = File::open(&path).map_err(|e| with_path(&path, &e))?;
        let (sender, recipients) = read_envelope(file).map_err(|e| with_path(&path, &e))?;
        let meta = match fs::read_to_string(self.path(id, META)) {
            Ok(text) => Meta::parse(&text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let file = fs::metadata(&path).map_err(|e| with_path(&path, &e))?;
                Meta {
                    arrival: file.modified().map(unix).unwrap_or_default(),
                    size: file.len(),
                    ..Meta::default()
                }
            }
            Err(err) => return Err(with_path(&self.path(id, META), &err)),
        };
        Ok(Entry {
            id: id.to_owned(),
            sender,
            recipients,
            meta,
        })
    }

    /// Feeds the message's content to `piece` as the decoder gives it:
    /// dot-unstuffed line pieces without terminators.
    pub fn for_each_piece(
        &self,
        id: &str,
        mut piece: impl FnMut(&[u8], bool) -> Result<(), String>,
    ) -> Result<(), String> {
        let path = self.path(id, BSMTP);
        let file = File::open(&path).map_err(|e| with_path(&path, &e).to_string())?;
        let shown = path.display();
        let mut in_data = false;
        decode_file(file, |event| match event {
            Event::Command(Command::Data) => {
                in_data = true;
                Ok(true)
            }
            Event::BodyPiece { bytes, end_of_line } if in_data => {
                piece(bytes, end_of_line)?;
                Ok(true)
            }
            Event::DataEnd => Ok(false),
            _ => Ok(true),
        })
        .map_err(|err| format!("{shown}: {err}"))
    }

    /// Up to `limit` bytes of the message's content, LF lines (for a
    /// bounce), and whether that is all of it.
    pub fn content(&self, id: &str, limit: usize) -> Result<(Vec<u8>, bool), String> {
        let mut out = Vec::new();
        let mut whole = true;
        self.for_each_piece(id, |bytes, end_of_line| {
            if out.len() >= limit {
                whole = false;
                return Ok(());
            }
            out.extend_from_slice(bytes);
            if end_of_line {
                out.push(b'\n');
            }
            Ok(())
        })?;
        Ok((out, whole))
    }

    /// Replaces a message's `.meta`, atomically and durably.
    pub fn save_meta(&self, id: &str, meta: &Meta) -> io::Result<()> {
        crate::atomic::replace(
            &self.path(id, META),
            meta.render().as_bytes(),
            crate::atomic::Options::PRIVATE,
        )
    }

    /// Removes a message: the `.bsmtp` first (from then on it does not
    /// exist), then its `.meta`.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        let path = self.path(id, BSMTP);
        fs::remove_file(&path).map_err(|e| with_path(&path, &e))?;
        let _ = fs::remove_file(self.path(id, META));
        if let Ok(dir) = File::open(&self.dir) {
            let _ = nix::unistd::fsync(dir.as_fd());
        }
        Ok(())
    }

    fn path(&self, id: &str, kind: &str) -> PathBuf {
        self.dir.join(format!("{id}.{kind}"))
    }

    /// Reads the whole message as the sender will: `Ok` when the envelope
    /// and the body decode to the final dot; an error of kind
    /// [`io::ErrorKind::InvalidData`] when the decoder refuses it.
    pub fn verify(&self, id: &str) -> io::Result<()> {
        self.load(id)?;
        let path = self.path(id, BSMTP);
        let file = File::open(&path).map_err(|e| with_path(&path, &e))?;
        let mut ended = false;
        decode_file(file, |event| match event {
            Event::DataEnd => {
                ended = true;
                Ok(false)
            }
            Event::Invalid(err) => Err(format!("not a BSMTP spool file: {err}")),
            _ => Ok(true),
        })
        .map_err(|err| with_path(&path, &io::Error::new(io::ErrorKind::InvalidData, err)))?;
        if ended {
            Ok(())
        } else {
            Err(with_path(
                &path,
                &io::Error::new(io::ErrorKind::InvalidData, "no DATA, or no final dot"),
            ))
        }
    }

    /// The directory of messages that cannot be read.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir.join(QUARANTINE)
    }

    /// Moves a message that cannot be read into `quarantine/`, with a
    /// `.why` file giving `reason` and the time: first the `.why`, then the
    /// `.meta`, then the `.bsmtp` (from then on it is no longer in the
    /// spool), each a rename within the peer's directory, made durable.
    pub fn quarantine(&self, id: &str, reason: &str) -> io::Result<PathBuf> {
        let dir = self.quarantine_dir();
        let mut builder = fs::DirBuilder::new();
        builder.mode(0o700);
        match builder.create(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(with_path(&dir, &err)),
        }
        let why = format!(
            "# bsmtp-ssh: this message could not be read; repair it and move it back, or remove it\nreason={}\nsince={}\n",
            one_line(reason),
            unix(SystemTime::now())
        );
        crate::atomic::replace(
            &dir.join(format!("{id}.{WHY}")),
            why.as_bytes(),
            crate::atomic::Options::PRIVATE,
        )?;
        let meta = self.path(id, META);
        match fs::rename(&meta, dir.join(format!("{id}.{META}"))) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(with_path(&meta, &err)),
        }
        let target = dir.join(format!("{id}.{BSMTP}"));
        rename_durably(&self.path(id, BSMTP), &target, &dir)?;
        let dir_file = File::open(&self.dir).map_err(|e| with_path(&self.dir, &e))?;
        nix::unistd::fsync(dir_file.as_fd()).map_err(|e| with_path(&self.dir, &e.into()))?;
        Ok(target)
    }

    /// The quarantined messages, oldest ID first.
    pub fn quarantined(&self) -> io::Result<Vec<Quarantined>> {
        let dir = self.quarantine_dir();
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(with_path(&dir, &err)),
        };
        let mut found = Vec::new();
        for item in listing {
            let name = item.map_err(|e| with_path(&dir, &e))?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".bsmtp")) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let why = fs::read_to_string(dir.join(format!("{id}.{WHY}"))).unwrap_or_default();
            let field = |name: &str| {
                why.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                    .map(str::to_owned)
            };
            found.push(Quarantined {
                id: id.to_owned(),
                reason: field("reason").unwrap_or_else(|| "unknown (no .why file)".into()),
                since: field("since")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_default(),
                path: dir.join(format!("{id}.{BSMTP}")),
            });
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }
}

/// True when `err` (from [`Spool::load`] or [`Spool::verify`]) says the
/// file cannot be decoded, as opposed to an I/O error that may pass (a
/// file removed meanwhile, no permission, no file descriptors left).
pub fn is_unreadable(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::InvalidData
}

/// Bytes available to an unprivileged user on the file system of `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|e| with_path(path, &e.into()))?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// A new, sortable ID: seconds and nanoseconds since the epoch, and our
/// process ID (two processes cannot share a nanosecond and a PID).
fn new_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:010}.{:09}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

/// IDs we made, or a name as plain as them: no path tricks from a file
/// name in the directory.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn with_path(path: &Path, err: &io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// Writes the transaction to `path` and fsyncs it; returns the content's
/// size and whether it has 8-bit bytes.
fn write_bsmtp(
    path: &Path,
    message: &NewMessage,
    content: &mut impl Read,
) -> io::Result<(u64, bool)> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| with_path(path, &e))?;
    let mut out = io::BufWriter::with_capacity(64 * 1024, file);
    let mut head = Vec::new();
    encode_command(
        &Command::Mail {
            from: message.sender.clone(),
            params: Vec::new(),
        },
        &mut head,
    );
    for to in &message.recipients {
        encode_command(
            &Command::Rcpt {
                to: to.clone(),
                params: Vec::new(),
            },
            &mut head,
        );
    }
    encode_command(&Command::Data, &mut head);
    out.write_all(&head)?;
    let mut encoder = BodyEncoder::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut stuffed = Vec::with_capacity(chunk.len() + chunk.len() / 8);
    let (mut size, mut eight_bit) = (0u64, false);
    loop {
        let n = match content.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading the message: {e}"),
                ))
            }
        };
        size += n as u64;
        eight_bit |= !chunk[..n].is_ascii();
        stuffed.clear();
        encoder.encode(&chunk[..n], &mut stuffed);
        out.write_all(&stuffed)?;
    }
    stuffed.clear();
    encoder.finish(&mut stuffed);
    out.write_all(&stuffed)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    Ok((size, eight_bit))
}

/// Renames `from` to `to` and makes the new entry in `dir` durable.
fn rename_durably(from: &Path, to: &Path, dir: &Path) -> io::Result<()> {
    fs::rename(from, to).map_err(|e| with_path(to, &e))?;
    let dir_file = File::open(dir).map_err(|e| with_path(dir, &e))?;
    nix::unistd::fsync(dir_file.as_fd()).map_err(|e| with_path(dir, &e.into()))
}

/// Decodes a BSMTP file, giving each event to `each` until it returns
/// `Ok(false)` or the file ends.
fn decode_file(
    file: File,
    mut each: impl FnMut(Event<'_>) -> Result<bool, String>,
) -> Result<(), String> {
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut decoder = Decoder::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| e.to_string())?;
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        loop {
            let found = if n == 0 {
                decoder
                    .decode_eof(&buf[used..])
                    .map_err(|_| "ends inside DATA".to_owned())?
            } else {
                decoder.decode(&buf[used..])
            };
            let Some((consumed, event)) = found else {
                break;
            };
            used += consumed;
            if !each(event)? {
                return Ok(());
            }
        }
        buf.drain(..used);
        if n == 0 {
            return Ok(());
        }
    }
}

/// The sender and recipients of a BSMTP file's first transaction.
fn read_envelope(file: File) -> io::Result<(String, Vec<String>)> {
    let mut sender = None;
    let mut recipients = Vec::new();
    decode_file(file, |event| match event {
        Event::Command(Command::Mail { from, .. }) => {
            sender = Some(from);
            Ok(true)
        }
        Event::Command(Command::Rcpt { to, .. }) => {
            recipients.push(to);
            Ok(true)
        }
        Event::Command(Command::Data) => Ok(false),
        Event::Invalid(err) => Err(format!("not a BSMTP spool file: {err}")),
        _ => Ok(true),
    })
    .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    match sender {
        Some(sender) if !recipients.is_empty() => Ok((sender, recipients)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a BSMTP spool file: no MAIL FROM and RCPT TO before DATA",
        )),
    }
}

impl Meta {
    /// The `.meta` text: `name=value` lines, values on one line.
    pub fn render(&self) -> String {
        let mut out = String::from("# bsmtp-ssh spool metadata; the message is the .bsmtp file\n");
        let mut line = |name: &str, value: &str| {
            let _ = writeln!(out, "{name}={}", one_line(value));
        };
        if let Some(id) = &self.queue_id {
            line("queue_id", id);
        }
        line("arrival", &self.arrival.to_string());
        line("size", &self.size.to_string());
        if self.eight_bit {
            line("body", "8BITMIME");
        }
        if self.smtputf8 {
            line("smtputf8", "yes");
        }
        if let Some(ret) = self.dsn.ret {
            line("ret", ret.keyword());
        }
        if let Some(envid) = &self.dsn.envid {
            line("envid", envid);
        }
        for (i, dsn) in self.recipient_dsn.iter().enumerate() {
            if let Some(notify) = &dsn.notify {
                line(&format!("notify.{i}"), notify);
            }
            if let Some((kind, address)) = &dsn.orcpt {
                line(&format!("orcpt.{i}"), &format!("{kind};{address}"));
            }
        }
        for i in &self.done {
            line(&format!("done.{i}"), "yes");
        }
        line("attempts", &self.attempts.to_string());
        if let Some(at) = self.last_attempt {
            line("last_attempt", &at.to_string());
        }
        if let Some(error) = &self.last_error {
            line("last_error", error);
        }
        out
    }

    /// Reads `.meta` text; unknown or malformed lines are skipped (a newer
    /// version's fields, a hand edit).
    pub fn parse(text: &str) -> Meta {
        let mut meta = Meta::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let (field, index) = match name.split_once('.') {
                Some((field, index)) => (field, index.parse::<usize>().ok()),
                None => (name, None),
            };
            match (field, index) {
                ("queue_id", None) => meta.queue_id = Some(value.to_owned()),
                ("arrival", None) => meta.arrival = value.parse().unwrap_or_default(),
                ("size", None) => meta.size = value.parse().unwrap_or_default(),
                ("body", None) => meta.eight_bit = value.eq_ignore_ascii_case("8BITMIME"),
                ("smtputf8", None) => meta.smtputf8 = value == "yes",
                ("ret", None) => meta.dsn.ret = Ret::parse(value),
                ("envid", None) => meta.dsn.envid = Some(value.to_owned()),
                ("notify", Some(i)) if i < MAX_RECIPIENT_INDEX => {
                    meta.recipient_dsn_mut(i).notify = parse_notify(value);
                }
                ("orcpt", Some(i)) if i < MAX_RECIPIENT_INDEX => {
                    if let Some((kind, address)) = value.split_once(';') {
                        meta.recipient_dsn_mut(i).orcpt =
                            Some((kind.to_owned(), address.to_owned()));
                    }
                }
                ("done", Some(i)) => {
                    meta.done.insert(i);
                }
                ("attempts", None) => meta.attempts = value.parse().unwrap_or_default(),
                ("last_attempt", None) => meta.last_attempt = value.parse().ok(),
                ("last_error", None) => meta.last_error = Some(value.to_owned()),
                _ => {}
            }
        }
        meta
    }

    fn recipient_dsn_mut(&mut self, i: usize) -> &mut RcptDsn {
        if self.recipient_dsn.len() <= i {
            self.recipient_dsn.resize(i + 1, RcptDsn::default());
        }
        &mut self.recipient_dsn[i]
    }
}

/// Bounds a hostile or corrupt `.meta` (recipient DSN entries are kept in
/// a vector by index).
const MAX_RECIPIENT_INDEX: usize = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> NewMessage {
        NewMessage {
            sender: "alice@leaf.test".into(),
            recipients: vec!["bob@hub.test".into(), "carol@hub.test".into()],
            queue_id: Some("ABC123".into()),
            dsn: MailDsn {
                ret: Some(Ret::Hdrs),
                envid: Some("env 1".into()),
            },
            recipient_dsn: vec![RcptDsn {
                notify: Some("SUCCESS,FAILURE".into()),
                orcpt: Some(("rfc822".into(), "Bob@hub.test".into())),
            }],
        }
    }

    #[test]
    fn a_spooled_message_is_plain_bsmtp_and_reads_back() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        let content = b"Subject: x\n\n.dot\nm\xc3\xbcde\nno newline";
        let id = spool.enqueue(&message(), &mut &content[..], 0, 0).unwrap();
        let bsmtp = fs::read(spool.dir().join(format!("{id}.bsmtp"))).unwrap();
        assert_eq!(
            bsmtp,
            b"MAIL FROM:<alice@leaf.test>\r\nRCPT TO:<bob@hub.test>\r\nRCPT TO:<carol@hub.test>\r\n\
              DATA\r\nSubject: x\r\n\r\n..dot\r\nm\xc3\xbcde\r\nno newline\r\n.\r\n"
        );
        assert_eq!(spool.ids().unwrap(), std::slice::from_ref(&id));
        let entry = spool.load(&id).unwrap();
        assert_eq!(entry.sender, "alice@leaf.test");
        assert_eq!(entry.recipients, ["bob@hub.test", "carol@hub.test"]);
        assert_eq!(entry.meta.size, content.len() as u64);
        assert!(entry.meta.eight_bit && !entry.meta.smtputf8);
        assert_eq!(entry.meta.dsn, message().dsn);
        assert_eq!(entry.meta.recipient_dsn, message().recipient_dsn);
        assert_eq!(entry.log_id(), "ABC123");
        let (text, whole) = spool.content(&id, 1000).unwrap();
        assert_eq!(text, b"Subject: x\n\n.dot\nm\xc3\xbcde\nno newline\n");
        assert!(whole);
        assert!(!spool.content(&id, 3).unwrap().1);
    }

    #[test]
    fn meta_round_trips_and_shrugs_off_garbage() {
        let mut meta = Meta {
            queue_id: Some("Q".into()),
            arrival: 5,
            size: 9,
            eight_bit: true,
            smtputf8: true,
            dsn: MailDsn {
                ret: Some(Ret::Full),
                envid: Some("e".into()),
            },
            recipient_dsn: vec![
                RcptDsn::default(),
                RcptDsn {
                    notify: Some("NEVER".into()),
                    orcpt: None,
                },
            ],
            attempts: 2,
            last_attempt: Some(7),
            last_error: Some("4.4.1 no route\nX-Injected: yes".into()),
            ..Meta::default()
        };
        meta.done.insert(0);
        let text = meta.render();
        assert!(!text.contains("\nX-Injected"), "{text}");
        let back = Meta::parse(&text);
        assert_eq!(
            back.last_error.as_deref(),
            Some("4.4.1 no route X-Injected: yes")
        );
        meta.last_error = back.last_error.clone();
        assert_eq!(back, meta);
        let odd = Meta::parse("what\nnotify.99999999999=NEVER\nfuture=1\nsize=x\n");
        assert_eq!(odd, Meta::default());
    }

    #[test]
    fn below_the_floor_nothing_is_spooled() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        let err = spool
            .enqueue(&message(), &mut &b"x\n"[..], u64::MAX / 2, 0)
            .unwrap_err();
        assert!(matches!(err, SpoolError::NoRoom { .. }), "{err}");
        assert!(spool.ids().unwrap().is_empty());
        assert_eq!(fs::read_dir(spool.dir().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn removal_and_a_foreign_file_without_meta() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        spool.create().unwrap();
        fs::write(
            spool.dir().join("exim-1.bsmtp"),
            b"HELO exim\nMAIL FROM:<a@x>\nRCPT TO:<b@y>\nDATA\nhi\n.\n",
        )
        .unwrap();
        fs::write(spool.dir().join("../escape.bsmtp"), b"").unwrap();
        let entry = spool.load("exim-1").unwrap();
        assert_eq!((entry.sender.as_str(), entry.recipients.len()), ("a@x", 1));
        assert_eq!(entry.meta.attempts, 0);
        assert_eq!(spool.ids().unwrap(), ["exim-1"]);
        spool.remove("exim-1").unwrap();
        assert!(spool.ids().unwrap().is_empty());
        fs::write(spool.dir().join("bad.bsmtp"), b"garbage\n").unwrap();
        assert!(spool.load("bad").is_err());
    }

    /// Regression (audit M4): an unqualified recipient was spooled, and the
    /// reader refused the file for ever. Now nothing is written.
    #[test]
    fn an_address_the_reader_would_refuse_is_not_spooled() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        for (sender, recipient) in [
            ("alice@leaf.test", "root"),
            ("alice@leaf.test", "John Smith john@x"),
            ("root", "bob@hub.test"),
        ] {
            let message = NewMessage {
                sender: sender.into(),
                recipients: vec![recipient.into()],
                ..NewMessage::default()
            };
            let err = spool.enqueue(&message, &mut &b"x\n"[..], 0, 0).unwrap_err();
            assert!(matches!(err, SpoolError::BadAddress(_)), "{err}");
        }
        assert!(spool.ids().unwrap().is_empty());
    }

    /// A file the decoder refuses is told apart from I/O trouble, and
    /// moved aside with its reason; `verify` reads the body to the dot.
    #[test]
    fn unreadable_files_are_quarantined_with_their_reason() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        spool.create().unwrap();
        fs::write(
            spool.dir().join("1.bsmtp"),
            b"MAIL FROM:<a@x>\r\nRCPT TO:<root>\r\nDATA\r\nhi\r\n.\r\n",
        )
        .unwrap();
        fs::write(spool.dir().join("1.meta"), b"arrival=5\n").unwrap();
        fs::write(
            spool.dir().join("2.bsmtp"),
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\ncut",
        )
        .unwrap();
        let err = spool.load("1").unwrap_err();
        assert!(is_unreadable(&err), "{err}");
        assert!(spool.load("2").is_ok());
        assert!(is_unreadable(&spool.verify("2").unwrap_err()));
        assert!(!is_unreadable(&spool.load("3").unwrap_err()), "missing");
        spool.quarantine("1", &err.to_string()).unwrap();
        assert_eq!(spool.ids().unwrap(), ["2"]);
        let found = spool.quarantined().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, "1");
        assert!(found[0].reason.contains("unqualified"), "{:?}", found[0]);
        assert!(found[0].since > 0);
        assert!(spool.quarantine_dir().join("1.meta").exists());
        assert!(!spool.dir().join("1.meta").exists());
    }

    #[test]
    fn one_lock_at_a_time() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        spool.create().unwrap();
        let held = spool.lock().unwrap();
        assert!(held.is_some());
        assert!(spool.lock().unwrap().is_none());
        drop(held);
        assert!(spool.lock().unwrap().is_some());
    }
}
