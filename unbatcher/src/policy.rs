//! What one peer may do: the senders it may use, the size and recipient
//! limits, read from `rsmtp.conf` and the forced-command line.
//!
//! The peer's identity is the `--peer` argument of its key's forced command
//! and nothing else: a client never names itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bsmtp_session::config_keys::{self, Section};
use bsmtp_session::policy::{check_peer_name, Policy, SenderPattern};
use bsmtp_session::smtp_inject::Inject;
use serde::Deserialize;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/bsmtp-ssh/rsmtp.conf";
/// Default largest message, as Postfix's `message_size_limit`.
pub const DEFAULT_MAX_SIZE: u64 = 10_240_000;
/// Default most recipients per message.
pub const DEFAULT_MAX_RECIPIENTS: usize = 1000;

/// The policy a forced-command line may carry; the same flags on `rsmtp`
/// itself and on `rsmtp authorize`, which writes them into that line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// Allow envelope senders matching PATTERN (user@domain, @domain,
    /// @.domain for subdomains, * for any); repeat for more; adds to the
    /// config file's list.
    #[arg(long = "allow-sender", value_name = "PATTERN")]
    pub allow_sender: Vec<String>,
    /// Allow only recipients matching PATTERN (same forms as senders);
    /// repeat for more; adds to the config file's list; none given: any.
    #[arg(long = "allow-recipient", value_name = "PATTERN")]
    pub allow_recipient: Vec<String>,
    /// Largest message in bytes (overrides the config file).
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<u64>,
    /// Most recipients per message (overrides the config file).
    #[arg(long, value_name = "N")]
    pub max_recipients: Option<usize>,
    /// Also require every From: header address to match the allowed
    /// senders (the envelope sender is always checked).
    #[arg(long)]
    pub check_header_from: bool,
    /// End the session with 421 after this many refused commands without
    /// an accepted message (default: the hard error limit of the hub's smtpd,
    /// 20 unless its main.cf says otherwise).
    #[arg(long, value_name = "N")]
    pub hard_error_limit: Option<usize>,
    /// Grant the peer an SSH verb besides `receive`: `pull` (fetch the
    /// mail spooled for it); repeat for more; adds to the config file's.
    #[arg(long = "allow-verb", value_name = "VERB")]
    pub allow_verb: Vec<String>,
    /// Let the peer replace the hub's lookup table NAME with `put-table
    /// NAME` (a plain name: letters, digits, `_`, `-`, `.`); repeat for
    /// more; adds to the config file's.
    #[arg(long = "allow-table", value_name = "NAME")]
    pub allow_table: Vec<String>,
}

/// `rsmtp.conf` as written by the admin.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Postfix config directory postdrop writes into.
    pub postfix_config: Option<PathBuf>,
    /// The postdrop program.
    pub postdrop: Option<PathBuf>,
    /// The postlog(1) to log through when Postfix logs to a `maillog_file`.
    pub postlog: Option<PathBuf>,
    /// Where committed transaction tags are kept, one directory per peer
    /// (empty: no tags).
    pub tag_directory: Option<PathBuf>,
    /// Where offline transactions refused at `MAIL FROM` are kept, one
    /// directory per peer (default /var/lib/bsmtp-ssh/rejects; empty:
    /// only logged).
    pub reject_directory: Option<PathBuf>,
    /// Seconds a committed tag is kept.
    pub tag_lifetime: Option<u64>,
    /// Most tags kept per peer.
    pub tag_limit: Option<usize>,
    /// Seconds a content tag of the sendmail verb is kept: a message with
    /// the same sender, recipients and content within this time is taken
    /// for a resend after a lost exit status, and not queued again
    /// (default 600).
    pub content_tag_lifetime: Option<u64>,
    /// Where the hub's `bsmtp-ssh enqueue` spools mail for pulling peers,
    /// a directory per peer (default /var/spool/bsmtp-ssh).
    pub spool_directory: Option<PathBuf>,
    /// Seconds spooled mail for a pulling peer may wait before it bounces
    /// (default: the hub's `maximal_queue_lifetime`).
    pub spool_lifetime: Option<u64>,
    /// Bytes kept free on the file system of the hub's queue; below it
    /// MAIL FROM gets `452 4.3.1` (default 64 MiB; 0: no floor). The same
    /// floor holds for `table_directory`'s file system.
    pub min_free: Option<u64>,
    /// Where `put-table` installs pushed tables (default
    /// /var/lib/bsmtp-ssh/tables).
    pub table_directory: Option<PathBuf>,
    /// Whether `put-table` insists on the request's size and SHA-256
    /// (default true; false also takes a plain `put-table NAME`).
    pub table_require_checksum: Option<bool>,
    /// The Postfix table type pushed tables are built as (default hash).
    pub table_type: Option<String>,
    /// Largest table source `put-table` takes, in bytes (default 64 MiB).
    pub table_max_size: Option<u64>,
    /// How received mail enters the hub's queue: `postdrop` (default),
    /// `smtp:HOST:PORT` or `smtp:unix:PATH` (the fast path: a dedicated
    /// smtpd listener).
    pub inject: Option<String>,
    /// Per-peer rules.
    #[serde(default)]
    pub peer: BTreeMap<String, PeerConfig>,
}

