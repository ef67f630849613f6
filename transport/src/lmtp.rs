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

use bsmtp::reply::Reply;
use bsmtp::status::{Failure, FailureKind};
use bsmtp::tag::Tag;
use bsmtp_session::client::{self, ClientSession};
use bsmtp_session::idle::{IdleReader, IdleWriter};
use bsmtp_session::pins::{self, Pins};
use bsmtp_session::policy::{Policy, SenderPattern};
use bsmtp_session::server::{
    Committed, Delivery, Dialect, Envelope, Injector, Receiver, Refusal, Settings,
};
use bsmtp_session::ssh::{self, ChannelStream, Peer};
use clap::Args;

use crate::run::ConnectArgs;

/// The XFORWARD attributes we take from lmtp(8) (`IDENT`, when sent,
/// names an upstream queue ID: our fallback for the leaf's).
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
    let pins = peer.as_ref().ok().and_then(|p| args.connect.pins(p));
    let receiver = Receiver::new(settings(&name), Hub::new(peer, pins));
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
        // The hub's rsmtp judges routing forms by its own policy for this
        // key; refusing here would hide its opt-in.
        allow_routing_forms: true,
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
    /// Which of the destination's hubs this is ([`ssh::Hub::name`]).
    hub_name: String,
}

/// Where transactions go: the destination, and its failover pins.
struct Route {
    peer: Result<Peer, Failure>,
    pins: Option<Pins>,
}

impl Route {
    /// Opens a session to the first of `hubs` that answers (all the
    /// destination's when `None`).
    fn open(&self, hubs: Option<&[&ssh::Hub]>) -> Result<Session, Failure> {
        let peer = self.peer.as_ref().map_err(Clone::clone)?;
        let all: Vec<&ssh::Hub> = peer.hubs.iter().collect();
        let ssh::Connection {
            session,
            channel,
            relay,
            hub: hub_name,
        } = ssh::connect_to(peer, hubs.unwrap_or(&all), &peer.command)?;
        let hub = ClientSession::start(channel, relay, &crate::deliver::helo_name())?;
        Ok(Session {
            _ssh: session,
            hub,
            hub_name,
        })
    }
}

/// Forwards each transaction to the hub.
struct Hub {
    route: Rc<Route>,
    link: Link,
}

impl Hub {
    fn new(peer: Result<Peer, Failure>, pins: Option<Pins>) -> Self {
        Hub {
            route: Rc::new(Route { peer, pins }),
            link: Rc::new(RefCell::new(None)),
        }
    }

