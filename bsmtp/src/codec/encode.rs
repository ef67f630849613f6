//! Writing BSMTP: command lines and dot-stuffed CRLF bodies.
//!
//! This is the only place where message content is dot-stuffed, so pipe(8)
//! must run the sender without `flags=.`. Output goes to the caller's buffer;
//! the body encoder keeps two flags of state and never the content.

use super::decode::Command;

/// Appends a command line ending CRLF, e.g. `"MAIL FROM:<a@b> SIZE=10\r\n"`.
///
/// Fields are written as they are: a field holding CR or LF would forge a
/// line. Envelope data from outside must first pass [`Command::parse`] (for
/// instance on this very output) before it reaches a peer.
pub fn encode_command(cmd: &Command, out: &mut Vec<u8>) {
    out.extend_from_slice(cmd.verb().as_bytes());
    match cmd {
        Command::Ehlo(domain) | Command::Helo(domain) | Command::Lhlo(domain) => {
            out.push(b' ');
            out.extend_from_slice(domain.as_bytes());
        }
        Command::Xforward(params) => encode_params(params, out),
        Command::Mail { from: path, params } | Command::Rcpt { to: path, params } => {
            out.extend_from_slice(if matches!(cmd, Command::Mail { .. }) {
                b" FROM:<"
            } else {
                b" TO:<"
            });
            out.extend_from_slice(path.as_bytes());
            out.push(b'>');
            encode_params(params, out);
        }
        Command::Data | Command::Rset | Command::Noop | Command::Quit => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// ` KEYWORD[=VALUE]` for each parameter.
fn encode_params(params: &[super::Param], out: &mut Vec<u8>) {
    for param in params {
        out.push(b' ');
        out.extend_from_slice(param.keyword.as_bytes());
        if let Some(value) = &param.value {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
    }
}

/// Turns raw message content (lines ending LF or CRLF, as pipe(8) or
/// sendmail give it) into a dot-stuffed CRLF body, in chunks of any size.
///
/// Every LF, with or without a CR before it, becomes CRLF; a CR not followed
/// by LF stays data; a line starting with "." gets one more "."; NUL and
/// 8-bit bytes pass untouched. The [`Decoder`](super::Decoder) gives back the
/// content's lines exactly (without their terminators), plus a final line
/// end if the content lacked one.
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    /// True at the start of a line, where a dot needs stuffing.
    line_start: bool,
    /// A CR ended the last chunk: whether it is data or half a CRLF depends
    /// on the next byte.
    pending_cr: bool,
}

impl Default for BodyEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl BodyEncoder {
    /// An encoder at the start of the content.
    pub fn new() -> Self {
        Self {
            line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the encoding of the next `chunk` of content to `out`.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while let Some((&first, tail)) = rest.split_first() {
            if self.pending_cr {
                self.pending_cr = false;
                if first == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    rest = tail;
                    continue;
                }
                // A bare CR is data; it does not end the line.
                out.push(b'\r');
                self.line_start = false;
            }
            if self.line_start && first == b'.' {
                out.push(b'.');
            }
            // Copy the run of plain bytes in one go.
            let run = rest
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(rest.len());
            out.extend_from_slice(&rest[..run]);
            if run > 0 {
                self.line_start = false;
            }
            match rest.get(run) {
                Some(b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                Some(_) => self.pending_cr = true,
                None => {}
            }
            rest = rest.get(run + 1..).unwrap_or_default();
        }
    }

    /// Ends the body: a pending CR is written as data, then CRLF if the
    /// content did not end with a line end, then the terminating `".\r\n"`.
    /// Empty content gives just `".\r\n"`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr {
            out.push(b'\r');
        }
        if self.pending_cr || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Param;

    fn encode_body(chunks: &[&[u8]]) -> Vec<u8> {
        let mut enc = BodyEncoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            enc.encode(chunk, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    #[test]
    fn commands() {
        let mut out = Vec::new();
        encode_command(&Command::Ehlo("leaf.example".into()), &mut out);
        encode_command(
            &Command::Mail {
                from: "a@b".into(),
                params: vec![
                    Param {
                        keyword: "SIZE".into(),
                        value: Some("10".into()),
                    },
                    Param {
                        keyword: "SMTPUTF8".into(),
                        value: None,
                    },
                ],
            },
            &mut out,
        );
        encode_command(
            &Command::Rcpt {
                to: "c@d".into(),
                params: vec![],
            },
            &mut out,
        );
        encode_command(&Command::Data, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "EHLO leaf.example\r\nMAIL FROM:<a@b> SIZE=10 SMTPUTF8\r\nRCPT TO:<c@d>\r\nDATA\r\n"
        );
    }

    #[test]
    fn empty_content_is_just_the_dot() {
        assert_eq!(encode_body(&[]), b".\r\n");
        assert_eq!(encode_body(&[b"", b""]), b".\r\n");
    }

    #[test]
    fn line_ends_become_crlf_and_dots_are_stuffed() {
        assert_eq!(
            encode_body(&[b".\n..\r\nx.\n."]),
            b"..\r\n...\r\nx.\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn cr_at_chunk_end_waits_for_the_next_byte() {
        assert_eq!(encode_body(&[b"a\r", b"\n.b"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(encode_body(&[b"a\r", b".b\n"]), b"a\r.b\r\n.\r\n");
        assert_eq!(encode_body(&[b"a\r"]), b"a\r\r\n.\r\n");
        assert_eq!(encode_body(&[b"\r", b"\r", b"\n"]), b"\r\r\n.\r\n");
    }

    #[test]
    fn dot_after_chunk_boundary_at_line_start_is_stuffed() {
        assert_eq!(encode_body(&[b"a\n", b".", b"."]), b"a\r\n...\r\n.\r\n");
    }

    #[test]
    fn nul_and_8bit_pass_untouched() {
        assert_eq!(
            encode_body(&[b"\0\xff\xc3\xa9\n"]),
            b"\0\xff\xc3\xa9\r\n.\r\n"
        );
    }
}
