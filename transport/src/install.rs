//! `bsmtp-ssh postfix-install`: adds the leaf's bsmtp transport to a Postfix
//! instance with Postfix's own tools.
//!
//! The snippets in `postfix-snippets/leaf/` are the single source: they are
//! compiled in, their placeholders replaced, and each entry applied with
//! `postconf -e` (main.cf) or `postconf -M` (master.cf), so Postfix does the
//! parsing, the locking and the atomic rename. Every item is read first and
//! written only when it differs, so a second run changes nothing; `--dry-run`
//! prints the exact commands and runs none of them. Routing
//! (`default_transport`, `transport_maps`) stays the administrator's choice
//! and is only suggested.
//!
//! It never replaces someone else's service: a master.cf entry of the same
//! name and type that is not recognisably bsmtp-ssh's ([`is_ours`]), such as
//! a content filter's re-injection smtpd on `127.0.0.1:10025` or Debian's
//! stock `bsmtp` pipe(8) entry (met only with `--transport bsmtp`: the
//! default name, [`DEFAULT_TRANSPORT`], sits beside it), stops the install
//! before the first write (exit [`EXIT_NOT_OURS`], the entry shown) unless
//! `--force` says to replace it. An entry this tool wrote before, in any
//! version and with any values, is ours to update.
//!
//! `--remove` undoes it: every master.cf entry that is recognisably
//! bsmtp-ssh's, whatever its name ([`ours_to_remove`], the same marks as
//! [`is_ours`]), goes with `postconf -MX`, and the main.cf settings the
//! snippets made for it with `postconf -X`. Nothing else is touched; while
//! main.cf or a transport table still routes mail to one of those
//! transports, it refuses (exit [`EXIT_STILL_ROUTED`], each route named),
//! since Postfix would then defer that mail for ever.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;
use sysexits::ExitCode;

/// `postfix-snippets/leaf/master.cf`, with placeholders.
pub const LEAF_MASTER_CF: &str = include_str!("../../postfix-snippets/leaf/master.cf");
/// `postfix-snippets/leaf/main.cf`, with placeholders.
pub const LEAF_MAIN_CF: &str = include_str!("../../postfix-snippets/leaf/main.cf");
/// `postfix-snippets/leaf/batching-master.cf`: spawn(8) and lmtp(8) entries.
pub const BATCHING_MASTER_CF: &str = include_str!("../../postfix-snippets/leaf/batching-master.cf");
/// `postfix-snippets/leaf/batching-main.cf`.
pub const BATCHING_MAIN_CF: &str = include_str!("../../postfix-snippets/leaf/batching-main.cf");
/// `postfix-snippets/spool/master.cf`: the spool transport (enqueue).
pub const SPOOL_MASTER_CF: &str = include_str!("../../postfix-snippets/spool/master.cf");
/// `postfix-snippets/spool/main.cf`: its routing suggestion.
pub const SPOOL_MAIN_CF: &str = include_str!("../../postfix-snippets/spool/main.cf");
/// `postfix-snippets/hub/inject-master.cf`: the hub's fast injection
/// listener (rsmtp `--inject smtp:...`).
pub const HUB_INJECT_MASTER_CF: &str = include_str!("../../postfix-snippets/hub/inject-master.cf");

/// The hub listener's default `--listen`: the UNIX socket, which only
/// root, postfix and group postdrop can reach. A TCP listener on loopback
/// lets every local process relay through it and forge XFORWARD.
pub const DEFAULT_LISTEN: &str = "unix";
/// The hub listener's service name with `--listen unix`: its socket is
/// `public/bsmtp-inject` in the queue directory.
pub const INJECT_SOCKET_SERVICE: &str = "bsmtp-inject";

/// The pipe(8) transport's default service name: not `bsmtp`, which
/// Debian's stock master.cf uses for a program of its own
/// (`/usr/lib/bsmtp/bsmtp`) that the installer must leave alone.
pub const DEFAULT_TRANSPORT: &str = "bsmtp-ssh";
/// The default prefix of the batching (`bsmtp-PEER`) and spool
/// (`bsmtp-spool`) services' names.
pub const DEFAULT_SERVICE_PREFIX: &str = "bsmtp";

/// Where the Debian package installs the binary: the fallback for `--program`
/// when the running binary's path is unknown.
pub const DEFAULT_PROGRAM: &str = "/usr/sbin/bsmtp-ssh";

/// `bsmtp-ssh postfix-install`.
#[derive(Debug, Args)]
// Command-line switches: each is its own flag, as postfix-install's users
// type them.
#[allow(clippy::struct_excessive_bools)]
pub struct InstallArgs {
    /// Print what would change and the postconf commands, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The Postfix instance's config directory (default: Postfix's own).
    #[arg(long = "config-directory", value_name = "DIR")]
    pub config_directory: Option<PathBuf>,
    /// The pipe(8) transport's master.cf service name, also the prefix of
    /// its main.cf settings [default: bsmtp-ssh]. With --batching or
    /// --spool, the prefix of their services' names [default: bsmtp, for
    /// bsmtp-PEER and bsmtp-spool].
    #[arg(long, value_name = "NAME")]
    pub transport: Option<String>,
    /// The account pipe(8) (or spawn(8), with --batching) runs bsmtp-ssh
    /// as (never root or the `mail_owner`).
    #[arg(long, value_name = "USER", default_value = "bsmtp")]
    pub user: String,
    /// The bsmtp-ssh binary named in master.cf (default: this binary).
    #[arg(long, value_name = "PATH")]
    pub program: Option<PathBuf>,
    /// The bsmtp-ssh config file naming the peers.
    #[arg(
        long,
        value_name = "FILE",
        default_value = crate::config::DEFAULT_CONFIG
    )]
    pub config: PathBuf,
    /// The postconf(1) to run.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/postconf")]
    pub postconf: PathBuf,
    /// The postfix(1) to run for `postfix check`.
    #[arg(long, value_name = "PATH", default_value = "/usr/sbin/postfix")]
    pub postfix: PathBuf,
    /// Install the batching transport (spawn(8) and lmtp(8): many messages
    /// per SSH session) for --peer instead of the pipe(8) transport.
    #[arg(long, requires = "peer")]
    pub batching: bool,
    /// The peer of the batching transport: a [peer.NAME] section of
    /// --config.
    #[arg(long, value_name = "NAME", requires = "batching")]
    pub peer: Option<String>,
    /// Install the spool transport (`bsmtp-ssh enqueue`, service
    /// TRANSPORT-spool) for store-and-forward: on a leaf, sent later by
    /// `bsmtp-ssh flush`; on a hub, for leaves that `pull` (then --user is
    /// the account their keys log in as).
    #[arg(long, conflicts_with = "batching")]
    pub spool: bool,
    /// Install the hub's fast injection listener instead: a dedicated
    /// smtpd that rsmtp `--inject smtp:...` hands received mail to.
    #[arg(long, conflicts_with_all = ["batching", "spool"])]
    pub hub: bool,
    /// Where the --hub listener listens: `unix` (the default), the socket
    /// public/bsmtp-inject in the queue directory, reachable only by root,
    /// postfix and group postdrop; or a loopback ADDRESS:PORT, where any
    /// local process can relay through it and forge XFORWARD.
    #[arg(long, value_name = "unix|ADDRESS:PORT", default_value = DEFAULT_LISTEN, requires = "hub")]
    pub listen: String,
    /// Replace a master.cf entry of the same name and type that is not
    /// bsmtp-ssh's (without it, such an entry stops the install with exit
    /// 1 and nothing changed). With --remove: remove even while main.cf or
    /// a transport table still routes mail to our transports.
    #[arg(long)]
    pub force: bool,
    /// Undo postfix-install: remove every master.cf entry that is
    /// recognisably bsmtp-ssh's (any mode, any name) and the main.cf
    /// settings made for them; nothing else. Refused (exit 1, nothing
    /// changed) while main.cf or a transport table routes mail to one of
    /// them, unless --force.
    #[arg(long, conflicts_with_all = ["batching", "spool", "hub"])]
    pub remove: bool,
}

