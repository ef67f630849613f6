//! The service extensions an EHLO (or LHLO) reply announces, typed: the
//! client decides from these which MAIL parameters it may send, and the
//! server builds its reply from the same type, so the two cannot drift.

use crate::reply::Reply;

/// The EHLO keyword of rsmtp's exactly-once transaction tags
/// ([`crate::tag`]).
pub use crate::tag::EXTENSION as TRANSACTION_TAG;

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
}
