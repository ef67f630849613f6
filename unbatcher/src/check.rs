//! `rsmtp check`: the hub's half of `bsmtp-ssh check`. A typo in rsmtp.conf
//! or in one key's forced command stops every session it touches, and the
//! leaf can only say that the session failed; this says which file, which
//! line and what, before a peer finds out.
//!
//! It reads rsmtp.conf as a session would, then every line of the peers'
//! `authorized_keys` files: each must have a forced command, which must
//! parse with rsmtp's own command line ([`crate::Args`]) and name a valid
//! peer whose policy (the command line's on top of the config's) loads.
//! One line per finding, `ok:` or `FAIL:`; the exit status is 0 only when
//! nothing failed.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::policy::{ConfigFile, DEFAULT_CONFIG};
use crate::run::RunError;

/// `rsmtp check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// rsmtp.conf to check (default: /etc/bsmtp-ssh/rsmtp.conf; a missing
    /// default file is fine, rsmtp then runs on its defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An `authorized_keys` file to check (repeatable; default: the
    /// peers' account's, see --user).
    #[arg(long = "authorized-keys", value_name = "FILE")]
    pub authorized_keys: Vec<PathBuf>,
    /// The peers' account whose keys are checked when no
    /// --authorized-keys is given: `~USER/.ssh/authorized_keys` and
    /// `DIR/USER` (see --authorized-keys-dir), those that exist.
    #[arg(long, value_name = "USER", default_value = crate::authorize::DEFAULT_USER)]
    pub user: String,
    /// The root-owned key directory sshd's `AuthorizedKeysFile` names
    /// with `%u` (default `/etc/ssh/authorized_keys`).
    #[arg(long = "authorized-keys-dir", value_name = "DIR")]
    pub authorized_keys_dir: Option<PathBuf>,
}

/// Collects findings and prints them as they come.
struct Findings<'a, W: Write> {
    out: &'a mut W,
    failed: usize,
}

impl<W: Write> Findings<'_, W> {
    fn ok(&mut self, what: &str, detail: &str) {
        let _ = writeln!(self.out, "ok:   {what}: {detail}");
    }

    fn fail(&mut self, what: &str, detail: &str) {
        self.failed += 1;
        let _ = writeln!(self.out, "FAIL: {what}: {detail}");
    }
}

/// Runs the checks; `Err` (exit status 78, `EX_CONFIG`) when any failed.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> Result<(), RunError> {
    let mut findings = Findings { out, failed: 0 };
    let (path, named) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let default = check_config(&path, named, &mut findings);
    let files = if args.authorized_keys.is_empty() {
        default_key_files(args)
    } else {
        args.authorized_keys.clone()
    };
    if files.is_empty() {
        findings.fail(
            "authorized_keys",
            &format!(
                "no keys file for user {} (neither ~{0}/.ssh/authorized_keys nor {}/{0} exists); give --authorized-keys FILE, or add a peer with rsmtp authorize",
                args.user,
                key_dir(args).display()
            ),
        );
    }
    for file in &files {
        check_keys_file(file, default.as_ref(), &mut findings);
    }
    let _ = findings.out.flush();
    match findings.failed {
        0 => Ok(()),
        n => Err(RunError::Config(format!(
            "check: {n} problem(s) found (the FAIL lines above)"
        ))),
    }
}

fn key_dir(args: &CheckArgs) -> PathBuf {
    args.authorized_keys_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::authorize::DEFAULT_KEYS_DIR))
}

/// The peers' account's key files that exist.
fn default_key_files(args: &CheckArgs) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(Some(user)) = nix::unistd::User::from_name(&args.user) {
        files.push(user.dir.join(".ssh/authorized_keys"));
    }
    files.push(key_dir(args).join(&args.user));
    files.retain(|f| f.exists());
    files
}

