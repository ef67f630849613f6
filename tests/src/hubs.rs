//! More hubs for failover tests: a second hub (another sshd with its own
//! host key and its own rsmtp tag store, in front of the same hub Postfix,
//! so copies of a message can be counted in one Maildir), a dead hub (a
//! loopback port whose listen queue is full, so a connect times out as
//! toward a host that is down), a silent hub (it accepts and never
//! answers, so the handshake times out), and the leaf config that names
//! them as one destination.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
};

use crate::sshd::Sshd;
use crate::system::{HUB_USER, LEAF_USER};
use crate::util::{self, chown_to, mkdir, shell_quote, write_file, COMMAND_TIMEOUT};
use crate::{Env, HUB_PEER};

/// A hub the leaf may name in a failover list.
#[derive(Debug, Clone)]
pub struct HubSpec {
    /// Its `[peer.NAME]` section.
    pub name: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The `known_hosts` file pinning its host key.
    pub known_hosts: PathBuf,
    /// More lines for its section (e.g. `compression = true`).
    pub lines: Vec<String>,
}

/// A second sshd for the same hub Postfix; stopped on drop.
pub struct SecondHub {
    /// The sshd (its own host key, config and log).
    pub sshd: Sshd,
    /// The leaf's pin of its host key.
    pub known_hosts: PathBuf,
    /// Its rsmtp's exactly-once tag store (one per hub, as on real hubs).
    pub tags: PathBuf,
}

impl SecondHub {
    /// This hub as a failover entry called `name`.
    pub fn spec(&self, name: &str) -> HubSpec {
        HubSpec {
            name: name.to_owned(),
            port: self.sshd.port(),
            known_hosts: self.known_hosts.clone(),
            lines: Vec::new(),
        }
    }
}

/// A port that accepts no connection: its listen queue is full, so the
/// SYN of a new connect goes unanswered and the connect times out, as
/// toward a host that is down. Closed on drop.
pub struct DeadHub {
    _listener: OwnedFd,
    _queued: OwnedFd,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl DeadHub {
    /// Binds, listens with a backlog of 0 and fills the queue.
    pub fn start() -> DeadHub {
        let listener = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let any = SockaddrIn::new(127, 0, 0, 1, 0);
        bind(std::os::fd::AsRawFd::as_raw_fd(&listener), &any).expect("bind 127.0.0.1:0");
        listen(&listener, Backlog::new(0).expect("backlog 0")).expect("listen");
        let addr: SockaddrIn =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&listener))
                .expect("getsockname");
        let queued = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        connect(std::os::fd::AsRawFd::as_raw_fd(&queued), &addr).expect("fill the listen queue");
        DeadHub {
            _listener: listener,
            _queued: queued,
            port: addr.port(),
        }
    }

    /// This hub as a failover entry called `name`, with a `known_hosts`
    /// file of its own that pins a key for its port (never reached, but
    /// `check` wants a pin before it connects).
    pub fn spec(&self, env: &Env, name: &str) -> HubSpec {
        DeadHub::spec_for(env, name, self.port)
    }

    /// A section called `name` for `port` on loopback, with a `known_hosts`
    /// of its own pinning the environment's hub host key for that port.
    fn spec_for(env: &Env, name: &str, port: u16) -> HubSpec {
        let known_hosts = env.base.join(format!("leaf/known_hosts-{name}"));
        write_file(
            &known_hosts,
            format!("[127.0.0.1]:{port} {}\n", env.sshd.host_public_key()),
            0o644,
        );
        chown_to(&known_hosts, LEAF_USER, None);
        HubSpec {
            name: name.to_owned(),
            port,
            known_hosts,
            lines: Vec::new(),
        }
    }

    /// True when a connect to it really times out (the kernel did not
    /// answer the SYN).
    pub fn is_dead(&self) -> bool {
        TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(300),
        )
        .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
    }
}

/// A hub that accepts connections and never says a word (a hung sshd):
/// the SSH handshake waits for its banner until the idle limit. Stops
/// accepting on drop; the connections it holds close with it.
pub struct SilentHub {
    /// Its port on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl SilentHub {
    /// Listens on a free loopback port and holds every connection open,
    /// unanswered.
    pub fn start() -> SilentHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded: it ends with the test (drop), or after ten minutes.
            let until = Instant::now() + Duration::from_mins(10);
            while !stopped.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((connection, _)) => held.push(connection),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SilentHub { port, stop }
    }

    /// This hub as a failover entry called `name`, pinned to the
    /// environment's hub key (never checked: no key is ever offered).
    pub fn spec(&self, env: &Env, name: &str) -> HubSpec {
        DeadHub::spec_for(env, name, self.port)
    }
}

impl Drop for SilentHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Env {
    /// The environment's own hub sshd as a failover entry called `name`.
    pub fn hub_spec(&self, name: &str) -> HubSpec {
        HubSpec {
            name: name.to_owned(),
            port: self.sshd_port(),
            known_hosts: self.known_hosts(),
            lines: Vec::new(),
        }
    }

