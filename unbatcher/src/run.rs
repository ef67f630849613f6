//! The command line and the top-level flow of one rsmtp invocation.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use bsmtp::reply::{EnhancedCode, Reply};
use bsmtp_session::main_cf::MainCf;
use bsmtp_session::notice::Notifier;
use clap::Parser;
use log::info;
use sysexits::ExitCode;

use crate::command::{self, Verb};
use crate::policy::{self, ConfigFile, PolicyArgs};
use bsmtp_session::idle::{Input, Output, DEFAULT_IDLE_TIMEOUT};
use bsmtp_session::policy::Policy;
use bsmtp_session::postdrop::{self, MinFree, PostdropCommand, PostdropInjector};
use bsmtp_session::server::{Receiver, Settings};
use bsmtp_session::smtp_inject::{Inject, PeerIdentity, SmtpInjector};
use bsmtp_session::tags::{self, TagStore};

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
    /// How received mail enters the hub's queue: `postdrop` (default), or
    /// the fast path `smtp:HOST:PORT` / `smtp:unix:PATH`, a dedicated
    /// smtpd listener (overrides `inject` in rsmtp.conf).
    #[arg(long, value_name = "METHOD")]
    pub inject: Option<String>,
    /// End the session after this many seconds without input (default 300,
    /// as Postfix's `smtpd_timeout`); an unfinished message is dropped.
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,
    /// Read standard input as a BSMTP batch offline (no replies; refusals
    /// reported by rsmtp, exit 0 or 75), even under sshd on a pipe.
    #[arg(long)]
    pub batch: bool,
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
// Parsed once per process: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Add a peer's key, with its forced command, to the authorized keys file.
    Authorize(crate::authorize::AuthorizeArgs),
    /// Check rsmtp.conf and the peers' `authorized_keys` lines; exit
    /// non-zero naming what is wrong.
    Check(crate::check::CheckArgs),
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
    /// Some commands of a live session were refused (a 4xx such as `452
    /// 4.3.1` below `min_free`, or a 5xx): the client has each reply, and
    /// its Postfix keeps, retries or bounces what was not queued.
    #[error(
        "peer {peer}: {refused} command(s) refused, {accepted} message(s) queued in the session; the peer has a reply for each, and keeps what was not queued (see the lines above for what and why)"
    )]
    NotAccepted {
        /// The peer named by the key.
        peer: String,
        /// Commands answered 4xx or 5xx.
        refused: usize,
        /// Messages queued.
        accepted: usize,
    },
    /// `rsmtp authorize` added nothing.
    #[error("authorize: {0}")]
    Authorize(#[from] crate::authorize::AuthorizeError),
    /// A pull session failed; what was not acknowledged stays spooled.
    #[error("pull: {0}")]
    Pull(String),
    /// `put-table` installed nothing; the client has the reply.
    #[error("put-table: {text}")]
    Table {
        /// The reply sent, on one line.
        text: String,
        /// The exit status that agrees with it.
        exit: ExitCode,
    },
    /// The sendmail verb: a refused command line or message.
    #[error("sendmail: {text}")]
    Sendmail {
        /// The exit status sendmail's callers understand.
        status: ExitCode,
        /// What happened, one line.
        text: String,
    },
    /// Offline: something in the batch was deferred, or a refusal could
    /// not be reported; the batch must be read again.
    #[error(
        "{retry} recipient(s) deferred or not reported ({accepted} message(s) queued, {bounced} refused and reported): keep the batch and feed it again later; what was queued or reported will not be doubled"
    )]
    Retry {
        /// Recipients to try again.
        retry: usize,
        /// Messages queued.
        accepted: usize,
        /// Recipients refused and reported.
        bounced: usize,
    },
}

impl RunError {
    /// Whether this ends rsmtp as a failure to log as `fatal:`. A
    /// deferral (exit `EX_TEMPFAIL`: refusals the client has replies for,
    /// a batch to feed again, a hub short of disk space) is an ordinary
    /// outcome with every message safe, and is logged as a `warning:`,
    /// as Postfix logs a deferral and never as fatal.
    pub fn is_fatal(&self) -> bool {
        self.exit_code() != ExitCode::TempFail
    }

