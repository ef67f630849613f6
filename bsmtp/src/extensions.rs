//! The service extensions an EHLO (or LHLO) reply announces, typed: the
//! client decides from these which MAIL parameters it may send, and the
//! server builds its reply from the same type, so the two cannot drift.

use std::fmt::Write as _;

use crate::reply::Reply;

/// The EHLO keyword of rsmtp's exactly-once transaction tags, and the name
/// of the MAIL parameter that carries one (`MAIL FROM:<a@b> XTXID=...`).
/// A private (`X`) extension: only bsmtp-ssh sends it, only rsmtp takes it.
pub const TRANSACTION_TAG: &str = "XTXID";

/// Longest transaction tag a server accepts.
pub const MAX_TAG: usize = 64;

/// What a receiver announced in its EHLO/LHLO reply: one flag per
/// extension, as the protocol has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Extensions {
    /// RFC 2920: commands may be sent without waiting for each reply.
    pub pipelining: bool,
    /// RFC 1870: `SIZE`, with the largest message it takes (0: no limit
    /// stated); `None` when not announced.
    pub size: Option<u64>,
    /// RFC 6152: `BODY=8BITMIME`.
    pub eight_bit_mime: bool,
    /// RFC 6531: `SMTPUTF8`.
    pub smtputf8: bool,
    /// RFC 2034: replies carry RFC 3463 codes.
    pub enhanced_status_codes: bool,
    /// RFC 3461: `RET`, `ENVID`, `NOTIFY`, `ORCPT`.
    pub dsn: bool,
    /// Postfix's `XFORWARD` with the attribute names it takes.
    pub xforward: Vec<String>,
    /// rsmtp's [`TRANSACTION_TAG`].
    pub transaction_tag: bool,
}

impl Extensions {
    /// Reads the extension lines of a positive EHLO reply (every line but
    /// the first, which is the greeting). Unknown keywords are ignored.
    pub fn parse(reply: &Reply) -> Self {
        let mut found = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => found.pipelining = true,
                "SIZE" => {
                    found.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => found.eight_bit_mime = true,
                "SMTPUTF8" => found.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => found.enhanced_status_codes = true,
                "DSN" => found.dsn = true,
                "XFORWARD" => {
                    found.xforward = words.map(str::to_ascii_uppercase).collect();
                }
                keyword if keyword == TRANSACTION_TAG => found.transaction_tag = true,
                _ => {}
            }
        }
        found
    }

    /// The reply lines that announce these extensions, after `greeting`
    /// (the first line), in the order Postfix's smtpd uses.
    pub fn reply_lines(&self, greeting: String) -> Vec<String> {
        let size = self.size.map(|size| {
            if size == 0 {
                "SIZE".to_owned()
            } else {
                format!("SIZE {size}")
            }
        });
        let xforward =
            (!self.xforward.is_empty()).then(|| format!("XFORWARD {}", self.xforward.join(" ")));
        let flag = |on: bool, line: &str| on.then(|| line.to_owned());
        std::iter::once(Some(greeting))
            .chain([
                flag(self.pipelining, "PIPELINING"),
                size,
                xforward,
                flag(self.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
                flag(self.eight_bit_mime, "8BITMIME"),
                flag(self.dsn, "DSN"),
                flag(self.smtputf8, "SMTPUTF8"),
                flag(self.transaction_tag, TRANSACTION_TAG),
            ])
            .flatten()
            .collect()
    }
}

