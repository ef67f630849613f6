//! OpenSSH `known_hosts` files: parsing them and checking a server's host key
//! against them, without I/O.
//!
//! This exists because libssh2's own reader, which the transport used to
//! call, does not know the `@revoked` and `@cert-authority` markers: it reads
//! `@revoked` as a host name, so a key the admin revoked was accepted and
//! mail delivered to whoever held it, where OpenSSH refuses the same file.
//!
//! What this module promises, after the `SSH_KNOWN_HOSTS FILE FORMAT`
//! section of sshd(8):
//!
//! - Every line is `[marker] patterns keytype base64-key [comment]`. Blank
//!   lines and `#` comments are skipped; a line that cannot be understood is
//!   skipped too and reported, with its line number, in
//!   [`KnownHosts::warnings`], never failing the whole file (OpenSSH skips
//!   them the same way).
//! - Host patterns are matched as OpenSSH's client matches them: against
//!   `host` for port 22 and `[host]:port` otherwise, ignoring ASCII case,
//!   with `*` and `?` wildcards, `!` negation (a negated match vetoes the
//!   line) and hashed `|1|salt|hash` names (HMAC-SHA1 keyed by the salt).
//!   One difference: a line for the bare `host` never vouches for another
//!   port, where OpenSSH's client falls back to it.
//! - A key listed in any `@revoked` line is [`Verdict::Revoked`] for every
//!   host, whichever line pins it too (see [`KnownHosts::check`]).
//! - `@cert-authority` lines are not trusted for anything: this reader does
//!   not check host certificates. They are listed by
//!   [`KnownHosts::cert_authority_lines`] so that the caller can refuse the
//!   configuration instead of silently ignoring what the admin asked for.
//! - The key-type field must agree with the type named inside the key blob.
//!
//! Keys are compared as the SSH wire-format blobs the servers send (what
//! libssh2's `Session::host_key` returns): the base64 field of a line decodes
//! to exactly that blob when it was written by `ssh-keyscan` or `ssh-keygen`.

use std::fmt;
use std::io;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The length of a SHA-1 digest: the salt and the hash of a hashed name.
const SHA1_LEN: usize = 20;

/// The outcome of checking a server's host key against a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A line whose patterns match the host pins exactly the offered key.
    Match,
    /// The offered key is listed in an `@revoked` line: refuse it, even if a
    /// line also pins it.
    Revoked,
    /// Keys are pinned for the host, but none is the offered one.
    Mismatch,
    /// No line pins any key for the host.
    NotFound,
}

/// A line that was skipped because it could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line number in the text given to [`KnownHosts::parse`].
    pub line: usize,
    /// What is wrong with it.
    pub problem: Problem,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A marker other than `@revoked` or `@cert-authority`, or a second one.
    UnknownMarker(String),
    /// The line ends before this field (`"host patterns"`, `"key type"` or
    /// `"key"`).
    MissingField(&'static str),
    /// A host field starting with `|` that is not `|1|salt|hash` with a
    /// 20-byte salt and hash in base64.
    BadHashedName,
    /// The key field is not base64.
    BadBase64,
    /// The decoded key is not an SSH public key blob (a type name followed
    /// by length-prefixed fields that fill it exactly): typically a key cut
    /// short by copy and paste.
    BadKeyBlob,
    /// The key-type field names another type than the key blob itself.
    TypeMismatch {
        /// The key-type field of the line.
        field: String,
        /// The type named inside the blob.
        blob: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownMarker(marker) => write!(
                f,
                "unknown marker {marker:?} (only one @revoked or @cert-authority is allowed)"
            ),
            Self::MissingField(field) => write!(f, "truncated line: no {field}"),
            Self::BadHashedName => {
                f.write_str("bad hashed host name (want |1|base64 salt|base64 hash)")
            }
            Self::BadBase64 => f.write_str("the key is not valid base64"),
            Self::BadKeyBlob => f.write_str("the key is not a well-formed SSH public key"),
            Self::TypeMismatch { field, blob } => {
                write!(
                    f,
                    "key type {field} does not match the key, which is {blob}"
                )
            }
        }
    }
}

