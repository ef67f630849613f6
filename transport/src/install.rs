//! `bsmtp-ssh postfix-install`: applies postfix-snippets/ to a Postfix
//! instance with postconf (being written; see issue 3).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

/// `bsmtp-ssh postfix-install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The Postfix instance's config directory (default: the system's).
    #[arg(long = "config-directory", value_name = "DIR")]
    pub config_directory: Option<PathBuf>,
}

/// Runs the installer; returns the exit status.
pub fn run(args: &InstallArgs, out: &mut impl Write) -> u8 {
    let _ = writeln!(out, "postfix-install is not available yet ({args:?})");
    sysexits::ExitCode::Unavailable as u8
}
