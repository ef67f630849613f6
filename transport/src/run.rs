//! The command line and the top-level flow of one bsmtp-ssh invocation.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bsmtp::status::{Failure, FailureKind};
use clap::{Args as ClapArgs, Parser, Subcommand};
use sysexits::ExitCode;

use crate::config::{ConfigFile, PeerSection};
use crate::deliver::{self, Envelope};
use bsmtp_session::ssh::Peer;

/// bsmtp-ssh: Postfix transport that moves mail over SSH as Batch SMTP.
#[derive(Debug, Parser)]
#[command(name = "bsmtp-ssh", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Action,
}

/// The modes of operation.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Deliver one message from pipe(8): envelope in argv, content on stdin.
    Deliver(DeliverArgs),
    /// Speak LMTP on stdin/stdout for Postfix's lmtp(8) through spawn(8),
    /// carrying every transaction over one SSH session (the batching mode).
    Lmtp(crate::lmtp::LmtpArgs),
    /// Test the config, keys, pinned host keys and a no-op session against
    /// each peer, and say what to fix.
    Check(crate::check::CheckArgs),
    /// Add the bsmtp transport to a Postfix instance with postconf.
    PostfixInstall(crate::install::InstallArgs),
    /// Spool one message from pipe(8) for a peer that is reached later
    /// (flush) or fetches its own mail (pull).
    Enqueue(crate::enqueue::EnqueueArgs),
    /// Send what is spooled, one SSH session per peer.
    Flush(crate::flush::FlushArgs),
    /// List what is spooled, like mailq.
    Queue(crate::flush::QueueArgs),
    /// Fetch the mail a hub spooled for us, into the local Postfix.
    Pull(crate::pull::PullArgs),
    /// A satellite's sendmail (also run as `sendmail`): send one message
    /// to the hub now, or spool it for `flush`.
    Sendmail(crate::sendmail::SendmailArgs),
    /// Send a Postfix lookup-table source to a hub (`put-table`), which
    /// builds it with postmap and installs it.
    PushTable(crate::push::PushArgs),
}

/// Which peer to reach and how: a config section, or flags alone.
#[derive(Debug, ClapArgs)]
pub struct ConnectArgs {
    /// Configuration file naming the peers.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The peer: a [peer.NAME] section of the config (in the pipe(8)
    /// entry, Postfix's ${nexthop}).
    #[arg(long, value_name = "NAME", conflicts_with = "host")]
    pub peer: Option<String>,
    /// Deliver to this host without a config file.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// SSH port (with --host).
    #[arg(long, value_name = "N", requires = "host")]
    pub port: Option<u16>,
    /// Remote login (with --host).
    #[arg(long, value_name = "USER", requires = "host")]
    pub user: Option<String>,
    /// Private key file (with --host).
    #[arg(long, value_name = "KEYFILE", requires = "host")]
    pub identity: Option<PathBuf>,
    /// Pinned host keys (with --host).
    #[arg(long = "known-hosts", value_name = "FILE", requires = "host")]
    pub known_hosts: Option<PathBuf>,
}

impl ConnectArgs {
    /// The peer these flags name.
    pub fn resolve(&self) -> Result<Peer, Failure> {
        let config_error = |text: String| Failure::new(FailureKind::Config, text);
        if let Some(host) = &self.host {
            let section = PeerSection {
                host: Some(host.clone()),
                port: self.port,
                user: self.user.clone(),
                identity: self.identity.clone(),
                known_hosts: self.known_hosts.clone(),
                ..PeerSection::default()
            };
            return section.resolve(host).map_err(config_error);
        }
        let Some(name) = &self.peer else {
            return Err(config_error(
                "no peer: give --peer NAME (Postfix's ${nexthop}) or --host HOST".into(),
            ));
        };
        ConfigFile::load(&self.config)
            .and_then(|file| file.peer(name))
            .map_err(config_error)
    }

