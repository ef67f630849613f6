//! Delivery status notification requests (RFC 3461) as they travel: `RET`
//! and `ENVID` on MAIL, `NOTIFY` and `ORCPT` on RCPT, and the xtext
//! encoding (RFC 3461 section 4) their values use on the wire. Values are
//! kept decoded; the wire forms are made and read here only.
//!
//! Postfix keeps them in its queue files as attribute records with the
//! numbers of its `dsn_mask.h`, which [`Ret::postfix`] and
//! [`notify_mask`] give.

use std::fmt::Write as _;

/// Longest ENVID we take (RFC 3461 section 4.4: 100 characters).
pub const MAX_ENVID: usize = 100;

/// What a bounce returns of the message (`RET=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// The whole message.
    Full,
    /// Its headers only.
    Hdrs,
}

impl Ret {
    /// Parses a `RET=` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_uppercase().as_str() {
            "FULL" => Some(Ret::Full),
            "HDRS" => Some(Ret::Hdrs),
            _ => None,
        }
    }

    /// The `RET=` value.
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }

    /// Postfix's number for it (`DSN_RET_FULL`, `DSN_RET_HDRS`).
    pub fn postfix(self) -> u8 {
        match self {
            Ret::Full => 1,
            Ret::Hdrs => 2,
        }
    }
}

/// The message's DSN request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailDsn {
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, decoded.
    pub envid: Option<String>,
}

/// One recipient's DSN request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptDsn {
    /// `NOTIFY=`, normalized: `NEVER`, or some of `SUCCESS,DELAY,FAILURE`.
    pub notify: Option<String>,
    /// `ORCPT=`: the address type and the decoded address.
    pub orcpt: Option<(String, String)>,
}

/// Normalizes a `NOTIFY=` value; `None` when it is not one.
pub fn parse_notify(value: &str) -> Option<String> {
    let words: Vec<String> = value.split(',').map(str::to_ascii_uppercase).collect();
    let known = |w: &String| matches!(w.as_str(), "SUCCESS" | "DELAY" | "FAILURE");
    match words.as_slice() {
        [never] if never == "NEVER" => Some("NEVER".into()),
        _ if !words.is_empty() && words.iter().all(known) => Some(words.join(",")),
        _ => None,
    }
}

/// Postfix's bit mask for a normalized `NOTIFY=` value (`dsn_mask.h`).
pub fn notify_mask(notify: &str) -> u8 {
    notify.split(',').fold(0, |mask, word| {
        mask | match word {
            "NEVER" => 1,
            "SUCCESS" => 2,
            "FAILURE" => 4,
            "DELAY" => 8,
            _ => 0,
        }
    })
}

/// Parses an `ORCPT=` value: `type;xtext`, or for the `utf-8` type
/// RFC 6533's `\x{HEX}` form (Postfix's lmtp(8) and smtp(8) send that for
/// a non-ASCII original recipient).
pub fn parse_orcpt(value: &str) -> Option<(String, String)> {
    let (kind, coded) = value.split_once(';')?;
    let address = if kind.eq_ignore_ascii_case("utf-8") {
        uxtext_decode(coded)?
    } else {
        xtext_decode(coded)?
    };
    let kind_ok = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    // Control characters would break the queue file record it goes into.
    let address_ok = !address.is_empty() && !address.chars().any(char::is_control);
    (kind_ok && address_ok).then(|| (kind.to_ascii_lowercase(), address))
}

/// Parses an `ENVID=` value: xtext of printable ASCII, at most
/// [`MAX_ENVID`] characters.
pub fn parse_envid(value: &str) -> Option<String> {
    xtext_decode(value).filter(|envid| valid_envid(envid))
}