/// postfix-install `--remove`'s exit status when main.cf or a transport
/// table still routes mail to a transport it would remove (and `--force`
/// was not given): nothing was changed.
pub const EXIT_STILL_ROUTED: u8 = 1;

/// postfix-install's exit status when master.cf holds an entry of the same
/// name and type that is not bsmtp-ssh's and `--force` was not given.
pub const EXIT_NOT_OURS: u8 = 1;

/// The values that replace the snippets' placeholders.
#[derive(Clone, Debug)]
pub struct Values {
    /// `@PROGRAM@`: absolute path of the bsmtp-ssh binary.
    pub program: String,
    /// `@USER@`: pipe(8)'s `user=`.
    pub user: String,
    /// `@TRANSPORT@`: the master.cf service name.
    pub transport: String,
    /// `@CONFIG@`: absolute path of bsmtp-ssh.conf.
    pub config: String,
    /// `@PEER@`: the batching transport's peer (empty for pipe mode).
    pub peer: String,
    /// The spool transport: `@SERVICE@` is TRANSPORT-spool.
    pub spool: bool,
    /// `@ENVID@` becomes `--envid ${envid}`: pipe(8) has that macro from
    /// Postfix 3.9 on (and defers every message on an unknown one before).
    pub envid: bool,
    /// The hub listener's `--listen` (`@LISTEN@`, `@LISTEN_TYPE@` and
    /// `@INJECT@` follow from it); empty unless `--hub`.
    pub listen: String,
}

/// Every placeholder the pipe-mode snippets may use.
pub const PLACEHOLDERS: [&str; 5] = ["@PROGRAM@", "@USER@", "@TRANSPORT@", "@CONFIG@", "@ENVID@"];
/// Every placeholder the spool snippets may use (`@SERVICE@` is
/// TRANSPORT-spool).
pub const SPOOL_PLACEHOLDERS: [&str; 5] =
    ["@PROGRAM@", "@USER@", "@SERVICE@", "@CONFIG@", "@ENVID@"];
/// Every placeholder the batching snippets may use (`@SERVICE@` is
/// TRANSPORT-PEER).
pub const BATCHING_PLACEHOLDERS: [&str; 5] =
    ["@PROGRAM@", "@USER@", "@SERVICE@", "@CONFIG@", "@PEER@"];

impl Values {
    /// The batching transport's spawn(8) service: `TRANSPORT-PEER`; its
    /// lmtp(8) transport adds `-lmtp`.
    pub fn service(&self) -> String {
        if self.spool {
            format!("{}-spool", self.transport)
        } else {
            format!("{}-{}", self.transport, self.peer)
        }
    }

    /// The hub listener's master.cf service name: the address, or
    /// [`INJECT_SOCKET_SERVICE`].
    pub fn listen_service(&self) -> String {
        if self.listen == "unix" {
            INJECT_SOCKET_SERVICE.to_owned()
        } else {
            self.listen.clone()
        }
    }

    /// The hub listener's master.cf type.
    pub fn listen_type(&self) -> &'static str {
        if self.listen == "unix" {
            "unix"
        } else {
            "inet"
        }
    }

    /// What rsmtp's `inject` says to use the hub listener.
    pub fn inject(&self) -> String {
        if self.listen == "unix" {
            format!("smtp:unix:public/{INJECT_SOCKET_SERVICE}")
        } else {
            format!("smtp:{}", self.listen)
        }
    }

    /// Checks `--listen`: `unix`, or a loopback address and a port (the
    /// listener lets its clients relay: nobody off this host may reach it).
    pub fn validate_listen(&self) -> Result<(), String> {
        if self.listen == "unix" {
            return Ok(());
        }
        let bad = || {
            Err(format!(
                "--listen {:?}: give unix, or a loopback address and port (127.0.0.1:10040, [::1]:10040)",
                self.listen
            ))
        };
        let Some((host, port)) = self.listen.rsplit_once(':') else {
            return bad();
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match (host.parse::<std::net::IpAddr>(), port.parse::<u16>()) {
            (Ok(ip), Ok(port)) if ip.is_loopback() && port > 0 => Ok(()),
            _ => bad(),
        }
    }

    /// Checks each value can stand in master.cf as one pipe(8) argument:
    /// white space would split it, `$` and braces would be expanded or
    /// regrouped by pipe(8).
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |s: &str, extra: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c) || extra.contains(c))
        };
        if !name_ok(&self.transport, "") {
            return Err(format!(
                "--transport {:?}: use letters, digits, '-' and '_' only",
                self.transport
            ));
        }
        if !name_ok(&self.user, ".:") {
            return Err(format!(
                "--user {:?}: use a login name (letters, digits, '.', '-', '_', \
                 optionally :group)",
                self.user
            ));
        }
        if !self.peer.is_empty() && !name_ok(&self.peer, ".") {
            return Err(format!(
                "--peer {:?}: use letters, digits, '.', '-' and '_' only",
                self.peer
            ));
        }
        if self.user == "root" || self.user.starts_with("root:") {
            return Err("--user root: pipe(8) refuses to run commands as root; \
                        use a dedicated account"
                .to_owned());
        }
        for (flag, path) in [("--program", &self.program), ("--config", &self.config)] {
            if !path.starts_with('/') {
                return Err(format!("{flag} {path:?}: give an absolute path"));
            }
            if path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "${}".contains(c))
            {
                return Err(format!(
                    "{flag} {path:?}: master.cf cannot carry white space, '$' or braces \
                     in a path; use a path without them"
                ));
            }
        }
        Ok(())
    }
}

