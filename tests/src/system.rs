//! What the harness changes outside its own directory, all under the global lock:
//! the two system users, and the default main.cf's `alternate_config_directories`
//! (postdrop and postqueue accept `-c DIR` only for directories listed there).

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use nix::unistd::{Uid, User};

use crate::util::{chown_to, global_lock, mkdir, run_ok, TEST_ROOT};

/// The default main.cf, where `alternate_config_directories` lives.
const MAIN_CF: &str = "/etc/postfix/main.cf";

/// The hub's forced-command user: sshd runs rsmtp as this user.
pub const HUB_USER: &str = "bsmtp-hub";
/// The leaf's pipe(8) transport user: Postfix runs bsmtp-ssh as this user.
pub const LEAF_USER: &str = "bsmtp-leaf";

const INSTALL_HINT: &str = "install them with: \
    echo 'postfix postfix/main_mailer_type select Local only' | debconf-set-selections && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix openssh-server openssh-client";

/// Panics, saying how to fix it, when something the tests need is missing.
/// A missing prerequisite is a failure, never a silent skip.
pub fn check_prerequisites() {
    assert!(
        Uid::effective().is_root(),
        "the end-to-end tests start Postfix and sshd and create system users: run them as root"
    );
    for (path, what) in [
        ("/usr/sbin/postfix", "Postfix"),
        ("/usr/sbin/postconf", "Postfix"),
        ("/usr/sbin/sendmail", "Postfix"),
        ("/usr/sbin/sshd", "the OpenSSH server"),
        ("/usr/bin/ssh", "the OpenSSH client"),
        ("/usr/bin/ssh-keygen", "the OpenSSH client"),
        ("/usr/sbin/useradd", "passwd (useradd)"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{what} is missing ({path} not found); {INSTALL_HINT}"
        );
    }
    assert!(
        Path::new(MAIN_CF).exists(),
        "/etc/postfix/main.cf is missing: the tests list their Postfix instances in its \
         alternate_config_directories. Postfix was installed with \"No configuration\"; \
         reconfigure it as \"Local only\" (dpkg-reconfigure postfix), or {INSTALL_HINT}"
    );
}

/// Creates [`HUB_USER`] and [`LEAF_USER`] if missing: shell /bin/sh (sshd runs the
/// forced command through it) and password `*` (with `UsePAM no`, sshd refuses
/// an account locked with `!`).
pub fn ensure_users() {
    let _lock = global_lock();
    let homes = Path::new(TEST_ROOT).join("home");
    mkdir(&homes, 0o755);
    for name in [HUB_USER, LEAF_USER] {
        // A real home: otherwise sshd tells every client "Could not chdir to
        // home directory" on stderr, mixed with the forced command's output.
        let home = homes.join(name);
        let home_str = home.to_string_lossy().into_owned();
        let existing = User::from_name(name).ok().flatten();
        if existing.is_none() {
            run_ok(Command::new("/usr/sbin/useradd").args([
                "--system",
                "--no-create-home",
                "--home-dir",
                &home_str,
                "--shell",
                "/bin/sh",
                "--password",
                "*",
                name,
            ]));
        } else if existing.is_some_and(|u| u.dir != home || u.shell != Path::new("/bin/sh")) {
            run_ok(
                Command::new("/usr/sbin/usermod")
                    .args(["--home", &home_str, "--shell", "/bin/sh", name]),
            );
        }
        mkdir(&home, 0o755);
        chown_to(&home, name, None);
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
        let locked = shadow
            .lines()
            .filter_map(|line| line.split_once(':'))
            .any(|(user, rest)| user == name && !rest.starts_with("*:"));
        if locked {
            run_ok(Command::new("/usr/sbin/usermod").args(["--password", "*", name]));
        }
    }
}

