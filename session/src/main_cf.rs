//! Reading the few main.cf parameters we need without running postconf(1).
//!
//! Both binaries need facts about the Postfix instance they work with:
//! where it logs (`maillog_file`, `queue_directory`), how big a message it
//! takes (`message_size_limit`). `postconf -h` answers exactly, but costs an
//! exec and a full main.cf parse (about 18 ms here), per message in pipe
//! mode. main.cf's syntax is simple enough to read directly: `name = value`,
//! continuation lines start with white space, comment lines with `#`, and
//! `$name`, `${name}` or `$(name)` refer to other parameters. A reference we
//! cannot resolve from the file or from Postfix's defaults we know makes
//! [`MainCf::get`] return `None`, and the caller asks postconf instead
//! ([`MainCf::postconf`]), so a clever main.cf is never misread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Postfix's default config directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/postfix";

/// Postfix's built-in defaults for the parameters we read (Postfix 3.x).
const DEFAULTS: &[(&str, &str)] = &[
    ("queue_directory", "/var/spool/postfix"),
    ("maillog_file", ""),
    ("postlog_service_name", "postlog"),
    ("message_size_limit", "10240000"),
    ("smtpd_hard_error_limit", "20"),
    ("maximal_queue_lifetime", "5d"),
];

/// Most `$name` expansions followed for one value: main.cf may not loop,
/// but we never trust a file to be well-formed.
const MAX_EXPANSIONS: usize = 32;

/// The parameters set in one instance's main.cf.
#[derive(Debug, Clone, Default)]
pub struct MainCf {
    config_dir: PathBuf,
    params: HashMap<String, String>,
}

