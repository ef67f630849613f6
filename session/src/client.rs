//! The sending role: a session with a BSMTP receiver over any byte stream.
//! EHLO once, giving the receiver's typed [`Extensions`]; then many
//! transactions, each returning an [`Outcome`] with the fate of every
//! recipient. Kept apart from SSH, so pipe mode, the LMTP bridge and flush
//! drive the same code (Postfix's `smtp_proto.c` is the model; lettre's
//! `SmtpConnection` has the same shape).
//!
//! Commands are queued and written in groups (RFC 2920 pipelining); replies
//! are read back in order, and each is checked to be of a kind its command
//! can get: a `220` where EHLO's `250` was due, or a `250` to DATA, means
//! the receiver is out of step with us, and nothing it says after that can
//! be trusted.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use bsmtp::codec::{encode_command, BodyEncoder, Command, Param};
use bsmtp::dsn::{orcpt_value, xtext_encode, MailDsn, RcptDsn};
use bsmtp::extensions::{Extensions, TRANSACTION_TAG};
use bsmtp::reply::{Reply, ReplyParser};
use bsmtp::status::{Failure, FailureKind};

/// Bytes queued before they are written to the stream, and the size of
/// each read of the message: libssh2 moved 100 MB about 10% faster in
/// 256 KiB writes than in 64 KiB ones (measured), and memory stays small.
const WRITE_AT: usize = 256 * 1024;

/// Largest message sent together with its envelope, before MAIL's and
/// RCPT's replies are read: a refusal then costs at most this much wasted
/// transfer.
const PIPELINE_WHOLE: u64 = 1024 * 1024;

/// One message's envelope as the sender hands it to a session, addresses in
/// their SMTP (external) form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The sender; empty for the null sender.
    pub sender: String,
    /// The recipients, one or more.
    pub recipients: Vec<String>,
    /// The message size, announced with `SIZE=` when the receiver takes it.
    pub size: Option<u64>,
    /// The body is 8-bit (`BODY=8BITMIME`).
    pub eight_bit: bool,
    /// The sender asked for SMTPUTF8. It is sent anyway when an address is
    /// not ASCII.
    pub smtputf8: bool,
    /// The exactly-once tag, sent when the receiver announces
    /// [`TRANSACTION_TAG`].
    pub tag: Option<bsmtp::tag::Tag>,
    /// The message's DSN request, sent when the receiver announces DSN.
    pub dsn: MailDsn,
    /// Each recipient's DSN request, in the order of `recipients` (may be
    /// shorter: the rest have none).
    pub recipient_dsn: Vec<RcptDsn>,
}

/// What became of one transaction: every reply the receiver gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply to MAIL FROM.
    pub mail: Reply,
    /// One reply per RCPT TO, in the envelope's order.
    pub recipients: Vec<Reply>,
    /// The reply to DATA, when DATA was sent.
    pub data: Option<Reply>,
    /// The reply after the terminating dot, when the receiver took DATA.
    pub end: Option<Reply>,
}

impl Outcome {
    /// The reply that decides the fate of recipient `i`: a refused MAIL or
    /// RCPT, a refused DATA, else the reply after the dot.
    pub fn for_recipient(&self, i: usize) -> &Reply {
        let rcpt = &self.recipients[i];
        if !self.mail.is_success() {
            return &self.mail;
        }
        if !Reply::is_success(rcpt) {
            return rcpt;
        }
        match (&self.data, &self.end) {
            (Some(data), _) if data.code != 354 => data,
            (_, Some(end)) => end,
            // DATA never went out (another recipient was refused first).
            _ => rcpt,
        }
    }

