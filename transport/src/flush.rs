//! `bsmtp-ssh flush`: send what `enqueue` spooled, one SSH session per
//! peer; and `bsmtp-ssh queue`: list what waits, like mailq(1).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bsmtp::status::{Failure, FailureKind};
use bsmtp::text;
use bsmtp_session::client::ClientSession;
use bsmtp_session::forward::{self, Report, Settings};
use bsmtp_session::main_cf::MainCf;
use bsmtp_session::notice::{NoticeBouncer, Sink};
use bsmtp_session::pins;
use bsmtp_session::spool::{Entry, Spool};
use bsmtp_session::ssh::{self, ChannelStream, Peer};
use clap::Args as ClapArgs;
use sysexits::ExitCode;

use crate::config::ConfigFile;

/// `bsmtp-ssh flush`.
#[derive(Debug, ClapArgs)]
pub struct FlushArgs {
    /// Configuration file naming the peers and the spool.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
    /// The peers to flush ([peer.NAME] sections); default: every peer.
    #[arg(value_name = "PEER")]
    pub peers: Vec<String>,
}

/// `bsmtp-ssh queue`.
#[derive(Debug, ClapArgs)]
pub struct QueueArgs {
    /// Configuration file naming the spool.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Only this peer's spool; default: every peer's.
    #[arg(value_name = "PEER")]
    pub peer: Option<String>,
}

/// Runs `flush`; returns the exit status: 0 when every peer was reached
/// (what a peer deferred waits for the next flush), 75 when one was not,
/// 65 while a spool holds quarantined messages (unreadable: see
/// [`report_quarantine`]), 78 for a config error; the worst wins, in
/// the order 78, 65, 75 (what needs an admin before what passes).
pub fn run(args: &FlushArgs, out: &mut impl Write) -> u8 {
    let file = match ConfigFile::load_for_command("flush", &args.config, args.verbose, out) {
        Ok(file) => file,
        Err(status) => return status,
    };
    let bastions = file.bastions();
    let peers: Vec<String> = if args.peers.is_empty() {
        // A bastion (named by a proxy_jump) has no spool of its own.
        file.peer
            .keys()
            .filter(|name| !bastions.contains(&name.as_str()))
            .cloned()
            .collect()
    } else {
        args.peers.clone()
    };
    let mut status = Status::default();
    for name in &peers {
        match flush_peer(&file, name) {
            Ok(report) if report != Report::default() => {
                let _ = writeln!(
                    out,
                    "{name}: {} delivered, {} bounced, {} deferred",
                    report.delivered, report.bounced, report.deferred
                );
            }
            Ok(_) => {}
            Err(failure) => {
                log::warn!("flush {name}: {failure}");
                let _ = writeln!(out, "{name}: {failure}");
                status.add(match failure.kind {
                    FailureKind::Config => ExitCode::Config,
                    _ => ExitCode::TempFail,
                });
            }
        }
        let spool = Spool::new(&file.spool_directory(), name);
        if report_quarantine(&spool, out, true) > 0 {
            status.add(ExitCode::DataErr);
        }
    }
    status.code()
}

/// The exit status of a command that looks at several spools: the worst
/// seen, in the order config (78), quarantined messages (65, an admin
/// must act), not reached (75, passes by itself).
#[derive(Default)]
struct Status(Option<ExitCode>);

impl Status {
    fn add(&mut self, code: ExitCode) {
        let rank = |code: ExitCode| match code {
            ExitCode::Config => 3,
            ExitCode::DataErr => 2,
            _ => 1,
        };
        if self.0.is_none_or(|now| rank(code) > rank(now)) {
            self.0 = Some(code);
        }
    }

    fn code(&self) -> u8 {
        self.0.map_or(0, |code| code as u8)
    }
}

