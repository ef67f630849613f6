//! `rsmtp authorize`: adds a peer's key to the hub's `authorized_keys` with
//! the forced command and policy that make it a key which can only move mail.
//!
//! Written by hand, such a line is easy to get subtly wrong (no `restrict`, a
//! typo in the peer name, a sender pattern the shell expands), and a broken
//! `authorized_keys` locks every peer out. So the line is built from checked
//! parts, the file is replaced atomically (temp file, fsync, rename, fsync of
//! the directory), and anything doubtful is refused with the file untouched.
//!
//! sshd runs the forced command through the user's shell, so every word of it
//! is either plain (letters, digits, `@%+=:,./_-`) or single-quoted, and words
//! that could not be quoted safely are refused.
//!
//! When run as root on another user's home, every file operation is relative
//! to a descriptor of `~/.ssh` opened without following symlinks: that user
//! cannot redirect root's write elsewhere with a symlink.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, User};
use sysexits::ExitCode;

use bsmtp_session::policy::{self, SenderPattern};

/// The account whose `~/.ssh/authorized_keys` gets the line by default: the
/// one the peers log in as.
pub const DEFAULT_USER: &str = "bsmtp";
/// The root-owned key directory a hub's sshd may read instead of the
/// account's own file (`AuthorizedKeysFile /etc/ssh/authorized_keys/%u`),
/// so the peers' account cannot rewrite its keys.
pub const DEFAULT_KEYS_DIR: &str = "/etc/ssh/authorized_keys";
/// Largest `.pub` file we read (an RSA-16384 key is under 3 KiB).
pub const MAX_PUBLIC_KEY_FILE: u64 = 64 * 1024;
/// Key types OpenSSH accepts in `authorized_keys` that we allow. DSA is gone
/// from current OpenSSH; certificates need `cert-authority`, not a forced
/// command per key.
pub const KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
];

/// `rsmtp authorize`.
#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct AuthorizeArgs {
    /// The peer this key belongs to (becomes the forced command's --peer).
    #[arg(long, value_name = "NAME")]
    pub peer: String,
    /// The peer's public key file: one OpenSSH key line, as ssh-keygen writes.
    #[arg(long, value_name = "FILE.pub")]
    pub key: PathBuf,
    /// The policy written into the forced command, for this key.
    #[command(flatten)]
    pub policy: crate::policy::PolicyArgs,
    /// Add to the authorized keys file of this user (default: bsmtp): in
    /// its home, or DIR/USER with --authorized-keys-dir.
    #[arg(long, value_name = "USER", conflicts_with = "authorized_keys")]
    pub user: Option<String>,
    /// Add to this file instead.
    #[arg(long = "authorized-keys", value_name = "FILE")]
    pub authorized_keys: Option<PathBuf>,
    /// Add to DIR/USER, a root-owned file (0644) in a root-owned directory,
    /// for sshd's `AuthorizedKeysFile DIR/%u`: the peers' account cannot
    /// rewrite its own keys. Without it, DIR is `/etc/ssh/authorized_keys`
    /// when that holds a file for the user already. Needs root.
    #[arg(
        long = "authorized-keys-dir",
        value_name = "DIR",
        conflicts_with = "authorized_keys"
    )]
    pub authorized_keys_dir: Option<PathBuf>,
    /// The rsmtp program the forced command runs (default: this one).
    #[arg(long = "rsmtp", value_name = "PATH")]
    pub rsmtp: Option<PathBuf>,
    /// Print the line, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why nothing was added; each maps to one exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizeError {
    /// Bad input: peer name, key file, sender pattern, or the key is already
    /// there.
    #[error("{0}")]
    Refused(String),
    /// The user does not exist.
    #[error("{0}")]
    NoUser(String),
    /// Reading the key or writing `authorized_keys` failed.
    #[error("{0}")]
    Io(String),
}

impl AuthorizeError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            AuthorizeError::Refused(_) => ExitCode::DataErr,
            AuthorizeError::NoUser(_) => ExitCode::NoUser,
            AuthorizeError::Io(_) => ExitCode::CantCreat,
        }
    }
}