fn read_alternates() -> Vec<String> {
    let out =
        run_ok(Command::new("/usr/sbin/postconf").args(["-h", "alternate_config_directories"]));
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn write_alternates(dirs: &[String]) {
    let setting = format!("alternate_config_directories = {}", dirs.join(" "));
    run_ok(Command::new("/usr/sbin/postconf").args(["-e", &setting]));
    // Every Postfix command reads this main.cf and, while its mtime is within
    // the current second, sleeps in 300 ms steps (load_file): backdate it.
    let past = SystemTime::now() - Duration::from_secs(2);
    File::options()
        .write(true)
        .open(MAIN_CF)
        .and_then(|f| f.set_modified(past))
        .unwrap_or_else(|err| panic!("set mtime of {MAIN_CF}: {err}"));
}

/// Updates the default main.cf's list: removes `remove`, adds `add`, and drops
/// our own entries whose directory is gone (left by a killed test run).
pub fn update_alternates(add: &[&Path], remove: &[&Path]) {
    let _lock = global_lock();
    let before = read_alternates();
    let mut dirs: Vec<String> = before
        .iter()
        .filter(|d| !remove.iter().any(|r| Path::new(d) == *r))
        .filter(|d| !d.starts_with(TEST_ROOT) || Path::new(d).is_dir())
        .cloned()
        .collect();
    for dir in add {
        let dir = dir.to_string_lossy().into_owned();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    if dirs != before {
        write_alternates(&dirs);
    }
}

/// Cleans up after test processes that died without dropping their [`Env`]
/// (killed by a timeout, `SIGKILL`, a CI cancel): for each environment whose
/// owning PID (from its `<name>-<pid>-<n>` directory name) no longer runs,
/// stops its Postfix instances and its sshd, and removes the directory unless
/// it holds a `.keep` marker (left by `BSMTP_KEEP=1`). Runs once per process.
///
/// [`Env`]: crate::Env
pub fn reap_stale_environments() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _lock = global_lock();
        let Ok(entries) = std::fs::read_dir(TEST_ROOT) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = name.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            reap(&dir);
        }
    });
}

fn reap(dir: &Path) {
    for instance in ["hub", "leaf"] {
        let pid_file = dir.join(instance).join("spool/pid/master.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if pid.is_some_and(crate::postfix::process_alive) {
            let config = dir.join(instance).join("etc");
            let _ = crate::util::run_timeout(
                Command::new("/usr/sbin/postfix")
                    .arg("-c")
                    .arg(&config)
                    .arg("stop"),
                b"",
                crate::util::COMMAND_TIMEOUT,
            );
        }
    }
    let sshd_pid = std::fs::read_to_string(dir.join("ssh/sshd.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = sshd_pid {
        // Only an sshd started with this environment's config: a reused PID is left alone.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let config = dir.join("ssh/sshd_config");
        let ours = String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy());
        if ours {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let hub = dir.join("hub/etc");
    let leaf = dir.join("leaf/etc");
    unmount_under(dir);
    if !dir.join(".keep").exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    // Under the global lock already: edit the list directly.
    let before = read_alternates();
    let after: Vec<String> = before
        .iter()
        .filter(|d| Path::new(d) != hub && Path::new(d) != leaf)
        .cloned()
        .collect();
    if after != before {
        write_alternates(&after);
    }
}

/// True when this machine's Postfix has pipe(8)'s `${envid}` (3.9 on), so
/// the pipe-mode snippet passes the DSN envelope ID on.
pub fn postfix_has_envid_macro() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let out = std::process::Command::new("/usr/sbin/postconf")
            .args(["-d", "-h", "mail_version"])
            .output()
            .expect("run postconf -d mail_version");
        bsmtp_ssh::install::has_envid_macro(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Mounts a tmpfs of `bytes` on `dir` (created if missing), owned by
/// `owner` with mode 0700 at its root: a small file system a test can fill.
/// [`unmount_under`] takes it away.
pub fn mount_tmpfs(dir: &Path, bytes: u64, owner: &str) {
    crate::util::mkdir(dir, 0o700);
    let user = crate::util::lookup_user(owner);
    run_ok(
        Command::new("/usr/bin/mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700,uid={},gid={}", user.uid, user.gid),
                "tmpfs",
            ])
            .arg(dir),
    );
}

/// Lazily unmounts every mount point under `dir`, deepest first, so that
/// removing `dir` never leaves a mount behind.
pub fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = crate::util::run_timeout(
            Command::new("/usr/bin/umount").args(["-l", point]),
            b"",
            crate::util::COMMAND_TIMEOUT,
        );
    }
}
