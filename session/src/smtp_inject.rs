//! rsmtp's fast injection path: messages go to a dedicated smtpd listener
//! of the hub's own Postfix over one persistent, pipelined connection per
//! session (TCP on loopback, or a UNIX socket), instead of one postdrop
//! exec and a pickup(8) reread per message.
//!
//! What it promises, the same as postdrop's path:
//! - a `250` only after smtpd's `250`, which carries smtpd's real queue ID
//!   (the one the hub's log uses from then on);
//! - a recipient smtpd refuses gets smtpd's own reply (code and enhanced
//!   status), in its RCPT's place ([`Injector::screen`]);
//! - a message cut short is never committed: smtpd commits only at the
//!   dot, and the dot is sent only after rsmtp's own dot arrived; aborting
//!   a message in DATA closes the connection (smtpd then drops it).
//!
//! The peer's identity reaches smtpd as XFORWARD (`NAME` the peer name,
//! `ADDR`/`PORT` the SSH client, `HELO` its EHLO name, `IDENT` the leaf's
//! queue ID from the transaction tag), so smtpd's log line says
//! `client=leaf1[192.0.2.7], orig_queue_id=...` and its Received: header
//! names the leaf. Its listener must allow XFORWARD from rsmtp
//! (`smtpd_authorized_xforward_hosts`): see the hub's master.cf snippet.
//!
//! The window that remains: a connection lost after the dot was sent and
//! before smtpd's reply arrived leaves the message's fate unknown; rsmtp
//! answers 451 and the leaf retries, so smtpd may have it twice (as with
//! any SMTP hop; Postfix's smtp(8) has the same window).

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bsmtp::reply::{EnhancedCode, Reply};
use bsmtp::status::{Failure, FailureKind};
use log::warn;

use crate::client::{self, ClientSession};
use crate::postdrop::MinFree;
use crate::server::{self, Committed, Delivery, Injector, Refusal, NOQUEUE};

/// Where rsmtp hands messages: `postdrop` (the default), or an smtpd
/// listener (`smtp:HOST:PORT`, `smtp:unix:PATH`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Inject {
    /// One `postdrop -r` per message (no change on the hub needed).
    #[default]
    Postdrop,
    /// An smtpd listener.
    Smtp(Endpoint),
}

/// An smtpd listener's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP, normally on loopback.
    Tcp {
        /// Host name or address (`[::1]` for IPv6).
        host: String,
        /// Port.
        port: u16,
    },
    /// A UNIX socket; a relative path is relative to the hub's
    /// `queue_directory`, as Postfix reads `unix:` next hops.
    Unix(PathBuf),
}

impl Inject {
    /// Reads `postdrop`, `smtp:HOST:PORT` or `smtp:unix:PATH`.
    pub fn parse(text: &str) -> Result<Inject, String> {
        let bad = |why: &str| {
            Err(format!(
                "inject \"{}\": {why} (expected postdrop, smtp:HOST:PORT or smtp:unix:PATH)",
                bsmtp::text::printable(text.as_bytes())
            ))
        };
        if text == "postdrop" {
            return Ok(Inject::Postdrop);
        }
        let Some(rest) = text.strip_prefix("smtp:") else {
            return bad("unknown method");
        };
        if let Some(path) = rest.strip_prefix("unix:") {
            if path.is_empty() || path.contains('\0') {
                return bad("no socket path");
            }
            return Ok(Inject::Smtp(Endpoint::Unix(PathBuf::from(path))));
        }
        let Some((host, port)) = rest.rsplit_once(':') else {
            return bad("no port");
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let Ok(port) = port.parse::<u16>() else {
            return bad("bad port");
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
        if !host_ok || port == 0 {
            return bad("bad host or port");
        }
        Ok(Inject::Smtp(Endpoint::Tcp {
            host: host.to_owned(),
            port,
        }))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "smtp:[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "smtp:{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "smtp:unix:{}", path.display()),
        }
    }
}

/// Who sent the mail, as XFORWARD tells smtpd.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// The peer name from the key's forced command (`--peer`).
    pub peer: String,
    /// The SSH client's address and port (from `SSH_CONNECTION`).
    pub address: Option<(IpAddr, u16)>,
}