    fn connect(&self) -> Result<(), Failure> {
        if self.link.borrow().is_some() {
            return Ok(());
        }
        let session = self.route.open(None)?;
        *self.link.borrow_mut() = Some(session);
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

    /// Connects if needed; the transaction itself starts on the hub once
    /// the message's first header field is known (see [`Message`]).
    fn start(&mut self, envelope: &Envelope) -> Result<Message, Refusal> {
        self.connect().map_err(|f| refusal(&f))?;
        Ok(Message {
            link: Rc::clone(&self.link),
            route: Rc::clone(&self.route),
            pin_route: pins::Route::new(None, None, "this message"),
            envelope: client::Envelope {
                sender: envelope.sender.clone(),
                recipients: envelope.recipients.clone(),
                size: envelope.size,
                eight_bit: envelope.eight_bit,
                smtputf8: envelope.smtputf8,
                tag: None,
                dsn: envelope.dsn.clone(),
                recipient_dsn: envelope.recipient_dsn.clone(),
            },
            queue_id: envelope.xforward("IDENT").map(str::to_owned),
            held: Some(Vec::new()),
            started: Instant::now(),
        })
    }
}

/// Most bytes held back while the first header field is read.
const MAX_HELD: usize = 16 * 1024;

/// A transaction on its way to the hub.
///
/// Its exactly-once tag is built from the leaf's queue ID, and lmtp(8)
/// does not send that for local mail (XFORWARD IDENT names an upstream
/// queue ID, when there is one). The leaf's Postfix writes it into the
/// message's first header, though: `Received: by leaf (Postfix, ...) id
/// QUEUEID; date` (`... with ESMTP id QUEUEID; date` for mail from smtpd).
/// So the first header field is held back until it is complete, then the
/// transaction starts on the hub with its tag, and the held lines follow.
struct Message {
    link: Link,
    route: Rc<Route>,
    /// This transaction's way over the destination's hubs, by its tag.
    pin_route: pins::Route,
    envelope: client::Envelope,
    queue_id: Option<String>,
    /// Body pieces held back while the first header field is read; `None`
    /// once the transaction is on its way to the hub.
    held: Option<Vec<(Vec<u8>, bool)>>,
    started: Instant,
}

impl Message {
    /// Starts the transaction on the hub, tagged, and sends what was held.
    fn release(&mut self) -> Result<(), Failure> {
        let Some(held) = self.held.as_ref() else {
            return Ok(());
        };
        if let Some(id) = leaf_queue_id(held) {
            self.queue_id = Some(id);
        }
        self.envelope.tag = self.queue_id.as_deref().and_then(|id| {
            let e = &self.envelope;
            Tag::mint(id, &e.sender, &e.recipients, e.size)
        });
        self.pin_route = pins::Route::new(
            self.route.pins.as_ref(),
            self.envelope.tag.as_ref().map(Tag::as_str),
            "this message",
        );
        self.follow_pin()?;
        let held = self.held.take().unwrap_or_default();
        let envelope = self.envelope.clone();
        let hub = self
            .link
            .borrow()
            .as_ref()
            .map(|s| s.hub_name.clone())
            .unwrap_or_default();
        self.pin_route.pin_to(&hub)?;
        self.with_hub(|hub| {
            hub.begin(&envelope);
            held.iter()
                .try_for_each(|(bytes, end_of_line)| hub.piece(bytes, *end_of_line))
        })
    }

    /// A message an earlier try left pinned to another hub than this
    /// session's (its acknowledgement was lost there) goes to that hub:
    /// nothing of it was sent yet, and every earlier transaction of this
    /// session was answered, so the session moves. When that hub does
    /// not answer, the message is refused with a 4xx and waits.
    fn follow_pin(&mut self) -> Result<(), Failure> {
        let Ok(peer) = &self.route.peer else {
            return Ok(());
        };
        if !self.pin_route.was_pinned() {
            return Ok(());
        }
        let hubs = self.pin_route.hubs(peer);
        let current = self.link.borrow().as_ref().map(|s| s.hub_name.clone());
        if current
            .as_ref()
            .is_some_and(|name| hubs.iter().any(|h| h.name == *name))
        {
            return Ok(());
        }
        *self.link.borrow_mut() = None;
        let session = self
            .route
            .open(Some(&hubs))
            .map_err(|failure| self.pin_route.held(peer, &hubs, failure))?;
        *self.link.borrow_mut() = Some(session);
        Ok(())
    }

    /// Whether the first header field is complete with this piece: the
    /// next line starts a field of its own, or the header ends.
    fn first_field_complete(held: &[(Vec<u8>, bool)], bytes: &[u8]) -> bool {
        let lines_done = held.iter().filter(|(_, eol)| *eol).count();
        let at_line_start = held.last().is_none_or(|(_, eol)| *eol);
        lines_done >= 1
            && at_line_start
            && !bytes.first().is_some_and(|b| *b == b' ' || *b == b'\t')
    }
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
        if let Some(held) = self.held.as_mut() {
            let size: usize = held.iter().map(|(b, _)| b.len()).sum();
            if !Self::first_field_complete(held, bytes) && size + bytes.len() <= MAX_HELD {
                held.push((bytes.to_vec(), end_of_line));
                return Ok(());
            }
            self.release().map_err(|f| refusal(&f))?;
        }
        self.with_hub(|hub| hub.piece(bytes, end_of_line))
            .map_err(|f| refusal(&f))
    }

