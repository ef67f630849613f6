//! rsmtp: thin entry point; see the library for the work.

use std::process::ExitCode;

fn main() -> ExitCode {
    bsmtp_hardening();
    let original =
        std::env::var_os("SSH_ORIGINAL_COMMAND").map(std::os::unix::ffi::OsStringExt::into_vec);
    let timeout = bsmtp_session::idle::DEFAULT_IDLE_TIMEOUT;
    let streams = bsmtp_session::idle::IdleReader::stdin(timeout)
        .and_then(|stdin| Ok((stdin, bsmtp_session::idle::IdleWriter::stdout(timeout)?)));
    let (mut stdin, mut stdout) = match streams {
        Ok(streams) => streams,
        Err(err) => {
            eprintln!("rsmtp: cannot use standard input and output: {err}");
            return ExitCode::from(sysexits::ExitCode::OsErr as u8);
        }
    };
    // A live session only when sshd runs us on a stream; a file on stdin
    // (or a terminal on stdout) is a batch read offline (see rsmtp::mode).
    let over_ssh = rsmtp::over_ssh(
        std::env::var_os("SSH_CONNECTION").is_some(),
        std::io::stdin(),
        std::io::stdout(),
    );
    match rsmtp::run(
        std::env::args_os(),
        original.as_deref(),
        over_ssh,
        &mut stdin,
        &mut stdout,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.is_fatal() {
                log::error!("{err}");
            } else {
                log::warn!("{err}");
            }
            // Over SSH, stderr is what the leaf shows in its deferral:
            // once is enough.
            if !bsmtp_session::logging::errors_reach_stderr() {
                eprintln!("rsmtp: {err}");
            }
            ExitCode::from(err.exit_code() as u8)
        }
    }
}

/// We face a hostile parent: make sure fds 0-2 are open (so nothing we open
/// becomes "stdout" by accident) and files we create are private.
fn bsmtp_hardening() {
    for fd in 0..3 {
        if std::fs::metadata(format!("/proc/self/fd/{fd}")).is_err() {
            // Takes the lowest free descriptor, which is the missing one.
            if let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                std::mem::forget(file);
            }
        }
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // A client that vanishes must not stop us between postdrop's commit
    // and the record of the transaction's tag: that would leave a message
    // queued that the retry queues again. So a hangup is held off (the
    // session then ends at its next write). Blocking, not ignoring: this
    // program has no unsafe code to install a handler with.
    let _ = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGHUP).thread_block();
}
