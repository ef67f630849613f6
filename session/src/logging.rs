//! Logging where Postfix logs, in Postfix's style, with a fallback.
//!
//! Admins read our lines next to Postfix's own, so they go where Postfix's
//! go: to syslog facility mail when the instance logs there (the default),
//! and through Postfix's `postlog(1)` when its main.cf sets `maillog_file`
//! (postlogd, Postfix 3.4+). One `postlog` child reads all our lines on its
//! stdin, so the cost is one exec per process, not per line. Severity is
//! written Postfix's way, as a `warning: ` prefix.
//!
//! postlog reaches postlogd through `public/postlog` in the queue
//! directory, which only root and group postdrop may enter. Upstream
//! installs postlog set-gid postdrop; Debian installs it 0755, so there a
//! postlog started by an unprivileged user (pipe(8)'s `user=`, the hub's
//! forced-command account) exits without a word and every line is lost. So
//! we check first ([`postlog_reachable`]) and, when it cannot work, use the
//! caller's fallback instead, and `bsmtp-ssh check` names the fix
//! ([`POSTLOG_FIX`]).
//!
//! Losing the log is better than losing the mail, so a missing logger never
//! fails a delivery. Where the fallback goes depends on the caller: pipe(8)
//! reads the first characters of our merged stdout and stderr as the
//! delivery status and logs the rest as its text, so the transport keeps
//! its warnings and prints them after the status line ([`Fallback::Buffer`]
//! and [`flush_buffered`]): Postfix then logs them itself.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

use crate::main_cf::MainCf;

/// Postfix's logging front end, unless the config names another.
pub const POSTLOG: &str = "/usr/sbin/postlog";

/// The command that gives `postlog` back the set-gid bit upstream Postfix
/// installs it with, in the Debian way (it survives package upgrades).
pub const POSTLOG_FIX: &str =
    "dpkg-statoverride --update --add root postdrop 2755 /usr/sbin/postlog";

/// Where log lines go when neither postlog nor syslog can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Straight to stderr.
    Stderr,
    /// Warnings and errors kept in memory until [`flush_buffered`]
    /// (bounded); routine lines dropped.
    Buffer,
    /// Dropped: for a process whose stderr is its peer's protocol stream
    /// (spawn(8) connects stderr to the client's socket).
    Discard,
}

/// Most fallback bytes kept in memory.
const MAX_BUFFERED: usize = 16 * 1024;

enum Sink {
    Postlog(Mutex<ChildStdin>),
    Syslog(Mutex<Logger<LoggerBackend, Formatter3164>>),
    None,
}

struct MailLog {
    ident: String,
    sink: Sink,
    /// The sink is not where the instance logs (its `maillog_file` is out
    /// of reach): warnings take the fallback too.
    impaired: bool,
    fallback: Fallback,
    buffered: Mutex<Vec<u8>>,
}

static LOGGER: OnceLock<MailLog> = OnceLock::new();

/// Whose logging we join, and how.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The Postfix instance (default: `MAIL_CONFIG` from the environment,
    /// as pipe(8) passes it, or the system's).
    pub postfix_config: Option<PathBuf>,
    /// The postlog(1) program (default [`POSTLOG`]).
    pub postlog: Option<PathBuf>,
}

impl Target {
    fn postlog(&self) -> &Path {
        self.postlog.as_deref().unwrap_or(Path::new(POSTLOG))
    }
}

/// Starts logging as `ident` (e.g. "bsmtp-ssh"); `verbose` adds debug
/// lines. Calling it again keeps the first setup (tests run `run()` many
/// times).
pub fn init(ident: &str, verbose: bool, fallback: Fallback, target: &Target) {
    let logger = LOGGER.get_or_init(|| {
        let (sink, impaired) = open_sink(ident, target);
        MailLog {
            ident: ident.to_owned(),
            sink,
            impaired,
            fallback,
            buffered: Mutex::new(Vec::new()),
        }
    });
    if log::set_logger(logger).is_ok() || verbose {
        log::set_max_level(if verbose {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}

/// The sink, and whether it misses the instance's `maillog_file`.
fn open_sink(ident: &str, target: &Target) -> (Sink, bool) {
    let main_cf = MainCf::load(
        &target
            .postfix_config
            .clone()
            .unwrap_or_else(MainCf::default_dir),
    );
    // Where Postfix logs to syslog (the default), so do we, directly: a
    // postlog child would cost an exec (about 6 ms of CPU) per process.
    if main_cf.maillog_file().is_none() {
        return (syslog_sink(ident).unwrap_or(Sink::None), false);
    }
    if postlog_reachable(&main_cf, target.postlog(), &Credentials::current()).is_ok() {
        if let Some(sink) = postlog_sink(ident, target) {
            return (sink, false);
        }
    }
    // The system log still gets everything where one answers (the journal
    // on a systemd machine); the caller's fallback gets the warnings.
    (syslog_sink(ident).unwrap_or(Sink::None), true)
}

/// A user's identity as the kernel checks file access: pipe(8) and sshd
/// give the child its user's uid and primary gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user ID.
    pub uid: u32,
    /// The group IDs (primary first).
    pub gids: Vec<u32>,
}

impl Credentials {
    /// This process's effective identity and groups.
    pub fn current() -> Self {
        let mut gids = vec![nix::unistd::getegid().as_raw()];
        if let Ok(groups) = nix::unistd::getgroups() {
            gids.extend(groups.iter().map(|g| g.as_raw()));
        }
        Credentials {
            uid: nix::unistd::geteuid().as_raw(),
            gids,
        }
    }

    /// Why these credentials cannot read `path` (a directory on the way
    /// that they may not search, or the file itself), or `Ok` when they
    /// can, as the kernel decides by owner, group and mode (ACLs aside).
    /// For `bsmtp-ssh check` run as root on the transport user's files.
    pub fn can_read(&self, path: &Path) -> Result<(), String> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        for dir in absolute.ancestors().skip(1) {
            if !self.may(dir, 0o1) {
                return Err(format!("directory {} is not searchable", dir.display()));
            }
        }
        if self.may(&absolute, 0o4) {
            Ok(())
        } else {
            Err(format!("{} is not readable", absolute.display()))
        }
    }

    /// Whether these credentials grant `want` (an `rwx` bit triple, e.g.
    /// 0o1 for search) on `path`, as the kernel decides for a non-root user.
    fn may(&self, path: &Path, want: u32) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        if self.uid == 0 {
            return true;
        }
        let mode = meta.permissions().mode();
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }
}

