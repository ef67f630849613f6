//! The byte stream an SSH session to a hub runs over: a TCP connection,
//! a channel forwarded by a bastion (`proxy_jump`, OpenSSH's `ProxyJump`),
//! or a program's standard input and output (`proxy_command`, OpenSSH's
//! `ProxyCommand`).
//!
//! libssh2 needs a socket it can `send`/`recv` on, so both proxies hand it
//! one end of a UNIX socket pair. For a jump, a thread moves bytes between
//! the other end and the bastion's `direct-tcpip` channel; for a command,
//! the other end is the program's standard input and output.
//!
//! What this promises: the hub's session is end to end. The bastion (or
//! the proxy program) only carries the hub's encrypted SSH stream, so it
//! can neither read nor alter it, and the hub still proves itself with
//! the host key pinned in the hub's own `known_hosts`. The bastion proves
//! itself with its own pin before anything is forwarded. Every failure
//! names the hop: `bastion NAME: ...` or `proxy_command "CMD" ...`.
//!
//! Timeouts still hold through a hop: the bastion's TCP connect has its
//! `connect_timeout`, its handshake, login and forward the delivery's
//! idle timeout; the hub's session over the pair keeps its own idle
//! timeout, so a stalled bastion or program times the hub session out.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bsmtp::status::{Failure, FailureKind};
use log::debug;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ssh2::{BlockDirections, Channel, Session};

use crate::ssh::{self, Hub, Proxy};

/// Bytes of a proxy command's standard error kept for a deferral.
const MAX_STDERR: usize = 2048;
/// How long a failed handshake waits for the proxy command to exit, so
/// the deferral can say how it ended and what it wrote.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long a proxy command may take to go after SIGHUP (what OpenSSH
/// sends it) before it is killed.
const HANGUP_WAIT: Duration = Duration::from_secs(2);
/// Bytes moved per read in the jump bridge (libssh2's own packet size).
const BRIDGE_BUFFER: usize = 32 * 1024;

/// The stream a hub's SSH session runs over, ready for
/// `Session::set_tcp_stream`.
pub(crate) struct Link {
    /// The socket libssh2 reads and writes.
    pub socket: OwnedFd,
    /// What logs call the far end: `name[address]:port`, or the hub's
    /// `host:port` and the hop it is reached through.
    pub relay: String,
    /// The proxy command, kept running as long as the session lives.
    pub command: Option<ProxyCommand>,
}

/// Opens the stream to `hub`: TCP, through its bastion, or through its
/// proxy command. `idle` limits each step of a bastion's session.
pub(crate) fn open(hub: &Hub, idle: Duration) -> Result<Link, Failure> {
    match &hub.proxy {
        None => {
            let (tcp, addr) = ssh::tcp_connect(&hub.host, hub.port, hub.connect_timeout)?;
            let relay = format!("{}[{}]:{}", hub.host, addr.ip(), addr.port());
            // Without this, a frame written in two pieces meets a delayed
            // ACK and stalls 40 ms per message (measured).
            tcp.set_nodelay(true).map_err(|e| {
                Failure::new(FailureKind::Connect, format!("{relay}: TCP_NODELAY: {e}"))
            })?;
            Ok(Link {
                socket: tcp.into(),
                relay,
                command: None,
            })
        }
        Some(Proxy::Jump(bastion)) => jump(hub, bastion, idle),
        Some(Proxy::Command(template)) => ProxyCommand::start(hub, template),
    }
}

/// `proxy_jump`: logs in to `bastion` (its own pin and key, through its
/// own proxy if it has one) and forwards a channel to the hub's host and
/// port, bridged to a socket pair by a thread that ends with the session.
fn jump(hub: &Hub, bastion: &Hub, idle: Duration) -> Result<Link, Failure> {
    let hop = |failure: Failure| {
        Failure::new(
            failure.kind,
            format!("bastion {}: {}", bastion.name, failure.text),
        )
    };
    let known_hosts = ssh::preflight(bastion).map_err(hop)?;
    let ssh::Login {
        session,
        relay: bastion_relay,
        command,
        socket: poll_fd,
    } = ssh::login(bastion, &known_hosts, idle, true).map_err(hop)?;
    debug!(
        "bastion {}: {bastion_relay}: logged in; forwarding to {}:{}",
        bastion.name, hub.host, hub.port
    );
    let channel = session
        .channel_direct_tcpip(&hub.host, hub.port, None)
        .map_err(|e| forward_failed(hub, bastion, &bastion_relay, &e))?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| {
        Failure::new(
            FailureKind::Local,
            format!("bastion {}: socket pair: {e}", bastion.name),
        )
    })?;
    std::thread::Builder::new()
        .name(format!("bastion {}", bastion.name))
        .spawn(move || bridge(&session, channel, theirs, &poll_fd, idle, command))
        .map_err(|e| {
            Failure::new(
                FailureKind::Local,
                format!("bastion {}: start the relay thread: {e}", bastion.name),
            )
        })?;
    Ok(Link {
        socket: ours.into(),
        relay: format!("{}:{} via {bastion_relay}", hub.host, hub.port),
        command: None,
    })
}