/// What `@ENVID@` stands for on Postfix 3.9 and later.
pub const ENVID_ARGS: &str = "--envid ${envid}";

/// True when pipe(8) of Postfix `mail_version` knows `${envid}` (3.9 on).
pub fn has_envid_macro(mail_version: &str) -> bool {
    let mut numbers = mail_version
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (3, 9)
}

/// Replaces every placeholder in `template`; fails if anything that looks
/// like a placeholder (`@NAME@`) is left, so a new one in a snippet cannot
/// reach a Postfix config unreplaced.
pub fn substitute(template: &str, values: &Values) -> Result<String, String> {
    let text = template
        .replace("@PROGRAM@", &values.program)
        .replace("@USER@", &values.user)
        .replace("@TRANSPORT@", &values.transport)
        .replace("@SERVICE@", &values.service())
        .replace("@PEER@", &values.peer)
        .replace("@CONFIG@", &values.config)
        .replace("@ENVID@", if values.envid { ENVID_ARGS } else { "" })
        .replace("@LISTEN@", &values.listen_service())
        .replace("@LISTEN_TYPE@", values.listen_type())
        .replace("@INJECT@", &values.inject());
    match leftover_placeholder(&text) {
        Some(left) => Err(format!("snippet placeholder {left} has no value")),
        None => Ok(text),
    }
}

/// The first `@NAME@` (upper case, digits, `_`) in `text`, if any.
pub fn leftover_placeholder(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(start) = rest.find('@') {
        let after = &rest[start + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('@') {
            return Some(&rest[start..start + len + 2]);
        }
        rest = after;
    }
    None
}

/// One thing to install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A main.cf `name = value`.
    Main {
        /// The parameter name.
        name: String,
        /// Its value, as written after `=`.
        value: String,
    },
    /// A master.cf entry: the service, the type and all fields, the first
    /// two included.
    Master {
        /// The service name (first field).
        service: String,
        /// The service type (second field), e.g. `unix`.
        kind: String,
        /// Every field of the entry, continuation lines joined.
        fields: Vec<String>,
    },
}

impl Item {
    /// `main.cf: NAME` or `master.cf: SERVICE/TYPE`, as Postfix names them.
    pub fn key(&self) -> String {
        match self {
            Item::Main { name, .. } => format!("main.cf: {name}"),
            Item::Master { service, kind, .. } => format!("master.cf: {service}/{kind}"),
        }
    }

    /// The wanted value: the main.cf value or the master.cf entry on one line.
    pub fn wanted(&self) -> String {
        match self {
            Item::Main { value, .. } => value.clone(),
            Item::Master { fields, .. } => fields.join(" "),
        }
    }
}

/// The `-o name=value` overrides of a master.cf entry's fields.
fn overrides(fields: &[String]) -> Vec<&str> {
    let mut found = Vec::new();
    let mut words = fields.iter().skip(8);
    while let Some(word) = words.next() {
        if word == "-o" {
            if let Some(value) = words.next() {
                found.push(value.as_str());
            }
        } else if let Some(value) = word.strip_prefix("-o") {
            found.push(value);
        }
    }
    found
}

/// The program of an `argv=` attribute and the word after it.
fn argv_of(fields: &[String]) -> Option<(&str, Option<&str>)> {
    let at = fields.iter().position(|w| w.starts_with("argv="))?;
    let program = fields[at].strip_prefix("argv=")?;
    Some((program, fields.get(at + 1).map(String::as_str)))
}

/// The overrides that name bsmtp-ssh in an entry that runs no program of
/// ours: the hub's smtpd logs as postfix/bsmtp-inject, the batching lmtp(8)
/// transport caches connections to our spawn(8) service's socket.
const MARKER_OVERRIDES: [&str; 2] = ["syslog_name=", "lmtp_connection_cache_destinations="];

/// True when the master.cf entry `existing` (its fields as postconf -M
/// prints them) is bsmtp-ssh's entry for the place where `wanted` goes,
/// written by this or an earlier version with any values, so that
/// replacing it is an update: the same entry; or the same command (field
/// 8) and
/// - for pipe(8) and spawn(8), an `argv=` that runs bsmtp-ssh (the path
///   `wanted` names, or any path whose file name is `bsmtp-ssh`) with the
///   same subcommand (`deliver`, `enqueue`, `lmtp`);
/// - otherwise (the hub's smtpd, the batching lmtp(8)), every marker
///   override of `wanted` ([`MARKER_OVERRIDES`]) with the same value.
///
/// Anything else is someone else's: a content filter's re-injection smtpd
/// (`127.0.0.1:10025 inet ... smtpd -o content_filter=`), Debian's stock
/// `bsmtp unix ... pipe ... argv=/usr/lib/bsmtp/bsmtp`, a hand-made entry.
pub fn is_ours(existing: &[String], wanted: &[String]) -> bool {
    if existing == wanted {
        return true;
    }
    if existing.len() < 8 || wanted.len() < 8 || existing[7] != wanted[7] {
        return false;
    }
    if let Some((program, subcommand)) = argv_of(wanted) {
        return argv_of(existing).is_some_and(|(theirs, their_subcommand)| {
            names_bsmtp_ssh(theirs, program) && their_subcommand == subcommand
        });
    }
    let markers: Vec<&str> = overrides(wanted)
        .into_iter()
        .filter(|o| MARKER_OVERRIDES.iter().any(|m| o.starts_with(m)))
        .collect();
    let theirs = overrides(existing);
    !markers.is_empty() && markers.iter().all(|m| theirs.contains(m))
}

