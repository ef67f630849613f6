//! Opening an SSH exec channel to a peer: TCP with a deadline (or a hop
//! through a bastion or a proxy command, see [`crate::proxy`]), a handshake
//! that only completes against the pinned host key, key authentication, and
//! the peer's forced command.
//!
//! Every failure here is transient for Postfix (the message is deferred, not
//! bounced): an unreachable hub, a changed host key or a refused key are
//! things an admin fixes, after which the queued mail goes out. A
//! destination with several hubs tries them in order, and defers only when
//! none took the session, with the worst of their reasons.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bsmtp::known_hosts::{KnownHosts, Verdict};
use bsmtp::status::{Failure, FailureKind};
use log::{debug, info, warn};
use ssh2::{ExtendedData, MethodType, Session};

use crate::proxy::Link;

/// Key exchange methods, fastest first: curve25519 costs a fraction of the
/// post-quantum hybrid OpenSSH picks by default (measured: 150 ms vs 300 ms
/// per handshake on loopback).
const KEX: &str = "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,diffie-hellman-group16-sha512,diffie-hellman-group14-sha256";
/// Ciphers, cheapest for libssh2 first. Measured here on 100 MB through
/// libssh2 1.11 (CPU seconds of the sender): chacha20-poly1305 0.25-0.37,
/// aes128-ctr 0.27-0.38, aes128-gcm 0.44-0.51 (libssh2's GCM path is the
/// slow one, unlike OpenSSH's).
const CIPHERS: &str = "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com";
/// MACs for the non-AEAD ciphers: encrypt-then-MAC first.
const MACS: &str =
    "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha2-256,hmac-sha2-512";
/// Compression, when a hub asks for it: OpenSSH's sshd offers only
/// `zlib@openssh.com` (delayed until after login) by default, plain
/// `zlib` only when its `Compression` is set to `yes` in old versions.
const COMPRESSION: &str = "zlib@openssh.com,zlib,none";

/// How to reach one destination, ready to use: the hubs that take its
/// mail, tried in order, and the limits of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name (the config section, Postfix's nexthop).
    pub name: String,
    /// The hubs, tried in order: the first that answers and proves itself
    /// takes the mail.
    pub hubs: Vec<Hub>,
    /// What we ask the forced command for.
    pub command: String,
    /// Limit for each read or write once connected.
    pub idle_timeout: Duration,
    /// Limit for the whole delivery.
    pub deadline: Duration,
    /// How long a message whose acknowledgement was lost waits for the hub
    /// that may have queued it before another hub may take it (see
    /// [`crate::pins`]).
    pub failover_hold: Duration,
}

/// One hub of a destination: where it is and who we are to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// What logs call it: its own `[peer.NAME]` section, or the
    /// destination's name with the host.
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// Remote login.
    pub user: String,
    /// Private key file.
    pub identity: PathBuf,
    /// `known_hosts` file with the hub's pinned host key.
    pub known_hosts: PathBuf,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// libssh2's zlib compression of the SSH transport.
    pub compression: bool,
    /// How the hub is reached when not by TCP to `host`:`port` (see
    /// [`crate::proxy`]).
    pub proxy: Option<Proxy>,
}

/// How a hub is reached when not by a direct TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// `proxy_jump`: a bastion (its own host, login, key and pinned host
    /// key, and maybe a proxy of its own) forwards a channel to the hub's
    /// host and port.
    Jump(Box<Hub>),
    /// `proxy_command`: a program whose standard input and output carry
    /// the session (`%h`, `%p`, `%r` not yet substituted).
    Command(String),
}

impl Peer {
    /// The destination's hubs that use `hub`'s name, in order (a pinned
    /// hub named by [`crate::pins`]).
    pub fn only(&self, hub: &str) -> Vec<&Hub> {
        self.hubs.iter().filter(|h| h.name == hub).collect()
    }

    /// True when the destination has more than one hub to fail over to.
    pub fn has_failover(&self) -> bool {
        self.hubs.len() > 1
    }
}

