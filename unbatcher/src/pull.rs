//! The `pull` verb: a leaf that takes no inbound connection logs in and
//! asks for its mail. The roles turn over: rsmtp is the client, writing the
//! peer's spool as BSMTP transactions on stdout and reading the leaf's
//! replies on stdin, and the leaf's `bsmtp-ssh pull` is the server that
//! injects into its own Postfix.
//!
//! Only the spool of the peer named by the key's forced command is ever
//! read, and only when its policy grants `pull`. A message leaves the spool
//! only after the leaf's `250` for it, with the exactly-once tag, as in
//! `bsmtp-ssh flush` (the same code: [`bsmtp_session::forward`]).

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bsmtp_session::client::ClientSession;
use bsmtp_session::forward::{self, Settings};
use bsmtp_session::idle::{Input, Output};
use bsmtp_session::main_cf::MainCf;
use bsmtp_session::notice::NoticeBouncer;
use bsmtp_session::postdrop::PostdropCommand;
use bsmtp_session::spool::Spool;
use log::info;

use crate::run::RunError;

/// Where the spools are and how long mail may wait in them.
pub struct PullSettings<'a> {
    /// The peer (its spool's name).
    pub peer: &'a str,
    /// The spools' base directory.
    pub spool_directory: &'a Path,
    /// The hub's Postfix config directory.
    pub postfix_config: &'a Path,
    /// How bounces are queued into the hub's Postfix.
    pub postdrop: &'a PostdropCommand,
    /// How long mail may wait before it bounces.
    pub lifetime: Option<Duration>,
    /// Our name in EHLO and in bounces.
    pub hostname: &'a str,
}

/// Both standard streams as one, for the client session.
struct Duplex<'a, I: Input, O: Output> {
    input: &'a mut I,
    output: &'a mut O,
}

impl<I: Input, O: Output> Read for Duplex<'_, I, O> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl<I: Input, O: Output> Write for Duplex<'_, I, O> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

/// Sends the peer its spool over stdin/stdout.
pub fn pull(
    settings: &PullSettings<'_>,
    input: &mut impl Input,
    output: &mut impl Output,
) -> Result<(), RunError> {
    let peer = settings.peer;
    let spool = Spool::new(settings.spool_directory, peer);
    if spool.ids()?.is_empty() {
        info!("pull by peer {peer}: nothing spooled");
        return Ok(());
    }
    let Some(_lock) = spool.lock()? else {
        info!("pull by peer {peer}: another pull of this spool is running");
        return Ok(());
    };
    let ids = spool.ids()?;
    let mut bouncer = NoticeBouncer::new(settings.postdrop.clone(), settings.hostname);
    let lifetime = settings
        .lifetime
        .unwrap_or_else(|| MainCf::load(settings.postfix_config).maximal_queue_lifetime());
    let (ids, expired) = forward::expire(&spool, ids, lifetime, &mut bouncer, SystemTime::now());
    let stream = Duplex { input, output };
    let mut session = ClientSession::start(stream, format!("peer {peer}"), settings.hostname)
        .map_err(|failure| RunError::Pull(failure.to_string()))?;
    let sent = forward::send(
        &spool,
        &ids,
        &mut session,
        &mut bouncer,
        &Settings {
            lifetime,
            window: forward::DEFAULT_WINDOW,
        },
        &mut |_, _| {},
    );
    let _ = session.quit();
    match sent {
        Ok(report) => {
            info!(
                "pull by peer {peer}: delivered={} bounced={} deferred={}",
                report.delivered,
                report.bounced + expired.bounced,
                report.deferred
            );
            Ok(())
        }
        Err((report, failure)) => {
            forward::note_failure(&spool, &spool.ids().unwrap_or_default(), &failure);
            Err(RunError::Pull(format!(
                "{failure} (after delivered={} bounced={})",
                report.delivered, report.bounced
            )))
        }
    }
}