/// True when an `argv=` program path is bsmtp-ssh: `program` itself, or
/// any path whose file name is `bsmtp-ssh`.
fn names_bsmtp_ssh(path: &str, program: &str) -> bool {
    path == program || Path::new(path).file_name() == Some("bsmtp-ssh".as_ref())
}

/// A master.cf entry that is recognisably bsmtp-ssh's, as
/// [`ours_to_remove`] finds it, with the main.cf settings the snippets
/// made for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The service name (first field).
    pub service: String,
    /// The service type (second field).
    pub kind: String,
    /// The entry on one line, as `postconf -M` prints it.
    pub entry: String,
    /// The main.cf parameters named after it that postfix-install sets.
    pub parameters: Vec<String>,
    /// A delivery transport that routing can name (pipe(8), lmtp(8)); the
    /// spawn(8) service and the hub's smtpd are reached otherwise.
    pub transport: bool,
}

impl Installed {
    /// `master.cf: SERVICE/TYPE`, as [`Item::key`] says it.
    pub fn key(&self) -> String {
        format!("master.cf: {}/{}", self.service, self.kind)
    }
}

/// The main.cf parameter names a snippet template sets, for `service`.
fn template_parameters(template: &str, service: &str) -> Vec<String> {
    let text = template
        .replace("@TRANSPORT@", service)
        .replace("@SERVICE@", service);
    parse_main_cf(&text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| match item {
            Item::Main { name, .. } => Some(name),
            Item::Master { .. } => None,
        })
        .collect()
}

/// Every entry of `master_cf` (one entry a line, as `postconf -M` prints
/// them) that is recognisably bsmtp-ssh's, whatever its name, by the marks
/// [`is_ours`] uses: a pipe(8) entry whose `argv=` runs bsmtp-ssh
/// (`program`, or any path whose file name is `bsmtp-ssh`) with `deliver`
/// or `enqueue`; a spawn(8) entry running it with `lmtp`; the lmtp(8)
/// transport whose `-o lmtp_connection_cache_destinations=` names such a
/// spawn(8) service's socket; the hub's smtpd with `-o
/// syslog_name=postfix/bsmtp-inject`. Anything else (Debian's stock
/// `bsmtp` entry, a content filter's listener) is not listed.
pub fn ours_to_remove(master_cf: &str, program: &str) -> Vec<Installed> {
    let entries: Vec<Vec<String>> = master_cf
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .filter(|fields: &Vec<String>| fields.len() >= 8)
        .collect();
    let runs = |fields: &[String], subcommands: &[&str]| {
        argv_of(fields).is_some_and(|(path, subcommand)| {
            names_bsmtp_ssh(path, program) && subcommand.is_some_and(|s| subcommands.contains(&s))
        })
    };
    let spawned: Vec<&str> = entries
        .iter()
        .filter(|f| f[7] == "spawn" && runs(f, &["lmtp"]))
        .map(|f| f[0].as_str())
        .collect();
    let mut found = Vec::new();
    for fields in &entries {
        let service = fields[0].as_str();
        let (parameters, transport) = match fields[7].as_str() {
            "pipe" if runs(fields, &["deliver"]) => {
                (template_parameters(LEAF_MAIN_CF, service), true)
            }
            "pipe" if runs(fields, &["enqueue"]) => {
                (template_parameters(SPOOL_MAIN_CF, service), true)
            }
            "spawn" if runs(fields, &["lmtp"]) => (Vec::new(), false),
            "smtpd" if overrides(fields).contains(&"syslog_name=postfix/bsmtp-inject") => {
                (Vec::new(), false)
            }
            "lmtp" => {
                let cached = overrides(fields)
                    .into_iter()
                    .find_map(|o| o.strip_prefix("lmtp_connection_cache_destinations=private/"));
                match cached.filter(|socket| spawned.contains(socket)) {
                    Some(socket) => (template_parameters(BATCHING_MAIN_CF, socket), true),
                    None => continue,
                }
            }
            _ => continue,
        };
        found.push(Installed {
            service: service.to_owned(),
            kind: fields[1].clone(),
            entry: fields.join(" "),
            parameters,
            transport,
        });
    }
    found
}

/// True when a routing value's word names `transport`: `transport` alone
/// or `transport:nexthop`.
fn names_transport(word: &str, transport: &str) -> bool {
    word == transport
        || word
            .strip_prefix(transport)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// The main.cf settings (`postconf -n` output, `name = value` a line)
/// whose value routes mail to one of `transports` (`default_transport =
/// bsmtp-ssh:hub`), skipping the parameters in `skip` (ours, going too).
pub fn routes_in_main_cf(main_cf: &str, transports: &[&str], skip: &[String]) -> Vec<String> {
    main_cf
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim(), value.trim()))
        .filter(|(name, _)| !skip.iter().any(|s| s == name))
        .filter(|(_, value)| {
            value
                .split(|c: char| c.is_whitespace() || c == ',')
                .any(|word| transports.iter().any(|t| names_transport(word, t)))
        })
        .map(|(name, value)| format!("main.cf: {name} = {value}"))
        .collect()
}

/// The lines of a transport table's source (`hash:`, `texthash:`,
/// `pcre:`, ...) whose result names one of `transports`: the last word of
/// a `key result` line. Returns (line number, line).
pub fn routes_in_table(text: &str, transports: &[&str]) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let routes = |word: &&str| transports.iter().any(|t| names_transport(word, t));
            words.len() >= 2 && !words[0].starts_with('#') && words.last().is_some_and(routes)
        })
        .map(|(index, line)| (index + 1, line.trim().to_owned()))
        .collect()
}

/// The table files a `*transport_maps` setting names, for the table
/// types whose source is a text file at that path.
pub fn table_sources(value: &str) -> Vec<PathBuf> {
    const FILE_TYPES: [&str; 8] = [
        "hash", "btree", "lmdb", "cdb", "dbm", "texthash", "pcre", "regexp",
    ];
    value
        .split(|c: char| c.is_whitespace() || c == ',')
        // proxymap(8) in front changes nothing about the source file.
        .map(|word| word.strip_prefix("proxy:").unwrap_or(word))
        .filter_map(|word| word.split_once(':'))
        .filter(|(kind, path)| FILE_TYPES.contains(kind) && path.starts_with('/'))
        .map(|(_, path)| PathBuf::from(path))
        .collect()
}

