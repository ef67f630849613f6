//! Hands one message to Postfix through `postdrop -r`.
//!
//! Why postdrop and not Postfix's `sendmail`: sendmail reads its input until
//! EOF and queues whatever arrived, so a message cut off by a dropped link
//! would be queued truncated. postdrop speaks Postfix's record protocol and
//! commits the maildrop file only after the end record; input that stops
//! before it is deleted. We send that end record only after the BSMTP
//! terminating dot arrived, and report success only after postdrop's
//! `status` attribute says 0 (it exits 0 on a cancelled request too). It is
//! also one exec and one main.cf parse less per message than sendmail.
//!
//! The protocol (Postfix `src/postdrop/postdrop.c`, `src/global/record.c`):
//! postdrop writes attributes `name\0value\0...\0` carrying the `queue_id`,
//! then reads records (type byte, length in 7-bit groups low first with the
//! high bit meaning "more", data) and, after `E`, writes `status` and
//! `reason` attributes.

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::thread::JoinHandle;

use bsmtp::reply::{EnhancedCode, Reply};

use bsmtp::dsn::{notify_mask, RcptDsn};
use bsmtp::records::{
    attr, put_line_piece, put_record, MAX_RECORD, REC_ATTR, REC_END, REC_FROM, REC_MESG, REC_RCPT,
    REC_XTRA,
};

use crate::server::{self, Committed, Delivery, Injector, Refusal};

/// How the envelope is handed over.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Envelope sender, internal form; empty for the null sender.
    pub sender: &'a str,
    /// Envelope recipients, internal form, at least one, each with the
    /// attributes that go before it (`notify_flags=`, `dsn_orig_rcpt=`).
    pub recipients: &'a [(String, Vec<String>)],
    /// Attributes of the message before the sender (`envelope_id=`,
    /// `ret_flags=`).
    pub message: &'a [String],
    /// Attributes after the sender (`encoding=`).
    pub attributes: &'a [String],
}

/// Where postdrop lives and which Postfix instance it writes into.
#[derive(Debug, Clone)]
pub struct PostdropCommand {
    /// Path of the postdrop program.
    pub program: PathBuf,
    /// `-c DIR`: a non-default Postfix config directory (must be listed in
    /// the default main.cf's `alternate_config_directories`).
    pub config_dir: Option<PathBuf>,
}

impl Default for PostdropCommand {
    fn default() -> Self {
        PostdropCommand {
            program: PathBuf::from("/usr/sbin/postdrop"),
            config_dir: None,
        }
    }
}

/// Pipe capacity we ask for on the pipes a message streams through.
const PIPE_SIZE: i32 = 1024 * 1024;

/// Asks the kernel for a bigger pipe buffer (best effort; not a pipe, or
/// above `/proc/sys/fs/pipe-max-size`, leaves it as it was): with the
/// default 64 KiB, a 100 MB body costs thousands more context switches
/// between sshd, rsmtp and postdrop.
pub fn widen_pipe(fd: &impl std::os::fd::AsFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}

/// Reads one attribute list (`name\0value\0 ... \0`) as name/value pairs.
fn read_attributes(input: &mut impl Read) -> io::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    loop {
        let name = read_cstring(input)?;
        if name.is_empty() {
            return Ok(pairs);
        }
        let value = read_cstring(input)?;
        pairs.push((name, value));
    }
}

/// Longest attribute name or value we accept from postdrop.
const MAX_ATTRIBUTE: usize = 4096;

fn read_cstring(input: &mut impl Read) -> io::Result<String> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if input.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "postdrop closed its output inside an attribute list",
            ));
        }
        if byte[0] == 0 {
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        if bytes.len() >= MAX_ATTRIBUTE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "postdrop sent an over-long attribute",
            ));
        }
        bytes.push(byte[0]);
    }
}

