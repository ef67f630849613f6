//! `rsmtp --peer NAME < batch.bsmtp`, with no SSH and nobody to read the
//! replies (as UUCP's rsmtp and `exim -bS` work): the whole batch is read,
//! every transaction the hub refuses for good becomes a notice to its
//! sender through Postfix, and the exit status says whether the batch is
//! done (0) or must be read again later (75: something was deferred, or a
//! notice could not be queued). So `rsmtp < f && rm f` loses nothing.
//!
//! Reading a batch again doubles nothing: each accepted message is tagged
//! by its content (sender, recipients, body; [`Settings::content_tags`]),
//! and each notice by the refused transaction's content, so what was
//! queued or bounced the first time is recognised.
//!
//! The server session answers each command as over SSH; [`Transcript`]
//! reads the same batch alongside and pairs each command with its reply,
//! so every transaction's fate is known per recipient without a second
//! implementation of the protocol.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::rc::Rc;

use bsmtp::bounce::{RecipientReport, DEFAULT_SIZE_LIMIT};
use bsmtp::codec::{Command, Decoder, Event, Param};
use bsmtp::dsn::{parse_envid, parse_notify, parse_orcpt, MailDsn, RcptDsn, Ret};
use bsmtp::reply::{EnhancedCode, Reply, ReplyParser};
use bsmtp::tag::{Record, Tag};
use bsmtp_session::notice::{About, Notifier};
use bsmtp_session::postdrop::PostdropInjector;
use bsmtp_session::server::{Receiver, Settings, Summary};
use bsmtp_session::tags::{Claim, TagStore};
use log::{info, warn};
use sha1::{Digest, Sha1};

use crate::rejects::{Kept, Rejects};

/// Most recipients one transaction of a batch may have queued: offline
/// nobody can send the rest in a second transaction, so the peer's
/// `max_recipients` (Postfix's `smtpd_recipient_limit`, 1000 by default)
/// is raised to this, as many as Postfix's qmgr holds in memory for one
/// message (`qmgr_message_recipient_limit`, 20000). Beyond it a recipient
/// is refused for good and reported.
pub const OFFLINE_MAX_RECIPIENTS: usize = 20_000;
/// Most refused recipients of one transaction named in its notice and
/// reject file; the rest are counted (SPEC invariant 5: a batch of
/// millions of RCPTs is read in a bounded footprint).
pub const MAX_NAMED_REFUSED: usize = 1000;

/// Recipients of one transaction that are counted, not named.
#[derive(Debug, Default, Clone, Copy)]
struct Unnamed {
    /// Accepted at RCPT beyond [`OFFLINE_MAX_RECIPIENTS`] named ones: they
    /// share the fate of the message.
    accepted: usize,
    /// Refused for good beyond [`MAX_NAMED_REFUSED`].
    refused: usize,
    /// Deferred at RCPT (a retry needs no names).
    deferred: usize,
}

/// What became of a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The receiver's own count.
    pub summary: Summary,
    /// Recipients whose refusal was reported to the sender (or needed no
    /// notice).
    pub bounced: usize,
    /// Recipients deferred, or refused without a queued notice: the batch
    /// must be read again.
    pub retry: usize,
    /// Recipients of transactions whose `MAIL FROM` was refused for good:
    /// settled without a notice (the sender may be forged), logged and
    /// kept in a reject file ([`crate::rejects`]).
    pub unreported: usize,
}

/// One transaction as read from the batch, with the replies it got.
#[derive(Debug, Default)]
struct Transaction {
    sender: String,
    dsn: MailDsn,
    /// Recipients answered, with their replies: every one accepted up to
    /// [`OFFLINE_MAX_RECIPIENTS`], refused up to [`MAX_NAMED_REFUSED`].
    recipients: Vec<(String, RcptDsn, Option<Reply>)>,
    /// Recipients not answered yet, oldest first.
    waiting: VecDeque<(String, RcptDsn)>,
    /// Recipients answered and only counted.
    unnamed: Unnamed,
    /// Accepted and refused ones in `recipients`.
    named_accepted: usize,
    named_refused: usize,
    mail: Option<Reply>,
    /// DATA was sent.
    data_sent: bool,
    data: Option<Reply>,
    end: Option<Reply>,
    /// Nothing more of it comes from the batch (dot, RSET, a new MAIL...).
    ended: bool,
    /// The content, up to the notice's size limit (plus a line, so a
    /// longer one is known to be cut).
    content: Vec<u8>,
    hash: Option<Sha1>,
}

