//! Exactly-once delivery, the pure half: the transaction tag a sender
//! mints, the digest of what a receiver was sent, and the record a receiver
//! keeps of a tagged transaction it committed.
//!
//! The promise. A sender tags each transaction ([`Tag::mint`]); a retry of
//! the same delivery carries the same tag. A receiver that committed a
//! tagged transaction keeps a [`Record`]: the [`Digest`] of the content it
//! received and, for each recipient the commit covered, the queue ID it
//! went under. A later transaction with that tag is a retry only when its
//! content has the same digest: then each recipient in the record is
//! answered from it (nothing queued twice), and every other recipient (one
//! refused or deferred the first time) is judged and queued as new. A tag
//! alone proves nothing: tags recur (Postfix reuses short queue IDs), and a
//! different message under a recurring tag is a new message.
//!
//! The store that keeps records, and the receiver's one claim / commit /
//! answer-a-retry path, are in `bsmtp_session::tags`.

use std::fmt::{self, Write as _};

use sha2::{Digest as _, Sha256};

/// The EHLO keyword of the transaction tag extension, and the name of the
/// MAIL parameter that carries a tag (`MAIL FROM:<a@b> XTXID=...`). A
/// private (`X`) extension: only bsmtp-ssh sends it, only rsmtp takes it.
pub const EXTENSION: &str = "XTXID";

/// Longest tag a receiver accepts (it also names a file).
pub const MAX_TAG: usize = 64;

/// An exactly-once transaction tag: 1 to [`MAX_TAG`] letters, digits, `-`
/// and `.`, the first a letter or digit, so it can name a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    /// A tag as received; `None` unless it is well formed.
    pub fn parse(text: &str) -> Option<Tag> {
        // Starts with a letter or digit: never `.` or `..`.
        let ok = text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.len() <= MAX_TAG
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        ok.then(|| Tag(text.to_owned()))
    }

    /// The tag of one delivery: the sender's queue ID, a dot, and 16 hex
    /// digits of a SHA-1 over the envelope (sender, recipients in order,
    /// size).
    ///
    /// Postfix gives the same queue ID, recipients and size to every retry
    /// of one delivery, so a retry carries the same tag. It is not unique
    /// for ever: a short queue ID is reused once its message left the
    /// queue, so a later message with the same sender, recipients and
    /// size can carry the same tag; the receiver tells the two apart by
    /// the content [`Digest`] in its [`Record`]. `None` when there is no
    /// queue ID to start from, or it is not one Postfix makes.
    pub fn mint(
        queue_id: &str,
        sender: &str,
        recipients: &[String],
        size: Option<u64>,
    ) -> Option<Tag> {
        use sha1::Sha1;
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
        let mut tag = format!("{queue_id}.");
        hex(&mut tag, &hash.finalize()[..8]);
        Tag::parse(&tag)
    }

    /// The tag of a message that came without one (an offline batch, the
    /// sendmail verb), made from its content: the same sender, recipients
    /// and body give the same tag. It starts with `c-`, which no minted
    /// tag does (a queue ID has no `-`).
    pub fn of_content(sender: &str, recipients: &[String], body: &Digest) -> Tag {
        let mut hash = Sha256::new();
        hash.update(sender.as_bytes());
        hash.update(b"\0");
        for recipient in recipients {
            hash.update(recipient.as_bytes());
            hash.update(b"\0");
        }
        hash.update(body.0);
        let mut tag = String::from("c-");
        hex(&mut tag, &hash.finalize()[..12]);
        Tag(tag)
    }

    /// The sender's queue ID a minted tag starts with.
    pub fn queue_id(&self) -> Option<&str> {
        self.0.split_once('.').map(|(id, _)| id)
    }

    /// The tag as sent and stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 over a message's content as received: each line's bytes
/// followed by `\n`, whatever line end it came with, and dot-stuffing
/// undone (so the digest of one message is the same in every dialect).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(64);
        hex(&mut text, &self.0);
        f.write_str(&text)
    }
}

impl Digest {
    /// Reads the 64 hex digits [`Digest`]'s `Display` writes.
    pub fn parse(text: &str) -> Option<Digest> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(bytes))
    }
}

/// A [`Digest`] being computed as the content streams by.
#[derive(Clone, Default)]
pub struct Digester(Sha256);

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digester")
    }
}

impl Digester {
    /// A digest of nothing yet.
    pub fn new() -> Self {
        Digester::default()
    }