/// One OpenSSH public key: `type base64 [comment]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key type, one of [`KEY_TYPES`].
    pub kind: String,
    /// The key itself, base64 as written.
    pub blob: String,
    /// The comment (often user@host); may be empty.
    pub comment: String,
}

impl PublicKey {
    /// Parses the contents of a `.pub` file: exactly one key line (blank and
    /// `#` lines aside), a known type, base64 that decodes to a key of that
    /// type.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains("PRIVATE KEY") {
            return Err("this is a private key; give the .pub file next to it".into());
        }
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let line = match lines.as_slice() {
            [line] => *line,
            [] => return Err("no public key in it".into()),
            _ => return Err(format!("{} lines; give a file with one key", lines.len())),
        };
        if line.chars().any(char::is_control) {
            return Err("control characters in the key line".into());
        }
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let blob = words.next().unwrap_or_default();
        let comment = words.collect::<Vec<_>>().join(" ");
        if !KEY_TYPES.contains(&kind) {
            return Err(format!(
                "unknown key type \"{}\" (known: {}); give a plain OpenSSH .pub line without options",
                bsmtp::text::printable(kind.as_bytes()),
                KEY_TYPES.join(", ")
            ));
        }
        let decoded = base64_decode(blob).ok_or("the key is not valid base64")?;
        // The blob starts with its own type as an SSH string: a key pasted
        // under the wrong type, or truncated, fails here.
        let inner = decoded
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| decoded.get(4..4 + n));
        if inner != Some(kind.as_bytes()) || decoded.len() <= 4 + kind.len() {
            return Err(format!("the key data is not a {kind} key"));
        }
        Ok(PublicKey {
            kind: kind.into(),
            blob: blob.into(),
            comment,
        })
    }
}

/// Decodes standard base64 with padding; None if it is not exactly that.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    let quads = bytes.chunks_exact(4);
    if bytes.is_empty() || !quads.remainder().is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let last = bytes.len() / 4 - 1;
    for (i, quad) in quads.enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && i != last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        for _ in 0..pad {
            n <<= 6;
        }
        let [_, a, b, c] = n.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - pad]);
    }
    Some(out)
}

/// One word of the forced command, safe for sshd's `sh -c` and inside
/// `command="..."`: plain, or single-quoted; None when neither is safe.
fn shell_word(word: &str) -> Option<String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b);
    if !word.is_empty() && word.bytes().all(plain) {
        return Some(word.to_owned());
    }
    let unquotable = |c: char| c == '\'' || c == '"' || c == '\\' || c.is_whitespace();
    if word.is_empty() || word.chars().any(|c| unquotable(c) || c.is_control()) {
        return None;
    }
    Some(format!("'{word}'"))
}

