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
//! `example.com bsmtp-ssh:hub` uses `[peer.hub]`.
//!
//! Several hubs, each with its own login and pinned host key, make one
//! destination with `failover`, naming other sections, tried in order:
//!
//! ```toml
//! [peer.hubs]
//! failover = ["hub1", "hub2"]
//! [peer.hub1]
//! host = "hub1.example.com"
//! [peer.hub2]
//! host = "hub2.example.net"
//! user = "leaf7"
//! known_hosts = "/etc/bsmtp-ssh/known_hosts.hub2"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bsmtp_session::config_keys::{self, Section};
use bsmtp_session::ssh::{Hub, Peer, Proxy};
use serde::Deserialize;

/// Where the config lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/bsmtp-ssh/bsmtp-ssh.conf";
/// Where a user's own config lives, under their home directory: looked
/// for before [`DEFAULT_CONFIG`] by the commands a user or a timer runs
/// (`sendmail`, `flush`, `queue`, `check`).
pub const USER_CONFIG: &str = ".config/bsmtp-ssh/bsmtp-ssh.conf";

/// The config file a command without `--config` reads: the first of
/// `$BSMTP_SSH_CONFIG`, `~/.config/bsmtp-ssh/bsmtp-ssh.conf` (when it
/// exists) and [`DEFAULT_CONFIG`]. Postfix's transports (`deliver`,
/// `lmtp`, `enqueue`) are always given `--config` by their master.cf
/// entry, and do not look.
pub fn lookup(given: Option<&Path>) -> PathBuf {
    if let Some(path) = given {
        return path.to_owned();
    }
    if let Some(path) = std::env::var_os("BSMTP_SSH_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let own = PathBuf::from(home).join(USER_CONFIG);
        if own.is_file() {
            return own;
        }
    }
    PathBuf::from(DEFAULT_CONFIG)
}

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
/// Default time a message whose acknowledgement was lost waits for the hub
/// that may hold it (one day: well inside Postfix's 5-day
/// `maximal_queue_lifetime`, so it goes to another hub rather than bounce).
pub const DEFAULT_FAILOVER_HOLD: u64 = 86_400;

