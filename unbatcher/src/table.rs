//! The `put-table` verb: a peer (typically the mailbox server behind a set
//! of MX hubs) replaces one of the hub's Postfix lookup tables, e.g.
//! `relay_recipients`, so that the hub's smtpd rejects unknown recipients
//! at the door instead of accepting mail it would have to bounce.
//!
//! What it promises:
//!
//! - Only a plain table name ([`bsmtp::table::check_name`]) that this peer's
//!   policy grants (`--allow-table NAME`, `allow_table`) is ever used, and
//!   the name is checked before anything else: it names one file in
//!   `table_directory` and nothing outside it.
//! - The installed table is the old one or the whole new one, never a mix
//!   and never a cut-off one: the request must carry the source's size and
//!   SHA-256 (unless `table_require_checksum = false`); the table's own
//!   lock is taken and the free space checked before a byte is written;
//!   the source goes to a temp file in the same directory, is checked
//!   against the size and SHA-256 the client announced (a dropped SSH link
//!   looks like a clean end of input) and scanned
//!   ([`bsmtp::table::SourceScan`]: no continuation lines, no key without a
//!   value or given twice, for every table type, `texthash` too), fsynced,
//!   built with `postmap`, and only when postmap succeeded without a
//!   warning are the database and then the source renamed into place and
//!   the directory fsynced. On any failure the temp files go and the old
//!   table keeps working.
//! - A push cannot fill the file system: below `min_free` (the floor rsmtp
//!   keeps on the queue's file system) plus one and a half times the
//!   announced size it is refused with 452 before it is read, and reading
//!   stops when the floor is reached.
//! - The client gets one SMTP-style reply line on stdout and rsmtp exits
//!   with a status that agrees with it (see [`Refusal`]).
//!
//! postmap only warns about lines it cannot use (a line starting with white
//! space, a key without a value, bad UTF-8, a duplicate key) and leaves
//! them out of the database, exiting 0. A recipient table missing lines
//! rejects valid mail, so a warning counts as a refusal here.
//!
//! Postfix notices a replaced database by itself: each daemon that has the
//! table open sees that the file changed and restarts before its next
//! client (smtpd logs `table ... has changed -- restarting`); no reload is
//! needed (except for `texthash`, read once when a daemon starts).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bsmtp::reply::{EnhancedCode, Reply};
use bsmtp::table::{Checksum, PutTable, SourceScan};
use bsmtp_session::idle::{Input, Output};
use bsmtp_session::main_cf::MainCf;
use bsmtp_session::postdrop::MinFree;
use log::{info, warn};
use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use sysexits::ExitCode;

use crate::policy::{ConfigFile, PolicyArgs};
use crate::run::RunError;

/// Where pushed tables go unless `table_directory` says otherwise: in the
/// package's state directory, owned by the account the peers log in as.
/// Not under /etc/postfix: `postfix check` warns about every file there
/// that root does not own, on every run.
pub const DEFAULT_DIRECTORY: &str = "/var/lib/bsmtp-ssh/tables";
/// The table type unless `table_type` says otherwise: Postfix's
/// `default_database_type` on most systems.
pub const DEFAULT_TYPE: &str = "hash";
/// Largest table source unless `table_max_size` says otherwise (a million
/// recipients of 60 bytes fit).
pub const DEFAULT_MAX_SIZE: u64 = 64 * 1024 * 1024;
/// Longest postmap may run before the push fails (postmap builds a
/// million-line hash table in seconds).
pub const POSTMAP_TIMEOUT: Duration = Duration::from_mins(5);
/// Longest a push waits for another push of the same table.
pub const LOCK_WAIT: Duration = Duration::from_mins(1);
/// How often, in bytes received, the free-space floor is checked again.
const FLOOR_CHECK_EVERY: u64 = 4 * 1024 * 1024;
/// The mode of installed files: Postfix daemons (user `postfix`) and the
/// admin read them.
pub const TABLE_MODE: u32 = 0o644;
/// Most of postmap's output kept for the reply and the log.
const MAX_POSTMAP_OUTPUT: u64 = 64 * 1024;
/// Most characters of postmap's complaint put into the reply line.
const MAX_COMPLAINT: usize = 300;