impl Transaction {
    /// The oldest waiting recipient got `reply`: named or counted.
    fn answered(&mut self, reply: Reply) {
        let Some((to, dsn)) = self.waiting.pop_front() else {
            return;
        };
        let reply = offline_rcpt_reply(reply);
        let named = if reply.code / 100 == 2 {
            &mut self.named_accepted
        } else if reply.is_permanent() {
            &mut self.named_refused
        } else {
            // Deferred: the batch is read again, no names needed.
            self.unnamed.deferred += 1;
            return;
        };
        let cap = if reply.code / 100 == 2 {
            OFFLINE_MAX_RECIPIENTS
        } else {
            MAX_NAMED_REFUSED
        };
        if *named < cap {
            *named += 1;
            self.recipients.push((to, dsn, Some(reply)));
        } else if reply.code / 100 == 2 {
            self.unnamed.accepted += 1;
        } else {
            self.unnamed.refused += 1;
        }
    }

    /// Every reply it will get is in.
    fn complete(&self) -> bool {
        let envelope = self.mail.is_some() && self.waiting.is_empty();
        let data = match (&self.data, &self.end) {
            _ if !self.data_sent => true,
            (Some(data), _) if data.code != 354 => true,
            (_, end) => end.is_some(),
        };
        self.ended && envelope && data
    }
}

/// What a reply due next answers (transactions by their number).
#[derive(Debug, Clone, Copy)]
enum Due {
    Mail(usize),
    Rcpt(usize),
    Data(usize),
    /// The dot: answered only when DATA got 354.
    End(usize),
    Other,
}

/// The batch read alongside the receiver, and the replies paired with it.
#[derive(Default)]
struct Transcript {
    decoder: Decoder,
    unread: Vec<u8>,
    due: VecDeque<Due>,
    /// Transactions not yet settled, oldest first; `first` is the number
    /// of the front one.
    pending: VecDeque<Transaction>,
    first: usize,
    /// The number of the transaction being read, if one is open.
    open: Option<usize>,
    parser: ReplyParser,
    replies: Vec<u8>,
}

impl Transcript {
    fn get(&mut self, number: usize) -> Option<&mut Transaction> {
        number
            .checked_sub(self.first)
            .and_then(|i| self.pending.get_mut(i))
    }

