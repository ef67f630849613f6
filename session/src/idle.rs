//! A reader and a writer that give up when their peer goes quiet.
//!
//! sshd notices a dead connection only through its keepalives, and a live
//! client that stops sending would hold rsmtp (and an open postdrop) for
//! ever; so would one that sends commands but never reads our replies, once
//! the pipe to sshd is full. Each read and each write waits at most the idle
//! timeout (Postfix's smtpd has the same `smtpd_timeout` on both); then the
//! session ends as if the stream were cut, which injects nothing of an
//! unfinished message.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Default idle limit, as Postfix's `smtpd_timeout` (300 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_mins(5);

/// Reads from a file descriptor, failing with `TimedOut` after `timeout`
/// without data.
pub struct IdleReader {
    file: File,
    timeout: Duration,
}

impl IdleReader {
    /// Reads our standard input (through a duplicate of fd 0, unbuffered,
    /// so that readiness seen by poll(2) is all there is to read).
    pub fn stdin(timeout: Duration) -> io::Result<Self> {
        let fd = io::stdin().as_fd().try_clone_to_owned()?;
        crate::postdrop::widen_pipe(&fd);
        Ok(IdleReader {
            file: File::from(fd),
            timeout,
        })
    }
}

/// Writes to a file descriptor, failing with `TimedOut` when it accepts
/// nothing for `timeout`.
pub struct IdleWriter {
    file: File,
    timeout: Duration,
}

/// Bytes written after each readiness check. poll(2) says a pipe is
/// writable when at least `PIPE_BUF` (4096) bytes fit, so a write this size
/// never blocks on a pipe; a socket is writable with far more room.
const WRITE_CHUNK: usize = 4096;

impl IdleWriter {
    /// Writes to our standard output (through a duplicate of fd 1; its
    /// flags stay as they are).
    pub fn stdout(timeout: Duration) -> io::Result<Self> {
        let fd = io::stdout().as_fd().try_clone_to_owned()?;
        Ok(IdleWriter {
            file: File::from(fd),
            timeout,
        })
    }
}

impl Write for IdleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let timeout = PollTimeout::try_from(self.timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, timeout) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer read none of our replies for {}s (write timeout)",
                    self.timeout.as_secs()
                ),
            )),
            Ok(_) => self.file.write(&buf[..buf.len().min(WRITE_CHUNK)]),
            Err(nix::errno::Errno::EINTR) => Err(io::Error::from(io::ErrorKind::Interrupted)),
            Err(err) => Err(io::Error::from(err)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A session's output, whose idle limit the command line may set.
pub trait Output: Write {
    /// Sets the longest wait for the peer to take our output; a no-op
    /// where waits cannot happen (in-memory output).
    fn set_idle_timeout(&mut self, _timeout: Duration) {}
}

impl Output for IdleWriter {
    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

impl Output for Vec<u8> {}

/// A session's input, whose idle limit the command line may set.
pub trait Input: Read {
    /// Sets the longest wait for more input; a no-op where waits cannot
    /// happen (in-memory input).
    fn set_idle_timeout(&mut self, _timeout: Duration) {}
}

impl Input for IdleReader {
    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

impl Input for &[u8] {}
impl Input for std::io::Empty {}

impl Read for IdleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = PollTimeout::try_from(self.timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no input for {}s (idle timeout)", self.timeout.as_secs()),
            )),
            Ok(_) => self.file.read(buf),
            Err(nix::errno::Errno::EINTR) => Err(io::Error::from(io::ErrorKind::Interrupted)),
            Err(err) => Err(io::Error::from(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_pipe_times_out_and_data_is_read() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let mut idle = IdleReader {
            file: File::from(reader),
            timeout: Duration::from_millis(50),
        };
        let mut buf = [0u8; 8];
        let err = idle.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        nix::unistd::write(&writer, b"hi").unwrap();
        assert_eq!(idle.read(&mut buf).unwrap(), 2);
        drop(writer);
        assert_eq!(idle.read(&mut buf).unwrap(), 0);
    }

    /// Regression (audit): a peer that never read our replies left rsmtp
    /// blocked in write for ever.
    #[test]
    fn full_pipe_times_out_instead_of_blocking() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let mut idle = IdleWriter {
            file: File::from(writer),
            timeout: Duration::from_millis(100),
        };
        let reply = [b'x'; 1000];
        let started = std::time::Instant::now();
        let err = loop {
            if let Err(err) = idle.write_all(&reply) {
                break err;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "wrote for 10 s into a pipe nobody reads"
            );
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        drop(reader);
    }
}
