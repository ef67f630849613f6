//! Reading BSMTP: command lines become [`Command`]s, message content becomes
//! dot-unstuffed [`Event::BodyPiece`]s.
//!
//! The decoder never copies a body: pieces borrow from the caller's input and
//! are handed out as soon as they are known to be right, so memory stays
//! bounded whatever the message size. It never holds bytes of its own either:
//! what it has not consumed, the caller keeps and offers again with more.

use super::{MAX_ADDRESS, MAX_BODY_PIECE, MAX_COMMAND_LINE};
use crate::reply::{EnhancedCode, Reply};

/// An ESMTP parameter of MAIL or RCPT, such as `SIZE=1024` or `SMTPUTF8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The keyword, upper-cased (keywords are case-insensitive).
    pub keyword: String,
    /// The value after `=`, as sent; `None` for a bare keyword.
    pub value: Option<String>,
}

/// One BSMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `LHLO domain` (RFC 2033, LMTP's EHLO).
    Lhlo(String),
    /// Postfix's `XFORWARD NAME=value ...`: facts about the original
    /// client, for logs (`IDENT` names the queue ID of an upstream
    /// Postfix, when there is one).
    Xforward(Vec<Param>),
    /// `MAIL FROM:<from> params`; `from` is empty for the null sender `<>`.
    /// A source route is removed; a quoted local part keeps its quotes.
    Mail {
        /// The sender address, without angle brackets.
        from: String,
        /// ESMTP parameters in the order sent.
        params: Vec<Param>,
    },
    /// `RCPT TO:<to> params`.
    Rcpt {
        /// The recipient address, without angle brackets; never empty.
        to: String,
        /// ESMTP parameters in the order sent.
        params: Vec<Param>,
    },
    /// `DATA`: the message content follows at once.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP`, with any argument ignored.
    Noop,
    /// `QUIT`.
    Quit,
}

impl Command {
    /// The command's verb in upper case, e.g. `"MAIL"`, for logs and replies.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Lhlo(_) => "LHLO",
            Command::Xforward(_) => "XFORWARD",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
        }
    }

    /// Parses one command line given without its line terminator, with the
    /// same rules as the [`Decoder`] (except the length limit, which is the
    /// decoder's business).
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        parse_command(line)
    }
}

/// What the decoder found at the start of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A well-formed command line. After [`Command::Data`] the decoder reads
    /// message content until [`Event::DataEnd`].
    Command(Command),
    /// A piece of one body line, dot-unstuffed, without its line terminator.
    /// `end_of_line` is true when the line ended after this piece (long lines
    /// come as several pieces, only the last has `end_of_line` true). A piece
    /// is at most [`MAX_BODY_PIECE`] bytes, and only an empty line gives an
    /// empty piece. Where a line is cut into pieces depends on how the input
    /// was chunked, so compare lines, not pieces.
    BodyPiece {
        /// The content bytes, borrowed from the input.
        bytes: &'a [u8],
        /// True when this piece ends the line.
        end_of_line: bool,
    },
    /// The line holding only "." ended the message.
    DataEnd,
    /// A command line that could not be accepted; the line was consumed, the
    /// session goes on. [`CommandError::reply`] says which reply to give.
    Invalid(CommandError),
    /// Bytes of an over-long command line were consumed and dropped; nothing
    /// is due yet. [`Event::Invalid`] with [`CommandError::LineTooLong`]
    /// follows when the line ends. This exists so that the caller can let go
    /// of those bytes: otherwise a line without a newline would grow its
    /// buffer without bound.
    Skipped,
}

/// Why a command line was refused. Each variant maps to one precise reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The line is longer than [`MAX_COMMAND_LINE`] (terminator included).
    #[error("command line longer than {MAX_COMMAND_LINE} bytes")]
    LineTooLong,
    /// An empty line where a command was expected.
    #[error("empty command line")]
    EmptyLine,
    /// NUL, a bare CR or another control character in a command line.
    #[error("control character 0x{0:02x} in command line")]
    ControlCharacter(u8),
    /// The line is not valid UTF-8.
    #[error("command line is not valid UTF-8")]
    NotUtf8,
    /// A verb we do not know or do not implement (at most 32 characters of it).
    #[error("command not recognized: {0}")]
    UnknownCommand(String),
    /// A known command with a malformed or missing argument.
    #[error("{command}: {detail}")]
    Syntax {
        /// The verb, e.g. `"MAIL"`.
        command: &'static str,
        /// What is wrong.
        detail: &'static str,
    },
    /// The path in `<...>` is not a valid address.
    #[error("{command}: bad address syntax: {detail}")]
    BadAddress {
        /// `"MAIL"` or `"RCPT"`.
        command: &'static str,
        /// What is wrong.
        detail: &'static str,
    },
    /// The path in `<...>` is longer than [`MAX_ADDRESS`].
    #[error("{command}: path longer than {MAX_ADDRESS} bytes")]
    AddressTooLong {
        /// `"MAIL"` or `"RCPT"`.
        command: &'static str,
    },
    /// An ESMTP parameter that is not `KEYWORD[=VALUE]` (at most 64
    /// characters of it).
    #[error("{command}: bad parameter syntax: {param}")]
    ParamSyntax {
        /// `"MAIL"` or `"RCPT"`.
        command: &'static str,
        /// The offending parameter.
        param: String,
    },
}