    /// Reads bytes the receiver read (`eof`: the batch ended).
    fn input(&mut self, bytes: &[u8], eof: bool) {
        // Out of self while its events, which borrow it, are handled.
        let mut unread = std::mem::take(&mut self.unread);
        unread.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            let found = if eof {
                self.decoder.decode_eof(&unread[used..]).ok().flatten()
            } else {
                self.decoder.decode(&unread[used..])
            };
            let Some((n, event)) = found else { break };
            used += n;
            match event {
                Event::BodyPiece { bytes, end_of_line } => self.body(bytes, end_of_line),
                Event::DataEnd => {
                    if let Some(number) = self.open.take() {
                        self.due.push_back(Due::End(number));
                        if let Some(t) = self.get(number) {
                            t.ended = true;
                        }
                    }
                }
                Event::Command(command) => self.command(command),
                Event::Invalid(_) => self.due.push_back(Due::Other),
                Event::Skipped => {}
            }
        }
        unread.drain(..used);
        self.unread = unread;
        if eof {
            self.end_open();
        }
    }

    fn body(&mut self, bytes: &[u8], end_of_line: bool) {
        let Some(number) = self.open else { return };
        let Some(open) = self.get(number) else { return };
        if let Some(hash) = open.hash.as_mut() {
            hash.update(bytes);
            if end_of_line {
                hash.update(b"\n");
            }
        }
        if open.content.len() <= DEFAULT_SIZE_LIMIT {
            open.content.extend_from_slice(bytes);
            if end_of_line {
                open.content.push(b'\n');
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Mail { from, params } => {
                self.end_open();
                let mut hash = Sha1::new();
                hash.update(from.as_bytes());
                hash.update(b"\0");
                let number = self.first + self.pending.len();
                self.pending.push_back(Transaction {
                    dsn: mail_dsn(&params),
                    sender: from,
                    hash: Some(hash),
                    ..Transaction::default()
                });
                self.open = Some(number);
                self.due.push_back(Due::Mail(number));
            }
            Command::Rcpt { to, params } => {
                let open = self.open;
                match open.and_then(|n| self.get(n).map(|t| (n, t))) {
                    Some((number, t)) => {
                        if let Some(hash) = t.hash.as_mut() {
                            hash.update(to.as_bytes());
                            hash.update(b"\0");
                        }
                        t.waiting.push_back((to, rcpt_dsn(&params)));
                        self.due.push_back(Due::Rcpt(number));
                    }
                    None => self.due.push_back(Due::Other),
                }
            }
            Command::Data => match self.open {
                Some(number) => {
                    if let Some(t) = self.get(number) {
                        t.data_sent = true;
                    }
                    self.due.push_back(Due::Data(number));
                }
                None => self.due.push_back(Due::Other),
            },
            Command::Rset | Command::Ehlo(_) | Command::Helo(_) | Command::Lhlo(_) => {
                self.end_open();
                self.due.push_back(Due::Other);
            }
            _ => self.due.push_back(Due::Other),
        }
    }

    /// The open transaction ends before its DATA or dot (RSET, a new MAIL,
    /// the end of the batch).
    fn end_open(&mut self) {
        if let Some(number) = self.open.take() {
            if let Some(t) = self.get(number) {
                t.ended = true;
            }
        }
    }

    /// Reads replies the receiver wrote, pairing each with what it
    /// answers; returns the transactions now complete, oldest first.
    fn output(&mut self, bytes: &[u8]) -> Vec<Transaction> {
        self.replies.extend_from_slice(bytes);
        while let Ok(Some((used, reply))) = self.parser.parse(&self.replies) {
            self.replies.drain(..used);
            self.reply(reply);
        }
        self.take_complete()
    }

    fn reply(&mut self, reply: Reply) {
        while let Some(due) = self.due.pop_front() {
            match due {
                Due::End(number) => {
                    let Some(t) = self.get(number) else { return };
                    if t.data.as_ref().is_none_or(|d| d.code != 354) {
                        // A refused DATA gets no reply at its dot.
                        continue;
                    }
                    t.end = Some(reply);
                }
                Due::Mail(number) => {
                    if let Some(t) = self.get(number) {
                        t.mail = Some(reply);
                    }
                }
                Due::Rcpt(number) => {
                    if let Some(t) = self.get(number) {
                        t.answered(reply);
                    }
                }
                Due::Data(number) => {
                    if let Some(t) = self.get(number) {
                        t.data = Some(reply);
                    }
                }
                Due::Other => {}
            }
            return;
        }
    }

    /// Takes the complete transactions from the front.
    fn take_complete(&mut self) -> Vec<Transaction> {
        let mut done = Vec::new();
        while self.pending.front().is_some_and(Transaction::complete) {
            done.extend(self.pending.pop_front());
            self.first += 1;
        }
        done
    }
}

/// A RCPT reply as it stands offline: "too many recipients" (452 4.5.3)
/// is final, since nobody sends the rest in another transaction and the
/// same batch meets the same limit when it is read again.
fn offline_rcpt_reply(reply: Reply) -> Reply {
    if reply.code != 452 || reply.enhanced != Some(EnhancedCode::new(4, 5, 3)) {
        return reply;
    }
    Reply::new(
        550,
        Some(EnhancedCode::new(5, 5, 3)),
        format!(
            "Error: too many recipients: a transaction of a batch read offline takes at most {OFFLINE_MAX_RECIPIENTS}; send the message again to the others"
        ),
    )
}

fn mail_dsn(params: &[Param]) -> MailDsn {
    let mut dsn = MailDsn::default();
    for param in params {
        match (param.keyword.as_str(), param.value.as_deref()) {
            ("RET", Some(ret)) => dsn.ret = Ret::parse(ret),
            ("ENVID", Some(envid)) => dsn.envid = parse_envid(envid),
            _ => {}
        }
    }
    dsn
}

fn rcpt_dsn(params: &[Param]) -> RcptDsn {
    let mut dsn = RcptDsn::default();
    for param in params {
        match (param.keyword.as_str(), param.value.as_deref()) {
            ("NOTIFY", Some(notify)) => dsn.notify = parse_notify(notify),
            ("ORCPT", Some(orcpt)) => dsn.orcpt = parse_orcpt(orcpt),
            _ => {}
        }
    }
    dsn
}

/// The batch's reading, shared by the receiver's input and output.
struct Reading<'a> {
    transcript: Transcript,
    peer: String,
    notifier: &'a Notifier,
    notices: Option<&'a TagStore>,
    rejects: Rejects,
    outcome: Outcome,
}