/// One `[peer.NAME]` section as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// Other `[peer.NAME]` sections, each a hub of this destination, tried
    /// in order (instead of `host`).
    #[serde(default)]
    pub failover: Vec<String>,
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
    /// Seconds a message whose acknowledgement was lost waits for the hub
    /// that may hold it before another hub may take it.
    pub failover_hold: Option<u64>,
    /// libssh2's zlib compression on the SSH link (for slow links and text).
    pub compression: Option<bool>,
    /// Tables `push-table --all` sends to this peer: name -> source file.
    #[serde(default)]
    pub tables: BTreeMap<String, PathBuf>,
    /// `pull`: accept recipients whose local part routes elsewhere (`%`,
    /// `!`, a quoted `@`); default false, refused.
    pub allow_routing_forms: Option<bool>,
    /// Another `[peer.NAME]` section: the bastion (jump host) that
    /// forwards our connection to this section's host (OpenSSH's
    /// `ProxyJump`).
    pub proxy_jump: Option<String>,
    /// A program whose standard input and output carry the connection to
    /// this section's host (OpenSSH's `ProxyCommand`; `%h`, `%p`, `%r`).
    pub proxy_command: Option<String>,
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
    /// host's mail (default: the only peer, bastions aside).
    pub sendmail_peer: Option<String>,
    /// `bsmtp-ssh sendmail`: the domain of a sender not given with -f, after
    /// the login name, and of a bare `-f` name (default: the host name).
    pub sender_domain: Option<String>,
    /// `bsmtp-ssh sendmail`: the domain a bare recipient (`root`) takes,
    /// as Postfix's `myorigin` (default: `sender_domain`).
    pub recipient_domain: Option<String>,
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

    /// Refuses `command` (`flush`, `queue`, `enqueue`) run by anyone but
    /// the owner of the spool directory: root's flush would leave
    /// root-owned message and lock files that the owner's own runs (the
    /// flush timer, pipe(8)'s enqueue) can no longer read or lock, and
    /// the spool would jam with nothing said. `Err` names the fix.
    ///
    /// Refusing rather than switching to the owner when root: the admin
    /// sees which account the spool works as, the config and key are read
    /// by the account that will read them every time, and no privilege is
    /// juggled in a program root runs. A spool directory that does not
    /// exist yet is not checked (the commands say so themselves).
    pub fn require_spool_owner(&self, command: &str) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let base = self.spool_directory();
        let Ok(meta) = std::fs::metadata(&base) else {
            return Ok(());
        };
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() == me {
            return Ok(());
        }
        let name = |uid: u32| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or_else(|| uid.to_string(), |user| user.name)
        };
        let owner = name(meta.uid());
        let words: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|w| shell_word(&w.to_string_lossy()))
            .collect();
        Err(format!(
            "bsmtp-ssh {command}: the spool {} belongs to {owner}, and this runs as {}: files written now would not be usable by {owner} (the flush timer and pipe(8) work as {owner}); run it as the owner: runuser -u {owner} -- bsmtp-ssh {}",
            base.display(),
            name(me),
            words.join(" ")
        ))
    }

    /// `sender_domain`, or the host name.
    pub fn sender_domain(&self) -> String {
        self.sender_domain
            .clone()
            .unwrap_or_else(crate::deliver::helo_name)
    }

    /// `recipient_domain`, or [`ConfigFile::sender_domain`].
    pub fn recipient_domain(&self) -> String {
        self.recipient_domain
            .clone()
            .unwrap_or_else(|| self.sender_domain())
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

    /// `tag_directory`, or its default; `None` when set empty (no tags).
    pub fn tag_directory(&self) -> Option<PathBuf> {
        let dir = self
            .tag_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from(bsmtp_session::tags::DEFAULT_DIRECTORY));
        (!dir.as_os_str().is_empty()).then_some(dir)
    }

    /// The failover pins of `peer` (see [`bsmtp_session::pins`]), when it
    /// has several hubs.
    pub fn pins(&self, peer: &Peer) -> Option<bsmtp_session::pins::Pins> {
        bsmtp_session::pins::for_peer(self.tag_directory().as_deref(), peer)
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
        Self::parse(&text, path)
    }

    /// Parses `text`, read from `path`; a valid key in the wrong section
    /// is said to be one, with the section it belongs in.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| {
            let error = format!(
                "config {}: {}",
                path.display(),
                bsmtp::text::one_line(&err.to_string())
            );
            config_keys::explain(
                error,
                &[
                    Section {
                        place: "at the top of the file, above the first [peer.NAME] line",
                        keys: config_keys::fields_of::<ConfigFile>(),
                    },
                    Section {
                        place: "in a [peer.NAME] section",
                        keys: config_keys::fields_of::<PeerSection>(),
                    },
                ],
            )
        })
    }

    /// The peer called `name`, with defaults filled in.
    pub fn peer(&self, name: &str) -> Result<Peer, String> {
        let section = self.section(name)?;
        if section.failover.is_empty() {
            let proxy = self.proxy(name, section, &mut Vec::new())?;
            let hubs = section.hubs(name, None, proxy.as_ref())?;
            return Ok(section.destination(name, hubs));
        }
        section.resolve_failover(name, |hub| {
            let hub_section = self
                .section(hub)
                .map_err(|err| format!("peer {name}: failover names hub {hub}: {err}"))?;
            if !hub_section.failover.is_empty() {
                return Err(format!(
                    "peer {name}: failover names {hub}, which itself fails over; name the hubs themselves"
                ));
            }
            let proxy = self.proxy(hub, hub_section, &mut Vec::new())?;
            Ok((hub_section, proxy))
        })
    }

    /// The sections some `proxy_jump` names: bastions, not destinations
    /// of their own (`check` reaches them through the peers that use
    /// them).
    pub fn bastions(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .peer
            .values()
            .filter_map(|section| section.proxy_jump.as_deref())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// How the hosts of section `name` are reached: its `proxy_jump` (the
    /// bastion's section resolved, with its own proxy, so chains work) or
    /// its `proxy_command`. `seen` holds the sections already on the
    /// chain, to refuse a loop.
    fn proxy(
        &self,
        name: &str,
        section: &PeerSection,
        seen: &mut Vec<String>,
    ) -> Result<Option<Proxy>, String> {
        match (&section.proxy_jump, &section.proxy_command) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(format!(
                "peer {name}: proxy_jump and proxy_command do not go together; set one"
            )),
            (None, Some(command)) => {
                bsmtp_session::proxy::command_argv(command, "host", 22, "user")
                    .map_err(|err| format!("peer {name}: proxy_command: {err}"))?;
                Ok(Some(Proxy::Command(command.clone())))
            }
            (Some(bastion), None) => {
                seen.push(name.to_owned());
                if seen.contains(bastion) {
                    return Err(format!(
                        "peer {name}: proxy_jump makes a loop: {} -> {bastion}",
                        seen.join(" -> ")
                    ));
                }
                let jump = self
                    .section(bastion)
                    .map_err(|err| format!("peer {name}: proxy_jump names {bastion}: {err}"))?;
                if !jump.failover.is_empty()
                    || jump.hosts.len() + usize::from(jump.host.is_some()) != 1
                {
                    return Err(format!(
                        "peer {name}: proxy_jump names {bastion}, which must give one host (host = \"...\"), not failover or hosts"
                    ));
                }
                let inner = self.proxy(bastion, jump, seen)?;
                let mut hubs = jump.hubs(bastion, None, inner.as_ref())?;
                Ok(hubs.pop().map(|hub| Proxy::Jump(Box::new(hub))))
            }
        }
    }

    fn section(&self, name: &str) -> Result<&PeerSection, String> {
        self.peer.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.peer.keys().map(String::as_str).collect();
            format!(
                "no [peer.{name}] section in the config (known peers: {}); check the nexthop in Postfix's transport map",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )
        })
    }
}

