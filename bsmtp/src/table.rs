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
//! NAME < file`, is accepted too, without that protection.

use std::fmt;

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
}