impl MainCf {
    /// The config directory Postfix programs use when none is given:
    /// `MAIL_CONFIG` from the environment (pipe(8) passes it), else
    /// [`DEFAULT_CONFIG_DIR`].
    pub fn default_dir() -> PathBuf {
        std::env::var_os("MAIL_CONFIG")
            .map_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR), PathBuf::from)
    }

    /// Reads `config_dir/main.cf`. A missing or unreadable file reads as
    /// empty, which is what Postfix makes of it too: every parameter at
    /// its default.
    pub fn load(config_dir: &Path) -> Self {
        let text = std::fs::read_to_string(config_dir.join("main.cf")).unwrap_or_default();
        let mut main_cf = Self::parse(&text);
        main_cf.config_dir = config_dir.to_path_buf();
        main_cf
    }

    /// Parses main.cf text (the last setting of a name wins, as in Postfix).
    pub fn parse(text: &str) -> Self {
        let mut params = HashMap::new();
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            let continues = line.starts_with([' ', '\t']);
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                // Skipped, as Postfix's readllines() does: they neither
                // end nor continue a logical line.
                continue;
            }
            if continues {
                if let Some((_, value)) = current.as_mut() {
                    value.push(' ');
                    value.push_str(trimmed);
                }
                continue;
            }
            if let Some((name, value)) = current.take() {
                params.insert(name, value);
            }
            current = trimmed
                .split_once('=')
                .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()));
        }
        if let Some((name, value)) = current {
            params.insert(name, value);
        }
        MainCf {
            config_dir: PathBuf::new(),
            params,
        }
    }

    /// The directory this was read from.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The value of `name` with `$references` expanded: from main.cf, else
    /// Postfix's default where we know it. `None` when the name or one of
    /// its references is neither (ask [`MainCf::postconf`] then).
    pub fn get(&self, name: &str) -> Option<String> {
        let mut budget = MAX_EXPANSIONS;
        self.expand_name(name, &mut budget)
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str).or_else(|| {
            DEFAULTS
                .iter()
                .find(|(default, _)| *default == name)
                .map(|(_, value)| *value)
        })
    }

    fn expand_name(&self, name: &str, budget: &mut usize) -> Option<String> {
        if *budget == 0 {
            return None;
        }
        *budget -= 1;
        let raw = self.raw(name)?;
        self.expand(raw, budget)
    }

    fn expand(&self, value: &str, budget: &mut usize) -> Option<String> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, tail) = match after.chars().next() {
                Some('$') => {
                    out.push('$');
                    rest = &after[1..];
                    continue;
                }
                Some(open @ ('{' | '(')) => {
                    let close = if open == '{' { '}' } else { ')' };
                    let end = after.find(close)?;
                    let inner = &after[1..end];
                    // `${name?value}` and friends: leave those to postconf.
                    if !is_name(inner) {
                        return None;
                    }
                    (inner, &after[end + 1..])
                }
                _ => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            if name.is_empty() {
                return None;
            }
            out.push_str(&self.expand_name(name, budget)?);
            rest = tail;
        }
        out.push_str(rest);
        Some(out)
    }

    /// Asks `postconf -c DIR -hx NAME` for the exact value (an exec; used
    /// only when [`MainCf::get`] cannot answer).
    pub fn postconf(&self, name: &str) -> Option<String> {
        let mut command = crate::child::command("/usr/sbin/postconf");
        if !self.config_dir.as_os_str().is_empty() {
            command.arg("-c").arg(&self.config_dir);
        }
        let output = command
            .args(["-hx", name])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `get`, falling back to postconf.
    pub fn value(&self, name: &str) -> Option<String> {
        self.get(name).or_else(|| self.postconf(name))
    }

    /// `queue_directory`.
    pub fn queue_directory(&self) -> PathBuf {
        PathBuf::from(
            self.value("queue_directory")
                .unwrap_or_else(|| "/var/spool/postfix".into()),
        )
    }

    /// `maillog_file`, when set: Postfix then logs through postlogd, which
    /// only postlog(1) reaches.
    pub fn maillog_file(&self) -> Option<String> {
        // An unset maillog_file is the common case: no exec for it.
        if !self.params.contains_key("maillog_file") {
            return None;
        }
        self.value("maillog_file").filter(|v| !v.is_empty())
    }

    /// `message_size_limit` in bytes; 0 means no limit.
    pub fn message_size_limit(&self) -> u64 {
        self.value("message_size_limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_240_000)
    }

    /// A numeric parameter, or `default` when unset or not a number.
    pub fn number(&self, name: &str, default: u64) -> u64 {
        self.value(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}

impl MainCf {
    /// `maximal_queue_lifetime` (default 5 days): how long the spool keeps
    /// a message it cannot deliver, as Postfix keeps its own queue's.
    pub fn maximal_queue_lifetime(&self) -> std::time::Duration {
        self.value("maximal_queue_lifetime")
            .and_then(|v| parse_time(&v, 'd'))
            .unwrap_or(std::time::Duration::from_hours(5 * 24))
    }
}

/// A Postfix time value: a number with an optional unit (`s`, `m`, `h`,
/// `d`, `w`), `default_unit` when it has none.
pub fn parse_time(value: &str, default_unit: char) -> Option<std::time::Duration> {
    let value = value.trim();
    let (number, unit) = match value.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => (&value[..at], unit),
        _ => (value, default_unit),
    };
    let seconds = match unit.to_ascii_lowercase() {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    };
    let number: u64 = number.parse().ok()?;
    Some(std::time::Duration::from_secs(number.checked_mul(seconds)?))
}

fn is_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_comments_continuations_and_last_wins() {
        let main_cf = MainCf::parse(
            "# comment\nmyhostname = hub.test\nmessage_size_limit = 1\n\
             message_size_limit=200000\nmydestination = a,\n  b, c\n# x = y\n\nz =\n",
        );
        assert_eq!(main_cf.get("myhostname").as_deref(), Some("hub.test"));
        assert_eq!(main_cf.message_size_limit(), 200_000);
        assert_eq!(main_cf.get("mydestination").as_deref(), Some("a, b, c"));
        assert_eq!(main_cf.get("x"), None);
        assert_eq!(main_cf.get("z").as_deref(), Some(""));
    }

    #[test]
    fn references_expand_from_the_file_and_known_defaults() {
        let main_cf = MainCf::parse(
            "base = /srv/pf\nqueue_directory = ${base}/spool\nmaillog_file = $(queue_directory)/log\n\
             cost = 5$$\nloop = $loop\nunknown = $nosuchparameter_here\n",
        );
        assert_eq!(
            main_cf.get("queue_directory").as_deref(),
            Some("/srv/pf/spool")
        );
        assert_eq!(
            main_cf.get("maillog_file").as_deref(),
            Some("/srv/pf/spool/log")
        );
        assert_eq!(main_cf.get("cost").as_deref(), Some("5$"));
        assert_eq!(main_cf.get("loop"), None, "a loop must end, unresolved");
        assert_eq!(main_cf.get("unknown"), None);
        let empty = MainCf::parse("");
        assert_eq!(
            empty.get("queue_directory").as_deref(),
            Some("/var/spool/postfix")
        );
        assert_eq!(empty.maillog_file(), None);
        assert_eq!(empty.message_size_limit(), 10_240_000);
    }

    #[test]
    fn time_values_in_postfix_units() {
        use std::time::Duration;
        assert_eq!(parse_time("5d", 'd'), Some(Duration::from_hours(120)));
        assert_eq!(parse_time("3", 'd'), Some(Duration::from_hours(72)));
        assert_eq!(parse_time("90s", 'd'), Some(Duration::from_secs(90)));
        assert_eq!(parse_time("2w", 's'), Some(Duration::from_hours(336)));
        assert_eq!(parse_time("5x", 'd'), None);
        assert_eq!(parse_time("", 'd'), None);
        assert_eq!(
            MainCf::parse("maximal_queue_lifetime = 1h\n").maximal_queue_lifetime(),
            Duration::from_hours(1)
        );
        assert_eq!(
            MainCf::parse("").maximal_queue_lifetime(),
            Duration::from_hours(120)
        );
    }

    #[test]
    fn empty_maillog_file_means_syslog() {
        assert_eq!(MainCf::parse("maillog_file =\n").maillog_file(), None);
        assert_eq!(
            MainCf::parse("maillog_file = /var/log/postfix.log\n")
                .maillog_file()
                .as_deref(),
            Some("/var/log/postfix.log")
        );
    }
}