    /// Starts a second hub: an sshd of its own (host key, `authorized_keys`
    /// with the leaf's key and the same forced command, but an rsmtp.conf
    /// whose tag store is its own, with the stock postdrop) in front of the
    /// same hub Postfix, and a `known_hosts` file pinning its key.
    pub fn start_second_hub(&self, name: &str) -> SecondHub {
        let dir = self.base.join(format!("ssh-{name}"));
        let mut sshd = Sshd::create(dir.clone());
        let tags = self.base.join(format!("hub/tags-{name}"));
        mkdir(&tags, 0o700);
        chown_to(&tags, HUB_USER, None);
        let own_conf = self.base.join(format!("hub/rsmtp-{name}.conf"));
        // The stock postdrop: a test's slow one is for the first hub.
        let mut text = String::new();
        for line in util::read_lossy(&self.rsmtp_config())
            .replace(
                &format!("tag_directory = \"{}\"", self.tag_directory().display()),
                &format!("tag_directory = \"{}\"", tags.display()),
            )
            .lines()
            .filter(|l| !l.starts_with("postdrop"))
        {
            let _ = writeln!(text, "{line}");
        }
        write_file(&own_conf, text, 0o644);
        let keys = util::read_lossy(&self.authorized_keys()).replace(
            &shell_quote(&self.rsmtp_config().to_string_lossy()),
            &shell_quote(&own_conf.to_string_lossy()),
        );
        assert!(
            keys.contains(&own_conf.to_string_lossy().into_owned()),
            "the forced command does not name {}: {keys}",
            self.rsmtp_config().display()
        );
        write_file(&sshd.authorized_keys(HUB_USER), keys, 0o644);
        sshd.start(true);
        let known_hosts = self.base.join(format!("leaf/known_hosts-{name}"));
        write_file(
            &known_hosts,
            format!("[127.0.0.1]:{} {}\n", sshd.port(), sshd.host_public_key()),
            0o644,
        );
        chown_to(&known_hosts, LEAF_USER, None);
        SecondHub {
            sshd,
            known_hosts,
            tags,
        }
    }

    /// Rewrites the leaf's bsmtp-ssh.conf so that the peer `hub` (what
    /// the leaf's transports name) fails over across `hubs` in order, each
    /// a section of its own with the leaf's key; `destination` lines go
    /// into `[peer.hub]`.
    pub fn write_failover_config(&self, hubs: &[HubSpec], destination: &[&str]) {
        let names: Vec<String> = hubs.iter().map(|h| format!("\"{}\"", h.name)).collect();
        let mut conf = format!("[peer.{HUB_PEER}]\nfailover = [{}]\n", names.join(", "));
        for line in destination {
            let _ = writeln!(conf, "{line}");
        }
        self.write_peer_sections(hubs, &conf);
    }

    /// Rewrites the leaf's bsmtp-ssh.conf: its top-level settings, then
    /// `head` (more sections), then a `[peer.NAME]` section for each of
    /// `hubs`, with the leaf's key.
    pub fn write_peer_sections(&self, hubs: &[HubSpec], head: &str) {
        let conf = self.peer_sections(hubs, head);
        write_file(&self.transport_config(), conf, 0o644);
        chown_to(&self.transport_config(), LEAF_USER, None);
    }

    /// What [`Env::write_peer_sections`] writes, as text.
    pub fn peer_sections(&self, hubs: &[HubSpec], head: &str) -> String {
        let text = util::read_lossy(&self.transport_config());
        let top = text.split("[peer.").next().unwrap_or_default().to_owned();
        let mut conf = format!("{top}{head}");
        for hub in hubs {
            let _ = write!(
                conf,
                "[peer.{}]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{HUB_USER}\"\n\
                 identity = \"{}\"\nknown_hosts = \"{}\"\n",
                hub.name,
                hub.port,
                self.leaf_key().display(),
                hub.known_hosts.display()
            );
            for line in &hub.lines {
                let _ = writeln!(conf, "{line}");
            }
        }
        conf
    }

    /// The environment's hub sshd reached through `port` (a relay to it),
    /// as a section called `name`, with a `known_hosts` file that pins its
    /// key for that port.
    pub fn relayed_hub_spec(&self, name: &str, port: u16) -> HubSpec {
        DeadHub::spec_for(self, name, port)
    }

    /// `bsmtp-ssh deliver --peer hub -f SENDER [extra] -- RECIPIENTS` as the
    /// leaf's transport account (as pipe(8) runs it), the message on
    /// standard input.
    pub fn deliver_as_leaf(
        &self,
        sender: &str,
        extra: &[&str],
        recipients: &[&str],
        message: &[u8],
    ) -> Output {
        self.deliver_as_leaf_to(HUB_PEER, sender, extra, recipients, message)
    }

    /// [`Env::deliver_as_leaf`] to another `[peer.NAME]`.
    pub fn deliver_as_leaf_to(
        &self,
        peer: &str,
        sender: &str,
        extra: &[&str],
        recipients: &[&str],
        message: &[u8],
    ) -> Output {
        let user = util::lookup_user(LEAF_USER);
        util::run_timeout(
            Command::new("/usr/bin/setpriv")
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .args(["--clear-groups", "--"])
                .arg(self.bin_dir().join("bsmtp-ssh"))
                .args(["deliver", "--config"])
                .arg(self.transport_config())
                .args(["--peer", peer, "-f", sender])
                .args(extra)
                .arg("--")
                .args(recipients)
                .current_dir("/"),
            message,
            COMMAND_TIMEOUT,
        )
    }
}