/// A parsed `known_hosts` file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    /// Unmarked lines: the keys the file pins.
    pins: Vec<Pin>,
    /// Blobs from `@revoked` lines. Their host patterns are not kept: a
    /// revocation applies to every host (see [`KnownHosts::check`]).
    revoked: Vec<Vec<u8>>,
    cert_authority: Vec<usize>,
    warnings: Vec<Warning>,
}

#[derive(Debug, Clone)]
struct Pin {
    hosts: Hosts,
    key_type: String,
    blob: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Hosts {
    /// Comma-separated patterns, lowercased.
    Patterns(Vec<Pattern>),
    /// `|1|salt|hash`: the whole field is one hashed name, as in OpenSSH.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

#[derive(Debug, Clone)]
struct Pattern {
    negated: bool,
    glob: String,
}

impl KnownHosts {
    /// Parses the text of a `known_hosts` file. Never fails: lines it cannot
    /// use are skipped and listed in [`KnownHosts::warnings`].
    pub fn parse(text: &str) -> Self {
        let mut known = Self::default();
        // `lines` drops the `\r` of CRLF ends; splitting fields on ASCII
        // white space would drop a stray one anyway.
        for (index, line) in text.lines().enumerate() {
            known.parse_line(index + 1, line);
        }
        known
    }

    fn parse_line(&mut self, number: usize, line: &str) {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else {
            return;
        };
        if first.starts_with('#') {
            return;
        }
        let (marker, hosts) = match first {
            "@revoked" => (Marker::Revoked, fields.next()),
            "@cert-authority" => (Marker::CertAuthority, fields.next()),
            _ if first.starts_with('@') => {
                return self.warn(number, Problem::UnknownMarker(first.to_owned()));
            }
            _ => (Marker::None, Some(first)),
        };
        let Some(hosts) = hosts else {
            return self.warn(number, Problem::MissingField("host patterns"));
        };
        if marker == Marker::CertAuthority {
            // Not parsed further: the caller refuses any such line, and a
            // CA key must never be mistaken for a pinned host key.
            self.cert_authority.push(number);
            return;
        }
        if hosts.starts_with('@') {
            // OpenSSH allows one marker. Reading a second as a host pattern
            // is the very mistake this module exists to avoid.
            return self.warn(number, Problem::UnknownMarker(hosts.to_owned()));
        }
        let hosts = parse_hosts(hosts);
        let key = parse_key(fields.next(), fields.next());
        if marker == Marker::Revoked {
            // A revocation is about the key, not the host, so a bad host
            // field or a wrong type name does not cancel it: any blob that
            // decodes is refused. The line is still reported.
            if let Err(problem) = hosts {
                self.warn(number, problem);
            }
            match key {
                Ok((_, blob)) => self.revoked.push(blob),
                Err(bad) => {
                    self.revoked.extend(bad.blob);
                    self.warn(number, bad.problem);
                }
            }
            return;
        }
        match (hosts, key) {
            (Ok(hosts), Ok((key_type, blob))) => self.pins.push(Pin {
                hosts,
                key_type,
                blob,
            }),
            (Err(problem), _) | (Ok(_), Err(BadKey { problem, .. })) => {
                self.warn(number, problem);
            }
        }
    }

    fn warn(&mut self, line: usize, problem: Problem) {
        self.warnings.push(Warning { line, problem });
    }

    /// Lines that could not be used, in file order.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Line numbers of `@cert-authority` lines. Host certificates are not
    /// supported, so these lines are ignored by [`KnownHosts::check`]; a
    /// caller should treat a non-empty list as a configuration error rather
    /// than let the admin believe the CA is trusted.
    pub fn cert_authority_lines(&self) -> &[usize] {
        &self.cert_authority
    }

    /// Checks the host key a server offered, as an SSH wire-format blob,
    /// for `host` (a name or address, case ignored) on `port`.
    pub fn check(&self, host: &str, port: u16, key_blob: &[u8]) -> Verdict {
        // OpenSSH only honours an `@revoked` line whose host patterns match
        // the host being checked: load_hostkeys_file() in hostfile.c reads
        // the file with HKF_WANT_MATCH, which skips non-matching lines, and
        // check_key_not_revoked() only scans what was loaded (confirmed with
        // OpenSSH 9.2p1: a key revoked for another host, or for `*,!host`,
        // is accepted). Files of revoked keys meant for every host are its
        // separate RevokedHostKeys option. A revoked key is a stolen or
        // retired key, and it should not become good again by being offered
        // under another name, so we refuse it for every host.
        if self.revoked.iter().any(|revoked| revoked == key_blob) {
            return Verdict::Revoked;
        }
        let name = lookup_name(host, port);
        let mut pinned = false;
        for pin in self.pins_for(&name) {
            if pin.blob == key_blob {
                return Verdict::Match;
            }
            pinned = true;
        }
        // As in OpenSSH, a pinned key of another type is a mismatch too:
        // the caller asks for the pinned types first
        // (`host_key_algorithms`), so a server offering another type is not
        // the one we pinned.
        if pinned {
            Verdict::Mismatch
        } else {
            Verdict::NotFound
        }
    }

    /// Key types pinned for `host` on `port`, each once, in file order.
    pub fn pinned_key_types(&self, host: &str, port: u16) -> Vec<&str> {
        let name = lookup_name(host, port);
        let mut types: Vec<&str> = Vec::new();
        for pin in self.pins_for(&name) {
            if !types.contains(&pin.key_type.as_str()) {
                types.push(&pin.key_type);
            }
        }
        types
    }

    /// Host key algorithms to ask the server for, so that a server with
    /// several host keys offers one we pinned: an `ssh-rsa` key can be used
    /// with `rsa-sha2-512`, `rsa-sha2-256` or `ssh-rsa`; ECDSA and Ed25519
    /// keys with the algorithm of their own name. Other types are left out
    /// (libssh2 cannot verify them). Empty when nothing usable is pinned.
    pub fn host_key_algorithms(&self, host: &str, port: u16) -> Vec<&'static str> {
        let mut algorithms: Vec<&'static str> = Vec::new();
        for key_type in self.pinned_key_types(host, port) {
            let these: &[&'static str] = match key_type {
                "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
                "ssh-ed25519" => &["ssh-ed25519"],
                "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
                "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
                "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
                _ => &[],
            };
            for algorithm in these {
                if !algorithms.contains(algorithm) {
                    algorithms.push(algorithm);
                }
            }
        }
        algorithms
    }

    /// Number of keys the file pins, for any host: its unmarked, usable
    /// lines.
    pub fn pinned_count(&self) -> usize {
        self.pins.len()
    }

    /// Number of keys pinned for `host` on `port`.
    pub fn pinned_count_for(&self, host: &str, port: u16) -> usize {
        self.pins_for(&lookup_name(host, port)).count()
    }

    fn pins_for<'a: 'n, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Pin> + 'n {
        self.pins.iter().filter(move |pin| pin.hosts.apply_to(name))
    }

