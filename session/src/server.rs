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
//! Exactly-once is [`crate::tags`]'s: a tagged transaction claims its tag
//! at MAIL, each recipient an earlier commit of the same content covered
//! is answered from the record (and never reaches the injector), and the
//! dot decides, by the content's digest, whether it was a retry.

use std::fmt::Write as _;
use std::io::{self, Read, Write};

use bsmtp::codec::{Command, CommandError, Decoder, Event, Param};
use bsmtp::dsn::{parse_envid, parse_notify, parse_orcpt, MailDsn, RcptDsn, Ret};
use bsmtp::extensions::{Extensions, TRANSACTION_TAG};
use bsmtp::reply::{EnhancedCode, Reply};
use bsmtp::tag::Tag;
use log::{info, warn};

use crate::policy::Policy;
use crate::tags::{Held, Once, Settled, TagStore};

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
    pub tag: Option<Tag>,
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
    /// recipients, body) at the dot, within this scope (a batch file's
    /// identity, so one batch read again after a failure queues nothing
    /// twice and another batch's identical message is still queued; empty
    /// for the sendmail verb, whose content tags only catch a quick resend
    /// after a lost exit status). Needs `tags`.
    pub content_tags: Option<String>,
    /// Longest time a command line or a content line may take to arrive
    /// whole (Postfix's `smtpd_per_record_deadline`): a peer that sends a
    /// byte now and then, each before the idle timeout, cannot hold the
    /// session and an open postdrop for ever. `None`: no deadline.
    pub record_deadline: Option<std::time::Duration>,
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
            content_tags: None,
            record_deadline: None,
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

/// Commands that move no mail (NOOP, RSET, EHLO, HELO, LHLO, XFORWARD)
/// a peer may send between two MAIL commands before each one more counts
/// as an error, so the error limit ends a session that only keeps the
/// hub busy (Postfix's `smtpd_junk_command_limit`, whose default this
/// is). A batching client sends two or three between transactions.
const JUNK_LIMIT: usize = 100;

enum Body<M> {
    /// Not in DATA.
    Idle,
    /// 354 given; content goes to the message.
    Accepting {
        message: M,
        trace: Trace,
        /// The recipients being queued now.
        fresh: Vec<String>,
        /// Each accepted recipient's queue ID when an earlier commit of
        /// the transaction's tag covered it, else `None` (in `fresh`).
        fates: Vec<Option<String>>,
        once: Option<Once>,
    },
    /// Content is read and dropped. `reply` is the answer due at the dot,
    /// if the DATA command itself was accepted (for each recipient in LMTP).
    Discarding {
        reply: Option<Reply>,
        recipients: usize,
    },
    /// Every recipient was covered by an earlier commit of the
    /// transaction's tag: the content is read to see whether it is the
    /// same (a retry, answered as the first time) or not.
    Answering {
        once: Once,
        fates: Vec<Option<String>>,
    },
}

/// What we log about an accepted message, gathered as it streams by: the
/// facts pickup(8) logs too (sender, Message-ID, size), so an admin can
/// match our maildrop queue ID with the queue ID pickup gives the message.
#[allow(clippy::struct_excessive_bools)]
struct Trace {
    size: u64,
    sender: String,
    nrcpt: usize,
    in_header: bool,
    at_line_start: bool,
    message_id: Option<String>,
    /// Every From: header, unfolded (bounded), for the peer's header
    /// check; only collected when the peer's policy checks them.
    from: Vec<String>,
    collect_from: bool,
    /// The header being read is a From: header.
    in_from: bool,
}

/// Longest Message-ID we keep for the log.
const MAX_MESSAGE_ID: usize = 256;

/// Most From: fields a message may have for the header check (RFC 5322
/// allows one); beyond, the message is refused.
const MAX_FROM_FIELDS: usize = 16;

/// Longest From: header we keep; RFC 5322 lines stop at 998 bytes, and a
/// header folded over more than a few lines is not worth reading further.
const MAX_FROM: usize = 4096;

