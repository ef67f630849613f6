//! `bsmtp-ssh push-table`: keep a hub's Postfix lookup tables current from
//! here (the mailhub scenario: a mailbox server pushes its
//! `relay_recipients` to its MX hubs, so they reject unknown recipients at
//! the door).
//!
//! Each push is one SSH session whose command is `put-table NAME BYTES
//! SHA256` ([`bsmtp::table::PutTable`]), the table source on the channel,
//! then EOF. The size and SHA-256 are counted in a first pass over the file,
//! which also scans it as the hub will ([`bsmtp::table::SourceScan`]: a
//! malformed source is refused here, before any connection), and the same
//! number of bytes is sent in a second: if the link drops, or the file
//! changes in between, the hub's rsmtp sees the mismatch and keeps its old
//! table. The hub answers with one SMTP-style line, which is printed;
//! rsmtp's exit status becomes ours when the push failed.
//!
//! A destination with several hubs (`failover`, or `hosts`) is not one
//! table but one per hub, each hub's smtpd reading its own: the table goes
//! to every hub in turn, each hub's answer on a line of its own, and the
//! push fails, naming the hubs that did not install it, unless all did.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bsmtp::reply::{Reply, ReplyParser};
use bsmtp::status::{Failure, FailureKind};
use bsmtp::table::{Checksum, PutTable, SourceError, SourceScan};
use bsmtp_session::ssh::{self, Hub, Peer};
use clap::Args as ClapArgs;
use log::{info, warn};
use sysexits::ExitCode;

use crate::config::ConfigFile;

/// The longest reply line read from the hub.
const MAX_REPLY: u64 = 4096;
/// Bytes per read and write of the source.
const CHUNK: usize = 64 * 1024;

/// `bsmtp-ssh push-table`.
#[derive(Debug, ClapArgs)]
pub struct PushArgs {
    /// Configuration file naming the peers (and, for --all, their tables).
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Push every table of every peer's `tables` to that peer.
    #[arg(long, conflicts_with_all = ["peer", "name", "file"])]
    pub all: bool,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
    /// The hub: a [peer.NAME] section.
    #[arg(
        value_name = "PEER",
        required_unless_present = "all",
        requires_all = ["name", "file"]
    )]
    pub peer: Option<String>,
    /// The table's name on the hub, e.g. `relay_recipients`.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// The table source, in postmap(1)'s input format.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Why one push failed: a line to print and the exit status.
#[derive(Debug)]
struct PushFailure {
    text: String,
    exit: u8,
}

impl PushFailure {
    fn new(exit: ExitCode, text: String) -> Self {
        PushFailure {
            text,
            exit: exit as u8,
        }
    }
}

impl From<Failure> for PushFailure {
    /// A connection failure: a config error is the admin's (78), anything
    /// else (unreachable, host key, login) may pass (75).
    fn from(failure: Failure) -> Self {
        let exit = match failure.kind {
            FailureKind::Config => ExitCode::Config,
            _ => ExitCode::TempFail,
        };
        PushFailure::new(exit, failure.to_string())
    }
}