impl PeerSection {
    /// Fills in defaults and checks what can be checked offline (a section
    /// with `host`/`hosts`: each host is a hub, with the same login).
    /// `proxy_jump` needs the whole file: use [`ConfigFile::peer`].
    pub fn resolve(&self, name: &str) -> Result<Peer, String> {
        if self.proxy_jump.is_some() {
            return Err(format!(
                "peer {name}: proxy_jump needs the config file that names the bastion"
            ));
        }
        let proxy = self.proxy_command.clone().map(Proxy::Command);
        let hubs = self.hubs(name, None, proxy.as_ref())?;
        Ok(self.destination(name, hubs))
    }

    /// A `failover` section: each named section (from `section`) gives its
    /// hubs, in order, with its own login, key and pinned host keys; the
    /// delivery's limits and command are this section's.
    fn resolve_failover<'a>(
        &self,
        name: &str,
        section: impl Fn(&str) -> Result<(&'a PeerSection, Option<Proxy>), String>,
    ) -> Result<Peer, String> {
        let reach = [
            ("host", self.host.is_some() || !self.hosts.is_empty()),
            ("port", self.port.is_some()),
            ("user", self.user.is_some()),
            ("identity", self.identity.is_some()),
            ("known_hosts", self.known_hosts.is_some()),
            ("compression", self.compression.is_some()),
            ("proxy_jump", self.proxy_jump.is_some()),
            ("proxy_command", self.proxy_command.is_some()),
        ];
        if let Some((key, _)) = reach.iter().find(|(_, set)| *set) {
            return Err(format!(
                "peer {name}: {key} does not go with failover; set it in each hub's own [peer.NAME] section"
            ));
        }
        let mut hubs = Vec::new();
        for (i, hub) in self.failover.iter().enumerate() {
            if self.failover[..i].contains(hub) {
                return Err(format!("peer {name}: failover names {hub} twice"));
            }
            let (hub_section, proxy) = section(hub)?;
            hubs.extend(hub_section.hubs(hub, self.connect_timeout, proxy.as_ref())?);
        }
        Ok(self.destination(name, hubs))
    }

