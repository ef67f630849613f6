//! `bsmtp-ssh check`: what Taylor UUCP's `uuchk` does for its config, plus a
//! live probe. For each peer it checks the config section, then for every
//! hub (a destination with failover has several) the key file, the pinned
//! host keys, then connects, proves the host key, logs
//! in, runs the forced command and holds a no-op session (EHLO, QUIT). One
//! line per check says `ok` or `FAIL` and, for a failure, what to fix.
//! Before the peers it checks where bsmtp-ssh's log lines will go when
//! pipe(8) runs it as the transport's user (`warn` when they cannot reach
//! the mail log, with the fix). Run as root (as admins do), it also checks
//! the key and the pins as that user: root reads anything, pipe(8) does
//! not.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bsmtp::known_hosts::KnownHosts;
use bsmtp::status::{Failure, FailureKind};
use bsmtp_session::logging::{Credentials, POSTLOG_FIX};
use bsmtp_session::main_cf::MainCf;
use clap::Args;
use nix::unistd::User;

use crate::config::ConfigFile;
use bsmtp_session::client::ClientSession;
use bsmtp_session::ssh;
use bsmtp_session::ssh::{Hub, Peer, Proxy};

/// `bsmtp-ssh check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (default: the first of `$BSMTP_SSH_CONFIG`,
    /// ~/.config/bsmtp-ssh/bsmtp-ssh.conf and /etc/bsmtp-ssh/bsmtp-ssh.conf).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check only this peer (default: every peer in the file).
    #[arg(value_name = "PEER")]
    pub peer: Option<String>,
    /// The Postfix instance's config directory (default: Postfix's own).
    #[arg(long = "config-directory", value_name = "DIR")]
    pub config_directory: Option<PathBuf>,
    /// The master.cf service that runs bsmtp-ssh; its `user=` is the
    /// account whose view of the mail log is checked.
    #[arg(long, value_name = "NAME", default_value = crate::install::DEFAULT_TRANSPORT)]
    pub transport: String,
    /// Check the mail log and file access as this user instead of the
    /// transport's `user=`.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
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

    /// A line about this host rather than a peer; `level` is `ok:  ` or `warn:`.
    fn host(&mut self, level: &str, what: &str, detail: &str) {
        let _ = writeln!(self.out, "{level} {what}: {detail}");
    }
}

/// Runs the checks; exit 0 only when every check passed.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> u8 {
    let path = &crate::config::lookup(args.config.as_deref());
    let loaded = ConfigFile::load(path);
    let postlog = loaded.as_ref().ok().and_then(|file| file.postlog.clone());
    bsmtp_session::logging::init(
        "bsmtp-ssh",
        false,
        bsmtp_session::logging::Fallback::Stderr,
        &bsmtp_session::logging::Target {
            postfix_config: args.config_directory.clone(),
            postlog: postlog.clone(),
        },
    );
    let mut report = Report { out, failed: 0 };
    let dir = args
        .config_directory
        .clone()
        .unwrap_or_else(MainCf::default_dir);
    let account = args
        .user
        .clone()
        .or_else(|| transport_user(&dir, &args.transport))
        .and_then(|name| User::from_name(&name).ok().flatten());
    check_logging(args, account.as_ref(), postlog.as_deref(), &mut report);
    let who = access(args, &dir, account.as_ref(), &mut report);
    let file = match loaded {
        Ok(file) => file,
        Err(err) => {
            report.fail("-", "config", &err);
            return 1;
        }
    };
    let bastions = file.bastions();
    let names: Vec<String> = match &args.peer {
        Some(name) => vec![name.clone()],
        None => file
            .peer
            .keys()
            .filter(|name| !bastions.contains(&name.as_str()))
            .cloned()
            .collect(),
    };
    if args.peer.is_none() {
        for bastion in &bastions {
            report.host(
                "ok:  ",
                &format!("bastion {bastion}"),
                "a proxy_jump, checked with each peer that uses it",
            );
        }
    }
    if names.is_empty() {
        report.fail(
            "-",
            "config",
            &format!("{} defines no [peer.NAME] section", path.display()),
        );
    }
    for name in &names {
        match file.peer(name) {
            Ok(peer) => check_peer(name, &peer, who.as_ref(), &mut report),
            Err(err) => report.fail(name, "config", &err),
        }
    }
    let _ = report.out.flush();
    u8::from(report.failed > 0)
}