/// Names each quarantined message of `spool` on `out` (and, with `log`,
/// in the mail log) with its reason and what to do; returns how many.
/// They stay until an admin repairs them (and moves them back into the
/// spool directory) or removes them: nothing else can be done with a
/// message nobody can read, and its sender may be misread too.
fn report_quarantine(spool: &Spool, out: &mut impl Write, log: bool) -> usize {
    let found = match spool.quarantined() {
        Ok(found) => found,
        Err(err) => {
            let _ = writeln!(out, "{}: cannot list the quarantine: {err}", spool.peer());
            return 1;
        }
    };
    let now = SystemTime::now();
    for entry in &found {
        let since = Duration::from_secs(
            now.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                .saturating_sub(entry.since),
        );
        let line = format!(
            "{}  {}  quarantined {} ago, unreadable: {}",
            text::shown(spool.peer()),
            entry.id,
            age(since),
            text::shown(&entry.reason)
        );
        let _ = writeln!(out, "{line}");
        if log {
            log::warn!(
                "{line}; repair {} and move it back, or remove it",
                entry.path.display()
            );
        }
    }
    if !found.is_empty() {
        let _ = writeln!(
            out,
            "{}: {} unreadable message{} in {}: repair and move back, or remove",
            text::shown(spool.peer()),
            found.len(),
            plural(found.len()),
            spool.quarantine_dir().display()
        );
    }
    found.len()
}

/// Flushes one peer's spool.
fn flush_peer(file: &ConfigFile, name: &str) -> Result<Report, Failure> {
    let local = |text: String| Failure::new(FailureKind::Local, text);
    let spool = Spool::new(&file.spool_directory(), name);
    if spool.ids().map_err(|e| local(e.to_string()))?.is_empty() {
        return Ok(Report::default());
    }
    let Some(_lock) = spool.lock().map_err(|e| local(e.to_string()))? else {
        log::info!("flush {name}: another flush of this spool is running; leaving it to that one");
        return Ok(Report::default());
    };
    let main_cf = MainCf::load(&file.postfix_config());
    let mut bouncer = bouncer(file, &spool);
    let lifetime = file
        .spool_lifetime
        .map_or_else(|| main_cf.maximal_queue_lifetime(), Duration::from_secs);
    let ids = spool.ids().map_err(|e| local(e.to_string()))?;
    let (ids, mut report) = forward::expire(&spool, ids, lifetime, &mut bouncer, SystemTime::now());
    if ids.is_empty() {
        return Ok(report);
    }
    let peer = file
        .peer(name)
        .map_err(|text| Failure::new(FailureKind::Config, text))?;
    let sent = spool_session(file, &peer, |session| {
        let settings = Settings {
            lifetime,
            window: forward::DEFAULT_WINDOW,
        };
        let shown = std::io::stderr().is_terminal();
        let mut progress = |done: usize, total: usize| {
            if shown {
                eprint!("\rflush {name}: {done}/{total} messages");
                if done == total {
                    eprintln!();
                }
            }
        };
        forward::send(
            &spool,
            &ids,
            session,
            &mut bouncer,
            &settings,
            &mut progress,
        )
        .map_err(|(partial, failure)| {
            report_add(&mut report, &partial);
            failure
        })
    });
    match sent {
        Ok(done) => {
            report_add(&mut report, &done);
            Ok(report)
        }
        Err(failure) => {
            let left = spool.ids().unwrap_or_default();
            forward::note_failure(&spool, &left, &failure);
            Err(failure)
        }
    }
}

/// The spool's failover pin: transaction tags always hold a dot, this
/// name never does.
const SPOOL_PIN: &str = "spool";

/// Opens a session to `peer` for a spool send (`flush`, a satellite's
/// `sendmail`), runs `send` on it and ends it. With several hubs the
/// whole spool is pinned to the hub it goes to until `send` read every
/// reply: a send cut short may have left a message queued on that hub
/// unacknowledged, so the next one goes there too (see
/// [`bsmtp_session::pins`]).
pub(crate) fn spool_session(
    file: &ConfigFile,
    peer: &Peer,
    send: impl FnOnce(&mut ClientSession<ChannelStream>) -> Result<Report, Failure>,
) -> Result<Report, Failure> {
    let pins = file.pins(peer);
    let mut route = pins::Route::new(pins.as_ref(), Some(SPOOL_PIN), "the spool");
    let ssh::Connection {
        session: ssh_session,
        channel,
        relay,
        hub,
    } = route.connect(peer)?;
    let result = ClientSession::start(channel, relay, &crate::deliver::helo_name()).and_then(
        |mut session| {
            route.pin_to(&hub)?;
            let result = send(&mut session);
            if let Ok(report) = &result {
                // Every reply read; what the hub deferred of a spool that
                // was pinned may still be committing there.
                let later =
                    (report.deferred > 0).then(|| Failure::new(FailureKind::Timeout, "deferred"));
                route.settle(later.as_ref());
            }
            let _ = session.quit();
            result
        },
    );
    let _ = ssh_session.disconnect(None, "done", None);
    result
}

