//! The command line and the top-level flow of one bsmtp-ssh invocation.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bsmtp::status::{Failure, FailureKind};
use clap::{Args as ClapArgs, Parser, Subcommand};
use sysexits::ExitCode;

use crate::config::{ConfigFile, Peer, PeerSection};
use crate::deliver::{self, Envelope};

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
    /// Test the config, keys, pinned host keys and a no-op session against
    /// each peer, and say what to fix.
    Check(crate::check::CheckArgs),
    /// Add the bsmtp transport to a Postfix instance with postconf.
    PostfixInstall(crate::install::InstallArgs),
}

/// `bsmtp-ssh deliver`.
#[derive(Debug, ClapArgs)]
#[allow(clippy::struct_excessive_bools)]
pub struct DeliverArgs {
    /// Configuration file naming the peers.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The peer to deliver to (Postfix's ${nexthop}): a [peer.NAME] section.
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
    /// Envelope sender (Postfix's ${sender}); empty for the null sender.
    #[arg(
        short = 'f',
        long = "sender",
        value_name = "SENDER",
        allow_hyphen_values = true
    )]
    pub sender: String,
    /// Postfix queue ID, for logs.
    #[arg(long = "queue-id", value_name = "ID")]
    pub queue_id: Option<String>,
    /// Message size in bytes, announced to the hub.
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// Give up after this many seconds in all (default 900, below Postfix's
    /// 1000 s time limit).
    #[arg(long, value_name = "SECONDS")]
    pub deadline: Option<u64>,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
    /// Envelope recipients (Postfix's ${recipient}), after `--`.
    #[arg(last = true, required = true, value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
}

/// Set once the status line is out, so the deadline watchdog and the main
/// flow never both print one.
static STATUS_DONE: AtomicBool = AtomicBool::new(false);

/// Runs bsmtp-ssh with `command_line`; `content` is the message, `out` gets the
/// status line. Returns the exit status.
pub fn run(
    command_line: impl IntoIterator<Item = OsString>,
    content: &mut impl Read,
    out: &mut impl Write,
) -> u8 {
    let cli = match Cli::try_parse_from(command_line) {
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
                    bsmtp::status::one_line(&err.to_string())
                ),
            );
            let _ = writeln!(out, "{failure}");
            return failure.exit_code() as u8;
        }
    };
    match cli.command {
        Action::Deliver(args) => deliver_command(&args, content, out),
        Action::Check(args) => crate::check::run(&args, out),
        Action::PostfixInstall(args) => crate::install::run(&args, out),
    }
}

fn deliver_command(args: &DeliverArgs, content: &mut impl Read, out: &mut impl Write) -> u8 {
    bsmtp::logging::init(
        "bsmtp-ssh",
        args.verbose,
        bsmtp::logging::Fallback::Buffer,
        None,
    );
    let result = resolve_peer(args).and_then(|peer| {
        let deadline = args.deadline.map_or(peer.deadline, Duration::from_secs);
        start_watchdog(deadline, &peer.name);
        let envelope = Envelope {
            sender: args.sender.clone(),
            recipients: args.recipients.clone(),
            queue_id: args.queue_id.clone(),
            size: args.size,
        };
        deliver::deliver(&peer, &envelope, content)
    });
    if STATUS_DONE.swap(true, Ordering::SeqCst) {
        // The watchdog already answered Postfix and is ending the process;
        // a second status line would only confuse the log.
        std::thread::sleep(Duration::from_mins(1));
        return ExitCode::TempFail as u8;
    }
    deliver::status_line(out, &result);
    bsmtp::logging::flush_buffered();
    match result {
        Ok(_) => 0,
        Err(failure) => failure.exit_code() as u8,
    }
}

fn resolve_peer(args: &DeliverArgs) -> Result<Peer, Failure> {
    let config_error = |text: String| Failure::new(FailureKind::Config, text);
    if let Some(host) = &args.host {
        let section = PeerSection {
            host: Some(host.clone()),
            port: args.port,
            user: args.user.clone(),
            identity: args.identity.clone(),
            known_hosts: args.known_hosts.clone(),
            ..PeerSection::default()
        };
        return section.resolve(host).map_err(config_error);
    }
    let Some(name) = &args.peer else {
        return Err(config_error(
            "no peer: give --peer NAME (Postfix's ${nexthop}) or --host HOST".into(),
        ));
    };
    ConfigFile::load(&args.config)
        .and_then(|file| file.peer(name))
        .map_err(config_error)
}

/// Answers Postfix and exits if the whole delivery overruns `deadline`:
/// Postfix's own time limit would bounce the message, ours defers it.
fn start_watchdog(deadline: Duration, peer: &str) {
    let peer = peer.to_owned();
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        if !STATUS_DONE.swap(true, Ordering::SeqCst) {
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
            bsmtp::logging::flush_buffered();
            std::process::exit(i32::from(failure.exit_code() as u8));
        }
    });
}

/// Reports a panic the way Postfix must see it: a deferral (a panic's own
/// exit status, 101, would bounce the message).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if !STATUS_DONE.swap(true, Ordering::SeqCst) {
            let failure = Failure::new(
                FailureKind::Internal,
                format!("bsmtp-ssh internal error ({info}); please report it"),
            );
            let _ = writeln!(std::io::stdout(), "{failure}");
            let _ = std::io::stdout().flush();
            std::process::exit(i32::from(failure.exit_code() as u8));
        }
    }));
}
