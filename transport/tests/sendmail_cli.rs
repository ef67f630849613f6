//! `bsmtp-ssh sendmail` (and `sendmail` by its name) takes sendmail's own
//! command lines, flags included, as they come from mail user agents.

use clap::Parser;

fn parsed(words: &[&str]) -> Vec<String> {
    let cli = bsmtp_ssh::Cli::try_parse_from(words).unwrap_or_else(|e| panic!("{words:?}: {e}"));
    match cli.command {
        bsmtp_ssh::Action::Sendmail(args) => args.args,
        other => panic!("{words:?}: {other:?}"),
    }
}

#[test]
fn sendmail_command_lines_reach_the_sendmail_parser_whole() {
    for line in [
        &[
            "bsmtp-ssh",
            "sendmail",
            "-f",
            "a@b",
            "-oi",
            "-V",
            "env1",
            "--",
            "c@d",
        ][..],
        &["bsmtp-ssh", "sendmail", "-oem", "-oi", "--", "c@d"],
        &["bsmtp-ssh", "sendmail", "-t", "-i"],
        &["bsmtp-ssh", "sendmail", "-h", "c@d"],
        &["bsmtp-ssh", "sendmail", "c@d", "-v"],
    ] {
        assert_eq!(parsed(line), line[2..], "{line:?}");
    }
}
