//! A private OpenSSH sshd on a spare loopback port: its own config, host key,
//! `authorized_keys` directory and log, run as a child the harness keeps and kills.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::{mkdir, poll, read_lossy, run_ok, tail, write_file};

/// How long sshd may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The sshd of one environment, rooted at `dir` (`<base>/ssh`).
pub struct Sshd {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    log_level: String,
}

impl Sshd {
    /// Writes `sshd_config` and a fresh ed25519 host key; does not start sshd.
    pub fn create(dir: PathBuf) -> Sshd {
        mkdir(&dir, 0o755);
        mkdir(&dir.join("authorized_keys"), 0o755);
        // Privilege separation needs it; apt does not create it without systemd.
        mkdir(Path::new("/run/sshd"), 0o755);
        let mut sshd = Sshd {
            dir,
            port: free_port(),
            child: None,
            log_level: "VERBOSE".into(),
        };
        sshd.new_host_key();
        sshd.write_config();
        sshd
    }

    /// The port sshd listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host key's private file; `.pub` beside it.
    pub fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    /// The public host key as `ssh-ed25519 AAAA...` (no comment).
    pub fn host_public_key(&self) -> String {
        let text = read_lossy(&self.host_key().with_extension("pub"));
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `authorized_keys` file of a user.
    pub fn authorized_keys(&self, user: &str) -> PathBuf {
        self.dir.join("authorized_keys").join(user)
    }

    /// The `-E` log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The listener's process ID, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// True while the child runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Replaces the host key with a fresh one; takes effect at the next start.
    pub fn new_host_key(&mut self) {
        let key = self.host_key();
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        run_ok(
            Command::new("/usr/bin/ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .args([
                    "-C".as_ref(),
                    "bsmtp-ssh-tests hub".as_ref(),
                    "-f".as_ref(),
                    key.as_os_str(),
                ]),
        );
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let mut conf = String::new();
        writeln!(
            conf,
            "# Written by bsmtp-ssh-tests for one test; removed with it.
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/ssh_host_ed25519_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys/%u
StrictModes yes
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PermitUserEnvironment no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
LogLevel {log_level}
LoginGraceTime 30
MaxStartups 100
MaxSessions 100",
            port = self.port,
            log_level = self.log_level
        )
        .expect("write to String");
        write_file(&self.dir.join("sshd_config"), conf, 0o644);
    }

    /// Sets its `LogLevel` (VERBOSE unless told; DEBUG1 logs forwards);
    /// takes effect at the next start.
    pub fn set_log_level(&mut self, level: &str) {
        level.clone_into(&mut self.log_level);
        self.write_config();
    }

    /// Starts sshd and waits until its port accepts. On the first start a port
    /// taken meanwhile by someone else is replaced by another free one.
    pub fn start(&mut self, may_change_port: bool) {
        assert!(self.child.is_none(), "sshd already started");
        let attempts = if may_change_port { 5 } else { 1 };
        for attempt in 1..=attempts {
            let conf = self.dir.join("sshd_config");
            run_ok(
                Command::new("/usr/sbin/sshd")
                    .arg("-t")
                    .arg("-f")
                    .arg(&conf),
            );
            let log_start = self.log().len();
            let child = Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&conf)
                .arg("-E")
                .arg(self.log_path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start /usr/sbin/sshd: {err}"));
            self.child = Some(child);
            let port = self.port;
            let up = poll(START_TIMEOUT, || {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(true);
                }
                (!self.is_running()).then_some(false)
            });
            if up == Some(true) {
                // The port may belong to someone else's listener; make sure it is ours.
                if self.is_running() {
                    return;
                }
            }
            let log = self.log();
            let new_log = log.get(log_start..).unwrap_or(&log).to_owned();
            self.stop();
            if attempt < attempts && new_log.contains("Address already in use") {
                self.port = free_port();
                self.write_config();
                continue;
            }
            panic!(
                "sshd did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT:?}\n\
                 --- sshd log ---\n{}",
                tail(&new_log, 40)
            );
        }
    }

    /// Stops sshd (SIGTERM, then SIGKILL after 5 s) and reaps it. Sessions
    /// already running keep their own processes until their clients go.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let exited = poll(Duration::from_secs(5), || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|err| panic!("bind 127.0.0.1:0 to find a free port: {err}"));
    listener
        .local_addr()
        .expect("bound socket has an address")
        .port()
}
