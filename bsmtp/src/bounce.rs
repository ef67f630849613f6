//! Delivery status notifications (RFC 3464 inside an RFC 6522
//! `multipart/report`), written as Postfix's bounce(8) writes them.
//!
//! Two programs send mail back to a sender: `bsmtp-ssh flush` when the
//! peer refuses a spooled message for good or the message outlives its
//! lifetime in the spool, and offline `rsmtp` when it refuses a
//! transaction. Both hand the notice to the local Postfix with the null
//! sender. Postfix's administrators and their users know what its bounces
//! look like, and tools parse them, so the layout, the wording and the
//! choices are Postfix's (`src/bounce/bounce_notify_util.c`): a text part
//! naming the reporting host with one `<address>: reason` line per
//! recipient, a `message/delivery-status` part, then the message or its
//! headers. The same code writes "delayed" warnings and success reports.
//!
//! What this module promises:
//!
//! * It is pure: the caller supplies every date, ID and the MIME boundary,
//!   and the same [`Notice`] always gives the same bytes.
//! * Nothing from the peer or the message reaches a header or a field as
//!   more than one line: control characters become spaces, long values
//!   are cut at [`MAX_FIELD_TEXT`] and folded with indented continuation
//!   lines, so a hostile reply cannot add a header, a field or a MIME
//!   boundary.
//! * The MIME boundary never occurs in the returned message: when the
//!   caller's does, `.1`, `.2`, ... is appended until it does not.
//! * Lines end in LF (the original's CRLFs included), ready for postdrop
//!   or sendmail, and [`Composed`] says whether the result must travel as
//!   8BITMIME or SMTPUTF8.
//!
//! Like Postfix, a failure notice returns what `RET=` asked for (the whole
//! message when it was not given), but only the headers of a message larger
//! than the size limit (`bounce_size_limit`), so the MIME structure is never
//! cut; delay warnings and success reports return the headers only.
//!
//! Non-ASCII addresses use RFC 6533: `message/global-delivery-status` and
//! `message/global` (or `message/global-headers`) when the original was
//! sent with SMTPUTF8 or an address in the report is not ASCII (the notice
//! then needs SMTPUTF8 itself), the `utf-8` address type for such
//! addresses, and a `utf-8` ORCPT in its 7-bit `\x{HEX}` form when the
//! report is plain `message/delivery-status`. Without SMTPUTF8, non-ASCII
//! characters in other text (diagnostics, host names) become `?`.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::dsn::{uxtext_encode, Ret};
use crate::reply::{EnhancedCode, Reply};
use crate::text::one_line;

/// Largest original (bytes, LF line ends) a failure notice returns whole,
/// as Postfix's `bounce_size_limit` default; a larger one is returned as
/// headers only.
pub const DEFAULT_SIZE_LIMIT: usize = 50_000;

/// Longest text (bytes) taken from outside for one field or one line of
/// the notice; longer text is cut and ends in `...`. Keeps every line well
/// below RFC 5322's 998 even when a value has no space to fold at.
pub const MAX_FIELD_TEXT: usize = 900;

/// Our per-message field carrying the queue ID, as Postfix's
/// `X-Postfix-Queue-ID` (`X-` + mail name + `-Queue-ID`).
pub const QUEUE_ID_FIELD: &str = "X-Bsmtp-Ssh-Queue-ID";

/// Our per-message field carrying the original envelope sender, as
/// Postfix's `X-Postfix-Sender`.
pub const SENDER_FIELD: &str = "X-Bsmtp-Ssh-Sender";

/// The diagnostic type of a reason we found ourselves rather than a reply
/// we were given, as Postfix's `X-Postfix`.
pub const DIAGNOSTIC_TYPE: &str = "X-Bsmtp-Ssh";

/// Width Postfix wraps diagnostics at, and the indent of the lines after
/// the first (`bounce_print_wrap`).
const WRAP_WIDTH: usize = 79;
const WRAP_INDENT: usize = 4;

/// Longest MIME boundary we write (RFC 2046 allows 70), leaving room for
/// the `.N` that makes it unique.
const MAX_BOUNDARY_BASE: usize = 58;

/// What happened to one recipient (RFC 3464 section 2.3.3 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not delivered and not to be tried again.
    Failed,
    /// Not delivered yet; still being tried.
    Delayed,
    /// Delivered to the recipient's mailbox.
    Delivered,
    /// Handed to a next hop that sends no further notices.
    Relayed,
    /// Delivered and expanded to more recipients (an alias or list).
    Expanded,
}

impl Action {
    /// The field value: `failed`, `delayed`, `delivered`, `relayed`,
    /// `expanded`.
    pub fn keyword(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }
}

/// What the notice says about one recipient: one line of the text part and
/// one block of the delivery-status part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The recipient address, as given to `RCPT TO` (external form).
    pub final_recipient: String,
    /// `ORCPT=`: the address type and the decoded address
    /// ([`crate::dsn::RcptDsn::orcpt`]); `Original-Recipient` appears only
    /// when it was given (RFC 3461 section 6.3).
    pub original_recipient: Option<(String, String)>,
    /// What happened.
    pub action: Action,
    /// The RFC 3463 status, e.g. 5.1.1.
    pub status: EnhancedCode,
    /// The host that gave the diagnostic, written `dns; host`.
    pub remote_mta: Option<String>,
    /// The diagnostic type and text, e.g. `("smtp", "550 5.1.1 no such
    /// user")`. Without it `Diagnostic-Code` is `X-Bsmtp-Ssh; ` and the
    /// reason, as Postfix writes `X-Postfix; reason`.
    pub diagnostic: Option<(String, String)>,
    /// The reason for people, shown in the text part after the address,
    /// e.g. `host hub said: 550 5.1.1 no such user (in reply to RCPT TO
    /// command)`.
    pub reason: String,
}