/// One `[peer.NAME]` section.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Allowed sender patterns.
    #[serde(default)]
    pub allow_sender: Vec<String>,
    /// Allowed recipient patterns (none: any).
    #[serde(default)]
    pub allow_recipient: Vec<String>,
    /// Largest message in bytes.
    pub max_size: Option<u64>,
    /// Most recipients per message.
    pub max_recipients: Option<usize>,
    /// Refused commands before the session ends with 421.
    pub hard_error_limit: Option<usize>,
    /// Check From: header addresses against `allow_sender` too.
    pub check_header_from: Option<bool>,
    /// SSH verbs granted besides `receive` (`pull`).
    #[serde(default)]
    pub allow_verb: Vec<String>,
    /// Tables the peer may replace with `put-table`.
    #[serde(default)]
    pub allow_table: Vec<String>,
    /// How this peer's mail enters the hub's queue (overrides the global
    /// `inject`).
    pub inject: Option<String>,
    /// Accept recipients whose local part routes elsewhere (`%`, `!`, a
    /// quoted `@`), as the hub's trivial-rewrite(8) would resolve them
    /// (default false: refused with 554 5.7.1).
    pub allow_routing_forms: Option<bool>,
}

/// Where each kind of rsmtp.conf key goes, for [`config_keys::explain`]:
/// a valid key in the wrong section is said to be one.
fn sections() -> [Section; 2] {
    [
        Section {
            place: "at the top of the file, above the first [peer.NAME] line",
            keys: config_keys::fields_of::<ConfigFile>(),
        },
        Section {
            place: "in a [peer.NAME] section",
            keys: config_keys::fields_of::<PeerConfig>(),
        },
    ]
}

