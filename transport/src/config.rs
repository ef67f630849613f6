//! `bsmtp-ssh.conf`: the peers this host sends to, and how to reach them.
//!
//! ```toml
//! spool_directory = "/var/spool/bsmtp-ssh"   # store-and-forward (enqueue, flush)
//!
//! [peer.hub]
//! host = "hub.example.com"          # or hosts = ["hub1", "hub2"]: failover in order
//! port = 22
//! user = "bsmtp"
//! identity = "/etc/bsmtp-ssh/id_ed25519"
//! known_hosts = "/etc/bsmtp-ssh/known_hosts"
//! ```
//!
//! Postfix's `${nexthop}` names the section, so a transport map entry
//! `example.com bsmtp:hub` uses `[peer.hub]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bsmtp_session::ssh::Peer;
use serde::Deserialize;

/// Where the config lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/bsmtp-ssh/bsmtp-ssh.conf";
/// Default key file.
pub const DEFAULT_IDENTITY: &str = "/etc/bsmtp-ssh/id_ed25519";
/// Default pinned host keys.
pub const DEFAULT_KNOWN_HOSTS: &str = "/etc/bsmtp-ssh/known_hosts";
/// Default remote login.
pub const DEFAULT_USER: &str = "bsmtp";
/// Default TCP connect limit.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 30;
/// Default limit for any single read or write once connected.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 120;
/// Default limit for a whole delivery: well under Postfix's
/// `<transport>_time_limit` (1000 s), whose expiry would bounce the message.
pub const DEFAULT_DEADLINE: u64 = 900;

/// One `[peer.NAME]` section as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// One host.
    pub host: Option<String>,
    /// Several hosts, tried in order.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// SSH port (22).
    pub port: Option<u16>,
    /// Remote login.
    pub user: Option<String>,
    /// Private key file.
    pub identity: Option<PathBuf>,
    /// Pinned host keys.
    pub known_hosts: Option<PathBuf>,
    /// Remote command (default "receive").
    pub command: Option<String>,
    /// Seconds.
    pub connect_timeout: Option<u64>,
    /// Seconds.
    pub idle_timeout: Option<u64>,
    /// Seconds.
    pub deadline: Option<u64>,
    /// Tables `push-table --all` sends to this peer: name -> source file.
    #[serde(default)]
    pub tables: BTreeMap<String, PathBuf>,
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The postlog(1) to log through when Postfix logs to a `maillog_file`
    /// (default /usr/sbin/postlog).
    pub postlog: Option<PathBuf>,
    /// Where `enqueue` spools mail, a directory per peer (default
    /// /var/spool/bsmtp-ssh).
    pub spool_directory: Option<PathBuf>,
    /// Bytes kept free on the spool's file system, and on the local
    /// queue's for `pull` (default 64 MiB).
    pub min_free: Option<u64>,
    /// Seconds a spooled message may wait before it bounces (default: the
    /// local Postfix's `maximal_queue_lifetime`).
    pub spool_lifetime: Option<u64>,
    /// The local Postfix instance: where bounces and pulled mail go
    /// (default /etc/postfix).
    pub postfix_config: Option<PathBuf>,
    /// Where `pull` keeps the exactly-once tags of pulled mail (default
    /// /var/lib/bsmtp-ssh/tags; empty: none).
    pub tag_directory: Option<PathBuf>,
    /// The postdrop(1) that queues pulled mail and bounces (default
    /// /usr/sbin/postdrop).
    pub postdrop: Option<PathBuf>,
    /// `bsmtp-ssh sendmail` (a satellite): the [peer.NAME] that takes this
    /// host's mail (default: the only peer).
    pub sendmail_peer: Option<String>,
    /// `bsmtp-ssh sendmail`: the domain of a sender not given with -f, after
    /// the login name (default: the host name).
    pub sender_domain: Option<String>,
    /// Peers by name.
    #[serde(default)]
    pub peer: BTreeMap<String, PeerSection>,
}