impl RecipientReport {
    /// The report for a reply to one recipient, in Postfix's words: the
    /// status from the reply (its class when it has no enhanced code), the
    /// action from its class (5xx failed, 4xx delayed, 2xx relayed), an
    /// `smtp` diagnostic, and the reason `host {remote_mta} said: {reply}
    /// (in reply to {command} command)`. `command` is what Postfix names
    /// there: `MAIL FROM`, `RCPT TO`, `end of DATA`.
    pub fn from_reply(
        final_recipient: &str,
        original_recipient: Option<(String, String)>,
        reply: &Reply,
        remote_mta: Option<&str>,
        command: &str,
    ) -> Self {
        let action = match reply.code {
            200..=399 => Action::Relayed,
            400..=499 => Action::Delayed,
            _ => Action::Failed,
        };
        let said = one_line(&reply.one_line());
        let reason = match remote_mta {
            Some(host) => format!("host {host} said: {said} (in reply to {command} command)"),
            None => format!("{said} (in reply to {command} command)"),
        };
        Self {
            final_recipient: final_recipient.to_owned(),
            original_recipient,
            action,
            status: reply.status(),
            remote_mta: remote_mta.map(str::to_owned),
            diagnostic: Some(("smtp".to_owned(), said)),
            reason,
        }
    }
}

/// Everything a notice says; the caller supplies every date and ID, so
/// [`compose`] stays pure.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    /// Our host name (`$myhostname`): `Reporting-MTA` and the text part.
    pub reporting_mta: &'a str,
    /// The address the notice comes from, e.g. `MAILER-DAEMON@leaf.example`,
    /// shown as `From: Mail Delivery System <...>`.
    pub postmaster: &'a str,
    /// Who gets the notice: the original envelope sender (never the null
    /// sender: a notice is not sent about a notice).
    pub recipient_of_notice: &'a str,
    /// The notice's `Date:` (RFC 5322 date-time).
    pub date: &'a str,
    /// The notice's `Message-Id:`, angle brackets included.
    pub message_id: &'a str,
    /// The MIME boundary; made unique against the returned message (see
    /// [`boundary`] for Postfix's form).
    pub boundary: &'a str,
    /// When the original arrived (RFC 5322 date-time): `Arrival-Date`.
    pub arrival_date: Option<&'a str>,
    /// Until when a delayed message is retried (RFC 5322 date-time):
    /// `Will-Retry-Until` on delayed recipients and a line of the warning.
    pub will_retry_until: Option<&'a str>,
    /// `ENVID=` of the original, decoded: `Original-Envelope-Id`.
    pub envid: Option<&'a str>,
    /// Our queue ID of the original: [`QUEUE_ID_FIELD`].
    pub queue_id: Option<&'a str>,
    /// One report per recipient the notice is about (at least one).
    pub recipients: &'a [RecipientReport],
    /// `RET=` of the original; `None` returns the whole message, as
    /// Postfix does. Only failure notices heed it.
    pub ret: Option<Ret>,
    /// The original was sent with SMTPUTF8.
    pub smtputf8: bool,
    /// The original message, LF or CRLF line ends; empty when it is not
    /// available (the notice then has no third part).
    pub original: &'a [u8],
    /// Largest original returned whole ([`DEFAULT_SIZE_LIMIT`]); 0 for no
    /// limit.
    pub size_limit: usize,
}

/// A composed notice and how it must be submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The message, LF line ends.
    pub message: Vec<u8>,
    /// It has 8-bit bytes: submit it with `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// It uses RFC 6533's global types or UTF-8 addresses: submit it with
    /// SMTPUTF8.
    pub smtputf8: bool,
}

/// True when `bytes` hold a byte above 127, so a message must travel as
/// 8BITMIME (or a part be marked `Content-Transfer-Encoding: 8bit`).
pub fn is_eight_bit(bytes: &[u8]) -> bool {
    !bytes.is_ascii()
}

/// A MIME boundary in Postfix's form, `queue_id.unix_time/host`: unique
/// enough as long as queue IDs are.
pub fn boundary(queue_id: &str, unix_time: u64, host: &str) -> String {
    format!("{queue_id}.{unix_time}/{host}")
}

/// The kind of notice, from the worst action among its recipients; it
/// picks the subject, the text and what is returned of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Failure,
    Delay,
    Success,
}

impl Kind {
    fn of(recipients: &[RecipientReport]) -> Self {
        let has = |action| recipients.iter().any(|r| r.action == action);
        if has(Action::Failed) {
            Kind::Failure
        } else if has(Action::Delayed) {
            Kind::Delay
        } else {
            Kind::Success
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Kind::Failure => "Undelivered Mail Returned to Sender",
            Kind::Delay => "Delayed Mail (still being retried)",
            Kind::Success => "Successful Mail Delivery Report",
        }
    }
}