impl CommandError {
    /// The reply a receiver gives for this error, with its RFC 3463 code:
    /// 500 5.5.2 for lines that are not commands at all, 500 5.5.1 for
    /// unknown verbs, 501 5.5.4 for bad arguments, 501 5.1.7 / 5.1.3 for bad
    /// sender / recipient addresses (RFC 5321 section 4.5.3.1.10 gives 500
    /// for "line too long" and 501 for "path too long").
    pub fn reply(&self) -> Reply {
        const SYNTAX: EnhancedCode = EnhancedCode::new(5, 5, 2);
        const INVALID_COMMAND: EnhancedCode = EnhancedCode::new(5, 5, 1);
        const BAD_ARGUMENTS: EnhancedCode = EnhancedCode::new(5, 5, 4);
        let address = |command: &str| {
            if command == "MAIL" {
                EnhancedCode::new(5, 1, 7)
            } else {
                EnhancedCode::new(5, 1, 3)
            }
        };
        let (code, enhanced, text) = match self {
            CommandError::LineTooLong => (500, SYNTAX, "Error: line too long".to_owned()),
            CommandError::EmptyLine => (500, SYNTAX, "Error: empty command line".to_owned()),
            CommandError::ControlCharacter(_) => (
                500,
                SYNTAX,
                "Error: control character in command".to_owned(),
            ),
            CommandError::NotUtf8 => (500, SYNTAX, "Error: invalid UTF-8 in command".to_owned()),
            CommandError::UnknownCommand(_) => (
                500,
                INVALID_COMMAND,
                "Error: command not recognized".to_owned(),
            ),
            CommandError::Syntax { command, detail } => {
                (501, BAD_ARGUMENTS, format!("Syntax: {command} {detail}"))
            }
            CommandError::BadAddress { command, detail } => (
                501,
                address(command),
                format!("Bad address syntax: {detail}"),
            ),
            CommandError::AddressTooLong { command } => {
                (501, address(command), "Path too long".to_owned())
            }
            CommandError::ParamSyntax { command, .. } => (
                501,
                BAD_ARGUMENTS,
                format!("Bad {command} parameter syntax"),
            ),
        };
        Reply::new(code, Some(enhanced), text)
    }
}

/// The stream ended inside a message: it must be discarded, never injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream ended inside DATA before the terminating dot")]
pub struct Truncated;

/// Where the decoder is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a command line.
    Command,
    /// Inside a command line that already exceeded the limit: dropping bytes
    /// up to its newline.
    SkippingLongLine,
    /// Inside message content; `line_start` is true at the start of a line,
    /// where a dot means something.
    Data { line_start: bool },
}

