//! Table push: what a sender asks of a hub's rsmtp to replace one of its
//! Postfix lookup tables (`relay_recipients`, `transport`, ...), and the
//! rules for a table's name. Both sides use this module, so what
//! `bsmtp-ssh push-table` checks before it connects is exactly what rsmtp
//! enforces.
//!
//! The request is `put-table NAME BYTES SHA256`, the table source following
//! on the channel. A dropped SSH link looks to rsmtp like the end of its
//! input, and a recipient table cut short would make the hub reject valid
//! mail; the size and the SHA-256 of the whole source let rsmtp tell a
//! complete table from a truncated (or changed-while-read) one and install
//! only the former. `put-table NAME` alone, for a plain `ssh hub put-table
//! NAME < file`, goes without that protection; rsmtp refuses it unless the
//! hub's rsmtp.conf says `table_require_checksum = false`.
//!
//! [`SourceScan`] checks the source itself, streaming, on both sides:
//! postmap silently joins a line that starts with white space to the line
//! before (a recipient vanishes into another's value), and only warns about
//! a key without a value or a key given twice; `texthash` tables are never
//! shown to postmap at all. So rsmtp installs only a source in which every
//! line means what it appears to mean.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use sha2::{Digest, Sha256};

/// The SSH verb.
pub const VERB: &str = "put-table";
/// Longest table name: a file name in the hub's table directory.
pub const MAX_NAME: usize = 64;
/// Suffixes of the database files postmap writes next to a source; a table
/// named with one could overwrite another table's database.
pub const DATABASE_SUFFIXES: [&str; 3] = [".db", ".cdb", ".lmdb"];

