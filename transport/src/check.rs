//! `bsmtp-ssh check`: what Taylor UUCP's `uuchk` does for its config, plus a
//! live probe. For each peer it checks the config section, the key file, the
//! pinned host keys, then connects to every host, proves the host key, logs
//! in, runs the forced command and holds a no-op session (EHLO, QUIT). One
//! line per check says `ok` or `FAIL` and, for a failure, what to fix.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bsmtp::codec::Command;
use bsmtp::status::{Failure, FailureKind};
use clap::Args;

use crate::client::Client;
use crate::config::{ConfigFile, Peer};
use crate::ssh;

/// `bsmtp-ssh check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file naming the peers.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Check only this peer (default: every peer in the file).
    #[arg(value_name = "PEER")]
    pub peer: Option<String>,
}

/// Collects results and prints them as they come.
struct Report<'a, W: Write> {
    out: &'a mut W,
    failed: usize,
}

impl<W: Write> Report<'_, W> {
    fn ok(&mut self, peer: &str, what: &str, detail: &str) {
        let _ = writeln!(self.out, "ok:   peer {peer}: {what}: {detail}");
    }

    /// Worth fixing, but mail still flows.
    fn warn(&mut self, peer: &str, what: &str, detail: &str) {
        let _ = writeln!(self.out, "warn: peer {peer}: {what}: {detail}");
    }

    fn fail(&mut self, peer: &str, what: &str, detail: &str) {
        self.failed += 1;
        let _ = writeln!(self.out, "FAIL: peer {peer}: {what}: {detail}");
    }
}

/// Runs the checks; exit 0 only when every check passed.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> u8 {
    bsmtp::logging::init("bsmtp-ssh", false, bsmtp::logging::Fallback::Stderr, None);
    let path = &args.config;
    let mut report = Report { out, failed: 0 };
    let file = match ConfigFile::load(path) {
        Ok(file) => file,
        Err(err) => {
            report.fail("-", "config", &err);
            return 1;
        }
    };
    let names: Vec<String> = match &args.peer {
        Some(name) => vec![name.clone()],
        None => file.peer.keys().cloned().collect(),
    };
    if names.is_empty() {
        report.fail(
            "-",
            "config",
            &format!("{} defines no [peer.NAME] section", path.display()),
        );
    }
    for name in &names {
        match file.peer(name) {
            Ok(peer) => {
                report.ok(
                    name,
                    "config",
                    &format!(
                        "hosts {}, port {}, user {}",
                        peer.hosts.join(", "),
                        peer.port,
                        peer.user
                    ),
                );
                check_peer(&peer, &mut report);
            }
            Err(err) => report.fail(name, "config", &err),
        }
    }
    let _ = report.out.flush();
    u8::from(report.failed > 0)
}

fn check_peer(peer: &Peer, report: &mut Report<'_, impl Write>) {
    let name = peer.name.as_str();
    let key_ok = check_key_file(&peer.identity, name, report);
    let path = peer.known_hosts.display();
    let known_hosts = match ssh::load_known_hosts(&peer.known_hosts) {
        Ok(known_hosts) => known_hosts,
        Err(failure) => {
            report.fail(name, "known_hosts", &failure.text);
            return;
        }
    };
    for warning in known_hosts.warnings() {
        report.warn(
            name,
            "known_hosts",
            &format!("{path}: {warning}; line ignored"),
        );
    }
    let mut pinned_everywhere = true;
    for host in &peer.hosts {
        let pins = known_hosts.pinned_count_for(host, peer.port);
        if pins == 0 {
            pinned_everywhere = false;
            report.fail(
                name,
                "known_hosts",
                &format!(
                    "{path} pins no host key for {}; add the hub's (ssh-keyscan -p {} {host}, verified out of band)",
                    if peer.port == 22 { host.clone() } else { format!("[{host}]:{}", peer.port) },
                    peer.port
                ),
            );
        } else {
            report.ok(
                name,
                "known_hosts",
                &format!("{path}: {pins} pinned keys for {host}"),
            );
        }
    }
    if !pinned_everywhere {
        return;
    }
    if !key_ok {
        return;
    }
    for host in &peer.hosts {
        match ssh::connect_host(peer, host, &known_hosts) {
            Ok(connection) => {
                report.ok(
                    name,
                    "login",
                    &format!(
                        "{}: host key matches the pin, key accepted for {}",
                        connection.relay, peer.user
                    ),
                );
                probe(connection, name, report);
            }
            Err(failure) => report.fail(name, stage(&failure), &failure.text),
        }
    }
}

/// The check a connection failure belongs to.
fn stage(failure: &Failure) -> &'static str {
    match failure.kind {
        FailureKind::Connect | FailureKind::Timeout => "connect",
        FailureKind::HostKey => "host key",
        FailureKind::Auth => "login",
        _ => "session",
    }
}

/// Checks that our private key is readable and private.
fn check_key_file(path: &Path, peer: &str, report: &mut Report<'_, impl Write>) -> bool {
    let shown = path.display();
    let mut head = [0u8; 64];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut head));
    let n = match read {
        Ok(n) => n,
        Err(err) => {
            report.fail(
                peer,
                "key",
                &format!(
                    "cannot read {shown}: {err}; create it (ssh-keygen -t ed25519 -N '' -f {shown}) and make it readable by the transport's user"
                ),
            );
            return false;
        }
    };
    if !head[..n].starts_with(b"-----BEGIN ") {
        report.fail(
            peer,
            "key",
            &format!("{shown} is not a private key (is it the .pub file?)"),
        );
        return false;
    }
    let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
    if mode & 0o077 != 0 {
        report.fail(
            peer,
            "key",
            &format!(
                "{shown} is readable by others (mode {:o}); chmod 600 {shown}",
                mode & 0o777
            ),
        );
        return false;
    }
    report.ok(peer, "key", &format!("{shown} is a private key, mode 600"));
    true
}

/// A no-op session: the forced command must answer EHLO and QUIT.
fn probe(connection: ssh::Connection, peer: &str, report: &mut Report<'_, impl Write>) {
    let mut client = Client::new(connection.channel, connection.relay.clone());
    let result = (|| -> Result<String, Failure> {
        client.send(&Command::Ehlo(crate::deliver::helo_name()));
        client.flush()?;
        let ehlo = client.read_reply()?;
        if ehlo.code != 250 {
            return Err(Failure::new(
                FailureKind::PeerProtocol,
                format!(
                    "{}: the forced command answered EHLO with {}",
                    connection.relay,
                    ehlo.one_line()
                ),
            ));
        }
        client.send(&Command::Quit);
        client.flush()?;
        let quit = client.read_reply()?;
        if quit.code != 221 {
            return Err(Failure::new(
                FailureKind::PeerProtocol,
                format!(
                    "{}: QUIT answered with {}",
                    connection.relay,
                    quit.one_line()
                ),
            ));
        }
        Ok(ehlo.lines.first().cloned().unwrap_or_default())
    })();
    match result {
        Ok(greeting) => report.ok(
            peer,
            "session",
            &format!("{}: rsmtp answered: 250 {greeting}", connection.relay),
        ),
        Err(failure) => report.fail(
            peer,
            "session",
            &format!(
                "{} (is the key's forced command rsmtp --peer NAME?)",
                failure.text
            ),
        ),
    }
    let _ = connection.session.disconnect(None, "check done", None);
}