/// True for a decoded envelope ID we pass on: 1 to [`MAX_ENVID`] printable
/// ASCII characters.
pub fn valid_envid(envid: &str) -> bool {
    !envid.is_empty()
        && envid.len() <= MAX_ENVID
        && envid.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// An `ORCPT=` value for `kind` and `address`, in the encoding that type
/// takes (see [`parse_orcpt`]).
pub fn orcpt_value(kind: &str, address: &str) -> String {
    if kind.eq_ignore_ascii_case("utf-8") {
        format!("{kind};{}", uxtext_encode(address))
    } else {
        format!("{kind};{}", xtext_encode(address))
    }
}

/// RFC 6533 utf-8-addr-xtext: printable ASCII but `\`, `+` and `=` as
/// is, every other character `\x{HEX}` of its code point.
pub fn uxtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch.is_ascii_graphic() && !matches!(ch, '\\' | '+' | '=') {
            out.push(ch);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(ch));
        }
    }
    out
}

/// Decodes RFC 6533 `\x{HEX}` sequences (1 to 6 hex digits, any case);
/// `None` when one is malformed or names no character.
pub fn uxtext_decode(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let tail = rest[at..].strip_prefix("\\x{")?;
        let end = tail.find('}')?;
        let hex = &tail[..end];
        if hex.is_empty() || hex.len() > 6 {
            return None;
        }
        out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// RFC 3461 xtext: printable ASCII but `+` and `=` as is, all else `+HH`.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (33..=126).contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "+{byte:02X}");
        }
    }
    out
}

/// Decodes xtext; `None` for a malformed `+HH` or a result that is not
/// UTF-8.
pub fn xtext_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'+' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_round_trip() {
        for text in ["envid42", "a+b=c d", "rfc822;bob@hub.test", "\u{fc}ber"] {
            let coded = xtext_encode(text);
            assert!(
                coded.bytes().all(|b| (33..=126).contains(&b) && b != b'='),
                "{coded}"
            );
            assert_eq!(xtext_decode(&coded).as_deref(), Some(text));
        }
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("bad+4"), None);
        assert_eq!(xtext_decode("bad+ZZ"), None);
    }

    #[test]
    fn notify_and_its_postfix_mask() {
        assert_eq!(
            parse_notify("success,delay,failure").as_deref(),
            Some("SUCCESS,DELAY,FAILURE")
        );
        assert_eq!(parse_notify("never").as_deref(), Some("NEVER"));
        assert_eq!(parse_notify("NEVER,SUCCESS"), None);
        assert_eq!(parse_notify("SOMETIMES"), None);
        assert_eq!(notify_mask("SUCCESS,DELAY,FAILURE"), 2 | 8 | 4);
        assert_eq!(notify_mask("NEVER"), 1);
    }

    #[test]
    fn orcpt_and_envid() {
        assert_eq!(
            parse_orcpt("rfc822;bob+40hub.test"),
            Some(("rfc822".into(), "bob@hub.test".into()))
        );
        assert_eq!(parse_orcpt("rfc822bob"), None);
        assert_eq!(parse_orcpt("rfc822;a+0D+0Ab@x"), None, "no line breaks");
        // What Postfix's lmtp(8) sends for ü@hub.test.
        assert_eq!(
            parse_orcpt("utf-8;\\x{FC}@hub.test"),
            Some(("utf-8".into(), "\u{fc}@hub.test".into()))
        );
        assert_eq!(
            orcpt_value("utf-8", "\u{fc}+x@hub.test"),
            "utf-8;\\x{FC}\\x{2B}x@hub.test"
        );
        assert_eq!(
            orcpt_value("rfc822", "b+x@hub.test"),
            "rfc822;b+2Bx@hub.test"
        );
        for bad in ["\\x{}", "\\x{FC", "\\y", "\\x{D800}", "\\x{1234567}"] {
            assert_eq!(uxtext_decode(bad), None, "{bad}");
        }
        assert_eq!(uxtext_decode("\\x{65e5}"), Some("\u{65e5}".into()));
        assert_eq!(parse_envid("envid42").as_deref(), Some("envid42"));
        assert_eq!(parse_envid(&"x".repeat(MAX_ENVID + 1)), None);
        assert_eq!(parse_envid("a+0Ab"), None, "no control characters");
        assert_eq!(Ret::parse("hdrs"), Some(Ret::Hdrs));
        assert_eq!(Ret::Full.postfix(), 1);
    }
}
