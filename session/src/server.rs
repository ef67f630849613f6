//! The receiving role: a stream of transactions in, one reply per command
//! out, each accepted message handed to an [`Injector`] (Postfix's
//! `smtpd_proxy.c` is the model: the next hop may refuse the message with a
//! code of its own, or each recipient on its own).
//!
//! Two dialects. BSMTP (rsmtp): the sender never waits for 354, so a DATA
//! that we refuse still has its body coming: it is read and dropped; DATA
//! gets 354 or a refusal, and only after a 354 does the terminating dot get
//! a reply of its own. LMTP (the bridge Postfix's lmtp(8) talks to): the
//! client sends the body only after 354, and the dot gets one reply per
//! accepted recipient (RFC 2033).
//!
//! Either way a `250` after the dot means the injector committed the
//! message, and a stream that ends before the dot injects nothing of it.
//! A transaction that carries an exactly-once tag this session has already
//! committed ([`crate::tags`]) is answered with the original queue ID and
//! injected nothing.

use std::fmt::Write as _;
use std::io::{self, Read, Write};

use bsmtp::codec::{Command, CommandError, Decoder, Event, Param};
use bsmtp::dsn::{parse_envid, parse_notify, parse_orcpt, MailDsn, RcptDsn, Ret};
use bsmtp::extensions::{valid_tag, Extensions, TRANSACTION_TAG};
use bsmtp::reply::{EnhancedCode, Reply};
use log::{info, warn};
use sha1::{Digest, Sha1};

use crate::policy::Policy;
use crate::tags::{Claim, TagClaim, TagStore};

/// Why the next hop did not take a message: the reply the sender gets
/// (the next hop's own code, not a blanket 451) and what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The reply for the sender.
    pub reply: Reply,
    /// What happened, for the log.
    pub detail: String,
}

impl Refusal {
    /// A refusal that says only "try again later".
    pub fn temporary(detail: impl Into<String>) -> Self {
        Refusal {
            reply: reply(
                451,
                (4, 3, 0),
                "Error: queue file write error; try again later",
            ),
            detail: detail.into(),
        }
    }
}

/// What the next hop said when a message was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The whole message is the next hop's, under this queue ID.
    Queued(String),
    /// Each recipient's own fate, in the envelope's order (a next hop that
    /// answers per recipient, as a hub behind the LMTP bridge does).
    PerRecipient(Vec<Reply>),
}

/// A message being handed over to the next hop (postdrop, a hub).
pub trait Delivery {
    /// The next hop's ID for this message, if it gave one before commit.
    fn queue_id(&self) -> &str;
    /// Adds a piece of a content line (no line terminator).
    fn write_piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), Refusal>;
    /// Makes the message the next hop's responsibility.
    fn commit(self) -> Result<Committed, Refusal>;
    /// Drops the message; nothing of it may be delivered.
    fn abort(self);
}

/// Starts deliveries.
pub trait Injector {
    /// The message type this injector hands over.
    type Message: Delivery;
    /// Starts handing over a message with this envelope (addresses in
    /// their SMTP form, as received; see [`bsmtp::address`]).
    fn start(&mut self, envelope: &Envelope) -> Result<Self::Message, Refusal>;

    /// Whether the next hop has room for a message of `size` bytes (when
    /// the sender said); a refusal answers MAIL FROM, before any content
    /// is sent. By default there is always room.
    fn room(&self, size: Option<u64>) -> Result<(), Refusal> {
        let _ = size;
        Ok(())
    }

    /// Whether the next hop judges each recipient before DATA (an smtpd
    /// behind rsmtp's fast path): then MAIL's and RCPT's replies are held
    /// back until it did ([`Injector::screen`]), so a recipient it refuses
    /// gets the next hop's own reply in its RCPT's place. By default no:
    /// postdrop takes any recipient.
    fn screens_recipients(&self) -> bool {
        false
    }

    /// Asks the next hop about `envelope.recipients[from..]` (MAIL and the
    /// recipients before `from` were asked about before, in this same
    /// transaction): for each, `None` when it takes the recipient, else its
    /// refusal. `Err` refuses the whole transaction (MAIL refused, the
    /// next hop unreachable). Called only when
    /// [`Injector::screens_recipients`].
    fn screen(&mut self, envelope: &Envelope, from: usize) -> Result<Vec<Option<Reply>>, Refusal> {
        Ok(vec![None; envelope.recipients.len().saturating_sub(from)])
    }

    /// [`Injector::screen`] when DATA comes next: the injector may send
    /// DATA along (a round trip saved) and keep its answer for
    /// [`Injector::start`]; [`Injector::reset`] must then undo it.
    fn screen_before_data(
        &mut self,
        envelope: &Envelope,
        from: usize,
    ) -> Result<Vec<Option<Reply>>, Refusal> {
        self.screen(envelope, from)
    }

    /// Forgets a transaction that was screened but will not be started
    /// (RSET, no recipient left, a retry answered from the tag store).
    fn reset(&mut self) {}
}

/// The queue ID of a message whose next hop names it only at commit (an
/// smtpd says "queued as" after the dot), as Postfix's own logs say it.
pub const NOQUEUE: &str = "NOQUEUE";

/// The envelope of one accepted transaction.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Envelope sender; empty for `<>`.
    pub sender: String,
    /// Accepted recipients.
    pub recipients: Vec<String>,
    /// The sender declared 8-bit content (`BODY=8BITMIME`).
    pub eight_bit: bool,
    /// The sender declared UTF-8 addresses (`SMTPUTF8`).
    pub smtputf8: bool,
    /// The size the sender declared (`SIZE=`).
    pub size: Option<u64>,
    /// The exactly-once tag (`XTXID=`).
    pub tag: Option<String>,
    /// The DSN request of the message (`RET=`, `ENVID=`).
    pub dsn: MailDsn,
    /// The DSN request of each recipient (`NOTIFY=`, `ORCPT=`), in the
    /// order of `recipients`.
    pub recipient_dsn: Vec<RcptDsn>,
    /// The name the client gave in EHLO/HELO/LHLO.
    pub helo: Option<String>,
    /// What the client forwarded with XFORWARD (`IDENT` is the sender's
    /// queue ID), upper-case names.
    pub xforward: Vec<(String, String)>,
}

impl Envelope {
    /// An XFORWARD attribute (`IDENT`, `NAME`...).
    pub fn xforward(&self, name: &str) -> Option<&str> {
        self.xforward
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// RFC 2442 Batch SMTP (rsmtp).
    Bsmtp,
    /// RFC 2033 LMTP (the bridge behind Postfix's lmtp(8)).
    Lmtp,
}

/// Per-session facts that go into replies and trace headers.
#[derive(Debug)]
pub struct Settings {
    /// Our host name, for EHLO and Received:.
    pub hostname: String,
    /// The peer's rules.
    pub policy: Policy,
    /// Refused commands after which the session ends with 421, counted
    /// since the last accepted message (Postfix's
    /// `smtpd_hard_error_limit`).
    pub error_limit: usize,
    /// BSMTP or LMTP.
    pub dialect: Dialect,
    /// Put our Received: header on top of each message (a bridge that
    /// only forwards leaves that to the hub).
    pub received_header: bool,
    /// Take XFORWARD from the client, with these attribute names.
    pub xforward: Vec<String>,
    /// Remember committed transaction tags here (and announce
    /// [`TRANSACTION_TAG`]).
    pub tags: Option<TagStore>,
    /// Tag a message that comes without a tag by its content (sender,
    /// recipients, body) at the dot: a batch read again after a failure
    /// then queues nothing twice (offline rsmtp). Needs `tags`.
    pub content_tags: bool,
}

impl Settings {
    /// Settings for `policy`'s peer with our defaults: BSMTP, our Received:
    /// header, no XFORWARD, no tag store.
    pub fn new(hostname: String, policy: Policy, error_limit: usize) -> Self {
        Settings {
            hostname,
            policy,
            error_limit,
            dialect: Dialect::Bsmtp,
            received_header: true,
            xforward: Vec::new(),
            tags: None,
            content_tags: false,
        }
    }