/// Loads one rsmtp.conf, reporting it; `None` when it does not load.
fn check_config(
    path: &Path,
    named: bool,
    findings: &mut Findings<'_, impl Write>,
) -> Option<ConfigFile> {
    let what = format!("config {}", path.display());
    match ConfigFile::load(path, named) {
        Ok(file) => {
            if path.exists() {
                let peers: Vec<&str> = file.peer.keys().map(String::as_str).collect();
                if let Some(bad) = peers
                    .iter()
                    .find_map(|p| bsmtp_session::policy::check_peer_name(p).err())
                {
                    findings.fail(&what, &format!("[peer] section: {bad}"));
                    return None;
                }
                findings.ok(
                    &what,
                    &format!(
                        "loads; peer sections: {}",
                        if peers.is_empty() {
                            "none".to_owned()
                        } else {
                            peers.join(", ")
                        }
                    ),
                );
            } else {
                findings.ok(&what, "absent: rsmtp runs on its defaults");
            }
            Some(file)
        }
        Err(err) => {
            findings.fail(&what, &format!("{err}; every session that reads it fails"));
            None
        }
    }
}

/// Checks every key line of one `authorized_keys` file.
fn check_keys_file(
    path: &Path,
    default: Option<&ConfigFile>,
    findings: &mut Findings<'_, impl Write>,
) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            findings.fail(
                &path.display().to_string(),
                &format!("cannot read it: {err}"),
            );
            return;
        }
    };
    let mut keys = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys += 1;
        let comment = line.rsplit(' ').next().unwrap_or_default();
        let what = format!(
            "{} line {} ({})",
            path.display(),
            i + 1,
            bsmtp::text::printable(comment.as_bytes())
        );
        match check_key_line(line, default) {
            Ok(detail) => findings.ok(&what, &detail),
            Err(err) => findings.fail(&what, &err),
        }
    }
    if keys == 0 {
        findings.fail(
            &path.display().to_string(),
            "no keys: no peer can log in; add one with rsmtp authorize",
        );
    }
}

/// Checks one key line; `Ok` says what the key may do.
fn check_key_line(line: &str, default: Option<&ConfigFile>) -> Result<String, String> {
    let Some(command) = forced_command(line) else {
        return Err(
            "no command=\"...\": this key runs anything the account may; give it rsmtp as its forced command (rsmtp authorize writes such lines)"
                .into(),
        );
    };
    let words = shell_words(&command).map_err(|err| {
        format!(
            "forced command \"{}\": {err}",
            bsmtp::text::printable(command.as_bytes())
        )
    })?;
    let program = words.first().map(String::as_str).unwrap_or_default();
    if Path::new(program)
        .file_name()
        .is_none_or(|name| name != "rsmtp")
    {
        return Ok(format!(
            "forced command runs {}, not rsmtp: not a peer's key, not checked",
            bsmtp::text::printable(program.as_bytes())
        ));
    }
    let args = crate::Args::try_parse_from(words.iter().map(OsString::from)).map_err(|err| {
        format!(
            "forced command does not parse: {}",
            bsmtp::text::one_line(&err.to_string())
        )
    })?;
    if args.command.is_some() {
        return Err("forced command runs an admin subcommand, not a session".into());
    }
    let peer = args.peer.as_deref().unwrap_or_default();
    let own;
    let file = match &args.config {
        Some(path) => {
            own = ConfigFile::load(path, true)?;
            &own
        }
        None => default.ok_or("rsmtp.conf does not load (see above)")?,
    };
    let policy = file.policy(peer, &args.policy)?;
    file.verbs(peer, &args.policy)?;
    file.tables(peer, &args.policy)?;
    file.inject(peer, args.inject.as_deref())?;
    let restrict = if line_options(line).split(',').any(|o| o == "restrict") {
        ""
    } else {
        "; warning: no \"restrict\" option, so this key may forward ports and open a pty"
    };
    Ok(format!(
        "peer {}, max_size {}, max_recipients {}{restrict}",
        policy.peer, policy.max_size, policy.max_recipients
    ))
}

