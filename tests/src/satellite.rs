//! A satellite with no MTA, for the tests that drive the real programs
//! that call sendmail: cron, at(1), bsd-mailx's `mail`, mutt, `git
//! send-email` and scripts. Each runs in a private mount namespace
//! (`unshare --mount`, every mount made private: see `ENTER`) that
//! looks like a satellite with bsmtp-ssh installed:
//! - `/usr/sbin/sendmail` is this environment's `bsmtp-ssh` (a bind
//!   mount), as where the package's binary is linked there;
//! - `/etc` has `bsmtp-ssh/bsmtp-ssh.conf`, the environment's transport
//!   config (a read-only overlay whose top layer holds it), an empty
//!   `/etc/crontab` and `/etc/cron.d`, so a cron daemon runs the test's job
//!   alone, and an empty `/etc/postfix` (no MTA here);
//! - the spools of at(1) and cron are the satellite's own directories,
//!   `/run` is a tmpfs (their pid files), and the leaf user's home is the
//!   satellite's own.
//!
//! Programs that hard-code `/usr/sbin/sendmail` (cron, atd, bsd-mailx)
//! and the ones that default to it (mutt, git send-email) run unchanged.
//! Nothing outside the namespace sees any of it: the machine keeps its
//! Postfix's `/usr/sbin/sendmail`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::system::LEAF_USER;
use crate::util::{chown_to, lookup_user, mkdir, run_timeout, write_file};
use crate::Env;

/// What the tests need installed, and how `./scripts/test` installs it.
const PROGRAMS: [(&str, &str); 7] = [
    ("/usr/bin/bsd-mailx", "bsd-mailx"),
    ("/usr/bin/mutt", "mutt"),
    ("/usr/bin/at", "at"),
    ("/usr/sbin/atd", "at"),
    ("/usr/sbin/cron", "cron"),
    ("/usr/bin/unshare", "util-linux"),
    ("/usr/bin/setpriv", "util-linux"),
];

/// Sets up the namespace, then runs the command: `$1` the satellite's
/// directory, `$2` bsmtp-ssh, `$3` the leaf user's home, then the command.
/// Paths come as arguments, never spliced into the text.
///
/// First every mount is made private, so nothing mounted here reaches the
/// machine's namespace. On a machine, and in scripts/ci's root (bound
/// onto itself), `/` is a mount point and `--make-rprivate /` does it. In
/// a chroot whose root is not a mount point (`unshare --propagation
/// private` fails there: "cannot change root filesystem propagation"),
/// each mount it can name is made private, and the file system the root
/// sits on must not be shared in the machine's namespace (PID 1's view),
/// else it stops: what is mounted on it would show there too.
const ENTER: &str = r#"set -e
root=$1 program=$2 home=$3
shift 3
if ! mount --make-rprivate / 2>/dev/null; then
    cut -d ' ' -f 5 /proc/self/mountinfo | while read -r point; do
        mount --make-private "$point" 2>/dev/null || true
    done
    device=$(stat -c %Hd:%Ld /)
    if ! [ -r /proc/1/mountinfo ] ||
        grep -Eq "^[0-9]+ [0-9]+ $device .* shared:[0-9]+ .* - " /proc/1/mountinfo; then
        echo "satellite: / is not a mount point and its file system ($device) is shared with the machine's mount namespace (or /proc/1/mountinfo is unreadable): bind the root onto itself first (mount --bind ROOT ROOT; mount --make-private ROOT), as scripts/ci does" >&2
        exit 1
    fi
fi
mount -t overlay satellite-etc -o "lowerdir=$root/etc:/etc" /etc
mount --bind "$root/empty" /etc/cron.d
mount --bind "$root/empty" /etc/postfix
mount --bind "$program" /usr/sbin/sendmail
mount --bind "$root/home" "$home"
mount --bind "$root/atjobs" /var/spool/cron/atjobs
mount --bind "$root/atspool" /var/spool/cron/atspool
mount --bind "$root/crontabs" /var/spool/cron/crontabs
mount -t tmpfs satellite-run /run
exec "$@"
"#;

/// A satellite root beside an [`Env`]'s hub; see the module docs.
pub struct Satellite {
    dir: PathBuf,
    program: PathBuf,
    user_home: PathBuf,
}

/// A cron daemon running in a satellite; stopped (by its PID) on drop.
pub struct Cron {
    child: Child,
}