    /// The exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Config(_) => ExitCode::Config,
            RunError::Refused { .. } => ExitCode::NoPerm,
            RunError::Io(_) => ExitCode::IoErr,
            RunError::Truncated => ExitCode::DataErr,
            // A UUCP-style `rsmtp < f && rm f` must keep the file.
            RunError::NotAccepted { .. } | RunError::Pull(_) | RunError::Retry { .. } => {
                ExitCode::TempFail
            }
            RunError::Authorize(err) => err.exit_code(),
            RunError::Table { exit, .. } => *exit,
            RunError::Sendmail { status, .. } => *status,
        }
    }
}

/// Runs one rsmtp invocation: `command_line` as given, `original_command` from
/// `SSH_ORIGINAL_COMMAND`, the session on `input`/`output`. Not
/// `over_ssh` ([`crate::mode::over_ssh`]), or with `--batch`, the input is a
/// batch read offline (see [`crate::offline`]).
pub fn run(
    command_line: impl IntoIterator<Item = OsString>,
    original_command: Option<&[u8]>,
    over_ssh: bool,
    input: &mut impl Input,
    output: &mut impl Output,
) -> Result<(), RunError> {
    let words: Vec<OsString> = command_line.into_iter().collect();
    let args = match Args::try_parse_from(&words) {
        Ok(args) => args,
        // --help and --version: asked for, so not an error.
        Err(err) if !err.use_stderr() => {
            write!(output, "{err}")?;
            return Ok(());
        }
        Err(err) => return Err(refuse_command_line(&words, &err)),
    };
    match &args.command {
        Some(AdminCommand::Authorize(authorize)) => {
            return Ok(crate::authorize::run(authorize, output)?);
        }
        Some(AdminCommand::Check(check)) => return crate::check::run(check, output),
        None => {}
    }
    let file = read_config(&args).inspect_err(|_| {
        // A typo in rsmtp.conf stops every peer; logged (by main) where
        // Postfix logs, so the hub's admin sees why, and on stderr, which
        // the leaf shows in its deferral.
        start_logging(&args, false, &ConfigFile::logging_only(&config_path(&args)));
    })?;
    start_logging(&args, args.verbose, &file);
    let session = load(&args, &file)?;
    let verb = command::parse(original_command).map_err(|refused| {
        refuse_session(output, &refused);
        RunError::Refused {
            peer: session.settings.policy.peer.clone(),
            refused,
        }
    })?;
    batch_verb(&args, &verb)?;
    let idle = args
        .idle_timeout
        .map_or(DEFAULT_IDLE_TIMEOUT, std::time::Duration::from_secs);
    input.set_idle_timeout(idle);
    output.set_idle_timeout(idle);
    match verb {
        Verb::Receive if !over_ssh || args.batch => offline(session, &file, input),
        Verb::Receive => receive(session, input, output),
        Verb::ReceiveDeflate => {
            let peer = session.settings.policy.peer.clone();
            crate::compressed::receive(&peer, input, output, |input, output| {
                receive(session, input, output)
            })
        }
        Verb::Pull if session.verbs.iter().any(|v| v == "pull") => {
            let postfix_config = session
                .postdrop
                .config_dir
                .clone()
                .unwrap_or_else(MainCf::default_dir);
            let spool_directory = file
                .spool_directory
                .clone()
                .unwrap_or_else(|| PathBuf::from(bsmtp_session::spool::DEFAULT_DIRECTORY));
            crate::pull::pull(
                &crate::pull::PullSettings {
                    peer: &session.settings.policy.peer,
                    spool_directory: &spool_directory,
                    postfix_config: &postfix_config,
                    postdrop: &session.postdrop,
                    lifetime: file.spool_lifetime.map(std::time::Duration::from_secs),
                    hostname: &session.settings.hostname,
                },
                input,
                output,
            )
        }
        Verb::Sendmail(words) if session.verbs.iter().any(|v| v == "sendmail") => {
            let injector = PostdropInjector {
                command: session.postdrop,
                min_free: session.min_free,
            };
            crate::sendmail::run(session.settings, injector, &words, input, output)
        }
        // A sendmail client reads no reply, only the exit status: 75, so
        // that a Postfix pipe(8) behind it defers while the admin grants
        // the verb, instead of bouncing.
        Verb::Sendmail(_) => Err(RunError::Sendmail {
            status: ExitCode::TempFail,
            text: format!(
                "verb not granted to peer {} (grant it with --allow-verb sendmail in the key's forced command, or allow_verb in rsmtp.conf)",
                session.settings.policy.peer
            ),
        }),
        Verb::PutTable(words) => put_table(&args, &file, &session, &words, input, output),
        Verb::Pull => {
            let refused = command::Refused {
                request: "pull".into(),
                reason: format!(
                    "not granted to peer {} (grant it with --allow-verb pull in the key's forced command, or allow_verb in rsmtp.conf)",
                    session.settings.policy.peer
                ),
            };
            refuse_session(output, &refused);
            Err(RunError::Refused {
                peer: session.settings.policy.peer.clone(),
                refused,
            })
        }
    }
}

