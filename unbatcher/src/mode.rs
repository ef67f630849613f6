//! Whether rsmtp answers a peer on a live session or reads a batch
//! offline, decided by what its standard input and output are, never by
//! an inherited environment alone.
//!
//! The two modes differ in what a refusal costs: online, the peer reads
//! each reply and keeps what was refused; offline, nobody reads them, so
//! rsmtp reports refusals itself, tags each queued message by its content
//! and says by its exit status whether the batch is done. A batch taken
//! for a session loses that: its refusals are only written to standard
//! output, and reading it again queues everything again. So a session
//! needs every sign of one: sshd started us (`SSH_CONNECTION`, which sshd
//! sets for every session it runs), standard input is a stream (sshd
//! gives its forced command a pipe or a socket, never a regular file),
//! and standard output is no terminal (a `restrict` key gets no pty).
//! An admin logged in over SSH who runs `rsmtp --peer X < batch`, or
//! `cat batch | rsmtp --peer X` on a terminal, gets the offline reading;
//! `--batch` asks for it whatever the rest says.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use nix::sys::stat::{fstat, SFlag};

/// True when rsmtp runs as a forced command on a live session: `sshd`
/// (`SSH_CONNECTION` is set), `stdin` is no regular file and `stdout` no
/// terminal. Anything else is a batch read offline.
pub fn over_ssh(sshd: bool, stdin: impl AsFd, stdout: impl AsFd) -> bool {
    sshd && !is_regular_file(stdin) && !stdout.as_fd().is_terminal()
}

fn is_regular_file(fd: impl AsFd) -> bool {
    fstat(fd)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_on_stdin_is_a_batch_even_under_sshd() {
        let file = tempfile::tempfile().unwrap();
        let (_read, write) = nix::unistd::pipe().unwrap();
        assert!(!over_ssh(true, &file, &write));
        assert!(!over_ssh(false, &file, &write));
    }

    #[test]
    fn a_pipe_is_a_session_only_under_sshd() {
        let (read, write) = nix::unistd::pipe().unwrap();
        assert!(over_ssh(true, &read, &write));
        assert!(!over_ssh(false, &read, &write));
    }
}