/// Who the files are checked as: the user pipe(8) runs bsmtp-ssh as, with
/// its uid and primary group only (what pipe(8) gives the command); a
/// warning when root cannot tell.
fn access(
    args: &CheckArgs,
    dir: &std::path::Path,
    account: Option<&User>,
    report: &mut Report<'_, impl Write>,
) -> Option<Access> {
    let who = account.map(|account| Access {
        name: account.name.clone(),
        credentials: Credentials {
            uid: account.uid.as_raw(),
            gids: vec![account.gid.as_raw()],
        },
    });
    if who.is_none() && nix::unistd::geteuid().is_root() {
        report.host(
            "warn:",
            "access",
            &format!(
                "cannot tell which user pipe(8) runs bsmtp-ssh as (no user= in the {} service of {}/master.cf, or no such user), so files are checked as root only; give --user",
                args.transport,
                dir.display()
            ),
        );
    }
    who
}

/// One peer's config line, then each of its hubs.
fn check_peer(name: &str, peer: &Peer, who: Option<&Access>, report: &mut Report<'_, impl Write>) {
    let hubs: Vec<String> = peer
        .hubs
        .iter()
        .map(|hub| {
            format!(
                "{} (host {}, port {}, user {}{}{})",
                hub.name,
                hub.host,
                hub.port,
                hub.user,
                if hub.compression { ", compression" } else { "" },
                route(hub)
            )
        })
        .collect();
    report.ok(
        name,
        "config",
        &format!(
            "{} {}",
            if hubs.len() == 1 {
                "hub"
            } else {
                "hubs in failover order:"
            },
            hubs.join(", ")
        ),
    );
    for hub in &peer.hubs {
        check_hub(peer, hub, who, report);
    }
}

/// Where bsmtp-ssh's own log lines go when pipe(8) runs it: a mail log
/// that only postlog(1) reaches, and a postlog that cannot reach it for
/// the transport's user (Debian's 0755 postlog), is worth a warning, not a
/// failure: Postfix still logs every delivery's status line.
fn check_logging(
    args: &CheckArgs,
    account: Option<&User>,
    postlog: Option<&Path>,
    report: &mut Report<'_, impl Write>,
) {
    let dir = args
        .config_directory
        .clone()
        .unwrap_or_else(MainCf::default_dir);
    if args.config_directory.is_none() && !dir.join("main.cf").exists() {
        // A satellite: no Postfix, and nothing of Postfix's to report on.
        report.host(
            "ok:  ",
            "log",
            "no Postfix on this host (a satellite): bsmtp-ssh sendmail and flush log to syslog (facility mail)",
        );
        return;
    }
    let main_cf = MainCf::load(&dir);
    let Some(maillog_file) = main_cf.maillog_file() else {
        report.host(
            "ok:  ",
            "log",
            &format!(
                "{}/main.cf sets no maillog_file: Postfix logs to syslog (facility mail), and so does bsmtp-ssh",
                dir.display()
            ),
        );
        return;
    };
    let Some(account) = account else {
        report.host(
            "warn:",
            "log",
            &format!(
                "cannot tell which user pipe(8) runs bsmtp-ssh as (no user= in the {} service of {}/master.cf, or no such user); give --user",
                args.transport,
                dir.display()
            ),
        );
        return;
    };
    // pipe(8) gives the command its user's uid and primary group only.
    let who = Credentials {
        uid: account.uid.as_raw(),
        gids: vec![account.gid.as_raw()],
    };
    let postlog = postlog.unwrap_or(Path::new(bsmtp_session::logging::POSTLOG));
    match bsmtp_session::logging::postlog_reachable(&main_cf, postlog, &who) {
        Ok(()) => report.host(
            "ok:  ",
            "log",
            &format!(
                "maillog_file = {maillog_file}: postlog reaches postlogd for user {}, so bsmtp-ssh's lines go there",
                account.name
            ),
        ),
        Err(why) => report.host(
            "warn:",
            "log",
            &format!(
                "maillog_file = {maillog_file}, but {why} (user {}): bsmtp-ssh's own lines cannot reach {maillog_file}; Postfix still logs each delivery's status line there, with bsmtp-ssh's warnings at its end. To log everything, run: {POSTLOG_FIX}",
                account.name
            ),
        ),
    }
}