/// Composes the notice; see the module documentation for the layout.
///
/// The subject and text follow the worst action among the recipients:
/// any `failed` makes it a failure notice ("Undelivered Mail Returned to
/// Sender"), else any `delayed` a warning ("Delayed Mail (still being
/// retried)"), else a success report ("Successful Mail Delivery Report").
pub fn compose(notice: &Notice) -> Composed {
    let kind = Kind::of(notice.recipients);
    let global = notice.smtputf8
        || !notice.recipient_of_notice.is_ascii()
        || notice
            .recipients
            .iter()
            .any(|r| !r.final_recipient.is_ascii());
    let returned = returned_message(notice, kind, global);
    let boundary = unique_boundary(
        notice.boundary,
        returned
            .as_ref()
            .map_or(&[][..], |(content, _)| &content[..]),
    );
    let text = text_part(notice, kind, returned.is_some(), global);
    let status = status_part(notice, global);
    let eight_bit = is_eight_bit(text.as_bytes())
        || is_eight_bit(status.as_bytes())
        || returned
            .as_ref()
            .is_some_and(|(content, _)| is_eight_bit(content));

    let mut head = String::with_capacity(4096);
    let clean = |text: &str| clean(text, global);
    let _ = writeln!(
        head,
        "From: Mail Delivery System <{}>",
        clean(notice.postmaster)
    );
    let _ = writeln!(head, "Subject: {}", kind.subject());
    let _ = writeln!(head, "To: {}", clean(notice.recipient_of_notice));
    let _ = writeln!(head, "Date: {}", clean(notice.date));
    let _ = writeln!(head, "Message-Id: {}", clean(notice.message_id));
    head.push_str("Auto-Submitted: auto-replied\n");
    head.push_str("MIME-Version: 1.0\n");
    head.push_str("Content-Type: multipart/report; report-type=delivery-status;\n");
    let _ = writeln!(head, "\tboundary=\"{boundary}\"");
    let _ = writeln!(
        head,
        "Content-Transfer-Encoding: {}",
        if eight_bit { "8bit" } else { "7bit" }
    );
    head.push_str("\nThis is a MIME-encapsulated message.\n");

    let _ = write!(head, "\n--{boundary}\n");
    head.push_str("Content-Description: Notification\n");
    if is_eight_bit(text.as_bytes()) {
        head.push_str("Content-Type: text/plain; charset=utf-8\n");
        head.push_str("Content-Transfer-Encoding: 8bit\n");
    } else {
        head.push_str("Content-Type: text/plain; charset=us-ascii\n");
    }
    head.push('\n');
    head.push_str(&text);

    let _ = write!(head, "\n--{boundary}\n");
    head.push_str("Content-Description: Delivery report\n");
    if global {
        head.push_str("Content-Type: message/global-delivery-status\n");
    } else {
        head.push_str("Content-Type: message/delivery-status\n");
    }
    if is_eight_bit(status.as_bytes()) {
        head.push_str("Content-Transfer-Encoding: 8bit\n");
    }
    head.push('\n');
    head.push_str(&status);

    let mut out = head.into_bytes();
    if let Some((content, headers_only)) = &returned {
        let mut part = format!("\n--{boundary}\n");
        let undelivered = if kind == Kind::Success {
            ""
        } else {
            "Undelivered "
        };
        let what = if *headers_only {
            "Message Headers"
        } else {
            "Message"
        };
        let _ = writeln!(part, "Content-Description: {undelivered}{what}");
        let content_type = match (global, *headers_only) {
            (true, true) => "message/global-headers",
            (true, false) => "message/global",
            (false, true) => "text/rfc822-headers",
            (false, false) => "message/rfc822",
        };
        let _ = writeln!(part, "Content-Type: {content_type}");
        if is_eight_bit(content) {
            part.push_str("Content-Transfer-Encoding: 8bit\n");
        }
        part.push('\n');
        out.extend_from_slice(part.as_bytes());
        out.extend_from_slice(content);
    }
    out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());

    Composed {
        message: out,
        eight_bit,
        smtputf8: global,
    }
}

/// What goes back of the original, LF line ends and a `Return-Path:`
/// first, and whether it is the headers only; `None` without an original.
fn returned_message(notice: &Notice, kind: Kind, global: bool) -> Option<(Vec<u8>, bool)> {
    let original = with_lf(notice.original);
    if original.is_empty() {
        return None;
    }
    let headers_only = kind != Kind::Failure
        || notice.ret == Some(Ret::Hdrs)
        || (notice.size_limit > 0 && original.len() > notice.size_limit);
    let content = if headers_only {
        header_section(&original)
    } else {
        &original[..]
    };
    let mut part = Vec::with_capacity(content.len() + 64);
    if !has_return_path(content) {
        // As Postfix does: header checks want it, and cleanup removed any.
        let sender = clean(notice.recipient_of_notice, global);
        part.extend_from_slice(format!("Return-Path: <{sender}>\n").as_bytes());
    }
    part.extend_from_slice(content);
    Some((part, headers_only))
}

/// The text part: Postfix's explanation, then `<address>: reason` for each
/// recipient, wrapped.
fn text_part(notice: &Notice, kind: Kind, attached: bool, global: bool) -> String {
    let host = clean(notice.reporting_mta, global);
    let mut text = format!("This is the mail system at host {host}.\n\n");
    match kind {
        Kind::Failure => {
            text.push_str(
                "I'm sorry to have to inform you that your message could not\n\
                 be delivered to one or more recipients.",
            );
            text.push_str(if attached {
                " It's attached below.\n\n"
            } else {
                "\n\n"
            });
        }
        Kind::Delay => {
            text.push_str(
                "####################################################################\n\
                 # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n\
                 ####################################################################\n\n\
                 Your message could not be delivered yet to one or more recipients.\n",
            );
            if let Some(until) = notice.will_retry_until {
                let _ = writeln!(text, "It will be retried until {}.", clean(until, global));
            }
            text.push('\n');
        }
        Kind::Success => text.push_str(
            "Your message was successfully delivered to the destination(s)\n\
             listed below. If the message was delivered to mailbox you will\n\
             receive no further notifications. Otherwise you may still receive\n\
             notifications of mail delivery errors from other systems.\n\n",
        ),
    }
    if kind != Kind::Success {
        text.push_str(
            "For further assistance, please send mail to postmaster.\n\n\
             If you do so, please include this problem report. You can\n\
             delete your own text from the attached returned message.\n\n",
        );
    }
    text.push_str("                   The mail system\n");
    for report in notice.recipients {
        let reason = if !report.reason.trim().is_empty() {
            clean(&report.reason, global)
        } else if let Some((_, diagnostic)) = &report.diagnostic {
            clean(diagnostic, global)
        } else {
            format!("delivery status {}", report.status)
        };
        let line = format!("<{}>: {reason}", clean(&report.final_recipient, global));
        text.push('\n');
        push_wrapped(&mut text, &line);
    }
    text
}