/// An open exec channel and what to call the peer in logs.
pub struct Connection {
    /// Keeps the session alive as long as the channel is used.
    pub session: Session,
    /// The channel running the peer's forced command.
    pub channel: ChannelStream,
    /// `name[address]:port`, as Postfix writes relays.
    pub relay: String,
    /// The name of the hub that answered ([`Hub::name`]).
    pub hub: String,
}

/// Connects to the first of the destination's hubs that answers and
/// proves itself, and asks its forced command for `verb` (`receive`,
/// `pull`...).
pub fn connect(peer: &Peer, verb: &str) -> Result<Connection, Failure> {
    connect_to(peer, &peer.hubs.iter().collect::<Vec<_>>(), verb)
}

/// Connects to the first of `hubs` (some of `peer`'s) that answers and
/// proves itself. A hub that is down, times out, offers another host key
/// or refuses our key is passed over for the next; the last two are
/// logged as warnings naming the hub, since an admin must fix them. When
/// every hub fails, the worst failure is returned (see
/// [`FailureKind::severity`]): a
/// wrong host key says more than a dead link.
pub fn connect_to(peer: &Peer, hubs: &[&Hub], verb: &str) -> Result<Connection, Failure> {
    let mut worst: Option<Failure> = None;
    let mut tried = Vec::new();
    let several = hubs.len() > 1;
    for (i, hub) in hubs.iter().enumerate() {
        let failure = match preflight(hub)
            .and_then(|known_hosts| connect_hub(peer, hub, &known_hosts, verb))
        {
            Ok(connection) => return Ok(connection),
            Err(failure) => failure,
        };
        let next = if i + 1 < hubs.len() {
            "; trying the next hub"
        } else {
            ""
        };
        match failure.kind {
            FailureKind::Connect | FailureKind::Timeout if !several => {
                debug!("peer {}: hub {}: {}", peer.name, hub.name, failure.text);
            }
            FailureKind::Connect | FailureKind::Timeout => {
                info!(
                    "peer {}: hub {} unreachable: {}{next}",
                    peer.name, hub.name, failure.text
                );
            }
            _ => warn!(
                "peer {}: hub {}: {}{next}",
                peer.name, hub.name, failure.text
            ),
        }
        tried.push(format!("{} ({})", hub.name, what_failed(&failure.kind)));
        if worst
            .as_ref()
            .is_none_or(|w| failure.kind.severity() > w.kind.severity())
        {
            worst = Some(failure);
        }
    }
    let mut worst = worst.unwrap_or_else(|| Failure::new(FailureKind::Config, "no hubs to try"));
    if several {
        worst.text = format!(
            "{}; every hub of peer {} failed: {}",
            worst.text,
            peer.name,
            tried.join(", ")
        );
    }
    Err(worst)
}

/// A hub's failure in a word or two, for the list in a deferral.
fn what_failed(kind: &FailureKind) -> &'static str {
    match kind {
        FailureKind::Connect => "unreachable",
        FailureKind::Timeout => "timed out",
        FailureKind::HostKey => "host key",
        FailureKind::Auth => "login refused",
        FailureKind::Config => "config",
        _ => "session failed",
    }
}

/// What can be checked before connecting: the pinned host keys can be read
/// and used (returned, for [`connect_hub`]) and so can our key.
pub fn preflight(hub: &Hub) -> Result<KnownHosts, Failure> {
    let known_hosts = load_known_hosts(&hub.known_hosts)?;
    check_identity(&hub.identity)?;
    Ok(known_hosts)
}