/// The `user=` of the master.cf service `transport` (`postconf -M`).
fn transport_user(config_dir: &Path, transport: &str) -> Option<String> {
    let output = bsmtp_session::child::command("/usr/sbin/postconf")
        .arg("-c")
        .arg(config_dir)
        .arg("-M")
        .arg(format!("{transport}/unix"))
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let entry = String::from_utf8_lossy(&output.stdout);
    entry
        .split_whitespace()
        .find_map(|word| word.strip_prefix("user="))
        .map(|user| user.split(':').next().unwrap_or(user).to_owned())
}

/// How a hub is reached, for the config line: `, via bastion NAME (host
/// H, port P, user U, via ...)` or `, via proxy_command "CMD"`.
fn route(hub: &Hub) -> String {
    match &hub.proxy {
        None => String::new(),
        Some(Proxy::Command(command)) => format!(", via proxy_command \"{command}\""),
        Some(Proxy::Jump(bastion)) => format!(
            ", via bastion {} (host {}, port {}, user {}{})",
            bastion.name,
            bastion.host,
            bastion.port,
            bastion.user,
            route(bastion)
        ),
    }
}

/// The bastions between us and `hub`, nearest to the hub first.
fn bastions(hub: &Hub) -> Vec<&Hub> {
    let mut chain = Vec::new();
    let mut next = hub;
    while let Some(Proxy::Jump(bastion)) = &next.proxy {
        chain.push(bastion.as_ref());
        next = bastion;
    }
    chain
}

/// Checks one hub of `peer`: key, pins, login, a no-op session. Lines name
/// the hub when the destination has several, and the bastions it is
/// reached through (`peer hub via bastion`), each checked as a hop.
fn check_hub(peer: &Peer, hub: &Hub, who: Option<&Access>, report: &mut Report<'_, impl Write>) {
    let mut named = if peer.has_failover() {
        format!("{} via {}", peer.name, hub.name)
    } else {
        peer.name.clone()
    };
    let chain = bastions(hub);
    for bastion in &chain {
        named = format!("{named} via {}", bastion.name);
    }
    let name = named.as_str();
    // The hops first, from ours outward: each needs its own key and pin.
    for bastion in chain.iter().rev() {
        if !check_hop_files(bastion, name, who, report) {
            return;
        }
    }
    let key_ok = check_key_file(&hub.identity, name, who, report);
    let path = hub.known_hosts.display();
    if let Some(denied) = who.and_then(|who| who.denied(&hub.known_hosts, "600 or 644")) {
        report.fail(name, "known_hosts", &denied);
        return;
    }
    let known_hosts = match ssh::load_known_hosts(&hub.known_hosts) {
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
    let host = &hub.host;
    if let Some(missing) = missing_pin(&known_hosts, &hub.known_hosts, "hub", host, hub.port) {
        report.fail(name, "known_hosts", &missing);
        return;
    }
    let pins = known_hosts.pinned_count_for(host, hub.port);
    report.ok(
        name,
        "known_hosts",
        &format!("{path}: {pins} pinned keys for {host}"),
    );
    if !key_ok {
        return;
    }
    match ssh::connect_hub(peer, hub, &known_hosts, &peer.command) {
        Ok(connection) => {
            report_hops(hub, &chain, name, report);
            report.ok(
                name,
                "login",
                &format!(
                    "{}: host key matches the pin, key accepted for {}",
                    connection.relay, hub.user
                ),
            );
            if hub.compression {
                let method = connection
                    .session
                    .methods(ssh2::MethodType::CompCs)
                    .unwrap_or("none")
                    .to_owned();
                if method == "none" {
                    report.warn(
                        name,
                        "compression",
                        "compression = true, but the hub's sshd agreed to none (is its Compression set to no?)",
                    );
                } else {
                    report.ok(name, "compression", &format!("negotiated {method}"));
                }
            }
            probe(connection, name, report);
        }
        Err(failure) => {
            // A failure on the way names its hop: report it as that hop's.
            let hop = chain
                .iter()
                .find(|b| failure.text.starts_with(&format!("bastion {}: ", b.name)))
                .map(|b| format!("hop bastion {}", b.name));
            report.fail(
                name,
                hop.as_deref().unwrap_or(stage(&failure)),
                &failure.text,
            );
        }
    }
}

/// Why `known_hosts` (read from `path`) cannot prove the host key of the
/// `role` (hub, bastion) at `host`:`port`, if it cannot: it pins no key at
/// all, or none for that host.
fn missing_pin(
    known_hosts: &KnownHosts,
    path: &Path,
    role: &str,
    host: &str,
    port: u16,
) -> Option<String> {
    if known_hosts.pinned_count() == 0 {
        return Some(no_pins_at_all(path, role, host, port));
    }
    if known_hosts.pinned_count_for(host, port) > 0 {
        return None;
    }
    let shown = if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    };
    Some(format!(
        "{} pins no host key for the {role} {shown}; add its key (ssh-keyscan -p {port} {host}, \
         verified out of band)",
        path.display()
    ))
}