/// A command line clap refused: a typo in the key's forced command stops
/// every session of that peer, so it is logged where the hub's Postfix
/// logs (by main, as every error), for the admin to find.
fn refuse_command_line(words: &[OsString], err: &clap::Error) -> RunError {
    bsmtp_session::logging::init(
        "rsmtp",
        false,
        bsmtp_session::logging::Fallback::Stderr,
        &bsmtp_session::logging::Target {
            postfix_config: postfix_config_in(words),
            postlog: None,
        },
    );
    RunError::Config(bsmtp::text::one_line(&err.to_string()))
}

/// `--postfix-config DIR` (or `=DIR`) in a command line clap refused.
fn postfix_config_in(words: &[OsString]) -> Option<PathBuf> {
    let mut words = words.iter();
    while let Some(word) = words.next() {
        if word == "--postfix-config" {
            return words.next().map(PathBuf::from);
        }
        if let Some(dir) = word
            .to_str()
            .and_then(|w| w.strip_prefix("--postfix-config="))
        {
            return Some(PathBuf::from(dir));
        }
    }
    None
}

/// Logs where the Postfix instance we inject into logs (the command line's
/// `--postfix-config`, else rsmtp.conf's).
fn start_logging(args: &Args, verbose: bool, file: &ConfigFile) {
    bsmtp_session::logging::init(
        "rsmtp",
        verbose,
        bsmtp_session::logging::Fallback::Stderr,
        &bsmtp_session::logging::Target {
            postfix_config: args
                .postfix_config
                .clone()
                .or_else(|| file.postfix_config.clone()),
            postlog: file.postlog.clone(),
        },
    );
}

/// A batch is BSMTP: with `--batch`, no other verb may be asked for.
fn batch_verb(args: &Args, verb: &Verb) -> Result<(), RunError> {
    if !args.batch || *verb == Verb::Receive {
        return Ok(());
    }
    Err(RunError::Config(format!(
        "--batch reads a BSMTP batch, but the SSH command asks for \"{}\"",
        verb.name()
    )))
}

/// `put-table NAME [BYTES SHA256]`: see [`crate::table`].
fn put_table(
    args: &Args,
    file: &ConfigFile,
    session: &Session,
    words: &[String],
    input: &mut impl Input,
    output: &mut impl Output,
) -> Result<(), RunError> {
    let peer = &session.settings.policy.peer;
    let config_dir = session.postdrop.config_dir.clone();
    crate::table::put(file, &args.policy, peer, config_dir, words, input, output)
}

/// Tells a client why its session does not start: as an SMTP reply, the
/// only thing a sender reads. 421, not 5xx: a refused command is a
/// configuration fault (a verb this key is not granted, a leaf asking for
/// the wrong one), never the fault of the mail waiting on the leaf.
fn refuse_session(output: &mut impl Output, refused: &command::Refused) {
    let mut out = Vec::new();
    Reply::new(421, Some(EnhancedCode::new(4, 7, 0)), refused.to_string()).encode(&mut out);
    let _ = output.write_all(&out);
    let _ = output.flush();
}

/// What a session needs, from the command line, rsmtp.conf and the hub's
/// main.cf.
struct Session {
    settings: Settings,
    postdrop: PostdropCommand,
    /// Verbs granted besides `receive`.
    verbs: Vec<String>,
    /// The queue file system's floor.
    min_free: Option<MinFree>,
    /// How received mail enters the queue.
    inject: Inject,
    /// The hub's `queue_directory` (a relative `smtp:unix:` path is in it).
    queue_directory: PathBuf,
}

/// rsmtp.conf: the file `--config` names, else the default one if it exists.
fn read_config(args: &Args) -> Result<ConfigFile, RunError> {
    ConfigFile::load(&config_path(args), args.config.is_some()).map_err(RunError::Config)
}

/// rsmtp.conf's path: `--config`, else the default.
fn config_path(args: &Args) -> PathBuf {
    args.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(policy::DEFAULT_CONFIG))
}