/// A table type rsmtp installs, as written in `table_type` and in the
/// hub's main.cf (`hash:/etc/postfix/bsmtp-tables/relay_recipients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableType {
    /// Berkeley DB hash: `NAME.db`.
    Hash,
    /// Berkeley DB btree: `NAME.db`.
    Btree,
    /// CDB (package postfix-cdb): `NAME.cdb`.
    Cdb,
    /// LMDB (package postfix-lmdb): `NAME.lmdb`.
    Lmdb,
    /// The source itself, read whole by each daemon when it starts: no
    /// postmap, no database.
    Texthash,
}

impl TableType {
    /// Every type, for messages.
    pub const ALL: [TableType; 5] = [
        TableType::Hash,
        TableType::Btree,
        TableType::Cdb,
        TableType::Lmdb,
        TableType::Texthash,
    ];

    /// Parses a `table_type` value.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == text)
            .ok_or_else(|| {
                format!(
                    "table_type \"{}\" is not one rsmtp installs ({})",
                    bsmtp::text::printable(text.as_bytes()),
                    Self::ALL.map(TableType::name).join(", ")
                )
            })
    }

    /// The name Postfix uses for it.
    pub fn name(self) -> &'static str {
        match self {
            TableType::Hash => "hash",
            TableType::Btree => "btree",
            TableType::Cdb => "cdb",
            TableType::Lmdb => "lmdb",
            TableType::Texthash => "texthash",
        }
    }

    /// The suffix of the database file postmap writes next to the source;
    /// None when there is no database.
    pub fn database_suffix(self) -> Option<&'static str> {
        match self {
            TableType::Hash | TableType::Btree => Some(".db"),
            TableType::Cdb => Some(".cdb"),
            TableType::Lmdb => Some(".lmdb"),
            TableType::Texthash => None,
        }
    }
}

/// What a push needs from rsmtp.conf, the forced command and the hub.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The peer (for grants and logs).
    pub peer: String,
    /// Table names granted to it.
    pub granted: Vec<String>,
    /// Where tables go.
    pub directory: PathBuf,
    /// How they are built.
    pub kind: TableType,
    /// Largest source accepted.
    pub max_size: u64,
    /// Refuse a request without size and SHA-256.
    pub require_checksum: bool,
    /// Bytes kept free on the directory's file system (0: no floor).
    pub min_free: u64,
    /// The hub's Postfix config directory, for `postmap -c`.
    pub postfix_config: PathBuf,
    /// The postmap program: in the hub's `command_directory`.
    pub postmap: PathBuf,
}

impl Settings {
    /// Reads the settings for `peer` from rsmtp.conf and the command line;
    /// `postfix_config` is the instance postdrop writes into.
    pub fn load(
        file: &ConfigFile,
        args: &PolicyArgs,
        peer: &str,
        postfix_config: Option<PathBuf>,
    ) -> Result<Self, String> {
        let postfix_config = postfix_config.unwrap_or_else(MainCf::default_dir);
        let command_directory = MainCf::load(&postfix_config)
            .get("command_directory")
            .unwrap_or_else(|| "/usr/sbin".into());
        Ok(Settings {
            peer: peer.to_owned(),
            granted: file.tables(peer, args)?,
            directory: file
                .table_directory
                .clone()
                .unwrap_or_else(|| DEFAULT_DIRECTORY.into()),
            kind: TableType::parse(file.table_type.as_deref().unwrap_or(DEFAULT_TYPE))?,
            max_size: file.table_max_size.unwrap_or(DEFAULT_MAX_SIZE),
            require_checksum: file.table_require_checksum.unwrap_or(true),
            min_free: file
                .min_free
                .unwrap_or(bsmtp_session::spool::DEFAULT_MIN_FREE),
            postmap: Path::new(&command_directory).join("postmap"),
            postfix_config,
        })
    }
}

/// Why a push did not install anything: the reply for the client, and the
/// exit status that agrees with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reply line.
    pub reply: Reply,
    /// rsmtp's exit status.
    pub exit: ExitCode,
}

impl Refusal {
    fn new(code: u16, dsn: (u8, u16, u16), exit: ExitCode, text: String) -> Self {
        Refusal {
            reply: Reply::new(code, Some(EnhancedCode::new(dsn.0, dsn.1, dsn.2)), text),
            exit,
        }
    }

    /// A malformed request: 501 5.5.4, `EX_USAGE`.
    fn usage(text: String) -> Self {
        Self::new(501, (5, 5, 4), ExitCode::Usage, text)
    }

    /// Not this peer's table: 550 5.7.1, `EX_NOPERM`.
    fn not_granted(text: String) -> Self {
        Self::new(550, (5, 7, 1), ExitCode::NoPerm, text)
    }