/// Notices go into the local Postfix; a satellite without one (no
/// postdrop) sends them through the peer: into the same spool, for the
/// flush to carry.
fn bouncer(file: &ConfigFile, spool: &Spool) -> NoticeBouncer {
    let command = file.postdrop_command();
    let host = crate::deliver::helo_name();
    if command.program.exists() {
        NoticeBouncer::new(command, &host)
    } else {
        NoticeBouncer::to(Sink::Spool(spool.clone()), &host)
    }
}

fn report_add(total: &mut Report, more: &Report) {
    total.delivered += more.delivered;
    total.bounced += more.bounced;
    total.deferred += more.deferred;
}

/// Runs `queue`: every waiting message with its peer, IDs, age, size,
/// sender, the recipients still to go and the last error, then a count
/// line, then the quarantined messages. Text from the spool is shown
/// with control characters escaped. Exit 0; 65 while a spool holds a
/// message that cannot be read (quarantined, or not yet); 78 for a
/// config error.
pub fn run_queue(args: &QueueArgs, out: &mut impl Write) -> u8 {
    let file = match ConfigFile::load(&args.config) {
        Ok(file) => file,
        Err(text) => {
            let _ = writeln!(out, "bsmtp-ssh queue: {text}");
            return ExitCode::Config as u8;
        }
    };
    let base = file.spool_directory();
    let peers: Vec<String> = match &args.peer {
        Some(peer) => vec![peer.clone()],
        None => std::fs::read_dir(&base)
            .map(|dir| {
                let mut names: Vec<String> = dir
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect();
                names.sort();
                names
            })
            .unwrap_or_default(),
    };
    let now = SystemTime::now();
    let (mut messages, mut recipients, mut bytes, mut with_mail) = (0, 0, 0, 0);
    let mut unreadable = 0;
    for peer in &peers {
        let spool = Spool::new(&base, peer);
        let ids = match spool.ids() {
            Ok(ids) => ids,
            Err(err) => {
                let _ = writeln!(out, "{peer}: cannot list: {err}");
                continue;
            }
        };
        if !ids.is_empty() {
            with_mail += 1;
        }
        for id in ids {
            match spool.load(&id) {
                Ok(entry) => {
                    messages += 1;
                    recipients += entry.pending().len();
                    bytes += entry.meta.size;
                    let _ = write!(out, "{}", listing(peer, &entry, now));
                }
                Err(err) => {
                    unreadable += 1;
                    let _ = writeln!(
                        out,
                        "{}  {id}  unreadable (the next flush quarantines it): {}",
                        text::shown(peer),
                        text::shown(&err.to_string())
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "-- {messages} message{} ({recipients} recipient{}, {bytes} bytes) waiting for {with_mail} peer{}",
        plural(messages),
        plural(recipients),
        plural(with_mail)
    );
    for peer in &peers {
        unreadable += report_quarantine(&Spool::new(&base, peer), out, false);
    }
    if unreadable > 0 {
        ExitCode::DataErr as u8
    } else {
        0
    }
}

/// One message's lines in the `queue` listing.
fn listing(peer: &str, entry: &Entry, now: SystemTime) -> String {
    let queue_id = entry.meta.queue_id.as_deref().unwrap_or("-");
    let sender = if entry.sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        &entry.sender
    };
    let mut listed = format!(
        "{}  {}  {}  {}  {} bytes  <{}>\n",
        text::shown(peer),
        text::shown(queue_id),
        entry.id,
        age(entry.age(now)),
        entry.meta.size,
        text::shown(sender)
    );
    if let Some(error) = &entry.meta.last_error {
        let _ = writeln!(
            listed,
            "        ({} after {} attempt{})",
            text::shown(error),
            entry.meta.attempts,
            plural(entry.meta.attempts as usize)
        );
    }
    for index in entry.pending() {
        let _ = writeln!(
            listed,
            "        <{}>",
            text::shown(&entry.recipients[index])
        );
    }
    listed
}

/// `3d4h`, `2h13m`, `5m`, `12s`.
fn age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