/// Turns a BSMTP byte stream into [`Event`]s; see the module docs for the
/// line rules. Create one per stream.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder expecting a command line.
    pub fn new() -> Self {
        Self {
            state: State::Command,
        }
    }

    /// True between [`Command::Data`] and [`Event::DataEnd`].
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data { .. })
    }

    /// Reads commands again right after a [`Command::Data`] that was
    /// refused, for SMTP and LMTP, where a client sends the body only
    /// after a 354. (BSMTP sends it regardless: there the body of a refused
    /// DATA is read and dropped instead.)
    pub fn cancel_data(&mut self) {
        if matches!(self.state, State::Data { line_start: true }) {
            self.state = State::Command;
        }
    }

    /// Decodes the next event from the start of `input`: `Some((consumed,
    /// event))`, or `None` when more input is needed. Incomplete input is
    /// never an error. The caller drops the consumed bytes, keeps the rest
    /// and offers it again with more appended.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Option<(usize, Event<'a>)> {
        match self.state {
            State::Command => self.decode_command(input),
            State::SkippingLongLine => self.skip_long_line(input),
            State::Data { line_start } => self.decode_data(input, line_start),
        }
    }

    /// Call at the end of the stream with whatever remains unconsumed, until
    /// it returns `Ok(None)`. Returns events still due, such as a last
    /// command line without a newline (a CR at its end is dropped), or
    /// `Err(Truncated)` when the stream ended inside DATA. Body pieces still
    /// in `input` come out first; the message must be discarded anyway.
    pub fn decode_eof<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<Option<(usize, Event<'a>)>, Truncated> {
        if let Some(found) = self.decode(input) {
            return Ok(Some(found));
        }
        match self.state {
            State::Data { .. } => Err(Truncated),
            State::SkippingLongLine => {
                // The stream ended inside an over-long line (its bytes were
                // all consumed by Skipped events): it still gets its reply.
                self.state = State::Command;
                Ok(Some((
                    input.len(),
                    Event::Invalid(CommandError::LineTooLong),
                )))
            }
            State::Command if input.is_empty() => Ok(None),
            State::Command => {
                let line = input.strip_suffix(b"\r").unwrap_or(input);
                Ok(Some((input.len(), self.command_event(line))))
            }
        }
    }

    fn decode_command<'a>(&mut self, input: &'a [u8]) -> Option<(usize, Event<'a>)> {
        match input.iter().position(|&b| b == b'\n') {
            Some(lf) if lf < MAX_COMMAND_LINE => {
                let line = &input[..lf];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                Some((lf + 1, self.command_event(line)))
            }
            Some(lf) => Some((lf + 1, Event::Invalid(CommandError::LineTooLong))),
            None if input.len() >= MAX_COMMAND_LINE => {
                self.state = State::SkippingLongLine;
                Some((input.len(), Event::Skipped))
            }
            None => None,
        }
    }

    fn skip_long_line<'a>(&mut self, input: &'a [u8]) -> Option<(usize, Event<'a>)> {
        match input.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                self.state = State::Command;
                Some((lf + 1, Event::Invalid(CommandError::LineTooLong)))
            }
            None if input.is_empty() => None,
            None => Some((input.len(), Event::Skipped)),
        }
    }

    fn command_event<'a>(&mut self, line: &[u8]) -> Event<'a> {
        match parse_command(line) {
            Ok(Command::Data) => {
                // BSMTP sends the content right after DATA without waiting
                // for 354, so the content follows whatever the reply.
                self.state = State::Data { line_start: true };
                Event::Command(Command::Data)
            }
            Ok(command) => Event::Command(command),
            Err(err) => Event::Invalid(err),
        }
    }

    fn decode_data<'a>(&mut self, input: &'a [u8], line_start: bool) -> Option<(usize, Event<'a>)> {
        let mut start = 0;
        if line_start && input.first() == Some(&b'.') {
            // A dot at the start of a line: the end of the message if the
            // line holds nothing else, a stuffed dot otherwise.
            match &input[1..input.len().min(3)] {
                [] | [b'\r'] => return None,
                [b'\n', ..] | [b'\r', b'\n'] => {
                    self.state = State::Command;
                    let consumed = if input[1] == b'\n' { 2 } else { 3 };
                    return Some((consumed, Event::DataEnd));
                }
                _ => start = 1,
            }
        }
        let rest = &input[start..];
        // Look no further than the longest piece plus CRLF.
        let window = &rest[..rest.len().min(MAX_BODY_PIECE + 2)];
        if let Some(lf) = window.iter().position(|&b| b == b'\n') {
            let content = &rest[..lf];
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            if content.len() <= MAX_BODY_PIECE {
                self.state = State::Data { line_start: true };
                return Some((
                    start + lf + 1,
                    Event::BodyPiece {
                        bytes: content,
                        end_of_line: true,
                    },
                ));
            }
        }
        // No line end in sight: hand out what is certain. A CR at the very
        // end may be the start of CRLF, so it waits for the next byte.
        let certain = rest.strip_suffix(b"\r").unwrap_or(rest);
        let len = certain.len().min(MAX_BODY_PIECE);
        if len == 0 {
            // Nothing certain yet; a consumed stuffed dot must not be
            // reported as consumed without a piece, so wait with it too.
            return None;
        }
        self.state = State::Data { line_start: false };
        Some((
            start + len,
            Event::BodyPiece {
                bytes: &certain[..len],
                end_of_line: false,
            },
        ))
    }
}