    /// Reads and parses the file at `path`: the only function of this module
    /// that does I/O, for callers with nothing better to do with the error.
    /// Bytes that are not UTF-8 (a Latin-1 comment, say) become U+FFFD
    /// instead of making the whole file unreadable.
    pub fn load(path: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

/// The name OpenSSH looks up (its `put_host_port()`): `[host]:port` unless
/// the port is 22. OpenSSH lowercases the host first, and hashes that.
///
/// Unlike OpenSSH's client, a non-22 port never falls back to lines for the
/// bare host: that fallback (sshconnect.c, "checking without port
/// identifier") would let a key pinned for one sshd vouch for any other
/// port of the same machine.
fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

fn parse_hosts(field: &str) -> Result<Hosts, Problem> {
    if field.starts_with('|') {
        return parse_hashed(field).ok_or(Problem::BadHashedName);
    }
    let patterns = field
        .split(',')
        .map(|pattern| {
            let (negated, glob) = match pattern.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, pattern),
            };
            Pattern {
                negated,
                glob: glob.to_ascii_lowercase(),
            }
        })
        .collect();
    Ok(Hosts::Patterns(patterns))
}

fn parse_hashed(field: &str) -> Option<Hosts> {
    let (salt, hash) = field.strip_prefix("|1|")?.split_once('|')?;
    let salt = BASE64.decode(salt).ok()?;
    let hash = BASE64.decode(hash).ok()?;
    (salt.len() == SHA1_LEN && hash.len() == SHA1_LEN).then_some(Hosts::Hashed { salt, hash })
}