    /// The command whose reply [`Outcome::for_recipient`] gives for
    /// recipient `i`, as Postfix names it in bounces.
    pub fn stage_for(&self, i: usize) -> &'static str {
        if !self.mail.is_success() {
            return "MAIL FROM";
        }
        if !self.recipients[i].is_success() {
            return "RCPT TO";
        }
        match (&self.data, &self.end) {
            (Some(data), _) if data.code != 354 => "DATA",
            (_, Some(_)) => "end of DATA",
            _ => "RCPT TO",
        }
    }

    /// Pipe mode's rule: one status for all recipients. The final reply when
    /// every recipient was taken; else the worst refusal (a 4xx defers them
    /// all, else the 5xx bounces them all), named with its stage.
    pub fn all_or_nothing(&self, relay: &str) -> Result<Reply, Failure> {
        if !self.mail.is_success() {
            return Err(remote(relay, "MAIL FROM", &self.mail));
        }
        let refused = self
            .recipients
            .iter()
            .find(|r| r.is_transient())
            .or_else(|| self.recipients.iter().find(|r| !r.is_success()));
        if let Some(refused) = refused {
            return Err(remote(relay, "RCPT TO", refused));
        }
        match (&self.data, &self.end) {
            (Some(data), _) if data.code != 354 => Err(remote(relay, "DATA", data)),
            (_, Some(end)) if end.code == 250 => Ok(end.clone()),
            (_, Some(end)) => Err(remote(relay, "end of DATA", end)),
            _ => Err(Failure::new(
                FailureKind::Internal,
                format!("{relay}: transaction ended without DATA"),
            )),
        }
    }
}

/// A refusal from the receiver, kept whole so its enhanced code decides.
fn remote(relay: &str, stage: &str, reply: &Reply) -> Failure {
    Failure::new(
        FailureKind::Remote(reply.clone()),
        format!("{relay} said: {} (in reply to {stage})", reply.one_line()),
    )
}

/// A session with a BSMTP receiver.
pub struct ClientSession<S> {
    stream: S,
    relay: String,
    out: Vec<u8>,
    input: Vec<u8>,
    parser: ReplyParser,
    extensions: Extensions,
    greeting: Reply,
    open: Option<Open>,
    /// Recipient counts of ended transactions whose replies are unread,
    /// oldest first.
    pending: VecDeque<usize>,
}

impl<S: Read + Write> ClientSession<S> {
    /// Opens a session on `stream` (`relay` names the receiver in errors
    /// and logs): EHLO `helo`, and the receiver's extensions from its
    /// reply.
    ///
    /// Anything but 250 means the receiver takes no mail on this session.
    /// A refusal (rsmtp refusing the SSH command asked for, a peer not
    /// granted the verb) is a configuration fault on one side, never the
    /// message's: it defers (4.3.5) even when the receiver said 5xx, or
    /// every queued message would bounce.
    pub fn start(stream: S, relay: impl Into<String>, helo: &str) -> Result<Self, Failure> {
        let mut session = ClientSession {
            stream,
            relay: relay.into(),
            out: Vec::with_capacity(WRITE_AT * 2),
            input: Vec::new(),
            parser: ReplyParser::new(),
            extensions: Extensions::default(),
            greeting: Reply::new(250, None, ""),
            open: None,
            pending: VecDeque::new(),
        };
        session.send(&Command::Ehlo(helo.to_owned()));
        session.flush()?;
        let reply = session.read_reply()?;
        if reply.code != 250 {
            if reply.is_transient() || reply.is_permanent() {
                return Err(Failure::new(
                    FailureKind::Config,
                    format!(
                        "{} refused the session: {} (in reply to EHLO); check the peer's command setting and the key's forced command on the hub",
                        session.relay,
                        reply.one_line()
                    ),
                ));
            }
            return Err(session.out_of_step("EHLO", &reply));
        }
        session.extensions = Extensions::parse(&reply);
        session.greeting = reply;
        Ok(session)
    }

    /// Opens a session with a real SMTP server (the hub's own smtpd, for
    /// rsmtp's fast injection path): its `220` greeting first, then as
    /// [`ClientSession::start`]. A server that greets with anything else
    /// (`421`, `554`: busy, or not for us) takes no mail now: the failure
    /// is the server's reply, so its class decides.
    pub fn start_smtp(stream: S, relay: impl Into<String>, helo: &str) -> Result<Self, Failure> {
        let relay = relay.into();
        let mut parser = ReplyParser::new();
        let mut input = Vec::new();
        let mut stream = stream;
        let greeting = read_one_reply(&mut stream, &mut parser, &mut input, &relay)?;
        if greeting.code != 220 {
            return Err(remote(&relay, "the greeting", &greeting));
        }
        // (Nothing follows a greeting before EHLO: `input` is empty.)
        ClientSession::start(stream, relay, helo)
    }