impl ConfigFile {
    /// Reads `path`; a missing default file is an empty config, a missing
    /// file named by the admin is an error.
    pub fn load(path: &Path, named: bool) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|err| {
                let error = format!(
                    "{}: {}",
                    path.display(),
                    bsmtp::text::one_line(&err.to_string())
                );
                config_keys::explain(error, &sections())
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !named => {
                Ok(ConfigFile::default())
            }
            Err(err) => Err(format!("{}: {err}", path.display())),
        }
    }

    /// The logging settings (`postfix_config`, `postlog`) of a file that
    /// does not load (an unknown or misplaced key, a wrong type
    /// elsewhere), read leniently, so the error that stops rsmtp reaches
    /// the mail log it names; defaults when even that fails.
    pub fn logging_only(path: &Path) -> Self {
        let table: Option<toml::Table> = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse().ok());
        let path_of = |key: &str| {
            table
                .as_ref()
                .and_then(|t| t.get(key))
                .and_then(toml::Value::as_str)
                .map(PathBuf::from)
        };
        ConfigFile {
            postfix_config: path_of("postfix_config"),
            postlog: path_of("postlog"),
            ..ConfigFile::default()
        }
    }

    /// The policy for `peer`: the file's section with the command line's
    /// settings on top.
    pub fn policy(&self, peer: &str, args: &PolicyArgs) -> Result<Policy, String> {
        check_peer_name(peer)?;
        let section = self.peer.get(peer).cloned().unwrap_or_default();
        let allow_sender = section
            .allow_sender
            .iter()
            .chain(&args.allow_sender)
            .map(|p| SenderPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_recipient = section
            .allow_recipient
            .iter()
            .chain(&args.allow_recipient)
            .map(|p| SenderPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let max_size = args.max_size.or(section.max_size);
        Ok(Policy {
            peer: peer.to_owned(),
            allow_sender,
            allow_recipient,
            max_size: max_size.unwrap_or(DEFAULT_MAX_SIZE),
            max_size_set: max_size.is_some(),
            max_recipients: args
                .max_recipients
                .or(section.max_recipients)
                .unwrap_or(DEFAULT_MAX_RECIPIENTS),
            hard_error_limit: args.hard_error_limit.or(section.hard_error_limit),
            check_header_from: args.check_header_from || section.check_header_from.unwrap_or(false),
            allow_routing_forms: section.allow_routing_forms.unwrap_or(false),
        })
    }
}

impl ConfigFile {
    /// How `peer`'s mail enters the queue: the command line's `--inject`,
    /// else the peer's section, else the global key, else postdrop.
    pub fn inject(&self, peer: &str, command_line: Option<&str>) -> Result<Inject, String> {
        let section = self.peer.get(peer).and_then(|p| p.inject.as_deref());
        command_line
            .or(section)
            .or(self.inject.as_deref())
            .map_or(Ok(Inject::Postdrop), Inject::parse)
    }
}

/// SSH verbs a peer may be granted besides `receive`.
/// (`sendmail` also grants `rsendmail`, the same verb by rsendmail's name.)
pub const GRANTABLE_VERBS: [&str; 2] = ["pull", "sendmail"];

impl ConfigFile {
    /// The verbs granted to `peer` besides `receive`: the file's and the
    /// command line's. An unknown verb is an error, so a typo cannot
    /// silently grant nothing.
    pub fn verbs(&self, peer: &str, args: &PolicyArgs) -> Result<Vec<String>, String> {
        let section = self.peer.get(peer).cloned().unwrap_or_default();
        let mut verbs = Vec::new();
        for verb in section.allow_verb.iter().chain(&args.allow_verb) {
            if !GRANTABLE_VERBS.contains(&verb.as_str()) {
                return Err(format!(
                    "unknown verb \"{}\" in allow_verb/--allow-verb (known: {})",
                    bsmtp::text::printable(verb.as_bytes()),
                    GRANTABLE_VERBS.join(", ")
                ));
            }
            if !verbs.contains(verb) {
                verbs.push(verb.clone());
            }
        }
        Ok(verbs)
    }
}

impl ConfigFile {
    /// The tables `peer` may replace with `put-table`: the file's and the
    /// command line's. A name that is not a plain table name is an error,
    /// so a grant can never reach outside `table_directory`.
    pub fn tables(&self, peer: &str, args: &PolicyArgs) -> Result<Vec<String>, String> {
        let section = self.peer.get(peer).cloned().unwrap_or_default();
        let mut tables = Vec::new();
        for name in section.allow_table.iter().chain(&args.allow_table) {
            bsmtp::table::check_name(name)
                .map_err(|err| format!("allow_table/--allow-table: {err}"))?;
            if !tables.contains(name) {
                tables.push(name.clone());
            }
        }
        Ok(tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 19, 5.8): a valid key in the wrong section of
    /// rsmtp.conf was reported as just "unknown field".
    #[test]
    fn a_valid_key_in_the_wrong_section_says_where_it_belongs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rsmtp.conf");
        std::fs::write(
            &path,
            "[peer.leaf1]\nallow_sender = [\"@leaf1.test\"]\nmin_free = 0\n",
        )
        .unwrap();
        let err = ConfigFile::load(&path, true).unwrap_err();
        assert!(
            err.contains("unknown field `min_free`")
                && err.contains("`min_free` is a valid key, but it belongs at the top of the file"),
            "{err}"
        );
        std::fs::write(&path, "max_recipients = 5\n").unwrap();
        let err = ConfigFile::load(&path, true).unwrap_err();
        assert!(
            err.contains(
                "`max_recipients` is a valid key, but it belongs in a [peer.NAME] section"
            ),
            "{err}"
        );
    }

    #[test]
    fn null_sender_always_allowed_and_nothing_else_by_default() {
        let policy = ConfigFile::default()
            .policy("leaf1", &PolicyArgs::default())
            .unwrap();
        assert!(policy.sender_allowed(""));
        assert!(!policy.sender_allowed("alice@leaf.test"));
    }

    #[test]
    fn command_line_adds_to_the_file() {
        let file: ConfigFile =
            toml::from_str("[peer.leaf1]\nallow_sender = [\"@leaf1.test\"]\nmax_size = 5\n")
                .unwrap();
        let args = PolicyArgs {
            allow_sender: vec!["bob@other.test".into()],
            max_recipients: Some(3),
            ..PolicyArgs::default()
        };
        let policy = file.policy("leaf1", &args).unwrap();
        assert!(policy.sender_allowed("x@leaf1.test"));
        assert!(policy.sender_allowed("bob@other.test"));
        assert_eq!((policy.max_size, policy.max_recipients), (5, 3));
    }

    /// Routing forms are refused unless the peer's own section opts in;
    /// another peer of the same file stays refused.
    #[test]
    fn routing_forms_opt_in_is_per_peer() {
        let file: ConfigFile =
            toml::from_str("[peer.leaf1]\nallow_routing_forms = true\n[peer.leaf2]\n").unwrap();
        let allowed = |peer: &str| {
            file.policy(peer, &PolicyArgs::default())
                .unwrap()
                .check_recipient("victim%external.test@hub.test")
                .is_ok()
        };
        assert!(allowed("leaf1"));
        assert!(!allowed("leaf2"));
        assert!(!allowed("leaf3"));
    }

    #[test]
    fn table_grants_add_up_and_bad_names_are_config_errors() {
        let file: ConfigFile =
            toml::from_str("[peer.leaf1]\nallow_table = [\"relay_recipients\"]\n").unwrap();
        let args = PolicyArgs {
            allow_table: vec!["transport".into(), "relay_recipients".into()],
            ..PolicyArgs::default()
        };
        assert_eq!(
            file.tables("leaf1", &args).unwrap(),
            ["relay_recipients", "transport"]
        );
        assert!(file
            .tables("leaf2", &PolicyArgs::default())
            .unwrap()
            .is_empty());
        let bad = PolicyArgs {
            allow_table: vec!["../main.cf".into()],
            ..PolicyArgs::default()
        };
        assert!(file.tables("leaf1", &bad).is_err());
    }

    /// `inject`: the command line, else the peer's section, else the top,
    /// else postdrop; a malformed value is a configuration error.
    #[test]
    fn inject_comes_from_the_command_line_the_peer_or_the_top() {
        use bsmtp_session::smtp_inject::Endpoint;
        let file: ConfigFile = toml::from_str(
            "inject = \"smtp:127.0.0.1:10025\"\n[peer.leaf1]\ninject = \"smtp:unix:public/bsmtp-inject\"\n[peer.leaf3]\ninject = \"postdrop\"\n",
        )
        .unwrap();
        let tcp = Inject::Smtp(Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 10025,
        });
        assert_eq!(
            file.inject("leaf1", None).unwrap(),
            Inject::Smtp(Endpoint::Unix("public/bsmtp-inject".into()))
        );
        assert_eq!(file.inject("leaf2", None).unwrap(), tcp);
        assert_eq!(file.inject("leaf3", None).unwrap(), Inject::Postdrop);
        assert_eq!(
            file.inject("leaf1", Some("postdrop")).unwrap(),
            Inject::Postdrop
        );
        assert_eq!(
            ConfigFile::default().inject("leaf1", None).unwrap(),
            Inject::Postdrop
        );
        assert!(file.inject("leaf1", Some("smtp:nowhere")).is_err());
    }
}