/// Whether a `postlog` started with `who`'s identity can hand lines to
/// postlogd: `who` itself may reach the socket (root, group postdrop), or
/// postlog is set-gid to a group that may. `Err` says why not.
pub fn postlog_reachable(
    main_cf: &MainCf,
    postlog: &Path,
    who: &Credentials,
) -> Result<(), String> {
    let public = main_cf.queue_directory().join("public");
    let service = main_cf
        .value("postlog_service_name")
        .unwrap_or_else(|| "postlog".into());
    let socket = public.join(service);
    // Postfix makes every socket in public/ 0666; what guards it is the
    // directory, which only its owner and group may enter (and which also
    // keeps an outsider from looking at the socket's own mode).
    let reaches = |creds: &Credentials| creds.may(&public, 0o1);
    if reaches(who) {
        return Ok(());
    }
    let program = postlog.display();
    let postlog = std::fs::metadata(postlog).map_err(|err| format!("{program}: {err}"))?;
    let set_gid = postlog.permissions().mode() & 0o2000 != 0;
    if set_gid {
        let with_postlog_group = Credentials {
            uid: who.uid,
            gids: vec![postlog.gid()],
        };
        if reaches(&with_postlog_group) {
            return Ok(());
        }
    }
    Err(format!(
        "{program} is {} (mode {:o}), so run as uid {} it cannot reach postlogd's socket {}",
        if set_gid {
            "set-gid to a group that cannot enter the queue's public directory"
        } else {
            "not set-gid postdrop"
        },
        postlog.permissions().mode() & 0o7777,
        who.uid,
        socket.display()
    ))
}

fn postlog_sink(ident: &str, target: &Target) -> Option<Sink> {
    let mut command = crate::child::command(target.postlog());
    if let Some(dir) = &target.postfix_config {
        command.arg("-c").arg(dir);
    } else if let Some(dir) = std::env::var_os("MAIL_CONFIG") {
        command.env("MAIL_CONFIG", dir);
    }
    // Its stdout and stderr must not be ours: pipe(8) reads ours until
    // EOF, and postlog may outlive us by a moment.
    let child = command
        .args(["-t", ident])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child.map(|mut c| c.stdin.take()) {
        Ok(Some(stdin)) => Some(Sink::Postlog(Mutex::new(stdin))),
        _ => None,
    }
}

fn syslog_sink(ident: &str) -> Option<Sink> {
    let formatter = Formatter3164 {
        facility: Facility::LOG_MAIL,
        hostname: None,
        process: ident.to_owned(),
        pid: std::process::id(),
    };
    syslog::unix(formatter)
        .ok()
        .map(|logger| Sink::Syslog(Mutex::new(logger)))
}

/// True when an error logged now also reaches stderr (a terminal, or the
/// [`Fallback::Stderr`] of a log that does not reach the mail log): the
/// caller then does not print it a second time.
pub fn errors_reach_stderr() -> bool {
    LOGGER.get().is_some_and(|logger| {
        std::io::stderr().is_terminal()
            || (logger.fallback == Fallback::Stderr
                && (logger.impaired || matches!(logger.sink, Sink::None)))
    })
}

/// Writes lines held back by [`Fallback::Buffer`] to stderr.
pub fn flush_buffered() {
    if let Some(logger) = LOGGER.get() {
        if let Ok(mut buffered) = logger.buffered.lock() {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&buffered);
            let _ = stderr.flush();
            buffered.clear();
        }
    }
}