fn load(args: &Args, file: &ConfigFile) -> Result<Session, RunError> {
    // clap requires --peer whenever there is no subcommand.
    let peer = args.peer.as_deref().unwrap_or_default();
    let mut policy = file.policy(peer, &args.policy).map_err(RunError::Config)?;
    let mut postdrop = PostdropCommand::default();
    if let Some(program) = &file.postdrop {
        postdrop.program.clone_from(program);
    }
    postdrop.config_dir = args.postfix_config.clone().or(file.postfix_config.clone());
    if let Some(dir) = &postdrop.config_dir {
        postdrop::check_config_dir(dir).map_err(RunError::Config)?;
    }
    let main_cf = MainCf::load(
        &postdrop
            .config_dir
            .clone()
            .unwrap_or_else(MainCf::default_dir),
    );
    clamp_max_size(&mut policy, main_cf.message_size_limit());
    let error_limit = policy
        .hard_error_limit
        .unwrap_or_else(|| {
            usize::try_from(main_cf.number("smtpd_hard_error_limit", 20)).unwrap_or(20)
        })
        .max(1);
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let tags = open_tags(file, &policy.peer);
    let verbs = file
        .verbs(&policy.peer, &args.policy)
        .map_err(RunError::Config)?;
    let min_free = match file
        .min_free
        .unwrap_or(bsmtp_session::spool::DEFAULT_MIN_FREE)
    {
        0 => None,
        bytes => Some(MinFree {
            queue_directory: main_cf.queue_directory(),
            bytes,
        }),
    };
    let inject = file
        .inject(&policy.peer, args.inject.as_deref())
        .map_err(RunError::Config)?;
    let mut settings = Settings::new(hostname, policy, error_limit);
    settings.tags = tags;
    // A whole line within the idle timeout too, as Postfix's smtpd with
    // smtpd_per_record_deadline: a peer dripping a byte now and then
    // cannot hold the session (and a postdrop) for ever.
    settings.record_deadline = Some(
        args.idle_timeout
            .map_or(DEFAULT_IDLE_TIMEOUT, std::time::Duration::from_secs),
    );
    Ok(Session {
        settings,
        postdrop,
        verbs,
        min_free,
        inject,
        queue_directory: main_cf.queue_directory(),
    })
}

/// The peer's exactly-once tag store, unless rsmtp.conf turns it off.
/// Without `tag_directory` it is the default directory when this account
/// can write there (the package makes it), else one under this account's
/// home, made on first use: a hub set up by hand keeps tags with no step
/// by the admin (SPEC invariant 8). Without a store rsmtp still takes
/// mail, but does not announce tags, so a retry after a lost
/// acknowledgement can be queued twice; that is said.
fn open_tags(file: &ConfigFile, peer: &str) -> Option<TagStore> {
    let dir = file.tag_directory.clone().unwrap_or_else(|| {
        let home = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|user| user.dir);
        tags::fallback_directory(Path::new(tags::DEFAULT_DIRECTORY), home.as_deref())
    });
    if dir.as_os_str().is_empty() {
        return None;
    }
    if file.tag_directory.is_none() && dir != Path::new(tags::DEFAULT_DIRECTORY) {
        // Ours to make: nobody else will.
        if let Err(err) = tags::create_base(&dir) {
            log::warn!("peer {peer}: transaction tags off ({err}): a retry after a lost acknowledgement could be queued twice; create {} writable by this account, or set tag_directory in rsmtp.conf", tags::DEFAULT_DIRECTORY);
            return None;
        }
    }
    let lifetime = file
        .tag_lifetime
        .map_or(tags::DEFAULT_LIFETIME, std::time::Duration::from_secs);
    let content_lifetime = file.content_tag_lifetime.map_or(
        tags::DEFAULT_CONTENT_LIFETIME,
        std::time::Duration::from_secs,
    );
    let limit = file.tag_limit.unwrap_or(tags::DEFAULT_LIMIT);
    let min_free = file
        .min_free
        .unwrap_or(bsmtp_session::spool::DEFAULT_MIN_FREE);
    TagStore::open(&dir, peer, lifetime, limit)
        .map(|store| {
            store
                .with_content_lifetime(content_lifetime)
                .with_min_free(min_free)
        })
        .inspect_err(|err| {
            log::warn!(
                "peer {peer}: transaction tags off ({err}): a retry after a lost acknowledgement could be queued twice; create {} writable by this account (install -d -o USER -m 700 DIR), or set tag_directory in rsmtp.conf",
                dir.display()
            );
        })
        .ok()
}