/// Why postdrop did not take a message.
#[derive(Debug, thiserror::Error)]
pub enum PostdropError {
    /// postdrop could not be started or talked to.
    #[error("{program}: {err}")]
    Io {
        /// The program we ran.
        program: String,
        /// What failed.
        err: io::Error,
    },
    /// postdrop refused the message.
    #[error("{program} refused the message: status {status}{reason}{stderr}")]
    Refused {
        /// The program we ran.
        program: String,
        /// Postfix's cleanup status bits (or the exit status).
        status: String,
        /// The cleanup status bits, when postdrop sent them.
        bits: Option<u32>,
        /// postdrop's reason text, if any (with a leading separator).
        reason: String,
        /// postdrop's diagnostics, if any (with a leading separator).
        stderr: String,
    },
}

impl PostdropError {
    /// The reply a sender gets for this failure: what Postfix's smtpd would
    /// answer for the same cleanup status (Postfix's
    /// `cleanup_strerror.c`), so a message over the hub's
    /// `message_size_limit` bounces with 552 5.3.4 instead of being retried
    /// for days after a 451. Failures without status bits (postdrop did not
    /// run or died) are temporary.
    pub fn reply(&self) -> Reply {
        let bits = match self {
            PostdropError::Refused {
                bits: Some(bits), ..
            } => *bits,
            _ => 0,
        };
        let status = CLEANUP_STATUS
            .iter()
            .find(|status| bits & status.bit != 0)
            .unwrap_or(&WRITE_ERROR);
        let (class, subject, detail) = status.dsn;
        Reply::new(
            status.code,
            Some(EnhancedCode::new(class, subject, detail)),
            format!("Error: {}", status.text),
        )
    }
}

/// One cleanup status bit (Postfix `cleanup_user.h`) and smtpd's reply.
struct CleanupStatus {
    bit: u32,
    code: u16,
    dsn: (u8, u16, u16),
    text: &'static str,
}

const WRITE_ERROR: CleanupStatus = CleanupStatus {
    bit: 1 << 1,
    code: 451,
    dsn: (4, 3, 0),
    text: "queue file write error",
};

/// Most severe first, as Postfix looks them up.
const CLEANUP_STATUS: &[CleanupStatus] = &[
    CleanupStatus {
        bit: 1 << 8,
        code: 451,
        dsn: (4, 7, 1),
        text: "service unavailable",
    },
    CleanupStatus {
        bit: 1 << 7,
        code: 451,
        dsn: (4, 3, 0),
        text: "queue file write error",
    },
    CleanupStatus {
        bit: 1 << 0,
        code: 451,
        dsn: (4, 3, 0),
        text: "internal protocol error",
    },
    CleanupStatus {
        bit: 1 << 6,
        code: 550,
        dsn: (5, 1, 0),
        text: "no recipients specified",
    },
    CleanupStatus {
        bit: 1 << 4,
        code: 554,
        dsn: (5, 4, 0),
        text: "too many hops",
    },
    CleanupStatus {
        bit: 1 << 2,
        code: 552,
        dsn: (5, 3, 4),
        text: "message file too big",
    },
    CleanupStatus {
        bit: 1 << 3,
        code: 550,
        dsn: (5, 7, 1),
        text: "message content rejected",
    },
    WRITE_ERROR,
    CleanupStatus {
        bit: 1 << 9,
        code: 550,
        dsn: (5, 7, 1),
        text: "service denied",
    },
];

/// One message on its way into the maildrop queue.
pub struct Postdrop {
    program: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    queue_id: String,
    buf: Vec<u8>,
}

/// Buffered record bytes that trigger a write to postdrop.
const FLUSH_AT: usize = 256 * 1024;

/// Most diagnostics kept from postdrop's stderr.
const MAX_STDERR: u64 = 4096;