impl MailLog {
    /// Sends one line to the sink; false when it could not.
    fn send(&self, level: Level, text: &str) -> bool {
        match &self.sink {
            Sink::Postlog(stdin) => stdin.lock().is_ok_and(|mut stdin| {
                let line = format!("{}{text}\n", prefix(level));
                stdin.write_all(line.as_bytes()).is_ok()
            }),
            Sink::Syslog(syslog) => syslog.lock().is_ok_and(|mut syslog| {
                let line = format!("{}{text}", prefix(level));
                match level {
                    Level::Error => syslog.err(line),
                    Level::Warn => syslog.warning(line),
                    Level::Info => syslog.info(line),
                    Level::Debug | Level::Trace => syslog.debug(line),
                }
                .is_ok()
            }),
            Sink::None => false,
        }
    }
}

impl Log for MailLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = bsmtp::text::one_line(&record.args().to_string());
        let line = format!("{}: {}{text}\n", self.ident, prefix(record.level()));
        // As Postfix's own programs do: a person at a terminal sees the log
        // too. Never under pipe(8) or sshd, where stderr is not a terminal.
        if std::io::stderr().is_terminal() {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if self.send(record.level(), &text) && !self.impaired {
            return;
        }
        match self.fallback {
            Fallback::Discard => {}
            Fallback::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            // Routine lines would only lengthen the status Postfix logs.
            Fallback::Buffer if record.level() > Level::Warn => {}
            Fallback::Buffer => {
                if let Ok(mut buffered) = self.buffered.lock() {
                    if buffered.len() + line.len() <= MAX_BUFFERED {
                        buffered.extend_from_slice(line.as_bytes());
                    }
                }
            }
        }
    }

    fn flush(&self) {}
}

/// Postfix's way of marking severity inside the text.
fn prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "fatal: ",
        Level::Warn => "warning: ",
        Level::Info => "",
        Level::Debug | Level::Trace => "debug: ",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check` run as root judges the transport user's access by owner,
    /// group and mode of the file and of every directory above it.
    #[test]
    fn can_read_needs_search_on_every_directory_and_read_on_the_file() {
        let dir = std::env::temp_dir().join(format!("bsmtp-can-read-{}", std::process::id()));
        let inner = dir.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        let file = inner.join("key");
        std::fs::write(&file, b"k").unwrap();
        let owner = std::fs::metadata(&file).unwrap().uid();
        let set = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let stranger = Credentials {
            uid: owner + 4242,
            gids: vec![4242],
        };
        let me = Credentials {
            uid: owner,
            gids: vec![4242],
        };
        set(&dir, 0o755);
        set(&inner, 0o755);
        set(&file, 0o644);
        assert!(stranger.can_read(&file).is_ok());
        set(&file, 0o600);
        let why = stranger.can_read(&file).unwrap_err();
        assert!(why.contains("is not readable"), "{why}");
        assert!(me.can_read(&file).is_ok());
        set(&file, 0o644);
        set(&inner, 0o700);
        let why = stranger.can_read(&file).unwrap_err();
        assert!(
            why.contains(&format!("directory {} is not searchable", inner.display())),
            "{why}"
        );
        set(&inner, 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_reaches_postlogd_and_others_need_the_group() {
        let dir = std::env::temp_dir().join(format!("bsmtp-logging-{}", std::process::id()));
        let public = dir.join("public");
        std::fs::create_dir_all(&public).unwrap();
        std::fs::write(public.join("postlog"), b"").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o710)).unwrap();
        std::fs::set_permissions(
            public.join("postlog"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let main_cf = MainCf::parse(&format!("queue_directory = {}\n", dir.display()));
        let owner_gid = std::fs::metadata(&public).unwrap().gid();
        let root = Credentials {
            uid: 0,
            gids: vec![0],
        };
        let postlog = Path::new("/nonexistent/postlog");
        assert!(postlog_reachable(&main_cf, postlog, &root).is_ok());
        let member = Credentials {
            uid: 4242,
            gids: vec![owner_gid],
        };
        assert!(postlog_reachable(&main_cf, postlog, &member).is_ok());
        // A stranger depends on postlog's set-gid bit, which the message names.
        let stranger = Credentials {
            uid: 4242,
            gids: vec![owner_gid + 4242],
        };
        let why = postlog_reachable(&main_cf, postlog, &stranger).unwrap_err();
        assert!(why.contains("/nonexistent/postlog"), "{why}");
        // A postlog set-gid to the directory's group reaches it for anyone.
        let copy = dir.join("postlog-copy");
        std::fs::write(&copy, b"").unwrap();
        std::os::unix::fs::chown(&copy, None, Some(owner_gid)).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o2755)).unwrap();
        assert!(postlog_reachable(&main_cf, &copy, &stranger).is_ok());
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let why = postlog_reachable(&main_cf, &copy, &stranger).unwrap_err();
        assert!(
            why.contains("not set-gid") && why.contains("uid 4242") && why.contains("postlogd"),
            "{why}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
