//! Docs are code: bsmtp-ssh(8) and rsmtp(8) name every subcommand and
//! option of their command lines, bsmtp-ssh(8)'s exit-status table agrees
//! row by row with `bsmtp/src/status.rs`, bsmtp-ssh.conf(5) names every key
//! of both config files, and every page renders without a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

use bsmtp::reply::{EnhancedCode, Reply};
use bsmtp::status::{Failure, FailureKind};
use clap::CommandFactory;
use serde::de::DeserializeOwned;

fn man_page(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../man")
        .join(name)
}

/// The page's text with roff's `\-` as `-` and font escapes removed, so
/// `\fB\-\-peer\fR` reads `--peer`.
fn page_text(name: &str) -> String {
    let path = man_page(name);
    let roff =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let mut text = roff.replace("\\-", "-");
    for font in ["\\fB", "\\fI", "\\fR", "\\fP", "\\&"] {
        text = text.replace(font, "");
    }
    text
}

/// True when `word` occurs in `text` not glued to other name characters,
/// so `--max-size` does not count as `--max`.
fn mentions(text: &str, word: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(name_char) && !after.is_some_and(name_char)
    })
}

/// Every subcommand name and every `--long` and `-s` flag of `command` and
/// its subcommands, each with the path of subcommands it belongs to.
fn command_line_words(command: &mut clap::Command) -> Vec<(String, String)> {
    fn walk(command: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                out.push((path.to_owned(), format!("--{long}")));
            }
            if let Some(short) = arg.get_short() {
                out.push((path.to_owned(), format!("-{short}")));
            }
        }
        for sub in command.get_subcommands() {
            out.push((path.to_owned(), sub.get_name().to_owned()));
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    // Building adds what clap generates (--help, --version) to every level.
    command.build();
    let mut out = Vec::new();
    walk(command, command.get_name(), &mut out);
    out
}

/// The field names of a `deny_unknown_fields` config struct, as serde lists
/// them when it meets an unknown one: taken from the code, never retyped.
fn config_keys<T: DeserializeOwned + std::fmt::Debug>(wrap: fn(&str) -> String) -> Vec<String> {
    let probe = wrap("no_such_key_probe = 1");
    let err = toml::from_str::<T>(&probe).expect_err("unknown key accepted");
    let text = err.to_string();
    let (_, expected) = text
        .split_once("expected")
        .unwrap_or_else(|| panic!("serde did not list the fields: {text}"));
    let keys: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(!keys.is_empty(), "{text}");
    keys
}

/// Fails naming every subcommand or flag of `command` that `page` lacks.
fn assert_page_documents(page: &str, command: &mut clap::Command) {
    let text = page_text(page);
    let missing: Vec<String> = command_line_words(command)
        .into_iter()
        .filter(|(_, word)| !mentions(&text, word))
        .map(|(path, word)| format!("{path}: {word}"))
        .collect();
    assert!(
        missing.is_empty(),
        "man/{page} does not document: {missing:?}"
    );
}

/// Fails naming every key of config file `T` (top level and in a `[peer.X]`
/// section) that bsmtp-ssh.conf(5) lacks; `sample` is one key that must be
/// found, so an empty list cannot pass.
fn assert_conf_page_documents<T: DeserializeOwned + std::fmt::Debug>(file: &str, sample: &str) {
    let text = page_text("bsmtp-ssh.conf.5");
    let mut keys = config_keys::<T>(str::to_owned);
    keys.extend(config_keys::<T>(|line| format!("[peer.x]\n{line}\n")));
    assert!(keys.iter().any(|k| k == sample), "{keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|k| !mentions(&text, k)).collect();
    assert!(
        missing.is_empty(),
        "man/bsmtp-ssh.conf.5 does not document {file} keys {missing:?}"
    );
}

#[test]
fn rsmtp_page_names_every_subcommand_and_option() {
    assert_page_documents("rsmtp.8", &mut rsmtp::Args::command());
}

#[test]
fn config_page_names_every_rsmtp_conf_key() {
    assert_conf_page_documents::<rsmtp::policy::ConfigFile>("rsmtp.conf", "max_size");
}

#[test]
fn bsmtp_ssh_page_names_every_subcommand_and_option() {
    assert_page_documents("bsmtp-ssh.8", &mut bsmtp_ssh::Cli::command());
}

#[test]
fn config_page_names_every_bsmtp_ssh_conf_key() {
    assert_conf_page_documents::<bsmtp_ssh::config::ConfigFile>("bsmtp-ssh.conf", "known_hosts");
}

/// The words that pick a failure's row in the page's exit-status table.
/// The match has no wildcard: a new kind fails to compile here until it has
/// a row.
fn table_row(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::Connect => "connect refused",
        FailureKind::Timeout => "timeout",
        FailureKind::HostKey | FailureKind::Auth => "host key unknown",
        FailureKind::Remote(reply) if reply.is_permanent() => "hub replied 5xx",
        FailureKind::Remote(reply) if reply.is_transient() => "hub replied 4xx",
        // Any other reply where a refusal was looked for: out of step.
        FailureKind::Remote(_) | FailureKind::PeerProtocol => "hub broke the protocol",
        FailureKind::Config => "our config",
        FailureKind::Local => "a local error",
        FailureKind::Storage => "below min_free",
        FailureKind::BadEnvelope => "malformed envelope",
        FailureKind::Internal => "internal error",
    }
}