    /// The failover pins of `peer` (a destination with several hubs in the
    /// config file; none with --host).
    pub fn pins(&self, peer: &Peer) -> Option<bsmtp_session::pins::Pins> {
        if self.host.is_some() {
            return None;
        }
        ConfigFile::load(&self.config).ok()?.pins(peer)
    }

    /// The postlog(1) the config file names, if any (a config that does
    /// not load is reported where the peer is resolved).
    pub fn postlog(&self) -> Option<PathBuf> {
        self.host
            .is_none()
            .then(|| ConfigFile::load(&self.config).ok())
            .flatten()
            .and_then(|file| file.postlog)
    }
}

/// `bsmtp-ssh deliver`.
#[derive(Debug, ClapArgs)]
#[allow(clippy::struct_excessive_bools)]
pub struct DeliverArgs {
    /// The peer and how to reach it.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The envelope, from pipe(8)'s macros.
    #[command(flatten)]
    pub envelope: EnvelopeArgs,
    /// Give up after this many seconds in all (default 900, below Postfix's
    /// 1000 s time limit).
    #[arg(long, value_name = "SECONDS")]
    pub deadline: Option<u64>,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
}

/// The envelope as pipe(8) hands it over, for `deliver` and `enqueue`.
#[derive(Debug, ClapArgs)]
pub struct EnvelopeArgs {
    /// Envelope sender (Postfix's ${sender}); empty for the null sender.
    #[arg(
        short = 'f',
        long = "sender",
        value_name = "SENDER",
        allow_hyphen_values = true
    )]
    pub sender: String,
    /// Postfix queue ID (`${queue_id}`), for logs and the exactly-once tag.
    #[arg(long = "queue-id", value_name = "ID")]
    pub queue_id: Option<String>,
    /// Message size in bytes (`${size}`): announced to the hub, and checked
    /// against the spool's free-space floor by `enqueue`.
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// The DSN envelope ID (Postfix 3.9's ${envid}; empty for none), passed
    /// on to the hub as ENVID.
    #[arg(long, value_name = "ENVID", allow_hyphen_values = true)]
    pub envid: Option<String>,
    /// Envelope recipients (Postfix's ${recipient}), after `--`.
    #[arg(last = true, required = true, value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
}

impl EnvelopeArgs {
    /// The envelope these flags give.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            queue_id: self.queue_id.clone(),
            size: self.size,
            envid: self.envid.clone(),
        }
    }
}

/// Runs bsmtp-ssh with `command_line`; `content` is the message, `out` gets the
/// status line. Returns the exit status.
pub fn run(
    command_line: impl IntoIterator<Item = OsString>,
    content: &mut impl Read,
    out: &mut impl Write,
) -> u8 {
    let cli = match Cli::try_parse_from(as_sendmail(command_line)) {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            let _ = write!(out, "{err}");
            return 0;
        }
        Err(err) => {
            // A broken master.cf line: defer, so nothing is lost while the
            // admin fixes it.
            let failure = Failure::new(
                FailureKind::Config,
                format!(
                    "bad command line: {}",
                    bsmtp::text::one_line(&err.to_string())
                ),
            );
            let _ = writeln!(out, "{failure}");
            return failure.exit_code() as u8;
        }
    };
    match cli.command {
        Action::Deliver(args) => deliver_command(&args, content, out),
        Action::Lmtp(args) => crate::lmtp::run(&args),
        Action::Check(args) => crate::check::run(&args, out),
        Action::PostfixInstall(args) => crate::install::run(&args, out),
        Action::Enqueue(args) => crate::enqueue::run(&args, content, out),
        Action::Flush(args) => crate::flush::run(&args, out),
        Action::Queue(args) => crate::flush::run_queue(&args, out),
        Action::Pull(args) => crate::pull::run(&args, out),
        Action::PushTable(args) => crate::push::run(&args, out),
        Action::Sendmail(args) => crate::sendmail::run(&args, content, out, &mut std::io::stderr()),
    }
}