    /// The receiver's whole EHLO reply.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// What the receiver announced.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The receiver's name for messages.
    pub fn relay(&self) -> &str {
        &self.relay
    }

    /// One transaction whose body comes from `content` (raw lines, LF or
    /// CRLF, as pipe(8) gives them), with pipe mode's care: with several
    /// recipients, MAIL and RCPT replies are read before DATA, and DATA goes
    /// out only when every recipient was taken, so the message is never
    /// queued on the receiver for some recipients while the sender reports
    /// a failure for all. With one recipient (the shipped recipient limit)
    /// that cannot happen, so a message of known, modest size goes out in
    /// one write (RFC 2920): a round trip saved per message. A refusal then
    /// shows as a refused RCPT and a refused DATA, whose body the BSMTP
    /// receiver reads and drops.
    pub fn send_message(
        &mut self,
        envelope: &Envelope,
        content: &mut impl Read,
    ) -> Result<Outcome, Failure> {
        let all_at_once = envelope.recipients.len() == 1
            && envelope.size.is_some_and(|size| size <= PIPELINE_WHOLE);
        self.queue_envelope(envelope);
        let replies = if all_at_once {
            None
        } else {
            self.flush()?;
            let (mail, recipients) = self.read_envelope_replies(envelope.recipients.len())?;
            if !mail.is_success() || !recipients.iter().all(Reply::is_success) {
                // The receiver forgets the transaction.
                self.send(&Command::Rset);
                self.flush()?;
                self.read_reply()?;
                return Ok(Outcome {
                    mail,
                    recipients,
                    data: None,
                    end: None,
                });
            }
            Some((mail, recipients))
        };
        self.send(&Command::Data);
        self.send_content(content)?;
        let (mail, recipients) = match replies {
            Some(replies) => replies,
            None => self.read_envelope_replies(envelope.recipients.len())?,
        };
        let (data, end) = self.read_data_replies()?;
        Ok(Outcome {
            mail,
            recipients,
            data: Some(data),
            end,
        })
    }

