//! The systemd units and the cron file in `postfix-snippets/timers/` run
//! commands the real CLI takes, treat 75 (a peer not reached) as routine,
//! and the cron line's shell keeps quiet on 0 and 75 only.

use std::process::Command;

use clap::Parser;

const FLUSH_SERVICE: &str = include_str!("../../postfix-snippets/timers/bsmtp-ssh-flush.service");
const FLUSH_TIMER: &str = include_str!("../../postfix-snippets/timers/bsmtp-ssh-flush.timer");
const PULL_SERVICE: &str = include_str!("../../postfix-snippets/timers/bsmtp-ssh-pull@.service");
const PULL_TIMER: &str = include_str!("../../postfix-snippets/timers/bsmtp-ssh-pull@.timer");
const CRON: &str = include_str!("../../postfix-snippets/timers/bsmtp-ssh.cron");

/// The value of `key=` in a unit (the last one).
fn setting<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in\n{unit}"))
}

/// Parses a command line (program first) with the real CLI.
fn parses(words: &[&str]) -> String {
    let mut argv = vec!["bsmtp-ssh"];
    argv.extend(&words[1..]);
    let cli = bsmtp_ssh::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    format!("{cli:?}")
}

#[test]
fn units_run_the_real_cli_and_take_75_as_routine() {
    for (service, timer, verb) in [
        (FLUSH_SERVICE, FLUSH_TIMER, "Flush("),
        (PULL_SERVICE, PULL_TIMER, "Pull("),
    ] {
        let exec = setting(service, "ExecStart").replace("%i", "hub");
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(words[0], bsmtp_ssh::install::DEFAULT_PROGRAM);
        assert!(
            parses(&words).starts_with(&format!("Cli {{ command: {verb}")),
            "{exec}"
        );
        assert_eq!(setting(service, "SuccessExitStatus"), "75");
        assert_eq!(setting(service, "Type"), "oneshot");
        assert!(
            !service.lines().any(|l| l.starts_with("NoNewPrivileges=")),
            "postdrop is set-gid"
        );
        assert_eq!(setting(timer, "WantedBy"), "timers.target");
        assert_eq!(setting(timer, "OnUnitActiveSec"), "5min");
    }
}

/// The cron file's lines (the commented pull line too), as commands.
fn cron_commands() -> Vec<String> {
    CRON.lines()
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .filter(|l| l.starts_with("*/"))
        .map(|l| l.split_whitespace().skip(6).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn cron_lines_run_the_real_cli_and_mail_only_real_failures() {
    let commands = cron_commands();
    assert_eq!(commands.len(), 2, "{CRON}");
    let dir = tempfile::tempdir().unwrap();
    for command in &commands {
        let program_and_args = command.split(" >/dev/null").next().unwrap();
        let words: Vec<&str> = program_and_args.split_whitespace().collect();
        assert!(!parses(&words).is_empty());
        // The shell around it: silent for 0 and 75, a line for anything else.
        for (status, says_something) in [(0, false), (75, false), (78, true), (1, true)] {
            let stub = dir.path().join("stub");
            std::fs::write(&stub, format!("#!/bin/sh\necho noise\nexit {status}\n")).unwrap();
            let out = Command::new("/bin/sh")
                .arg("-c")
                .arg(command.replace(
                    bsmtp_ssh::install::DEFAULT_PROGRAM,
                    &format!("/bin/sh {}", stub.display()),
                ))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                !text.is_empty(),
                says_something,
                "exit {status}: {text:?} from {command}"
            );
            if says_something {
                assert!(text.contains(&format!("exit {status}")), "{text}");
            }
        }
    }
}
