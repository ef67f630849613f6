//! What the client asked for, read from `SSH_ORIGINAL_COMMAND`.
//!
//! OpenSSH runs the key's forced command and puts whatever the client asked
//! to run into `SSH_ORIGINAL_COMMAND`. That text is hostile: it is split here
//! by our own strict rules (ASCII spaces only, a small character set, no
//! quoting, no expansion) and matched against the verbs a peer's policy
//! grants. Nothing of it ever reaches a shell.

use std::fmt;

use bsmtp::text::printable;

/// Longest `SSH_ORIGINAL_COMMAND` we look at.
pub const MAX_ORIGINAL_COMMAND: usize = 1024;
/// Most words in it.
pub const MAX_WORDS: usize = 32;

/// A verb a peer may be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// Read a BSMTP stream on stdin, answer each command on stdout.
    Receive,
    /// `receive deflate`: the same, with each direction one zlib stream
    /// (a leaf's `compression = true`, see [`bsmtp_session::deflate`]).
    ReceiveDeflate,
    /// Send the peer the mail spooled for it: we are the client, on
    /// stdout, and read its replies on stdin. Only when granted.
    Pull,
    /// Replace one of the hub's lookup tables with the source on stdin:
    /// the words after the verb (`NAME [BYTES SHA256]`), checked by
    /// [`crate::table`].
    PutTable(Vec<String>),
    /// `sendmail ARGS...` or `rsendmail ARGS...`: one message on stdin,
    /// the sendmail way (see [`crate::sendmail`]). Only when granted.
    Sendmail(Vec<String>),
}

impl Verb {
    /// The word a client sends for this verb.
    pub fn name(&self) -> &'static str {
        match self {
            Verb::Receive | Verb::ReceiveDeflate => "receive",
            Verb::Pull => "pull",
            Verb::PutTable(_) => bsmtp::table::VERB,
            Verb::Sendmail(_) => "sendmail",
        }
    }
}

/// Why a requested command was refused; the text is safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The request, printable and shortened.
    pub request: String,
    /// Why it was refused.
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused SSH command \"{}\": {}; this key may run only \"{}\"",
            self.request,
            self.reason,
            Verb::Receive.name()
        )
    }
}

impl std::error::Error for Refused {}

/// Parses `SSH_ORIGINAL_COMMAND` (None when the client asked for no command).
pub fn parse(original: Option<&[u8]>) -> Result<Verb, Refused> {
    let Some(original) = original else {
        // `ssh hub < batch`: no command, the key's purpose is implied.
        return Ok(Verb::Receive);
    };
    let refuse = |reason: &str| Refused {
        request: printable(original),
        reason: reason.to_owned(),
    };
    if original.len() > MAX_ORIGINAL_COMMAND {
        return Err(refuse("too long"));
    }
    if let Some(bad) = original.iter().find(|&&b| !allowed_byte(b)) {
        return Err(refuse(&format!(
            "character {} is not allowed",
            printable(&[*bad])
        )));
    }
    // Only valid ASCII from here on, so this cannot fail.
    let text = std::str::from_utf8(original).map_err(|_| refuse("not ASCII"))?;
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    if words.len() > MAX_WORDS {
        return Err(refuse("too many words"));
    }
    match words.as_slice() {
        [] | ["receive" | "rsmtp"] => Ok(Verb::Receive),
        ["receive" | "rsmtp", argument]
            if *argument == bsmtp_session::deflate::RECEIVE_ARGUMENT =>
        {
            Ok(Verb::ReceiveDeflate)
        }
        ["receive" | "rsmtp", ..] => Err(refuse("\"receive\" takes no argument but \"deflate\"")),
        ["pull"] => Ok(Verb::Pull),
        ["sendmail" | "rsendmail", args @ ..] => Ok(Verb::Sendmail(
            args.iter().map(|w| (*w).to_owned()).collect(),
        )),
        ["pull", ..] => Err(refuse(
            "\"pull\" takes no arguments: a peer pulls only its own spool",
        )),
        [bsmtp::table::VERB, args @ ..] => Ok(Verb::PutTable(
            args.iter().map(|&word| word.to_owned()).collect(),
        )),
        [verb, ..] => Err(refuse(&format!("unknown verb \"{verb}\""))),
    }
}

/// The bytes a request may contain: enough for verbs, peer and table names,
/// addresses and options; nothing a shell would act on.
fn allowed_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" ._@+=:,/-".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_forms() {
        assert_eq!(parse(None), Ok(Verb::Receive));
        assert_eq!(parse(Some(b"receive")), Ok(Verb::Receive));
        assert_eq!(parse(Some(b"rsmtp")), Ok(Verb::Receive));
        assert_eq!(parse(Some(b"  receive ")), Ok(Verb::Receive));
        assert_eq!(parse(Some(b"pull")), Ok(Verb::Pull));
        assert_eq!(parse(Some(b"receive deflate")), Ok(Verb::ReceiveDeflate));
        assert_eq!(parse(Some(b"rsmtp  deflate ")), Ok(Verb::ReceiveDeflate));
        assert_eq!(
            parse(Some(b"put-table relay_recipients 12 0a")),
            Ok(Verb::PutTable(vec![
                "relay_recipients".into(),
                "12".into(),
                "0a".into()
            ]))
        );
    }

    #[test]
    fn hostile_requests_are_refused_with_a_safe_message() {
        let cases: [&[u8]; 11] = [
            b"receive deflate deflate",
            b"receive gzip",
            b"receive; rm -rf /",
            b"$(id)",
            b"`id`",
            b"receive | sh",
            b"receive\nid",
            b"pull ../../etc",
            b"/bin/sh",
            b"receive extra",
            b"\xff\x00",
        ];
        for case in cases {
            let refused = parse(Some(case)).unwrap_err();
            let text = refused.to_string();
            assert!(text.is_ascii() && !text.contains('\n'), "{text}");
            assert!(text.contains("may run only \"receive\""), "{text}");
        }
        let long = vec![b'a'; MAX_ORIGINAL_COMMAND + 1];
        let refused = parse(Some(&long)).unwrap_err();
        assert_eq!(refused.reason, "too long");
        assert!(refused.request.len() <= 103);
    }
}