/// Runs `push-table`: one line per table and hub (`HUB NAME: reply`), and
/// for a destination with several hubs one more when some failed; exit 0
/// when every hub installed every table, else the status of the first
/// failure that is not temporary, else 75.
pub fn run(args: &PushArgs, out: &mut impl Write) -> u8 {
    let file = match ConfigFile::load_for_command("push-table", &args.config, args.verbose, out) {
        Ok(file) => file,
        Err(status) => return status,
    };
    let jobs: Vec<(String, String, PathBuf)> = match (&args.peer, &args.name, &args.file) {
        (Some(peer), Some(name), Some(source)) => {
            vec![(peer.clone(), name.clone(), source.clone())]
        }
        // --all; clap allows nothing else.
        _ => file
            .peer
            .iter()
            .flat_map(|(peer, section)| {
                section
                    .tables
                    .iter()
                    .map(|(name, source)| (peer.clone(), name.clone(), source.clone()))
            })
            .collect(),
    };
    if jobs.is_empty() {
        let _ = writeln!(
            out,
            "bsmtp-ssh push-table: no tables listed in {} (add tables = {{ NAME = \"FILE\" }} to a [peer.NAME] section)",
            args.config.display()
        );
        return ExitCode::Config as u8;
    }
    let mut status = 0;
    let mut fail = |failure: &PushFailure| {
        if status == 0 || status == ExitCode::TempFail as u8 {
            status = failure.exit;
        }
    };
    for (peer, name, source) in &jobs {
        let results = match push(&file, peer, name, source) {
            Ok(results) => results,
            Err(failure) => {
                warn!("push-table {peer} {name}: {}", failure.text);
                let _ = writeln!(out, "{peer} {name}: {}", failure.text);
                fail(&failure);
                continue;
            }
        };
        let mut failed = Vec::new();
        for (hub, result) in &results {
            match result {
                Ok(reply) => {
                    info!("push-table {hub} {name}: {reply}");
                    let _ = writeln!(out, "{hub} {name}: {reply}");
                }
                Err(failure) => {
                    warn!("push-table {hub} {name}: {}", failure.text);
                    let _ = writeln!(out, "{hub} {name}: {}", failure.text);
                    fail(failure);
                    failed.push(hub.as_str());
                }
            }
        }
        if results.len() > 1 && !failed.is_empty() {
            let text = format!(
                "table {name} not installed on every hub of peer {peer}: failed on {} ({} of {} installed it); push again when the hub is back",
                failed.join(", "),
                results.len() - failed.len(),
                results.len()
            );
            warn!("push-table {peer} {name}: {text}");
            let _ = writeln!(out, "{peer} {name}: {text}");
        }
    }
    status
}

/// One hub's name and how the push to it ended.
type HubResult = (String, Result<Reply, PushFailure>);

/// Pushes `source` as table `name` to every hub of the peer called `peer`,
/// in order: each hub's name with its reply when it installed the table.
/// An error when nothing could be tried (a bad name or source, an unknown
/// peer).
fn push(
    file: &ConfigFile,
    peer: &str,
    name: &str,
    source: &Path,
) -> Result<Vec<HubResult>, PushFailure> {
    bsmtp::table::check_name(name).map_err(|err| PushFailure::new(ExitCode::Usage, err))?;
    let peer = file
        .peer(peer)
        .map_err(|text| PushFailure::new(ExitCode::Config, text))?;
    let unreadable = |err: io::Error| {
        PushFailure::new(
            ExitCode::NoInput,
            format!("cannot read {}: {err}", source.display()),
        )
    };
    let (expected, scanned) = checksum(source).map_err(unreadable)?;
    scanned.map_err(|err| {
        PushFailure::new(
            ExitCode::DataErr,
            format!("{}: {err}; not pushed", source.display()),
        )
    })?;
    let request = PutTable {
        name: name.to_owned(),
        expected: Some(expected),
    };
    Ok(peer
        .hubs
        .iter()
        .map(|hub| {
            let result = push_to(&peer, hub, source, &request, expected.size);
            (hub.name.clone(), result)
        })
        .collect())
}

/// Pushes the first `size` bytes of `source` to one hub of `peer`; its
/// reply when it installed the table.
fn push_to(
    peer: &Peer,
    hub: &Hub,
    source: &Path,
    request: &PutTable,
    size: u64,
) -> Result<Reply, PushFailure> {
    let mut connection = ssh::connect_to(peer, &[hub], &request.command())?;
    connection.session.set_blocking(false);
    let (sent, early) = send(source, size, &mut connection.channel.0, peer.idle_timeout);
    connection.session.set_blocking(true);
    // The hub reads to the end of its input before it answers.
    let _ = connection.channel.0.send_eof();
    // postmap on a big table takes a while: wait for the reply as long as
    // a whole delivery may take.
    connection
        .session
        .set_timeout(u32::try_from(peer.deadline.as_millis()).unwrap_or(u32::MAX));
    let reply = read_reply(&mut connection.channel, early);
    // libssh2 has the exit status once the channel is closed, and closes
    // it only after the hub's EOF.
    let _ = connection.channel.0.wait_eof();
    let _ = connection.channel.0.wait_close();
    let exit = connection.channel.0.exit_status().ok();
    let _ = connection.session.disconnect(None, "done", None);
    let relay = &connection.relay;
    match reply {
        Ok(reply) if reply.code / 100 == 2 => match sent {
            Ok(()) => Ok(reply),
            // Cannot be: the hub checked what it got. Say so anyway.
            Err(err) => Err(PushFailure::new(
                ExitCode::Protocol,
                format!("{relay} said \"{reply}\", but sending failed: {err}"),
            )),
        },
        Ok(reply) => {
            // rsmtp's exit status says who must act (see rsmtp(8)); a
            // hub that gave none is judged by the reply's class.
            let exit = exit
                .and_then(|code| u8::try_from(code).ok())
                .filter(|code| (64..=78).contains(code))
                .unwrap_or(if reply.is_transient() {
                    ExitCode::TempFail as u8
                } else {
                    ExitCode::Unavailable as u8
                });
            Err(PushFailure {
                text: reply.one_line(),
                exit,
            })
        }
        Err(err) => Err(PushFailure::new(
            ExitCode::TempFail,
            format!(
                "{relay}: no reply to put-table ({err}{}{})",
                exit.map(|code| format!(", exit status {code}"))
                    .unwrap_or_default(),
                sent.err()
                    .map(|e| format!(", sending failed: {e}"))
                    .unwrap_or_default()
            ),
        )),
    }
}

