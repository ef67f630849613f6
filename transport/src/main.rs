//! bsmtp-ssh: thin entry point; see the library for the work.

use std::process::ExitCode;

fn main() -> ExitCode {
    bsmtp_ssh::install_panic_hook();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    ExitCode::from(bsmtp_ssh::run(std::env::args_os(), &mut stdin, &mut stdout))
}