    /// A request without size and SHA-256 where they are required: 554
    /// 5.7.0, `EX_NOPERM`.
    fn unchecked(text: String) -> Self {
        Self::new(554, (5, 7, 0), ExitCode::NoPerm, text)
    }

    /// Over `table_max_size`: 552 5.3.4, `EX_DATAERR`.
    fn too_big(text: String) -> Self {
        Self::new(552, (5, 3, 4), ExitCode::DataErr, text)
    }

    /// The source is malformed (our scan or postmap): 554 5.6.0,
    /// `EX_DATAERR`.
    fn rejected(text: String) -> Self {
        Self::new(554, (5, 6, 0), ExitCode::DataErr, text)
    }

    /// Incomplete or changed in transit, or the input failed: 451 4.4.2,
    /// `EX_TEMPFAIL`; try again.
    fn incomplete(text: String) -> Self {
        Self::new(451, (4, 4, 2), ExitCode::TempFail, text)
    }

    /// The hub is short of something (space, a lock, time): 451 4.3.0 or
    /// 452 4.3.1, `EX_TEMPFAIL`.
    fn local(text: String, no_space: bool) -> Self {
        if no_space {
            Self::new(452, (4, 3, 1), ExitCode::TempFail, text)
        } else {
            Self::new(451, (4, 3, 0), ExitCode::TempFail, text)
        }
    }

    /// The hub's setup is wrong (directory, postmap, table type): 451
    /// 4.3.5, `EX_CONFIG`; the hub's admin must act.
    fn config(text: String) -> Self {
        Self::new(451, (4, 3, 5), ExitCode::Config, text)
    }
}

/// Runs `put-table` with the words after the verb: installs the table read
/// from `input`, answers on `output`.
pub fn put(
    file: &ConfigFile,
    args: &PolicyArgs,
    peer: &str,
    postfix_config: Option<PathBuf>,
    words: &[String],
    input: &mut impl Input,
    output: &mut impl Output,
) -> Result<(), RunError> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    // The name first: nothing else is looked at for a bad one.
    let result = PutTable::parse(&words)
        .map_err(Refusal::usage)
        .and_then(|request| {
            let settings = Settings::load(file, args, peer, postfix_config).map_err(|err| {
                warn!("peer {peer}: put-table: rsmtp.conf: {err}");
                Refusal::config(format!(
                    "put-table: the hub's rsmtp configuration is not usable ({err})"
                ))
            })?;
            install(&settings, &request, input).map(|installed| (request, installed))
        });
    let (reply, outcome) = match result {
        Ok((request, installed)) => {
            info!(
                "peer {peer}: table {} installed as {} ({} bytes, {})",
                request.name,
                installed.map,
                installed.size,
                if request.expected.is_some() {
                    "size and SHA-256 checked"
                } else {
                    "unchecked: the request gave no size and SHA-256"
                }
            );
            (
                Reply::new(
                    250,
                    Some(EnhancedCode::new(2, 0, 0)),
                    format!(
                        "table {} installed ({} bytes)",
                        request.name, installed.size
                    ),
                ),
                Ok(()),
            )
        }
        Err(refusal) => {
            let text = refusal.reply.one_line();
            warn!("peer {peer}: put-table {}: {text}", words.join(" "));
            (
                refusal.reply,
                Err(RunError::Table {
                    text,
                    exit: refusal.exit,
                }),
            )
        }
    };
    let mut out = Vec::new();
    reply.encode(&mut out);
    output.write_all(&out)?;
    output.flush()?;
    outcome
}

/// A table in place.
struct Installed {
    /// `type:path`, as main.cf names it.
    map: String,
    /// Bytes of source.
    size: u64,
}

/// The temp files of one push, removed when dropped unless installed.
struct TempFiles<'a> {
    dir: &'a OwnedFd,
    names: Vec<PathBuf>,
}

