//! SMTP replies with RFC 3463 enhanced status codes.
//!
//! Both sides of a live BSMTP session speak in replies: rsmtp writes one per
//! command so that bsmtp-ssh can pipeline and still learn the fate of every
//! recipient, and bsmtp-ssh reads them back to pick its exit status. Keeping
//! the formatter and the parser in one module keeps the two in agreement: what
//! [`Reply::encode`] writes, [`ReplyParser`] reads back unchanged.
//!
//! The parser is sans I/O like the codec: it takes bytes, returns a complete
//! reply or "need more", and never holds more than one reply.

use std::fmt;
use std::str::FromStr;

/// Longest reply line, CRLF included (RFC 5321 section 4.5.3.1.5 allows 512;
/// real servers send longer, so we allow what our command lines allow).
pub const MAX_REPLY_LINE: usize = 4096;

/// Most lines one multi-line reply may have; bounds the memory a hostile or
/// broken peer can make us hold for a single reply.
pub const MAX_REPLY_LINES: usize = 128;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject, e.g. 1 for addressing, 7 for security (0 to 999).
    pub subject: u16,
    /// The detail within the subject (0 to 999).
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code from its three parts; no check is made, use the
    /// constants or `FromStr` when the parts come from outside.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Why a string is not an enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3463 enhanced status code: {0:?}")]
pub struct ParseEnhancedCodeError(String);

impl FromStr for EnhancedCode {
    type Err = ParseEnhancedCodeError;

    /// Parses `class.subject.detail`: class 2, 4 or 5, then one to three
    /// digits each, as RFC 3463 section 2 defines them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseEnhancedCodeError(s.chars().take(32).collect());
        let mut parts = s.split('.');
        let (Some(class), Some(subject), Some(detail), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return Err(err()),
        };
        let number = |p: &str| -> Option<u16> {
            if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse().ok()
            } else {
                None
            }
        };
        match (number(subject), number(detail)) {
            (Some(subject), Some(detail)) => Ok(Self::new(class, subject, detail)),
            _ => Err(err()),
        }
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status code and
/// one or more lines of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The basic reply code, e.g. 250.
    pub code: u16,
    /// The enhanced status code, written at the start of every line.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, without code, enhanced code or line terminator.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// Appends the reply in wire form, e.g. `"250-first\r\n250 2.0.0 last\r\n"`
    /// with the enhanced code repeated on every line, as Postfix does.
    ///
    /// Control characters in the text become spaces, so a text taken from an
    /// error message can never end the line early and forge another reply;
    /// text that would make a line longer than [`MAX_REPLY_LINE`] is cut at a
    /// character boundary. A reply without lines is written as one empty line.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, text) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let start = out.len();
            out.extend_from_slice(format!("{:03}", self.code).as_bytes());
            let mut rest = String::new();
            if let Some(enhanced) = self.enhanced {
                rest.push_str(&enhanced.to_string());
            }
            if !text.is_empty() {
                if !rest.is_empty() {
                    rest.push(' ');
                }
                rest.extend(text.chars().map(|c| if c.is_control() { ' ' } else { c }));
            }
            if last {
                if !rest.is_empty() {
                    out.push(b' ');
                }
            } else {
                out.push(b'-');
            }
            // Room left for the text once the code, separator and CRLF are in.
            let room = MAX_REPLY_LINE - (out.len() - start) - 2;
            let mut cut = rest.len().min(room);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.extend_from_slice(&rest.as_bytes()[..cut]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// True for 2xx replies: done.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// True for 4xx replies: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx replies: do not try again.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// `"550 5.7.1 first line"` followed by the other lines, joined by
    /// spaces: one line for logs and for pipe(8)'s status text.
    pub fn one_line(&self) -> String {
        let mut s = format!("{:03}", self.code);
        if let Some(enhanced) = self.enhanced {
            s.push(' ');
            s.push_str(&enhanced.to_string());
        }
        for line in self.lines.iter().filter(|l| !l.is_empty()) {
            s.push(' ');
            s.push_str(line);
        }
        s
    }

    /// The enhanced code, or the default for the basic code's class: 2.0.0
    /// for 2xx and 3xx, 4.0.0 for 4xx, 5.0.0 for anything else (a code
    /// outside 200-599 is a failure we cannot explain better).
    pub fn status(&self) -> EnhancedCode {
        if let Some(enhanced) = self.enhanced {
            return enhanced;
        }
        match self.code {
            200..=399 => EnhancedCode::new(2, 0, 0),
            400..=499 => EnhancedCode::new(4, 0, 0),
            _ => EnhancedCode::new(5, 0, 0),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// A malformed reply: the peer does not speak SMTP as we do, so the session
/// cannot go on (the caller defers the mail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line does not start with a three-digit code 200-599 followed by
    /// space, hyphen or the end of the line.
    #[error("malformed reply line: {0:?}")]
    BadLine(String),
    /// A continuation line carries another code than the first line.
    #[error("multi-line reply mixes codes {first} and {other}")]
    MixedCodes {
        /// The code of the first line.
        first: u16,
        /// The differing code.
        other: u16,
    },
    /// A line is longer than [`MAX_REPLY_LINE`].
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    LineTooLong,
    /// A reply has more than [`MAX_REPLY_LINES`] lines.
    #[error("reply longer than {MAX_REPLY_LINES} lines")]
    TooManyLines,
}

/// Reads replies from a byte stream: CRLF or bare LF, multi-line replies
/// (`250-...` continuation lines), each line at most [`MAX_REPLY_LINE`].
///
/// It remembers how far it has read into a reply that is not complete yet,
/// so the caller must pass the same unconsumed bytes again, with more
/// appended, until a reply is returned.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// Bytes of the caller's input already parsed into `lines`.
    scanned: usize,
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// A parser waiting for the first line of a reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the next reply from the start of `input`: `Ok(Some((consumed,
    /// reply)))`, or `Ok(None)` when more input is needed. After an error the
    /// parser starts afresh, but the stream is out of step and should be
    /// dropped.
    pub fn parse(&mut self, input: &[u8]) -> Result<Option<(usize, Reply)>, ReplyError> {
        let result = self.parse_inner(input);
        if !matches!(result, Ok(None)) {
            *self = Self::default();
        }
        result
    }

    fn parse_inner(&mut self, input: &[u8]) -> Result<Option<(usize, Reply)>, ReplyError> {
        loop {
            let rest = input.get(self.scanned..).unwrap_or_default();
            let window = &rest[..rest.len().min(MAX_REPLY_LINE)];
            let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                if rest.len() >= MAX_REPLY_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
            self.scanned += lf + 1;
            let (code, last, text) = split_line(line)?;
            match self.code {
                None => self.code = Some(code),
                Some(first) if first != code => {
                    return Err(ReplyError::MixedCodes { first, other: code })
                }
                Some(_) => {}
            }
            let (enhanced, stripped) = split_enhanced(code, text);
            let text = if self.lines.is_empty() {
                self.enhanced = enhanced;
                stripped
            } else if enhanced.is_some() && enhanced == self.enhanced {
                // Later lines repeat the first line's code (Postfix style);
                // any other code is just text.
                stripped
            } else {
                text
            };
            let text = String::from_utf8_lossy(text).into_owned();
            if self.lines.len() == MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
            self.lines.push(text);
            if last {
                let reply = Reply {
                    code,
                    enhanced: self.enhanced,
                    lines: std::mem::take(&mut self.lines),
                };
                return Ok(Some((self.scanned, reply)));
            }
        }
    }
}

/// Splits a reply line (terminator removed) into code, "is last line" and text.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let bad = || ReplyError::BadLine(String::from_utf8_lossy(&line[..line.len().min(64)]).into());
    let [d1 @ b'2'..=b'5', d2 @ b'0'..=b'9', d3 @ b'0'..=b'9', rest @ ..] = line else {
        return Err(bad());
    };
    let code = u16::from(d1 - b'0') * 100 + u16::from(d2 - b'0') * 10 + u16::from(d3 - b'0');
    match rest {
        [] => Ok((code, true, rest)),
        [b' ', text @ ..] => Ok((code, true, text)),
        [b'-', text @ ..] => Ok((code, false, text)),
        _ => Err(bad()),
    }
}