/// Checks that `name` is a plain identifier: letters, digits, `_`, `-` and
/// `.`, not starting with `.` or `-`, no `..`, no database suffix, at most
/// [`MAX_NAME`] bytes. Such a name is one file name in one directory: it
/// cannot climb out (`..`, `/`), hide (`.x`, rsmtp's temp files start with
/// a dot), pass for an option (`-x`), or name a database file. The error
/// says why, with the name shown safely.
pub fn check_name(name: &str) -> Result<(), String> {
    let shown = || crate::text::printable(name.as_bytes());
    let bad = |why: &str| Err(format!("bad table name \"{}\": {why}", shown()));
    if name.is_empty() {
        return Err("empty table name".into());
    }
    if name.len() > MAX_NAME {
        return bad(&format!("longer than {MAX_NAME} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "_-.".contains(c)))
    {
        return bad(&format!(
            "character \"{}\" is not allowed (letters, digits, _, - and . only)",
            c.escape_default()
        ));
    }
    if name.starts_with(['.', '-']) {
        return bad("it may not start with . or -");
    }
    if name.contains("..") {
        return bad("it may not contain ..");
    }
    if let Some(suffix) = DATABASE_SUFFIXES.iter().find(|s| name.ends_with(*s)) {
        return bad(&format!(
            "it may not end in {suffix}, the name of a database file"
        ));
    }
    Ok(())
}

/// What the sender promises about the source it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

impl fmt::Display for Expected {
    /// `BYTES SHA256HEX`, as in the request.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.size)?;
        for byte in self.sha256 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// One `put-table` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutTable {
    /// The table's name, checked with [`check_name`].
    pub name: String,
    /// Size and checksum of the source, when the sender gave them.
    pub expected: Option<Expected>,
}

impl PutTable {
    /// Parses the words after the verb: `NAME` or `NAME BYTES SHA256HEX`
    /// (64 lowercase hex digits). The name is checked first.
    pub fn parse(args: &[&str]) -> Result<Self, String> {
        let usage = || {
            format!(
                "usage: {VERB} NAME [BYTES SHA256], e.g. {VERB} relay_recipients 1234 0123...ef"
            )
        };
        let (name, rest) = args.split_first().ok_or_else(usage)?;
        check_name(name)?;
        let expected = match rest {
            [] => None,
            [size, sha256] => Some(Expected {
                size: parse_size(size).ok_or_else(|| {
                    format!(
                        "bad size \"{}\": not a number of bytes",
                        crate::text::printable(size.as_bytes())
                    )
                })?,
                sha256: parse_sha256(sha256).ok_or_else(|| {
                    format!(
                        "bad checksum \"{}\": not 64 lowercase hex digits (SHA-256)",
                        crate::text::printable(sha256.as_bytes())
                    )
                })?,
            }),
            _ => return Err(usage()),
        };
        Ok(PutTable {
            name: (*name).to_owned(),
            expected,
        })
    }

    /// The request as the SSH command: `put-table NAME [BYTES SHA256HEX]`.
    pub fn command(&self) -> String {
        match &self.expected {
            Some(expected) => format!("{VERB} {} {expected}", self.name),
            None => format!("{VERB} {}", self.name),
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    // Digits only: no sign, no spaces, nothing u64::from_str would forgive.
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex = text.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Counts and hashes a source as it streams by, on either side.
#[derive(Debug, Clone, Default)]
pub struct Checksum {
    hasher: Sha256,
    size: u64,
}

impl Checksum {
    /// An empty count.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// Bytes so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size and SHA-256 of everything added.
    pub fn finish(self) -> Expected {
        Expected {
            size: self.size,
            sha256: self.hasher.finalize().into(),
        }
    }
}

/// Longest key [`SourceScan`] takes: Postfix table keys are addresses and
/// domains (an address is at most 254 bytes, a text line of smtpd at most
/// 2048); the bound keeps the scan's memory constant.
pub const MAX_KEY: usize = 4096;
/// Most keys [`SourceScan`] takes in one source: a set of 64-bit hashes of
/// that many keys stays under 20 MiB (2^21 buckets of 9 bytes), and
/// `table_max_size`'s default of 64 MiB holds a million recipients of 60
/// bytes.
pub const MAX_KEYS: usize = 1_500_000;

/// White space as postmap (C `isspace`) sees it; a newline ends a line.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

/// What makes a table source one rsmtp does not install: each names the
/// line (counted from 1) where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// A line starts with white space and is not blank or a comment:
    /// postmap would join it to the logical line before.
    Continuation {
        /// The line.
        line: u64,
    },
    /// A key with nothing after it: postmap warns and leaves it out.
    NoValue {
        /// The line.
        line: u64,
        /// The key, made printable.
        key: String,
    },
    /// A key given before (compared as postmap does, case folded): postmap
    /// keeps one of the two, texthash the last.
    Duplicate {
        /// The line of the second one.
        line: u64,
        /// The key, made printable.
        key: String,
    },
    /// A key over [`MAX_KEY`] bytes.
    KeyTooLong {
        /// The line.
        line: u64,
    },
    /// More than [`MAX_KEYS`] keys.
    TooManyKeys {
        /// The line of the first key too many.
        line: u64,
    },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Continuation { line } => write!(
                f,
                "line {line} starts with white space, which postmap would join to the line before; remove the leading white space"
            ),
            SourceError::NoValue { line, key } => write!(
                f,
                "line {line}: key \"{key}\" has no value (expected format: key whitespace value)"
            ),
            SourceError::Duplicate { line, key } => write!(
                f,
                "line {line}: key \"{key}\" is given a second time (keys are compared case-insensitively)"
            ),
            SourceError::KeyTooLong { line } => {
                write!(f, "line {line}: key longer than {MAX_KEY} bytes")
            }
            SourceError::TooManyKeys { line } => {
                write!(f, "line {line}: more than {MAX_KEYS} keys")
            }
        }
    }
}

/// Where the scan is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Nothing of the line seen yet.
    Start,
    /// Only white space so far: blank, a comment or a continuation.
    Indented,
    /// A comment (first non-blank `#`): skipped.
    Comment,
    /// Inside the key.
    Key,
    /// White space after the key.
    AfterKey,
    /// Inside the value: the line is complete as far as the scan cares.
    Value,
}

/// Checks a table source as it streams by, in pieces of any size, the way
/// postmap reads it (blank lines and lines whose first non-blank character
/// is `#` are skipped): no line may start with white space, every key has
/// a value, no key comes twice. Memory: one key ([`MAX_KEY`]) and a 64-bit
/// hash per key ([`MAX_KEYS`]).
///
/// Keys are compared by a hash of their folded form (lowercase, as
/// postmap's default `-f` off): two different keys are taken for one only
/// if their randomly keyed 64-bit hashes collide, about once in 10^7
/// pushes of a million keys, and a push after that is hashed anew.
#[derive(Debug, Clone)]
pub struct SourceScan {
    state: Scan,
    line: u64,
    key: Vec<u8>,
    keys: HashSet<u64>,
    hasher: RandomState,
    error: Option<SourceError>,
}

impl Default for SourceScan {
    fn default() -> Self {
        SourceScan {
            state: Scan::Start,
            line: 1,
            key: Vec::new(),
            keys: HashSet::new(),
            hasher: RandomState::new(),
            error: None,
        }
    }
}

impl SourceScan {
    /// A scan at the start of a source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `bytes`, the next piece of the source; after the first error
    /// the rest is ignored.
    pub fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.error.is_some() {
                return;
            }
            if byte == b'\n' {
                self.end_line();
                continue;
            }
            self.state = match (self.state, is_space(byte)) {
                // A comment, in column 1 or after white space.
                (Scan::Start | Scan::Indented, false) if byte == b'#' => Scan::Comment,
                (Scan::Start | Scan::Indented, true) => Scan::Indented,
                (Scan::Indented, false) => {
                    self.fail(SourceError::Continuation { line: self.line });
                    return;
                }
                (Scan::Comment, _) => Scan::Comment,
                (Scan::Start | Scan::Key, false) => {
                    if self.key.len() == MAX_KEY {
                        self.fail(SourceError::KeyTooLong { line: self.line });
                        return;
                    }
                    self.key.push(byte);
                    Scan::Key
                }
                (Scan::Key | Scan::AfterKey, true) => Scan::AfterKey,
                (Scan::AfterKey, false) => {
                    self.add_key();
                    Scan::Value
                }
                (Scan::Value, _) => Scan::Value,
            };
        }
    }

    /// Ends the scan (a last line without a newline counts): the number of
    /// keys, or the first error.
    pub fn finish(mut self) -> Result<usize, SourceError> {
        if self.error.is_none() && self.state != Scan::Start {
            self.end_line();
        }
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.keys.len()),
        }
    }

    /// The first error so far, if any.
    pub fn error(&self) -> Option<&SourceError> {
        self.error.as_ref()
    }

    fn end_line(&mut self) {
        if matches!(self.state, Scan::Key | Scan::AfterKey) {
            let key = self.shown_key();
            self.fail(SourceError::NoValue {
                line: self.line,
                key,
            });
            return;
        }
        self.state = Scan::Start;
        self.key.clear();
        self.line += 1;
    }

    fn add_key(&mut self) {
        let folded = match std::str::from_utf8(&self.key) {
            Ok(text) => text.to_lowercase().into_bytes(),
            Err(_) => self.key.to_ascii_lowercase(),
        };
        let hash = self.hasher.hash_one(&folded);
        if self.keys.contains(&hash) {
            let key = self.shown_key();
            self.fail(SourceError::Duplicate {
                line: self.line,
                key,
            });
        } else if self.keys.len() == MAX_KEYS {
            self.fail(SourceError::TooManyKeys { line: self.line });
        } else {
            self.keys.insert(hash);
        }
    }

    fn shown_key(&self) -> String {
        crate::text::printable(&self.key)
    }

    fn fail(&mut self, error: SourceError) {
        self.error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for name in ["relay_recipients", "transport", "virtual-2", "a.b", "X9"] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_that_leave_the_directory_or_hide_are_refused() {
        for name in [
            "",
            "../main.cf",
            "..",
            "a..b",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "-rf",
            "relay_recipients.db",
            "t.cdb",
            "t.lmdb",
            "a b",
            "a\nb",
            "ü",
            "a;b",
            &"x".repeat(MAX_NAME + 1),
        ] {
            let err = check_name(name).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(check_name(&"x".repeat(MAX_NAME)).is_ok());
        assert!(check_name("../main.cf").unwrap_err().contains('/'));
    }

    #[test]
    fn request_round_trip() {
        let mut sum = Checksum::new();
        sum.update(b"bob@relay.test OK\n");
        sum.update(b"");
        let expected = sum.finish();
        assert_eq!(expected.size, 18);
        let request = PutTable {
            name: "relay_recipients".into(),
            expected: Some(expected),
        };
        let command = request.command();
        assert!(
            command.starts_with("put-table relay_recipients 18 "),
            "{command}"
        );
        let words: Vec<&str> = command.split(' ').skip(1).collect();
        assert_eq!(PutTable::parse(&words), Ok(request));
        assert_eq!(
            PutTable::parse(&["t"]),
            Ok(PutTable {
                name: "t".into(),
                expected: None
            })
        );
    }

    #[test]
    fn sha256_of_a_known_input() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        let mut sum = Checksum::new();
        sum.update(b"abc");
        assert_eq!(
            sum.finish().to_string(),
            "3 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        let sha = "0".repeat(64);
        for args in [
            &[][..],
            &["t", "12"],
            &["t", "12", &sha, "x"],
            &["t", "-1", &sha],
            &["t", "+1", &sha],
            &["t", "99999999999999999999999", &sha],
            &["t", "1", &"A".repeat(64)],
            &["t", "1", &"0".repeat(63)],
            &["../main.cf", "1", &sha],
        ] {
            assert!(PutTable::parse(args).is_err(), "{args:?}");
        }
    }

    /// Scans `source` whole, one byte at a time, and split at every offset;
    /// all must agree.
    fn scan(source: &[u8]) -> Result<usize, SourceError> {
        let mut whole = SourceScan::new();
        whole.update(source);
        let whole = whole.finish();
        let mut bytes = SourceScan::new();
        for byte in source {
            bytes.update(std::slice::from_ref(byte));
        }
        assert_eq!(bytes.finish(), whole, "byte by byte: {source:?}");
        for cut in 0..=source.len() {
            let mut split = SourceScan::new();
            split.update(&source[..cut]);
            split.update(&source[cut..]);
            assert_eq!(split.finish(), whole, "split at {cut}: {source:?}");
        }
        whole
    }

    #[test]
    fn sources_postmap_reads_as_written_pass() {
        assert_eq!(scan(b""), Ok(0));
        assert_eq!(scan(b"bob@relay.test OK\n"), Ok(1));
        // No final newline, CRLF, tabs, blank and comment lines, indented
        // comments (postmap skips them, they continue nothing).
        assert_eq!(
            scan(b"# recipients\n\nbob@relay.test\tOK\r\n  # indented comment\n \t\n\r\ncarol@relay.test  OK  \neve@relay.test OK"),
            Ok(3)
        );
        assert_eq!(scan(b"#x\n#y"), Ok(0));
    }

    /// Regression (audit L6): postmap joined "  bob@relay.test OK" to the
    /// line before, so bob was missing from the table and the push got 250.
    #[test]
    fn a_continuation_line_is_refused_with_its_number() {
        let err = scan(b"carol@relay.test OK\n  bob@relay.test OK\n").unwrap_err();
        assert_eq!(err, SourceError::Continuation { line: 2 });
        assert!(
            err.to_string()
                .starts_with("line 2 starts with white space"),
            "{err}"
        );
        assert_eq!(
            scan(b"\tbob@relay.test OK\n"),
            Err(SourceError::Continuation { line: 1 })
        );
        assert_eq!(
            scan(b"a OK\n\n# c\n\tb OK"),
            Err(SourceError::Continuation { line: 4 })
        );
    }

    #[test]
    fn keys_without_values_and_repeated_keys_are_refused() {
        let no_value = |line, key: &str| SourceError::NoValue {
            line,
            key: key.into(),
        };
        assert_eq!(
            scan(b"a OK\nbob@relay.test\n"),
            Err(no_value(2, "bob@relay.test"))
        );
        assert_eq!(
            scan(b"bob@relay.test \t\r\n"),
            Err(no_value(1, "bob@relay.test"))
        );
        assert_eq!(scan(b"a OK\nb"), Err(no_value(2, "b")));
        let twice = scan(b"Bob@Relay.test OK\ncarol@relay.test OK\nbob@relay.test REJECT\n");
        assert_eq!(
            twice,
            Err(SourceError::Duplicate {
                line: 3,
                key: "bob@relay.test".into()
            })
        );
        // Non-ASCII keys fold too; bytes that are not UTF-8 are shown escaped.
        assert!(matches!(
            scan("J\u{f6}rg@x OK\nj\u{d6}rg@x OK\n".as_bytes()),
            Err(SourceError::Duplicate { line: 2, .. })
        ));
        assert_eq!(
            scan(b"\xff OK\n\xff OK\n"),
            Err(SourceError::Duplicate {
                line: 2,
                key: "\\xff".into()
            })
        );
    }

    #[test]
    fn a_key_over_the_limit_is_refused() {
        let mut source = vec![b'k'; MAX_KEY];
        source.extend_from_slice(b" OK\n");
        let mut ok = SourceScan::new();
        ok.update(&source);
        assert_eq!(ok.finish(), Ok(1));
        source.insert(0, b'k');
        let mut long = SourceScan::new();
        long.update(&source);
        assert_eq!(long.finish(), Err(SourceError::KeyTooLong { line: 1 }));
    }
}