/// The delivery-status part: per-message fields, then one block per
/// recipient, blocks separated by blank lines.
fn status_part(notice: &Notice, global: bool) -> String {
    let clean = |text: &str| clean(text, global);
    let mut part = format!("Reporting-MTA: dns; {}\n", clean(notice.reporting_mta));
    if let Some(envid) = notice.envid.map(clean).filter(|e| !e.is_empty()) {
        let _ = writeln!(part, "Original-Envelope-Id: {envid}");
    }
    if let Some(queue_id) = notice.queue_id.map(clean).filter(|q| !q.is_empty()) {
        let _ = writeln!(part, "{QUEUE_ID_FIELD}: {queue_id}");
    }
    if !notice.recipient_of_notice.is_empty() {
        let sender = typed_address(notice.recipient_of_notice, global);
        let _ = writeln!(part, "{SENDER_FIELD}: {sender}");
    }
    if let Some(arrival) = notice.arrival_date {
        let _ = writeln!(part, "Arrival-Date: {}", clean(arrival));
    }
    for report in notice.recipients {
        let recipient = typed_address(&report.final_recipient, global);
        let _ = write!(part, "\nFinal-Recipient: {recipient}\n");
        if let Some((kind, address)) = &report.original_recipient {
            let kind = atom(kind, "unknown");
            let address = if kind.eq_ignore_ascii_case("utf-8") && !global {
                // RFC 6533's 7-bit utf-8-addr-xtext; it escapes controls too.
                clean(&uxtext_encode(address))
            } else {
                clean(address)
            };
            let _ = writeln!(part, "Original-Recipient: {kind};{address}");
        }
        let _ = writeln!(part, "Action: {}", report.action.keyword());
        let _ = writeln!(part, "Status: {}", report.status);
        if let Some(mta) = report.remote_mta.as_deref().map(clean) {
            if !mta.is_empty() {
                push_wrapped(&mut part, &format!("Remote-MTA: dns; {mta}"));
            }
        }
        let diagnostic = match &report.diagnostic {
            Some((kind, text)) => Some((atom(kind, DIAGNOSTIC_TYPE), clean(text))),
            None => Some((DIAGNOSTIC_TYPE.to_owned(), clean(&report.reason))),
        };
        if let Some((kind, text)) = diagnostic.filter(|(_, text)| !text.is_empty()) {
            push_wrapped(&mut part, &format!("Diagnostic-Code: {kind}; {text}"));
        }
        if report.action == Action::Delayed {
            if let Some(until) = notice.will_retry_until {
                let _ = writeln!(part, "Will-Retry-Until: {}", clean(until));
            }
        }
    }
    part
}

/// `rfc822; address`, or `utf-8; address` for a non-ASCII one (Postfix
/// does the same when the message is SMTPUTF8).
fn typed_address(address: &str, global: bool) -> String {
    let kind = if address.is_ascii() {
        "rfc822"
    } else {
        "utf-8"
    };
    format!("{kind}; {}", clean(address, global))
}

/// Text from outside as one line of at most [`MAX_FIELD_TEXT`] bytes:
/// control characters become spaces, and non-ASCII characters `?` unless
/// the notice may carry UTF-8.
fn clean(text: &str, utf8: bool) -> String {
    let line: String = one_line(text)
        .chars()
        .map(|c| if utf8 || c.is_ascii() { c } else { '?' })
        .collect();
    let mut line = line.trim().to_owned();
    if line.len() > MAX_FIELD_TEXT {
        let mut cut = MAX_FIELD_TEXT;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

/// A type name (address or diagnostic type) reduced to an RFC 5322 atom of
/// letters, digits and `-`; `fallback` when nothing is left.
fn atom(kind: &str, fallback: &str) -> String {
    let kind: String = kind
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if kind.is_empty() {
        fallback.to_owned()
    } else {
        kind
    }
}

/// Appends `line` wrapped as Postfix's `line_wrap(str, 79, 4)` does: break
/// at the last space that keeps a line within 79 columns (a longer word
/// stays whole), continuation lines indented by four spaces, so a wrapped
/// field is a folded field.
fn push_wrapped(out: &mut String, line: &str) {
    let mut rest = line.trim();
    let mut room = WRAP_WIDTH;
    loop {
        if rest.len() <= room {
            out.push_str(rest);
            out.push('\n');
            return;
        }
        // `rest` starts with a non-space, so a break at 0 never happens.
        let at = rest.as_bytes()[..=room]
            .iter()
            .rposition(|&b| b == b' ')
            .filter(|&at| at > 0)
            .or_else(|| rest.find(' '));
        let Some(at) = at else {
            out.push_str(rest);
            out.push('\n');
            return;
        };
        out.push_str(rest[..at].trim_end());
        out.push('\n');
        rest = rest[at..].trim_start();
        out.push_str(&" ".repeat(WRAP_INDENT));
        room = WRAP_WIDTH - WRAP_INDENT;
    }
}

/// The message with CRLF line ends made LF, ending in LF when not empty.
fn with_lf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 1);
    let mut rest = message;
    while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\n');
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    if out.last().is_some_and(|&b| b != b'\n') {
        out.push(b'\n');
    }
    out
}

/// The header section of an LF message: its first lines as long as each is
/// a header or a continuation (Postfix's `is_header()` or a leading space
/// or tab), without the empty line after them.
fn header_section(message: &[u8]) -> &[u8] {
    let mut end = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let continuation = matches!(text.first(), Some(b' ' | b'\t'));
        if !continuation && header_name(text).is_none() {
            break;
        }
        end += line.len();
    }
    &message[..end]
}