fn deliver_command(args: &DeliverArgs, content: &mut impl Read, out: &mut impl Write) -> u8 {
    let postlog = args.connect.postlog();
    bsmtp_session::logging::init(
        "bsmtp-ssh",
        args.verbose,
        bsmtp_session::logging::Fallback::Buffer,
        &bsmtp_session::logging::Target {
            postfix_config: None,
            postlog,
        },
    );
    // Whoever prints pipe(8)'s status line first (this flow or the
    // deadline watchdog) sets this; the other then prints nothing.
    let answered = Arc::new(Mutex::new(false));
    let result = args.connect.resolve().and_then(|peer| {
        let deadline = args.deadline.map_or(peer.deadline, Duration::from_secs);
        let _watchdog = Watchdog::start(deadline, &peer.name, Arc::clone(&answered));
        let envelope = args.envelope.envelope();
        let pins = args.connect.pins(&peer);
        catch_panic(|| deliver::deliver(&peer, pins.as_ref(), &envelope, content))
    });
    let mut answered = answered.lock().unwrap_or_else(PoisonError::into_inner);
    if *answered {
        // The watchdog answered Postfix and is ending the process.
        return ExitCode::TempFail as u8;
    }
    *answered = true;
    deliver::status_line(out, &result);
    bsmtp_session::logging::flush_buffered();
    match result {
        Ok(_) => 0,
        Err(failure) => failure.exit_code() as u8,
    }
}

/// Run as `sendmail` (a link or copy by that name): `bsmtp-ssh sendmail`
/// with the same arguments.
fn as_sendmail(command_line: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut words: Vec<OsString> = command_line.into_iter().collect();
    let invoked = words
        .first()
        .and_then(|program| std::path::Path::new(program).file_name())
        .is_some_and(|name| name == "sendmail");
    if invoked {
        words.insert(1, OsString::from("sendmail"));
    }
    words
}

/// Runs `deliver`, turning a panic into a deferral: a panic's own exit
/// status, 101, would make pipe(8) bounce the message.
fn catch_panic<T>(deliver: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(deliver)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Failure::new(
            FailureKind::Internal,
            format!("bsmtp-ssh internal error ({what}); please report it"),
        ))
    })
}

/// Answers Postfix and ends the process if the whole delivery overruns its
/// deadline: Postfix's own time limit would bounce the message, ours defers
/// it. Dropping the watchdog stops it.
struct Watchdog {
    _stop: mpsc::Sender<()>,
}

impl Watchdog {
    fn start(deadline: Duration, peer: &str, answered: Arc<Mutex<bool>>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let peer = peer.to_owned();
        std::thread::spawn(move || {
            if stopped.recv_timeout(deadline) != Err(RecvTimeoutError::Timeout) {
                return;
            }
            let mut answered = answered.lock().unwrap_or_else(PoisonError::into_inner);
            if *answered {
                return;
            }
            *answered = true;
            let failure = Failure::new(
                FailureKind::Timeout,
                format!(
                    "delivery to peer {peer} did not finish within {}s; will retry",
                    deadline.as_secs()
                ),
            );
            log::warn!("{}", failure.text);
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "{failure}");
            let _ = stdout.flush();
            bsmtp_session::logging::flush_buffered();
            // The delivery may be stuck where nothing can interrupt it (a
            // name lookup): only ending the process frees Postfix.
            std::process::exit(i32::from(failure.exit_code() as u8));
        });
        Watchdog { _stop: stop }
    }
}

/// Keeps a panic's message out of pipe(8)'s status: the first characters
/// of our output must be the status line, which `deliver` prints with the
/// panic folded into a deferral (see `catch_panic`). The message goes to
/// the mail log instead.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if log::log_enabled!(log::Level::Error) {
            log::error!("panic: {info}");
        } else {
            // Not delivering (check, postfix-install): a person reads stderr.
            eprintln!("bsmtp-ssh: panic: {info}");
        }
    }));
}
