//! The batching mode: `bsmtp-ssh lmtp`, an LMTP server on standard input
//! and output for Postfix's lmtp(8), which reaches it through spawn(8) on a
//! UNIX socket and caches the connection. So one SSH session to the hub
//! carries every message of a cached connection, while Postfix's qmgr
//! keeps the queue, the concurrency, the retries and the bounces.
//!
//! It is the library's server session (LMTP dialect) over an injector that
//! forwards each transaction, pipelined, to the hub's rsmtp through the
//! library's client session, and answers lmtp(8) with each recipient's own
//! fate: a recipient the hub refuses bounces or defers alone. The SSH
//! session opens at the first transaction and ends with the LMTP
//! connection, or after the peer's `idle_timeout` without a command.
//!
//! spawn(8) connects standard error to the socket too: nothing may be
//! written there, so log lines that cannot reach the mail log are dropped.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use bsmtp::extensions::transaction_tag;
use bsmtp::reply::Reply;
use bsmtp::status::{Failure, FailureKind};
use bsmtp_session::client::{self, ClientSession};
use bsmtp_session::idle::{IdleReader, IdleWriter};
use bsmtp_session::policy::{Policy, SenderPattern};
use bsmtp_session::server::{
    Committed, Delivery, Dialect, Envelope, Injector, Receiver, Refusal, Settings,
};
use bsmtp_session::ssh::{self, ChannelStream, Peer};
use clap::Args;

use crate::run::ConnectArgs;

/// The XFORWARD attributes we take from lmtp(8) (`IDENT` is its queue ID).
const XFORWARD: [&str; 7] = ["NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"];

/// Refused commands before the session ends: as Postfix's smtpd.
const ERROR_LIMIT: usize = 20;

/// `bsmtp-ssh lmtp`.
#[derive(Debug, Args)]
pub struct LmtpArgs {
    /// The peer and how to reach it.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Serves one LMTP connection; the exit status is for spawn(8)'s log only.
pub fn run(args: &LmtpArgs) -> u8 {
    bsmtp_session::logging::init(
        "bsmtp-ssh",
        args.verbose,
        bsmtp_session::logging::Fallback::Discard,
        &bsmtp_session::logging::Target {
            postfix_config: None,
            postlog: args.connect.postlog(),
        },
    );
    // A broken config still gets an LMTP session: every transaction is
    // answered with the configuration error, which defers it.
    let peer = args.connect.resolve();
    let idle = peer
        .as_ref()
        .map_or(bsmtp_session::idle::DEFAULT_IDLE_TIMEOUT, |p| {
            p.idle_timeout
        });
    let streams = IdleReader::stdin(idle).and_then(|input| Ok((input, IdleWriter::stdout(idle)?)));
    let Ok((mut input, mut output)) = streams else {
        return sysexits::ExitCode::OsErr as u8;
    };
    let name = peer
        .as_ref()
        .map_or_else(|_| "-".to_owned(), |p| p.name.clone());
    let receiver = Receiver::new(settings(&name), Hub::new(peer));
    match receiver.run(&mut input, &mut output) {
        Ok(_) => 0,
        Err(err) => {
            log::warn!("peer {name}: LMTP session ended: {err}");
            sysexits::ExitCode::IoErr as u8
        }
    }
}

/// The server side's settings: LMTP, every sender (the hub's policy
/// decides), no size limit of our own, XFORWARD, no Received: header (the
/// leaf's Postfix wrote one, the hub's rsmtp writes another).
fn settings(peer: &str) -> Settings {
    let policy = Policy {
        peer: peer.to_owned(),
        allow_sender: vec![SenderPattern::Any],
        allow_recipient: Vec::new(),
        max_size: u64::MAX,
        max_size_set: false,
        max_recipients: usize::MAX,
        hard_error_limit: None,
        check_header_from: false,
    };
    let mut settings = Settings::new(crate::deliver::helo_name(), policy, ERROR_LIMIT);
    settings.dialect = Dialect::Lmtp;
    settings.received_header = false;
    settings.xforward = XFORWARD.iter().map(|&a| a.to_owned()).collect();
    settings
}

/// The SSH session to the hub, shared by the injector and the message in
/// progress; `None` until the first transaction and after a failure.
type Link = Rc<RefCell<Option<Session>>>;

struct Session {
    /// Keeps the SSH session alive while the channel is used.
    _ssh: ssh2::Session,
    hub: ClientSession<ChannelStream>,
}

/// Forwards each transaction to the hub.
struct Hub {
    peer: Result<Peer, Failure>,
    link: Link,
}

impl Hub {
    fn new(peer: Result<Peer, Failure>) -> Self {
        Hub {
            peer,
            link: Rc::new(RefCell::new(None)),
        }
    }