impl Postdrop {
    /// Starts postdrop, reads the queue ID it assigned, and writes the
    /// envelope records.
    pub fn start(
        command: &PostdropCommand,
        envelope: &Envelope<'_>,
    ) -> Result<Self, PostdropError> {
        let program = command.program.display().to_string();
        let io_err = |err| PostdropError::Io {
            program: program.clone(),
            err,
        };
        // postdrop is set-gid: give it a known environment, not the peer's.
        let mut cmd = crate::child::command(&command.program);
        cmd.arg("-r");
        if let Some(dir) = &command.config_dir {
            cmd.arg("-c").arg(dir);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io_err(io::Error::other("child pipes missing")));
        };
        widen_pipe(&stdin);
        // Drained on its own thread: a postdrop that fills the stderr pipe
        // while we wait on stdout would otherwise deadlock both of us.
        let stderr = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.take(MAX_STDERR).read_to_end(&mut text);
            text
        });
        let mut postdrop = Postdrop {
            program: program.clone(),
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            stderr: Some(stderr),
            queue_id: String::new(),
            buf: Vec::with_capacity(FLUSH_AT + MAX_RECORD),
        };
        match read_attributes(&mut postdrop.stdout) {
            Ok(attrs) => {
                postdrop.queue_id = attrs
                    .into_iter()
                    .find(|(name, _)| name == "queue_id")
                    .map(|(_, id)| id)
                    .unwrap_or_default();
            }
            Err(err) => return Err(postdrop.fail(&err)),
        }
        if postdrop.queue_id.is_empty() {
            return Err(postdrop.fail(&io::Error::other("no queue_id from postdrop")));
        }
        postdrop.write_envelope(envelope);
        Ok(postdrop)
    }

    /// The maildrop queue ID postdrop assigned.
    pub fn queue_id(&self) -> &str {
        &self.queue_id
    }

    /// The envelope in the order Postfix's sendmail writes it.
    fn write_envelope(&mut self, envelope: &Envelope<'_>) {
        // No size record for SMTPUTF8: postdrop before Postfix 3.10 refuses
        // it ("unexpected record type") and defers the message for good.
        // The hub's cleanup flags SMTPUTF8 itself when an address or header
        // is UTF-8 (smtputf8_autodetect_classes names sendmail by default).
        for attribute in envelope.message {
            put_record(&mut self.buf, REC_ATTR, attribute.as_bytes());
        }
        // "remote": do not append our own domain to what a peer sent, as
        // `sendmail -G` does for mail that is being relayed.
        put_record(
            &mut self.buf,
            REC_ATTR,
            format!("{}=remote", attr::REWRITE_CONTEXT).as_bytes(),
        );
        put_record(&mut self.buf, REC_FROM, envelope.sender.as_bytes());
        for attribute in envelope.attributes {
            put_record(&mut self.buf, REC_ATTR, attribute.as_bytes());
        }
        for (recipient, attributes) in envelope.recipients {
            for attribute in attributes {
                put_record(&mut self.buf, REC_ATTR, attribute.as_bytes());
            }
            put_record(&mut self.buf, REC_RCPT, recipient.as_bytes());
        }
        put_record(&mut self.buf, REC_MESG, b"");
    }

    /// Adds a piece of a content line (no line terminator).
    pub fn write_piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), PostdropError> {
        put_line_piece(&mut self.buf, bytes, end_of_line);
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PostdropError> {
        let result = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(&self.buf),
            None => Err(io::Error::other("postdrop input already closed")),
        };
        self.buf.clear();
        result.map_err(|err| self.fail(&err))
    }

    /// Ends the message and waits for postdrop's verdict; the queue file is
    /// committed when this returns Ok.
    pub fn commit(mut self) -> Result<String, PostdropError> {
        put_record(&mut self.buf, REC_XTRA, b"");
        put_record(&mut self.buf, REC_END, b"");
        self.flush()?;
        drop(self.stdin.take());
        let attrs = match read_attributes(&mut self.stdout) {
            Ok(attrs) => attrs,
            Err(err) => return Err(self.fail(&err)),
        };
        let status = attrs.iter().find(|(name, _)| name == "status");
        let reason = attrs
            .iter()
            .find(|(name, _)| name == "reason")
            .map(|(_, text)| text.clone())
            .unwrap_or_default();
        let exit = self.child.wait();
        let stderr = self.stderr_text();
        match (status, exit) {
            (Some((_, status)), Ok(exit)) if status == "0" && exit.success() => {
                Ok(std::mem::take(&mut self.queue_id))
            }
            (status, exit) => Err(PostdropError::Refused {
                program: self.program.clone(),
                status: status.map_or_else(|| format!("{exit:?}"), |(_, s)| s.clone()),
                bits: status.and_then(|(_, s)| s.parse().ok()),
                reason: if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                },
                stderr,
            }),
        }
    }

    /// Drops the message: postdrop sees its input end before the end record
    /// and deletes the maildrop file.
    pub fn abort(mut self) {
        self.buf.clear();
        drop(self.stdin.take());
        let _ = self.child.wait();
    }

    fn stderr_text(&mut self) -> String {
        let text = self
            .stderr
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        let text = bsmtp::text::one_line(String::from_utf8_lossy(&text).trim());
        if text.is_empty() {
            text
        } else {
            format!(" ({text})")
        }
    }

    /// Ends a postdrop that failed mid-way, keeping what it said.
    fn fail(&mut self, err: &io::Error) -> PostdropError {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = self.stderr_text();
        PostdropError::Io {
            program: self.program.clone(),
            err: io::Error::new(err.kind(), format!("{err}{stderr}")),
        }
    }
}