    fn commit(mut self) -> Result<Committed, Refusal> {
        let relay = self.relay();
        let outcome = self
            .release()
            .and_then(|()| self.with_hub(ClientSession::finish));
        let queue_id = self.queue_id.as_deref().unwrap_or("NOQUEUE");
        let recipients = &self.envelope.recipients;
        let delay = self.started.elapsed().as_secs_f64();
        let outcome = match outcome {
            Ok(outcome) => {
                // Every reply read: the hub's answer decides.
                let later = (0..recipients.len())
                    .map(|i| outcome.for_recipient(i))
                    .find(|reply| reply.is_transient())
                    .map(|reply| Failure::new(FailureKind::Remote(reply.clone()), ""));
                self.pin_route.settle(later.as_ref());
                outcome
            }
            Err(failure) => {
                for recipient in recipients {
                    crate::report::delivery(
                        queue_id,
                        recipient,
                        &relay,
                        delay,
                        &Err(failure.clone()),
                    );
                }
                return Err(refusal(&failure));
            }
        };
        let replies: Vec<Reply> = (0..recipients.len())
            .map(|i| outcome.for_recipient(i).clone())
            .collect();
        for (recipient, reply) in recipients.iter().zip(&replies) {
            let result = if reply.code / 100 == 2 {
                Ok(reply.clone())
            } else {
                Err(Failure::new(
                    FailureKind::Remote(reply.clone()),
                    format!("{relay} said: {}", reply.one_line()),
                ))
            };
            crate::report::delivery(queue_id, recipient, &relay, delay, &result);
        }
        Ok(Committed::PerRecipient(replies))
    }

    fn abort(self) {
        // Nothing of it reached the hub yet: the session stays good.
        // Otherwise ending the session is the only way to take back a body
        // half sent.
        if self.held.is_none() {
            *self.link.borrow_mut() = None;
        }
        // Its final dot never went out: this try queued nothing.
        self.pin_route.abandon();
    }
}

/// The leaf's queue ID in the message's first header field, when that is
/// the Received: header the leaf's Postfix wrote: the word after ` id `.
fn leaf_queue_id(held: &[(Vec<u8>, bool)]) -> Option<String> {
    let field: Vec<u8> = held
        .iter()
        .flat_map(|(bytes, eol)| bytes.iter().copied().chain(eol.then_some(b' ')))
        .collect();
    let field = String::from_utf8_lossy(&field);
    let (name, value) = field.split_once(':')?;
    if !name.eq_ignore_ascii_case("Received") || !value.contains("(Postfix") {
        return None;
    }
    let mut words = value.split_whitespace();
    words.find(|w| *w == "id")?;
    let id = words.next()?.trim_end_matches(';');
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(lines: &[&str]) -> Vec<(Vec<u8>, bool)> {
        lines
            .iter()
            .map(|l| (l.as_bytes().to_vec(), true))
            .collect()
    }

    #[test]
    fn the_leafs_queue_id_comes_from_its_received_header() {
        for (lines, id) in [
            (
                &["Received: by leaf.test (Postfix, from userid 0)", "\tid 44F2EE82A4; Wed,  2 Dec 2026 01:43:39 +0000 (UTC)"][..],
                Some("44F2EE82A4"),
            ),
            (
                &["Received: from x (x [10.0.0.1]) by leaf.test (Postfix) with ESMTPS id 4Xq1LongId9z for <b@c>; Wed, 2 Dec"][..],
                Some("4Xq1LongId9z"),
            ),
            (&["Received: from x by other (Exim) id 1abc"][..], None),
            (&["Subject: id 4XYZ (Postfix"][..], None),
        ] {
            assert_eq!(leaf_queue_id(&held(lines)).as_deref(), id, "{lines:?}");
        }
    }

    #[test]
    fn the_first_field_ends_where_the_next_begins() {
        let first = held(&["Received: by leaf.test (Postfix)"]);
        assert!(!Message::first_field_complete(&first, b"\tid 1; date"));
        assert!(Message::first_field_complete(&first, b"From: a@b"));
        assert!(Message::first_field_complete(&first, b""));
        assert!(!Message::first_field_complete(&[], b"Received: x"));
    }
}