    /// Streams raw content as a dot-stuffed body with its final dot, and
    /// writes everything queued.
    fn send_content(&mut self, content: &mut impl Read) -> Result<(), Failure> {
        let mut encoder = BodyEncoder::new();
        let mut chunk = vec![0u8; WRITE_AT];
        loop {
            let n = match content.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Failure::new(
                        FailureKind::Local,
                        format!("cannot read the message from Postfix: {e}"),
                    ))
                }
            };
            encoder.encode(&chunk[..n], &mut self.out);
            self.flush_if_full()?;
        }
        encoder.finish(&mut self.out);
        self.flush()
    }

    /// Starts a fully pipelined transaction: MAIL, every RCPT and DATA go
    /// out at once, the body follows as it comes ([`ClientSession::piece`]),
    /// and all replies are read at the end ([`ClientSession::finish`]). For
    /// a sender that reports each recipient's own fate (the LMTP bridge).
    pub fn begin(&mut self, envelope: &Envelope) {
        self.queue_envelope(envelope);
        self.send(&Command::Data);
        self.open = Some(Open {
            recipients: envelope.recipients.len(),
            at_line_start: true,
        });
    }

    /// Adds a piece of a content line to the open transaction (as the
    /// BSMTP/LMTP decoder gives it: dot-unstuffed, without its terminator),
    /// dot-stuffed again.
    pub fn piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), Failure> {
        let Some(open) = self.open.as_mut() else {
            return Err(no_transaction(&self.relay));
        };
        if open.at_line_start && bytes.first() == Some(&b'.') {
            self.out.push(b'.');
        }
        self.out.extend_from_slice(bytes);
        if end_of_line {
            self.out.extend_from_slice(b"\r\n");
        }
        open.at_line_start = end_of_line || (open.at_line_start && bytes.is_empty());
        self.flush_if_full()
    }

    /// Ends the open transaction's body (a last line end if it lacked one,
    /// the dot), sends everything and reads every reply of the transaction.
    pub fn finish(&mut self) -> Result<Outcome, Failure> {
        self.end()?;
        self.collect()
    }

    /// Ends the open transaction's body without waiting for its replies,
    /// so the next transaction can follow at once (RFC 2920 across
    /// messages); [`ClientSession::collect`] reads them later, in order.
    /// Keep the number of unread transactions small (see
    /// [`ClientSession::unread`]): the receiver stops reading when its
    /// replies are not read.
    pub fn end(&mut self) -> Result<(), Failure> {
        let Some(open) = self.open.take() else {
            return Err(no_transaction(&self.relay));
        };
        if !open.at_line_start {
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b".\r\n");
        self.pending.push_back(open.recipients);
        self.flush_if_full()
    }

    /// How many ended transactions still await their replies.
    pub fn unread(&self) -> usize {
        self.pending.len()
    }

    /// Sends what is queued and reads the replies of the oldest ended
    /// transaction.
    pub fn collect(&mut self) -> Result<Outcome, Failure> {
        let Some(recipients) = self.pending.pop_front() else {
            return Err(no_transaction(&self.relay));
        };
        self.flush()?;
        let (mail, replies) = self.read_envelope_replies(recipients)?;
        let (data, end) = self.read_data_replies()?;
        Ok(Outcome {
            mail,
            recipients: replies,
            data: Some(data),
            end,
        })
    }

    /// Step by step with a real SMTP server, which reads a body only after
    /// its `354` (smtpd would take the body of a refused DATA for
    /// commands): XFORWARD (the attributes the server announced; the rest
    /// are dropped), MAIL and the envelope's recipients go out in one
    /// write, and their replies come back (XFORWARD's `250` is checked and
    /// not returned). More recipients may follow with
    /// [`ClientSession::add_recipients`], then [`ClientSession::data`].
    pub fn mail_rcpt(
        &mut self,
        xforward: &[(String, String)],
        envelope: &Envelope,
    ) -> Result<(Reply, Vec<Reply>), Failure> {
        self.mail_rcpt_data(xforward, envelope, false)
            .map(|(mail, recipients, _)| (mail, recipients))
    }

    /// [`ClientSession::mail_rcpt`], and with `data` DATA too, in the same
    /// write (RFC 2920: DATA ends the group), with its reply: a server
    /// that took a recipient says `354` and reads the body next (see
    /// [`ClientSession::piece`], [`ClientSession::end_data`]); one that
    /// took none refuses DATA and stays in the transaction.
    pub fn mail_rcpt_data(
        &mut self,
        xforward: &[(String, String)],
        envelope: &Envelope,
        data: bool,
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), Failure> {
        let announced: Vec<Param> = xforward
            .iter()
            .filter(|(name, _)| self.extensions.xforward.contains(name))
            .map(|(name, value)| Param {
                keyword: name.clone(),
                value: Some(xtext_encode(value)),
            })
            .collect();
        let xforwarded = !announced.is_empty();
        if xforwarded {
            self.send(&Command::Xforward(announced));
        }
        self.queue_envelope(envelope);
        if data {
            self.send(&Command::Data);
        }
        self.flush()?;
        if xforwarded {
            let reply = self.read_expected("XFORWARD", |code| code == 250)?;
            if reply.code == 421 {
                // The server is closing (its idle timeout, a shutdown).
                return Err(remote(&self.relay, "XFORWARD", &reply));
            }
            if reply.code != 250 {
                // A refused XFORWARD was logged by the server; the MAIL
                // after it still counts, and its reply decides.
                log::warn!(
                    "{}: XFORWARD refused: {}; the hub's log shows this client instead of the peer",
                    self.relay,
                    reply.one_line()
                );
            }
        }
        let (mail, recipients) = self.read_envelope_replies(envelope.recipients.len())?;
        let data = if data {
            Some(self.read_data_reply()?)
        } else {
            None
        };
        Ok((mail, recipients, data))
    }

    /// More recipients for the transaction [`ClientSession::mail_rcpt`]
    /// opened, `recipients` with their DSN requests; their replies, and
    /// with `data` DATA's (as in [`ClientSession::mail_rcpt_data`]).
    pub fn add_recipients(
        &mut self,
        recipients: &[String],
        dsn: &[RcptDsn],
        data: bool,
    ) -> Result<(Vec<Reply>, Option<Reply>), Failure> {
        for (i, recipient) in recipients.iter().enumerate() {
            self.queue_rcpt(recipient, dsn.get(i));
        }
        if data {
            self.send(&Command::Data);
        }
        self.flush()?;
        let mut replies = Vec::with_capacity(recipients.len());
        for _ in recipients {
            replies.push(self.read_expected("RCPT TO", |code| code / 100 == 2)?);
        }
        let data = if data {
            Some(self.read_data_reply()?)
        } else {
            None
        };
        Ok((replies, data))
    }

    /// DATA and its reply; after a `354` the body goes in with
    /// [`ClientSession::piece`] and ends with [`ClientSession::end_data`].
    pub fn data(&mut self) -> Result<Reply, Failure> {
        self.send(&Command::Data);
        self.flush()?;
        self.read_data_reply()
    }

    /// DATA's reply; a `354` opens the body.
    fn read_data_reply(&mut self) -> Result<Reply, Failure> {
        let reply = self.read_expected("DATA", |code| code == 354)?;
        if reply.code == 354 {
            self.open = Some(Open {
                recipients: 0,
                at_line_start: true,
            });
        }
        Ok(reply)
    }

    /// Ends the body [`ClientSession::data`] opened (a last line end if it
    /// lacked one, the dot) and reads the server's verdict on the message.
    pub fn end_data(&mut self) -> Result<Reply, Failure> {
        let Some(open) = self.open.take() else {
            return Err(no_transaction(&self.relay));
        };
        if !open.at_line_start {
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b".\r\n");
        self.flush()?;
        self.read_expected("end of DATA", |code| code == 250)
    }

    /// RSET and its reply: the server forgets the open transaction.
    pub fn rset(&mut self) -> Result<Reply, Failure> {
        self.open = None;
        self.send(&Command::Rset);
        self.flush()?;
        self.read_expected("RSET", |code| code == 250)
    }

    /// Ends the session politely (QUIT, its reply) and gives the stream
    /// back; the session's outcome is already decided, so errors here are
    /// not reported.
    pub fn quit(mut self) -> S {
        self.send(&Command::Quit);
        if self.flush().is_ok() {
            let _ = self.read_reply();
        }
        self.stream
    }

    /// QUIT, insisting on its `221` (for `check`).
    pub fn quit_checked(mut self) -> Result<Reply, Failure> {
        self.send(&Command::Quit);
        self.flush()?;
        let reply = self.read_reply()?;
        if reply.code == 221 {
            Ok(reply)
        } else {
            Err(self.out_of_step("QUIT", &reply))
        }
    }

    /// Gives the stream back without a word (to close it).
    pub fn into_inner(self) -> S {
        self.stream
    }

    fn queue_envelope(&mut self, envelope: &Envelope) {
        let params = self.mail_params(envelope);
        self.send(&Command::Mail {
            from: envelope.sender.clone(),
            params,
        });
        for (i, recipient) in envelope.recipients.iter().enumerate() {
            self.queue_rcpt(recipient, envelope.recipient_dsn.get(i));
        }
    }

    fn queue_rcpt(&mut self, recipient: &str, dsn: Option<&RcptDsn>) {
        let params = match (self.extensions.dsn, dsn) {
            (true, Some(dsn)) => rcpt_dsn_params(dsn),
            _ => Vec::new(),
        };
        self.send(&Command::Rcpt {
            to: recipient.to_owned(),
            params,
        });
    }

    /// The MAIL parameters the receiver announced it takes.
    fn mail_params(&self, envelope: &Envelope) -> Vec<Param> {
        let ext = &self.extensions;
        let param = |keyword: &str, value: Option<String>| Param {
            keyword: keyword.to_owned(),
            value,
        };
        let mut params = Vec::new();
        if let (Some(size), Some(_)) = (envelope.size, ext.size) {
            params.push(param("SIZE", Some(size.to_string())));
        }
        if envelope.eight_bit && ext.eight_bit_mime {
            params.push(param("BODY", Some("8BITMIME".into())));
        }
        let utf8 = envelope.smtputf8
            || !envelope.sender.is_ascii()
            || envelope.recipients.iter().any(|r| !r.is_ascii());
        if utf8 && ext.smtputf8 {
            params.push(param("SMTPUTF8", None));
        }
        if let (Some(tag), true) = (&envelope.tag, ext.transaction_tag) {
            params.push(param(TRANSACTION_TAG, Some(tag.to_string())));
        }
        if ext.dsn {
            if let Some(ret) = envelope.dsn.ret {
                params.push(param("RET", Some(ret.keyword().to_owned())));
            }
            if let Some(envid) = &envelope.dsn.envid {
                params.push(param("ENVID", Some(xtext_encode(envid))));
            }
        }
        params
    }

    fn read_envelope_replies(&mut self, recipients: usize) -> Result<(Reply, Vec<Reply>), Failure> {
        let refusal_or = |code: u16| code / 100 == 2;
        let mail = self.read_expected("MAIL FROM", refusal_or)?;
        let mut replies = Vec::with_capacity(recipients);
        for _ in 0..recipients {
            replies.push(self.read_expected("RCPT TO", refusal_or)?);
        }
        Ok((mail, replies))
    }

    /// DATA's reply, and the reply after the dot when DATA got 354 (a
    /// BSMTP receiver that refuses DATA reads and drops the body, and says
    /// nothing after the dot).
    fn read_data_replies(&mut self) -> Result<(Reply, Option<Reply>), Failure> {
        let data = self.read_expected("DATA", |code| code == 354)?;
        if data.code != 354 {
            return Ok((data, None));
        }
        let end = self.read_expected("end of DATA", |code| code == 250)?;
        Ok((data, Some(end)))
    }

    /// The next reply: one `wanted` accepts, or a refusal (4xx, 5xx); any
    /// other kind means the receiver is out of step.
    fn read_expected(
        &mut self,
        stage: &str,
        wanted: impl Fn(u16) -> bool,
    ) -> Result<Reply, Failure> {
        let reply = self.read_reply()?;
        if wanted(reply.code) || reply.is_transient() || reply.is_permanent() {
            Ok(reply)
        } else {
            Err(self.out_of_step(stage, &reply))
        }
    }

    fn out_of_step(&self, stage: &str, reply: &Reply) -> Failure {
        Failure::new(
            FailureKind::PeerProtocol,
            format!(
                "{} answered {stage} with an unexpected reply: {}; is the key's forced command rsmtp?",
                self.relay,
                reply.one_line()
            ),
        )
    }

    /// Queues a command.
    fn send(&mut self, command: &Command) {
        encode_command(command, &mut self.out);
    }

    fn flush_if_full(&mut self) -> Result<(), Failure> {
        if self.out.len() >= WRITE_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes everything queued.
    fn flush(&mut self) -> Result<(), Failure> {
        let result = self
            .stream
            .write_all(&self.out)
            .and_then(|()| self.stream.flush());
        self.out.clear();
        result.map_err(|e| self.io_failure("write", &e))
    }

    /// Reads the next reply.
    fn read_reply(&mut self) -> Result<Reply, Failure> {
        read_one_reply(
            &mut self.stream,
            &mut self.parser,
            &mut self.input,
            &self.relay,
        )
    }

    fn io_failure(&self, what: &str, err: &io::Error) -> Failure {
        io_failure(&self.relay, what, err)
    }
}