impl From<PostdropError> for Refusal {
    fn from(err: PostdropError) -> Self {
        Refusal {
            reply: err.reply(),
            detail: err.to_string(),
        }
    }
}

/// The [`Injector`] that hands each message to a new postdrop.
pub struct PostdropInjector {
    /// How to run postdrop.
    pub command: PostdropCommand,
    /// The free-space floor of the queue's file system, if any.
    pub min_free: Option<MinFree>,
}

/// Space a receiver keeps free on the file system of Postfix's queue.
#[derive(Debug, Clone)]
pub struct MinFree {
    /// Postfix's `queue_directory`.
    pub queue_directory: PathBuf,
    /// Bytes that must stay free.
    pub bytes: u64,
}

impl MinFree {
    /// Refuses a message of `size` bytes (when known) that would leave
    /// less than the floor, reckoning 1.5 times its size as Postfix's
    /// smtpd does (the queue file and its overhead).
    pub fn check(&self, size: Option<u64>) -> Result<(), Refusal> {
        let free = crate::spool::free_space(&self.queue_directory)
            .map_err(|err| Refusal::temporary(format!("cannot check free space: {err}")))?;
        let need = self
            .bytes
            .saturating_add(size.unwrap_or(0).saturating_mul(3) / 2);
        if free >= need {
            return Ok(());
        }
        Err(Refusal {
            reply: Reply::new(
                452,
                Some(EnhancedCode::new(4, 3, 1)),
                "Insufficient system storage",
            ),
            detail: format!(
                "{}: {free} bytes free, below min_free {} plus the message",
                self.queue_directory.display(),
                self.bytes
            ),
        })
    }
}

impl Delivery for Postdrop {
    fn queue_id(&self) -> &str {
        Postdrop::queue_id(self)
    }
    fn write_piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), Refusal> {
        Postdrop::write_piece(self, bytes, end_of_line).map_err(Refusal::from)
    }
    fn commit(self) -> Result<Committed, Refusal> {
        Postdrop::commit(self)
            .map(Committed::Queued)
            .map_err(Refusal::from)
    }
    fn abort(self) {
        Postdrop::abort(self);
    }
}

impl Injector for PostdropInjector {
    type Message = Postdrop;

    fn room(&self, size: Option<u64>) -> Result<(), Refusal> {
        self.min_free
            .as_ref()
            .map_or(Ok(()), |floor| floor.check(size))
    }