impl Reading<'_> {
    fn settle(&mut self, done: &[Transaction]) {
        for transaction in done {
            settle(
                &self.peer,
                transaction,
                self.notifier,
                self.notices,
                &mut self.rejects,
                &mut self.outcome,
            );
        }
    }
}

/// The receiver's input, copied to the transcript.
struct Tee<'a, 'b, R: Read> {
    input: &'a mut R,
    reading: Rc<RefCell<Reading<'b>>>,
}

impl<R: Read> Read for Tee<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.reading
            .borrow_mut()
            .transcript
            .input(&buf[..n], n == 0);
        Ok(n)
    }
}

/// The receiver's replies, read by the transcript (nobody else reads
/// them offline); each transaction is settled as soon as it is complete,
/// so a long batch holds only a few at a time.
struct Replies<'b>(Rc<RefCell<Reading<'b>>>);

impl Write for Replies<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut reading = self.0.borrow_mut();
        let done = reading.transcript.output(buf);
        reading.settle(&done);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the whole batch on `input`, queues what the peer's policy allows,
/// and reports each refused transaction to its sender with `notifier`;
/// `notices` (the peer's tag store) remembers which were reported. A
/// transaction whose sender was refused goes to `rejects` instead.
pub fn receive(
    mut settings: Settings,
    injector: PostdropInjector,
    notifier: &Notifier,
    notices: Option<&TagStore>,
    rejects: Rejects,
    input: &mut impl Read,
) -> io::Result<Outcome> {
    // Nobody reads the replies: errors must not end the batch early.
    settings.error_limit = usize::MAX;
    // Nor sends the recipients over the limit again (audit L2).
    settings.policy.max_recipients = settings.policy.max_recipients.max(OFFLINE_MAX_RECIPIENTS);
    // Scoped by the caller to the batch file, when it knows one.
    settings.content_tags.get_or_insert_with(String::new);
    let reading = Rc::new(RefCell::new(Reading {
        transcript: Transcript::default(),
        peer: settings.policy.peer.clone(),
        notifier,
        notices,
        rejects,
        outcome: Outcome::default(),
    }));
    let mut tee = Tee {
        input,
        reading: Rc::clone(&reading),
    };
    let summary =
        Receiver::new(settings, injector).run(&mut tee, &mut Replies(Rc::clone(&reading)))?;
    drop(tee);
    let mut reading = Rc::try_unwrap(reading)
        .ok()
        .expect("the receiver is done with the batch")
        .into_inner();
    let done = reading.transcript.take_complete();
    reading.settle(&done);
    reading.outcome.summary = summary;
    Ok(reading.outcome)
}

/// One transaction's fate: refused recipients are reported (once, across
/// readings of the batch), deferred ones make the batch a retry.
fn settle(
    peer: &str,
    transaction: &Transaction,
    notifier: &Notifier,
    notices: Option<&TagStore>,
    rejects: &mut Rejects,
    outcome: &mut Outcome,
) {
    let Some(mail) = &transaction.mail else {
        return;
    };
    if transaction.data.is_none() {
        // Ended before DATA: nothing was asked to be delivered.
        return;
    }
    if mail.is_permanent() {
        // Notices only for refusals after MAIL was accepted.
        keep_refused_sender(peer, transaction, mail, rejects, outcome);
        return;
    }
    let mut reports = Vec::new();
    let mut dsn = Vec::new();
    for (to, rcpt_dsn, rcpt) in &transaction.recipients {
        let (reply, stage) = fate(mail, rcpt.as_ref(), transaction);
        match reply {
            Some(reply) if reply.is_permanent() => {
                reports.push(RecipientReport::from_reply(
                    to,
                    rcpt_dsn.orcpt.clone(),
                    reply,
                    None,
                    stage,
                ));
                dsn.push(rcpt_dsn);
            }
            Some(reply) if reply.code / 100 == 2 => {}
            _ => outcome.retry += 1,
        }
    }
    settle_unnamed(peer, transaction, mail, outcome);
    if reports.is_empty() {
        return;
    }
    let tag = transaction.hash.clone().and_then(|hash| {
        let mut tag = String::from("b");
        for byte in &hash.finalize()[..12] {
            let _ = write!(tag, "{byte:02x}");
        }
        Tag::parse(&tag)
    });
    let claim = match (notices, &tag) {
        (Some(store), Some(tag)) => match store.claim(tag) {
            Ok(Claim::Held(claim)) if claim.earlier().is_some() => {
                let id = claim
                    .earlier()
                    .and_then(Record::first_queue_id)
                    .unwrap_or("none");
                info!("peer {peer}: refused transaction from <{}> was reported before ({id}): no second notice", transaction.sender);
                outcome.bounced += reports.len();
                return;
            }
            Ok(Claim::Held(claim)) => Some(claim),
            Ok(Claim::Busy) | Err(_) => {
                outcome.retry += reports.len();
                return;
            }
        },
        _ => None,
    };
    let about = About {
        sender: &transaction.sender,
        queue_id: None,
        arrival: None,
        dsn: transaction.dsn.clone(),
        smtputf8: false,
        original: &transaction.content,
    };
    let dsn: Vec<Option<&RcptDsn>> = dsn.into_iter().map(Some).collect();
    match notifier.failure(&about, &reports, &dsn) {
        Ok(notice) => {
            if let Some(claim) = claim {
                let _ = claim.mark(notice.as_deref().unwrap_or("none"));
            }
            outcome.bounced += reports.len();
        }
        Err(err) => {
            warn!(
                "peer {peer}: cannot queue the notice for a refused transaction from <{}>: {err}",
                transaction.sender
            );
            outcome.retry += reports.len();
        }
    }
}