impl PeerIdentity {
    /// The identity of `peer`, with the client address from an
    /// `SSH_CONNECTION` value (`client_ip client_port server_ip
    /// server_port`) when it parses.
    pub fn new(peer: &str, ssh_connection: Option<&str>) -> Self {
        let address = ssh_connection.and_then(|text| {
            let mut words = text.split_whitespace();
            let ip = words.next()?.parse::<IpAddr>().ok()?;
            let port = words.next()?.parse::<u16>().ok()?;
            Some((ip, port))
        });
        PeerIdentity {
            peer: peer.to_owned(),
            address,
        }
    }

    /// The XFORWARD attributes for one transaction of `envelope`.
    fn xforward(&self, envelope: &server::Envelope) -> Vec<(String, String)> {
        let mut attributes = vec![("NAME".to_owned(), self.peer.clone())];
        if let Some((ip, port)) = self.address {
            let addr = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("IPV6:{v6}"),
            };
            attributes.push(("ADDR".to_owned(), addr));
            attributes.push(("PORT".to_owned(), port.to_string()));
        }
        if let Some(helo) = &envelope.helo {
            attributes.push(("HELO".to_owned(), bsmtp::text::one_line(helo)));
        }
        attributes.push((
            "PROTO".to_owned(),
            if envelope.helo.is_some() {
                "ESMTP"
            } else {
                "BSMTP"
            }
            .to_owned(),
        ));
        // The tag begins with the leaf's queue ID (see
        // `bsmtp::tag::Tag::mint`): smtpd logs it as
        // orig_queue_id, which ties the hub's line to the leaf's.
        let ident = envelope
            .tag
            .as_ref()
            .and_then(bsmtp::tag::Tag::queue_id)
            .or_else(|| envelope.xforward("IDENT"));
        if let Some(ident) = ident.filter(|i| !i.is_empty()) {
            attributes.push(("IDENT".to_owned(), ident.to_owned()));
        }
        attributes.push(("SOURCE".to_owned(), "REMOTE".to_owned()));
        attributes
    }
}

/// A connection to smtpd.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// A UNIX socket.
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long smtpd may take for one reply or one write: Postfix's
/// smtp(8) waits 300 s for most replies (`smtp_rcpt_timeout`...) and
/// 600 s after the dot; one bound for all keeps it simple and is below
/// the leaf's own deadlines.
pub const REPLY_TIMEOUT: Duration = Duration::from_mins(5);

/// Opens a connection to `endpoint` (a relative UNIX path is taken from
/// `queue_directory`), with read and write timeouts.
fn connect(endpoint: &Endpoint, queue_directory: &Path) -> io::Result<Stream> {
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for addr in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                    Ok(stream) => {
                        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
                        let _ = stream.set_nodelay(true);
                        return Ok(Stream::Tcp(stream));
                    }
                    Err(err) => last = err,
                }
            }
            Err(last)
        }
        Endpoint::Unix(path) => {
            let stream = UnixStream::connect(queue_directory.join(path))?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
            stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
            Ok(Stream::Unix(stream))
        }
    }
}

/// The connection, shared by the injector and the message in DATA;
/// `None` before the first transaction and after a failure.
type Link = Rc<RefCell<Option<ClientSession<Stream>>>>;

/// The [`Injector`] that hands messages to an smtpd listener.
pub struct SmtpInjector {
    endpoint: Endpoint,
    queue_directory: PathBuf,
    helo: String,
    identity: PeerIdentity,
    min_free: Option<MinFree>,
    link: Link,
    /// smtpd has an open transaction (MAIL accepted, no DATA yet).
    open: bool,
    /// DATA went out with the recipients: its reply, for [`Injector::start`]
    /// (after a `354` smtpd reads the body next).
    data_reply: Option<Reply>,
}

impl SmtpInjector {
    /// An injector for `endpoint` (not connected until the first
    /// transaction), greeting smtpd as `helo`, telling it `identity`.
    pub fn new(
        endpoint: Endpoint,
        queue_directory: PathBuf,
        helo: String,
        identity: PeerIdentity,
        min_free: Option<MinFree>,
    ) -> Self {
        SmtpInjector {
            endpoint,
            queue_directory,
            helo,
            identity,
            min_free,
            link: Rc::new(RefCell::new(None)),
            open: false,
            data_reply: None,
        }
    }

    /// How smtpd is named in logs and replies.
    fn relay(&self) -> String {
        format!("smtpd at {}", self.endpoint)
    }