impl Trace {
    fn new(envelope: &Envelope, collect_from: bool) -> Self {
        Trace {
            collect_from,
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
        } else if self.collect_from && starts(FROM) {
            if self.from.len() >= MAX_FROM_FIELDS {
                // More From: fields than any message has: one we cannot
                // check is refused.
                self.from.truncate(MAX_FROM_FIELDS - 1);
                self.from.push(String::new());
                return;
            }
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
    /// The open transaction's claim of its tag ([`crate::tags`]).
    once: Option<Once>,
    /// Each accepted recipient of the open transaction: the queue ID an
    /// earlier commit of its tag put it under, or `None` (in the envelope).
    fates: Vec<Option<String>>,
    /// The last RCPT was accepted into the envelope (not answered from a
    /// tag record).
    fresh_rcpt: bool,
    /// MAIL commands so far: a transaction's place in a batch.
    transactions: usize,
    /// Commands that moved no mail since the last MAIL ([`JUNK_LIMIT`]).
    junk: usize,
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
            once: None,
            fates: Vec::new(),
            fresh_rcpt: false,
            transactions: 0,
            junk: 0,
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
        let mut last_record = std::time::Instant::now();
        loop {
            while let Some((used, event)) = decoder.decode(&buf[start..]) {
                start += used;
                if ends_record(&event) {
                    last_record = std::time::Instant::now();
                }
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
            if let Some(deadline) = self.settings.record_deadline {
                if last_record.elapsed() > deadline {
                    return self.record_deadline_passed(deadline, output);
                }
            }
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

    /// Ends a session whose peer took longer than `deadline` to send one
    /// line: 421, as Postfix's smtpd, and whatever is open is dropped.
    fn record_deadline_passed(
        &mut self,
        deadline: std::time::Duration,
        output: &mut impl Write,
    ) -> io::Result<()> {
        self.warn(&format!(
            "no whole line in {}s (per-record deadline): ending the session",
            deadline.as_secs()
        ));
        let mut out = Vec::new();
        self.release(&mut out);
        reply(
            421,
            (4, 4, 2),
            format!("{} Error: timeout exceeded", self.settings.hostname),
        )
        .encode(&mut out);
        self.summary.quit = true;
        let _ = write_replies(output, &out);
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the peer sent no whole line for {}s (per-record deadline)",
                deadline.as_secs()
            ),
        ))
    }

    /// Asks the next hop about the recipients whose replies are held, puts
    /// its refusals in their place, and sends every held reply.
    fn screen_held(&mut self, out: &mut Vec<u8>, before_data: bool) {
        if let Some(mut envelope) = self.envelope.take() {
            // Recipients answered from a tag record are not in the
            // envelope: the next hop never hears of them.
            if envelope.recipients.len() > self.screened {
                let verdicts = if before_data {
                    self.injector.screen_before_data(&envelope, self.screened)
                } else {
                    self.injector.screen(&envelope, self.screened)
                };
                let fresh = envelope.recipients.split_off(self.screened);
                let mut fresh_dsn = envelope.recipient_dsn.split_off(self.screened);
                fresh_dsn.resize_with(fresh.len(), RcptDsn::default);
                let first = self.screened;
                let mut refused = Vec::new();
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
                            refused.push(first + k);
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
                self.forget_fates(&refused);
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

    /// Drops the fates of the envelope's recipients at `indexes` (in
    /// ascending order), which the next hop refused.
    fn forget_fates(&mut self, indexes: &[usize]) {
        let mut fresh = 0;
        let mut next = indexes.iter().peekable();
        self.fates.retain(|fate| {
            if fate.is_some() {
                return true;
            }
            let keep = next.peek().is_none_or(|&&i| i != fresh);
            if !keep {
                next.next();
            }
            fresh += 1;
            keep
        });
    }

    /// Forgets the open envelope (and the next hop's transaction for it,
    /// and the claim of its tag).
    fn drop_envelope(&mut self) {
        if self.envelope.take().is_some() {
            self.injector.reset();
        }
        self.screened = 0;
        self.once = None;
        self.fates.clear();
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
        self.count_junk(&event);
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
                if is_rcpt && answer.code == 250 && self.fresh_rcpt {
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

    /// Counts a command that moves no mail; past [`JUNK_LIMIT`] since the
    /// last MAIL, each counts as an error too.
    fn count_junk(&mut self, event: &Event<'_>) {
        match event {
            Event::Command(Command::Mail { .. }) => self.junk = 0,
            Event::Command(
                Command::Noop
                | Command::Rset
                | Command::Ehlo(_)
                | Command::Helo(_)
                | Command::Lhlo(_)
                | Command::Xforward(_),
            ) => {
                self.junk += 1;
                if self.junk == JUNK_LIMIT + 1 {
                    self.warn(&format!(
                        "more than {JUNK_LIMIT} commands without a transaction: counting each as an error"
                    ));
                }
                if self.junk > JUNK_LIMIT {
                    self.errors += 1;
                }
            }
            _ => {}
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
        self.transactions += 1;
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
                (TRANSACTION_TAG, Some(tag)) if self.settings.tags.is_some() => {
                    // A malformed tag is ignored: the message still goes,
                    // at least once.
                    envelope.tag = Tag::parse(tag);
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
        if let Err(refusal) = self.claim_tag(&envelope) {
            return refusal;
        }
        envelope.sender = from;
        self.envelope = Some(envelope);
        self.screened = 0;
        reply(250, (2, 1, 0), "Ok")
    }

    /// Claims the transaction's tag for the whole transaction, so its
    /// record cannot change under it; a tag another session holds, or a
    /// store that fails, refuses MAIL for now.
    fn claim_tag(&mut self, envelope: &Envelope) -> Result<(), Reply> {
        let (Some(tags), Some(tag)) = (&self.settings.tags, &envelope.tag) else {
            return Ok(());
        };
        match tags.begin(tag) {
            Ok(once) => {
                self.once = Some(once);
                Ok(())
            }
            Err(Held::Busy) => Err(reply(
                451,
                (4, 3, 0),
                "Error: this transaction is being committed by another session; try again later",
            )),
            Err(Held::Failed(err)) => {
                warn!(
                    "peer {}: transaction tag store: {err}",
                    self.settings.policy.peer
                );
                Err(reply(
                    451,
                    (4, 3, 0),
                    "Error: transaction tag store unavailable; try again later",
                ))
            }
        }
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
        if self.fates.len() >= max {
            return reply(452, (4, 5, 3), "Error: too many recipients");
        }
        // One an earlier commit of this tag covered is answered from its
        // record, and never reaches the next hop.
        let covered = self
            .once
            .as_ref()
            .and_then(|once| once.covered(&to))
            .map(str::to_owned);
        self.fresh_rcpt = covered.is_none();
        if covered.is_none() {
            envelope.recipients.push(to);
            envelope.recipient_dsn.push(dsn);
        }
        self.fates.push(covered);
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
        let fates = std::mem::take(&mut self.fates);
        let once = self.once.take();
        if envelope.recipients.is_empty() {
            // Nothing of this transaction goes to the next hop.
            self.injector.reset();
            if let (Some(once), false) = (once, fates.is_empty()) {
                // Every recipient was committed before under this tag: the
                // content decides, at the dot, whether this is a retry.
                self.body = Body::Answering { once, fates };
                return reply(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>");
            }
            self.discard(None, 0);
            self.summary.rejected += 1;
            return reply(554, (5, 5, 1), "Error: no valid recipients");
        }
        let once = once.or_else(|| {
            let scope = self.settings.content_tags.as_ref()?;
            // A batch's scope names the transaction's place in it; an
            // empty one (the sendmail verb, a batch on a pipe) stays
            // empty, so its tags live only the content lifetime.
            let scope = if scope.is_empty() {
                String::new()
            } else {
                format!("{scope}#{}", self.transactions)
            };
            let tags = self.settings.tags.as_ref()?;
            Some(tags.by_content(&scope, &envelope.sender, &envelope.recipients))
        });
        match self.injector.start(&envelope) {
            Ok(mut message) => {
                let mut trace = Trace::new(&envelope, self.settings.policy.check_header_from);
                if self.settings.received_header {
                    let header = received_header(&self.settings, &envelope, message.queue_id());
                    for line in header.lines() {
                        trace.observe(line.as_bytes(), true);
                        if let Err(refusal) = message.write_piece(line.as_bytes(), true) {
                            message.abort();
                            return self.data_failed(refusal, fates.len());
                        }
                    }
                }
                self.body = Body::Accepting {
                    message,
                    trace,
                    fresh: envelope.recipients,
                    fates,
                    once,
                };
                reply(354, (2, 0, 0), "End data with <CR><LF>.<CR><LF>")
            }
            Err(refusal) => self.data_failed(refusal, fates.len()),
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
        let (message, trace, once) = match &mut self.body {
            Body::Accepting {
                message,
                trace,
                once,
                ..
            } => (message, trace, once),
            Body::Answering { once, .. } => {
                once.observe(bytes, end_of_line);
                return;
            }
            _ => return,
        };
        trace.observe(bytes, end_of_line);
        if let Some(once) = once {
            once.observe(bytes, end_of_line);
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
            if let Body::Accepting { message, fates, .. } =
                std::mem::replace(&mut self.body, Body::Idle)
            {
                message.abort();
                self.discard(Some(answer), fates.len());
            }
        }
    }

    /// The dot: the reply (BSMTP), or one per recipient (LMTP).
    fn data_end(&mut self) -> Vec<Reply> {
        let (replies, fates) = match std::mem::replace(&mut self.body, Body::Idle) {
            Body::Idle => return Vec::new(),
            Body::Discarding { reply, recipients } => {
                if reply.is_some() {
                    self.summary.rejected += 1;
                }
                (
                    reply.map(|r| vec![r]).unwrap_or_default(),
                    vec![None; recipients],
                )
            }
            Body::Answering { once, fates } => (self.answer_retry(once), fates),
            Body::Accepting {
                message,
                trace,
                fresh,
                fates,
                once,
            } => (self.commit(message, &trace, &fresh, once, &fates), fates),
        };
        self.dot_replies(replies, &fates)
    }

    /// The replies at the dot, from the replies for the recipients queued
    /// now (one for all, or one each) and the queue IDs of those answered
    /// from the tag store's record.
    fn dot_replies(&self, fresh: Vec<Reply>, fates: &[Option<String>]) -> Vec<Reply> {
        let all_failed = fresh.len() == 1 && !fresh[0].is_success();
        if self.settings.dialect == Dialect::Bsmtp || all_failed {
            let one = match fresh.as_slice() {
                [] => fates.iter().flatten().next().map(|id| queued(id)),
                [_, _, ..] => Some(bsmtp_reply(&fresh)),
                [one] => Some(one.clone()),
            };
            return match (self.settings.dialect, one) {
                (Dialect::Lmtp, Some(one)) => vec![one; fates.len()],
                (_, one) => one.into_iter().collect(),
            };
        }
        // LMTP: one reply per accepted recipient, in order.
        let mut fresh = fresh.into_iter().peekable();
        let mut last = None;
        fates
            .iter()
            .map(|fate| {
                if let Some(id) = fate {
                    return queued(id);
                }
                if let Some(next) = fresh.next() {
                    last = Some(next);
                }
                last.clone()
                    .unwrap_or_else(|| Refusal::temporary("no reply").reply)
            })
            .collect()
    }

    /// The dot of a transaction whose every recipient an earlier commit
    /// of its tag covered: a retry when the content is the same.
    fn answer_retry(&mut self, once: Once) -> Vec<Reply> {
        match once.settle(true) {
            Settled::Proceed(commit) => {
                let record = commit.so_far();
                let ids: Vec<&str> = record
                    .covered
                    .iter()
                    .map(|c| c.queue_id.as_str())
                    .chain(record.legacy.as_deref())
                    .collect();
                info!(
                    "peer {}: a retry: this transaction was committed before as {}: answering as then, queuing nothing",
                    self.settings.policy.peer,
                    ids.join(", ")
                );
                self.errors = 0;
                Vec::new()
            }
            other => vec![self.not_settled(other)],
        }
    }

    /// The reply for a transaction the tag store would not let through.
    fn not_settled(&mut self, settled: Settled) -> Reply {
        self.summary.rejected += 1;
        match settled {
            Settled::Differs => reply(
                451,
                (4, 3, 0),
                "Error: another message came with the transaction tag of one committed before; try again",
            ),
            Settled::Failed(err) => {
                warn!(
                    "peer {}: transaction tag store: {err}",
                    self.settings.policy.peer
                );
                reply(
                    451,
                    (4, 3, 0),
                    "Error: transaction tag store unavailable; try again later",
                )
            }
            _ => reply(
                451,
                (4, 3, 0),
                "Error: this message is being committed by another session; try again later",
            ),
        }
    }

    /// Commits the message, then its tag record, then answers: the next
    /// hop has the message before the record says so, and the record is on
    /// disk before the sender hears 250 (the window left is in
    /// [`crate::tags`]). `fresh` are the recipients queued now.
    fn commit(
        &mut self,
        message: I::Message,
        trace: &Trace,
        fresh: &[String],
        once: Option<Once>,
        fates: &[Option<String>],
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
        let partial = fates.iter().any(Option::is_some);
        let tag = match once.map(|once| once.settle(partial)) {
            None => None,
            Some(Settled::Proceed(commit)) => Some(commit),
            Some(Settled::Retry(record)) => {
                message.abort();
                let id = record.first_queue_id().unwrap_or_default().to_owned();
                info!(
                    "peer {}: from=<{}>, nrcpt={}, message-id={}: same sender, recipients and content as {id} a short time ago: a duplicate of {id}, not queued",
                    self.settings.policy.peer,
                    trace.sender,
                    trace.nrcpt,
                    trace.message_id.as_deref().unwrap_or("(none)"),
                );
                self.summary.accepted += 1;
                self.errors = 0;
                return vec![queued(&id)];
            }
            Some(other) => {
                message.abort();
                return vec![self.not_settled(other)];
            }
        };
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
                record_tag(tag, fresh.iter().map(|r| (r.as_str(), queue_id.as_str())));
                self.summary.accepted += 1;
                // Postfix forgives earlier errors once a message got through.
                self.errors = 0;
                vec![queued(&queue_id)]
            }
            Ok(Committed::PerRecipient(replies)) => {
                let ids: Vec<String> = replies.iter().map(queue_id_of).collect();
                let covered = fresh
                    .iter()
                    .zip(&replies)
                    .zip(&ids)
                    .filter(|((_, reply), _)| reply.is_success())
                    .map(|((r, _), id)| (r.as_str(), id.as_str()));
                if replies.iter().any(Reply::is_success) {
                    self.summary.accepted += 1;
                    self.errors = 0;
                }
                record_tag(tag, covered);
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
}

/// Records the recipients a commit covered under the transaction's tag.
/// The message is queued whatever happens here, so a failure is logged,
/// never turned into a refusal (that would make the sender retry, and
/// queue it twice for sure).
fn record_tag<'a>(
    tag: Option<crate::tags::Commit>,
    covered: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    let Some(tag) = tag else {
        return;
    };
    let ids: Vec<&str> = covered.clone().map(|(_, id)| id).collect();
    if let Err(err) = tag.record(covered) {
        warn!(
            "{}: queued, but its transaction tag could not be recorded ({err}): a retry of it would be queued again",
            ids.first().copied().unwrap_or(NOQUEUE)
        );
    }
}

/// Whether `event` completes a record (a command line, a content line or
/// 2048 bytes of one, as Postfix cuts long lines into records; the dot)
/// for the per-record deadline.
fn ends_record(event: &Event<'_>) -> bool {
    match event {
        Event::BodyPiece { bytes, end_of_line } => *end_of_line || bytes.len() >= 2048,
        _ => true,
    }
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

    /// Greylisted recipients (`grey...`) are deferred the first time the
    /// next hop is asked about them.
    fn greylisted(hop: &mut Hop, r: &str) -> bool {
        r.starts_with("grey") && hop.screened.iter().filter(|s| *s == r).count() == 1
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
                    if greylisted(&mut hop, r) {
                        return Some(reply(450, (4, 7, 1), format!("<{r}>: Greylisted")));
                    }
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

    /// Runs `input` through a Receiver that keeps tags in `dir`, with
    /// content tags in `scope` when given, over `hop`.
    fn tagged(
        dir: &std::path::Path,
        input: &[u8],
        hop: &Rc<RefCell<Hop>>,
        scope: Option<&str>,
    ) -> (String, Summary) {
        let policy = policy(&["@leaf.test"], 100_000, 10, false);
        let mut settings = Settings::new("hub.test".into(), policy, 20);
        settings.tags =
            Some(TagStore::open(dir, "leaf1", crate::tags::DEFAULT_LIFETIME, 1000).unwrap());
        settings.content_tags = scope.map(str::to_owned);
        let mut out = Vec::new();
        let summary = Receiver::new(settings, Memory(hop.clone()))
            .run(&mut &input[..], &mut out)
            .unwrap();
        (String::from_utf8(out).unwrap(), summary)
    }

    /// A retry after a lost acknowledgement queues nothing twice: the
    /// same tag and content is answered with the first queue ID.
    #[test]
    fn a_retry_is_answered_as_the_first_time() {
        let dir = tempfile::tempdir().unwrap();
        let hop = Rc::new(RefCell::new(Hop::default()));
        let input = b"EHLO leaf\nMAIL FROM:<a@leaf.test> XTXID=4XQ1.ab\nRCPT TO:<b@hub.test>\nDATA\nreport 1\n.\n";
        let (out, _) = tagged(dir.path(), input, &hop, None);
        assert!(out.contains("250 2.0.0 Ok: queued as Q1\r\n"), "{out}");
        let (out, _) = tagged(dir.path(), input, &hop, None);
        assert!(out.contains("250 2.0.0 Ok: queued as Q1\r\n"), "{out}");
        assert_eq!(hop.borrow().committed.len(), 1);
        assert_eq!(hop.borrow().aborted, 0);
    }

    /// Audit M1: tags recur (Postfix reuses short queue IDs). Another
    /// message under a committed tag is not dropped as a duplicate: it is
    /// deferred once (the record is another message's), then queued.
    #[test]
    fn a_recurring_tag_with_other_content_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let hop = Rc::new(RefCell::new(Hop::default()));
        let first = b"EHLO leaf\nMAIL FROM:<a@leaf.test> XTXID=4XQ1.ab\nRCPT TO:<b@hub.test>\nDATA\nreport 1\n.\n";
        let second = b"EHLO leaf\nMAIL FROM:<a@leaf.test> XTXID=4XQ1.ab\nRCPT TO:<b@hub.test>\nDATA\nreport 2\n.\n";
        tagged(dir.path(), first, &hop, None);
        let (out, _) = tagged(dir.path(), second, &hop, None);
        assert_eq!(codes(&out), ["250", "250", "250", "354", "451"], "{out}");
        assert_eq!(hop.borrow().committed.len(), 1);
        let (out, _) = tagged(dir.path(), second, &hop, None);
        assert!(out.contains("250 2.0.0 Ok: queued as Q2\r\n"), "{out}");
        let hop = hop.borrow();
        assert_eq!(hop.committed.len(), 2);
        assert!(hop.committed[1].1.ends_with(b"report 2\n"));
    }

    /// Audit M2: a retry after a lost acknowledgement answers from the
    /// record only the recipients the first commit covered: one refused
    /// the first time is refused again, one deferred is asked about and
    /// queued now, never reported delivered without being queued.
    #[test]
    fn a_retry_judges_the_recipients_the_first_commit_did_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let hop = Rc::new(RefCell::new(Hop {
            screen: true,
            ..Hop::default()
        }));
        let input = b"EHLO leaf\nMAIL FROM:<a@leaf.test> XTXID=4XQ1.ab\nRCPT TO:<ok@hub.test>\n\
                      RCPT TO:<nouser@hub.test>\nRCPT TO:<grey@hub.test>\nDATA\nhi\n.\n";
        let (out, _) = tagged(dir.path(), input, &hop, None);
        assert_eq!(
            codes(&out),
            ["250", "250", "250", "550", "450", "354", "250"],
            "{out}"
        );
        assert_eq!(hop.borrow().committed[0].0.recipients, ["ok@hub.test"]);
        // The acknowledgement was lost: the same transaction again.
        let (out, _) = tagged(dir.path(), input, &hop, None);
        assert_eq!(
            codes(&out),
            ["250", "250", "250", "550", "250", "354", "250"],
            "{out}"
        );
        {
            let hop = hop.borrow();
            // ok@ was not asked about again, nor queued again; grey@ was
            // queued now, alone.
            assert_eq!(hop.committed.len(), 2);
            assert_eq!(hop.committed[1].0.recipients, ["grey@hub.test"]);
            assert_eq!(
                hop.screened,
                [
                    "ok@hub.test",
                    "nouser@hub.test",
                    "grey@hub.test",
                    "nouser@hub.test",
                    "grey@hub.test"
                ]
            );
        }
        // A third try: everything is answered from the record.
        let (out, _) = tagged(dir.path(), input, &hop, None);
        assert_eq!(
            codes(&out),
            ["250", "250", "250", "550", "250", "354", "250"],
            "{out}"
        );
        assert_eq!(hop.borrow().committed.len(), 2);
    }

    /// Audit M5: content tags without a scope (the sendmail verb) catch a
    /// quick resend and say so; in a batch's scope the same message at
    /// another place, or in another batch, is queued.
    #[test]
    fn content_tags_drop_only_a_resend_in_their_scope() {
        let dir = tempfile::tempdir().unwrap();
        let hop = Rc::new(RefCell::new(Hop::default()));
        let one = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nbackup FAILED\n.\n";
        let (out, summary) = tagged(dir.path(), one, &hop, Some(""));
        assert!(out.contains("queued as Q1"), "{out}");
        let (out, summary2) = tagged(dir.path(), one, &hop, Some(""));
        assert!(out.contains("queued as Q1"), "{out}");
        assert_eq!((summary.accepted, summary2.accepted), (1, 1));
        assert_eq!(hop.borrow().committed.len(), 1);
        assert_eq!(hop.borrow().aborted, 1);
        // A batch with the message twice, read twice: two queued, once.
        let twice = [&one[..], &one[..]].concat();
        tagged(dir.path(), &twice, &hop, Some("batch-a"));
        tagged(dir.path(), &twice, &hop, Some("batch-a"));
        assert_eq!(hop.borrow().committed.len(), 3);
        tagged(dir.path(), &twice, &hop, Some("batch-b"));
        assert_eq!(hop.borrow().committed.len(), 5);
    }

    /// Audit L8: a peer that only sends NOOPs (a deflated stream of them
    /// cost the hub 20 CPU seconds) is hung up on after the junk limit
    /// and the error limit, as Postfix's smtpd does; a batching client's
    /// RSET and EHLO between transactions never get near it.
    #[test]
    fn junk_commands_end_the_session() {
        let input = b"NOOP\n".repeat(100_000);
        let (out, _, summary) = session(&input, false);
        assert!(summary.error_limit, "{summary:?}");
        assert!(out.ends_with("421 4.7.0 hub.test Error: too many errors\r\n"));
        assert_eq!(codes(&out).len(), JUNK_LIMIT + 20 + 1);
        let mut busy = Vec::new();
        for _ in 0..300 {
            busy.extend_from_slice(
                b"RSET\nEHLO leaf\nNOOP\nMAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nx\n.\n",
            );
        }
        let (_, hop, summary) = session(&busy, false);
        assert!(!summary.error_limit);
        assert_eq!(hop.borrow().committed.len(), 300);
    }

    /// A peer that drips bytes, each before the idle timeout, yet never
    /// finishes a line is hung up on at the per-record deadline, and its
    /// open message is dropped.
    #[test]
    fn a_line_that_never_ends_meets_the_record_deadline() {
        struct Drip(usize);
        impl Read for Drip {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let head: &[u8] = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\n";
                if self.0 < head.len() {
                    let n = (head.len() - self.0).min(buf.len());
                    buf[..n].copy_from_slice(&head[self.0..self.0 + n]);
                    self.0 += n;
                    return Ok(n);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                buf[0] = b'x';
                Ok(1)
            }
        }
        let hop = Rc::new(RefCell::new(Hop::default()));
        let mut settings = Settings::new(
            "hub.test".into(),
            policy(&["@leaf.test"], 1000, 10, false),
            20,
        );
        settings.record_deadline = Some(std::time::Duration::from_millis(200));
        let mut out = Vec::new();
        let err = Receiver::new(settings, Memory(hop.clone()))
            .run(&mut Drip(0), &mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with("421 4.4.2 hub.test Error: timeout exceeded\r\n"),
            "{out}"
        );
        assert!(hop.borrow().committed.is_empty());
        assert_eq!(hop.borrow().aborted, 1);
    }

    /// Audit M5 through the receiver: a sendmail-verb message (no scope)
    /// is remembered for the content lifetime only; the same alert after
    /// it is queued again.
    #[test]
    fn unscoped_content_tags_expire_with_the_content_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let hop = Rc::new(RefCell::new(Hop::default()));
        let run = |lifetime: std::time::Duration| {
            let policy = policy(&["@leaf.test"], 100_000, 10, false);
            let mut settings = Settings::new("hub.test".into(), policy, 20);
            settings.tags = Some(
                TagStore::open(dir.path(), "leaf1", crate::tags::DEFAULT_LIFETIME, 1000)
                    .unwrap()
                    .with_content_lifetime(lifetime),
            );
            settings.content_tags = Some(String::new());
            let input = b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nDATA\nbackup FAILED\n.\n";
            let mut out = Vec::new();
            Receiver::new(settings, Memory(hop.clone()))
                .run(&mut &input[..], &mut out)
                .unwrap();
        };
        // Kept no time at all: each is a new message.
        run(std::time::Duration::ZERO);
        run(std::time::Duration::ZERO);
        assert_eq!(hop.borrow().committed.len(), 2);
        // Kept ten minutes: the resend is caught.
        run(std::time::Duration::from_mins(10));
        run(std::time::Duration::from_mins(10));
        assert_eq!(hop.borrow().committed.len(), 3);
    }

    /// Audit L5: From: fields are collected only when the peer's policy
    /// checks them, and at most [`MAX_FROM_FIELDS`] of them (10 MB of From:
    /// lines cost 68 MB before); one over the cap is refused as unreadable.
    #[test]
    fn from_fields_are_collected_only_when_checked_and_bounded() {
        let envelope = Envelope::default();
        let feed = |trace: &mut Trace| {
            for _ in 0..10_000 {
                trace.observe(b"From: someone@leaf.test", true);
            }
        };
        let mut off = Trace::new(&envelope, false);
        feed(&mut off);
        assert!(off.from.is_empty());
        let mut on = Trace::new(&envelope, true);
        feed(&mut on);
        assert_eq!(on.from.len(), MAX_FROM_FIELDS);
        let policy = policy(&["@leaf.test"], 1000, 10, true);
        assert!(on.refused_from(&policy).is_some());
    }
}