    /// What our EHLO/LHLO reply announces.
    pub fn extensions(&self) -> Extensions {
        Extensions {
            pipelining: true,
            // u64::MAX: no limit of our own (a bridge leaves it to the hub).
            size: Some(if self.policy.max_size == u64::MAX {
                0
            } else {
                self.policy.max_size
            }),
            eight_bit_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            dsn: true,
            xforward: self.xforward.clone(),
            transaction_tag: self.tags.is_some(),
        }
    }
}

/// Warnings logged per session; the rest are counted and summed up at the
/// end, so a peer sending garbage cannot flood the hub's log.
const MAX_WARNINGS: usize = 10;

enum Body<M> {
    /// Not in DATA.
    Idle,
    /// 354 given; content goes to the message.
    Accepting {
        message: M,
        trace: Trace,
        recipients: usize,
        claim: Option<TagClaim>,
        /// The content hash, when the message is tagged by its content.
        content: Option<Box<Sha1>>,
    },
    /// Content is read and dropped. `reply` is the answer due at the dot,
    /// if the DATA command itself was accepted (for each recipient in LMTP).
    Discarding {
        reply: Option<Reply>,
        recipients: usize,
    },
    /// A retry of a transaction already committed under `queue_id`: its
    /// content is read and dropped, the dot is answered as the first time.
    Duplicate { queue_id: String, recipients: usize },
}

/// What we log about an accepted message, gathered as it streams by: the
/// facts pickup(8) logs too (sender, Message-ID, size), so an admin can
/// match our maildrop queue ID with the queue ID pickup gives the message.
struct Trace {
    size: u64,
    sender: String,
    nrcpt: usize,
    in_header: bool,
    at_line_start: bool,
    message_id: Option<String>,
    /// Every From: header, unfolded (bounded), for the peer's header check.
    from: Vec<String>,
    /// The header being read is a From: header.
    in_from: bool,
}

/// Longest Message-ID we keep for the log.
const MAX_MESSAGE_ID: usize = 256;

/// Longest From: header we keep; RFC 5322 lines stop at 998 bytes, and a
/// header folded over more than a few lines is not worth reading further.
const MAX_FROM: usize = 4096;

impl Trace {
    fn new(envelope: &Envelope) -> Self {
        Trace {
            size: 0,
            sender: envelope.sender.clone(),
            nrcpt: envelope.recipients.len(),
            in_header: true,
            at_line_start: true,
            message_id: None,
            from: Vec::new(),
            in_from: false,
        }
    }

    fn observe(&mut self, bytes: &[u8], end_of_line: bool) {
        self.size += bytes.len() as u64 + if end_of_line { 2 } else { 0 };
        if self.in_header {
            self.observe_header(bytes, end_of_line);
        }
        self.at_line_start = end_of_line;
    }

    fn observe_header(&mut self, bytes: &[u8], end_of_line: bool) {
        const MESSAGE_ID: &[u8] = b"message-id:";
        const FROM: &[u8] = b"from:";
        let starts = |name: &[u8]| {
            bytes.len() >= name.len() && bytes[..name.len()].eq_ignore_ascii_case(name)
        };
        if !self.at_line_start || bytes.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // The rest of a long line, or a folded continuation.
            if self.in_from {
                self.extend_from(bytes);
            }
            return;
        }
        self.in_from = false;
        if bytes.is_empty() && end_of_line {
            self.in_header = false;
        } else if self.message_id.is_none() && bytes.len() > MESSAGE_ID.len() && starts(MESSAGE_ID)
        {
            let value =
                &bytes[MESSAGE_ID.len()..bytes.len().min(MESSAGE_ID.len() + MAX_MESSAGE_ID)];
            let value = String::from_utf8_lossy(value);
            self.message_id = Some(bsmtp::text::one_line(value.trim()));
        } else if starts(FROM) {
            self.in_from = true;
            self.from.push(String::new());
            self.extend_from(&bytes[FROM.len()..]);
        }
    }

    fn extend_from(&mut self, bytes: &[u8]) {
        if let Some(from) = self.from.last_mut() {
            let room = MAX_FROM.saturating_sub(from.len());
            from.push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(room)]));
        }
    }

    /// The first From: address the peer may not use, if the policy checks
    /// headers. Without a From: header Postfix's cleanup adds one from the
    /// envelope sender, which was checked already.
    fn refused_from(&self, policy: &Policy) -> Option<String> {
        if !policy.check_header_from {
            return None;
        }
        for header in &self.from {
            let addresses = bsmtp::address::header_addresses(header);
            if addresses.is_empty() {
                return Some(bsmtp::text::one_line(header.trim()));
            }
            if let Some(bad) = addresses
                .into_iter()
                .find(|a| a.is_empty() || !policy.sender_allowed(&bsmtp::address::to_internal(a)))
            {
                return Some(bad);
            }
        }
        None
    }
}

/// Bytes read from the session at a time: large reads keep a 100 MB body
/// moving with few system calls, and memory stays bounded.
const READ_SIZE: usize = 256 * 1024;

/// Counts of a finished session, for the log and the exit status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Messages committed.
    pub accepted: usize,
    /// Transactions refused or failed.
    pub rejected: usize,
    /// Commands answered with a 4xx or 5xx reply (a refused recipient
    /// counts, even in a message that was accepted).
    pub refused: usize,
    /// The stream ended inside DATA.
    pub truncated: bool,
    /// The session ended with 421 after too many errors.
    pub error_limit: bool,
    /// QUIT was seen.
    pub quit: bool,
    /// Warnings not logged (over the per-session budget).
    pub warnings_suppressed: usize,
}

/// One session's state.
pub struct Receiver<I: Injector> {
    settings: Settings,
    injector: I,
    envelope: Option<Envelope>,
    helo: Option<String>,
    body: Body<I::Message>,
    summary: Summary,
    /// Refused commands since the last accepted message.
    errors: usize,
    /// Warnings logged so far.
    warnings: usize,
    /// XFORWARD attributes for the next transaction.
    forwarded: Vec<(String, String)>,
    /// Replies held back while the next hop has not judged the open
    /// transaction's recipients (see [`Injector::screens_recipients`]).
    held: Vec<Reply>,
    /// Where in `held` the replies of the recipients not yet screened
    /// are, in the order of `envelope.recipients[screened..]`.
    held_rcpt: Vec<usize>,
    /// Recipients of the open envelope the next hop has judged.
    screened: usize,
}

fn reply(code: u16, dsn: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(dsn.0, dsn.1, dsn.2)), text)
}

impl<I: Injector> Receiver<I> {
    /// A new session for the peer in `settings`.
    pub fn new(settings: Settings, injector: I) -> Self {
        Receiver {
            settings,
            injector,
            envelope: None,
            helo: None,
            body: Body::Idle,
            summary: Summary::default(),
            errors: 0,
            warnings: 0,
            forwarded: Vec::new(),
            held: Vec::new(),
            held_rcpt: Vec::new(),
            screened: 0,
        }
    }

    /// Logs a warning about the peer, within the session's budget.
    fn warn(&mut self, text: &str) {
        self.warnings += 1;
        if self.warnings <= MAX_WARNINGS {
            warn!("peer {}: {text}", self.settings.policy.peer);
        } else {
            self.summary.warnings_suppressed += 1;
        }
    }