/// What an entry that is not ours appears to be, when that is known.
fn looks_like(existing: &[String]) -> Option<&'static str> {
    let filter = existing.get(7).is_some_and(|c| c == "smtpd")
        && overrides(existing)
            .iter()
            .any(|o| o.starts_with("content_filter="));
    filter.then_some(
        "with -o content_filter= it looks like a content filter's re-injection \
         listener, as in Postfix's FILTER_README and amavis: replacing it would \
         send filtered mail back into the filter, in a loop",
    )
}

/// Joins Postfix's logical lines: `#` lines (after optional white space) and
/// blank lines are dropped; a line starting with white space continues the
/// previous one. Returns (first line number, logical line).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some((_, last)) = lines.last_mut() {
                last.push(' ');
                last.push_str(trimmed);
                continue;
            }
        }
        lines.push((index + 1, trimmed.to_owned()));
    }
    lines
}

/// Parses main.cf text into `name = value` items.
pub fn parse_main_cf(text: &str) -> Result<Vec<Item>, String> {
    logical_lines(text)
        .into_iter()
        .map(|(number, line)| {
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| format!("main.cf line {number}: no '=' in {line:?}"))?;
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!(
                    "main.cf line {number}: bad parameter name {name:?}"
                ));
            }
            Ok(Item::Main {
                name: name.to_owned(),
                value: value.trim().to_owned(),
            })
        })
        .collect()
}

/// Parses master.cf text into entries of at least 8 fields.
pub fn parse_master_cf(text: &str) -> Result<Vec<Item>, String> {
    logical_lines(text)
        .into_iter()
        .map(|(number, line)| {
            let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if fields.len() < 8 {
                return Err(format!(
                    "master.cf line {number}: {} fields, an entry needs at least 8",
                    fields.len()
                ));
            }
            Ok(Item::Master {
                service: fields[0].clone(),
                kind: fields[1].clone(),
                fields,
            })
        })
        .collect()
}

/// The leaf's items with `values` in place: master.cf first, so the
/// transport exists before the main.cf settings named after it.
pub fn leaf_items(values: &Values) -> Result<Vec<Item>, String> {
    let mut items = parse_master_cf(&substitute(LEAF_MASTER_CF, values)?)?;
    items.extend(parse_main_cf(&substitute(LEAF_MAIN_CF, values)?)?);
    Ok(items)
}

/// The batching transport's items for `values.peer`: master.cf first.
pub fn batching_items(values: &Values) -> Result<Vec<Item>, String> {
    let mut items = parse_master_cf(&substitute(BATCHING_MASTER_CF, values)?)?;
    items.extend(parse_main_cf(&substitute(BATCHING_MAIN_CF, values)?)?);
    Ok(items)
}

/// The spool transport's items: its master.cf entry.
pub fn spool_items(values: &Values) -> Result<Vec<Item>, String> {
    let mut items = parse_master_cf(&substitute(SPOOL_MASTER_CF, values)?)?;
    items.extend(parse_main_cf(&substitute(SPOOL_MAIN_CF, values)?)?);
    Ok(items)
}

/// The hub's fast injection listener: its master.cf entry.
pub fn hub_items(values: &Values) -> Result<Vec<Item>, String> {
    parse_master_cf(&substitute(HUB_INJECT_MASTER_CF, values)?)
}

/// The routing suggestion: main.cf's comment block from `# Routing` on,
/// without the `# `.
pub fn routing_hint(values: &Values) -> Result<Vec<String>, String> {
    let template = if !values.listen.is_empty() {
        HUB_INJECT_MASTER_CF
    } else if values.spool {
        SPOOL_MAIN_CF
    } else if values.peer.is_empty() {
        LEAF_MAIN_CF
    } else {
        BATCHING_MAIN_CF
    };
    let text = substitute(template, values)?;
    Ok(text
        .lines()
        .skip_while(|line| !line.starts_with("# Routing"))
        .map(|line| {
            let line = line.strip_prefix('#').unwrap_or(line);
            line.strip_prefix(' ').unwrap_or(line).to_owned()
        })
        .collect())
}

/// A fatal problem: what to print and the exit status.
struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    fn new(code: ExitCode, message: impl Into<String>) -> Fatal {
        Fatal {
            code: code as u8,
            message: message.into(),
        }
    }
}

