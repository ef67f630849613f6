//! Starting the Postfix programs we hand work to (postdrop, postlog,
//! postconf, postmap) with an environment we chose, not the one we got.
//!
//! rsmtp runs under sshd for a peer we do not trust, bsmtp-ssh under pipe(8);
//! postdrop and a set-gid postlog are privileged. So a child gets a cleared
//! environment with a fixed `PATH` and `LANG=C` (error texts we may pass on
//! stay in one language), plus only what its caller adds on purpose, the way
//! Postfix's own `import_environment` works. Arguments are always a vector,
//! never a shell string.
//!
//! [`run`] adds what a child that works on a peer's data needs: both
//! output streams drained and bounded, and a time limit.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `PATH` children get: the system directories only.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// A command for `program` with the cut-down environment.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_clear().env("PATH", SAFE_PATH).env("LANG", "C");
    command
}

/// How a child run by [`run`] ended, with what it wrote (each stream cut
/// at the `max_output` given to [`run`]).
#[derive(Debug)]
pub struct Ran {
    /// Its exit status; None when it was killed at the time limit.
    pub status: Option<ExitStatus>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// Runs `command` with standard input from /dev/null, reading its standard
/// output and error each on its own thread (a child that fills one pipe
/// while we wait on the other would deadlock both), and kills it when it
/// is still running after `timeout`. Keeps at most `max_output` bytes of
/// each stream, reading and dropping the rest.
pub fn run(command: &mut Command, timeout: Duration, max_output: u64) -> io::Result<Ran> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let drain = |stream: Option<Box<dyn Read + Send>>| -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut stream) = stream {
                let _ = (&mut stream).take(max_output).read_to_end(&mut kept);
                let _ = io::copy(&mut stream, &mut io::sink());
            }
            kept
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A grandchild holding the pipes open could keep these threads alive;
    // Postfix tools do not leave any behind.
    Ok(Ran {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_see_only_the_allowlist() {
        let output = command("/usr/bin/env")
            .env("MAIL_CONFIG", "/x")
            .output()
            .expect("run env");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["LANG", "MAIL_CONFIG", "PATH"], "{text}");
    }

    #[test]
    fn run_keeps_both_streams_and_the_status() {
        let ran = run(
            command("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
            1024,
        )
        .unwrap();
        assert_eq!(ran.status.and_then(|s| s.code()), Some(3));
        assert_eq!(
            (&ran.stdout[..], &ran.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn run_kills_at_the_time_limit_and_bounds_the_output() {
        let start = Instant::now();
        let ran = run(
            command("/bin/sh").args(["-c", "head -c 100000 /dev/zero; exec sleep 30"]),
            Duration::from_millis(300),
            10,
        )
        .unwrap();
        assert!(ran.status.is_none());
        assert_eq!(ran.stdout.len(), 10);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