/// Connects to one hub, with `known_hosts` from [`preflight`].
pub fn connect_hub(
    peer: &Peer,
    hub: &Hub,
    known_hosts: &KnownHosts,
    verb: &str,
) -> Result<Connection, Failure> {
    let Login {
        session,
        relay,
        command,
        ..
    } = login(hub, known_hosts, peer.idle_timeout, false)?;
    let fail = |kind, what: String| Failure::new(kind, format!("{relay}: {what}"));
    let mut channel = session.channel_session().map_err(|e| {
        fail(
            ssh_kind(&e, FailureKind::PeerProtocol),
            format!("open channel: {e}"),
        )
    })?;
    // rsmtp answers on stdout; its stderr is for humans and its syslog.
    // Ignoring it keeps a chatty stderr from filling the window.
    channel
        .handle_extended_data(ExtendedData::Ignore)
        .map_err(|e| fail(FailureKind::Internal, format!("channel setup: {e}")))?;
    let (request, deflate) = request(verb, hub.compression);
    channel.exec(&request).map_err(|e| {
        fail(
            ssh_kind(&e, FailureKind::PeerProtocol),
            format!("exec {request}: {e}"),
        )
    })?;
    Ok(Connection {
        session,
        channel: ChannelStream(channel, deflate.then(Box::default), command),
        relay,
        hub: hub.name.clone(),
    })
}

/// A logged-in SSH session to a hub or a bastion.
pub(crate) struct Login {
    /// The session, authenticated.
    pub session: Session,
    /// What logs call the far end.
    pub relay: String,
    /// The proxy command carrying it, if any: it must live as long as
    /// the session.
    pub command: Option<crate::proxy::ProxyCommand>,
    /// A duplicate of the session's socket, to poll(2) on.
    pub socket: OwnedFd,
}

/// Opens the stream to `hub` (TCP or through its proxy), makes the
/// handshake, proves the hub's host key against `known_hosts` and logs in
/// with its key; `idle` limits each step. `bastion` says which fix a
/// refused key calls for.
pub(crate) fn login(
    hub: &Hub,
    known_hosts: &KnownHosts,
    idle: Duration,
    bastion: bool,
) -> Result<Login, Failure> {
    let host = hub.host.as_str();
    let Link {
        socket,
        relay,
        mut command,
    } = crate::proxy::open(hub, idle)?;
    debug!("hub {}: connected to {relay}", hub.name);
    let fail = |kind, what: String| Failure::new(kind, format!("{relay}: {what}"));
    let poll_socket = socket
        .try_clone()
        .map_err(|e| fail(FailureKind::Local, format!("dup socket: {e}")))?;
    let mut session =
        Session::new().map_err(|e| fail(FailureKind::Internal, format!("libssh2 session: {e}")))?;
    session.set_tcp_stream(socket);
    session.set_timeout(millis(idle));
    // Before the handshake: libssh2 offers zlib (and OpenSSH's delayed
    // zlib@openssh.com) only when asked to.
    session.set_compress(hub.compression);
    // Preferences are best effort: a libssh2 without one of these methods
    // still negotiates the others.
    let _ = session.method_pref(MethodType::Kex, KEX);
    let _ = session.method_pref(MethodType::CryptCs, CIPHERS);
    let _ = session.method_pref(MethodType::CryptSc, CIPHERS);
    let _ = session.method_pref(MethodType::MacCs, MACS);
    let _ = session.method_pref(MethodType::MacSc, MACS);
    if hub.compression {
        let _ = session.method_pref(MethodType::CompCs, COMPRESSION);
        let _ = session.method_pref(MethodType::CompSc, COMPRESSION);
    }
    // A hub with several host keys must offer the one we pinned.
    let algorithms = known_hosts.host_key_algorithms(host, hub.port);
    if !algorithms.is_empty() {
        let _ = session.method_pref(MethodType::HostKey, &algorithms.join(","));
    }
    if let Err(e) = session.handshake() {
        let text = format!("SSH handshake: {e}");
        let text = match &mut command {
            // A proxy command that failed is the likely reason: say how
            // it ended and what it wrote.
            Some(command) => command.explain(&text),
            None => text,
        };
        return Err(fail(ssh_kind(&e, FailureKind::Connect), text));
    }
    debug!(
        "{relay}: SSH handshake done: kex {}, cipher {}, host key {}, compression {}",
        session.methods(MethodType::Kex).unwrap_or("?"),
        session.methods(MethodType::CryptCs).unwrap_or("?"),
        session.methods(MethodType::HostKey).unwrap_or("?"),
        session.methods(MethodType::CompCs).unwrap_or("?")
    );
    verify_host_key(&session, hub, known_hosts)?;
    debug!("{relay}: host key matches {}", hub.known_hosts.display());
    session
        .userauth_pubkey_file(&hub.user, None, &hub.identity, None)
        .map_err(|e| {
            fail(
                ssh_kind(&e, FailureKind::Auth),
                format!(
                    "login as {} with key {} refused ({e}); {}",
                    hub.user,
                    hub.identity.display(),
                    if bastion {
                        "add its .pub to the bastion's authorized_keys (restrict,port-forwarding,permitopen=\"HUB:PORT\",command=\"/bin/false\")"
                    } else {
                        "add its .pub to the hub's authorized_keys (rsmtp authorize)"
                    }
                ),
            )
        })?;
    debug!(
        "{relay}: logged in as {} with {}",
        hub.user,
        hub.identity.display()
    );
    Ok(Login {
        session,
        relay,
        command,
        socket: poll_socket,
    })
}