/// The FAIL text for a `known_hosts` file that pins no key for any host: most
/// often the output of `ssh-keyscan` run against a `role` (hub, bastion)
/// with no sshd (not installed, or not running), which writes an empty
/// file without a word.
fn no_pins_at_all(path: &Path, role: &str, host: &str, port: u16) -> String {
    let shown = path.display();
    let what = if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        "is empty"
    } else {
        "holds no host key (only comments, blank or unusable lines)"
    };
    format!(
        "{shown} {what}: ssh-keyscan writes an empty file, and says nothing, when the {role} \
         runs no sshd; install and start the {role}'s SSH server (apt install openssh-server), \
         then pin its key with ssh-keyscan -p {port} {host} > {shown} and verify it out of band"
    )
}

/// An `ok` line for each hop on the way to `hub` (a proxy command, then
/// each bastion from ours outward), once a session through them all came
/// up.
fn report_hops(hub: &Hub, chain: &[&Hub], name: &str, report: &mut Report<'_, impl Write>) {
    let outermost = chain.last().copied().unwrap_or(hub);
    if let Some(Proxy::Command(command)) = &outermost.proxy {
        report.ok(
            name,
            "hop proxy_command",
            &format!(
                "\"{command}\" carried the session to {}:{}",
                outermost.host, outermost.port
            ),
        );
    }
    for bastion in chain.iter().rev() {
        let (host, port) = forward_target(hub, bastion);
        report.ok(
            name,
            &format!("hop bastion {}", bastion.name),
            &format!(
                "{}:{}: host key matches the pin in {}, key accepted for {}, forward to {host}:{port} allowed",
                bastion.host,
                bastion.port,
                bastion.known_hosts.display(),
                bastion.user,
            ),
        );
    }
}

/// Where `bastion` forwards to on the way to `hub`: the next hop's host
/// and port.
fn forward_target<'a>(hub: &'a Hub, bastion: &Hub) -> (&'a str, u16) {
    let mut next = hub;
    while let Some(Proxy::Jump(inner)) = &next.proxy {
        if inner.as_ref() == bastion {
            break;
        }
        next = inner;
    }
    (&next.host, next.port)
}