impl ConfigFile {
    /// `spool_directory`, or its default.
    pub fn spool_directory(&self) -> PathBuf {
        self.spool_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from(bsmtp_session::spool::DEFAULT_DIRECTORY))
    }

    /// `min_free`, or its default.
    pub fn min_free(&self) -> u64 {
        self.min_free
            .unwrap_or(bsmtp_session::spool::DEFAULT_MIN_FREE)
    }

    /// How to run postdrop for the local Postfix: `postdrop` and
    /// `postfix_config`.
    pub fn postdrop_command(&self) -> bsmtp_session::postdrop::PostdropCommand {
        let mut command = bsmtp_session::postdrop::PostdropCommand {
            config_dir: Some(self.postfix_config()),
            ..bsmtp_session::postdrop::PostdropCommand::default()
        };
        if let Some(program) = &self.postdrop {
            command.program.clone_from(program);
        }
        command
    }

    /// `postfix_config`, or the directory Postfix programs use by default.
    pub fn postfix_config(&self) -> PathBuf {
        self.postfix_config
            .clone()
            .unwrap_or_else(bsmtp_session::main_cf::MainCf::default_dir)
    }

    /// What a command run by an admin or a timer (`flush`, `pull`,
    /// `push-table`) does first: loads `path`, then logs the way the local
    /// Postfix does (its `maillog_file` or syslog) and to stderr. A config
    /// that cannot be loaded is said on `out` as `bsmtp-ssh COMMAND: ...`
    /// and gives the exit status to return.
    pub fn load_for_command(
        command: &str,
        path: &Path,
        verbose: bool,
        out: &mut impl std::io::Write,
    ) -> Result<Self, u8> {
        let file = Self::load(path).map_err(|text| {
            let _ = writeln!(out, "bsmtp-ssh {command}: {text}");
            sysexits::ExitCode::Config as u8
        })?;
        bsmtp_session::logging::init(
            "bsmtp-ssh",
            verbose,
            bsmtp_session::logging::Fallback::Stderr,
            &bsmtp_session::logging::Target {
                postfix_config: Some(file.postfix_config()),
                postlog: file.postlog.clone(),
            },
        );
        Ok(file)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read config {}: {err}", path.display()))?;
        toml::from_str(&text).map_err(|err| {
            format!(
                "config {}: {}",
                path.display(),
                bsmtp::text::one_line(&err.to_string())
            )
        })
    }

    /// The peer called `name`, with defaults filled in.
    pub fn peer(&self, name: &str) -> Result<Peer, String> {
        let section = self.peer.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.peer.keys().map(String::as_str).collect();
            format!(
                "no [peer.{name}] section in the config (known peers: {}); check the nexthop in Postfix's transport map",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )
        })?;
        section.resolve(name)
    }
}

impl PeerSection {
    /// Fills in defaults and checks what can be checked offline.
    pub fn resolve(&self, name: &str) -> Result<Peer, String> {
        let mut hosts: Vec<String> = self.host.iter().cloned().collect();
        hosts.extend(self.hosts.iter().cloned());
        if hosts.is_empty() {
            return Err(format!("peer {name}: no host given (set host = \"...\")"));
        }
        if let Some(bad) = hosts.iter().find(|h| !plain_host(h)) {
            return Err(format!(
                "peer {name}: bad host name \"{}\"",
                bsmtp::text::one_line(bad)
            ));
        }
        let secs = |value: Option<u64>, default| Duration::from_secs(value.unwrap_or(default));
        Ok(Peer {
            name: name.to_owned(),
            hosts,
            port: self.port.unwrap_or(22),
            user: self.user.clone().unwrap_or_else(|| DEFAULT_USER.into()),
            identity: self
                .identity
                .clone()
                .unwrap_or_else(|| DEFAULT_IDENTITY.into()),
            known_hosts: self
                .known_hosts
                .clone()
                .unwrap_or_else(|| DEFAULT_KNOWN_HOSTS.into()),
            command: self.command.clone().unwrap_or_else(|| "receive".into()),
            connect_timeout: secs(self.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
            idle_timeout: secs(self.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            deadline: secs(self.deadline, DEFAULT_DEADLINE),
        })
    }
}

/// A host name or address with nothing odd in it.
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_failover_order() {
        let file: ConfigFile =
            toml::from_str("[peer.hub]\nhost = \"a.test\"\nhosts = [\"b.test\"]\n").unwrap();
        let peer = file.peer("hub").unwrap();
        assert_eq!(peer.hosts, ["a.test", "b.test"]);
        assert_eq!(peer.port, 22);
        assert_eq!(peer.command, "receive");
        assert_eq!(peer.deadline, Duration::from_secs(DEFAULT_DEADLINE));
    }

    #[test]
    fn unknown_peer_names_the_known_ones() {
        let file: ConfigFile = toml::from_str("[peer.hub]\nhost = \"a\"\n").unwrap();
        let err = file.peer("hbu").unwrap_err();
        assert!(
            err.contains("[peer.hbu]") && err.contains("known peers: hub"),
            "{err}"
        );
    }

    #[test]
    fn typos_in_keys_are_errors() {
        assert!(toml::from_str::<ConfigFile>("[peer.hub]\nhots = \"a\"\n").is_err());
    }

    #[test]
    fn hostile_host_refused() {
        let file: ConfigFile = toml::from_str("[peer.hub]\nhost = \"a;b\"\n").unwrap();
        assert!(file.peer("hub").is_err());
    }
}