/// The recipients only counted (see [`Transaction::recipients`]): refused
/// ones go with the notice about the named ones (there are
/// [`MAX_NAMED_REFUSED`] of those), unnamed accepted ones share the
/// message's fate, deferred ones make the batch a retry.
fn settle_unnamed(peer: &str, transaction: &Transaction, mail: &Reply, outcome: &mut Outcome) {
    let unnamed = transaction.unnamed;
    let message = match (&transaction.data, &transaction.end) {
        _ if mail.code / 100 != 2 => Some(mail),
        (Some(data), _) if data.code != 354 => Some(data),
        (_, end) => end.as_ref(),
    };
    let (refused, retry) = match message {
        _ if mail.code / 100 != 2 => (0, unnamed.accepted + unnamed.refused + unnamed.deferred),
        Some(reply) if reply.is_permanent() => {
            (unnamed.refused + unnamed.accepted, unnamed.deferred)
        }
        Some(reply) if reply.code / 100 == 2 => (unnamed.refused, unnamed.deferred),
        _ => (unnamed.refused, unnamed.deferred + unnamed.accepted),
    };
    outcome.retry += retry;
    if refused > 0 {
        // Counted as reported: the notice about the named ones goes out
        // (or the batch is read again for them).
        outcome.bounced += refused;
        warn!(
            "peer {peer}: transaction from <{}>: {refused} more recipient(s) refused, not named in the notice (it names {MAX_NAMED_REFUSED})",
            transaction.sender
        );
    }
}

/// A transaction whose `MAIL FROM` was refused for good: no notice (the
/// sender is whatever the batch says, maybe a victim), a log line and a
/// reject file; settled, so the batch is not read again for it.
fn keep_refused_sender(
    peer: &str,
    transaction: &Transaction,
    mail: &Reply,
    rejects: &mut Rejects,
    outcome: &mut Outcome,
) {
    let unnamed = transaction.unnamed;
    let recipients =
        transaction.recipients.len() + unnamed.accepted + unnamed.refused + unnamed.deferred;
    outcome.unreported += recipients;
    let name = transaction.hash.clone().map_or_else(
        || {
            format!(
                "{}-{}",
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
                std::process::id()
            )
        },
        |hash| {
            hash.finalize()
                .iter()
                .fold(String::new(), |mut name, byte| {
                    let _ = write!(name, "{byte:02x}");
                    name
                })
        },
    );
    let whole = transaction.content.len() <= DEFAULT_SIZE_LIMIT;
    let comments = [
        format!("rsmtp: peer {peer}: refused at MAIL FROM, so no notice was mailed to the sender; kept for the admin"),
        format!("date: {}", chrono::Local::now().to_rfc2822()),
        format!("reply: {mail}"),
        format!(
            "recipients: {recipients}, {} listed below",
            transaction.recipients.len()
        ),
        if whole {
            format!("content: whole, {} bytes", transaction.content.len())
        } else {
            format!("content: cut after {} bytes, and no final \".\": reading this file queues nothing", transaction.content.len())
        },
    ];
    let listed: Vec<&str> = transaction
        .recipients
        .iter()
        .map(|r| r.0.as_str())
        .collect();
    let text = crate::rejects::bsmtp(
        &comments,
        &transaction.sender,
        &listed,
        &transaction.content,
        whole,
    );
    let kept = match rejects.keep(&name, &text) {
        Ok(Kept::File(path)) => format!("kept in {}", path.display()),
        Ok(Kept::Full(dir)) => format!(
            "not kept: {dir} holds {} reject files already (read and remove them)",
            crate::rejects::MAX_FILES,
            dir = dir.display()
        ),
        Ok(Kept::Off) => "not kept (reject_directory is empty)".to_owned(),
        Err(err) => format!("not kept: {err}"),
    };
    warn!(
        "peer {peer}: transaction from <{}> to {recipients} recipient(s) refused at MAIL FROM ({mail}): no notice to the sender; {kept}",
        transaction.sender
    );
}