    /// Writes the envelope in Postfix's internal form, as its own sendmail
    /// does: the queue file holds `john doe@x`, never `"john doe"@x`.
    fn start(&mut self, envelope: &server::Envelope) -> Result<Postdrop, Refusal> {
        let mut message = Vec::new();
        if let Some(envid) = &envelope.dsn.envid {
            message.push(format!("{}={envid}", attr::DSN_ENVID));
        }
        if let Some(ret) = envelope.dsn.ret {
            message.push(format!("{}={}", attr::DSN_RET, ret.postfix()));
        }
        let attributes: Vec<String> = if envelope.eight_bit {
            vec![format!("{}=8bit", attr::ENCODING)]
        } else {
            Vec::new()
        };
        let sender = bsmtp::address::to_internal(&envelope.sender);
        let recipients: Vec<(String, Vec<String>)> = envelope
            .recipients
            .iter()
            .enumerate()
            .map(|(i, external)| {
                let dsn = envelope.recipient_dsn.get(i).cloned().unwrap_or_default();
                (
                    bsmtp::address::to_internal(external),
                    recipient_attributes(external, &dsn),
                )
            })
            .collect();
        Postdrop::start(
            &self.command,
            &Envelope {
                sender: &sender,
                recipients: &recipients,
                message: &message,
                attributes: &attributes,
            },
        )
        .map_err(Refusal::from)
    }
}

/// A recipient's DSN attributes, as Postfix's smtpd writes them: `notify`
/// when asked for, and always the original recipient (`dsn_orcpt`), which
/// is the address as the sender wrote it when ORCPT did not say.
fn recipient_attributes(external: &str, dsn: &RcptDsn) -> Vec<String> {
    let mut attributes = Vec::new();
    if let Some(notify) = &dsn.notify {
        attributes.push(format!("{}={}", attr::DSN_NOTIFY, notify_mask(notify)));
    }
    let (kind, address) = dsn
        .orcpt
        .clone()
        .unwrap_or_else(|| ("rfc822".into(), external.to_owned()));
    attributes.push(format!("{}={kind};{address}", attr::DSN_ORCPT));
    attributes
}

/// Checks that `dir` looks like a Postfix config directory before we hand
/// it to postdrop, so a typo gets a plain message.
pub fn check_config_dir(dir: &Path) -> Result<(), String> {
    if dir.join("main.cf").is_file() {
        Ok(())
    } else {
        Err(format!(
            "{}: no main.cf there; --postfix-config must name a Postfix config directory",
            dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (audit): postdrop's "message file too big" (its file size
    /// limit is the hub's `message_size_limit`) was answered 451, so the
    /// leaf retried a message that can never fit for days.
    #[test]
    fn cleanup_status_maps_to_smtpd_replies() {
        let refused = |bits: Option<u32>| PostdropError::Refused {
            program: "postdrop".into(),
            status: String::new(),
            bits,
            reason: String::new(),
            stderr: String::new(),
        };
        let shown = |bits| refused(bits).reply().one_line();
        assert_eq!(shown(Some(4)), "552 5.3.4 Error: message file too big");
        assert_eq!(shown(Some(2)), "451 4.3.0 Error: queue file write error");
        assert_eq!(shown(Some(1 << 9)), "550 5.7.1 Error: service denied");
        // The most severe bit wins, as in Postfix.
        assert_eq!(
            shown(Some(4 | (1 << 8))),
            "451 4.7.1 Error: service unavailable"
        );
        assert_eq!(shown(None), "451 4.3.0 Error: queue file write error");
    }

    #[test]
    fn attribute_list_parses() {
        let mut input: &[u8] = b"protocol\0postdrop_protocol\0queue_id\0ABC123\0\0";
        let attrs = read_attributes(&mut input).unwrap();
        assert_eq!(attrs[1], ("queue_id".into(), "ABC123".into()));
        let mut cut: &[u8] = b"queue_id\0AB";
        assert!(read_attributes(&mut cut).is_err());
    }
}