/// The name of a header line as Postfix's `is_header()` sees one: printable
/// ASCII but space and colon, then optional blanks, then a colon.
fn header_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    let trimmed = name
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(&name[..0], |last| &name[..=last]);
    let valid = !trimmed.is_empty() && trimmed.iter().all(|&b| b.is_ascii_graphic());
    valid.then_some(trimmed)
}

/// True when the header section already has a `Return-Path:`.
fn has_return_path(message: &[u8]) -> bool {
    header_section(message)
        .split(|&b| b == b'\n')
        .filter_map(header_name)
        .any(|name| name.eq_ignore_ascii_case(b"Return-Path"))
}

/// The caller's boundary reduced to RFC 2046 characters, then made unique:
/// `.1`, `.2`, ... appended while `content` holds it anywhere (a prefix
/// match is a match to some MIME parsers, so `B.12` in the content rules
/// out `B.1` too).
fn unique_boundary(base: &str, content: &[u8]) -> String {
    let mut base: String = base
        .chars()
        .filter(|&c| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c))
        .take(MAX_BOUNDARY_BASE)
        .collect();
    base.truncate(base.trim_end().len());
    if base.is_empty() {
        base.push_str("bsmtp-ssh-report");
    }
    if find_all(content, base.as_bytes()).next().is_none() {
        return base;
    }
    // Every digit string that follows `base.` in the content, and its
    // prefixes: the suffixes we must not use.
    let dotted = format!("{base}.");
    let mut taken: HashSet<&[u8]> = HashSet::new();
    for at in find_all(content, dotted.as_bytes()) {
        let after = &content[at + dotted.len()..];
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        for len in 1..=digits.min(20) {
            taken.insert(&after[..len]);
        }
    }
    let mut n: u64 = 1;
    loop {
        let suffix = n.to_string();
        if !taken.contains(suffix.as_bytes()) {
            return format!("{dotted}{suffix}");
        }
        n += 1;
    }
}