impl Drop for TempFiles<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = nix::unistd::unlinkat(self.dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

fn install(
    settings: &Settings,
    request: &PutTable,
    input: &mut impl Input,
) -> Result<Installed, Refusal> {
    let name = &request.name;
    if !settings.granted.iter().any(|t| t == name) {
        return Err(Refusal::not_granted(format!(
            "table {name} is not granted to peer {} (grant it with --allow-table {name} in the key's forced command, or allow_table in rsmtp.conf)",
            settings.peer
        )));
    }
    if request.expected.is_none() && settings.require_checksum {
        return Err(Refusal::unchecked(format!(
            "table {name}: the request gives no size and SHA-256, so a cut-off upload could not be told from a whole one; send it with bsmtp-ssh push-table (put-table {name} BYTES SHA256), or set table_require_checksum = false in the hub's rsmtp.conf"
        )));
    }
    if let Some(expected) = request.expected.filter(|e| e.size > settings.max_size) {
        return Err(too_big(name, Some(expected.size), settings.max_size));
    }
    let dir_path = &settings.directory;
    let dir = bsmtp_session::atomic::open_dir(dir_path).map_err(|err| {
        Refusal::config(format!(
            "table directory {err}; it must exist and be writable by the account the peers log in as (install -d -o bsmtp -m 755 {})",
            dir_path.display()
        ))
    })?;
    // This table's lock before anything is written: one push at a time
    // writes, builds and renames it, so a database and its source always
    // come from the same push, and a waiting push holds no disk space.
    let _lock = lock(&dir, dir_path, name)?;
    let floor = (settings.min_free > 0).then(|| MinFree {
        queue_directory: dir_path.clone(),
        bytes: settings.min_free,
    });
    if let Some(floor) = &floor {
        room(floor, name, request.expected.map(|e| e.size))?;
    }
    // Hidden (a table name cannot start with a dot); under the lock, so a
    // leftover of a push that was killed is ours to remove.
    let temp = PathBuf::from(format!(".{name}.put"));
    let suffix = settings.kind.database_suffix();
    let temp_database = suffix.map(|s| PathBuf::from(format!("{}{s}", temp.display())));
    let mut temps = TempFiles {
        dir: &dir,
        names: vec![temp.clone()],
    };
    temps.names.extend(temp_database.clone());
    for leftover in &temps.names {
        let _ = nix::unistd::unlinkat(&dir, leftover, nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    let in_dir = |file: &Path| dir_path.join(file).display().to_string();
    let os = os_refusal;
    let received = write_temp(
        &dir,
        &in_dir(&temp),
        &temp,
        settings,
        request,
        floor.as_ref(),
        input,
    )?;
    if let Some(database) = &temp_database {
        postmap(settings, name, &dir_path.join(&temp))?;
        let db = fcntl::openat(
            &dir,
            database,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| {
            Refusal::local(
                format!(
                    "postmap left no {}: {}",
                    in_dir(database),
                    std::io::Error::from(e)
                ),
                false,
            )
        })?;
        db.set_permissions(std::fs::Permissions::from_mode(TABLE_MODE))
            .and_then(|()| db.sync_all())
            .map_err(|e| os(&in_dir(database), &e))?;
    }
    // The database first: Postfix reads only it, so from this rename on
    // the new table is in use; the source follows for the admin's eyes.
    let target = PathBuf::from(name);
    let rename = |from: &Path, to: &Path| {
        fcntl::renameat(&dir, from, &dir, to)
            .map_err(|e| os(&format!("rename to {}", in_dir(to)), &e.into()))
    };
    if let (Some(database), Some(suffix)) = (&temp_database, suffix) {
        rename(database, Path::new(&format!("{name}{suffix}")))?;
    }
    rename(&temp, &target)?;
    temps.names.clear();
    nix::unistd::fsync(dir.as_fd()).map_err(|e| os(&in_dir(Path::new(".")), &e.into()))?;
    Ok(Installed {
        map: format!("{}:{}", settings.kind.name(), in_dir(&target)),
        size: received.size,
    })
}

/// Refuses when the table directory's file system would keep less than
/// the floor, reckoning 1.5 times `size` (the source and its database).
fn room(floor: &MinFree, name: &str, size: Option<u64>) -> Result<(), Refusal> {
    floor.check(size).map_err(|refusal| {
        Refusal::local(
            format!(
                "table {name}: {} (min_free in rsmtp.conf); the installed table is unchanged",
                refusal.detail
            ),
            refusal.reply.code == 452,
        )
    })
}

/// A failed file operation on the hub: 452 4.3.1 when the disk is full.
fn os_refusal(what: &str, err: &std::io::Error) -> Refusal {
    let no_space = err.raw_os_error() == Some(Errno::ENOSPC as i32);
    Refusal::local(format!("{what}: {err}"), no_space)
}

/// Writes the source from `input` into the new file `temp` in `dir`
/// (`shown` in messages), checks it against what the request announced,
/// and fsyncs it.
fn write_temp(
    dir: &OwnedFd,
    shown: &str,
    temp: &Path,
    settings: &Settings,
    request: &PutTable,
    floor: Option<&MinFree>,
    input: &mut impl Input,
) -> Result<bsmtp::table::Expected, Refusal> {
    let name = &request.name;
    let fd = fcntl::openat(
        dir,
        temp,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| {
        let err = std::io::Error::from(e);
        if e == Errno::EACCES || e == Errno::EROFS {
            Refusal::config(format!(
                "{shown}: {err}; table_directory must be writable by the account the peers log in as"
            ))
        } else {
            os_refusal(shown, &err)
        }
    })?;
    let mut source = File::from(fd);
    // Exactly this mode, whatever the umask (rsmtp's is 077).
    source
        .set_permissions(std::fs::Permissions::from_mode(TABLE_MODE))
        .map_err(|e| os_refusal(shown, &e))?;
    let mut scan = SourceScan::new();
    let received = receive(
        input,
        &mut source,
        &mut scan,
        floor,
        name,
        settings.max_size,
        shown,
    )?;
    if let Some(expected) = request.expected {
        if received != expected {
            return Err(Refusal::incomplete(format!(
                "table {name}: received {} bytes that do not match the {} bytes and SHA-256 announced (connection lost, or the file changed while it was sent); the installed table is unchanged",
                received.size, expected.size
            )));
        }
    }
    // Judged only on the whole source: a cut-off last line is the link's
    // fault (answered above), not the table's.
    scan.finish().map_err(|err| {
        Refusal::rejected(format!(
            "table {name} refused: {err}; the installed table is unchanged"
        ))
    })?;
    source.sync_all().map_err(|e| os_refusal(shown, &e))?;
    Ok(received)
}

/// Over the limit: `size` as announced, or None when the source was cut
/// off at the limit while it was read.
fn too_big(name: &str, size: Option<u64>, max: u64) -> Refusal {
    let size = size.map_or_else(|| format!("more than {max}"), |n| n.to_string());
    Refusal::too_big(format!(
        "table {name}: {size} bytes is over the hub's limit of {max} (table_max_size in rsmtp.conf)"
    ))
}

/// Copies the source from `input` into `file` until the end of input,
/// counting, hashing and scanning it, stopping past `max` bytes or at the
/// free-space floor.
fn receive(
    input: &mut impl Input,
    file: &mut File,
    scan: &mut SourceScan,
    floor: Option<&MinFree>,
    name: &str,
    max: u64,
    shown: &str,
) -> Result<bsmtp::table::Expected, Refusal> {
    let mut sum = Checksum::new();
    let mut checked = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(Refusal::incomplete(format!(
                    "table {name}: reading the source failed after {} bytes: {err}; the installed table is unchanged",
                    sum.size()
                )))
            }
        };
        sum.update(&buf[..n]);
        scan.update(&buf[..n]);
        if sum.size() > max {
            return Err(too_big(name, None, max));
        }
        if let Some(floor) = floor.filter(|_| sum.size() - checked >= FLOOR_CHECK_EVERY) {
            checked = sum.size();
            room(floor, name, None)?;
        }
        file.write_all(&buf[..n]).map_err(|err| {
            Refusal::local(
                format!("{shown}: {err}"),
                err.raw_os_error() == Some(Errno::ENOSPC as i32),
            )
        })?;
    }
    Ok(sum.finish())
}