/// An argv vector, shown the way a shell user would type it (display only:
/// nothing here is ever given to a shell).
struct Shown<'a>(&'a [OsString]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, word) in self.0.iter().enumerate() {
            let word = word.to_string_lossy();
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
            if plain {
                f.write_str(&word)?;
            } else {
                write!(f, "'{}'", word.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// What one child process said.
struct Output {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `argv` without a shell; `Command::output` reads stdout and stderr
/// concurrently, so a chatty child cannot block on a full pipe.
fn run_argv(argv: &[OsString]) -> Result<Output, Fatal> {
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| {
            Fatal::new(
                ExitCode::Unavailable,
                format!(
                    "run {}: {err}; is Postfix installed? (or name it with --postconf/--postfix)",
                    Path::new(&argv[0]).display()
                ),
            )
        })?;
    Ok(Output {
        success: output.status.success(),
        status: output.status.to_string(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Builds Postfix command lines for one instance.
struct Postfix<'a> {
    args: &'a InstallArgs,
}

impl Postfix<'_> {
    fn postconf(&self, rest: &[&str]) -> Vec<OsString> {
        let mut argv = vec![self.args.postconf.clone().into_os_string()];
        if let Some(dir) = &self.args.config_directory {
            argv.push("-c".into());
            argv.push(dir.clone().into_os_string());
        }
        argv.extend(rest.iter().map(OsString::from));
        argv
    }

    /// `postfix [-c DIR] COMMAND`.
    fn postfix(&self, command: &str) -> Vec<OsString> {
        let mut argv = vec![self.args.postfix.clone().into_os_string()];
        if let Some(dir) = &self.args.config_directory {
            argv.push("-c".into());
            argv.push(dir.clone().into_os_string());
        }
        argv.push(command.into());
        argv
    }

    /// Runs a read-only postconf query; empty output means "not set".
    fn query(&self, rest: &[&str]) -> Result<Option<String>, Fatal> {
        let argv = self.postconf(rest);
        let out = run_argv(&argv)?;
        if !out.success {
            return Err(Fatal::new(
                ExitCode::Config,
                format!(
                    "{} failed ({}): {}; check --config-directory names a Postfix \
                     config directory with a main.cf",
                    Shown(&argv),
                    out.status,
                    one_line(&out.stderr)
                ),
            ));
        }
        let value = out.stdout.trim();
        Ok((!value.is_empty()).then(|| value.to_owned()))
    }

    /// The current value of `item`, as Postfix reads it.
    fn current(&self, item: &Item) -> Result<Option<String>, Fatal> {
        match item {
            // -n: only what main.cf sets, not Postfix's built-in default.
            Item::Main { name, .. } => self.query(&["-n", "-h", name]),
            Item::Master { service, kind, .. } => self
                .query(&["-M", &format!("{service}/{kind}")])
                // postconf -M prints the entry on one line, re-spaced.
                .map(|v| v.map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))),
        }
    }

    /// The postconf command that sets `item`.
    fn set(&self, item: &Item) -> Vec<OsString> {
        match item {
            Item::Main { name, value } => self.postconf(&["-e", &format!("{name} = {value}")]),
            Item::Master { service, kind, .. } => {
                self.postconf(&["-M", &format!("{service}/{kind}={}", item.wanted())])
            }
        }
    }
}

/// Postfix's multi-line complaints on one line, for an error message.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "no output".to_owned()
    } else {
        lines.join("; ")
    }
}

/// Runs the installer (or, with `--remove`, the remover); returns the exit
/// status.
pub fn run(args: &InstallArgs, out: &mut impl Write) -> u8 {
    let result = if args.remove {
        remove(args, out)
    } else {
        install(args, out)
    };
    match result {
        Ok(()) => 0,
        Err(fatal) => {
            let _ = writeln!(out, "postfix-install: error: {}", fatal.message);
            fatal.code
        }
    }
}

/// The placeholder values from the flags, and the program path as given.
fn values_from(args: &InstallArgs) -> Result<(Values, PathBuf), Fatal> {
    let program = args.program.clone().unwrap_or_else(|| {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from(DEFAULT_PROGRAM))
    });
    let text = |flag: &str, path: &Path| {
        path.to_str().map(str::to_owned).ok_or_else(|| {
            Fatal::new(
                ExitCode::Usage,
                format!("{flag} {}: not UTF-8", path.display()),
            )
        })
    };
    let values = Values {
        program: text("--program", &program)?,
        user: args.user.clone(),
        transport: args.transport.clone().unwrap_or_else(|| {
            if args.batching || args.spool {
                DEFAULT_SERVICE_PREFIX.to_owned()
            } else {
                DEFAULT_TRANSPORT.to_owned()
            }
        }),
        config: text("--config", &args.config)?,
        peer: args.peer.clone().unwrap_or_default(),
        envid: false,
        spool: args.spool,
        listen: if args.hub {
            args.listen.clone()
        } else {
            String::new()
        },
    };
    values
        .validate()
        .and_then(|()| {
            if args.hub {
                values.validate_listen()
            } else {
                Ok(())
            }
        })
        .map_err(|msg| Fatal::new(ExitCode::Usage, msg))?;
    Ok((values, program))
}

fn install(args: &InstallArgs, out: &mut impl Write) -> Result<(), Fatal> {
    let (mut values, program) = values_from(args)?;
    let postfix = Postfix { args };
    values.envid = postfix
        .query(&["-h", "mail_version"])?
        .is_some_and(|version| has_envid_macro(&version));
    let items = if args.hub {
        hub_items(&values)
    } else if args.spool {
        spool_items(&values)
    } else if args.batching {
        batching_items(&values)
    } else {
        leaf_items(&values)
    };
    let items = items.map_err(|msg| {
        Fatal::new(
            ExitCode::Software,
            format!("built-in snippet: {msg} (a bug; please report it)"),
        )
    })?;

    if let Some(owner) = postfix.query(&["-h", "mail_owner"])? {
        if owner == values.user && !args.hub {
            return Err(Fatal::new(
                ExitCode::Usage,
                format!(
                    "--user {}: that is Postfix's mail_owner, which pipe(8) refuses; \
                     use a dedicated account",
                    values.user
                ),
            ));
        }
    }
    if args.batching {
        check_batching_peer(&args.config, &values.peer)?;
    }
    if !args.hub {
        warn_prerequisites(&values, &program, args, out);
    }

    // Read everything before writing anything: a failing read, or an entry
    // that is someone else's, leaves the config untouched.
    let plan = read_plan(&postfix, &items, args)?;
    if args.hub {
        hub_warnings(&postfix, &values, &items, out)?;
    }
    let changes = announce(&postfix, &plan, out);

    if args.dry_run {
        print_dry_run(&changes, out);
        print_hint(&values, out);
        return Ok(());
    }
    run_changes(&changes, "postfix-install")?;
    if changes.is_empty() {
        let _ = writeln!(out, "nothing to change");
    } else {
        let _ = writeln!(
            out,
            "{}",
            count(changes.len(), "change made", "changes made")
        );
    }

    postfix_check(&postfix, out)?;
    if !changes.is_empty() {
        let _ = writeln!(
            out,
            "a running Postfix uses the changes after: {}",
            Shown(&postfix.postfix("reload"))
        );
    }
    print_hint(&values, out);
    Ok(())
}