/// One failure of each kind, the way the table's rows describe them.
fn every_kind() -> Vec<FailureKind> {
    let remote = |code, dsn: (u8, u16, u16)| {
        FailureKind::Remote(Reply::new(
            code,
            Some(EnhancedCode::new(dsn.0, dsn.1, dsn.2)),
            "x",
        ))
    };
    vec![
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::HostKey,
        FailureKind::Auth,
        remote(451, (4, 3, 0)),
        remote(553, (5, 7, 1)),
        remote(250, (2, 0, 0)),
        FailureKind::PeerProtocol,
        FailureKind::Config,
        FailureKind::Local,
        FailureKind::Storage,
        FailureKind::BadEnvelope,
        FailureKind::Internal,
    ]
}

/// What a row must say for `kind`: its status code (a 4xx/5xx reply's is
/// the hub's own) and `exit, verdict`.
fn expected(kind: &FailureKind) -> (Option<String>, u8, &'static str) {
    let failure = Failure::new(kind.clone(), "x");
    let dsn = match kind {
        FailureKind::Remote(reply) if reply.is_transient() || reply.is_permanent() => None,
        _ => Some(failure.dsn().to_string()),
    };
    let verdict = if failure.is_transient() {
        "defer"
    } else {
        "bounce"
    };
    (dsn, failure.exit_code() as u8, verdict)
}

/// Every row of the exit-status table agrees with `Failure::dsn` and
/// `Failure::exit_code`, the one source of that table.
#[test]
fn exit_status_table_matches_the_code() {
    let roff = std::fs::read_to_string(man_page("bsmtp-ssh.8")).unwrap();
    let (_, table) = roff.split_once(".TS\n").expect("no table in bsmtp-ssh.8");
    let (table, _) = table.split_once(".TE\n").unwrap();
    for kind in every_kind() {
        let row = table
            .lines()
            .find(|l| l.starts_with(table_row(&kind)))
            .unwrap_or_else(|| panic!("no row for {kind:?}"));
        let cells: Vec<&str> = row.split('\t').collect();
        let (dsn, exit, verdict) = expected(&kind);
        assert_eq!(cells[2], format!("{exit}, {verdict}"), "{kind:?}: {row}");
        if let Some(dsn) = dsn {
            assert_eq!(cells[1], dsn, "{kind:?}: {row}");
        }
    }
}

/// README.md's exit table says the same as the code (it is a third copy,
/// kept for readers who never open a man page).
#[test]
fn readme_exit_table_matches_the_code() {
    let readme =
        std::fs::read_to_string(bsmtp_ssh_tests::binaries::workspace_root().join("README.md"))
            .unwrap();
    let (_, table) = readme
        .split_once("## Exit status (pipe mode)")
        .expect("README.md has an exit status section");
    for kind in every_kind() {
        let prefix = format!("| {}", table_row(&kind));
        let row = table
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("README: no row starting {prefix:?} for {kind:?}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (dsn, exit, verdict) = expected(&kind);
        assert_eq!(cells[3], format!("{exit} ({verdict})"), "{kind:?}: {row}");
        if let Some(dsn) = dsn {
            assert!(cells[2].starts_with(&format!("`{dsn}")), "{kind:?}: {row}");
        }
    }
}

/// Runs `program` with `args`, failing with how to install it when missing.
fn tool(program: &str, args: &[&str], path: &Path) -> std::process::Output {
    Command::new(program)
        .args(args)
        .arg(path)
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {program} ({err}): install it with `apt-get install man-db groff-base`"
            )
        })
}

#[test]
fn pages_render_without_warnings() {
    for name in ["bsmtp-ssh.8", "rsmtp.8", "bsmtp-ssh.conf.5"] {
        let path = man_page(name);
        let groff = tool("groff", &["-t", "-man", "-ww", "-z", "-Tutf8"], &path);
        let stderr = String::from_utf8_lossy(&groff.stderr);
        assert!(
            groff.status.success() && stderr.is_empty(),
            "groff on {name}: {}\n{stderr}",
            groff.status
        );
        let man = tool("man", &["-l"], &path);
        assert!(
            man.status.success() && !man.stdout.is_empty(),
            "man -l {name}: {}\n{}",
            man.status,
            String::from_utf8_lossy(&man.stderr)
        );
    }
}