/// Reads one reply from `stream`, `input` holding what was read before.
fn read_one_reply(
    stream: &mut impl Read,
    parser: &mut ReplyParser,
    input: &mut Vec<u8>,
    relay: &str,
) -> Result<Reply, Failure> {
    let mut chunk = [0u8; 4096];
    loop {
        match parser.parse(input) {
            Ok(Some((used, reply))) => {
                input.drain(..used);
                log::debug!("{relay}: < {}", reply.one_line());
                return Ok(reply);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Failure::new(
                    FailureKind::PeerProtocol,
                    format!("{relay}: malformed reply: {e}"),
                ))
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                let why = match crate::ssh::take_remote_stderr() {
                    Some(said) => format!("; {}{said}", crate::ssh::REMOTE_SAID),
                    None => " (see the receiver's log for its reason)".to_owned(),
                };
                return Err(Failure::new(
                    FailureKind::PeerProtocol,
                    format!("{relay}: lost connection while waiting for a reply{why}"),
                ));
            }
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure(relay, "read", &e)),
        }
    }
}

fn io_failure(relay: &str, what: &str, err: &io::Error) -> Failure {
    let kind = match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureKind::Timeout,
        _ => FailureKind::PeerProtocol,
    };
    let said = crate::ssh::take_remote_stderr()
        .map(|said| format!("; {}{said}", crate::ssh::REMOTE_SAID))
        .unwrap_or_default();
    Failure::new(kind, format!("{relay}: {what}: {err}{said}"))
}