/// True for a transaction tag a server should accept: 1 to [`MAX_TAG`]
/// characters of letters, digits, `-` and `.`, the first a letter or digit.
pub fn valid_tag(tag: &str) -> bool {
    // Starts with a letter or digit: a tag also names a file, never `.`
    // or `..`.
    tag.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tag.len() <= MAX_TAG
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The exactly-once tag of one delivery: the sender's queue ID, a dot, and
/// 16 hex digits of a SHA-1 over the envelope (sender, recipients in order,
/// size).
///
/// Postfix gives the same queue ID, recipients and size to every retry of
/// the same delivery, so a retry carries the same tag. Two different
/// deliveries differ in one of them: a queue ID is unique among the
/// messages in the sender's queue, a later message that reuses a freed
/// short ID would also need the same sender, recipients and size within the
/// receiver's tag lifetime, and a later delivery of the same message to
/// other recipients has other recipients. Receivers keep tags per peer, so
/// two senders' queue IDs never meet. `None` when there is no queue ID to
/// start from, or it is not one Postfix makes.
pub fn transaction_tag(
    queue_id: &str,
    sender: &str,
    recipients: &[String],
    size: Option<u64>,
) -> Option<String> {
    use sha1::{Digest, Sha1};
    if queue_id.is_empty() || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let mut hash = Sha1::new();
    hash.update(sender.as_bytes());
    for recipient in recipients {
        hash.update(b"\0");
        hash.update(recipient.as_bytes());
    }
    hash.update(b"\0");
    hash.update(size.map(|s| s.to_string()).unwrap_or_default().as_bytes());
    let digest = hash.finalize();
    let mut tag = format!("{queue_id}.");
    for byte in &digest[..8] {
        let _ = write!(tag, "{byte:02x}");
    }
    valid_tag(&tag).then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_of_reply_lines_round_trips() {
        let sent = Extensions {
            pipelining: true,
            size: Some(10_240_000),
            eight_bit_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            dsn: true,
            xforward: vec!["NAME".into(), "ADDR".into(), "IDENT".into()],
            transaction_tag: true,
        };
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: sent.reply_lines("hub.test".into()),
        };
        assert_eq!(Extensions::parse(&reply), sent);
    }

    #[test]
    fn real_postfix_ehlo_reply() {
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: [
                "mx.example.org",
                "PIPELINING",
                "SIZE",
                "VRFY",
                "ETRN",
                "STARTTLS",
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "DSN",
                "CHUNKING",
            ]
            .map(str::to_owned)
            .to_vec(),
        };
        let found = Extensions::parse(&reply);
        assert!(found.pipelining && found.dsn && found.eight_bit_mime);
        assert_eq!(found.size, Some(0));
        assert!(!found.smtputf8 && !found.transaction_tag);
    }

    #[test]
    fn a_retry_gets_the_same_tag_and_another_delivery_another() {
        let rcpts = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let tag = transaction_tag("4Xq1ABC", "a@x", &rcpts(&["b@y", "c@y"]), Some(99)).unwrap();
        assert!(tag.starts_with("4Xq1ABC.") && valid_tag(&tag), "{tag}");
        assert_eq!(
            transaction_tag("4Xq1ABC", "a@x", &rcpts(&["b@y", "c@y"]), Some(99)).unwrap(),
            tag
        );
        for other in [
            transaction_tag("4Xq1ABD", "a@x", &rcpts(&["b@y", "c@y"]), Some(99)),
            transaction_tag("4Xq1ABC", "", &rcpts(&["b@y", "c@y"]), Some(99)),
            transaction_tag("4Xq1ABC", "a@x", &rcpts(&["b@y"]), Some(99)),
            transaction_tag("4Xq1ABC", "a@x", &rcpts(&["b@y", "c@y"]), Some(98)),
            transaction_tag("4Xq1ABC", "a@x", &rcpts(&["b@yc@y"]), Some(99)),
        ] {
            assert_ne!(other.as_deref(), Some(tag.as_str()));
        }
        assert_eq!(transaction_tag("", "a@x", &rcpts(&["b@y"]), None), None);
        assert_eq!(transaction_tag("../x", "a@x", &rcpts(&["b@y"]), None), None);
    }

    #[test]
    fn tags() {
        assert!(valid_tag("leaf1.4Xq1ABC-0f3a"));
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a b",
            "a/b",
            "a=b",
            &"x".repeat(MAX_TAG + 1),
        ] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}