    /// Adds a piece of a content line (no line terminator).
    pub fn update(&mut self, bytes: &[u8], end_of_line: bool) {
        self.0.update(bytes);
        if end_of_line {
            self.0.update(b"\n");
        }
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// One recipient a commit covered, and the queue ID it went under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered {
    /// The recipient as the sender gave it (SMTP form).
    pub recipient: String,
    /// The next hop's queue ID.
    pub queue_id: String,
}

/// What a receiver keeps of a tagged transaction it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Seconds since the epoch after which the record is void.
    pub expires: u64,
    /// The content's digest; `None` in a record an older rsmtp wrote
    /// (`queued ID`), which then covers every recipient under `legacy`.
    pub digest: Option<Digest>,
    /// The recipients committed so far, in the order they were.
    pub covered: Vec<Covered>,
    /// The queue ID of an older rsmtp's record, for every recipient.
    pub legacy: Option<String>,
}

/// The first word of a record's text, and its version.
const MAGIC: &str = "tag-record 2";

impl Record {
    /// A new record of content `digest`, void after `expires`.
    pub fn new(digest: Digest, expires: u64) -> Self {
        Record {
            expires,
            digest: Some(digest),
            covered: Vec::new(),
            legacy: None,
        }
    }

    /// Whether a transaction with content `digest` is a retry of this one.
    pub fn same_content(&self, digest: &Digest) -> bool {
        self.digest.as_ref().is_none_or(|d| d == digest)
    }

    /// The queue ID `recipient` was committed under, if it was.
    pub fn queue_id_of(&self, recipient: &str) -> Option<&str> {
        self.legacy.as_deref().or_else(|| {
            self.covered
                .iter()
                .find(|c| c.recipient == recipient)
                .map(|c| c.queue_id.as_str())
        })
    }

    /// The queue ID of the first commit recorded.
    pub fn first_queue_id(&self) -> Option<&str> {
        self.legacy
            .as_deref()
            .or_else(|| self.covered.first().map(|c| c.queue_id.as_str()))
    }

    /// A record that only says "done, as `queue_id`", for every recipient
    /// and any content (what an older rsmtp wrote; a notice sent once).
    pub fn done(queue_id: &str, expires: u64) -> Self {
        Record {
            expires,
            digest: None,
            covered: Vec::new(),
            legacy: Some(queue_id.to_owned()),
        }
    }

    /// Adds `recipient`, committed under `queue_id`.
    pub fn cover(&mut self, recipient: &str, queue_id: &str) {
        if self.queue_id_of(recipient).is_none() {
            self.covered.push(Covered {
                recipient: recipient.to_owned(),
                queue_id: queue_id.to_owned(),
            });
        }
    }

    /// The record as stored: a first line `tag-record 2 EXPIRES DIGEST`,
    /// then `QUEUEID RECIPIENT` per covered recipient. A recipient never
    /// holds a line end (the codec refuses one), so lines are safe.
    pub fn encode(&self) -> String {
        let digest = self.digest.map(|d| d.to_string()).unwrap_or_default();
        let mut text = format!("{MAGIC} {} {digest}\n", self.expires);
        if let Some(id) = &self.legacy {
            let _ = writeln!(text, "{id} *");
        }
        for c in &self.covered {
            let _ = writeln!(text, "{} {}", c.queue_id, c.recipient);
        }
        text
    }