/// `NOTIFY=` and `ORCPT=` for a recipient.
fn rcpt_dsn_params(dsn: &RcptDsn) -> Vec<Param> {
    let mut params = Vec::new();
    if let Some(notify) = &dsn.notify {
        params.push(Param {
            keyword: "NOTIFY".into(),
            value: Some(notify.clone()),
        });
    }
    if let Some((kind, address)) = &dsn.orcpt {
        params.push(Param {
            keyword: "ORCPT".into(),
            value: Some(orcpt_value(kind, address)),
        });
    }
    params
}

fn no_transaction(relay: &str) -> Failure {
    Failure::new(
        FailureKind::Internal,
        format!("{relay}: no transaction is open"),
    )
}

/// The state of a pipelined transaction between [`ClientSession::begin`]
/// and [`ClientSession::finish`].
#[derive(Debug, Clone, Copy)]
struct Open {
    recipients: usize,
    at_line_start: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bsmtp::dsn::Ret;

    /// A receiver that replies from a script and records what it got.
    struct Scripted {
        replies: io::Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.replies.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn session(replies: &str) -> ClientSession<Scripted> {
        let stream = Scripted {
            replies: io::Cursor::new(replies.as_bytes().to_vec()),
            sent: Vec::new(),
        };
        ClientSession::start(stream, "hub[127.0.0.1]:22", "leaf.test").unwrap()
    }

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            sender: "a@leaf.test".into(),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            size: Some(10),
            tag: bsmtp::tag::Tag::parse("Q1.abc"),
            ..Envelope::default()
        }
    }

    const EHLO: &str = "250-hub\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 XTXID\r\n";

    #[test]
    fn pipelined_transaction_gives_each_recipient_its_fate() {
        let mut s = session(&format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n354 go\r\n250 2.0.0 Ok: queued as X1\r\n"
        ));
        s.begin(&envelope(&["b@hub.test", "c@hub.test"]));
        s.piece(b".dot", true).unwrap();
        s.piece(b"last", false).unwrap();
        let outcome = s.finish().unwrap();
        assert_eq!(outcome.for_recipient(0).code, 250);
        assert_eq!(outcome.for_recipient(1).code, 550);
        let sent = String::from_utf8(s.into_inner().sent).unwrap();
        assert!(
            sent.ends_with(
                "MAIL FROM:<a@leaf.test> SIZE=10 XTXID=Q1.abc\r\nRCPT TO:<b@hub.test>\r\nRCPT TO:<c@hub.test>\r\nDATA\r\n..dot\r\nlast\r\n.\r\n"
            ),
            "{sent}"
        );
    }

    #[test]
    fn dsn_and_mime_parameters_go_only_to_a_receiver_that_announced_them() {
        let mut envelope = envelope(&["b@hub.test"]);
        envelope.eight_bit = true;
        envelope.smtputf8 = true;
        envelope.dsn = MailDsn {
            ret: Some(Ret::Full),
            envid: Some("id 1+2".into()),
        };
        envelope.recipient_dsn = vec![RcptDsn {
            notify: Some("SUCCESS,DELAY".into()),
            orcpt: Some(("rfc822".into(), "B=@hub.test".into())),
        }];
        let done = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 Ok\r\n";
        let full = "250-hub\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 DSN\r\n";
        let mut s = session(&format!("{full}{done}"));
        s.send_message(&envelope, &mut &b"x\n"[..]).unwrap();
        let sent = String::from_utf8(s.into_inner().sent).unwrap();
        assert!(
            sent.contains(
                "MAIL FROM:<a@leaf.test> BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=id+201+2B2\r\n\
                 RCPT TO:<b@hub.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B+3D@hub.test\r\n"
            ),
            "{sent}"
        );
        let mut s = session(&format!("250 hub\r\n{done}"));
        s.send_message(&envelope, &mut &b"x\n"[..]).unwrap();
        let sent = String::from_utf8(s.into_inner().sent).unwrap();
        assert!(
            sent.contains("MAIL FROM:<a@leaf.test>\r\nRCPT TO:<b@hub.test>\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn pipe_mode_sends_no_data_unless_every_recipient_was_taken() {
        let mut s = session(&format!(
            "{EHLO}250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 too many\r\n250 2.0.0 Ok\r\n"
        ));
        let outcome = s
            .send_message(&envelope(&["b@hub.test", "c@hub.test"]), &mut &b"hi\n"[..])
            .unwrap();
        let failure = outcome.all_or_nothing("hub").unwrap_err();
        assert_eq!(
            failure.to_string(),
            "4.5.3 hub said: 452 4.5.3 too many (in reply to RCPT TO)"
        );
        let sent = String::from_utf8(s.into_inner().sent).unwrap();
        assert!(!sent.contains("DATA"), "{sent}");
        assert!(sent.ends_with("RSET\r\n"), "{sent}");
    }

    #[test]
    fn out_of_step_replies_are_protocol_errors() {
        let stream = Scripted {
            replies: io::Cursor::new(b"220 hub ESMTP\r\n".to_vec()),
            sent: Vec::new(),
        };
        let failure = ClientSession::start(stream, "hub", "leaf").err().unwrap();
        assert_eq!(failure.kind, FailureKind::PeerProtocol);
        let mut s = session(&format!("{EHLO}250 ok\r\n250 ok\r\n250 ok\r\n"));
        let failure = s
            .send_message(&envelope(&["b@hub.test"]), &mut &b"x\n"[..])
            .unwrap_err();
        assert!(failure.text.contains("answered DATA"), "{failure}");
    }

    #[test]
    fn refusal_at_ehlo_is_a_configuration_fault() {
        let stream = Scripted {
            replies: io::Cursor::new(b"421 4.7.0 refused SSH command\r\n".to_vec()),
            sent: Vec::new(),
        };
        let failure = ClientSession::start(stream, "hub", "leaf").err().unwrap();
        assert_eq!(failure.kind, FailureKind::Config);
        assert!(failure.to_string().starts_with("4.3.5 "), "{failure}");
    }

    #[test]
    fn one_recipient_goes_out_in_one_write_and_a_refusal_is_read_after() {
        let mut s = session(&format!(
            "{EHLO}250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n"
        ));
        let outcome = s
            .send_message(&envelope(&["b@hub.test"]), &mut &b"hi\n"[..])
            .unwrap();
        let failure = outcome.all_or_nothing("hub").unwrap_err();
        assert_eq!(
            failure.to_string(),
            "5.1.1 hub said: 550 5.1.1 no such user (in reply to RCPT TO)"
        );
        let sent = String::from_utf8(s.into_inner().sent).unwrap();
        assert!(
            sent.ends_with("RCPT TO:<b@hub.test>\r\nDATA\r\nhi\r\n.\r\n"),
            "{sent}"
        );
    }

    #[test]
    fn no_tag_without_the_extension() {
        let mut s =
            session("250-hub\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
        s.send_message(&envelope(&["b@hub.test"]), &mut &b"x\n"[..])
            .unwrap();
        let sent = String::from_utf8(s.into_inner().sent).unwrap();
        assert!(sent.contains("MAIL FROM:<a@leaf.test>\r\n"), "{sent}");
    }
}
