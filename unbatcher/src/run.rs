//! The command line and the top-level flow of one rsmtp invocation.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use bsmtp::reply::{EnhancedCode, Reply};
use clap::Parser;
use log::info;
use sysexits::ExitCode;

use crate::command::{self, Verb};
use crate::idle::{Input, DEFAULT_IDLE_TIMEOUT};
use crate::policy::{self, ConfigFile, Policy, PolicyArgs};
use crate::postdrop::{self, Postdrop, PostdropCommand};
use crate::receive::{Delivery, Envelope, Injector, Receiver, Settings};

/// rsmtp: the receiving side of bsmtp-ssh, run as an OpenSSH forced command
/// (`restrict,command="rsmtp --peer NAME"`) or on a BSMTP file on stdin.
#[derive(Debug, Parser)]
#[command(
    name = "rsmtp",
    version,
    about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Args {
    /// The peer this key belongs to; its only source of identity.
    /// Required unless a subcommand is given.
    #[arg(long, value_name = "NAME", required = true)]
    pub peer: Option<String>,
    /// Configuration file with per-peer policy.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The peer's policy on the command line.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Postfix config directory postdrop writes into (default: the system's).
    #[arg(long, value_name = "DIR")]
    pub postfix_config: Option<PathBuf>,
    /// End the session after this many seconds without input (default 300,
    /// as Postfix's `smtpd_timeout`); an unfinished message is dropped.
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
    /// An admin task instead of a session. Only the hub's admin reaches
    /// these: a client's `SSH_ORIGINAL_COMMAND` is parsed elsewhere
    /// ([`crate::command`]) and can never name one.
    #[command(subcommand)]
    pub command: Option<AdminCommand>,
}

/// The admin subcommands of rsmtp.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Add a peer's key, with its forced command, to the authorized keys file.
    Authorize(crate::authorize::AuthorizeArgs),
}

/// Why rsmtp stopped; each maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad command line or config: the hub's admin must fix it.
    #[error("{0}")]
    Config(String),
    /// The client asked for something this key may not do.
    #[error("peer {peer}: {refused}")]
    Refused {
        /// The peer named by the key.
        peer: String,
        /// What was refused.
        refused: command::Refused,
    },
    /// Reading or writing the session failed.
    #[error("session I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended inside a message (nothing of it was injected).
    #[error("input ended inside DATA: that message was not queued")]
    Truncated,
    /// `rsmtp authorize` added nothing.
    #[error("authorize: {0}")]
    Authorize(#[from] crate::authorize::AuthorizeError),
}

impl RunError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Config(_) => ExitCode::Config,
            RunError::Refused { .. } => ExitCode::NoPerm,
            RunError::Io(_) => ExitCode::IoErr,
            RunError::Truncated => ExitCode::DataErr,
            RunError::Authorize(err) => err.exit_code(),
        }
    }
}

/// Hands messages to postdrop.
struct PostdropInjector {
    command: PostdropCommand,
}

impl Delivery for Postdrop {
    fn queue_id(&self) -> &str {
        Postdrop::queue_id(self)
    }
    fn write_piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), String> {
        Postdrop::write_piece(self, bytes, end_of_line).map_err(|e| e.to_string())
    }
    fn commit(self) -> Result<String, String> {
        Postdrop::commit(self).map_err(|e| e.to_string())
    }
    fn abort(self) {
        Postdrop::abort(self);
    }
}

impl Injector for PostdropInjector {
    type Message = Postdrop;
    fn start(&mut self, envelope: &Envelope) -> Result<Postdrop, String> {
        let attributes: Vec<String> = if envelope.eight_bit {
            vec!["encoding=8bit".into()]
        } else {
            Vec::new()
        };
        Postdrop::start(
            &self.command,
            &postdrop::Envelope {
                sender: &envelope.sender,
                recipients: &envelope.recipients,
                attributes: &attributes,
            },
        )
        .map_err(|e| e.to_string())
    }
}

/// Runs one rsmtp invocation: `command_line` as given, `original_command` from
/// `SSH_ORIGINAL_COMMAND`, the session on `input`/`output`.
pub fn run(
    command_line: impl IntoIterator<Item = OsString>,
    original_command: Option<&[u8]>,
    input: &mut impl Input,
    output: &mut impl Write,
) -> Result<(), RunError> {
    let args = match Args::try_parse_from(command_line) {
        Ok(args) => args,
        // --help and --version: asked for, so not an error.
        Err(err) if !err.use_stderr() => {
            write!(output, "{err}")?;
            return Ok(());
        }
        Err(err) => return Err(RunError::Config(err.to_string())),
    };
    if let Some(AdminCommand::Authorize(authorize)) = &args.command {
        return Ok(crate::authorize::run(authorize, output)?);
    }
    bsmtp::logging::init(
        "rsmtp",
        args.verbose,
        bsmtp::logging::Fallback::Stderr,
        args.postfix_config.as_deref(),
    );
    let (policy, postdrop) = load(&args)?;
    let verb = command::parse(original_command).map_err(|refused| {
        // Also on stdout as an SMTP reply: that is what a sender reads.
        let mut out = Vec::new();
        Reply::new(554, Some(EnhancedCode::new(5, 7, 0)), refused.to_string()).encode(&mut out);
        let _ = output.write_all(&out);
        let _ = output.flush();
        RunError::Refused {
            peer: policy.peer.clone(),
            refused,
        }
    })?;
    match verb {
        Verb::Receive => {
            input.set_idle_timeout(
                args.idle_timeout
                    .map_or(DEFAULT_IDLE_TIMEOUT, std::time::Duration::from_secs),
            );
            receive(policy, postdrop, input, output)
        }
    }
}

fn load(args: &Args) -> Result<(Policy, PostdropCommand), RunError> {
    let (path, named) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(policy::DEFAULT_CONFIG), false),
    };
    let file = ConfigFile::load(&path, named).map_err(RunError::Config)?;
    // clap requires --peer whenever there is no subcommand.
    let peer = args.peer.as_deref().unwrap_or_default();
    let policy = file
        .policy(
            peer,
            &args.policy.allow_sender,
            args.policy.max_size,
            args.policy.max_recipients,
        )
        .map_err(RunError::Config)?;
    let mut postdrop = PostdropCommand::default();
    if let Some(program) = &file.postdrop {
        postdrop.program.clone_from(program);
    }
    postdrop.config_dir = args.postfix_config.clone().or(file.postfix_config);
    if let Some(dir) = &postdrop.config_dir {
        postdrop::check_config_dir(dir).map_err(RunError::Config)?;
    }
    Ok((policy, postdrop))
}

fn receive(
    policy: Policy,
    postdrop: PostdropCommand,
    input: &mut impl Input,
    output: &mut impl Write,
) -> Result<(), RunError> {
    let peer = policy.peer.clone();
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let settings = Settings { hostname, policy };
    let receiver = Receiver::new(settings, PostdropInjector { command: postdrop });
    let summary = receiver.run(input, output)?;
    info!(
        "disconnect from peer {peer}: accepted={} rejected={}{}",
        summary.accepted,
        summary.rejected,
        if summary.truncated {
            " truncated=1"
        } else {
            ""
        }
    );
    if summary.truncated {
        return Err(RunError::Truncated);
    }
    Ok(())
}
