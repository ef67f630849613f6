//! A message handed over the sendmail(1) way: on standard input, ending
//! at EOF, or (without `-i`) at a line holding only `.`. Shared by rsmtp's
//! `sendmail` verb and a satellite's `bsmtp-ssh sendmail`: the header
//! section is read first (bounded), for `-t` and `-F`, and the rest
//! streams.

use std::io::{self, Read};

use bsmtp::sendmail::{self, Invocation};

/// Most bytes of header section read before the message is taken to have
/// no body (then all of it is header, as sendmail takes it).
pub const MAX_HEADER: usize = 1024 * 1024;

/// Reads from `inner` until EOF or, when `dot_ends`, until a line holding
/// only `.` (LF or CRLF), which is not part of the message. It tells how
/// the message ended, so a caller can tell a message cut short (the last
/// byte not a line end) from one that ended.
pub struct StopAtDot<R> {
    inner: R,
    dot_ends: bool,
    state: Line,
    /// A `.` (and CR) at a line start, held until the line shows whether
    /// it is the end.
    held: Vec<u8>,
    /// Message bytes ready to be read.
    ready: std::collections::VecDeque<u8>,
    ended_by_dot: bool,
    /// Nothing more comes from `inner` (EOF, or the dot line).
    done: bool,
    last: Option<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    Start,
    Middle,
    /// A `.` at the start of a line, held back.
    Dot,
    /// `.` and CR, held back.
    DotCr,
}

impl<R: Read> StopAtDot<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, dot_ends: bool) -> Self {
        StopAtDot {
            inner,
            dot_ends,
            state: Line::Start,
            held: Vec::new(),
            ready: std::collections::VecDeque::new(),
            ended_by_dot: false,
            done: false,
            last: None,
        }
    }

    /// The message ended with a `.` line.
    pub fn ended_by_dot(&self) -> bool {
        self.ended_by_dot
    }

    /// The message as read so far ends with a line end (or is empty):
    /// once EOF was seen, it was not cut in the middle of a line.
    pub fn ends_with_line_end(&self) -> bool {
        self.ended_by_dot || self.last.is_none_or(|b| b == b'\n')
    }

    /// Puts bytes back in front of what is still to be read.
    fn unread(&mut self, bytes: Vec<u8>) {
        for byte in bytes.into_iter().rev() {
            self.ready.push_front(byte);
        }
    }

    /// Runs the dot state machine over `input`; stops at the dot line.
    fn scan(&mut self, input: &[u8]) {
        for &byte in input {
            if self.done {
                return;
            }
            match (self.state, byte) {
                (Line::Start, b'.') if self.dot_ends => {
                    self.state = Line::Dot;
                    self.held.push(byte);
                }
                (Line::Dot | Line::DotCr, b'\n') => {
                    self.held.clear();
                    self.ended_by_dot = true;
                    self.done = true;
                }
                (Line::Dot, b'\r') => {
                    self.state = Line::DotCr;
                    self.held.push(byte);
                }
                (_, _) => {
                    self.ready.extend(self.held.drain(..));
                    self.ready.push_back(byte);
                    self.state = if byte == b'\n' {
                        Line::Start
                    } else {
                        Line::Middle
                    };
                }
            }
        }
    }
}