    /// Connects unless connected; true when the connection is new.
    fn connect(&self) -> Result<bool, Failure> {
        if self.link.borrow().is_some() {
            return Ok(false);
        }
        let relay = self.relay();
        let stream = connect(&self.endpoint, &self.queue_directory).map_err(|err| {
            Failure::new(
                FailureKind::Connect,
                format!("cannot connect to {relay}: {err}; is the hub's bsmtp-inject listener in master.cf (bsmtp-ssh postfix-install --hub)?"),
            )
        })?;
        let session = ClientSession::start_smtp(stream, relay, &self.helo)?;
        *self.link.borrow_mut() = Some(session);
        Ok(true)
    }

    /// Forgets the connection (closing it: smtpd drops whatever was open).
    fn disconnect(&mut self) {
        self.link.borrow_mut().take();
        self.open = false;
        self.data_reply = None;
    }

    /// MAIL (with XFORWARD) and every recipient, on a connection that may
    /// have gone stale (smtpd's idle timeout): a failure, or smtpd's
    /// `421`, on a reused connection is tried once more on a fresh one;
    /// nothing was committed yet, so that is safe.
    fn open_transaction(
        &mut self,
        envelope: &server::Envelope,
        data: bool,
    ) -> Result<(Reply, Vec<Reply>, Option<Reply>), Failure> {
        let xforward = self.identity.xforward(envelope);
        let client = client_envelope(envelope, 0);
        for _ in 0..2 {
            let fresh = self.connect()?;
            let result = self
                .link
                .borrow_mut()
                .as_mut()
                .map(|s| s.mail_rcpt_data(&xforward, &client, data));
            match result {
                Some(Ok((mail, _, _))) if mail.code == 421 && !fresh => self.disconnect(),
                Some(Ok(replies)) => return Ok(replies),
                Some(Err(_)) if !fresh => self.disconnect(),
                Some(Err(failure)) => {
                    self.disconnect();
                    return Err(failure);
                }
                None => return Err(Failure::new(FailureKind::Internal, "no connection")),
            }
        }
        Err(Failure::new(
            FailureKind::PeerProtocol,
            format!("{}: closed the connection twice", self.relay()),
        ))
    }
}

/// The client's envelope for `envelope`'s recipients from `from` on.
fn client_envelope(envelope: &server::Envelope, from: usize) -> client::Envelope {
    client::Envelope {
        sender: envelope.sender.clone(),
        recipients: envelope.recipients[from..].to_vec(),
        size: envelope.size,
        eight_bit: envelope.eight_bit,
        smtputf8: envelope.smtputf8,
        // smtpd knows no exactly-once tags: rsmtp keeps them.
        tag: None,
        dsn: envelope.dsn.clone(),
        recipient_dsn: envelope
            .recipient_dsn
            .get(from..)
            .unwrap_or_default()
            .to_vec(),
    }
}

/// A failure talking to smtpd as the sender's reply: smtpd's own reply
/// when it gave one, else `451` with the failure's enhanced code (the
/// message stays with the sender, who retries).
fn refusal(failure: &Failure) -> Refusal {
    let reply = match &failure.kind {
        FailureKind::Remote(reply) => reply.clone(),
        _ => Reply::new(
            451,
            Some(if failure.is_transient() {
                failure.dsn()
            } else {
                EnhancedCode::new(4, 3, 0)
            }),
            format!("{}; try again later", bsmtp::text::one_line(&failure.text)),
        ),
    };
    Refusal {
        reply,
        detail: failure.text.clone(),
    }
}

impl Injector for SmtpInjector {
    type Message = SmtpMessage;

    fn room(&self, size: Option<u64>) -> Result<(), Refusal> {
        self.min_free
            .as_ref()
            .map_or(Ok(()), |floor| floor.check(size))
    }

    fn screens_recipients(&self) -> bool {
        true
    }

    fn screen(
        &mut self,
        envelope: &server::Envelope,
        from: usize,
    ) -> Result<Vec<Option<Reply>>, Refusal> {
        self.ask(envelope, from, false)
    }

    fn screen_before_data(
        &mut self,
        envelope: &server::Envelope,
        from: usize,
    ) -> Result<Vec<Option<Reply>>, Refusal> {
        self.ask(envelope, from, true)
    }