/// Parses one command line without its terminator.
fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    if line.is_empty() {
        return Err(CommandError::EmptyLine);
    }
    if let Some(&c) = line.iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(CommandError::ControlCharacter(c));
    }
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    let arg = arg.trim_matches(' ');
    let no_argument = |command: Command| {
        if arg.is_empty() {
            Ok(command)
        } else {
            Err(CommandError::Syntax {
                command: command.verb(),
                detail: "takes no argument",
            })
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => domain_argument("EHLO", arg).map(Command::Ehlo),
        "HELO" => domain_argument("HELO", arg).map(Command::Helo),
        "LHLO" => domain_argument("LHLO", arg).map(Command::Lhlo),
        "XFORWARD" => {
            let params = arg
                .split(' ')
                .filter(|p| !p.is_empty())
                .map(|p| parse_param("XFORWARD", p))
                .collect::<Result<Vec<_>, _>>()?;
            if params.is_empty() || params.iter().any(|p| p.value.is_none()) {
                return Err(CommandError::Syntax {
                    command: "XFORWARD",
                    detail: "NAME=value expected",
                });
            }
            Ok(Command::Xforward(params))
        }
        "MAIL" => {
            let path = strip_prefix_ignore_case(arg, "FROM:").ok_or(CommandError::Syntax {
                command: "MAIL",
                detail: "FROM:<address> expected",
            })?;
            let (from, params) = path_and_params("MAIL", path)?;
            Ok(Command::Mail { from, params })
        }
        "RCPT" => {
            let path = strip_prefix_ignore_case(arg, "TO:").ok_or(CommandError::Syntax {
                command: "RCPT",
                detail: "TO:<address> expected",
            })?;
            let (to, params) = path_and_params("RCPT", path)?;
            Ok(Command::Rcpt { to, params })
        }
        "DATA" => no_argument(Command::Data),
        "RSET" => no_argument(Command::Rset),
        "QUIT" => no_argument(Command::Quit),
        "NOOP" => Ok(Command::Noop),
        _ => Err(CommandError::UnknownCommand(
            verb.chars().take(32).collect(),
        )),
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    // The prefix is ASCII, so a match ends on a character boundary.
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| &s[prefix.len()..])
}

fn domain_argument(command: &'static str, arg: &str) -> Result<String, CommandError> {
    if arg.is_empty() {
        return Err(CommandError::Syntax {
            command,
            detail: "domain name required",
        });
    }
    if arg.contains(' ') {
        return Err(CommandError::Syntax {
            command,
            detail: "one domain name expected",
        });
    }
    Ok(arg.to_owned())
}

/// Parses `<path> KEY=VALUE ...` (after `FROM:` or `TO:`), with the
/// leniency of Postfix's smtpd under its default `strict_rfc821_envelopes =
/// no`: spaces before the path (`MAIL FROM: <a@b>`), and a path without
/// angle brackets (`MAIL FROM:a@b`, `RCPT TO: a@b NOTIFY=NEVER`), which
/// ends at the first space outside a quoted string. Either way the address
/// must be qualified (`user@domain`; see [`check_mailbox`]).
fn path_and_params(command: &'static str, arg: &str) -> Result<(String, Vec<Param>), CommandError> {
    let bad = |detail| CommandError::BadAddress { command, detail };
    let arg = arg.trim_start_matches(' ');
    let (path, rest) = if let Some(inner) = arg.strip_prefix('<') {
        // A quoted local part may hold '>' itself.
        let close = find_unquoted(inner, |c| c == '>').ok_or(bad("missing >"))?;
        let rest = &inner[close + 1..];
        if !rest.is_empty() && !rest.starts_with(' ') {
            return Err(bad("junk after >"));
        }
        (&inner[..close], rest)
    } else {
        let end = find_unquoted(arg, |c| c == ' ').unwrap_or(arg.len());
        if end == 0 {
            return Err(CommandError::Syntax {
                command,
                detail: if command == "MAIL" {
                    "FROM:<address> expected"
                } else {
                    "TO:<address> expected"
                },
            });
        }
        arg.split_at(end)
    };
    if path.len() > MAX_ADDRESS {
        return Err(CommandError::AddressTooLong { command });
    }
    let mailbox = strip_source_route(path).ok_or(bad("bad source route"))?;
    if mailbox.is_empty() {
        if command == "RCPT" || !path.is_empty() {
            return Err(bad("empty address"));
        }
    } else {
        check_mailbox(command, mailbox).map_err(bad)?;
    }
    let params = rest
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| parse_param(command, p))
        .collect::<Result<_, _>>()?;
    Ok((mailbox.to_owned(), params))
}

/// The byte offset of the first character outside a quoted string (where
/// a backslash escapes the next character) for which `stop` holds.
fn find_unquoted(text: &str, stop: impl Fn(char) -> bool) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if !quoted && stop(c) => return Some(i),
            _ => {}
        }
    }
    None
}

/// Removes an RFC 5321 source route (`@a,@b:`), which RFC 5321 says to
/// accept and ignore. `None` when the route is malformed.
fn strip_source_route(path: &str) -> Option<&str> {
    if !path.starts_with('@') {
        return Some(path);
    }
    let (route, mailbox) = path.split_once(':')?;
    route
        .split(',')
        .all(|hop| hop.len() > 1 && hop.starts_with('@') && is_domain(&hop[1..]))
        .then_some(mailbox)
}