/// A bastion's key file and pinned host keys, as a hop of `name`.
fn check_hop_files(
    bastion: &Hub,
    name: &str,
    who: Option<&Access>,
    report: &mut Report<'_, impl Write>,
) -> bool {
    let hop = format!("hop bastion {}", bastion.name);
    if !check_key_file(&bastion.identity, name, who, report) {
        return false;
    }
    let known_hosts = match ssh::load_known_hosts(&bastion.known_hosts) {
        Ok(known_hosts) => known_hosts,
        Err(failure) => {
            report.fail(name, &hop, &failure.text);
            return false;
        }
    };
    let path = bastion.known_hosts.display();
    let host = &bastion.host;
    let pinned = &bastion.known_hosts;
    if let Some(missing) = missing_pin(&known_hosts, pinned, "bastion", host, bastion.port) {
        report.fail(name, &hop, &missing);
        return false;
    }
    let pins = known_hosts.pinned_count_for(host, bastion.port);
    report.ok(
        name,
        &hop,
        &format!("{path}: {pins} pinned keys for the bastion {host}"),
    );
    true
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

/// The transport's user, whose access to the key and pins counts: `check`
/// runs as root, pipe(8) as this user.
struct Access {
    name: String,
    credentials: Credentials,
}

impl Access {
    /// Why this user cannot read `path`, an existing file, with the fix
    /// (`mode`: the modes to suggest); `None` when it can, or when the
    /// file does not exist (the caller says to create it).
    fn denied(&self, path: &Path, mode: &str) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let why = self.credentials.can_read(path).err()?;
        let shown = path.display();
        let owner = User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
            .ok()
            .flatten()
            .map_or_else(|| meta.uid().to_string(), |user| user.name);
        Some(format!(
            "{shown} exists, but user {} (the transport's, as pipe(8) runs it) cannot read it: {why} (owner {owner}, mode {:o}); chown {} {shown} and chmod {mode} {shown}, and let {} search every directory above it",
            self.name,
            meta.mode() & 0o7777,
            self.name,
            self.name
        ))
    }
}

/// Checks that our private key is readable (by the transport's user
/// `who`, too) and private.
fn check_key_file(
    path: &Path,
    peer: &str,
    who: Option<&Access>,
    report: &mut Report<'_, impl Write>,
) -> bool {
    let shown = path.display();
    if let Some(denied) = who.and_then(|who| who.denied(path, "600")) {
        report.fail(peer, "key", &denied);
        return false;
    }
    let mut head = [0u8; 64];
    let read = std::fs::File::open(path).and_then(|mut f| f.read(&mut head));
    let n = match read {
        Ok(n) => n,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            report.fail(
                peer,
                "key",
                &format!(
                    "cannot read {shown}: {err}; create it (ssh-keygen -t ed25519 -N '' -f {shown}) and make it readable by the transport's user"
                ),
            );
            return false;
        }
        Err(err) => {
            report.fail(
                peer,
                "key",
                &format!(
                    "cannot read {shown}: {err}; it exists: chown it to the transport's user and chmod 600 {shown} (and let that user search every directory above it)"
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
    let relay = connection.relay.clone();
    let result = ClientSession::start(
        connection.channel,
        relay.clone(),
        &crate::deliver::helo_name(),
    )
    .and_then(|hub| {
        let greeting = hub.greeting().lines.join(", ");
        let tags = hub.extensions().transaction_tag;
        hub.quit_checked().map(|_| (greeting, tags))
    });
    match result {
        Ok((greeting, tags)) => {
            report.ok(
                peer,
                "session",
                &format!("{relay}: rsmtp answered: 250 {greeting}"),
            );
            if tags {
                report.ok(
                    peer,
                    "exactly-once",
                    &format!("{relay} keeps transaction tags: a retry after a lost acknowledgement is not queued twice"),
                );
            } else {
                report.warn(
                    peer,
                    "exactly-once",
                    &format!("{relay} keeps no transaction tags: a retry after a lost acknowledgement can be queued twice; its mail log says why (\"transaction tags off\"): give rsmtp a tag_directory it can write"),
                );
            }
        }
        // rsmtp's own words say more than a guess.
        Err(failure) if failure.text.contains(ssh::REMOTE_SAID) => {
            report.fail(peer, "session", &failure.text);
        }
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