/// `postfix-install --remove`: reads everything first, refuses while mail
/// is still routed to a transport it would remove, then removes our
/// master.cf entries and their main.cf settings, and runs `postfix check`.
fn remove(args: &InstallArgs, out: &mut impl Write) -> Result<(), Fatal> {
    let postfix = Postfix { args };
    let program = args.program.clone().unwrap_or_else(|| {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from(DEFAULT_PROGRAM))
    });
    let master_cf = postfix.query(&["-M"])?.unwrap_or_default();
    let found = ours_to_remove(&master_cf, &program.to_string_lossy());
    if found.is_empty() {
        let _ = writeln!(
            out,
            "master.cf has no entry of bsmtp-ssh's; nothing to change"
        );
        return Ok(());
    }
    let mut settings = Vec::new();
    for installed in &found {
        for name in &installed.parameters {
            if let Some(value) = postfix.query(&["-n", "-h", name])? {
                settings.push((name.clone(), value));
            }
        }
    }
    let ours: Vec<String> = settings.iter().map(|(name, _)| name.clone()).collect();
    let transports: Vec<&str> = found
        .iter()
        .filter(|i| i.transport)
        .map(|i| i.service.as_str())
        .collect();
    let routes = routes_to(&postfix, &transports, &ours)?;
    if !routes.is_empty() {
        let listed = routes.join("\n  ");
        if !args.force {
            return Err(Fatal {
                code: EXIT_STILL_ROUTED,
                message: format!(
                    "mail is still routed to bsmtp-ssh's transports ({}); without them \
                     Postfix would defer it for ever:\n  {listed}\nnothing was changed; route \
                     that mail elsewhere first (postconf -X or -e for main.cf, edit and \
                     postmap a table), then run again; --force removes them anyway",
                    transports.join(", ")
                ),
            });
        }
        let _ = writeln!(
            out,
            "warning: mail is still routed to the transports removed by --force; \
             Postfix will defer it until routed elsewhere:\n  {listed}"
        );
    }

    let mut changes = Vec::new();
    for installed in &found {
        let _ = writeln!(out, "{} = {} (removed)", installed.key(), installed.entry);
        changes
            .push(postfix.postconf(&["-MX", &format!("{}/{}", installed.service, installed.kind)]));
    }
    for (name, value) in &settings {
        let _ = writeln!(out, "main.cf: {name} = {value} (removed)");
        changes.push(postfix.postconf(&["-X", name]));
    }
    if args.dry_run {
        print_dry_run(&changes, out);
        return Ok(());
    }
    run_changes(&changes, "postfix-install --remove")?;
    let _ = writeln!(
        out,
        "{}",
        count(changes.len(), "change made", "changes made")
    );
    postfix_check(&postfix, out)?;
    let _ = writeln!(
        out,
        "a running Postfix uses the changes after: {}",
        Shown(&postfix.postfix("reload"))
    );
    removal_notes(&found, out);
    Ok(())
}

/// What stays behind an entry `--remove` took out and needs the admin.
fn removal_notes(found: &[Installed], out: &mut impl Write) {
    for installed in found {
        let command = installed
            .entry
            .split_whitespace()
            .nth(7)
            .unwrap_or_default();
        if installed.entry.contains(" enqueue ") {
            let _ = writeln!(
                out,
                "note: mail the spool transport {} already spooled stays in the spool \
                 (bsmtp-ssh queue lists it); send it with bsmtp-ssh flush",
                installed.service
            );
        } else if command == "smtpd" {
            let _ = writeln!(
                out,
                "note: an rsmtp.conf inject line that names {} must go too (rsmtp \
                 then injects with postdrop)",
                installed.service
            );
        }
    }
}

/// `--dry-run`'s report: each command not run, and how many.
fn print_dry_run(changes: &[Vec<OsString>], out: &mut impl Write) {
    for argv in changes {
        let _ = writeln!(out, "would run: {}", Shown(argv));
    }
    let _ = writeln!(
        out,
        "dry run: {}; postfix check not run",
        count(changes.len(), "change not made", "changes not made")
    );
}

/// Runs each postconf command in order; the first failure stops, saying
/// how many were made and to run `again` once the cause is fixed.
fn run_changes(changes: &[Vec<OsString>], again: &str) -> Result<(), Fatal> {
    for (done, argv) in changes.iter().enumerate() {
        let result = run_argv(argv)?;
        if !result.success {
            return Err(Fatal::new(
                ExitCode::Config,
                format!(
                    "{} failed ({}): {}; {} made before it; fix the cause and run \
                     {again} again",
                    Shown(argv),
                    result.status,
                    one_line(&result.stderr),
                    count(done, "change was", "changes were"),
                ),
            ));
        }
    }
    Ok(())
}

/// Every route to `transports` in main.cf (but `skip`, our own settings)
/// and in the source files of its `*transport_maps` tables.
fn routes_to(
    postfix: &Postfix,
    transports: &[&str],
    skip: &[String],
) -> Result<Vec<String>, Fatal> {
    if transports.is_empty() {
        return Ok(Vec::new());
    }
    let main_cf = postfix.query(&["-n"])?.unwrap_or_default();
    let mut routes = routes_in_main_cf(&main_cf, transports, skip);
    for (name, value) in main_cf.lines().filter_map(|line| line.split_once('=')) {
        if !name.trim().ends_with("transport_maps") {
            continue;
        }
        for path in table_sources(value) {
            // A table we cannot read is Postfix's problem to report, not
            // a reason to stop here.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (number, line) in routes_in_table(&text, transports) {
                routes.push(format!("{} line {number}: {line}", path.display()));
            }
        }
    }
    Ok(routes)
}

/// One item as read before anything is written.
struct Planned<'a> {
    item: &'a Item,
    /// Its value now, as Postfix reads it.
    current: Option<String>,
    /// A master.cf entry is at its place that is not bsmtp-ssh's.
    foreign: bool,
}

/// Reads every item's current value; refuses ([`EXIT_NOT_OURS`]) when an
/// entry at the place of one of ours is someone else's, naming each such
/// entry, unless `--force`.
fn read_plan<'a>(
    postfix: &Postfix,
    items: &'a [Item],
    args: &InstallArgs,
) -> Result<Vec<Planned<'a>>, Fatal> {
    let mut plan = Vec::new();
    for item in items {
        let current = postfix.current(item)?;
        let foreign = match (item, &current) {
            (Item::Master { fields, .. }, Some(current)) => {
                let theirs: Vec<String> = current.split_whitespace().map(str::to_owned).collect();
                !is_ours(&theirs, fields)
            }
            _ => false,
        };
        plan.push(Planned {
            item,
            current,
            foreign,
        });
    }
    let refused: Vec<String> = plan
        .iter()
        .filter(|planned| planned.foreign)
        .map(|planned| refusal(planned.item, planned.current.as_deref().unwrap_or_default()))
        .collect();
    if refused.is_empty() || args.force {
        return Ok(plan);
    }
    let another = if args.hub {
        "choose another listener with --listen (unix, or a free loopback port)"
    } else {
        "choose another service name with --transport NAME"
    };
    Err(Fatal {
        code: EXIT_NOT_OURS,
        message: format!(
            "{}\nnothing was changed; to keep it, {another}; to replace it, \
             run again with --force",
            refused.join("\n"),
        ),
    })
}