/// The reply that decides a recipient, and the command it answered.
fn fate<'a>(
    mail: &'a Reply,
    rcpt: Option<&'a Reply>,
    transaction: &'a Transaction,
) -> (Option<&'a Reply>, &'static str) {
    if mail.code / 100 != 2 {
        return (Some(mail), "MAIL FROM");
    }
    match rcpt {
        Some(rcpt) if rcpt.code / 100 != 2 => return (Some(rcpt), "RCPT TO"),
        None => return (None, "RCPT TO"),
        Some(_) => {}
    }
    match (&transaction.data, &transaction.end) {
        (Some(data), _) if data.code != 354 => (Some(data), "DATA"),
        (_, Some(end)) => (Some(end), "end of DATA"),
        _ => (None, "end of DATA"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one transaction of `rcpts` recipients and the replies a
    /// receiver gives it, RCPT replies from `rcpt_reply(i)`.
    fn transcript(rcpts: usize, rcpt_reply: impl Fn(usize) -> &'static str) -> Vec<Transaction> {
        let mut t = Transcript::default();
        let mut done = Vec::new();
        t.input(b"MAIL FROM:<a@leaf.test>\n", false);
        done.extend(t.output(b"250 2.1.0 Ok\r\n"));
        for i in 0..rcpts {
            t.input(format!("RCPT TO:<u{i}@hub.test>\n").as_bytes(), false);
            done.extend(t.output(rcpt_reply(i).as_bytes()));
        }
        t.input(b"DATA\nSubject: x\n\nbody\n.\n", true);
        done.extend(t.output(b"354 2.0.0 go ahead\r\n250 2.0.0 Ok: queued as X\r\n"));
        done
    }

    /// Regression (audit L3): the transcript kept every RCPT of a batch
    /// (2M RCPTs in 56 MB took 646 MB). Now refused recipients past
    /// `MAX_NAMED_REFUSED` are only counted.
    #[test]
    fn refused_recipients_past_the_named_ones_are_only_counted() {
        let done = transcript(MAX_NAMED_REFUSED * 5, |i| {
            if i == 0 {
                "250 2.1.5 Ok\r\n"
            } else {
                "554 5.7.1 not allowed\r\n"
            }
        });
        let [t] = done.as_slice() else {
            panic!("{} transactions", done.len())
        };
        assert_eq!(t.recipients.len(), MAX_NAMED_REFUSED + 1);
        assert_eq!(t.unnamed.refused, MAX_NAMED_REFUSED * 4 - 1);
        assert!(t.waiting.is_empty());
        let mut outcome = Outcome::default();
        settle_unnamed("leaf1", t, t.mail.as_ref().unwrap(), &mut outcome);
        assert_eq!(outcome.bounced, MAX_NAMED_REFUSED * 4 - 1);
        assert_eq!(outcome.retry, 0);
    }

    /// Regression (audit L2): recipients over `max_recipients` got 452 on
    /// every reading, so the batch exited 75 for ever. Past the offline
    /// limit "too many recipients" is final.
    #[test]
    fn too_many_recipients_is_final_offline() {
        let done = transcript(3, |i| {
            if i < 2 {
                "250 2.1.5 Ok\r\n"
            } else {
                "452 4.5.3 Error: too many recipients\r\n"
            }
        });
        let refused = done[0].recipients[2].2.as_ref().unwrap();
        assert_eq!((refused.code, refused.is_permanent()), (550, true));
        assert_eq!(refused.enhanced, Some(EnhancedCode::new(5, 5, 3)));
    }
}