    fn reset(&mut self) {
        if self.data_reply.take().is_some_and(|r| r.code == 354) {
            // smtpd reads a body now: only closing the connection drops it.
            self.disconnect();
            return;
        }
        if !self.open {
            return;
        }
        self.open = false;
        let result = self.link.borrow_mut().as_mut().map(ClientSession::rset);
        if !matches!(result, Some(Ok(ref reply)) if reply.code == 250) {
            self.disconnect();
        }
    }

    fn start(&mut self, envelope: &server::Envelope) -> Result<SmtpMessage, Refusal> {
        if let Some(reply) = self.data_reply.take() {
            self.open = false;
            return self.after_data(Ok(reply));
        }
        if !self.open {
            // Not screened (a caller that does not hold replies): every
            // recipient must be taken, or nothing is sent.
            let verdicts = self.screen(envelope, 0)?;
            if let Some(refused) = verdicts.into_iter().flatten().next() {
                self.reset();
                return Err(Refusal {
                    detail: format!(
                        "{} refused a recipient: {}",
                        self.relay(),
                        refused.one_line()
                    ),
                    reply: refused,
                });
            }
        }
        self.open = false;
        let result = match self.link.borrow_mut().as_mut() {
            Some(session) => session.data(),
            None => Err(Failure::new(FailureKind::Internal, "no connection")),
        };
        self.after_data(result)
    }
}

impl SmtpInjector {
    /// Asks smtpd about `envelope.recipients[from..]` (see
    /// [`Injector::screen`]), with DATA along when `data`.
    fn ask(
        &mut self,
        envelope: &server::Envelope,
        from: usize,
        data: bool,
    ) -> Result<Vec<Option<Reply>>, Refusal> {
        let verdict = |reply: Reply| (!reply.is_success()).then_some(reply);
        self.data_reply = None;
        if self.open {
            let more = client_envelope(envelope, from);
            let result = match self.link.borrow_mut().as_mut() {
                Some(session) => {
                    session.add_recipients(&more.recipients, &more.recipient_dsn, data)
                }
                None => Err(Failure::new(FailureKind::Internal, "no connection")),
            };
            return match result {
                Ok((replies, data_reply)) => {
                    self.data_reply = data_reply;
                    Ok(replies.into_iter().map(verdict).collect())
                }
                Err(failure) => {
                    self.disconnect();
                    Err(refusal(&failure))
                }
            };
        }
        // The whole envelope: a transaction not yet open at smtpd has none
        // of its recipients there, whatever `from` says.
        let (mail, replies, data_reply) = self
            .open_transaction(envelope, data)
            .map_err(|failure| refusal(&failure))?;
        if !mail.is_success() {
            if mail.code == 421 {
                self.disconnect();
            }
            return Err(Refusal {
                detail: format!("{} refused MAIL FROM: {}", self.relay(), mail.one_line()),
                reply: mail,
            });
        }
        self.open = true;
        self.data_reply = data_reply;
        Ok(replies.into_iter().skip(from).map(verdict).collect())
    }

    /// The message in DATA after smtpd's `354`, else smtpd's refusal.
    fn after_data(&mut self, result: Result<Reply, Failure>) -> Result<SmtpMessage, Refusal> {
        match result {
            Ok(reply) if reply.code == 354 => Ok(SmtpMessage {
                link: Rc::clone(&self.link),
                relay: self.relay(),
            }),
            Ok(reply) => {
                // smtpd stays in the transaction: it must forget it.
                self.open = true;
                self.reset();
                Err(Refusal {
                    detail: format!("{} refused DATA: {}", self.relay(), reply.one_line()),
                    reply,
                })
            }
            Err(failure) => {
                self.disconnect();
                Err(refusal(&failure))
            }
        }
    }
}

/// A message in DATA at smtpd.
pub struct SmtpMessage {
    link: Link,
    relay: String,
}

impl SmtpMessage {
    /// Runs `step` on the connection; a failure closes it.
    fn with_session<T>(
        &self,
        step: impl FnOnce(&mut ClientSession<Stream>) -> Result<T, Failure>,
    ) -> Result<T, Refusal> {
        let mut link = self.link.borrow_mut();
        let result = match link.as_mut() {
            Some(session) => step(session),
            None => Err(Failure::new(
                FailureKind::PeerProtocol,
                format!("{}: connection lost", self.relay),
            )),
        };
        result.map_err(|failure| {
            link.take();
            refusal(&failure)
        })
    }
}