impl<R: Read> Read for StopAtDot<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        while self.ready.is_empty() && !self.done {
            let n = self.inner.read(&mut chunk)?;
            if n == 0 {
                // EOF: whatever was held back is message.
                self.ready.extend(self.held.drain(..));
                self.done = true;
            } else {
                self.scan(&chunk[..n]);
            }
        }
        let n = self.ready.len().min(buf.len());
        for (slot, byte) in buf.iter_mut().zip(self.ready.drain(..n)) {
            *slot = byte;
        }
        if n > 0 {
            self.last = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

/// A message read the sendmail way, its envelope settled.
pub struct Submission<R> {
    /// Envelope sender (SMTP form); empty for the null sender.
    pub sender: String,
    /// Envelope recipients: the command line's, and with `-t` the header's.
    pub recipients: Vec<String>,
    /// The header section as it goes out (`Bcc:` gone with `-t`, a
    /// `From:` added for `-F`), possibly the whole message.
    pub header: Vec<u8>,
    /// The rest of the message.
    pub rest: StopAtDot<R>,
}

impl<R: Read> Submission<R> {
    /// Reads the header section from `input` and settles the envelope.
    /// `default_sender` stands in when no `-f` was given.
    pub fn read(invocation: &Invocation, default_sender: &str, input: R) -> io::Result<Self> {
        let mut rest = StopAtDot::new(input, invocation.dot_ends);
        let mut header = Vec::new();
        let mut chunk = [0u8; 8192];
        while sendmail::header_length(&header).is_none() && header.len() < MAX_HEADER {
            let n = rest.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            header.extend_from_slice(&chunk[..n]);
        }
        // Bytes read past the header section go back in front of the rest.
        let body_start = sendmail::header_length(&header).unwrap_or(header.len());
        rest.unread(header.split_off(body_start));
        let sender = invocation
            .sender
            .clone()
            .unwrap_or_else(|| default_sender.to_owned());
        let mut recipients = invocation.recipients.clone();
        if invocation.from_headers {
            recipients.extend(sendmail::header_recipients(&header));
            header = sendmail::without_bcc(&header);
        }
        if let Some(name) = &invocation.full_name {
            if !sender.is_empty() && !sendmail::has_field(&header, "From") {
                let name = bsmtp::text::one_line(name).replace(['"', '\\'], "");
                let mut from = format!("From: \"{name}\" <{sender}>\n").into_bytes();
                from.append(&mut header);
                header = from;
            }
        }
        Ok(Submission {
            sender,
            recipients,
            header,
            rest,
        })
    }

    /// The whole message: the header section, then the rest.
    pub fn content(self) -> Content<R> {
        io::Cursor::new(self.header).chain(self.rest)
    }
}

/// A submission's whole message, as [`Submission::content`] gives it.
pub type Content<R> = io::Chain<io::Cursor<Vec<u8>>, StopAtDot<R>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn through(input: &[u8], dot_ends: bool, chunk: usize) -> (Vec<u8>, bool, bool) {
        let mut reader = StopAtDot::new(input, dot_ends);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, reader.ended_by_dot(), reader.ends_with_line_end())
    }

    #[test]
    fn a_dot_line_ends_the_message_only_without_minus_i() {
        for chunk in [1, 2, 3, 64] {
            let (out, dot, whole) = through(b"a\r\n..b\r\n.\r\nafter\r\n", true, chunk);
            assert_eq!(out, b"a\r\n..b\r\n", "chunk {chunk}");
            assert!(dot && whole);
            let (out, dot, _) = through(b"a\n.x\n.\n", true, chunk);
            assert_eq!(out, b"a\n.x\n");
            assert!(dot);
            let (out, dot, whole) = through(b"a\n.\nb", false, chunk);
            assert_eq!(out, b"a\n.\nb");
            assert!(!dot && !whole, "cut mid-line");
            let (out, _, whole) = through(b"a\n.", true, chunk);
            assert_eq!(out, b"a\n.");
            assert!(!whole);
        }
    }

    #[test]
    fn minus_t_takes_header_recipients_and_drops_bcc() {
        let invocation = sendmail::parse(
            &[
                "-t".to_owned(),
                "-i".to_owned(),
                "-F".to_owned(),
                "Al".to_owned(),
                "-f".to_owned(),
                "al@leaf.test".to_owned(),
            ],
            sendmail::Flags::Verb,
        )
        .unwrap();
        let message: &[u8] =
            b"To: bob@hub.test\nBcc: carol@hub.test\nSubject: s\n\nbody\n.\nmore\n";
        let submission = Submission::read(&invocation, "", message).unwrap();
        assert_eq!(submission.recipients, ["bob@hub.test", "carol@hub.test"]);
        let sender = submission.sender.clone();
        let mut content = submission.content();
        let mut text = Vec::new();
        content.read_to_end(&mut text).unwrap();
        assert_eq!(sender, "al@leaf.test");
        assert_eq!(
            String::from_utf8_lossy(&text),
            "From: \"Al\" <al@leaf.test>\nTo: bob@hub.test\nSubject: s\n\nbody\n.\nmore\n"
        );
    }
}