/// Keeps the size we advertise and enforce within the hub's
/// `message_size_limit`: postdrop cannot write a bigger queue file, and
/// promising more only turns into a refusal after the whole message was
/// sent. An admin's larger setting is lowered with a warning.
fn clamp_max_size(policy: &mut Policy, message_size_limit: u64) {
    if message_size_limit == 0 || policy.max_size <= message_size_limit {
        return;
    }
    if policy.max_size_set {
        log::warn!(
            "peer {}: max_size {} is above the hub's message_size_limit {message_size_limit}; using {message_size_limit}",
            policy.peer,
            policy.max_size
        );
    }
    policy.max_size = message_size_limit;
}

/// What tells one batch file from another, for the content tags that keep
/// a batch read again from queuing twice (device, inode, change time and
/// size of standard input): another batch with an identical message is
/// another file. Empty when standard input is no regular file (a pipe):
/// then only a quick resend is caught ([`tags::DEFAULT_CONTENT_LIFETIME`]).
fn batch_identity() -> String {
    use std::os::fd::AsFd;
    match nix::sys::stat::fstat(std::io::stdin().as_fd()) {
        Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG => format!(
            "{}:{}:{}.{}:{}",
            st.st_dev, st.st_ino, st.st_mtime, st.st_mtime_nsec, st.st_size
        ),
        _ => String::new(),
    }
}

/// A batch on stdin with nobody to answer: see [`crate::offline`].
fn offline(
    mut session: Session,
    file: &ConfigFile,
    input: &mut impl Input,
) -> Result<(), RunError> {
    let peer = session.settings.policy.peer.clone();
    session.settings.content_tags = Some(batch_identity());
    let notifier = Notifier::new(session.postdrop.clone(), &session.settings.hostname);
    let notices = open_tags(file, &peer);
    let injector = PostdropInjector {
        command: session.postdrop,
        min_free: session.min_free,
    };
    let rejects = crate::rejects::Rejects::new(file.reject_directory.as_deref(), &peer);
    let outcome = crate::offline::receive(
        session.settings,
        injector,
        &notifier,
        notices.as_ref(),
        rejects,
        input,
    )?;
    info!(
        "batch from peer {peer}: accepted={} refused_and_reported={} sender_refused={} to_retry={}{}",
        outcome.summary.accepted,
        outcome.bounced,
        outcome.unreported,
        outcome.retry,
        if outcome.summary.truncated {
            " truncated=1"
        } else {
            ""
        }
    );
    if outcome.summary.truncated {
        return Err(RunError::Truncated);
    }
    if outcome.retry > 0 {
        return Err(RunError::Retry {
            retry: outcome.retry,
            accepted: outcome.summary.accepted,
            bounced: outcome.bounced,
        });
    }
    Ok(())
}

fn receive(
    session: Session,
    input: &mut impl Input,
    output: &mut impl Output,
) -> Result<(), RunError> {
    let peer = session.settings.policy.peer.clone();
    let summary = match session.inject {
        Inject::Postdrop => {
            let injector = PostdropInjector {
                command: session.postdrop,
                min_free: session.min_free,
            };
            Receiver::new(session.settings, injector).run(input, output)
        }
        Inject::Smtp(endpoint) => {
            let ssh_connection = std::env::var("SSH_CONNECTION").ok();
            let injector = SmtpInjector::new(
                endpoint,
                session.queue_directory,
                session.settings.hostname.clone(),
                PeerIdentity::new(&peer, ssh_connection.as_deref()),
                session.min_free,
            );
            Receiver::new(session.settings, injector).run(input, output)
        }
    }
    .inspect_err(|err| {
        log::warn!("peer {peer}: session ended: {err}; an unfinished message was dropped");
    })?;
    info!(
        "disconnect from peer {peer}: accepted={} rejected={} refused_commands={}{}{}",
        summary.accepted,
        summary.rejected,
        summary.refused,
        if summary.truncated {
            " truncated=1"
        } else {
            ""
        },
        if summary.error_limit {
            " error_limit=1"
        } else {
            ""
        }
    );
    if summary.truncated {
        return Err(RunError::Truncated);
    }
    if summary.refused > 0 {
        return Err(RunError::NotAccepted {
            peer,
            refused: summary.refused,
            accepted: summary.accepted,
        });
    }
    Ok(())
}