/// The size and SHA-256 of the file at `path`, and what the hub's scan of
/// it will say.
fn checksum(path: &Path) -> io::Result<(bsmtp::table::Expected, Result<usize, SourceError>)> {
    let mut file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut sum = Checksum::new();
    let mut scan = SourceScan::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok((sum.finish(), scan.finish())),
            Ok(n) => {
                sum.update(&buf[..n]);
                scan.update(&buf[..n]);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// The channel as `send` sees it: a byte stream that can say whether the
/// other side has ended its output.
trait Link: Read + Write {
    /// True once the hub sent EOF (it answered and exited).
    fn ended(&self) -> bool;
}

impl Link for ssh2::Channel {
    fn ended(&self) -> bool {
        self.eof()
    }
}

/// Sends the first `size` bytes of the file at `path` (the bytes that were
/// counted; a file that shrank since is sent short, and the hub refuses it)
/// on a channel of a session in non-blocking mode. Returns how sending
/// ended, and what the hub said meanwhile.
///
/// Non-blocking because a hub that refuses early (a table too big or not
/// granted) answers and exits without reading the rest: a blocking libssh2
/// write then waits for window space that never comes, without noticing
/// that the channel closed, until the idle timeout. Here a stalled write
/// looks for the hub's answer instead. `idle` bounds a stall.
fn send(
    path: &Path,
    size: u64,
    channel: &mut impl Link,
    idle: Duration,
) -> (io::Result<()>, Vec<u8>) {
    let mut answer = Vec::new();
    let mut file = match File::open(path) {
        Ok(file) => file.take(size),
        Err(err) => return (Err(err), answer),
    };
    let mut buf = vec![0u8; CHUNK];
    let (mut start, mut end) = (0, 0);
    let mut progress = Instant::now();
    let result = loop {
        if start == end {
            match file.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => (start, end) = (0, n),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
            continue;
        }
        match channel.write(&buf[start..end]) {
            Ok(n) if n > 0 => {
                start += n;
                progress = Instant::now();
                continue;
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => break Err(err),
        }
        // Stalled: has the hub answered? Then it reads no more.
        let mut small = [0u8; 512];
        match channel.read(&mut small) {
            Ok(n) if n > 0 => {
                answer.extend_from_slice(&small[..n]);
                break Err(io::Error::other(
                    "the hub answered before it had the whole table",
                ));
            }
            Ok(_) if channel.ended() => {
                break Err(io::Error::other("the hub closed the channel"));
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => break Err(err),
        }
        if progress.elapsed() > idle {
            break Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the hub took nothing for {}s", idle.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (result, answer)
}

/// Reads the hub's one reply (at most [`MAX_REPLY`] bytes), the first
/// `bytes` of it already read.
fn read_reply(channel: &mut impl Read, mut bytes: Vec<u8>) -> io::Result<Reply> {
    let mut parser = ReplyParser::new();
    let mut limited = channel.take(MAX_REPLY);
    let mut buf = [0u8; 512];
    loop {
        if let Some((_, reply)) = parser
            .parse(&bytes)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?
        {
            return Ok(reply);
        }
        match limited.read(&mut buf) {
            Ok(0) if bytes.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the channel closed without a reply",
                ))
            }
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the channel closed inside a reply: {}",
                        bsmtp::text::printable(&bytes)
                    ),
                ))
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        push: PushArgs,
    }

    #[test]
    fn command_line_forms() {
        let one = Cli::try_parse_from(["x", "hub", "relay_recipients", "/etc/postfix/r"]).unwrap();
        assert_eq!(one.push.peer.as_deref(), Some("hub"));
        assert!(!one.push.all);
        assert!(Cli::try_parse_from(["x", "--all"]).unwrap().push.all);
        for bad in [
            &["x"][..],
            &["x", "hub"],
            &["x", "hub", "relay_recipients"],
            &["x", "--all", "hub", "t", "f"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tables_are_listed_per_peer() {
        let file: ConfigFile = toml::from_str(
            "[peer.hub]\nhost = \"a\"\ntables = { relay_recipients = \"/etc/postfix/relay_recipients\" }\n",
        )
        .unwrap();
        assert_eq!(
            file.peer["hub"].tables["relay_recipients"],
            Path::new("/etc/postfix/relay_recipients")
        );
    }

    #[test]
    fn reply_is_read_from_a_stream_in_pieces() {
        let reply = read_reply(
            &mut &b"250 2.0.0 table t installed (3 bytes)\r\n"[..],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(reply.one_line(), "250 2.0.0 table t installed (3 bytes)");
        let err = read_reply(&mut &b"250 2.0"[..], Vec::new()).unwrap_err();
        assert!(err.to_string().contains("inside a reply"), "{err}");
        assert!(read_reply(&mut &b""[..], Vec::new()).is_err());
        let reply = read_reply(&mut &b"bytes)\r\n"[..], b"552 5.3.4 too many ".to_vec()).unwrap();
        assert_eq!(reply.code, 552);
    }

    /// A channel that takes `room` bytes and then stalls, as an SSH
    /// channel whose window the hub stopped opening; `answer` is what the
    /// hub said.
    struct Stalling {
        taken: Vec<u8>,
        room: usize,
        answer: &'static [u8],
    }

    impl Read for Stalling {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.answer.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.answer.read(buf)
        }
    }

    impl Write for Stalling {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.taken.len());
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Link for Stalling {
        fn ended(&self) -> bool {
            false
        }
    }

    #[test]
    fn sends_only_the_bytes_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, b"bob@relay.test OK\n").unwrap();
        let (expected, scanned) = checksum(&path).unwrap();
        assert_eq!(expected.size, 18);
        assert_eq!(scanned, Ok(1));
        // The file grew after it was counted: the extra bytes stay home.
        std::fs::write(&path, b"bob@relay.test OK\neve@relay.test OK\n").unwrap();
        let mut channel = Stalling {
            taken: Vec::new(),
            room: 1000,
            answer: b"",
        };
        let (sent, answer) = send(&path, expected.size, &mut channel, Duration::from_secs(5));
        sent.unwrap();
        assert!(answer.is_empty());
        assert_eq!(channel.taken, b"bob@relay.test OK\n");
        assert!(checksum(dir.path()).is_err());
    }

    /// Regression: a hub that refused early (table too big) left push-table
    /// blocked in a write until the idle timeout.
    #[test]
    fn a_stalled_send_stops_at_the_hubs_early_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, vec![b'x'; 100_000]).unwrap();
        let mut channel = Stalling {
            taken: Vec::new(),
            room: 10,
            answer: b"552 5.3.4 too big\r\n",
        };
        let (sent, answer) = send(&path, 100_000, &mut channel, Duration::from_secs(30));
        assert!(sent.unwrap_err().to_string().contains("answered"));
        let reply = read_reply(&mut &b""[..], answer).unwrap();
        assert_eq!(reply.code, 552);
        // No answer, no progress: the idle limit ends it.
        let mut silent = Stalling {
            taken: Vec::new(),
            room: 10,
            answer: b"",
        };
        let (sent, _) = send(&path, 100_000, &mut silent, Duration::from_millis(50));
        assert_eq!(sent.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