/// Takes table `name`'s lock, the file `.NAME.lock` in `dir` (made once,
/// never removed: removing a lock file races with its next user), waiting
/// at most [`LOCK_WAIT`].
fn lock(dir: &OwnedFd, shown: &Path, name: &str) -> Result<nix::fcntl::Flock<OwnedFd>, Refusal> {
    let file = format!(".{name}.lock");
    let fail = |e: Errno| {
        let err = std::io::Error::from(e);
        let what = format!("lock {}: {err}", shown.join(&file).display());
        if e == Errno::EACCES || e == Errno::EROFS {
            Refusal::config(format!(
                "{what}; table_directory must be writable by the account the peers log in as"
            ))
        } else {
            Refusal::local(what, false)
        }
    };
    let start = Instant::now();
    loop {
        let fd = fcntl::openat(
            dir,
            file.as_str(),
            OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(fail)?;
        match nix::fcntl::Flock::lock(fd, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, Errno::EWOULDBLOCK)) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(Refusal::local(
                    format!(
                        "another push of table {name} into {} has held it for {}s; try again later",
                        shown.display(),
                        LOCK_WAIT.as_secs()
                    ),
                    false,
                ))
            }
            Err((_, e)) => return Err(fail(e)),
        }
    }
}

/// Runs `postmap -c CONFIG TYPE:SOURCE`; any failure or warning refuses.
fn postmap(settings: &Settings, name: &str, source: &Path) -> Result<(), Refusal> {
    let program = settings.postmap.display().to_string();
    let mut command = bsmtp_session::child::command(&settings.postmap);
    command.arg("-c").arg(&settings.postfix_config).arg(format!(
        "{}:{}",
        settings.kind.name(),
        source.display()
    ));
    let ran = bsmtp_session::child::run(&mut command, POSTMAP_TIMEOUT, MAX_POSTMAP_OUTPUT)
        .map_err(|err| {
            Refusal::config(format!(
                "cannot run {program}: {err} (the hub's command_directory)"
            ))
        })?;
    // postmap names the file it read: show the table's name, not ours.
    let said = complaint(
        &String::from_utf8_lossy(&ran.stderr).replace(&source.display().to_string(), name),
    );
    match ran.status {
        None => Err(Refusal::local(
            format!(
                "table {name}: postmap did not finish within {}s; the installed table is unchanged",
                POSTMAP_TIMEOUT.as_secs()
            ),
            false,
        )),
        Some(status) if !status.success() && said.contains("unsupported dictionary type") => {
            Err(Refusal::config(format!(
                "table {name}: {said} (table_type in the hub's rsmtp.conf)"
            )))
        }
        Some(status) if !status.success() => Err(Refusal::rejected(format!(
            "table {name} refused by postmap ({status}): {said}; the installed table is unchanged"
        ))),
        // postmap leaves out what it warns about.
        Some(_) if !said.is_empty() => Err(Refusal::rejected(format!(
            "table {name} refused: postmap warned: {said} (such lines would be left out of the table); the installed table is unchanged"
        ))),
        Some(_) => Ok(()),
    }
}

