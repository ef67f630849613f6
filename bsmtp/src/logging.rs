//! Logging where Postfix logs, in Postfix's style, with a fallback.
//!
//! Admins read our lines next to Postfix's own, so they go where Postfix's
//! go: to syslog facility mail when the instance logs there (the default),
//! and through Postfix's `postlog(1)` when its main.cf sets `maillog_file`
//! (postlogd, Postfix 3.4+), or when no syslog socket answers. One `postlog`
//! child reads all our lines on its stdin, so the cost is one exec per
//! process, not per line. Severity is written Postfix's way, as a
//! `warning: ` prefix.
//!
//! A container or a test host may have neither; losing the log is better
//! than losing the mail, so a missing logger never fails a delivery. Where
//! the fallback goes depends on the caller: pipe(8) reads the first
//! characters of our merged stdout and stderr as the delivery status, so the
//! transport keeps its fallback warnings and prints them only after the
//! status line ([`Fallback::Buffer`] and [`flush_buffered`]).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

/// Postfix's logging front end.
pub const POSTLOG: &str = "/usr/sbin/postlog";

/// Where log lines go when neither postlog nor syslog can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Straight to stderr.
    Stderr,
    /// Warnings and errors kept in memory until [`flush_buffered`]
    /// (bounded); routine lines dropped.
    Buffer,
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
    fallback: Fallback,
    buffered: Mutex<Vec<u8>>,
}

static LOGGER: OnceLock<MailLog> = OnceLock::new();

/// Starts logging as `ident` (e.g. "bsmtp-ssh"); `verbose` adds debug lines.
/// `postfix_config` is the Postfix instance whose logging we join (default:
/// `MAIL_CONFIG` from the environment, as pipe(8) passes it, or the
/// system's). Calling it again keeps the first setup (tests run `run()` many
/// times).
pub fn init(ident: &str, verbose: bool, fallback: Fallback, postfix_config: Option<&Path>) {
    let logger = LOGGER.get_or_init(|| MailLog {
        ident: ident.to_owned(),
        sink: open_sink(ident, postfix_config.map(Path::to_path_buf)),
        fallback,
        buffered: Mutex::new(Vec::new()),
    });
    if log::set_logger(logger).is_ok() || verbose {
        log::set_max_level(if verbose {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    }
}

fn open_sink(ident: &str, postfix_config: Option<PathBuf>) -> Sink {
    let config_dir = postfix_config
        .clone()
        .or_else(|| std::env::var_os("MAIL_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/postfix"));
    // Where Postfix logs to syslog (the default), so do we, directly: a
    // postlog child would cost an exec (about 6 ms of CPU) per process.
    if !uses_maillog_file(&config_dir) {
        if let Some(sink) = syslog_sink(ident) {
            return sink;
        }
    }
    postlog_sink(ident, postfix_config).unwrap_or_else(|| syslog_sink(ident).unwrap_or(Sink::None))
}

/// True when the instance's main.cf sets `maillog_file` (Postfix 3.4+
/// logging through postlogd), which only postlog(1) can reach.
fn uses_maillog_file(config_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(config_dir.join("main.cf")) else {
        return false;
    };
    text.lines().any(|line| {
        line.split_once('=')
            .is_some_and(|(name, value)| name.trim() == "maillog_file" && !value.trim().is_empty())
    })
}

fn postlog_sink(ident: &str, postfix_config: Option<PathBuf>) -> Option<Sink> {
    if !Path::new(POSTLOG).exists() {
        return None;
    }
    let mut command = Command::new(POSTLOG);
    if let Some(dir) = postfix_config {
        command.arg("-c").arg(dir);
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
        let text = crate::status::one_line(&record.args().to_string());
        let line = format!("{}: {}{text}\n", self.ident, prefix(record.level()));
        // As Postfix's own programs do: a person at a terminal sees the log
        // too. Never under pipe(8) or sshd, where stderr is not a terminal.
        if std::io::stderr().is_terminal() {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if self.send(record.level(), &text) {
            return;
        }
        match self.fallback {
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

    #[test]
    fn maillog_file_is_seen_only_when_set() {
        let dir = std::env::temp_dir().join(format!("bsmtp-logging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main_cf = dir.join("main.cf");
        std::fs::write(&main_cf, "myhostname = x\nmaillog_file =\n").unwrap();
        assert!(!uses_maillog_file(&dir));
        std::fs::write(
            &main_cf,
            "# maillog_file = /x\nmaillog_file = /var/log/postfix.log\n",
        )
        .unwrap();
        assert!(uses_maillog_file(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            !uses_maillog_file(&dir),
            "no main.cf: Postfix's default, syslog"
        );
    }
}
