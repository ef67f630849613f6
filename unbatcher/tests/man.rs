//! Docs are code: rsmtp(8) names every subcommand and option of rsmtp's
//! command line, bsmtp-ssh.conf(5) every key of `rsmtp.conf`, and the pages
//! render without a warning. (transport/tests/man.rs does the same for
//! bsmtp-ssh.)

use std::path::{Path, PathBuf};
use std::process::Command;

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

#[test]
fn rsmtp_page_names_every_subcommand_and_option() {
    let text = page_text("rsmtp.8");
    let missing: Vec<String> = command_line_words(&mut rsmtp::Args::command())
        .into_iter()
        .filter(|(_, word)| !mentions(&text, word))
        .map(|(path, word)| format!("{path}: {word}"))
        .collect();
    assert!(
        missing.is_empty(),
        "man/rsmtp.8 does not document: {missing:?}"
    );
}

#[test]
fn config_page_names_every_rsmtp_conf_key() {
    let text = page_text("bsmtp-ssh.conf.5");
    let mut keys = config_keys::<rsmtp::policy::ConfigFile>(str::to_owned);
    keys.extend(config_keys::<rsmtp::policy::ConfigFile>(|line| {
        format!("[peer.leaf1]\n{line}\n")
    }));
    assert!(keys.contains(&"max_size".to_owned()), "{keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|k| !mentions(&text, k)).collect();
    assert!(
        missing.is_empty(),
        "man/bsmtp-ssh.conf.5 does not document rsmtp.conf keys {missing:?}"
    );
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
    for name in ["rsmtp.8", "bsmtp-ssh.conf.5"] {
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