/// What we ask the forced command for: with compression on, `receive`
/// becomes `receive deflate`, a session compressed at full strength above
/// SSH (see [`crate::deflate`]); true when it does. Other verbs (`pull`,
/// `put-table`) are left to libssh2's zlib.
fn request(verb: &str, compression: bool) -> (String, bool) {
    if compression && verb == "receive" {
        (format!("{verb} {}", crate::deflate::RECEIVE_ARGUMENT), true)
    } else {
        (verb.to_owned(), false)
    }
}

/// The channel as a byte stream whose `flush` does nothing, or only
/// sync-flushes a compressed session's deflate stream (the second field,
/// set when [`connect`] asked for `receive deflate`; dropping the stream
/// ends it cleanly).
///
/// libssh2's channel "flush" (`libssh2_channel_flush_ex`, which the `ssh2`
/// crate's `Write::flush` calls) does not push our output: it throws away
/// *incoming* data not yet read. Calling it after pipelined commands would
/// discard replies already on their way (a 354 lost that way made the next
/// reply look like DATA's). Writes go out as they are made, so there is
/// nothing to flush.
///
/// The third field keeps a `proxy_command` carrying the session running
/// as long as the channel is used.
pub struct ChannelStream(
    pub ssh2::Channel,
    Option<Box<crate::deflate::Duplex>>,
    #[allow(dead_code, reason = "held, never read: it keeps the command running")]
    Option<crate::proxy::ProxyCommand>,
);

impl ChannelStream {
    /// A second handle that reads the same channel, for a reader and a
    /// writer held apart (a server session on the channel: `pull`, which
    /// is never deflated; it reads the channel as it is).
    pub fn reader(&self) -> ChannelReader {
        ChannelReader(self.0.stream(0))
    }
}

/// The reading half of a [`ChannelStream`] (see [`ChannelStream::reader`]).
pub struct ChannelReader(ssh2::Stream);

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Read for ChannelStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.1 {
            Some(deflate) => deflate.read(&mut self.0, buf),
            None => self.0.read(buf),
        }
    }
}

impl std::io::Write for ChannelStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.1 {
            Some(deflate) => deflate.write(&mut self.0, buf),
            None => self.0.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.1 {
            Some(deflate) => deflate.flush(&mut self.0),
            None => Ok(()),
        }
    }
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        if let Some(deflate) = &mut self.1 {
            deflate.close(&mut self.0);
        }
    }
}