    /// Reads BSMTP from `input` until EOF or QUIT, writing replies to
    /// `output`. Replies are flushed whenever we are about to wait for more
    /// input, so a pipelining sender sees them without deadlock.
    pub fn run(mut self, input: &mut impl Read, output: &mut impl Write) -> io::Result<Summary> {
        let result = self.session(input, output);
        // However the session ended (EOF, a read or write error, the error
        // limit), a message still open has not been acknowledged: drop it.
        self.end_of_input();
        if self.summary.warnings_suppressed > 0 {
            warn!(
                "peer {}: {} more warnings in this session not logged",
                self.settings.policy.peer, self.summary.warnings_suppressed
            );
        }
        result.map(|()| self.summary)
    }

    fn session(&mut self, input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
        let mut decoder = Decoder::new();
        let mut buf: Vec<u8> = Vec::with_capacity(READ_SIZE);
        let mut start = 0;
        let mut out = Vec::new();
        if self.settings.dialect == Dialect::Lmtp {
            // An LMTP client waits for the server to speak first.
            Reply::new(
                220,
                None,
                format!("{} LMTP bsmtp-ssh", self.settings.hostname),
            )
            .encode(&mut out);
        }
        let mut chunk = vec![0u8; READ_SIZE];
        loop {
            while let Some((used, event)) = decoder.decode(&buf[start..]) {
                start += used;
                self.handle(event, &mut out);
                if self.summary.quit {
                    self.release(&mut out);
                    return write_replies(output, &out);
                }
                self.lmtp_refused_data(&mut decoder);
            }
            // About to wait for the client, who may be waiting for these
            // replies: what is held back must be judged and sent now.
            self.screen_held(&mut out, false);
            write_replies(output, &out)?;
            out.clear();
            // Keep only the undecoded tail; the buffer never holds more than
            // one unfinished line or body piece.
            buf.drain(..start);
            start = 0;
            match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        loop {
            match decoder.decode_eof(&buf[start..]) {
                Ok(Some((used, event))) => {
                    start += used;
                    self.handle(event, &mut out);
                    if self.summary.quit {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.summary.truncated = true;
                    break;
                }
            }
        }
        self.release(&mut out);
        write_replies(output, &out)
    }

    /// Asks the next hop about the recipients whose replies are held, puts
    /// its refusals in their place, and sends every held reply.
    fn screen_held(&mut self, out: &mut Vec<u8>, before_data: bool) {
        if let Some(mut envelope) = self.envelope.take() {
            // A retry of a committed transaction is answered from the tag
            // store at DATA: the next hop need not hear of it.
            let retry = match (&self.settings.tags, &envelope.tag) {
                (Some(tags), Some(tag)) => tags.committed(tag).is_some(),
                _ => false,
            };
            if !retry && envelope.recipients.len() > self.screened {
                let verdicts = if before_data {
                    self.injector.screen_before_data(&envelope, self.screened)
                } else {
                    self.injector.screen(&envelope, self.screened)
                };
                let fresh = envelope.recipients.split_off(self.screened);
                let mut fresh_dsn = envelope.recipient_dsn.split_off(self.screened);
                fresh_dsn.resize_with(fresh.len(), RcptDsn::default);
                let verdicts = match verdicts {
                    Ok(verdicts) => verdicts,
                    Err(refusal) => {
                        self.warn(&format!(
                            "next hop refused the transaction: {}",
                            refusal.detail
                        ));
                        vec![Some(refusal.reply); fresh.len()]
                    }
                };
                for (k, (recipient, dsn)) in fresh.into_iter().zip(fresh_dsn).enumerate() {
                    match verdicts.get(k).cloned().flatten() {
                        None => {
                            envelope.recipients.push(recipient);
                            envelope.recipient_dsn.push(dsn);
                        }
                        Some(refusal) => {
                            // Counted here: it was held as a 250.
                            self.summary.refused += 1;
                            self.errors += 1;
                            if let Some(&at) = self.held_rcpt.get(k) {
                                self.held[at] = refusal;
                            }
                        }
                    }
                }
                self.screened = envelope.recipients.len();
            }
            self.envelope = Some(envelope);
        }
        self.release(out);
    }

    /// Sends the held replies as they are.
    fn release(&mut self, out: &mut Vec<u8>) {
        for reply in self.held.drain(..) {
            reply.encode(out);
        }
        self.held_rcpt.clear();
    }

    /// Whether replies are held back now: the next hop screens recipients
    /// and a transaction is open.
    fn holding(&self) -> bool {
        self.envelope.is_some() && !self.summary.quit && self.injector.screens_recipients()
    }

    /// Forgets the open envelope (and the next hop's transaction for it).
    fn drop_envelope(&mut self) {
        if self.envelope.take().is_some() {
            self.injector.reset();
        }
        self.screened = 0;
    }

    /// An LMTP client sends no body after a refused DATA: read commands.
    fn lmtp_refused_data(&mut self, decoder: &mut Decoder) {
        if self.settings.dialect == Dialect::Lmtp
            && decoder.in_data()
            && matches!(self.body, Body::Discarding { reply: None, .. })
        {
            decoder.cancel_data();
            self.body = Body::Idle;
        }
    }

    /// The stream ended: whatever message was open is dropped.
    fn end_of_input(&mut self) {
        if let Body::Accepting { message, .. } = std::mem::replace(&mut self.body, Body::Idle) {
            // (A tag claim held for it is released with it.)
            warn!(
                "{}: lost connection inside DATA from peer {}: message dropped, nothing delivered",
                message.queue_id(),
                self.settings.policy.peer
            );
            message.abort();
            self.summary.truncated = true;
            self.summary.rejected += 1;
        }
    }

    fn handle(&mut self, event: Event<'_>, out: &mut Vec<u8>) {
        let is_rcpt = matches!(event, Event::Command(Command::Rcpt { .. }));
        if matches!(event, Event::Command(Command::Data)) {
            // The next hop judges the recipients before DATA is answered.
            self.screen_held(out, true);
        }
        let answers = match event {
            Event::Command(command) => vec![self.command(command)],
            Event::BodyPiece { bytes, end_of_line } => {
                self.body_piece(bytes, end_of_line);
                Vec::new()
            }
            Event::DataEnd => self.data_end(),
            Event::Invalid(error) => vec![self.invalid(&error)],
            Event::Skipped => Vec::new(),
        };
        let holding = self.holding();
        if !holding {
            self.release(out);
        }
        for answer in &answers {
            if holding {
                if is_rcpt && answer.code == 250 {
                    self.held_rcpt.push(self.held.len());
                }
                self.held.push(answer.clone());
            } else {
                answer.encode(out);
            }
            if answer.is_transient() || answer.is_permanent() {
                self.summary.refused += 1;
                self.errors += 1;
            }
        }
        // As Postfix's smtpd: after too many errors without a message
        // delivered, say so and hang up; whatever is open is dropped.
        if self.errors >= self.settings.error_limit && !self.summary.quit {
            self.warn(&format!(
                "too many errors ({}) after {} accepted messages: ending the session",
                self.errors, self.summary.accepted
            ));
            self.release(out);
            reply(
                421,
                (4, 7, 0),
                format!("{} Error: too many errors", self.settings.hostname),
            )
            .encode(out);
            self.summary.error_limit = true;
            self.summary.quit = true;
        }
    }

    fn invalid(&mut self, error: &CommandError) -> Reply {
        self.warn(&error.to_string());
        error.reply()
    }

    fn command(&mut self, command: Command) -> Reply {
        match command {
            Command::Ehlo(name) | Command::Lhlo(name) => {
                self.drop_envelope();
                let lines = self
                    .settings
                    .extensions()
                    .reply_lines(format!("{} greets {name}", self.settings.hostname));
                self.helo = Some(name);
                Reply {
                    code: 250,
                    enhanced: None,
                    lines,
                }
            }
            Command::Xforward(params) => self.xforward(params),
            Command::Helo(name) => {
                self.drop_envelope();
                self.helo = Some(name);
                Reply::new(250, None, self.settings.hostname.clone())
            }
            Command::Mail { from, params } => self.mail(from, &params),
            Command::Rcpt { to, params } => self.rcpt(to, &params),
            Command::Data => self.data(),
            Command::Rset => {
                self.drop_envelope();
                reply(250, (2, 0, 0), "Ok")
            }
            Command::Noop => reply(250, (2, 0, 0), "Ok"),
            Command::Quit => {
                self.summary.quit = true;
                reply(221, (2, 0, 0), "Bye")
            }
        }
    }

    /// XFORWARD: facts about the original client for the next
    /// transaction, when we announced it (Postfix's lmtp(8) sends them).
    fn xforward(&mut self, params: Vec<Param>) -> Reply {
        if self.settings.xforward.is_empty() {
            return reply(502, (5, 5, 1), "Error: command not implemented");
        }
        for Param { keyword, value } in params {
            if !self.settings.xforward.contains(&keyword) {
                return reply(501, (5, 5, 4), format!("Bad XFORWARD attribute {keyword}"));
            }
            let value = value.unwrap_or_default();
            self.forwarded.retain(|(name, _)| *name != keyword);
            self.forwarded.push((keyword, value));
        }
        reply(250, (2, 0, 0), "Ok")
    }

    fn mail(&mut self, from: String, params: &[Param]) -> Reply {
        if self.envelope.is_some() {
            return reply(503, (5, 5, 1), "Error: nested MAIL command");
        }
        let policy = &self.settings.policy;
        let mut envelope = Envelope {
            helo: self.helo.clone(),
            // XFORWARD applies to one transaction.
            xforward: std::mem::take(&mut self.forwarded),
            ..Envelope::default()
        };
        for param in params {
            match (param.keyword.as_str(), param.value.as_deref()) {
                ("SIZE", Some(size)) => match size.parse::<u64>() {
                    Ok(size) if size > policy.max_size => return too_big(&policy.peer),
                    Ok(size) => envelope.size = Some(size),
                    Err(_) => return reply(501, (5, 5, 4), "Bad SIZE parameter"),
                },
                (TRANSACTION_TAG, Some(tag)) if self.settings.tags.is_some() && valid_tag(tag) => {
                    envelope.tag = Some(tag.to_owned());
                }
                ("BODY", Some(body)) if body.eq_ignore_ascii_case("8BITMIME") => {
                    envelope.eight_bit = true;
                }
                ("BODY", Some(body)) if body.eq_ignore_ascii_case("7BIT") => {}
                ("SMTPUTF8", None) => envelope.smtputf8 = true,
                ("RET", Some(ret)) => match Ret::parse(ret) {
                    Some(ret) if envelope.dsn.ret.is_none() => envelope.dsn.ret = Some(ret),
                    _ => return reply(501, (5, 5, 4), "Bad RET parameter"),
                },
                ("ENVID", Some(envid)) => match parse_envid(envid) {
                    Some(envid) if envelope.dsn.envid.is_none() => envelope.dsn.envid = Some(envid),
                    _ => return reply(501, (5, 5, 4), "Bad ENVID parameter"),
                },
                _ => {
                    return reply(
                        555,
                        (5, 5, 4),
                        format!("Unsupported MAIL parameter {}", param.keyword),
                    )
                }
            }
        }
        // Policy speaks of mailboxes: `"alice"@leaf.test` is alice@leaf.test.
        if !policy.sender_allowed(&bsmtp::address::to_internal(&from)) {
            let peer = policy.peer.clone();
            self.warn(&format!(
                "reject: MAIL FROM:<{from}>: sender not allowed for this peer"
            ));
            self.summary.rejected += 1;
            return reply(
                553,
                (5, 7, 1),
                format!("<{from}>: Sender address not allowed for peer {peer}"),
            );
        }
        if let Err(refusal) = self.injector.room(envelope.size) {
            self.warn(&format!("reject: MAIL FROM:<{from}>: {}", refusal.detail));
            return refusal.reply;
        }
        envelope.sender = from;
        self.envelope = Some(envelope);
        self.screened = 0;
        reply(250, (2, 1, 0), "Ok")
    }

    fn rcpt(&mut self, to: String, params: &[Param]) -> Reply {
        let max = self.settings.policy.max_recipients;
        let Some(envelope) = self.envelope.as_mut() else {
            return reply(503, (5, 5, 1), "Error: need MAIL command");
        };
        let mut dsn = RcptDsn::default();
        for param in params {
            match (param.keyword.as_str(), param.value.as_deref()) {
                ("NOTIFY", Some(notify)) if dsn.notify.is_none() => match parse_notify(notify) {
                    Some(notify) => dsn.notify = Some(notify),
                    None => return reply(501, (5, 5, 4), "Bad NOTIFY parameter"),
                },
                ("ORCPT", Some(orcpt)) if dsn.orcpt.is_none() => match parse_orcpt(orcpt) {
                    Some(orcpt) => dsn.orcpt = Some(orcpt),
                    None => return reply(501, (5, 5, 4), "Bad ORCPT parameter syntax"),
                },
                _ => {
                    return reply(
                        555,
                        (5, 5, 4),
                        format!("Unsupported RCPT parameter {}", param.keyword),
                    )
                }
            }
        }
        if to.is_empty() || !to.contains('@') {
            return reply(
                501,
                (5, 1, 3),
                format!("<{to}>: Recipient address must be user@domain"),
            );
        }
        // The permanent refusal first: a recipient that is never allowed
        // must bounce now, not be deferred for the count and tried again.
        if let Some((warning, refused)) = Self::refused_recipient(&self.settings.policy, &to) {
            self.warn(&warning);
            return refused;
        }
        if envelope.recipients.len() >= max {
            return reply(452, (4, 5, 3), "Error: too many recipients");
        }
        envelope.recipients.push(to);
        envelope.recipient_dsn.push(dsn);
        reply(250, (2, 1, 5), "Ok")
    }

    /// The 554 for a recipient the peer's policy refuses, judged on the
    /// internal form (what trivial-rewrite(8) will resolve), and the
    /// warning that tells the hub's admin why.
    fn refused_recipient(policy: &Policy, to: &str) -> Option<(String, Reply)> {
        use crate::policy::RecipientRefusal;
        let refusal = policy
            .check_recipient(&bsmtp::address::to_internal(to))
            .err()?;
        let peer = &policy.peer;
        let (log, text) = match refusal {
            RecipientRefusal::RoutingForm(form) => {
                let (c, parameter) = (form.character(), form.postfix_parameter());
                (
                    format!(
                        "reject: RCPT TO:<{to}>: '{c}' in the local part routes elsewhere \
                         (Postfix {parameter}); set allow_routing_forms = true in the \
                         [peer.{peer}] section of the config file to let this peer use \
                         routing forms"
                    ),
                    format!(
                        "<{to}>: Recipient address rejected: '{c}' in the local part \
                         routes elsewhere (Postfix {parameter}); not allowed for peer \
                         {peer} without allow_routing_forms"
                    ),
                )
            }
            RecipientRefusal::NotAllowed => (
                format!("reject: RCPT TO:<{to}>: recipient not allowed for this peer"),
                format!("<{to}>: Recipient address rejected: not allowed for peer {peer}"),
            ),
        };
        Some((log, reply(554, (5, 7, 1), text)))
    }

    /// DATA. In BSMTP the body follows whatever we answer; in LMTP only
    /// a 354.
    fn data(&mut self) -> Reply {
        let Some(envelope) = self.envelope.take() else {
            self.discard(None, 0);
            return reply(503, (5, 5, 1), "Error: need MAIL command");
        };
        self.screened = 0;
        let recipients = envelope.recipients.len();
        let claim = if recipients == 0 {
            None
        } else {
            Some(self.claim_tag(&envelope))
        };
        if !matches!(claim, Some(Ok(None | Some(Claim::New(_))))) {
            // Nothing of this transaction goes to the next hop.
            self.injector.reset();
        }
        let Some(claim) = claim else {
            self.discard(None, 0);
            self.summary.rejected += 1;
            return reply(554, (5, 5, 1), "Error: no valid recipients");
        };
        let claim = match claim {
            Ok(Some(Claim::New(claim))) => Some(claim),
            Ok(Some(Claim::Duplicate(queue_id))) => {
                info!(
                    "peer {}: transaction {} was committed before as {queue_id}: answering as then, queuing nothing",
                    self.settings.policy.peer,
                    envelope.tag.as_deref().unwrap_or_default()
                );
                self.body = Body::Duplicate {
                    queue_id,
                    recipients,
                };
                return reply(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>");
            }
            Ok(Some(Claim::Busy)) => {
                self.discard(None, recipients);
                self.summary.rejected += 1;
                return reply(
                    451,
                    (4, 3, 0),
                    "Error: this transaction is being committed by another session; try again later",
                );
            }
            Ok(None) => None,
            Err(err) => {
                warn!(
                    "peer {}: transaction tag store: {err}",
                    self.settings.policy.peer
                );
                self.discard(None, recipients);
                self.summary.rejected += 1;
                return reply(
                    451,
                    (4, 3, 0),
                    "Error: transaction tag store unavailable; try again later",
                );
            }
        };
        match self.injector.start(&envelope) {
            Ok(mut message) => {
                let mut trace = Trace::new(&envelope);
                if self.settings.received_header {
                    let header = received_header(&self.settings, &envelope, message.queue_id());
                    for line in header.lines() {
                        trace.observe(line.as_bytes(), true);
                        if let Err(refusal) = message.write_piece(line.as_bytes(), true) {
                            message.abort();
                            return self.data_failed(refusal, recipients);
                        }
                    }
                }
                let content =
                    (claim.is_none() && self.settings.content_tags && self.settings.tags.is_some())
                        .then(|| Box::new(content_hash(&envelope)));
                self.body = Body::Accepting {
                    message,
                    trace,
                    recipients,
                    claim,
                    content,
                };
                reply(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>")
            }
            Err(refusal) => self.data_failed(refusal, recipients),
        }
    }

    /// The claim of a message tagged by its content (see
    /// [`Settings::content_tags`]), or the envelope tag's `claim`: a
    /// content seen before is answered as then, with nothing queued.
    fn content_claim(
        &mut self,
        content: Option<Box<Sha1>>,
        claim: Option<TagClaim>,
    ) -> Result<Option<TagClaim>, Reply> {
        let (Some(hash), Some(tags)) = (content, &self.settings.tags) else {
            return Ok(claim);
        };
        let digest = hash.finalize();
        let mut tag = String::from("c");
        for byte in &digest[..12] {
            let _ = write!(tag, "{byte:02x}");
        }
        match tags.claim(&tag) {
            Ok(Claim::New(claim)) => Ok(Some(claim)),
            Ok(Claim::Duplicate(queue_id)) => {
                info!(
                    "peer {}: this message was queued before as {queue_id} (same sender, recipients and content): queuing nothing",
                    self.settings.policy.peer
                );
                self.summary.accepted += 1;
                self.errors = 0;
                Err(queued(&queue_id))
            }
            Ok(Claim::Busy) => {
                self.summary.rejected += 1;
                Err(reply(
                    451,
                    (4, 3, 0),
                    "Error: this message is being committed by another session; try again later",
                ))
            }
            Err(err) => {
                warn!(
                    "peer {}: transaction tag store: {err}",
                    self.settings.policy.peer
                );
                self.summary.rejected += 1;
                Err(reply(
                    451,
                    (4, 3, 0),
                    "Error: transaction tag store unavailable; try again later",
                ))
            }
        }
    }

    /// The transaction's tag claim, when it has a tag and we keep tags.
    fn claim_tag(&self, envelope: &Envelope) -> std::io::Result<Option<Claim>> {
        match (&self.settings.tags, &envelope.tag) {
            (Some(tags), Some(tag)) => tags.claim(tag).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads and drops the body to come; `reply` is due at the dot.
    fn discard(&mut self, reply: Option<Reply>, recipients: usize) {
        self.body = Body::Discarding { reply, recipients };
    }

    fn data_failed(&mut self, refusal: Refusal, recipients: usize) -> Reply {
        warn!(
            "peer {}: cannot queue message: {}",
            self.settings.policy.peer, refusal.detail
        );
        self.discard(None, recipients);
        self.summary.rejected += 1;
        refusal.reply
    }

    fn body_piece(&mut self, bytes: &[u8], end_of_line: bool) {
        let max_size = self.settings.policy.max_size;
        let Body::Accepting {
            message,
            trace,
            content,
            ..
        } = &mut self.body
        else {
            return;
        };
        trace.observe(bytes, end_of_line);
        if let Some(hash) = content {
            hash.update(bytes);
            if end_of_line {
                hash.update(b"\n");
            }
        }
        let failure = if trace.size > max_size {
            Some(too_big(&self.settings.policy.peer))
        } else {
            message
                .write_piece(bytes, end_of_line)
                .err()
                .map(|refusal| {
                    warn!(
                        "{}: write to next hop: {}",
                        message.queue_id(),
                        refusal.detail
                    );
                    refusal.reply
                })
        };
        if let Some(answer) = failure {
            if let Body::Accepting {
                message,
                recipients,
                ..
            } = std::mem::replace(&mut self.body, Body::Idle)
            {
                message.abort();
                self.discard(Some(answer), recipients);
            }
        }
    }

    /// The dot: the reply (BSMTP), or one per recipient (LMTP).
    fn data_end(&mut self) -> Vec<Reply> {
        let (replies, recipients) = match std::mem::replace(&mut self.body, Body::Idle) {
            Body::Idle => return Vec::new(),
            Body::Discarding { reply, recipients } => {
                if reply.is_some() {
                    self.summary.rejected += 1;
                }
                (reply.map(|r| vec![r]).unwrap_or_default(), recipients)
            }
            Body::Duplicate {
                queue_id,
                recipients,
            } => {
                self.errors = 0;
                (vec![queued(&queue_id)], recipients)
            }
            Body::Accepting {
                message,
                trace,
                recipients,
                claim,
                content,
            } => match self.content_claim(content, claim) {
                Ok(claim) => (self.commit(message, &trace, claim), recipients),
                Err(answer) => {
                    message.abort();
                    (vec![answer], recipients)
                }
            },
        };
        match (self.settings.dialect, replies.as_slice()) {
            (Dialect::Lmtp, [one]) => vec![one.clone(); recipients],
            (Dialect::Bsmtp, [_, _, ..]) => vec![bsmtp_reply(&replies)],
            _ => replies,
        }
    }

    /// Commits the message, then its tag, then answers: the next hop has
    /// the message before the tag says so, and the tag is on disk before
    /// the sender hears 250.
    ///
    /// The window that remains: a crash after the next hop committed and
    /// before the tag file is renamed into place (one fsync and one rename)
    /// leaves the message queued with its tag unrecorded; the sender, who
    /// never got its 250, retries, and the message is queued twice.
    fn commit(
        &mut self,
        message: I::Message,
        trace: &Trace,
        claim: Option<TagClaim>,
    ) -> Vec<Reply> {
        if let Some(from) = trace.refused_from(&self.settings.policy) {
            message.abort();
            let peer = self.settings.policy.peer.clone();
            self.warn(&format!(
                "reject: header From: <{from}> not allowed for this peer"
            ));
            self.summary.rejected += 1;
            return vec![reply(
                550,
                (5, 7, 1),
                format!("<{from}>: From: header address not allowed for peer {peer}"),
            )];
        }
        let maildrop_id = message.queue_id().to_owned();
        match message.commit() {
            Ok(Committed::Queued(queue_id)) => {
                info!(
                    "{queue_id}: from=<{}>, size={}, nrcpt={}, message-id={}, peer={}, status=queued",
                    trace.sender,
                    trace.size,
                    trace.nrcpt,
                    trace.message_id.as_deref().unwrap_or("(none)"),
                    self.settings.policy.peer
                );
                Self::record_tag(claim, &queue_id);
                self.summary.accepted += 1;
                // Postfix forgives earlier errors once a message got through.
                self.errors = 0;
                vec![queued(&queue_id)]
            }
            Ok(Committed::PerRecipient(replies)) => {
                if let Some(id) = replies.iter().find(|r| r.code / 100 == 2).map(queue_id_of) {
                    Self::record_tag(claim, &id);
                    self.summary.accepted += 1;
                    self.errors = 0;
                }
                replies
            }
            Err(refusal) => {
                warn!(
                    "{maildrop_id}: queue file commit failed: {}",
                    refusal.detail
                );
                self.summary.rejected += 1;
                vec![refusal.reply]
            }
        }
    }

    /// Records the committed tag. The message is queued whatever happens
    /// here, so a failure is logged, never turned into a refusal (that
    /// would make the sender retry, and queue it twice for sure).
    fn record_tag(claim: Option<TagClaim>, queue_id: &str) {
        if let Some(claim) = claim {
            if let Err(err) = claim.commit(queue_id) {
                warn!(
                    "{queue_id}: queued, but its transaction tag could not be recorded ({err}): a retry of it would be queued again"
                );
            }
        }
    }
}

/// The start of a content hash: the envelope, each field ended by a NUL.
fn content_hash(envelope: &Envelope) -> Sha1 {
    let mut hash = Sha1::new();
    hash.update(envelope.sender.as_bytes());
    hash.update(b"\0");
    for recipient in &envelope.recipients {
        hash.update(recipient.as_bytes());
        hash.update(b"\0");
    }
    hash
}

/// The 250 after a committed message.
fn queued(queue_id: &str) -> Reply {
    reply(250, (2, 0, 0), format!("Ok: queued as {queue_id}"))
}

/// The queue ID in a `250 ... queued as ID` reply, else the whole text.
pub(crate) fn queue_id_of(reply: &Reply) -> String {
    let text = reply.lines.join(" ");
    text.rsplit_once("queued as ")
        .map_or(text.as_str(), |(_, id)| id)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One BSMTP reply for per-recipient results: success when all succeeded,
/// else the worst refusal (a 4xx, which leaves the sender to retry, before
/// a 5xx).
fn bsmtp_reply(replies: &[Reply]) -> Reply {
    let worst = replies
        .iter()
        .find(|r| r.is_transient())
        .or_else(|| replies.iter().find(|r| r.is_permanent()))
        .cloned();
    worst.unwrap_or_else(|| replies[0].clone())
}

/// The 552 for a message over the peer's size limit (announced or sent).
fn too_big(peer: &str) -> Reply {
    reply(
        552,
        (5, 3, 4),
        format!("Message size exceeds the limit for peer {peer}"),
    )
}

fn write_replies(output: &mut impl Write, replies: &[u8]) -> io::Result<()> {
    output.write_all(replies)?;
    output.flush()
}

/// The trace header we put on top of each message, so the hub's copy says
/// which peer it came from and under which maildrop ID (pickup gives the
/// message a new queue ID; this is what correlates the two).
fn received_header(settings: &Settings, envelope: &Envelope, queue_id: &str) -> String {
    let helo = envelope.helo.as_deref().unwrap_or(&settings.policy.peer);
    // As Postfix's smtpd: UTF8SMTP (RFC 6531) when the sender asked for it.
    let with = if envelope.smtputf8 {
        "UTF8SMTP"
    } else if envelope.helo.is_some() {
        "ESMTP"
    } else {
        "BSMTP"
    };
    let date = chrono::Local::now().to_rfc2822();
    let mut header = format!(
        "Received: from {} (peer {})\r\n\tby {} (rsmtp) with {with}",
        bsmtp::text::one_line(helo),
        settings.policy.peer,
        settings.hostname,
    );
    // An smtpd next hop names its queue ID only at the dot (and writes a
    // Received: header of its own that carries it).
    if queue_id != NOQUEUE {
        let _ = write!(header, " id {queue_id}");
    }
    if let [only] = envelope.recipients.as_slice() {
        let _ = write!(header, "\r\n\tfor <{only}>");
    }
    let _ = write!(header, "; {date}");
    header
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::policy::SenderPattern;

    fn policy(
        senders: &[&str],
        max_size: u64,
        max_recipients: usize,
        check_header_from: bool,
    ) -> Policy {
        Policy {
            peer: "leaf1".into(),
            allow_sender: senders
                .iter()
                .map(|s| SenderPattern::parse(s).unwrap())
                .collect(),
            allow_recipient: Vec::new(),
            allow_routing_forms: false,
            max_size,
            max_size_set: true,
            max_recipients,
            hard_error_limit: None,
            check_header_from,
        }
    }

    /// What the in-memory next hop saw: committed messages and aborts.
    #[derive(Default)]
    struct Hop {
        committed: Vec<(Envelope, Vec<u8>)>,
        aborted: usize,
        fail_commit: bool,
        /// Judge recipients before DATA: refuse those with "nouser".
        screen: bool,
        /// Recipients asked about, and resets.
        screened: Vec<String>,
        resets: usize,
    }

    struct Memory(Rc<RefCell<Hop>>);
    struct Message {
        hop: Rc<RefCell<Hop>>,
        envelope: Envelope,
        content: Vec<u8>,
    }

    impl Delivery for Message {
        fn queue_id(&self) -> &'static str {
            "MEM1"
        }
        fn write_piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), Refusal> {
            self.content.extend_from_slice(bytes);
            if end_of_line {
                self.content.push(b'\n');
            }
            Ok(())
        }
        fn commit(self) -> Result<Committed, Refusal> {
            let mut hop = self.hop.borrow_mut();
            if hop.fail_commit {
                return Err(Refusal::temporary("disk full"));
            }
            hop.committed.push((self.envelope, self.content));
            Ok(Committed::Queued(format!("Q{}", hop.committed.len())))
        }
        fn abort(self) {
            self.hop.borrow_mut().aborted += 1;
        }
    }

    impl Injector for Memory {
        type Message = Message;
        fn screens_recipients(&self) -> bool {
            self.0.borrow().screen
        }
        fn screen(
            &mut self,
            envelope: &Envelope,
            from: usize,
        ) -> Result<Vec<Option<Reply>>, Refusal> {
            let mut hop = self.0.borrow_mut();
            if envelope.sender.starts_with("down@") {
                return Err(Refusal::temporary("smtpd down"));
            }
            Ok(envelope.recipients[from..]
                .iter()
                .map(|r| {
                    hop.screened.push(r.clone());
                    r.starts_with("nouser")
                        .then(|| reply(550, (5, 1, 1), format!("<{r}>: User unknown")))
                })
                .collect())
        }
        fn reset(&mut self) {
            self.0.borrow_mut().resets += 1;
        }
        fn start(&mut self, envelope: &Envelope) -> Result<Message, Refusal> {
            Ok(Message {
                hop: self.0.clone(),
                envelope: envelope.clone(),
                content: Vec::new(),
            })
        }
    }

    /// Runs `input` through a Receiver over the in-memory next hop `hop`.
    fn run_session(
        input: &mut impl Read,
        policy: Policy,
        hop: Hop,
    ) -> (String, Rc<RefCell<Hop>>, Summary) {
        let hop = Rc::new(RefCell::new(hop));
        let settings = Settings::new("hub.test".into(), policy, 20);
        let mut out = Vec::new();
        let summary = Receiver::new(settings, Memory(hop.clone()))
            .run(input, &mut out)
            .unwrap();
        (String::from_utf8(out).unwrap(), hop, summary)
    }

    fn session(input: &[u8], fail_commit: bool) -> (String, Rc<RefCell<Hop>>, Summary) {
        let policy = policy(&["@leaf.test", "root@other.test"], 1000, 2, false);
        run_session(
            &mut &input[..],
            policy,
            Hop {
                fail_commit,
                ..Hop::default()
            },
        )
    }

    fn codes(replies: &str) -> Vec<&str> {
        replies
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect()
    }

    #[test]
    fn exim_style_batch_two_messages_one_reply_per_command() {
        let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\n..x\nbody\n.\n\
                      MAIL FROM:<>\nRCPT TO:<c@hub.test>\nDATA\nbounce\n.\n";
        let (out, hop, summary) = session(input, false);
        assert_eq!(
            codes(&out),
            ["250", "250", "354", "250", "250", "250", "354", "250"]
        );
        assert!(out.contains("250 2.0.0 Ok: queued as Q2\r\n"));
        let hop = hop.borrow();
        assert_eq!(hop.committed.len(), 2);
        let first = String::from_utf8_lossy(&hop.committed[0].1);
        assert!(
            first.starts_with("Received: from leaf1 (peer leaf1)\n"),
            "{first}"
        );
        assert!(first.ends_with("\n.x\nbody\n"), "{first}");
        assert_eq!(hop.committed[1].0.sender, "");
        assert_eq!(summary.accepted, 2);
    }

    fn screening_session(input: &[u8]) -> (String, Rc<RefCell<Hop>>, Summary) {
        let policy = policy(&["@leaf.test", "down@leaf.test"], 100_000, 10, false);
        run_session(
            &mut &input[..],
            policy,
            Hop {
                screen: true,
                ..Hop::default()
            },
        )
    }

    /// The fast path: a recipient the next hop refuses gets its reply in
    /// its RCPT's place (code and enhanced status kept); the others are
    /// queued; the order of replies is the order of commands.
    #[test]
    fn next_hop_refusal_becomes_that_recipients_reply() {
        let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nRCPT TO:<nouser@hub.test>\n\
                      NOOP\nRCPT TO:<c@hub.test>\nDATA\nhi\n.\n\
                      MAIL FROM:<a@leaf.test>\nRCPT TO:<nouser2@hub.test>\nDATA\nx\n.\nQUIT\n";
        let (out, hop, summary) = screening_session(input);
        assert_eq!(
            codes(&out),
            ["250", "250", "550", "250", "250", "354", "250", "250", "550", "554", "221"],
            "{out}"
        );
        assert!(
            out.contains("550 5.1.1 <nouser@hub.test>: User unknown\r\n"),
            "{out}"
        );
        let hop = hop.borrow();
        assert_eq!(hop.committed.len(), 1);
        assert_eq!(hop.committed[0].0.recipients, ["b@hub.test", "c@hub.test"]);
        // The second transaction had nothing left: the next hop forgets it.
        assert_eq!(hop.resets, 1);
        assert_eq!(summary.refused, 3);
    }

    /// A client that waits for RCPT's reply before sending more gets it:
    /// held replies are judged and sent before rsmtp waits for input.
    #[test]
    fn held_replies_are_sent_before_waiting_for_input() {
        struct OneLine<'a>(&'a [u8]);
        impl Read for OneLine<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self
                    .0
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(self.0.len(), |i| i + 1);
                let n = n.min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let policy = policy(&["@leaf.test", "down@leaf.test"], 100_000, 10, false);
        let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<nouser@hub.test>\nRCPT TO:<b@hub.test>\nDATA\nhi\n.\n";
        let (out, hop, _) = run_session(
            &mut OneLine(input),
            policy,
            Hop {
                screen: true,
                ..Hop::default()
            },
        );
        assert_eq!(codes(&out), ["250", "550", "250", "354", "250"], "{out}");
        // Each recipient asked about once, one at a time.
        assert_eq!(hop.borrow().screened, ["nouser@hub.test", "b@hub.test"]);
        assert_eq!(hop.borrow().committed[0].0.recipients, ["b@hub.test"]);
    }

    /// The next hop unreachable: every recipient gets 4xx, nothing is
    /// queued, and the sender retries.
    #[test]
    fn next_hop_down_defers_each_recipient() {
        let input = b"MAIL FROM:<down@leaf.test>\nRCPT TO:<b@hub.test>\nRCPT TO:<c@hub.test>\nDATA\nhi\n.\n";
        let (out, hop, summary) = screening_session(input);
        assert_eq!(codes(&out), ["250", "451", "451", "554"], "{out}");
        assert!(hop.borrow().committed.is_empty());
        assert_eq!(summary.accepted, 0);
    }

    #[test]
    fn stream_ending_inside_data_injects_nothing() {
        let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\npartial line";
        let (out, hop, summary) = session(input, false);
        assert_eq!(codes(&out), ["250", "250", "354"]);
        assert!(hop.borrow().committed.is_empty());
        assert_eq!(hop.borrow().aborted, 1);
        assert!(summary.truncated);
    }

    #[test]
    fn refused_data_still_swallows_its_body() {
        // No valid recipient: DATA is refused, the body that follows anyway
        // must not be read as commands, and the next transaction works.
        let input =
            b"MAIL FROM:<a@leaf.test>\nRCPT TO:<nodomain>\nDATA\nMAIL FROM:<x@evil.test>\n.\n\
                      MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nok\n.\nQUIT\n";
        let (out, hop, _) = session(input, false);
        let codes = codes(&out);
        assert_eq!(codes[2], "554", "{out}");
        assert_eq!(&codes[3..], ["250", "250", "354", "250", "221"], "{out}");
        assert_eq!(hop.borrow().committed.len(), 1);
    }

    #[test]
    fn policy_violations_get_precise_codes() {
        let input = b"MAIL FROM:<a@evil.test>\nRSET\nMAIL FROM:<a@leaf.test> SIZE=5000\n\
                      MAIL FROM:<root@other.test>\nRCPT TO:<b@hub.test>\nRCPT TO:<c@hub.test>\n\
                      RCPT TO:<d@hub.test>\nRSET\nRCPT TO:<e@hub.test>\nFOO\n";
        let (out, _, _) = session(input, false);
        for expected in [
            "553 5.7.1 <a@evil.test>: Sender address not allowed for peer leaf1",
            "552 5.3.4 ",
            "452 4.5.3 ",
            "503 5.5.1 Error: need MAIL command",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        assert!(
            out.trim_end().lines().last().unwrap().starts_with('5'),
            "{out}"
        );
    }

    /// Regression (audit H1): the routing forms are refused one by one
    /// with a 554 5.7.1 that names the Postfix parameter and the opt-in;
    /// the plain recipient of the same transaction is queued, alone.
    #[test]
    fn routing_forms_are_refused_and_bounce_alone() {
        let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<victim%external.test@hub.test>\n\
                      RCPT TO:<external.test!victim@hub.test>\n\
                      RCPT TO:<\"victim@external.test\"@hub.test>\n\
                      RCPT TO:<\"john doe\"@hub.test>\nDATA\nhi\n.\n";
        let (out, hop, _) = session(input, false);
        assert_eq!(
            codes(&out),
            ["250", "554", "554", "554", "250", "354", "250"],
            "{out}"
        );
        for expected in [
            "554 5.7.1 <victim%external.test@hub.test>: Recipient address rejected: '%' in the local part routes elsewhere (Postfix allow_percent_hack); not allowed for peer leaf1 without allow_routing_forms",
            "554 5.7.1 <external.test!victim@hub.test>: Recipient address rejected: '!' in the local part routes elsewhere (Postfix swap_bangpath)",
            "554 5.7.1 <\"victim@external.test\"@hub.test>: Recipient address rejected: '@' in the local part routes elsewhere (Postfix resolve_dequoted_address)",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
        let hop = hop.borrow();
        assert_eq!(hop.committed.len(), 1);
        assert_eq!(hop.committed[0].0.recipients, ["\"john doe\"@hub.test"]);
        // Opted in, the same recipients are taken.
        let mut opted_in = policy(&["@leaf.test"], 1000, 10, false);
        opted_in.allow_routing_forms = true;
        let (out, hop, _) = run_session(&mut &input[..], opted_in, Hop::default());
        assert_eq!(
            codes(&out),
            ["250", "250", "250", "250", "250", "354", "250"],
            "{out}"
        );
        assert_eq!(hop.borrow().committed[0].0.recipients.len(), 4);
    }

    #[test]
    fn dsn_requests_reach_the_injector_decoded() {
        let input = b"MAIL FROM:<a@leaf.test> RET=HDRS ENVID=env+2B42 BODY=8BITMIME SMTPUTF8\n\
                      RCPT TO:<b@hub.test> NOTIFY=success,FAILURE ORCPT=rfc822;B+40hub.test\n\
                      RCPT TO:<c@hub.test> NOTIFY=SUCCESS,NEVER\n\
                      RCPT TO:<c@hub.test> ORCPT=rfc822\n\
                      RCPT TO:<c@hub.test>\nDATA\nhi\n.\n";
        let (out, hop, _) = session(input, false);
        assert_eq!(
            codes(&out),
            ["250", "250", "501", "501", "250", "354", "250"],
            "{out}"
        );
        let hop = hop.borrow();
        let envelope = &hop.committed[0].0;
        assert_eq!(envelope.dsn.ret, Some(Ret::Hdrs));
        assert_eq!(envelope.dsn.envid.as_deref(), Some("env+42"));
        assert!(envelope.eight_bit && envelope.smtputf8);
        assert_eq!(
            envelope.recipient_dsn,
            [
                RcptDsn {
                    notify: Some("SUCCESS,FAILURE".into()),
                    orcpt: Some(("rfc822".into(), "B@hub.test".into())),
                },
                RcptDsn::default(),
            ]
        );
    }

    #[test]
    fn oversized_body_is_refused_at_the_dot_and_aborted() {
        let mut input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\n".to_vec();
        input.extend(std::iter::repeat_n(b"0123456789\n".as_slice(), 200).flatten());
        input.extend_from_slice(b".\nNOOP\n");
        let (out, hop, _) = session(&input, false);
        assert_eq!(codes(&out), ["250", "250", "354", "552", "250"], "{out}");
        assert_eq!(hop.borrow().aborted, 1);
        assert!(hop.borrow().committed.is_empty());
    }

    #[test]
    fn commit_failure_is_a_temporary_error_never_250() {
        let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nx\n.\n";
        let (out, hop, summary) = session(input, true);
        assert_eq!(codes(&out), ["250", "250", "354", "451"], "{out}");
        assert!(hop.borrow().committed.is_empty());
        assert_eq!(summary.accepted, 0);
    }

    /// Regression (audit): 200,000 empty lines got 200,000 replies and
    /// 9.4 MB of log. As Postfix's smtpd: 421 after the error limit, the
    /// session ends, the open message is dropped.
    #[test]
    fn error_limit_ends_the_session_with_421() {
        let mut input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\n".to_vec();
        input.extend(std::iter::repeat_n(b"\n".as_slice(), 200_000).flatten());
        let (out, hop, summary) = session(&input, false);
        let codes = codes(&out);
        assert_eq!(codes.len(), 2 + 20 + 1, "{out}");
        assert_eq!(codes.last(), Some(&"421"), "{out}");
        assert!(
            out.ends_with("421 4.7.0 hub.test Error: too many errors\r\n"),
            "{out}"
        );
        assert!(summary.error_limit && summary.quit);
        assert_eq!(summary.refused, 20);
        assert!(hop.borrow().committed.is_empty());
        assert_eq!(summary.warnings_suppressed, 20 + 1 - MAX_WARNINGS);
    }

    /// The limit counts errors since the last accepted message, as Postfix's
    /// smtpd does: a long batch with a few refusals between good messages
    /// goes through.
    #[test]
    fn an_accepted_message_forgives_earlier_errors() {
        let mut input = Vec::new();
        for _ in 0..30 {
            input.extend_from_slice(
                b"FOO\nMAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nx\n.\n",
            );
        }
        let (out, hop, summary) = session(&input, false);
        assert!(!summary.error_limit, "{out}");
        assert_eq!(hop.borrow().committed.len(), 30);
        assert_eq!(summary.refused, 30);
    }

    /// A message still open when the limit strikes is dropped, not queued.
    #[test]
    fn error_limit_inside_a_transaction_aborts_the_message() {
        let mut input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\n".to_vec();
        input.extend(std::iter::repeat_n(b"RCPT TO:<x>\n".as_slice(), 19).flatten());
        input.extend_from_slice(b"MAIL FROM:<a@leaf.test>\nDATA\nbody\n.\n");
        let (out, hop, summary) = session(&input, false);
        assert!(summary.error_limit, "{out}");
        assert!(hop.borrow().committed.is_empty(), "{out}");
    }

    /// Sender policy speaks of mailboxes: a quoted local part that names an
    /// allowed address is that address.
    #[test]
    fn sender_policy_applies_to_the_internal_form() {
        let input = b"MAIL FROM:<\"root\"@other.test>\nRCPT TO:<b@hub.test>\nDATA\nx\n.\n\
                      MAIL FROM:<\"al ice\"@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nx\n.\n";
        let (out, hop, _) = session(input, false);
        assert_eq!(
            codes(&out),
            ["250", "250", "354", "250", "250", "250", "354", "250"],
            "{out}"
        );
        assert_eq!(hop.borrow().committed.len(), 2);
    }

    #[test]
    fn from_header_addresses() {
        for (value, addresses) in [
            (" alice@leaf.test", vec!["alice@leaf.test"]),
            (" Alice <alice@leaf.test>", vec!["alice@leaf.test"]),
            (" \"Doe, John\" <john@leaf.test>", vec!["john@leaf.test"]),
            (
                " a@leaf.test (Alice), b@leaf.test",
                vec!["a@leaf.test", "b@leaf.test"],
            ),
            (
                " team: a@leaf.test, B <b@leaf.test>;",
                vec!["a@leaf.test", "b@leaf.test"],
            ),
            (" \"al ice\"@leaf.test", vec!["\"al ice\"@leaf.test"]),
            (" (only a comment)", vec![]),
        ] {
            assert_eq!(
                bsmtp::address::header_addresses(value),
                addresses,
                "{value}"
            );
        }
    }

    /// The per-peer From: header check: a peer allowed @leaf.test cannot
    /// put someone else's address in From:, even with a good envelope or
    /// a null sender; without the option only the envelope is checked.
    #[test]
    fn from_header_check_refuses_other_domains() {
        let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nFrom: Boss <ceo@bank.test>\n\nx\n.\n\
                      MAIL FROM:<>\nRCPT TO:<b@hub.test>\nDATA\nFrom: x@leaf.test,\n ceo@bank.test\n\nx\n.\n\
                      MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nFrom: A <a@leaf.test>\n\nx\n.\n";
        let run = |check: bool| {
            let policy = policy(&["@leaf.test"], 10_240_000, 1000, check);
            let (out, hop, _) = run_session(&mut &input[..], policy, Hop::default());
            (out, hop)
        };
        let (out, hop) = run(true);
        assert_eq!(
            codes(&out),
            ["250", "250", "354", "550", "250", "250", "354", "550", "250", "250", "354", "250"],
            "{out}"
        );
        assert!(
            out.contains("550 5.7.1 <ceo@bank.test>: From: header"),
            "{out}"
        );
        assert_eq!(hop.borrow().committed.len(), 1);
        assert_eq!(hop.borrow().aborted, 2);
        let (_, hop) = run(false);
        assert_eq!(hop.borrow().committed.len(), 3);
    }
}