/// The forced command for `args`, running `rsmtp`.
pub fn forced_command(args: &AuthorizeArgs, rsmtp: &Path) -> Result<String, AuthorizeError> {
    let refused = AuthorizeError::Refused;
    policy::check_peer_name(&args.peer).map_err(refused)?;
    let program = rsmtp
        .to_str()
        .filter(|p| rsmtp.is_absolute() && shell_word(p).is_some());
    let Some(program) = program else {
        return Err(refused(format!(
            "rsmtp path \"{}\": give an absolute path without quotes, backslashes or spaces (--rsmtp PATH)",
            bsmtp::text::printable(rsmtp.as_os_str().as_encoded_bytes())
        )));
    };
    let mut words = vec![program.to_owned(), "--peer".into(), args.peer.clone()];
    let patterns = (args.policy.allow_sender.iter().map(|p| ("sender", p)))
        .chain(args.policy.allow_recipient.iter().map(|p| ("recipient", p)));
    for (what, pattern) in patterns {
        SenderPattern::parse(pattern).map_err(refused)?;
        if pattern.contains(['"', '\\']) || pattern.chars().any(char::is_whitespace) {
            return Err(refused(format!(
                "{what} pattern \"{}\": quotes, backslashes and spaces cannot go into a forced command",
                bsmtp::text::printable(pattern.as_bytes())
            )));
        }
        words.extend([format!("--allow-{what}"), pattern.clone()]);
    }
    if let Some(size) = args.policy.max_size {
        words.extend(["--max-size".into(), size.to_string()]);
    }
    if let Some(n) = args.policy.max_recipients {
        words.extend(["--max-recipients".into(), n.to_string()]);
    }
    if args.policy.check_header_from {
        words.push("--check-header-from".into());
    }
    if let Some(n) = args.policy.hard_error_limit {
        words.extend(["--hard-error-limit".into(), n.to_string()]);
    }
    for verb in &args.policy.allow_verb {
        if !crate::policy::GRANTABLE_VERBS.contains(&verb.as_str()) {
            return Err(refused(format!(
                "--allow-verb \"{}\": known verbs are {}",
                bsmtp::text::printable(verb.as_bytes()),
                crate::policy::GRANTABLE_VERBS.join(", ")
            )));
        }
        words.extend(["--allow-verb".into(), verb.clone()]);
    }
    for table in &args.policy.allow_table {
        // A plain name is also a plain shell word.
        bsmtp::table::check_name(table).map_err(|err| refused(format!("--allow-table: {err}")))?;
        words.extend(["--allow-table".into(), table.clone()]);
    }
    let quoted = words
        .iter()
        .map(|w| {
            shell_word(w).ok_or_else(|| {
                refused(format!(
                    "\"{}\" cannot be quoted safely for the shell sshd runs the forced command with",
                    bsmtp::text::printable(w.as_bytes())
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(quoted.join(" "))
}

/// The whole `authorized_keys` line for `key`.
pub fn authorized_keys_line(
    args: &AuthorizeArgs,
    rsmtp: &Path,
    key: &PublicKey,
) -> Result<String, AuthorizeError> {
    let command = forced_command(args, rsmtp)?;
    // A key without a comment gets the peer's name, so the admin can tell
    // lines apart.
    let comment = if key.comment.is_empty() {
        &args.peer
    } else {
        &key.comment
    };
    Ok(format!(
        "restrict,command=\"{command}\" {} {} {comment}",
        key.kind, key.blob
    ))
}

/// True when `existing` (an `authorized_keys` file) already has the key
/// `blob`, with whatever options.
pub fn has_key(existing: &str, blob: &str) -> bool {
    existing
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .any(|line| words_outside_quotes(line).any(|w| w == blob))
}

/// Splits an `authorized_keys` line at whitespace that is not inside the
/// double quotes of an option such as `command="..."`.
fn words_outside_quotes(line: &str) -> impl Iterator<Item = &str> {
    let mut words = Vec::new();
    let (mut start, mut quoted, mut escaped) = (None, false, false);
    for (i, c) in line.char_indices() {
        if c.is_whitespace() && !quoted {
            if let Some(s) = start.take() {
                words.push(&line[s..i]);
            }
            continue;
        }
        start.get_or_insert(i);
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push(&line[s..]);
    }
    words.into_iter()
}

/// Where the line goes and who must own it.
struct Target {
    /// The directory holding the file, opened without following a symlink
    /// at its last component.
    dir: OwnedFd,
    /// The directory's path, for messages.
    dir_path: PathBuf,
    /// The file's name in `dir`.
    name: PathBuf,
    /// Owner for the new file, when we are root and know it.
    owner: Option<(Uid, Gid)>,
    /// The file's mode: 0600 for the account's own, 0644 for a root-owned
    /// one that sshd reads as root and the account may read too.
    mode: u32,
}

/// Runs `rsmtp authorize`: prints the line, adds it unless `--dry-run`.
pub fn run(args: &AuthorizeArgs, out: &mut impl Write) -> Result<(), AuthorizeError> {
    let io = |what: String| move |err: std::io::Error| AuthorizeError::Io(format!("{what}: {err}"));
    let rsmtp = match &args.rsmtp {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(io("cannot find the running rsmtp; give --rsmtp PATH".into()))?,
    };
    let key = read_key(&args.key)?;
    let line = authorized_keys_line(args, &rsmtp, &key)?;
    let _ = writeln!(out, "rsmtp: forced command runs {}", rsmtp.display());
    if args.dry_run {
        let _ = writeln!(out, "{line}");
        return Ok(());
    }
    let target = open_target(args)?;
    let path = target.dir_path.join(&target.name);
    append(&target, &key, &line)?;
    let _ = writeln!(out, "rsmtp: added to {}:", path.display());
    let _ = writeln!(out, "{line}");
    if args.authorized_keys.is_none() {
        give_a_shell(args.user.as_deref().unwrap_or(DEFAULT_USER), out)?;
    }
    Ok(())
}

/// The shell sshd runs the forced command with. The package makes the
/// account with none (`nologin`): a leaf never logs in as it, so it gets
/// no login it does not need. Authorizing a peer's key makes this host a
/// hub, where sshd runs the forced command through the account's shell
/// and fails every session with `nologin`: so the account gets
/// `/bin/sh` here, as root, and says so.
fn give_a_shell(name: &str, out: &mut impl Write) -> Result<(), AuthorizeError> {
    const SHELL: &str = "/bin/sh";
    let Ok(Some(user)) = User::from_name(name) else {
        return Ok(());
    };
    let shell = user
        .shell
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if !matches!(shell, "nologin" | "false" | "") {
        return Ok(());
    }
    if !Uid::effective().is_root() {
        return Err(AuthorizeError::Refused(format!(
            "the key is added, but sshd cannot run its forced command: {name}'s shell is {}; as root: usermod --shell {SHELL} {name}",
            user.shell.display()
        )));
    }
    let mut usermod = bsmtp_session::child::command("/usr/sbin/usermod");
    usermod.args(["--shell", SHELL, name]);
    let status = usermod
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|err| AuthorizeError::Io(format!("/usr/sbin/usermod: {err}")))?;
    if !status.success() {
        return Err(AuthorizeError::Io(format!(
            "usermod --shell {SHELL} {name}: {status}; sshd cannot run the forced command until {name} has a shell"
        )));
    }
    let _ = writeln!(
        out,
        "rsmtp: {name}'s shell was {}, now {SHELL}: sshd runs the forced command through it",
        user.shell.display()
    );
    Ok(())
}

fn read_key(path: &Path) -> Result<PublicKey, AuthorizeError> {
    let io = |err: std::io::Error| AuthorizeError::Io(format!("{}: {err}", path.display()));
    let mut text = String::new();
    File::open(path)
        .map_err(io)?
        .take(MAX_PUBLIC_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|err| {
            AuthorizeError::Refused(format!(
                "{}: not an OpenSSH public key ({err})",
                path.display()
            ))
        })?;
    if text.len() as u64 > MAX_PUBLIC_KEY_FILE {
        return Err(AuthorizeError::Refused(format!(
            "{}: larger than {MAX_PUBLIC_KEY_FILE} bytes, not a public key",
            path.display()
        )));
    }
    PublicKey::parse(&text).map_err(|err| {
        AuthorizeError::Refused(format!(
            "{}: not one OpenSSH public key: {err}",
            path.display()
        ))
    })
}

fn errno(what: &str, err: Errno) -> AuthorizeError {
    AuthorizeError::Io(format!("{what}: {}", std::io::Error::from(err)))
}

fn open_dir_nofollow(at: Option<&OwnedFd>, path: &Path) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(dir) => fcntl::openat(dir, path, flags, Mode::empty()),
        None => fcntl::open(path, flags, Mode::empty()),
    }
}

fn open_target(args: &AuthorizeArgs) -> Result<Target, AuthorizeError> {
    let root = Uid::effective().is_root();
    if let Some(file) = &args.authorized_keys {
        let (Some(parent), Some(name)) = (file.parent(), file.file_name()) else {
            return Err(AuthorizeError::Refused(format!(
                "{}: not a file name",
                file.display()
            )));
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir =
            open_dir_nofollow(None, parent).map_err(|e| errno(&parent.display().to_string(), e))?;
        return Ok(Target {
            dir,
            dir_path: parent.to_owned(),
            name: name.into(),
            owner: None,
            mode: 0o600,
        });
    }
    let name = args.user.as_deref().unwrap_or(DEFAULT_USER);
    if let Some(dir) = keys_dir(args, name) {
        return open_keys_dir(&dir, name);
    }
    let user = User::from_name(name)
        .map_err(|e| errno(&format!("looking up user {name}"), e))?
        .ok_or_else(|| {
            AuthorizeError::NoUser(format!(
                "no user \"{}\" in the passwd database; create it (useradd -r -m -s /bin/sh {DEFAULT_USER}) or give --user",
                bsmtp::text::printable(name.as_bytes())
            ))
        })?;
    let home = open_dir_nofollow(None, &user.dir).map_err(|e| {
        errno(
            &format!("home directory {} of user {name}", user.dir.display()),
            e,
        )
    })?;
    let ssh = user.dir.join(".ssh");
    match nix::sys::stat::mkdirat(&home, ".ssh", Mode::from_bits_truncate(0o700)) {
        Ok(()) if root => {
            // Ours until chowned; the user must own it or sshd's StrictModes
            // refuses every key in it.
            nix::unistd::fchownat(
                &home,
                ".ssh",
                Some(user.uid),
                Some(user.gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| errno(&ssh.display().to_string(), e))?;
        }
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(errno(&format!("creating {}", ssh.display()), e)),
    }
    let dir = open_dir_nofollow(Some(&home), Path::new(".ssh")).map_err(|e| {
        if e == Errno::ELOOP || e == Errno::ENOTDIR {
            AuthorizeError::Refused(format!(
                "{}: a symlink or not a directory: refused",
                ssh.display()
            ))
        } else {
            errno(&ssh.display().to_string(), e)
        }
    })?;
    let meta = File::from(dir.try_clone().map_err(io_err(&ssh))?)
        .metadata()
        .map_err(io_err(&ssh))?;
    if root && meta.uid() != user.uid.as_raw() && meta.uid() != 0 {
        return Err(AuthorizeError::Refused(format!(
            "{} is owned by uid {}, not by {name} or root: refused",
            ssh.display(),
            meta.uid()
        )));
    }
    Ok(Target {
        dir,
        dir_path: ssh,
        name: "authorized_keys".into(),
        owner: root.then_some((user.uid, user.gid)),
        mode: 0o600,
    })
}

/// The root-owned key directory to write in: `--authorized-keys-dir`, or
/// [`DEFAULT_KEYS_DIR`] when it already holds `user`'s file (the hub was
/// set up that way, and a key added to `~/.ssh` would go unread).
fn keys_dir(args: &AuthorizeArgs, user: &str) -> Option<PathBuf> {
    if let Some(dir) = &args.authorized_keys_dir {
        return Some(dir.clone());
    }
    let default = Path::new(DEFAULT_KEYS_DIR);
    default
        .join(user)
        .symlink_metadata()
        .is_ok()
        .then(|| default.to_path_buf())
}

/// `DIR/USER`, root's file in root's directory: the directory is made
/// (0755) when missing, and refused when not root's or writable by
/// others, since then the account could still replace its keys.
fn open_keys_dir(dir: &Path, name: &str) -> Result<Target, AuthorizeError> {
    if !Uid::effective().is_root() {
        return Err(AuthorizeError::Refused(format!(
            "{}/{name} is a root-owned file: run rsmtp authorize as root",
            dir.display()
        )));
    }
    let user = User::from_name(name).map_err(|e| errno(&format!("looking up user {name}"), e))?;
    if user.is_none() {
        return Err(AuthorizeError::NoUser(format!(
            "no user \"{}\" in the passwd database; create it (useradd -r -m -s /bin/sh {DEFAULT_USER}) or give --user",
            bsmtp::text::printable(name.as_bytes())
        )));
    }
    // The user's name becomes a file name: no path in it.
    if name.contains('/') || name.starts_with('.') {
        return Err(AuthorizeError::Refused(format!(
            "user name \"{}\" cannot name a file in {}",
            bsmtp::text::printable(name.as_bytes()),
            dir.display()
        )));
    }
    match nix::unistd::mkdir(dir, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(errno(&format!("creating {}", dir.display()), e)),
    }
    let fd = open_dir_nofollow(None, dir).map_err(|e| {
        if e == Errno::ELOOP || e == Errno::ENOTDIR {
            AuthorizeError::Refused(format!(
                "{}: a symlink or not a directory: refused",
                dir.display()
            ))
        } else {
            errno(&dir.display().to_string(), e)
        }
    })?;
    let meta = File::from(fd.try_clone().map_err(io_err(dir))?)
        .metadata()
        .map_err(io_err(dir))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(AuthorizeError::Refused(format!(
            "{}: owned by uid {}, mode {:o}: the directory of root-owned keys must be root's and writable by root only (chown root: {0}; chmod 755 {0})",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(Target {
        dir: fd,
        dir_path: dir.to_owned(),
        name: name.into(),
        owner: Some((Uid::from_raw(0), Gid::from_raw(0))),
        mode: 0o644,
    })
}

/// Refuses an existing `authorized_keys` that is not this account's own
/// file: one with a second name (a hard link: what we write there would
/// also change the file under that other name, perhaps another account's
/// keys), or one owned by neither root nor the account (sshd's `StrictModes`
/// would ignore it, or someone else controls it).
fn refuse_foreign(
    target: &Target,
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), AuthorizeError> {
    if meta.nlink() > 1 {
        return Err(AuthorizeError::Refused(format!(
            "{}: has {} names (hard links): refused; give the account a file of its own (cp it, rm the link, mv the copy into place)",
            path.display(),
            meta.nlink()
        )));
    }
    let expected = match target.owner {
        Some((uid, _)) => uid.as_raw(),
        None => File::from(target.dir.try_clone().map_err(io_err(path))?)
            .metadata()
            .map_err(io_err(path))?
            .uid(),
    };
    if expected == 0 && meta.uid() != 0 {
        return Err(AuthorizeError::Refused(format!(
            "{}: owned by uid {}, not root: in the directory of root-owned keys the account could rewrite it; refused (chown root: {0})",
            path.display(),
            meta.uid()
        )));
    }
    if meta.uid() != 0 && meta.uid() != expected {
        return Err(AuthorizeError::Refused(format!(
            "{}: owned by uid {}, neither root nor the account (uid {expected}): refused; chown it to the account",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuthorizeError + '_ {
    move |err| AuthorizeError::Io(format!("{}: {err}", path.display()))
}

/// Appends `line` to the target file atomically, refusing a key already
/// there.
fn append(target: &Target, key: &PublicKey, line: &str) -> Result<(), AuthorizeError> {
    let path = target.dir_path.join(&target.name);
    let at = |e: Errno| errno(&path.display().to_string(), e);
    // Two admins adding keys at once must not lose one of the lines.
    let lock = nix::fcntl::Flock::lock(
        target.dir.try_clone().map_err(io_err(&path))?,
        nix::fcntl::FlockArg::LockExclusive,
    )
    .map_err(|(_, e)| at(e))?;
    let (mut existing, mut owner) = (String::new(), target.owner);
    match fcntl::openat(
        &target.dir,
        &target.name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut file = File::from(fd);
            let meta = file.metadata().map_err(io_err(&path))?;
            if !meta.is_file() {
                return Err(AuthorizeError::Refused(format!(
                    "{}: not a regular file",
                    path.display()
                )));
            }
            refuse_foreign(target, &path, &meta)?;
            file.read_to_string(&mut existing).map_err(io_err(&path))?;
            if Uid::effective().is_root() && owner.is_none() {
                owner = Some((Uid::from_raw(meta.uid()), Gid::from_raw(meta.gid())));
            }
        }
        Err(Errno::ENOENT) => {}
        Err(Errno::ELOOP) => {
            return Err(AuthorizeError::Refused(format!(
                "{}: a symlink: refused",
                path.display()
            )))
        }
        Err(e) => return Err(at(e)),
    }
    if has_key(&existing, &key.blob) {
        return Err(AuthorizeError::Refused(format!(
            "{}: this {} key is already there; edit or remove that line first",
            path.display(),
            key.kind
        )));
    }
    if !existing.is_empty() && !existing.ends_with('\n') {
        existing.push('\n');
    }
    existing.push_str(line);
    existing.push('\n');

    let options = bsmtp_session::atomic::Options {
        mode: target.mode,
        owner,
    };
    bsmtp_session::atomic::replace_at(
        &target.dir,
        &target.dir_path,
        &target.name,
        existing.as_bytes(),
        options,
    )
    .map_err(|err| AuthorizeError::Io(err.to_string()))?;
    drop(lock);
    Ok(())
}