    /// Reads a stored record: this version's, or an older rsmtp's
    /// `queued QUEUEID` (valid until `legacy_expires`). `None` for
    /// anything else, such as a claim or a file cut short.
    pub fn parse(text: &str, legacy_expires: u64) -> Option<Record> {
        if let Some(rest) = text.strip_prefix("queued ") {
            let id = rest.split_ascii_whitespace().next()?;
            return Some(Record {
                expires: legacy_expires,
                digest: None,
                covered: Vec::new(),
                legacy: Some(id.to_owned()),
            });
        }
        // Written whole and renamed into place, a record ends with a line
        // end; one without is not ours to trust.
        let body = text.strip_suffix('\n')?;
        let mut lines = body.split('\n');
        let head = lines.next()?.strip_prefix(MAGIC)?.strip_prefix(' ')?;
        let (expires, digest) = head.split_once(' ')?;
        let mut record = Record {
            expires: expires.parse().ok()?,
            digest: if digest.is_empty() {
                None
            } else {
                Some(Digest::parse(digest)?)
            },
            covered: Vec::new(),
            legacy: None,
        };
        for line in lines {
            let (queue_id, recipient) = line.split_once(' ')?;
            if recipient == "*" {
                record.legacy = Some(queue_id.to_owned());
            } else {
                record.cover(recipient, queue_id);
            }
        }
        Some(record)
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpts(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    fn digest(text: &str) -> Digest {
        let mut d = Digester::new();
        for line in text.lines() {
            d.update(line.as_bytes(), true);
        }
        d.finish()
    }

    #[test]
    fn a_retry_gets_the_same_tag_and_another_delivery_another() {
        let tag = Tag::mint("4Xq1ABC", "a@x", &rcpts(&["b@y", "c@y"]), Some(99)).unwrap();
        assert!(tag.as_str().starts_with("4Xq1ABC."), "{tag}");
        assert_eq!(tag.queue_id(), Some("4Xq1ABC"));
        assert_eq!(Tag::parse(tag.as_str()), Some(tag.clone()));
        assert_eq!(
            Tag::mint("4Xq1ABC", "a@x", &rcpts(&["b@y", "c@y"]), Some(99)),
            Some(tag.clone())
        );
        for other in [
            Tag::mint("4Xq1ABD", "a@x", &rcpts(&["b@y", "c@y"]), Some(99)),
            Tag::mint("4Xq1ABC", "", &rcpts(&["b@y", "c@y"]), Some(99)),
            Tag::mint("4Xq1ABC", "a@x", &rcpts(&["b@y"]), Some(99)),
            Tag::mint("4Xq1ABC", "a@x", &rcpts(&["b@y", "c@y"]), Some(98)),
            Tag::mint("4Xq1ABC", "a@x", &rcpts(&["b@yc@y"]), Some(99)),
        ] {
            assert_ne!(other.as_ref(), Some(&tag));
        }
        assert_eq!(Tag::mint("", "a@x", &rcpts(&["b@y"]), None), None);
        assert_eq!(Tag::mint("../x", "a@x", &rcpts(&["b@y"]), None), None);
    }

    #[test]
    fn well_formed_tags() {
        assert!(Tag::parse("leaf1.4Xq1ABC-0f3a").is_some());
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
            assert_eq!(Tag::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_tags_differ_from_minted_ones_and_follow_the_content() {
        let body = digest("Subject: x\n\nhello\n");
        let tag = Tag::of_content("a@x", &rcpts(&["b@y"]), &body);
        assert!(tag.as_str().starts_with("c-") && Tag::parse(tag.as_str()).is_some());
        assert_eq!(tag.queue_id(), None);
        assert_eq!(tag, Tag::of_content("a@x", &rcpts(&["b@y"]), &body));
        let other = digest("Subject: x\n\nhello!\n");
        assert_ne!(tag, Tag::of_content("a@x", &rcpts(&["b@y"]), &other));
        assert_ne!(tag, Tag::of_content("a@x", &rcpts(&["c@y"]), &body));
    }

    #[test]
    fn the_digest_ignores_how_lines_were_cut() {
        let mut pieces = Digester::new();
        pieces.update(b"hel", false);
        pieces.update(b"lo", true);
        pieces.update(b"", true);
        assert_eq!(pieces.finish(), digest("hello\n\n"));
        assert_ne!(digest("hello\n"), digest("hello\n\n"));
        let d = digest("x\n");
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert_eq!(Digest::parse("zz"), None);
    }

    #[test]
    fn records_round_trip_and_answer_per_recipient() {
        let d = digest("body\n");
        let mut record = Record::new(d, 1_800_000_000);
        record.cover("ok@hub.test", "4XQ1");
        record.cover("\"john doe\"@hub.test", "4XQ2");
        let text = record.encode();
        let back = Record::parse(&text, 0).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.queue_id_of("ok@hub.test"), Some("4XQ1"));
        assert_eq!(back.queue_id_of("\"john doe\"@hub.test"), Some("4XQ2"));
        assert_eq!(back.queue_id_of("nouser@hub.test"), None);
        assert!(back.same_content(&d));
        assert!(!back.same_content(&digest("other\n")));
        // Cut short, or a claim: not a record.
        assert_eq!(Record::parse(&text[..text.len() - 1], 0), None);
        assert_eq!(Record::parse("pending 12 34\n", 0), None);
        assert_eq!(Record::parse("", 0), None);
    }

    #[test]
    fn an_older_rsmtps_record_covers_every_recipient_whatever_the_content() {
        let record = Record::parse("queued 4XOLD\n", 77).unwrap();
        assert_eq!(record.expires, 77);
        assert_eq!(record.queue_id_of("anyone@hub.test"), Some("4XOLD"));
        assert!(record.same_content(&digest("anything\n")));
        assert_eq!(Record::parse(&record.encode(), 0), Some(record));
    }
}
