//! Logging to syslog, facility mail, in Postfix's style, with a fallback.
//!
//! A container or a test host may have no `/dev/log`; losing the log is
//! better than losing the mail, so a missing syslog never fails a delivery.
//! Where the fallback goes depends on the caller: pipe(8) reads the first
//! characters of our merged stdout and stderr as the delivery status, so the
//! transport buffers its fallback lines and prints them only after the status
//! line ([`Fallback::Buffer`] and [`flush_buffered`]).

use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

/// Where log lines go when syslog cannot be reached.
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

struct MailLog {
    ident: String,
    syslog: Mutex<Option<Logger<LoggerBackend, Formatter3164>>>,
    fallback: Fallback,
    buffered: Mutex<Vec<u8>>,
}

static LOGGER: std::sync::OnceLock<MailLog> = std::sync::OnceLock::new();

/// Starts logging as `ident` (e.g. "bsmtp-ssh"); `verbose` adds debug lines.
/// Calling it again keeps the first setup (tests run `run()` many times).
pub fn init(ident: &str, verbose: bool, fallback: Fallback) {
    let formatter = Formatter3164 {
        facility: Facility::LOG_MAIL,
        hostname: None,
        process: ident.to_owned(),
        pid: std::process::id(),
    };
    let logger = LOGGER.get_or_init(|| MailLog {
        ident: ident.to_owned(),
        syslog: Mutex::new(syslog::unix(formatter).ok()),
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

impl Log for MailLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = crate::status::one_line(&record.args().to_string());
        let sent = self.syslog.lock().ok().and_then(|mut syslog| {
            let syslog = syslog.as_mut()?;
            let result = match record.level() {
                Level::Error => syslog.err(&text),
                Level::Warn => syslog.warning(&text),
                Level::Info => syslog.info(&text),
                Level::Debug | Level::Trace => syslog.debug(&text),
            };
            result.ok()
        });
        if sent.is_some() {
            return;
        }
        let line = format!("{}: {}: {text}\n", self.ident, level_word(record.level()));
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

/// Postfix's words for severities.
fn level_word(level: Level) -> &'static str {
    match level {
        Level::Error => "fatal",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug | Level::Trace => "debug",
    }
}