    /// This section's hosts as hubs: named after the section, or after
    /// section and host when it lists several.
    fn hubs(
        &self,
        name: &str,
        connect_timeout: Option<u64>,
        proxy: Option<&Proxy>,
    ) -> Result<Vec<Hub>, String> {
        let mut hosts: Vec<String> = self.host.iter().cloned().collect();
        hosts.extend(self.hosts.iter().cloned());
        if hosts.is_empty() {
            return Err(format!(
                "peer {name}: no host given (set host = \"...\", or failover = [\"hub1\", \"hub2\"])"
            ));
        }
        if let Some(bad) = hosts.iter().find(|h| !plain_host(h)) {
            return Err(format!(
                "peer {name}: bad host name \"{}\"",
                bsmtp::text::one_line(bad)
            ));
        }
        let several = hosts.len() > 1;
        let connect_timeout = self
            .connect_timeout
            .or(connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        Ok(hosts
            .into_iter()
            .map(|host| Hub {
                name: if several {
                    format!("{name}/{host}")
                } else {
                    name.to_owned()
                },
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
                connect_timeout: Duration::from_secs(connect_timeout),
                compression: self.compression.unwrap_or(false),
                proxy: proxy.cloned(),
                host,
            })
            .collect())
    }

    fn destination(&self, name: &str, hubs: Vec<Hub>) -> Peer {
        let secs = |value: Option<u64>, default| Duration::from_secs(value.unwrap_or(default));
        Peer {
            name: name.to_owned(),
            hubs,
            command: self.command.clone().unwrap_or_else(|| "receive".into()),
            idle_timeout: secs(self.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            deadline: secs(self.deadline, DEFAULT_DEADLINE),
            failover_hold: secs(self.failover_hold, DEFAULT_FAILOVER_HOLD),
        }
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

/// `word` as one shell word, for a command line shown to copy.
fn shell_word(word: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b);
    if !word.is_empty() && word.bytes().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_failover_order() {
        let file: ConfigFile =
            toml::from_str("[peer.hub]\nhost = \"a.test\"\nhosts = [\"b.test\"]\n").unwrap();
        let peer = file.peer("hub").unwrap();
        let hosts: Vec<&str> = peer.hubs.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, ["a.test", "b.test"]);
        assert_eq!(peer.hubs[1].name, "hub/b.test");
        assert_eq!(peer.hubs[0].port, 22);
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
        let err = ConfigFile::parse("[peer.hub]\nhots = \"a\"\n", Path::new("c")).unwrap_err();
        assert!(!err.contains("belongs"), "{err}");
    }

    /// Regression (issue 19, 5.8): a valid key in the wrong section was
    /// reported as just "unknown field"; the error now says where it goes.
    #[test]
    fn a_valid_key_in_the_wrong_section_says_where_it_belongs() {
        let path = Path::new("/etc/bsmtp-ssh/bsmtp-ssh.conf");
        let err = ConfigFile::parse(
            "[peer.hub]\nhost = \"a\"\nspool_directory = \"/var/spool/x\"\n",
            path,
        )
        .unwrap_err();
        assert!(
            err.starts_with("config /etc/bsmtp-ssh/bsmtp-ssh.conf: ")
                && err.contains("unknown field `spool_directory`")
                && err.contains(
                    "`spool_directory` is a valid key, but it belongs at the top of the file, \
                     above the first [peer.NAME] line"
                ),
            "{err}"
        );
        let err = ConfigFile::parse("known_hosts = \"/k\"\n[peer.hub]\nhost = \"a\"\n", path)
            .unwrap_err();
        assert!(
            err.contains("`known_hosts` is a valid key, but it belongs in a [peer.NAME] section"),
            "{err}"
        );
    }

    #[test]
    fn hostile_host_refused() {
        let file: ConfigFile = toml::from_str("[peer.hub]\nhost = \"a;b\"\n").unwrap();
        assert!(file.peer("hub").is_err());
    }

    #[test]
    fn failover_hubs_keep_their_own_login() {
        let file: ConfigFile = toml::from_str(
            "[peer.hubs]\nfailover = [\"hub1\", \"hub2\"]\nconnect_timeout = 3\ndeadline = 60\n\
             [peer.hub1]\nhost = \"a.test\"\ncompression = true\n\
             [peer.hub2]\nhost = \"b.test\"\nport = 2222\nuser = \"leaf7\"\nknown_hosts = \"/k2\"\nconnect_timeout = 9\n",
        )
        .unwrap();
        let peer = file.peer("hubs").unwrap();
        assert_eq!(peer.name, "hubs");
        assert_eq!(peer.deadline, Duration::from_mins(1));
        let [hub1, hub2] = &peer.hubs[..] else {
            panic!("{peer:?}")
        };
        assert_eq!((hub1.name.as_str(), hub1.host.as_str()), ("hub1", "a.test"));
        assert!(hub1.compression && !hub2.compression);
        assert_eq!(hub1.connect_timeout, Duration::from_secs(3));
        assert_eq!(hub2.connect_timeout, Duration::from_secs(9));
        assert_eq!((hub2.port, hub2.user.as_str()), (2222, "leaf7"));
        assert_eq!(hub2.known_hosts, PathBuf::from("/k2"));
        assert_eq!(hub1.known_hosts, PathBuf::from(DEFAULT_KNOWN_HOSTS));
    }

    #[test]
    fn failover_mistakes_are_named() {
        for (text, wanted) in [
            ("[peer.d]\nfailover = [\"nope\"]\n", "no [peer.nope] section"),
            (
                "[peer.d]\nfailover = [\"h\"]\nhost = \"x\"\n[peer.h]\nhost = \"a\"\n",
                "host does not go with failover",
            ),
            (
                "[peer.d]\nfailover = [\"e\"]\n[peer.e]\nfailover = [\"h\"]\n[peer.h]\nhost = \"a\"\n",
                "itself fails over",
            ),
            (
                "[peer.d]\nfailover = [\"h\", \"h\"]\n[peer.h]\nhost = \"a\"\n",
                "twice",
            ),
        ] {
            let file: ConfigFile = toml::from_str(text).unwrap();
            let err = file.peer("d").unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn proxy_jump_chains_and_keeps_each_hops_own_login() {
        let file: ConfigFile = toml::from_str(
            "[peer.hub]\nhost = \"hub.internal\"\nproxy_jump = \"inner\"\n\
             [peer.inner]\nhost = \"inner.test\"\nuser = \"jumper\"\nknown_hosts = \"/k-inner\"\nproxy_jump = \"outer\"\n\
             [peer.outer]\nhost = \"outer.test\"\nport = 2200\nproxy_command = \"nc %h %p\"\n",
        )
        .unwrap();
        let peer = file.peer("hub").unwrap();
        let Some(Proxy::Jump(inner)) = &peer.hubs[0].proxy else {
            panic!("{peer:?}")
        };
        assert_eq!(
            (
                inner.name.as_str(),
                inner.host.as_str(),
                inner.user.as_str()
            ),
            ("inner", "inner.test", "jumper")
        );
        assert_eq!(inner.known_hosts, PathBuf::from("/k-inner"));
        let Some(Proxy::Jump(outer)) = &inner.proxy else {
            panic!("{inner:?}")
        };
        assert_eq!((outer.host.as_str(), outer.port), ("outer.test", 2200));
        assert_eq!(outer.proxy, Some(Proxy::Command("nc %h %p".into())));
        assert_eq!(file.bastions(), ["inner", "outer"]);
    }

    #[test]
    fn a_failover_hub_may_have_its_own_bastion() {
        let file: ConfigFile = toml::from_str(
            "[peer.d]\nfailover = [\"h1\", \"h2\"]\n[peer.h1]\nhost = \"a\"\nproxy_jump = \"b\"\n\
             [peer.h2]\nhost = \"c\"\n[peer.b]\nhost = \"bastion.test\"\n",
        )
        .unwrap();
        let peer = file.peer("d").unwrap();
        assert!(matches!(&peer.hubs[0].proxy, Some(Proxy::Jump(b)) if b.host == "bastion.test"));
        assert_eq!(peer.hubs[1].proxy, None);
    }

    #[test]
    fn proxy_mistakes_are_named() {
        for (text, wanted) in [
            ("[peer.d]\nhost = \"a\"\nproxy_jump = \"nope\"\n", "proxy_jump names nope"),
            ("[peer.d]\nhost = \"a\"\nproxy_jump = \"d\"\n", "loop"),
            (
                "[peer.d]\nhost = \"a\"\nproxy_jump = \"b\"\n[peer.b]\nhost = \"b\"\nproxy_jump = \"d\"\n",
                "loop: d -> b -> d",
            ),
            (
                "[peer.d]\nhost = \"a\"\nproxy_jump = \"b\"\nproxy_command = \"nc %h %p\"\n[peer.b]\nhost = \"b\"\n",
                "do not go together",
            ),
            (
                "[peer.d]\nhost = \"a\"\nproxy_jump = \"b\"\n[peer.b]\nhosts = [\"x\", \"y\"]\n",
                "must give one host",
            ),
            ("[peer.d]\nhost = \"a\"\nproxy_command = \"nc %x\"\n", "%x"),
            (
                "[peer.d]\nfailover = [\"h\"]\nproxy_jump = \"b\"\n[peer.h]\nhost = \"a\"\n",
                "proxy_jump does not go with failover",
            ),
        ] {
            let file: ConfigFile = toml::from_str(text).unwrap();
            let err = file.peer("d").unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }
}