impl Hosts {
    fn apply_to(&self, name: &str) -> bool {
        match self {
            Self::Hashed { salt, hash } => {
                let mut mac =
                    Hmac::<Sha1>::new_from_slice(salt).expect("HMAC takes keys of any length");
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Self::Patterns(patterns) => {
                let mut positive = false;
                for pattern in patterns {
                    if glob_match(pattern.glob.as_bytes(), name.as_bytes()) {
                        if pattern.negated {
                            return false;
                        }
                        positive = true;
                    }
                }
                positive
            }
        }
    }
}

/// OpenSSH's `match_pattern()`: `*` is any run of bytes, `?` any one byte,
/// anything else itself. Brackets are literal, so `[host]:port` patterns
/// need no escaping. Backtracks only to the last `*`, so it stays linear
/// in practice on hostile patterns.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and how much of the name it has eaten.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    star = Some((star_p, star_n + 1));
                    p = star_p + 1;
                    n = star_n + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What is wrong with a line's key, and its blob if it at least decodes
/// (which an `@revoked` line still uses).
struct BadKey {
    problem: Problem,
    blob: Option<Vec<u8>>,
}

/// The key type and blob of a line.
fn parse_key(key_type: Option<&str>, encoded: Option<&str>) -> Result<(String, Vec<u8>), BadKey> {
    let bad = |problem, blob| BadKey { problem, blob };
    // A `#` where a field should be starts the comment: the line is short.
    let Some(key_type) = key_type.filter(|t| !t.starts_with('#')) else {
        return Err(bad(Problem::MissingField("key type"), None));
    };
    let Some(encoded) = encoded.filter(|e| !e.starts_with('#')) else {
        return Err(bad(Problem::MissingField("key"), None));
    };
    let blob = BASE64
        .decode(encoded)
        .map_err(|_| bad(Problem::BadBase64, None))?;
    match blob_key_type(&blob) {
        None => Err(bad(Problem::BadKeyBlob, Some(blob))),
        Some(inner) if inner != key_type => {
            let problem = Problem::TypeMismatch {
                field: key_type.to_owned(),
                blob: inner.to_owned(),
            };
            Err(bad(problem, Some(blob)))
        }
        Some(_) => Ok((key_type.to_owned(), blob)),
    }
}

/// The type name a public key blob starts with, if the blob is well formed:
/// every plain key type (RSA, DSA, ECDSA, Ed25519 and their security-key
/// forms) is a type name and then SSH strings that fill the blob exactly;
/// for ECDSA the first of them is the curve, which the type name repeats.
fn blob_key_type(blob: &[u8]) -> Option<&str> {
    let mut rest = blob;
    let key_type = std::str::from_utf8(ssh_string(&mut rest)?).ok()?;
    let first = ssh_string(&mut rest)?;
    if let Some(curve) = key_type.strip_prefix("ecdsa-sha2-") {
        if first != curve.as_bytes() {
            return None;
        }
    }
    while !rest.is_empty() {
        ssh_string(&mut rest)?;
    }
    Some(key_type)
}

/// Takes one RFC 4251 string (u32 big-endian length, then the bytes) off
/// the front of `rest`.
fn ssh_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if len > tail.len() {
        return None;
    }
    let (string, tail) = tail.split_at(len);
    *rest = tail;
    Some(string)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_follows_openssh_match_pattern() {
        let cases: &[(&str, &str, bool)] = &[
            ("hub", "hub", true),
            ("hub", "hubx", false),
            ("*", "", true),
            ("*", "[hub]:2222", true),
            ("*.example.org", "a.b.example.org", true),
            ("*.example.org", "example.org", false),
            ("h?b", "hub", true),
            ("h?b", "hb", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("[hub]:22*", "[hub]:2222", true),
            ("**?", "x", true),
            ("", "", true),
            ("", "x", false),
        ];
        for &(pattern, name, want) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), name.as_bytes()),
                want,
                "{pattern:?} vs {name:?}"
            );
        }
    }
}
