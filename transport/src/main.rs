//! bsmtp-ssh: thin entry point; see the library for the work.

use std::process::ExitCode;

fn main() -> ExitCode {
    bsmtp_ssh::install_panic_hook();
    let mut stdin = std::io::stdin().lock();
    // Not locked for the whole run: the deadline watchdog and the panic hook
    // must be able to print pipe(8)'s status line from another thread.
    let mut stdout = std::io::stdout();
    ExitCode::from(bsmtp_ssh::run(std::env::args_os(), &mut stdin, &mut stdout))
}