/// postmap's stderr on one line, lines joined with `; `, shortened.
fn complaint(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut text = bsmtp::text::one_line(&lines.join("; "));
    if text.len() > MAX_COMPLAINT {
        let mut cut = MAX_COMPLAINT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        let _ = write!(text, "... ({} lines)", lines.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_their_database_files() {
        assert_eq!(TableType::parse("hash"), Ok(TableType::Hash));
        assert_eq!(TableType::Hash.database_suffix(), Some(".db"));
        assert_eq!(TableType::Btree.database_suffix(), Some(".db"));
        assert_eq!(TableType::Cdb.database_suffix(), Some(".cdb"));
        assert_eq!(TableType::Lmdb.database_suffix(), Some(".lmdb"));
        assert_eq!(TableType::Texthash.database_suffix(), None);
        let err = TableType::parse("dbm").unwrap_err();
        assert!(err.contains("hash, btree, cdb, lmdb, texthash"), "{err}");
        // Every database suffix is one a table name may not end in.
        for kind in TableType::ALL {
            if let Some(suffix) = kind.database_suffix() {
                assert!(bsmtp::table::DATABASE_SUFFIXES.contains(&suffix));
            }
        }
    }

    /// Settings for a table directory of its own, granting `t`, built with
    /// the machine's postmap against the system's Postfix config.
    fn settings(dir: &Path) -> Settings {
        Settings {
            peer: "leaf1".into(),
            granted: vec!["t".into()],
            directory: dir.to_owned(),
            kind: TableType::Hash,
            max_size: 1000,
            require_checksum: true,
            min_free: 0,
            postfix_config: MainCf::default_dir(),
            postmap: "/usr/sbin/postmap".into(),
        }
    }

    fn request(name: &str, source: &[u8], expected: bool) -> PutTable {
        let mut sum = Checksum::new();
        sum.update(source);
        PutTable {
            name: name.into(),
            expected: expected.then(|| sum.finish()),
        }
    }

    /// The directory's files but table t's lock file (kept).
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != ".t.lock")
            .collect();
        names.sort();
        names
    }

    #[test]
    fn installs_source_and_database_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let source = b"bob@relay.test OK\n";
        let installed = install(
            &settings(dir.path()),
            &request("t", source, true),
            &mut &source[..],
        )
        .unwrap_or_else(|r| panic!("{}", r.reply));
        assert_eq!(installed.size, source.len() as u64);
        assert_eq!(names(dir.path()), ["t", "t.db"]);
        assert_eq!(std::fs::read(dir.path().join("t")).unwrap(), source);
        for file in ["t", "t.db"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, TABLE_MODE, "{file}");
        }
    }

    #[test]
    fn refusals_leave_the_directory_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"bob@relay.test OK\n";
        install(
            &settings(dir.path()),
            &request("t", good, true),
            &mut &good[..],
        )
        .unwrap_or_else(|r| panic!("{}", r.reply));
        let database = std::fs::read(dir.path().join("t.db")).unwrap();
        let big = vec![b'x'; 1001];
        let mut unchecked = settings(dir.path());
        unchecked.require_checksum = false;
        let cases: [(&str, PutTable, &[u8], u16, ExitCode); 6] = [
            // Truncated: fewer bytes than announced (the link dropped).
            (
                "truncated",
                request("t", good, true),
                &good[..5],
                451,
                ExitCode::TempFail,
            ),
            // Same length, other bytes: changed while it was sent.
            (
                "changed",
                request("t", good, true),
                b"eve@relay.test OK\n",
                451,
                ExitCode::TempFail,
            ),
            (
                "not granted",
                request("u", good, true),
                good,
                550,
                ExitCode::NoPerm,
            ),
            (
                "too big",
                request("t", &big, false),
                &big,
                552,
                ExitCode::DataErr,
            ),
            // postmap only warns about this line, and leaves it out.
            (
                "postmap warns",
                request("t", b" bob@relay.test OK\n", false),
                b" bob@relay.test OK\n",
                554,
                ExitCode::DataErr,
            ),
            // No size and SHA-256: nothing tells a cut-off upload.
            (
                "unchecked",
                request("t", good, false),
                good,
                554,
                ExitCode::NoPerm,
            ),
        ];
        for (what, request, mut input, code, exit) in cases {
            let settings = if what == "unchecked" {
                settings(dir.path())
            } else {
                unchecked.clone()
            };
            let refusal = install(&settings, &request, &mut input)
                .err()
                .unwrap_or_else(|| panic!("{what}: installed"));
            assert_eq!(
                (refusal.reply.code, refusal.exit),
                (code, exit),
                "{what}: {}",
                refusal.reply
            );
            assert_eq!(names(dir.path()), ["t", "t.db"], "{what}");
            assert_eq!(std::fs::read(dir.path().join("t")).unwrap(), good, "{what}");
            assert_eq!(
                std::fs::read(dir.path().join("t.db")).unwrap(),
                database,
                "{what}"
            );
        }
    }

    #[test]
    fn postmap_warning_is_passed_on_with_the_table_name() {
        let dir = tempfile::tempdir().unwrap();
        // Past the scan: postmap's own rule about quotes.
        let source = b"a\"b@relay.test OK\n";
        let refusal = install(
            &settings(dir.path()),
            &request("t", source, true),
            &mut &source[..],
        )
        .err()
        .unwrap();
        let text = refusal.reply.one_line();
        assert!(text.starts_with("554 5.6.0 table t refused: postmap warned: postmap: warning: t, line 1: unbalanced '\"'"), "{text}");
        assert!(!text.contains(".put-"), "{text}");
    }

    #[test]
    fn complaint_is_one_bounded_line() {
        let many =
            "postmap: warning: t, line 1: expected format: key whitespace value\n".repeat(50);
        let text = complaint(&many);
        assert!(!text.contains('\n'));
        assert!(text.len() < MAX_COMPLAINT + 20, "{}", text.len());
        assert!(text.ends_with("(50 lines)"), "{text}");
        assert_eq!(complaint("a\n\nb\n"), "a; b");
    }

    /// Regression (audit L6): postmap joins a line that starts with white
    /// space to the line before and says nothing, so bob vanished into
    /// carol's value and the push got 250; texthash was never checked at
    /// all. Both are refused now, naming the line, and change nothing.
    #[test]
    fn continuation_lines_are_refused_for_every_table_type() {
        let source = b"carol@relay.test OK\n  bob@relay.test OK\n";
        for kind in [TableType::Hash, TableType::Texthash] {
            let dir = tempfile::tempdir().unwrap();
            let mut settings = settings(dir.path());
            settings.kind = kind;
            let refusal = install(&settings, &request("t", source, true), &mut &source[..])
                .err()
                .unwrap_or_else(|| panic!("{}: installed", kind.name()));
            let text = refusal.reply.one_line();
            assert_eq!(
                (refusal.reply.code, refusal.exit),
                (554, ExitCode::DataErr),
                "{text}"
            );
            assert!(
                text.contains("table t refused: line 2 starts with white space"),
                "{text}"
            );
            assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        }
        // Key without value and a repeated key, in a texthash table.
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path());
        settings.kind = TableType::Texthash;
        for (source, said) in [
            (
                &b"bob@relay.test\n"[..],
                "line 1: key \"bob@relay.test\" has no value",
            ),
            (
                &b"bob@relay.test OK\nBOB@relay.test REJECT\n"[..],
                "line 2: key \"BOB@relay.test\" is given a second time",
            ),
        ] {
            let refusal = install(&settings, &request("t", source, true), &mut &source[..])
                .err()
                .unwrap();
            let text = refusal.reply.one_line();
            assert!(text.contains(said), "{text}");
        }
        assert!(names(dir.path()).is_empty());
    }

    /// The plain `put-table NAME` installs only where rsmtp.conf allows it.
    #[test]
    fn a_request_without_checksum_installs_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path());
        let source = b"bob@relay.test OK\n";
        let refusal = install(&settings, &request("t", source, false), &mut &source[..])
            .err()
            .unwrap();
        assert!(
            refusal
                .reply
                .one_line()
                .contains("table_require_checksum = false"),
            "{}",
            refusal.reply
        );
        settings.require_checksum = false;
        install(&settings, &request("t", source, false), &mut &source[..])
            .unwrap_or_else(|r| panic!("{}", r.reply));
        assert_eq!(names(dir.path()), ["t", "t.db"]);
    }

    /// An input that notes, on each read, whether another push could take
    /// the table's lock at that moment (flock locks belong to an open
    /// file, so a second open of the lock file competes with install's).
    struct Watched<'a> {
        lock_file: PathBuf,
        source: &'a [u8],
        reads: usize,
        read_unlocked: bool,
    }

    impl std::io::Read for Watched<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            let file = File::open(&self.lock_file);
            if file.is_err()
                || nix::fcntl::Flock::lock(
                    file.unwrap(),
                    nix::fcntl::FlockArg::LockExclusiveNonblock,
                )
                .is_ok()
            {
                self.read_unlocked = true;
            }
            std::io::Read::read(&mut self.source, buf)
        }
    }

    impl Input for Watched<'_> {}

    /// Regression (audit L7): up to `table_max_size` was written before the
    /// lock was taken, with no free-space check. Now the table's lock is
    /// held while the source is read, and a push that would leave less than
    /// `min_free` is refused before anything is read.
    #[test]
    fn the_lock_and_the_free_space_come_before_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path());
        let source = b"bob@relay.test OK\n";
        let mut input = Watched {
            lock_file: dir.path().join(".t.lock"),
            source,
            reads: 0,
            read_unlocked: false,
        };
        install(&settings, &request("t", source, true), &mut input)
            .unwrap_or_else(|r| panic!("{}", r.reply));
        assert!(input.reads > 0);
        assert!(
            !input.read_unlocked,
            "the source was read without the table's lock"
        );

        // More free space than any file system has.
        settings.min_free = u64::MAX / 4;
        let mut input = Watched {
            lock_file: dir.path().join(".t.lock"),
            source: b"carol@relay.test OK\n",
            reads: 0,
            read_unlocked: false,
        };
        let refusal = install(
            &settings,
            &request("t", b"carol@relay.test OK\n", true),
            &mut input,
        )
        .err()
        .unwrap();
        let text = refusal.reply.one_line();
        assert_eq!(
            (refusal.reply.code, refusal.exit),
            (452, ExitCode::TempFail),
            "{text}"
        );
        assert!(text.contains("below min_free"), "{text}");
        assert_eq!(input.reads, 0, "read before the free space was checked");
        assert_eq!(names(dir.path()), ["t", "t.db"]);
        assert_eq!(std::fs::read(dir.path().join("t")).unwrap(), source);
    }

    /// Regression (audit L7): the default table directory was under
    /// /etc/postfix, owned by the peers' account, so `postfix check`
    /// warned on every run.
    #[test]
    fn the_default_directory_is_outside_postfixs_config() {
        assert!(Path::new(DEFAULT_DIRECTORY).starts_with("/var/lib/bsmtp-ssh"));
        let settings = Settings::load(
            &ConfigFile::default(),
            &PolicyArgs::default(),
            "leaf1",
            None,
        )
        .unwrap();
        assert_eq!(settings.directory, Path::new("/var/lib/bsmtp-ssh/tables"));
        assert!(settings.require_checksum);
    }
}