    fn connect(&self) -> Result<(), Failure> {
        if self.link.borrow().is_some() {
            return Ok(());
        }
        let peer = self.peer.as_ref().map_err(Clone::clone)?;
        let ssh::Connection {
            session,
            channel,
            relay,
        } = ssh::connect(peer, &peer.command)?;
        let hub = ClientSession::start(channel, relay, &crate::deliver::helo_name())?;
        *self.link.borrow_mut() = Some(Session { _ssh: session, hub });
        Ok(())
    }
}

/// What the server session hands over: an LMTP reply of the failure's
/// class, with its enhanced code, for every recipient.
fn refusal(failure: &Failure) -> Refusal {
    let code = if failure.is_transient() { 451 } else { 554 };
    Refusal {
        reply: Reply::new(
            code,
            Some(failure.dsn()),
            bsmtp::text::one_line(&failure.text),
        ),
        detail: failure.text.clone(),
    }
}

impl Injector for Hub {
    type Message = Message;

    fn start(&mut self, envelope: &Envelope) -> Result<Message, Refusal> {
        self.connect().map_err(|f| refusal(&f))?;
        let queue_id = envelope.xforward("IDENT").map(str::to_owned);
        let forwarded = client::Envelope {
            sender: envelope.sender.clone(),
            recipients: envelope.recipients.clone(),
            size: envelope.size,
            eight_bit: envelope.eight_bit,
            tag: queue_id.as_deref().and_then(|id| {
                transaction_tag(id, &envelope.sender, &envelope.recipients, envelope.size)
            }),
        };
        if let Some(link) = self.link.borrow_mut().as_mut() {
            link.hub.begin(&forwarded);
        }
        Ok(Message {
            link: Rc::clone(&self.link),
            queue_id: queue_id.unwrap_or_else(|| "NOQUEUE".into()),
            recipients: envelope.recipients.clone(),
            started: Instant::now(),
        })
    }
}

/// A transaction on its way to the hub.
struct Message {
    link: Link,
    queue_id: String,
    recipients: Vec<String>,
    started: Instant,
}

impl Message {
    /// Runs `step` on the hub session; a failure ends the session (the hub
    /// drops a message cut inside DATA), so the next transaction reconnects.
    fn with_hub<T>(
        &self,
        step: impl FnOnce(&mut ClientSession<ChannelStream>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut link = self.link.borrow_mut();
        let result = match link.as_mut() {
            Some(session) => step(&mut session.hub),
            None => Err(Failure::new(
                FailureKind::PeerProtocol,
                "the hub session is gone",
            )),
        };
        if result.is_err() {
            *link = None;
        }
        result
    }

    fn relay(&self) -> String {
        self.link
            .borrow()
            .as_ref()
            .map_or_else(|| "none".to_owned(), |s| s.hub.relay().to_owned())
    }
}

impl Delivery for Message {
    fn queue_id(&self) -> &'static str {
        ""
    }

    fn write_piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), Refusal> {
        self.with_hub(|hub| hub.piece(bytes, end_of_line))
            .map_err(|f| refusal(&f))
    }

    fn commit(self) -> Result<Committed, Refusal> {
        let relay = self.relay();
        let outcome = self.with_hub(ClientSession::finish);
        let delay = self.started.elapsed().as_secs_f64();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(failure) => {
                for recipient in &self.recipients {
                    crate::report::delivery(
                        &self.queue_id,
                        recipient,
                        &relay,
                        delay,
                        &Err(failure.clone()),
                    );
                }
                return Err(refusal(&failure));
            }
        };
        let replies: Vec<Reply> = (0..self.recipients.len())
            .map(|i| outcome.for_recipient(i).clone())
            .collect();
        for (recipient, reply) in self.recipients.iter().zip(&replies) {
            let result = if reply.code / 100 == 2 {
                Ok(reply.clone())
            } else {
                Err(Failure::new(
                    FailureKind::Remote(reply.clone()),
                    format!("{relay} said: {}", reply.one_line()),
                ))
            };
            crate::report::delivery(&self.queue_id, recipient, &relay, delay, &result);
        }
        Ok(Committed::PerRecipient(replies))
    }

    fn abort(self) {
        // Ending the session is the only way to take back a body half sent.
        *self.link.borrow_mut() = None;
    }
}