/// Where `needle` starts in `haystack`, every time.
fn find_all<'h>(haystack: &'h [u8], needle: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
    haystack
        .windows(needle.len().max(1))
        .enumerate()
        .filter(move |(_, window)| *window == needle)
        .map(|(at, _)| at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDARY: &str = "4XqF3RdBz5Yqn.1726092354/leaf.example";
    const ORIGINAL: &[u8] = b"Received: by leaf.example (Postfix)\r\n\
        \tid 4XqF3RdBz5Yqn; Wed, 11 Sep 2024 18:05:54 -0400 (EDT)\r\n\
        From: alice@leaf.example\r\n\
        To: bob@hub.example\r\n\
        Subject: hello\r\n\
        \r\n\
        body line 1\r\n\
        body line 2\r\n";

    fn failed(rcpt: &str, diagnostic: &str) -> RecipientReport {
        RecipientReport {
            final_recipient: rcpt.into(),
            original_recipient: None,
            action: Action::Failed,
            status: EnhancedCode::new(5, 1, 1),
            remote_mta: Some("hub.example".into()),
            diagnostic: Some(("smtp".into(), diagnostic.into())),
            reason: format!("host hub.example said: {diagnostic} (in reply to RCPT TO command)"),
        }
    }

    fn notice<'a>(recipients: &'a [RecipientReport], original: &'a [u8]) -> Notice<'a> {
        Notice {
            reporting_mta: "leaf.example",
            postmaster: "MAILER-DAEMON@leaf.example",
            recipient_of_notice: "alice@leaf.example",
            date: "Thu, 12 Sep 2024 10:00:00 +0000 (UTC)",
            message_id: "<20240912100000.4XqF3RdBz5Yqn@leaf.example>",
            boundary: BOUNDARY,
            arrival_date: Some("Wed, 11 Sep 2024 22:05:54 +0000 (UTC)"),
            will_retry_until: None,
            envid: None,
            queue_id: Some("4XqF3RdBz5Yqn"),
            recipients,
            ret: None,
            smtputf8: false,
            original,
            size_limit: DEFAULT_SIZE_LIMIT,
        }
    }

    fn text(composed: &Composed) -> String {
        String::from_utf8(composed.message.clone()).expect("UTF-8 in these tests")
    }

    /// The top-level header section, one entry per line.
    fn top_headers(message: &str) -> Vec<&str> {
        message.split("\n\n").next().unwrap().lines().collect()
    }

    /// The lines that are MIME boundary delimiters of `boundary`.
    fn delimiters<'m>(message: &'m str, boundary: &str) -> Vec<&'m str> {
        message
            .lines()
            .filter(|l| l.starts_with(&format!("--{boundary}")))
            .collect()
    }

    #[test]
    fn failure_notice_in_postfix_layout() {
        let rcpts = [failed(
            "bob@hub.example",
            "550 5.1.1 <bob@hub.example>: no such user",
        )];
        let composed = compose(&notice(&rcpts, ORIGINAL));
        assert!(!composed.eight_bit && !composed.smtputf8);
        let expected = "\
From: Mail Delivery System <MAILER-DAEMON@leaf.example>
Subject: Undelivered Mail Returned to Sender
To: alice@leaf.example
Date: Thu, 12 Sep 2024 10:00:00 +0000 (UTC)
Message-Id: <20240912100000.4XqF3RdBz5Yqn@leaf.example>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary=\"4XqF3RdBz5Yqn.1726092354/leaf.example\"
Content-Transfer-Encoding: 7bit

This is a MIME-encapsulated message.

--4XqF3RdBz5Yqn.1726092354/leaf.example
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host leaf.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<bob@hub.example>: host hub.example said: 550 5.1.1 <bob@hub.example>: no such
    user (in reply to RCPT TO command)

--4XqF3RdBz5Yqn.1726092354/leaf.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; leaf.example
X-Bsmtp-Ssh-Queue-ID: 4XqF3RdBz5Yqn
X-Bsmtp-Ssh-Sender: rfc822; alice@leaf.example
Arrival-Date: Wed, 11 Sep 2024 22:05:54 +0000 (UTC)

Final-Recipient: rfc822; bob@hub.example
Action: failed
Status: 5.1.1
Remote-MTA: dns; hub.example
Diagnostic-Code: smtp; 550 5.1.1 <bob@hub.example>: no such user

--4XqF3RdBz5Yqn.1726092354/leaf.example
Content-Description: Undelivered Message
Content-Type: message/rfc822

Return-Path: <alice@leaf.example>
Received: by leaf.example (Postfix)
\tid 4XqF3RdBz5Yqn; Wed, 11 Sep 2024 18:05:54 -0400 (EDT)
From: alice@leaf.example
To: bob@hub.example
Subject: hello

body line 1
body line 2

--4XqF3RdBz5Yqn.1726092354/leaf.example--
";
        assert_eq!(text(&composed), expected);
    }

    #[test]
    fn structure_three_parts_and_one_closing_delimiter() {
        let rcpts = [
            failed("bob@hub.example", "550 5.1.1 no such user"),
            failed("carol@hub.example", "550 5.2.2 mailbox full"),
        ];
        let message = text(&compose(&notice(&rcpts, ORIGINAL)));
        let lines = delimiters(&message, BOUNDARY);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[3], format!("--{BOUNDARY}--"));
        assert!(message.ends_with(&format!("\n--{BOUNDARY}--\n")));
        assert!(!message.contains('\r'), "LF only");
        // Two recipient blocks, each after a blank line.
        assert_eq!(message.matches("\n\nFinal-Recipient: rfc822; ").count(), 2);
        assert!(message.contains("\n<carol@hub.example>: host hub.example said"));
        for part in ["text/plain", "message/delivery-status", "message/rfc822"] {
            assert!(message.contains(&format!("Content-Type: {part}")), "{part}");
        }
        let headers = top_headers(&message);
        assert!(headers.contains(&"Auto-Submitted: auto-replied"));
        assert!(headers.contains(&"MIME-Version: 1.0"));
    }

    #[test]
    fn headers_only_when_ret_hdrs() {
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let mut n = notice(&rcpts, ORIGINAL);
        n.ret = Some(Ret::Hdrs);
        let message = text(&compose(&n));
        assert!(message.contains(
            "Content-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n"
        ));
        assert!(
            message.contains("Subject: hello\n\n--"),
            "headers end the part"
        );
        assert!(!message.contains("body line"));
    }

    #[test]
    fn whole_message_when_ret_full_and_within_the_limit() {
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let mut n = notice(&rcpts, ORIGINAL);
        n.ret = Some(Ret::Full);
        n.size_limit = with_lf(ORIGINAL).len();
        let message = text(&compose(&n));
        assert!(message.contains("Content-Type: message/rfc822\n"));
        assert!(message.contains("\nbody line 2\n\n--"));
    }

    #[test]
    fn too_big_is_returned_as_headers_only() {
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let mut n = notice(&rcpts, ORIGINAL);
        n.size_limit = with_lf(ORIGINAL).len() - 1;
        let message = text(&compose(&n));
        assert!(message.contains("Content-Type: text/rfc822-headers\n"));
        assert!(!message.contains("body line"));
        // 0 means no limit.
        n.size_limit = 0;
        assert!(text(&compose(&n)).contains("body line 2"));
    }

    #[test]
    fn envelope_id_present_or_absent() {
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let mut n = notice(&rcpts, ORIGINAL);
        assert!(!text(&compose(&n)).contains("Original-Envelope-Id"));
        n.envid = Some("QQ314159");
        assert!(text(&compose(&n)).contains("\nOriginal-Envelope-Id: QQ314159\n"));
        n.envid = Some("");
        assert!(!text(&compose(&n)).contains("Original-Envelope-Id"));
    }

    #[test]
    fn original_recipient_only_from_orcpt() {
        let mut report = failed("bob@hub.example", "550 5.1.1 no such user");
        let rcpts = [report.clone()];
        assert!(!text(&compose(&notice(&rcpts, ORIGINAL))).contains("Original-Recipient"));
        report.original_recipient = Some(("rfc822".into(), "bob@alias.example".into()));
        let rcpts = [report.clone()];
        let message = text(&compose(&notice(&rcpts, ORIGINAL)));
        assert!(message.contains(
            "Final-Recipient: rfc822; bob@hub.example\n\
             Original-Recipient: rfc822;bob@alias.example\n\
             Action: failed\n"
        ));
        // A utf-8 ORCPT in a 7-bit report: RFC 6533's \x{HEX} form.
        report.original_recipient = Some(("utf-8".into(), "b\u{fc}b@hub.example".into()));
        let rcpts = [report];
        let composed = compose(&notice(&rcpts, ORIGINAL));
        assert!(!composed.smtputf8 && !composed.eight_bit);
        assert!(text(&composed).contains("Original-Recipient: utf-8;b\\x{FC}b@hub.example\n"));
        // Line breaks in it are escaped, not folded into the field.
        let mut report = failed("bob@hub.example", "550 5.1.1 no such user");
        report.original_recipient = Some(("utf-8".into(), "a\r\nAction: x".into()));
        let rcpts = [report];
        let message = text(&compose(&notice(&rcpts, ORIGINAL)));
        assert!(message.contains("Original-Recipient: utf-8;a\\x{D}\\x{A}Action:\\x{20}x\n"));
    }

    #[test]
    fn utf8_addresses_make_a_global_report() {
        let mut report = failed("j\u{f6}rg@hub.example", "550 5.1.1 no such user");
        report.original_recipient = Some(("utf-8".into(), "j\u{f6}rg@hub.example".into()));
        let rcpts = [report];
        let composed = compose(&notice(&rcpts, ORIGINAL));
        assert!(composed.smtputf8 && composed.eight_bit);
        let message = text(&composed);
        assert!(message.contains("Content-Type: message/global-delivery-status\n"));
        assert!(message.contains("Final-Recipient: utf-8; j\u{f6}rg@hub.example\n"));
        assert!(message.contains("Original-Recipient: utf-8;j\u{f6}rg@hub.example\n"));
        assert!(message.contains("Content-Type: message/global\n"));
        assert!(message.contains("Content-Type: text/plain; charset=utf-8\n"));
        assert!(top_headers(&message).contains(&"Content-Transfer-Encoding: 8bit"));
        // An SMTPUTF8 original with ASCII addresses is global too, as in Postfix.
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let mut n = notice(&rcpts, ORIGINAL);
        n.smtputf8 = true;
        n.ret = Some(Ret::Hdrs);
        let composed = compose(&n);
        assert!(composed.smtputf8 && !composed.eight_bit);
        assert!(text(&composed).contains("Content-Type: message/global-headers\n"));
    }

    #[test]
    fn non_ascii_diagnostic_without_smtputf8_becomes_question_marks() {
        let rcpts = [failed(
            "bob@hub.example",
            "550 5.1.1 Benutzer unbekannt \u{2013} sorry",
        )];
        let composed = compose(&notice(&rcpts, ORIGINAL));
        assert!(!composed.eight_bit);
        assert!(text(&composed)
            .contains("Diagnostic-Code: smtp; 550 5.1.1 Benutzer unbekannt ? sorry\n"));
    }

    // A reply with CR/LF must not add a header, a field or a MIME part.
    #[test]
    fn diagnostic_with_line_breaks_cannot_inject() {
        let evil = format!(
            "550 no\r\nBcc: victim@example.org\r\n\r\n--{BOUNDARY}\r\nContent-Type: text/html\nX: y"
        );
        let mut report = failed("bob@hub.example\r\nCc: x@y", &evil);
        report.remote_mta = Some("hub\r\nReporting-MTA: dns; forged".into());
        report.original_recipient = Some(("rfc822\n".into(), "a\r\nAction: delivered".into()));
        let rcpts = [report];
        let mut n = notice(&rcpts, ORIGINAL);
        n.envid = Some("id\r\nSubject: forged");
        let message = text(&compose(&n));
        for line in message.lines() {
            for forged in [
                "Bcc:",
                "Cc:",
                "X: y",
                "Subject: forged",
                "Action: delivered",
            ] {
                assert!(!line.starts_with(forged), "{line:?}");
            }
            assert!(!line.starts_with("Content-Type: text/html"), "{line:?}");
        }
        assert_eq!(delimiters(&message, BOUNDARY).len(), 4);
        assert_eq!(message.matches("\nReporting-MTA:").count(), 1);
        assert_eq!(message.matches("\nAction: ").count(), 1);
        let headers = top_headers(&message);
        assert_eq!(headers.len(), 10, "{headers:?}");
    }

    #[test]
    fn long_diagnostics_are_folded_and_capped() {
        let long = format!("550 5.7.1 {}", "word ".repeat(400));
        let huge = format!("550 {}", "x".repeat(5000));
        let rcpts = [
            failed("bob@hub.example", &long),
            failed("carol@hub.example", &huge),
        ];
        let message = text(&compose(&notice(&rcpts, b"")));
        for line in message.lines() {
            assert!(line.len() < 998, "{}", line.len());
        }
        let folded: Vec<&str> = message
            .lines()
            .skip_while(|l| !l.starts_with("Diagnostic-Code: smtp; 550 5.7.1"))
            .take(3)
            .collect();
        assert!(folded[0].len() <= WRAP_WIDTH, "{folded:?}");
        assert!(folded[1].starts_with("    word"), "{folded:?}");
        assert!(message.contains(&format!("{}...", "x".repeat(100))));
    }

    #[test]
    fn eight_bit_detection() {
        assert!(!is_eight_bit(b"plain ASCII\r\n"));
        assert!(is_eight_bit("Gr\u{fc}\u{df}e".as_bytes()));
        assert!(is_eight_bit(b"\xff"));
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let original = "Subject: Gr\u{fc}\u{df}e\r\n\r\nK\u{e4}se\r\n".as_bytes();
        let composed = compose(&notice(&rcpts, original));
        assert!(composed.eight_bit && !composed.smtputf8);
        let message = text(&composed);
        assert!(top_headers(&message).contains(&"Content-Transfer-Encoding: 8bit"));
        assert!(
            message.contains("Content-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n")
        );
        // Only the headers go back: the 8-bit body does not count.
        let original = "Subject: hi\r\n\r\nK\u{e4}se\r\n".as_bytes();
        let mut n = notice(&rcpts, original);
        n.ret = Some(Ret::Hdrs);
        let composed = compose(&n);
        assert!(!composed.eight_bit);
        assert!(top_headers(&text(&composed)).contains(&"Content-Transfer-Encoding: 7bit"));
    }

    #[test]
    fn delay_warning_returns_headers_and_says_until_when() {
        let rcpts = [RecipientReport {
            action: Action::Delayed,
            status: EnhancedCode::new(4, 4, 1),
            diagnostic: None,
            remote_mta: None,
            reason: "connect to hub.example: Connection refused".into(),
            ..failed("bob@hub.example", "")
        }];
        let mut n = notice(&rcpts, ORIGINAL);
        n.ret = Some(Ret::Full);
        n.will_retry_until = Some("Mon, 16 Sep 2024 22:05:54 +0000 (UTC)");
        let message = text(&compose(&n));
        assert!(message.contains("Subject: Delayed Mail (still being retried)\n"));
        assert!(message.contains("# THIS IS A WARNING ONLY."));
        assert!(
            message.contains("It will be retried until Mon, 16 Sep 2024 22:05:54 +0000 (UTC).\n")
        );
        assert!(message.contains(
            "Action: delayed\n\
             Status: 4.4.1\n\
             Diagnostic-Code: X-Bsmtp-Ssh; connect to hub.example: Connection refused\n\
             Will-Retry-Until: Mon, 16 Sep 2024 22:05:54 +0000 (UTC)\n"
        ));
        assert!(message.contains("Undelivered Message Headers\nContent-Type: text/rfc822-headers"));
        assert!(!message.contains("body line"));
    }

    #[test]
    fn success_report() {
        let reply = Reply::new(250, Some(EnhancedCode::new(2, 0, 0)), "Ok: queued as 4Y");
        let rcpts = [RecipientReport::from_reply(
            "bob@hub.example",
            None,
            &reply,
            Some("hub.example"),
            "end of DATA",
        )];
        let message = text(&compose(&notice(&rcpts, ORIGINAL)));
        assert!(message.contains("Subject: Successful Mail Delivery Report\n"));
        assert!(message.contains("Action: relayed\nStatus: 2.0.0\n"));
        assert!(message
            .contains("Content-Description: Message Headers\nContent-Type: text/rfc822-headers\n"));
        assert!(!message.contains("For further assistance"));
    }

    #[test]
    fn from_reply_in_postfix_words() {
        let reply = Reply {
            code: 550,
            enhanced: None,
            lines: vec!["no such".into(), "user\r\nBcc: x".into()],
        };
        let orcpt = Some(("rfc822".to_owned(), "bob@hub.example".to_owned()));
        let report = RecipientReport::from_reply("bob@hub.example", orcpt, &reply, None, "RCPT TO");
        assert_eq!(report.action, Action::Failed);
        assert_eq!(report.status, EnhancedCode::new(5, 0, 0));
        assert_eq!(
            report.diagnostic,
            Some(("smtp".into(), "550 no such user  Bcc: x".into()))
        );
        assert_eq!(
            report.reason,
            "550 no such user  Bcc: x (in reply to RCPT TO command)"
        );
        let reply = Reply::new(451, Some(EnhancedCode::new(4, 3, 0)), "try later");
        let report =
            RecipientReport::from_reply("bob@hub.example", None, &reply, Some("hub"), "MAIL FROM");
        assert_eq!(report.action, Action::Delayed);
        assert_eq!(
            report.reason,
            "host hub said: 451 4.3.0 try later (in reply to MAIL FROM command)"
        );
    }

    #[test]
    fn boundary_made_unique_against_the_returned_message() {
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let original = format!("Subject: x\n\n--{BOUNDARY}--\n--{BOUNDARY}.12\n");
        let message = text(&compose(&notice(&rcpts, original.as_bytes())));
        // B is used, and B.12 rules out B.1 (a prefix); B.2 is free.
        assert!(message.contains(&format!("\tboundary=\"{BOUNDARY}.2\"\n")));
        assert_eq!(delimiters(&message, &format!("{BOUNDARY}.2")).len(), 4);
        assert_eq!(unique_boundary("a\"b\\c\nd", b""), "abcd");
        assert_eq!(unique_boundary("\"\"", b""), "bsmtp-ssh-report");
        assert_eq!(unique_boundary("b", b"b b.1 b.2"), "b.3");
        assert!(unique_boundary(&"z".repeat(100), b"").len() <= MAX_BOUNDARY_BASE);
        assert_eq!(
            boundary("4XqF", 1_726_092_354, "leaf.example"),
            "4XqF.1726092354/leaf.example"
        );
    }

    #[test]
    fn return_path_once_and_no_part_without_an_original() {
        let rcpts = [failed("bob@hub.example", "550 5.1.1 no such user")];
        let original = b"Return-Path: <alice@leaf.example>\nSubject: x\n\nbody\n";
        let message = text(&compose(&notice(&rcpts, original)));
        assert_eq!(message.matches("Return-Path:").count(), 1);
        let composed = compose(&notice(&rcpts, b""));
        let message = text(&composed);
        assert_eq!(delimiters(&message, BOUNDARY).len(), 3);
        assert!(
            message.contains("one or more recipients.\n\n"),
            "nothing is attached"
        );
        assert!(!message.contains("Undelivered Message"));
    }

    #[test]
    fn header_section_as_postfix_sees_it() {
        assert_eq!(
            header_section(b"A: 1\n\tcont\nB : 2\n\nbody\n"),
            b"A: 1\n\tcont\nB : 2\n"
        );
        assert_eq!(header_section(b"A: 1\nnot a header\nB: 2\n"), b"A: 1\n");
        assert_eq!(header_section(b"body first\n"), b"");
        assert_eq!(header_section(b"A: 1\n"), b"A: 1\n");
        assert_eq!(with_lf(b"a\r\nb\rc\nd"), b"a\nb\rc\nd\n");
    }

    #[test]
    fn wrapping_as_line_wrap() {
        let mut out = String::new();
        push_wrapped(&mut out, &format!("{} {}", "a".repeat(78), "b".repeat(100)));
        assert_eq!(
            out,
            format!("{}\n    {}\n", "a".repeat(78), "b".repeat(100))
        );
        let mut out = String::new();
        push_wrapped(&mut out, "short line");
        assert_eq!(out, "short line\n");
    }
}