impl Delivery for SmtpMessage {
    fn queue_id(&self) -> &str {
        NOQUEUE
    }

    fn write_piece(&mut self, bytes: &[u8], end_of_line: bool) -> Result<(), Refusal> {
        self.with_session(|s| s.piece(bytes, end_of_line))
    }

    /// The dot, and smtpd's verdict: `250 ... queued as ID` commits.
    fn commit(self) -> Result<Committed, Refusal> {
        let reply = self.with_session(ClientSession::end_data)?;
        if reply.code == 250 {
            let id = server::queue_id_of(&reply);
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                warn!(
                    "{}: no queue ID in its reply: {}",
                    self.relay,
                    reply.one_line()
                );
            }
            return Ok(Committed::Queued(id));
        }
        Err(Refusal {
            detail: format!("{} refused the message: {}", self.relay, reply.one_line()),
            reply,
        })
    }

    /// smtpd commits a message only at the dot, so the only way to drop one
    /// in DATA is to close the connection; the next transaction opens a
    /// new one.
    fn abort(self) {
        self.link.borrow_mut().take();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::policy::{Policy, SenderPattern};
    use crate::server::{Receiver, Settings};

    /// A scripted smtpd on a UNIX socket: greets, answers each command
    /// line by line (`reply` decides), reads a body after 354; returns
    /// what it was sent.
    fn fake_smtpd(
        listener: UnixListener,
        reply: fn(&str) -> &'static str,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut seen = String::new();
            writer.write_all(b"220 fake ESMTP\r\n").unwrap();
            let mut in_body = false;
            for _ in 0..1000 {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                seen.push_str(&line);
                let answer = if in_body {
                    if line != ".\r\n" {
                        continue;
                    }
                    "250 2.0.0 Ok: queued as FAKE42\r\n"
                } else {
                    reply(line.trim_end())
                };
                in_body = answer.starts_with("354");
                writer.write_all(answer.as_bytes()).unwrap();
            }
            seen
        })
    }

    fn smtpd_reply(command: &str) -> &'static str {
        match command.split([' ', ':']).next().unwrap_or_default() {
            "EHLO" => "250-fake\r\n250-PIPELINING\r\n250-DSN\r\n250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n",
            "RCPT" if command.contains("nouser") => "550 5.1.1 <nouser@hub.test>: Recipient address rejected: User unknown\r\n",
            "DATA" => "354 End data with <CR><LF>.<CR><LF>\r\n",
            "QUIT" => "221 2.0.0 Bye\r\n",
            _ => "250 2.0.0 Ok\r\n",
        }
    }

    /// leaf1 may send as `@leaf.test`, to anyone, up to 10 recipients.
    fn leaf1_policy() -> Policy {
        Policy {
            peer: "leaf1".into(),
            allow_sender: vec![SenderPattern::parse("@leaf.test").unwrap()],
            allow_recipient: Vec::new(),
            allow_routing_forms: false,
            max_size: 100_000,
            max_size_set: true,
            max_recipients: 10,
            hard_error_limit: None,
            check_header_from: false,
        }
    }

    /// The whole path against a scripted smtpd: XFORWARD names the peer,
    /// smtpd's refusal of one recipient is that RCPT's reply, DATA goes
    /// with the recipients, and rsmtp's 250 carries smtpd's queue ID.
    #[test]
    fn smtpd_refusal_and_queue_id_reach_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("inject");
        let server = fake_smtpd(UnixListener::bind(&socket).unwrap(), smtpd_reply);
        let policy = leaf1_policy();
        let injector = SmtpInjector::new(
            Endpoint::Unix(socket),
            dir.path().to_path_buf(),
            "hub.test".into(),
            PeerIdentity::new("leaf1", Some("192.0.2.7 40022 127.0.0.1 22")),
            None,
        );
        let input = b"EHLO leaf.test\nMAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test> NOTIFY=NEVER\n\
                      RCPT TO:<nouser@hub.test>\nDATA\n..dot\nbody\n.\n\
                      MAIL FROM:<evil@other.test>\nQUIT\n";
        let mut out = Vec::new();
        let summary = Receiver::new(Settings::new("hub.test".into(), policy, 20), injector)
            .run(&mut &input[..], &mut out)
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        let codes: Vec<&str> = out
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            codes,
            ["250", "250", "250", "550", "354", "250", "553", "221"],
            "{out}"
        );
        assert!(
            out.contains("550 5.1.1 <nouser@hub.test>: Recipient address rejected"),
            "{out}"
        );
        assert!(out.contains("250 2.0.0 Ok: queued as FAKE42\r\n"), "{out}");
        assert_eq!(summary.accepted, 1);
        // The Receiver ends; the connection closes and the server's loop ends.
        let seen = server.join().unwrap();
        assert!(
            seen.contains("XFORWARD NAME=leaf1 ADDR=192.0.2.7 PORT=40022 HELO=leaf.test PROTO=ESMTP SOURCE=REMOTE\r\n"),
            "{seen}"
        );
        assert!(
            seen.contains("RCPT TO:<nouser@hub.test>\r\nDATA\r\n"),
            "DATA goes with the recipients: {seen}"
        );
        assert!(
            seen.contains("RCPT TO:<b@hub.test> NOTIFY=NEVER\r\n"),
            "{seen}"
        );
        assert!(seen.contains("\r\n..dot\r\nbody\r\n.\r\n"), "{seen}");
        assert!(!seen.contains("evil@other.test"), "{seen}");
    }

    /// Nothing listens: each recipient gets 451 4.4.1 naming smtpd, and
    /// nothing is accepted.
    #[test]
    fn smtpd_unreachable_defers_every_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let policy = leaf1_policy();
        let injector = SmtpInjector::new(
            Endpoint::Unix("no-such-socket".into()),
            dir.path().to_path_buf(),
            "hub.test".into(),
            PeerIdentity::new("leaf1", None),
            None,
        );
        let input =
            b"MAIL FROM:<a@leaf.test>\nRCPT TO:<b@hub.test>\nRCPT TO:<c@hub.test>\nDATA\nx\n.\n";
        let mut out = Vec::new();
        let summary = Receiver::new(Settings::new("hub.test".into(), policy, 20), injector)
            .run(&mut &input[..], &mut out)
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out.matches("451 4.4.1 cannot connect to smtpd at smtp:unix:no-such-socket")
                .count(),
            2,
            "{out}"
        );
        assert_eq!(summary.accepted, 0);
    }

    #[test]
    fn inject_targets_parse() {
        assert_eq!(Inject::parse("postdrop"), Ok(Inject::Postdrop));
        assert_eq!(
            Inject::parse("smtp:127.0.0.1:10025"),
            Ok(Inject::Smtp(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 10025
            }))
        );
        assert_eq!(
            Inject::parse("smtp:[::1]:10025").unwrap(),
            Inject::Smtp(Endpoint::Tcp {
                host: "::1".into(),
                port: 10025
            })
        );
        assert_eq!(
            Inject::parse("smtp:unix:public/bsmtp-inject"),
            Ok(Inject::Smtp(Endpoint::Unix("public/bsmtp-inject".into())))
        );
        for bad in [
            "",
            "smtp",
            "smtp:",
            "smtp:host",
            "smtp:host:0",
            "smtp:host:99999",
            "smtp:unix:",
            "lmtp:host:25",
            "smtp:a b:25",
        ] {
            assert!(Inject::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Endpoint::Tcp {
                host: "::1".into(),
                port: 25
            }
            .to_string(),
            "smtp:[::1]:25"
        );
    }

    #[test]
    fn xforward_names_the_peer_its_address_helo_and_leaf_queue_id() {
        let identity = PeerIdentity::new("leaf1", Some("192.0.2.7 40022 127.0.0.1 22"));
        let envelope = server::Envelope {
            helo: Some("leaf.test".into()),
            tag: bsmtp::tag::Tag::parse("4Xq1ABC.0123abcd"),
            ..server::Envelope::default()
        };
        let attributes = identity.xforward(&envelope);
        let get = |name: &str| {
            attributes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("NAME"), Some("leaf1"));
        assert_eq!(get("ADDR"), Some("192.0.2.7"));
        assert_eq!(get("PORT"), Some("40022"));
        assert_eq!(get("HELO"), Some("leaf.test"));
        assert_eq!(get("IDENT"), Some("4Xq1ABC"));
        let offline = PeerIdentity::new("leaf1", None).xforward(&server::Envelope::default());
        assert!(offline.iter().all(|(n, _)| n != "ADDR" && n != "IDENT"));
    }
}
