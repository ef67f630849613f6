//! `bsmtp-ssh enqueue`: pipe(8) hands over a message for a peer that is
//! not reached now; it goes into the peer's spool, for `flush` (we connect
//! later) or the peer's `pull` (it fetches its own mail).
//!
//! Exit 0 means the spool file is on disk: written, fsynced, renamed into
//! place and its directory entry fsynced. Everything else defers, so
//! Postfix keeps the message (a malformed address bounces, as in deliver).

use std::io::{Read, Write};
use std::path::PathBuf;

use bsmtp::dsn::MailDsn;
use bsmtp::status::{Failure, FailureKind};
use bsmtp_session::policy::check_peer_name;
use bsmtp_session::spool::{NewMessage, Spool, SpoolError};
use clap::Args as ClapArgs;

use crate::config::ConfigFile;

/// `bsmtp-ssh enqueue`.
#[derive(Debug, ClapArgs)]
pub struct EnqueueArgs {
    /// Configuration file (its `spool_directory`, `min_free`).
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The peer whose spool takes the message (Postfix's ${nexthop}); it
    /// needs no [peer.NAME] section when the peer pulls.
    #[arg(long, value_name = "NAME")]
    pub peer: String,
    /// The envelope, from pipe(8)'s macros.
    #[command(flatten)]
    pub envelope: crate::run::EnvelopeArgs,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Runs `enqueue`; prints pipe(8)'s status line; returns the exit status.
pub fn run(args: &EnqueueArgs, content: &mut impl Read, out: &mut impl Write) -> u8 {
    let file = ConfigFile::load(&args.config);
    bsmtp_session::logging::init(
        "bsmtp-ssh",
        args.verbose,
        bsmtp_session::logging::Fallback::Buffer,
        &bsmtp_session::logging::Target {
            postfix_config: None,
            postlog: file.as_ref().ok().and_then(|f| f.postlog.clone()),
        },
    );
    let result = file
        .map_err(|text| Failure::new(FailureKind::Config, text))
        .and_then(|file| enqueue(args, &file, content));
    let line = match &result {
        Ok((spool, id)) => format!("2.0.0 spooled for {} as {id}", spool.peer()),
        Err(failure) => failure.to_string(),
    };
    let _ = writeln!(out, "{}", bsmtp::text::one_line(&line));
    let _ = out.flush();
    bsmtp_session::logging::flush_buffered();
    match result {
        Ok(_) => 0,
        Err(failure) => failure.exit_code() as u8,
    }
}

fn enqueue(
    args: &EnqueueArgs,
    file: &ConfigFile,
    content: &mut impl Read,
) -> Result<(Spool, String), Failure> {
    check_peer_name(&args.peer).map_err(|text| Failure::new(FailureKind::Config, text))?;
    // Deferred, not bounced: pipe(8)'s user= is fixed, and the mail waits.
    file.require_spool_owner("enqueue")
        .map_err(|text| Failure::new(FailureKind::Local, text))?;
    let envelope = args.envelope.envelope().check()?;
    let spool = Spool::new(&file.spool_directory(), &args.peer);
    let message = NewMessage {
        sender: envelope.sender.clone(),
        recipients: envelope.recipients.clone(),
        queue_id: envelope.queue_id.clone(),
        dsn: MailDsn {
            ret: None,
            envid: envelope.envid.clone(),
        },
        recipient_dsn: Vec::new(),
    };
    let id = spool
        .enqueue(&message, content, file.min_free(), args.envelope.size.unwrap_or(0))
        .map_err(|err| match err {
            SpoolError::NoRoom { .. } => Failure::new(FailureKind::Storage, err.to_string()),
            SpoolError::BadAddress(_) => Failure::new(FailureKind::BadEnvelope, err.to_string()),
            SpoolError::Io(_) => Failure::new(
                FailureKind::Local,
                format!(
                    "cannot spool for peer {}: {err} (spool_directory must exist and be writable by this account)",
                    args.peer
                ),
            ),
        })?;
    let queue_id = envelope.queue_id.as_deref().unwrap_or("NOQUEUE");
    for recipient in &envelope.recipients {
        log::info!(
            "{queue_id}: to=<{recipient}>, relay=spool:{}, status=spooled ({id})",
            args.peer
        );
    }
    Ok((spool, id))
}