/// Why the bastion did not open the forward: refused by its key's
/// `permitopen` or its sshd's `AllowTcpForwarding` ("administratively
/// prohibited": an admin must fix it), or the hub could not be reached
/// from the bastion (down, or a name it cannot resolve: passes by itself).
fn forward_failed(hub: &Hub, bastion: &Hub, bastion_relay: &str, e: &ssh2::Error) -> Failure {
    let target = format!("{}:{}", hub.host, hub.port);
    if e.message().contains("prohibited") {
        return Failure::new(
            FailureKind::Auth,
            format!(
                "bastion {}: {bastion_relay}: forward to {target} refused ({e}); the bastion's authorized_keys line for {} must allow it (permitopen=\"{target}\") and its sshd must allow TCP forwarding",
                bastion.name, bastion.user
            ),
        );
    }
    Failure::new(
        ssh::ssh_kind(e, FailureKind::Connect),
        format!(
            "bastion {}: {bastion_relay}: forward to {target} failed ({e}): the bastion cannot reach the hub (is it down, or its name unknown to the bastion?)",
            bastion.name
        ),
    )
}

/// Moves bytes between the hub session's socket (`local`) and the
/// bastion's forwarded `channel` until either side ends. The bastion's
/// session is non-blocking here; when neither side can move, it waits in
/// poll(2) for the local socket or the bastion's socket (`bastion_fd`, a
/// duplicate of the session's). Once one side has ended, what is left to
/// pass on gets `idle` to move, so a stalled bastion cannot keep the
/// thread (and the bastion's session) forever.
fn bridge(
    session: &Session,
    mut channel: Channel,
    mut local: UnixStream,
    bastion_fd: &OwnedFd,
    idle: Duration,
    _command: Option<ProxyCommand>,
) {
    session.set_blocking(false);
    if local.set_nonblocking(true).is_err() {
        return;
    }
    let mut up: Vec<u8> = Vec::new(); // local -> channel
    let mut down: Vec<u8> = Vec::new(); // channel -> local
    let mut buf = vec![0u8; BRIDGE_BUFFER];
    let (mut local_eof, mut remote_eof) = (false, false);
    let mut last_moved = Instant::now();
    loop {
        let mut moved = false;
        if down.is_empty() && !remote_eof {
            match channel.read(&mut buf) {
                Ok(0) => remote_eof = channel.eof(),
                Ok(n) => {
                    down.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if !down.is_empty() {
            match local.write(&down) {
                Ok(n) => {
                    down.drain(..n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if up.is_empty() && !local_eof {
            match local.read(&mut buf) {
                Ok(0) => local_eof = true,
                Ok(n) => {
                    up.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if !up.is_empty() {
            match channel.write(&up) {
                Ok(n) => {
                    up.drain(..n);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        // The hub's session is over (it closed its end, or the hub's
        // sshd closed the forward) once what it sent is passed on.
        if (local_eof && up.is_empty()) || (remote_eof && down.is_empty()) {
            break;
        }
        if moved {
            last_moved = Instant::now();
            continue;
        }
        if (local_eof || remote_eof) && last_moved.elapsed() > idle {
            break;
        }
        let mut local_events = PollFlags::empty();
        if up.is_empty() && !local_eof {
            local_events |= PollFlags::POLLIN;
        }
        if !down.is_empty() {
            local_events |= PollFlags::POLLOUT;
        }
        // Incoming data waits in libssh2 while `down` is full; reading
        // the socket then only matters for a write that waits (window).
        let mut bastion_events = if down.is_empty() || !up.is_empty() {
            PollFlags::POLLIN
        } else {
            PollFlags::empty()
        };
        if matches!(
            session.block_directions(),
            BlockDirections::Outbound | BlockDirections::Both
        ) {
            bastion_events |= PollFlags::POLLOUT;
        }
        let mut fds = [
            PollFd::new(local.as_fd(), local_events),
            PollFd::new(bastion_fd.as_fd(), bastion_events),
        ];
        // The timeout only bounds how long a missed wakeup could cost.
        match poll(&mut fds, 1000u16) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    let _ = local.shutdown(Shutdown::Both);
    session.set_timeout(1000);
    session.set_blocking(true);
    let _ = channel.close();
    let _ = session.disconnect(None, "forward done", None);
}

/// A running `proxy_command`: its standard input and output are our
/// socket pair's other end; its standard error is kept (bounded) for a
/// deferral. Dropping it hangs it up (SIGHUP, as OpenSSH does), then kills
/// it if it lingers, and reaps it.
pub(crate) struct ProxyCommand {
    /// The command line as run (substituted), for messages.
    line: String,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl ProxyCommand {
    /// Starts `template` for `hub` (`%h`, `%p`, `%r`, `%%` substituted).
    fn start(hub: &Hub, template: &str) -> Result<Link, Failure> {
        let argv = command_argv(template, &hub.host, hub.port, &hub.user)
            .map_err(|e| Failure::new(FailureKind::Config, format!("proxy_command: {e}")))?;
        // The command as the admin wrote it, substituted, for messages.
        let line =
            expand(template, &hub.host, hub.port, &hub.user).unwrap_or_else(|_| argv.join(" "));
        let local = |what: &str, e: io::Error| {
            Failure::new(
                FailureKind::Local,
                format!("proxy_command \"{line}\": {what}: {e}"),
            )
        };
        let (ours, theirs) = UnixStream::pair().map_err(|e| local("socket pair", e))?;
        let theirs_out = theirs.try_clone().map_err(|e| local("socket pair", e))?;
        let mut child = crate::child::command(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(OwnedFd::from(theirs_out)))
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Failure::new(
                    FailureKind::Config,
                    format!("proxy_command \"{line}\": cannot start {}: {e}", argv[0]),
                )
            })?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let kept = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut kept) = kept.lock() {
                        let room = MAX_STDERR.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            });
        }
        debug!("proxy_command \"{line}\": started, pid {}", child.id());
        let relay = format!("{}:{} via proxy_command \"{line}\"", hub.host, hub.port);
        Ok(Link {
            socket: ours.into(),
            relay,
            command: Some(ProxyCommand {
                line,
                child,
                stderr,
            }),
        })
    }

    /// `text` (why the session failed) with what the command did: its
    /// exit status if it ended (waiting briefly for it), and its stderr.
    pub(crate) fn explain(&mut self, text: &str) -> String {
        let deadline = Instant::now() + EXIT_WAIT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break None,
            }
        };
        // Give the stderr reader a moment to take the last words.
        std::thread::sleep(Duration::from_millis(50));
        let stderr = self
            .stderr
            .lock()
            .map(|s| bsmtp::text::one_line(&String::from_utf8_lossy(&s)))
            .unwrap_or_default();
        let said = if stderr.trim().is_empty() {
            "no stderr".to_owned()
        } else {
            format!("stderr: {}", stderr.trim())
        };
        match status {
            Some(status) => format!(
                "proxy_command \"{}\" exited ({status}; {said}); {text}",
                self.line
            ),
            None => format!("proxy_command \"{}\" ({said}); {text}", self.line),
        }
    }
}

impl Drop for ProxyCommand {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
        }
        let deadline = Instant::now() + HANGUP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Characters that need a shell: a command holding any of them runs as
/// `/bin/sh -c 'exec CMD'`, as OpenSSH runs every `ProxyCommand`.
const SHELL_SPECIAL: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '{', '}', '\n', '!',
];

/// The argument vector of `template` for a hub at `host`:`port` logged in
/// as `user`: `%h`, `%p`, `%r` become those, `%%` a `%`. A plain command
/// is split on white space and run as it is; one with shell syntax runs
/// under `/bin/sh -c`, and then only a host, port and user with nothing a
/// shell would read are substituted.
pub fn command_argv(
    template: &str,
    host: &str,
    port: u16,
    user: &str,
) -> Result<Vec<String>, String> {
    let shell = template.contains(SHELL_SPECIAL);
    if shell
        && !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!(
            "user \"{}\" cannot go into a command run by the shell",
            bsmtp::text::one_line(user)
        ));
    }
    let substitute = |word: &str| expand(word, host, port, user);
    if shell {
        return Ok(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("exec {}", substitute(template)?),
        ]);
    }
    let argv = template
        .split_whitespace()
        .map(substitute)
        .collect::<Result<Vec<_>, _>>()?;
    if argv.is_empty() {
        return Err("empty command".into());
    }
    Ok(argv)
}

/// `word` with `%h`, `%p`, `%r` and `%%` substituted, as OpenSSH does.
fn expand(word: &str, host: &str, port: u16, user: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(host),
            Some('p') => out.push_str(&port.to_string()),
            Some('r') => out.push_str(user),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "unknown escape %{} in \"{}\" (known: %h, %p, %r, %%)",
                    other.map(String::from).unwrap_or_default(),
                    bsmtp::text::one_line(word)
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_run_without_a_shell() {
        assert_eq!(
            command_argv("nc -w 5 %h %p", "hub.test", 2222, "bsmtp").unwrap(),
            ["nc", "-w", "5", "hub.test", "2222"]
        );
        assert_eq!(
            command_argv(
                "/usr/bin/connect-proxy -S socks:1080 %r@%h:%p 100%%",
                "h",
                22,
                "u"
            )
            .unwrap(),
            [
                "/usr/bin/connect-proxy",
                "-S",
                "socks:1080",
                "u@h:22",
                "100%"
            ]
        );
    }

    #[test]
    fn shell_syntax_runs_under_sh_with_plain_values_only() {
        assert_eq!(
            command_argv("nc %h %p 2>/dev/null", "h", 22, "u").unwrap(),
            ["/bin/sh", "-c", "exec nc h 22 2>/dev/null"]
        );
        assert!(command_argv("nc %h %p | cat", "h", 22, "u;rm").is_err());
    }

    #[test]
    fn mistakes_are_named() {
        assert!(command_argv("nc %x", "h", 22, "u")
            .unwrap_err()
            .contains("%x"));
        assert!(command_argv("  ", "h", 22, "u").is_err());
    }
}