/// Prints each item's wanted value and what it was; returns the postconf
/// commands for those that differ.
fn announce(postfix: &Postfix, plan: &[Planned], out: &mut impl Write) -> Vec<Vec<OsString>> {
    let mut changes = Vec::new();
    for Planned {
        item,
        current,
        foreign,
    } in plan
    {
        let wanted = item.wanted();
        if current.as_deref() == Some(wanted.as_str()) {
            let _ = writeln!(out, "{} = {wanted} (unchanged)", item.key());
        } else {
            let was = current.as_deref().unwrap_or("unset");
            let forced = if *foreign {
                "; not bsmtp-ssh's, replaced by --force"
            } else {
                ""
            };
            let _ = writeln!(out, "{} = {wanted} (was: {was}{forced})", item.key());
            changes.push(postfix.set(item));
        }
    }
    changes
}

/// What the hub's admin should know before the listener is installed:
/// what a TCP listener allows, and listeners of ours at other places.
fn hub_warnings(
    postfix: &Postfix,
    values: &Values,
    items: &[Item],
    out: &mut impl Write,
) -> Result<(), Fatal> {
    if values.listen_type() == "inet" {
        let _ = writeln!(
            out,
            "warning: a TCP listener on loopback lets any local process relay through \
             it and forge XFORWARD (the client names in the log and in Received:); \
             --listen unix lets only root, postfix and group postdrop reach it"
        );
    }
    note_other_listeners(postfix, items, out)
}

/// Names the hub listeners of ours at other places than `items` (an
/// earlier install's TCP listener, when this one installs the socket):
/// they stay, and so does what they allow.
fn note_other_listeners(
    postfix: &Postfix,
    items: &[Item],
    out: &mut impl Write,
) -> Result<(), Fatal> {
    let all = postfix.query(&["-M"])?.unwrap_or_default();
    for line in all.lines() {
        let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let ours = fields.len() >= 8
            && fields[7] == "smtpd"
            && overrides(&fields).contains(&"syslog_name=postfix/bsmtp-inject");
        if !ours {
            continue;
        }
        let here = items.iter().any(|item| {
            matches!(item, Item::Master { service, kind, .. }
                if *service == fields[0] && *kind == fields[1])
        });
        if !here {
            let _ = writeln!(
                out,
                "note: master.cf also has {0}/{1}, another bsmtp-ssh listener, left \
                 as it is; once rsmtp.conf's inject no longer names it, remove it: \
                 postconf -MX {0}/{1}",
                fields[0], fields[1]
            );
        }
    }
    Ok(())
}

/// The error lines for an entry at `item`'s place that is not ours.
fn refusal(item: &Item, current: &str) -> String {
    let theirs: Vec<String> = current.split_whitespace().map(str::to_owned).collect();
    let mut text = format!(
        "{} exists and is not bsmtp-ssh's entry:\n  {current}",
        item.key()
    );
    if let Some(what) = looks_like(&theirs) {
        text.push_str("\n  (");
        text.push_str(what);
        text.push(')');
    }
    text
}

/// Runs `postfix check` and reports what it said.
fn postfix_check(postfix: &Postfix, out: &mut impl Write) -> Result<(), Fatal> {
    let argv = postfix.postfix("check");
    let result = run_argv(&argv)?;
    let said: Vec<&str> = result
        .stdout
        .lines()
        .chain(result.stderr.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !result.success {
        for line in &said {
            let _ = writeln!(out, "  {line}");
        }
        // postfix(1) prints its own fatal errors only when stderr is a
        // terminal; otherwise they go to the mail log alone.
        let hint = if said.is_empty() {
            "it said nothing here: run it in a terminal or read the mail log, \
             fix what it names, then run it again"
        } else {
            "fix what it names above, then run it again"
        };
        return Err(Fatal::new(
            ExitCode::Config,
            format!("{} failed ({}): {hint}", Shown(&argv), result.status),
        ));
    }
    if said.is_empty() {
        let _ = writeln!(out, "postfix check: ok");
    } else {
        let _ = writeln!(out, "postfix check: ok, with warnings:");
        for line in &said {
            let _ = writeln!(out, "  {line}");
        }
    }
    Ok(())
}

/// Refuses a batching transport for a peer that `config` does not
/// describe: unlike pipe mode's `${nexthop}`, the peer is fixed in the
/// spawn(8) entry, and every message routed there would defer.
fn check_batching_peer(config: &Path, peer: &str) -> Result<(), Fatal> {
    let refuse = |why: String| {
        Fatal::new(
            ExitCode::Config,
            format!("--batching --peer {peer}: {why}; nothing was changed"),
        )
    };
    let file = crate::config::ConfigFile::load(config)
        .map_err(|err| refuse(format!("{err}; write its [peer.{peer}] section first")))?;
    if !file.peer.contains_key(peer) {
        let known: Vec<&str> = file.peer.keys().map(String::as_str).collect();
        return Err(refuse(format!(
            "{} has no [peer.{peer}] section (its peers: {}); add one, or name one of its peers",
            config.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    }
    file.peer(peer)
        .map(|_| ())
        .map_err(|err| refuse(format!("{}: {err}", config.display())))
}

/// Says what would make deliveries fail later, without stopping the install:
/// the package may be installed before the account or config exist.
fn warn_prerequisites(values: &Values, program: &Path, args: &InstallArgs, out: &mut impl Write) {
    let login = values.user.split(':').next().unwrap_or_default();
    if !matches!(nix::unistd::User::from_name(login), Ok(Some(_))) {
        let _ = writeln!(
            out,
            "warning: user {login} does not exist; create it before mail is sent \
             (adduser --system {login})"
        );
    }
    if !program.is_file() {
        let _ = writeln!(
            out,
            "warning: {} does not exist; name the installed binary with --program",
            program.display()
        );
    }
    if !args.config.is_file() {
        let _ = writeln!(
            out,
            "warning: {} does not exist; copy postfix-snippets/leaf/bsmtp-ssh.conf \
             there and edit it",
            args.config.display()
        );
    }
}

fn print_hint(values: &Values, out: &mut impl Write) {
    if let Ok(lines) = routing_hint(values) {
        for line in lines {
            let _ = writeln!(out, "hint: {line}");
        }
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