/// Splits `"C.S.D text"` into the enhanced code and the text when the line's
/// code is 2xx, 4xx or 5xx and C is its class digit (RFC 3463 section 2 says
/// the class must match); otherwise the whole text is kept.
fn split_enhanced(code: u16, text: &[u8]) -> (Option<EnhancedCode>, &[u8]) {
    let class = code / 100;
    if !matches!(class, 2 | 4 | 5) {
        return (None, text);
    }
    let (word, rest) = match text.iter().position(|&b| b == b' ') {
        Some(sp) => (&text[..sp], &text[sp + 1..]),
        None => (text, &text[text.len()..]),
    };
    match std::str::from_utf8(word)
        .ok()
        .and_then(|w| w.parse::<EnhancedCode>().ok())
    {
        Some(e) if u16::from(e.class) == class => (Some(e), rest),
        _ => (None, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
        let mut pos = 0;
        let mut replies = Vec::new();
        while let Some((n, reply)) = parser.parse(&input[pos..])? {
            pos += n;
            replies.push(reply);
        }
        assert_eq!(pos, input.len(), "unconsumed input");
        Ok(replies)
    }

    #[test]
    fn enhanced_code_parses_and_displays() {
        let code: EnhancedCode = "5.7.1".parse().unwrap();
        assert_eq!(code, EnhancedCode::new(5, 7, 1));
        assert_eq!(code.to_string(), "5.7.1");
        assert_eq!(
            "4.123.999".parse::<EnhancedCode>().unwrap(),
            EnhancedCode::new(4, 123, 999)
        );
        for bad in [
            "3.0.0", "5.0", "5.0.0.0", "5.1000.0", "5..0", "5.+1.0", "", "5.a.0",
        ] {
            assert!(bad.parse::<EnhancedCode>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encode_repeats_enhanced_code_on_every_line() {
        let reply = Reply {
            code: 250,
            enhanced: Some(EnhancedCode::new(2, 0, 0)),
            lines: vec!["first".into(), "last".into()],
        };
        let mut out = Vec::new();
        reply.encode(&mut out);
        assert_eq!(out, b"250-2.0.0 first\r\n250 2.0.0 last\r\n");
    }

    #[test]
    fn encode_turns_control_characters_into_spaces() {
        let mut out = Vec::new();
        Reply::new(550, None, "a\r\n250 forged").encode(&mut out);
        assert_eq!(out, b"550 a  250 forged\r\n");
    }

    #[test]
    fn encode_bare_code() {
        let mut out = Vec::new();
        Reply::new(354, None, "").encode(&mut out);
        Reply {
            code: 250,
            enhanced: None,
            lines: vec![],
        }
        .encode(&mut out);
        assert_eq!(out, b"354\r\n250\r\n");
    }

    #[test]
    fn encode_cuts_long_text_to_the_line_limit() {
        let mut out = Vec::new();
        let reply = Reply::new(550, Some(EnhancedCode::new(5, 1, 1)), "é".repeat(5000));
        reply.encode(&mut out);
        assert!(out.len() <= MAX_REPLY_LINE);
        assert!(out.ends_with(b"\r\n"));
        let parsed = parse_all(&out).unwrap();
        assert!(parsed[0].lines[0].chars().all(|c| c == 'é'));
    }

    #[test]
    fn classes_and_status() {
        let r = |code| Reply::new(code, None, "x");
        assert!(r(250).is_positive() && r(354).is_positive());
        assert!(r(451).is_transient() && !r(451).is_positive());
        assert!(r(554).is_permanent() && !r(554).is_transient());
        assert_eq!(r(354).status(), EnhancedCode::new(2, 0, 0));
        assert_eq!(r(421).status(), EnhancedCode::new(4, 0, 0));
        assert_eq!(r(550).status(), EnhancedCode::new(5, 0, 0));
        let e = EnhancedCode::new(5, 1, 1);
        assert_eq!(Reply::new(550, Some(e), "x").status(), e);
    }

    #[test]
    fn one_line_joins_lines() {
        let reply = Reply {
            code: 550,
            enhanced: Some(EnhancedCode::new(5, 7, 1)),
            lines: vec!["denied".into(), "see policy".into()],
        };
        assert_eq!(reply.one_line(), "550 5.7.1 denied see policy");
        assert_eq!(reply.to_string(), reply.one_line());
    }

    #[test]
    fn parse_multi_line_with_lf_and_crlf() {
        let replies = parse_all(b"250-hub.example\n250-PIPELINING\r\n250 8BITMIME\n").unwrap();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].code, 250);
        assert_eq!(replies[0].enhanced, None);
        assert_eq!(replies[0].lines, ["hub.example", "PIPELINING", "8BITMIME"]);
    }

    #[test]
    fn parse_splits_enhanced_code_only_when_class_matches() {
        let replies =
            parse_all(b"550 5.1.1 no such user\r\n250 5.1.1 odd\r\n354 2.0.0 go\r\n").unwrap();
        assert_eq!(replies[0].enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(replies[0].lines, ["no such user"]);
        assert_eq!(replies[1].enhanced, None);
        assert_eq!(replies[1].lines, ["5.1.1 odd"]);
        assert_eq!(replies[2].enhanced, None);
        assert_eq!(replies[2].lines, ["2.0.0 go"]);
    }

    #[test]
    fn parse_needs_more_input_without_error() {
        let mut parser = ReplyParser::new();
        let input = b"250-a\r\n250 b\r\n";
        for end in 0..input.len() {
            assert_eq!(parser.parse(&input[..end]), Ok(None), "prefix {end}");
        }
        let (n, reply) = parser.parse(input).unwrap().unwrap();
        assert_eq!(n, input.len());
        assert_eq!(reply.lines, ["a", "b"]);
    }

    #[test]
    fn parse_rejects_malformed() {
        let err = |input: &[u8]| parse_all(input).unwrap_err();
        assert!(matches!(err(b"25 x\r\n"), ReplyError::BadLine(_)));
        assert!(matches!(err(b"650 x\r\n"), ReplyError::BadLine(_)));
        assert!(matches!(err(b"250x\r\n"), ReplyError::BadLine(_)));
        assert_eq!(
            err(b"250-a\r\n550 b\r\n"),
            ReplyError::MixedCodes {
                first: 250,
                other: 550
            }
        );
        let mut long = b"250 ".to_vec();
        long.resize(MAX_REPLY_LINE + 10, b'x');
        assert_eq!(err(&long), ReplyError::LineTooLong);
        let many = b"250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(err(&many), ReplyError::TooManyLines);
    }
}
