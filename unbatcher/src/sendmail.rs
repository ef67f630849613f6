//! The `sendmail` and `rsendmail` verbs: a client that already calls
//! `ssh hub sendmail -f SENDER RCPT... < message` (rsendmail's
//! `sshsendmail` sends `rsendmail -f SENDER RCPT...`) keeps working, with
//! the peer's policy. Only the flags that send mail are taken
//! ([`bsmtp::sendmail::Flags::Verb`]); anything else is refused with
//! `EX_USAGE` before a byte is read.
//!
//! The message is turned into one BSMTP transaction and read by the same
//! server session as the `receive` verb, so every policy check is the
//! same, and nothing is queued unless every recipient was taken: the
//! caller has one exit status for all of them, and would send the message
//! again to the ones already taken.
//!
//! Truncation: standard input ends at EOF, and a dropped link looks the
//! same. A message that does not end with a line end (or, without `-i`,
//! with a lone `.` line) is taken as cut short and not queued (exit 75):
//! that catches a cut in the middle of a line. A cut exactly at a line end
//! cannot be told from the end of the message; the `receive` verb (Batch
//! SMTP, which `bsmtp-ssh` speaks) has no such gap.

use std::io::{self, Read, Write};

use bsmtp::codec::{encode_command, BodyEncoder, Command};
use bsmtp::reply::{Reply, ReplyParser};
use bsmtp::sendmail::{self, Flags};
use bsmtp_session::message::{Content, Submission};
use bsmtp_session::postdrop::PostdropInjector;
use bsmtp_session::server::{Envelope, Injector, Receiver, Refusal, Settings};
use sysexits::ExitCode;

use crate::run::RunError;

/// Runs the verb: `args` after the verb, the message on `input`.
pub fn run(
    mut settings: Settings,
    injector: PostdropInjector,
    args: &[String],
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<(), RunError> {
    let invocation = sendmail::parse(args, Flags::Verb).map_err(|err| RunError::Sendmail {
        status: ExitCode::Usage,
        text: err.to_string(),
    })?;
    // A retry after a lost exit status sends the same message again:
    // tagged by content, it is not queued twice.
    settings.content_tags = Some(String::new());
    let peer = settings.policy.peer.clone();
    // Without -f: the null sender, which is what sshsendmail sends for a
    // bounce (it leaves -f out when the sender is empty).
    let submission = Submission::read(&invocation, "", input)?;
    let expected = submission.recipients.len();
    let mut batch = Transaction::new(submission);
    let mut replies = Vec::new();
    let summary = Receiver::new(
        settings,
        AllRecipients {
            inner: injector,
            expected,
        },
    )
    .run(&mut batch, &mut replies)?;
    let _ = output.flush();
    if summary.truncated {
        return Err(RunError::Sendmail {
            status: ExitCode::TempFail,
            text: "the message did not end with a line end: taken as cut short in transit, nothing queued; send it again (Batch SMTP, bsmtp-ssh's receive verb, cannot be cut short)".to_owned(),
        });
    }
    match first_refusal(&replies) {
        None if summary.accepted == 1 => {
            log::info!("peer {peer}: sendmail verb: message queued");
            Ok(())
        }
        None => Err(RunError::Sendmail {
            status: ExitCode::Software,
            text: "the message was neither queued nor refused (a bug; please report it)".to_owned(),
        }),
        Some(reply) => Err(RunError::Sendmail {
            status: exit_status(&reply),
            text: format!(
                "{} {}",
                reply.status(),
                bsmtp::text::one_line(&reply.one_line())
            ),
        }),
    }
}

/// The exit status sendmail's callers understand for a refusal: a 4xx
/// defers; a 5xx about an address is `EX_NOUSER`, about policy
/// `EX_NOPERM`, else `EX_UNAVAILABLE`.
fn exit_status(reply: &Reply) -> ExitCode {
    if !reply.is_permanent() {
        return ExitCode::TempFail;
    }
    match reply.status().subject {
        1 => ExitCode::NoUser,
        7 => ExitCode::NoPerm,
        _ => ExitCode::Unavailable,
    }
}

/// The first 4xx or 5xx reply of the session.
fn first_refusal(replies: &[u8]) -> Option<Reply> {
    let mut parser = ReplyParser::new();
    let mut rest = replies;
    while let Ok(Some((used, reply))) = parser.parse(rest) {
        rest = &rest[used..];
        if reply.is_transient() || reply.is_permanent() {
            return Some(reply);
        }
    }
    None
}

/// Refuses to start a message unless every recipient was taken.
struct AllRecipients<I> {
    inner: I,
    expected: usize,
}

impl<I: Injector> Injector for AllRecipients<I> {
    type Message = I::Message;

    fn start(&mut self, envelope: &Envelope) -> Result<Self::Message, Refusal> {
        if envelope.recipients.len() < self.expected {
            return Err(Refusal {
                reply: Reply::new(
                    554,
                    Some(bsmtp::reply::EnhancedCode::new(5, 5, 0)),
                    "not every recipient was taken: nothing queued",
                ),
                detail: "a recipient was refused; the message was not queued for the others".into(),
            });
        }
        self.inner.start(envelope)
    }

    fn room(&self, size: Option<u64>) -> Result<(), Refusal> {
        self.inner.room(size)
    }
}

/// One BSMTP transaction read from a sendmail-style submission: MAIL,
/// RCPTs, DATA, the dot-stuffed message and its dot, which is left out
/// when the message was cut short (the session then drops it).
struct Transaction<R: Read> {
    ready: io::Cursor<Vec<u8>>,
    content: Content<R>,
    encoder: Option<BodyEncoder>,
    chunk: Vec<u8>,
}

impl<R: Read> Transaction<R> {
    fn new(submission: Submission<R>) -> Self {
        let sender = submission.sender.clone();
        let recipients = submission.recipients.clone();
        let content = submission.content();
        let mut head = Vec::new();
        encode_command(
            &Command::Mail {
                from: sender,
                params: Vec::new(),
            },
            &mut head,
        );
        for to in recipients {
            encode_command(
                &Command::Rcpt {
                    to,
                    params: Vec::new(),
                },
                &mut head,
            );
        }
        encode_command(&Command::Data, &mut head);
        Transaction {
            ready: io::Cursor::new(head),
            content,
            encoder: Some(BodyEncoder::new()),
            chunk: vec![0; 64 * 1024],
        }
    }

    /// Encodes the next piece of content into `ready`.
    fn refill(&mut self) -> io::Result<()> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        let n = self.content.read(&mut self.chunk)?;
        let mut out = Vec::with_capacity(n + n / 8);
        if n > 0 {
            encoder.encode(&self.chunk[..n], &mut out);
        } else if let Some(encoder) = self.encoder.take() {
            let (_, rest) = self.content.get_ref();
            if rest.ends_with_line_end() {
                encoder.finish(&mut out);
            }
            // Else no dot: the session sees the stream end inside DATA and
            // queues nothing.
        }
        self.ready = io::Cursor::new(out);
        Ok(())
    }
}

impl<R: Read> Read for Transaction<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.ready.read(buf)?;
            if n > 0 || self.encoder.is_none() {
                return Ok(n);
            }
            self.refill()?;
        }
    }
}