/// Checks `local@domain` (or a bare `postmaster` recipient, which RFC 5321
/// makes every server accept; rsmtp's session refuses it all the same).
///
/// An unqualified address (no `@domain`) is refused, not completed: the
/// receiver would qualify it with its own domain (Postfix's `myorigin`), so
/// a peer's `alice` would become the hub's local `alice`.
fn check_mailbox(command: &str, mailbox: &str) -> Result<(), &'static str> {
    let (local, domain) = if let Some(quoted) = mailbox.strip_prefix('"') {
        let mut escaped = false;
        let mut end = None;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or("unterminated quoted string")?;
        let after = &quoted[end + 1..];
        let local = &mailbox[..end + 2];
        match after.strip_prefix('@') {
            Some(domain) => (local, Some(domain)),
            None if after.is_empty() => (local, None),
            None => return Err("junk after quoted string"),
        }
    } else {
        let (local, domain) = match mailbox.split_once('@') {
            Some((local, domain)) => (local, Some(domain)),
            None => (mailbox, None),
        };
        if local.is_empty() {
            return Err("empty local part");
        }
        if !local.chars().all(is_atext_or_dot) {
            return Err("bad character in local part");
        }
        (local, domain)
    };
    match domain {
        Some(domain) if is_domain(domain) => Ok(()),
        Some(_) => Err("bad domain"),
        // RFC 5321 section 4.1.1.3: <Postmaster> needs no domain.
        None if command == "RCPT" && local.eq_ignore_ascii_case("postmaster") => Ok(()),
        None => Err(UNQUALIFIED),
    }
}

/// The detail of the refusal of an address without `@domain`.
const UNQUALIFIED: &str = "unqualified address (user@domain required)";

/// RFC 5322 atext, dots, and any non-ASCII character (SMTPUTF8, RFC 6531).
fn is_atext_or_dot(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
}

/// A domain name (letters, digits, '-', '_', '.', non-ASCII for IDN) or an
/// address literal in brackets.
fn is_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[') {
        return literal
            .strip_suffix(']')
            .is_some_and(|inner| !inner.is_empty() && !inner.contains(['[', ']', '\\', ' ']));
    }
    !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || !c.is_ascii())
}