pub(crate) fn tcp_connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Failure> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            Failure::new(
                FailureKind::Connect,
                format!("{host}: host name lookup failed: {e}"),
            )
        })?
        .collect();
    let mut last = format!("{host}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => return Ok((tcp, addr)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = format!(
                    "connect to {host}[{}]:{port}: timed out after {}s",
                    addr.ip(),
                    timeout.as_secs()
                );
            }
            Err(e) => last = format!("connect to {host}[{}]:{port}: {e}", addr.ip()),
        }
    }
    Err(Failure::new(FailureKind::Connect, last))
}

/// Reads the pinned keys up front: with no pin there is nothing to verify
/// against, and we never trust on first use. Lines we cannot use are
/// logged and skipped, as OpenSSH does; `@cert-authority` lines are a
/// configuration error, since trusting a CA is not pinning a key.
pub fn load_known_hosts(path: &Path) -> Result<KnownHosts, Failure> {
    let shown = path.display();
    let known_hosts = KnownHosts::load(path).map_err(|e| {
        Failure::new(
            FailureKind::HostKey,
            format!(
                "cannot read known_hosts {shown}: {e}; pin the hub's host key there (ssh-keyscan -p PORT HOST, checked out of band)"
            ),
        )
    })?;
    for warning in known_hosts.warnings() {
        warn!("known_hosts {shown}: {warning}; line ignored");
    }
    if let Some(line) = known_hosts.cert_authority_lines().first() {
        return Err(Failure::new(
            FailureKind::Config,
            format!(
                "known_hosts {shown} line {line}: @cert-authority is not supported (bsmtp-ssh pins host keys, it does not trust host certificates); replace it with the hub's own key"
            ),
        ));
    }
    Ok(known_hosts)
}

fn check_identity(path: &Path) -> Result<(), Failure> {
    fs::File::open(path)
        .and_then(|mut f| f.read(&mut [0u8; 1]))
        .map(|_| ())
        .map_err(|e| {
            Failure::new(
                FailureKind::Config,
                format!(
                    "cannot read key {}: {e}; it must be readable by the transport's user",
                    path.display()
                ),
            )
        })
}

fn verify_host_key(session: &Session, hub: &Hub, known_hosts: &KnownHosts) -> Result<(), Failure> {
    let host = hub.host.as_str();
    let path = hub.known_hosts.display();
    let fail = |what: String| Failure::new(FailureKind::HostKey, what);
    let (key, _) = session
        .host_key()
        .ok_or_else(|| fail(format!("{host}: the server sent no host key")))?;
    let shown = if hub.port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{}", hub.port)
    };
    match known_hosts.check(host, hub.port, key) {
        Verdict::Match => Ok(()),
        Verdict::Revoked => Err(fail(format!(
            "host key of {shown} is revoked: {path} marks the key it offered @revoked; refusing it (if the hub has a new key, verify it out of band and pin it in {path})"
        ))),
        Verdict::Mismatch => Err(fail(format!(
            "host key mismatch for {shown}: the key it offered is not the one pinned in {path}; if the hub's key really changed, verify the new one out of band and update {path}"
        ))),
        Verdict::NotFound => Err(fail(format!(
            "no pinned host key for {shown} in {path}; add the hub's key there (ssh-keyscan -p {} {host}, verified out of band; a plain host name pins port 22 only)",
            hub.port
        ))),
    }
}

/// Classes an ssh2 error: its timeouts are timeouts, the rest `otherwise`.
pub(crate) fn ssh_kind(err: &ssh2::Error, otherwise: FailureKind) -> FailureKind {
    // LIBSSH2_ERROR_TIMEOUT
    if err.code() == ssh2::ErrorCode::Session(-9) {
        FailureKind::Timeout
    } else {
        otherwise
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_receive_with_compression_asks_for_deflate() {
        assert_eq!(request("receive", true), ("receive deflate".into(), true));
        assert_eq!(request("receive", false), ("receive".into(), false));
        assert_eq!(request("pull", true), ("pull".into(), false));
        assert_eq!(
            request("put-table relay 12 0a", true),
            ("put-table relay 12 0a".into(), false)
        );
    }
}