/// The options field of a key line (empty when it starts with the key type).
fn line_options(line: &str) -> &str {
    let first = first_field(line);
    if crate::authorize::KEY_TYPES.contains(&first) || first.starts_with("ssh-") {
        ""
    } else {
        first
    }
}

/// The first whitespace-separated field, whitespace inside `"..."` kept.
fn first_field(line: &str) -> &str {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// The `command="..."` option's value, sshd's one escape (`\"`) undone.
fn forced_command(line: &str) -> Option<String> {
    let options = line_options(line);
    let start = options.find("command=\"")? + "command=\"".len();
    // Only at the start of an option: not e.g. "xcommand=".
    let before = &options[..start - "command=\"".len()];
    if !(before.is_empty() || before.ends_with(',')) {
        return None;
    }
    let mut value = String::new();
    let mut chars = options[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => value.push('"'),
                Some(other) => {
                    value.push('\\');
                    value.push(other);
                }
                None => return None,
            },
            '"' => return Some(value),
            c => value.push(c),
        }
    }
    None
}

/// Splits a forced command as `sh -c` would, for the plain commands
/// rsmtp's lines use: words, `'...'`, `"..."`, backslash escapes. Shell
/// syntax beyond that (variables, substitutions, redirections, several
/// commands) is refused: rsmtp's line must be one plain command.
fn shell_words(command: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unmatched '".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unmatched \"".into()),
                        },
                        Some('$' | '`') => {
                            return Err("shell substitution in the command".into())
                        }
                        Some(c) => w.push(c),
                        None => return Err("unmatched \"".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("a trailing backslash".into()),
            },
            '$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' | '*' | '?' | '[' | '~' | '#' => {
                return Err(format!(
                    "shell syntax ('{c}') in the command; rsmtp's forced command is one plain command"
                ))
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err("empty".into());
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnqKnqK leaf1";

    #[test]
    fn a_written_line_parses_and_a_typo_is_named() {
        let file = ConfigFile::default();
        let good = format!(
            "restrict,command=\"/usr/bin/rsmtp --peer leaf1 --allow-sender '*@leaf1.example'\" {KEY}"
        );
        let ok = check_key_line(&good, Some(&file)).unwrap();
        assert!(ok.contains("peer leaf1"), "{ok}");
        let typo =
            format!("restrict,command=\"/usr/bin/rsmtp --peer leaf1 --max-recipents 5\" {KEY}");
        let err = check_key_line(&typo, Some(&file)).unwrap_err();
        assert!(err.contains("--max-recipents"), "{err}");
        let bad_peer = format!("restrict,command=\"/usr/bin/rsmtp --peer ../x\" {KEY}");
        let err = check_key_line(&bad_peer, Some(&file)).unwrap_err();
        assert!(err.contains("bad peer name"), "{err}");
        let err = check_key_line(KEY, Some(&file)).unwrap_err();
        assert!(err.contains("no command="), "{err}");
        let shell = format!("restrict,command=\"rsmtp --peer a; sh\" {KEY}");
        let err = check_key_line(&shell, Some(&file)).unwrap_err();
        assert!(err.contains("shell syntax"), "{err}");
        let other = format!("restrict,command=\"/bin/false\" {KEY}");
        assert!(check_key_line(&other, Some(&file))
            .unwrap()
            .contains("not rsmtp"));
    }

    #[test]
    fn escaped_quotes_in_a_forced_command_are_sshds() {
        let line = format!("command=\"rsmtp --peer \\\"a b\\\"\",restrict {KEY}");
        assert_eq!(
            forced_command(&line).as_deref(),
            Some("rsmtp --peer \"a b\"")
        );
        assert_eq!(
            shell_words("rsmtp --peer \"a b\" 'c d'").unwrap(),
            ["rsmtp", "--peer", "a b", "c d"]
        );
    }
}