/// Parses `KEYWORD[=VALUE]` (RFC 5321 section 4.1.2, values widened to
/// UTF-8 by RFC 6531).
fn parse_param(command: &'static str, param: &str) -> Result<Param, CommandError> {
    let (keyword, value) = match param.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (param, None),
    };
    let keyword_ok = keyword.starts_with(|c: char| c.is_ascii_alphanumeric())
        && keyword
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    let value_ok = !matches!(value, Some(v) if v.is_empty() || v.contains('='));
    if keyword_ok && value_ok {
        Ok(Param {
            keyword: keyword.to_ascii_uppercase(),
            value: value.map(str::to_owned),
        })
    } else {
        Err(CommandError::ParamSyntax {
            command,
            param: param.chars().take(64).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        Command::parse(line.as_bytes())
    }

    fn mail(from: &str) -> Command {
        Command::Mail {
            from: from.into(),
            params: vec![],
        }
    }

    fn rcpt(to: &str) -> Command {
        Command::Rcpt {
            to: to.into(),
            params: vec![],
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("QuIt"), Ok(Command::Quit));
        assert_eq!(parse("rset"), Ok(Command::Rset));
        assert_eq!(parse("mail from:<a@b>"), Ok(mail("a@b")));
        assert_eq!(parse("Rcpt To:<a@b>"), Ok(rcpt("a@b")));
        assert_eq!(
            parse("ehlo leaf.example"),
            Ok(Command::Ehlo("leaf.example".into()))
        );
        assert_eq!(parse("HELO leaf"), Ok(Command::Helo("leaf".into())));
    }

    #[test]
    fn mail_with_params_and_space_after_colon() {
        assert_eq!(
            parse("MAIL FROM: <a@b.example> size=10 BODY=8BITMIME smtputf8"),
            Ok(Command::Mail {
                from: "a@b.example".into(),
                params: vec![
                    Param {
                        keyword: "SIZE".into(),
                        value: Some("10".into())
                    },
                    Param {
                        keyword: "BODY".into(),
                        value: Some("8BITMIME".into())
                    },
                    Param {
                        keyword: "SMTPUTF8".into(),
                        value: None
                    },
                ],
            })
        );
    }

    #[test]
    fn null_sender_only_on_mail() {
        assert_eq!(parse("MAIL FROM:<>"), Ok(mail("")));
        assert!(matches!(
            parse("RCPT TO:<>"),
            Err(CommandError::BadAddress {
                command: "RCPT",
                ..
            })
        ));
    }

    #[test]
    fn source_route_is_stripped() {
        assert_eq!(
            parse("RCPT TO:<@a.example,@b.example:u@d.example>"),
            Ok(rcpt("u@d.example"))
        );
        assert!(parse("RCPT TO:<@a.example,b:u@d>").is_err());
        assert!(parse("RCPT TO:<@a.example>").is_err());
    }

    #[test]
    fn quoted_local_part_keeps_quotes() {
        assert_eq!(
            parse(r#"RCPT TO:<"a b>c"@d.example>"#),
            Ok(rcpt(r#""a b>c"@d.example"#))
        );
        assert_eq!(parse(r#"MAIL FROM:<"a\"b"@d>"#), Ok(mail(r#""a\"b"@d"#)));
        assert!(parse(r#"MAIL FROM:<"ab@d>"#).is_err());
    }

    #[test]
    fn utf8_addresses_pass() {
        assert_eq!(
            parse("RCPT TO:<jöran@bücher.example>"),
            Ok(rcpt("jöran@bücher.example"))
        );
        assert_eq!(
            Command::parse(b"RCPT TO:<\xff@d>"),
            Err(CommandError::NotUtf8)
        );
    }

    #[test]
    fn postmaster_without_domain() {
        assert_eq!(parse("RCPT TO:<Postmaster>"), Ok(rcpt("Postmaster")));
        assert!(parse("MAIL FROM:<postmaster>").is_err());
        assert!(parse("RCPT TO:<user>").is_err());
    }

    /// What Postfix's smtpd takes by default (`strict_rfc821_envelopes =
    /// no`): a space after the colon, and no angle brackets, parameters
    /// still after the address.
    #[test]
    fn postfix_envelope_forms_without_brackets_or_with_a_space() {
        for line in [
            "MAIL FROM:a@b.example",
            "MAIL FROM: a@b.example",
            "MAIL FROM: <a@b.example>",
            "MAIL FROM:  a@b.example  ",
            "mail from:@r.example:a@b.example",
        ] {
            assert_eq!(parse(line), Ok(mail("a@b.example")), "{line:?}");
        }
        for line in [
            "RCPT TO:c@d.example",
            "RCPT TO: c@d.example",
            "RCPT TO: <c@d.example>",
            "rcpt to:  c@d.example ",
        ] {
            assert_eq!(parse(line), Ok(rcpt("c@d.example")), "{line:?}");
        }
        assert_eq!(
            parse("MAIL FROM: a@b.example SIZE=10"),
            Ok(Command::Mail {
                from: "a@b.example".into(),
                params: vec![Param {
                    keyword: "SIZE".into(),
                    value: Some("10".into())
                }],
            })
        );
        assert_eq!(
            parse("RCPT TO:c@d.example NOTIFY=NEVER"),
            Ok(Command::Rcpt {
                to: "c@d.example".into(),
                params: vec![Param {
                    keyword: "NOTIFY".into(),
                    value: Some("NEVER".into())
                }],
            })
        );
        // A space inside a quoted local part does not end the address.
        assert_eq!(
            parse(r#"RCPT TO:"john smith"@d.example NOTIFY=NEVER"#).map(|c| match c {
                Command::Rcpt { to, .. } => to,
                other => panic!("{other:?}"),
            }),
            Ok(r#""john smith"@d.example"#.to_owned())
        );
        let long = format!("RCPT TO:{}@d", "a".repeat(MAX_ADDRESS));
        assert_eq!(
            parse(&long),
            Err(CommandError::AddressTooLong { command: "RCPT" })
        );
    }

    #[test]
    fn malformed_addresses_without_brackets() {
        let bad = |command, detail| CommandError::BadAddress { command, detail };
        let cases = [
            ("MAIL FROM:a@b>", bad("MAIL", "bad domain")),
            ("RCPT TO:a<b@c>", bad("RCPT", "bad character in local part")),
            (
                r#"RCPT TO:"a b@c"#,
                bad("RCPT", "unterminated quoted string"),
            ),
        ];
        for (line, err) in cases {
            assert_eq!(parse(line), Err(err), "{line:?}");
        }
    }

    /// A peer's address without a domain is refused, never qualified with
    /// the receiver's own domain (where it would become a local address):
    /// 501 5.1.7 for senders, 501 5.1.3 for recipients, in every form.
    #[test]
    fn unqualified_addresses_are_refused() {
        for line in [
            "MAIL FROM:<alice>",
            "MAIL FROM:alice",
            "MAIL FROM: alice SIZE=10",
            "MAIL FROM:<postmaster>",
            "MAIL FROM:@r.example:alice",
        ] {
            let err = parse(line).unwrap_err();
            assert_eq!(
                err,
                CommandError::BadAddress {
                    command: "MAIL",
                    detail: UNQUALIFIED
                },
                "{line:?}"
            );
            assert_eq!(
                err.reply().one_line(),
                "501 5.1.7 Bad address syntax: unqualified address (user@domain required)"
            );
        }
        for line in [
            "RCPT TO:<bob>",
            "RCPT TO:bob",
            "RCPT TO: bob",
            r#"RCPT TO:"b b""#,
        ] {
            let err = parse(line).unwrap_err();
            assert_eq!(
                err,
                CommandError::BadAddress {
                    command: "RCPT",
                    detail: UNQUALIFIED
                },
                "{line:?}"
            );
            assert_eq!(
                err.reply().one_line(),
                "501 5.1.3 Bad address syntax: unqualified address (user@domain required)"
            );
        }
        // RFC 5321's one exception passes the codec in both forms; the
        // session refuses it (a peer's postmaster is not the hub's).
        assert_eq!(parse("RCPT TO:Postmaster"), Ok(rcpt("Postmaster")));
    }

    #[test]
    fn address_length_limit() {
        let local = "a".repeat(MAX_ADDRESS - 2);
        assert_eq!(
            parse(&format!("RCPT TO:<{local}@d>")),
            Ok(rcpt(&format!("{local}@d")))
        );
        assert_eq!(
            parse(&format!("RCPT TO:<{local}@dd>")),
            Err(CommandError::AddressTooLong { command: "RCPT" })
        );
    }

    #[test]
    fn malformed_commands() {
        let cases: &[(&str, CommandError)] = &[
            ("", CommandError::EmptyLine),
            ("MAIL\0FROM:<a@b>", CommandError::ControlCharacter(0)),
            (
                "MAIL FROM:<a@b>\rRCPT TO:<c@d>",
                CommandError::ControlCharacter(b'\r'),
            ),
            ("VRFY root", CommandError::UnknownCommand("VRFY".into())),
            (
                "EHLO",
                CommandError::Syntax {
                    command: "EHLO",
                    detail: "domain name required",
                },
            ),
            (
                "DATA now",
                CommandError::Syntax {
                    command: "DATA",
                    detail: "takes no argument",
                },
            ),
            (
                "MAIL TO:<a@b>",
                CommandError::Syntax {
                    command: "MAIL",
                    detail: "FROM:<address> expected",
                },
            ),
            (
                "MAIL FROM:",
                CommandError::Syntax {
                    command: "MAIL",
                    detail: "FROM:<address> expected",
                },
            ),
            (
                "RCPT TO:  ",
                CommandError::Syntax {
                    command: "RCPT",
                    detail: "TO:<address> expected",
                },
            ),
            (
                "MAIL FROM:<a@b",
                CommandError::BadAddress {
                    command: "MAIL",
                    detail: "missing >",
                },
            ),
            (
                "MAIL FROM:<a@b>x",
                CommandError::BadAddress {
                    command: "MAIL",
                    detail: "junk after >",
                },
            ),
            (
                "MAIL FROM:<a b@c>",
                CommandError::BadAddress {
                    command: "MAIL",
                    detail: "bad character in local part",
                },
            ),
            (
                "RCPT TO:<a@b c>",
                CommandError::BadAddress {
                    command: "RCPT",
                    detail: "bad domain",
                },
            ),
            (
                "MAIL FROM:<a@b> SIZE=",
                CommandError::ParamSyntax {
                    command: "MAIL",
                    param: "SIZE=".into(),
                },
            ),
            (
                "MAIL FROM:<a@b> =1",
                CommandError::ParamSyntax {
                    command: "MAIL",
                    param: "=1".into(),
                },
            ),
            (
                "MAIL FROM:<a@b> S_Z=1",
                CommandError::ParamSyntax {
                    command: "MAIL",
                    param: "S_Z=1".into(),
                },
            ),
        ];
        for (line, err) in cases {
            assert_eq!(parse(line).as_ref(), Err(err), "{line:?}");
        }
    }

    #[test]
    fn noop_takes_an_argument_and_trailing_spaces_are_fine() {
        assert_eq!(parse("NOOP whatever"), Ok(Command::Noop));
        assert_eq!(parse("QUIT "), Ok(Command::Quit));
        assert_eq!(parse("MAIL FROM:<a@b>  "), Ok(mail("a@b")));
    }

    #[test]
    fn error_replies_carry_enhanced_codes() {
        let reply = |e: CommandError| e.reply().one_line();
        assert_eq!(
            reply(CommandError::LineTooLong),
            "500 5.5.2 Error: line too long"
        );
        assert_eq!(
            reply(CommandError::UnknownCommand("X".into())),
            "500 5.5.1 Error: command not recognized"
        );
        assert_eq!(
            reply(CommandError::AddressTooLong { command: "MAIL" }),
            "501 5.1.7 Path too long"
        );
        assert_eq!(
            reply(CommandError::BadAddress {
                command: "RCPT",
                detail: "bad domain"
            }),
            "501 5.1.3 Bad address syntax: bad domain"
        );
    }

    /// Feeds `input` to a decoder that already saw DATA, returning events.
    fn data_events(input: &[u8]) -> Vec<Event<'_>> {
        let mut d = Decoder {
            state: State::Data { line_start: true },
        };
        let mut pos = 0;
        let mut events = Vec::new();
        while let Some((n, ev)) = d.decode(&input[pos..]) {
            assert!(n > 0);
            pos += n;
            events.push(ev);
        }
        events
    }

    #[test]
    fn dot_cases_at_line_start_wait_for_enough_bytes() {
        let mut d = Decoder {
            state: State::Data { line_start: true },
        };
        assert_eq!(d.decode(b"."), None);
        assert_eq!(d.decode(b".\r"), None);
        assert_eq!(
            d.decode(b".\rx"),
            Some((
                3,
                Event::BodyPiece {
                    bytes: b"\rx",
                    end_of_line: false
                }
            ))
        );
        // Mid-line, a dot is data.
        assert_eq!(
            d.decode(b".\n"),
            Some((
                2,
                Event::BodyPiece {
                    bytes: b".",
                    end_of_line: true
                }
            ))
        );
        assert_eq!(d.decode(b".\n"), Some((2, Event::DataEnd)));
        assert!(!d.in_data());
    }

    #[test]
    fn held_back_cr_is_not_emitted_early() {
        assert_eq!(
            data_events(b"abc\r"),
            [Event::BodyPiece {
                bytes: b"abc",
                end_of_line: false
            }]
        );
        assert_eq!(
            data_events(b"abc\rd"),
            [Event::BodyPiece {
                bytes: b"abc\rd",
                end_of_line: false
            }]
        );
    }

    #[test]
    fn long_line_comes_in_bounded_pieces() {
        let mut input = vec![b'x'; MAX_BODY_PIECE * 2 + 1];
        input.extend_from_slice(b"\r\n.\r\n");
        let events = data_events(&input);
        assert_eq!(events.len(), 4);
        assert!(
            matches!(events[0], Event::BodyPiece { bytes, end_of_line: false } if bytes.len() == MAX_BODY_PIECE)
        );
        assert!(
            matches!(events[1], Event::BodyPiece { bytes, end_of_line: false } if bytes.len() == MAX_BODY_PIECE)
        );
        assert_eq!(
            events[2],
            Event::BodyPiece {
                bytes: b"x",
                end_of_line: true
            }
        );
        assert_eq!(events[3], Event::DataEnd);
    }

    #[test]
    fn line_of_exactly_max_piece_is_one_piece() {
        let mut input = vec![b'x'; MAX_BODY_PIECE];
        input.extend_from_slice(b"\r\n");
        let events = data_events(&input);
        assert!(
            matches!(events[..], [Event::BodyPiece { bytes, end_of_line: true }] if bytes.len() == MAX_BODY_PIECE)
        );
    }

    #[test]
    fn over_long_command_line_is_skipped_without_holding_it() {
        let mut d = Decoder::new();
        let chunk = vec![b'A'; MAX_COMMAND_LINE];
        assert_eq!(d.decode(&chunk), Some((MAX_COMMAND_LINE, Event::Skipped)));
        assert_eq!(d.decode(&chunk), Some((MAX_COMMAND_LINE, Event::Skipped)));
        assert_eq!(d.decode(b""), None);
        assert_eq!(
            d.decode(b"AA\r\nQUIT\r\n"),
            Some((4, Event::Invalid(CommandError::LineTooLong)))
        );
        assert_eq!(
            d.decode(b"QUIT\r\n"),
            Some((6, Event::Command(Command::Quit)))
        );
    }

    #[test]
    fn command_line_limit_counts_the_terminator() {
        let mut d = Decoder::new();
        let mut line = b"NOOP ".to_vec();
        line.resize(MAX_COMMAND_LINE - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(
            d.decode(&line),
            Some((MAX_COMMAND_LINE, Event::Command(Command::Noop)))
        );
        line.insert(5, b'x');
        assert_eq!(
            d.decode(&line),
            Some((
                MAX_COMMAND_LINE + 1,
                Event::Invalid(CommandError::LineTooLong)
            ))
        );
    }
}