impl Drop for Cron {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Satellite {
    /// Prepares the satellite's directories for `env` (its transport
    /// config is the satellite's `/etc/bsmtp-ssh/bsmtp-ssh.conf`). Panics,
    /// saying what to install, when a program the tests drive is missing.
    pub fn new(env: &Env) -> Satellite {
        for (path, package) in PROGRAMS {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: ./scripts/test installs it (apt-get install --no-install-recommends {package})"
            );
        }
        let dir = env.base().join("satellite");
        let user = lookup_user(LEAF_USER);
        mkdir(&dir.join("etc/bsmtp-ssh"), 0o755);
        std::os::unix::fs::symlink(
            env.transport_config(),
            dir.join("etc/bsmtp-ssh/bsmtp-ssh.conf"),
        )
        .unwrap_or_else(|err| panic!("link the satellite's config: {err}"));
        write_file(&dir.join("etc/crontab"), "", 0o644);
        mkdir(&dir.join("empty"), 0o755);
        let home = dir.join("home");
        mkdir(&home, 0o755);
        chown_to(&home, LEAF_USER, None);
        // As Debian's at and cron packages make them.
        for spool in ["atjobs", "atspool"] {
            mkdir(&dir.join(spool), 0o1770);
            chown_to(&dir.join(spool), "daemon", Some("daemon"));
        }
        write_file(&dir.join("atjobs/.SEQ"), "", 0o600);
        chown_to(&dir.join("atjobs/.SEQ"), "daemon", Some("daemon"));
        mkdir(&dir.join("crontabs"), 0o1730);
        chown_to(&dir.join("crontabs"), "root", Some("crontab"));
        Satellite {
            dir,
            program: env.bin_dir().join("bsmtp-ssh"),
            user_home: user.dir,
        }
    }

    /// Replaces the satellite's `/etc/bsmtp-ssh/bsmtp-ssh.conf` (the
    /// environment's transport config) with `text`.
    pub fn set_system_config(&self, text: &str) {
        let path = self.dir.join("etc/bsmtp-ssh/bsmtp-ssh.conf");
        std::fs::remove_file(&path)
            .unwrap_or_else(|err| panic!("remove {}: {err}", path.display()));
        write_file(&path, text, 0o644);
    }

    /// The leaf user's home inside the satellite (its files as seen from
    /// outside).
    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// Writes a file into the user's home, owned by the user.
    pub fn write_home_file(&self, name: &str, contents: impl AsRef<[u8]>, mode: u32) -> PathBuf {
        let path = self.home().join(name);
        write_file(&path, contents, mode);
        chown_to(&path, LEAF_USER, None);
        path
    }

    /// The path of `name` in the user's home, as programs in the
    /// satellite see it.
    pub fn home_path(&self, name: &str) -> PathBuf {
        self.user_home.join(name)
    }

    /// Installs `table` as the leaf user's crontab (what `crontab -e`
    /// leaves: owned by the user, group crontab, mode 0600).
    pub fn install_crontab(&self, table: &str) {
        let path = self.dir.join("crontabs").join(LEAF_USER);
        write_file(&path, table, 0o600);
        chown_to(&path, LEAF_USER, Some("crontab"));
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("/usr/bin/unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "unchanged",
                "--",
                "/bin/sh",
                "-c",
            ])
            .arg(ENTER)
            .arg("satellite")
            .arg(&self.dir)
            .arg(&self.program)
            .arg(&self.user_home)
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/");
        command
    }

    /// Runs `argv` as root in the satellite, `stdin` as its input.
    pub fn run_as_root(&self, argv: &[&str], stdin: &[u8], timeout: Duration) -> Output {
        run_timeout(&mut self.command(argv), stdin, timeout)
    }

    /// Runs `argv` in the satellite as the leaf user, logged in the way a
    /// login shell leaves it (`HOME`, `LOGNAME`, `USER`, `SHELL`, `PATH`),
    /// with `env` added.
    pub fn run_as_user(
        &self,
        argv: &[&str],
        env: &[(&str, &str)],
        stdin: &[u8],
        timeout: Duration,
    ) -> Output {
        let user = lookup_user(LEAF_USER);
        let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
        let home = format!("HOME={}", self.user_home.display());
        let login = [format!("LOGNAME={LEAF_USER}"), format!("USER={LEAF_USER}")];
        let extra: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut words: Vec<&str> = vec![
            "/usr/bin/setpriv",
            "--reuid",
            &uid,
            "--regid",
            &gid,
            "--init-groups",
            "--",
            "/usr/bin/env",
            "-i",
            &home,
            &login[0],
            &login[1],
            "SHELL=/bin/sh",
            "PATH=/usr/local/bin:/usr/bin:/bin",
        ];
        words.extend(extra.iter().map(String::as_str));
        words.extend_from_slice(argv);
        let mut command = self.command(&words);
        command.current_dir("/");
        run_timeout(&mut command, stdin, timeout)
    }

    /// Starts the real cron daemon in the satellite (`cron -f`, stopped
    /// on drop); it runs the crontab [`Satellite::install_crontab`] wrote.
    pub fn start_cron(&self) -> Cron {
        let child = self
            .command(&["/usr/sbin/cron", "-f"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start cron: {err}"));
        Cron { child }
    }
}
