//! One private Postfix instance: its own main.cf and master.cf written from
//! scratch (no chroot, no inet services), its own queue, a `maillog_file`, and
//! local(8) delivering to Maildirs through a texthash alias table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::{
    chown_to, explain, mkdir, poll, read_lossy, run_ok, run_timeout, write_file, COMMAND_TIMEOUT,
};

/// The services every instance runs. `chroot` is `n` everywhere: a chroot would
/// need copies of /etc files inside each private queue directory.
const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// A Postfix instance rooted at `dir` (`etc/`, `spool/`, `data/`, `mail/`, `maillog`).
pub struct Postfix {
    /// `hub` or `leaf`: the instance's directory name and syslog name suffix.
    pub name: &'static str,
    /// The instance's root directory.
    pub dir: PathBuf,
    running: bool,
}

/// What differs between the hub and the leaf.
pub struct PostfixSetup<'a> {
    /// The instance's `myhostname` and only `mydestination`.
    pub hostname: &'a str,
    /// Local parts delivered to `mail/<name>/Maildir/`; `postmaster`, `root` and
    /// `MAILER-DAEMON` always go to `mail/postmaster/Maildir/`.
    pub mailboxes: &'a [String],
    /// More local parts, each delivered to the Maildir of a mailbox above
    /// (`(alias, mailbox)`): for local parts that cannot be a path.
    pub aliases: &'a [(String, String)],
    /// Extra main.cf lines, `name = value`, after the defaults.
    pub main_cf: &'a [(String, String)],
    /// Extra master.cf entries.
    pub master_cf: &'a str,
    /// Put the queue on a tmpfs of this many bytes, for tests that fill it.
    pub queue_size: Option<u64>,
}

impl Postfix {
    /// Writes the configuration and queue tree, then runs `postfix check`.
    pub fn create(name: &'static str, dir: PathBuf, setup: &PostfixSetup<'_>) -> Postfix {
        let pf = Postfix {
            name,
            dir,
            running: false,
        };
        for sub in ["", "etc", "mail"] {
            mkdir(&pf.dir.join(sub), 0o755);
        }
        if let Some(bytes) = setup.queue_size {
            crate::system::mount_tmpfs(&pf.dir.join("spool"), bytes, "root");
            crate::util::set_mode(&pf.dir.join("spool"), 0o755);
        }
        pf.make_queue_tree();
        pf.write_aliases(setup.mailboxes, setup.aliases);
        write_file(&pf.config_dir().join("main.cf"), pf.main_cf(setup), 0o644);
        write_file(
            &pf.config_dir().join("master.cf"),
            format!("{MASTER_CF}{}", setup.master_cf),
            0o644,
        );
        pf
    }

    /// `postfix check`. [`Postfix::start`] skips it (the `quick-start` file) to
    /// save about 1 s per instance; the harness's own tests run it.
    pub fn check(&self) -> Output {
        self.postfix(&["check"])
    }

    /// The `config_directory` (for `-c` and `-C`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The `maillog_file`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("maillog")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The Maildir of a local part listed in the setup's mailboxes.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user).join("Maildir")
    }

    /// `postfix start` (`master -w`: returns once the master runs).
    pub fn start(&mut self) {
        write_file(&self.dir.join("spool/quick-start"), "", 0o644);
        self.postfix(&["start"]);
        self.running = true;
    }

    /// `postfix stop`, then waits (bounded) for the master to exit.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = read_lossy(&self.dir.join("spool/pid/master.pid"))
            .trim()
            .parse::<u32>()
            .ok();
        let out = run_timeout(self.command("postfix").arg("stop"), b"", COMMAND_TIMEOUT);
        if !out.status.success() {
            eprintln!(
                "{}",
                explain("postfix stop", out.status, &out.stdout, &out.stderr)
            );
        }
        if let Some(pid) = pid {
            if poll(Duration::from_secs(10), || {
                (!process_alive(pid)).then_some(())
            })
            .is_none()
            {
                eprintln!(
                    "{}: master pid {pid} still running 10 s after postfix stop",
                    self.name
                );
            }
        }
    }

    /// A Postfix command (`postfix`, `postqueue`, ...) by absolute path with
    /// `MAIL_CONFIG` pointing at this instance.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(Path::new("/usr/sbin").join(program));
        cmd.env("MAIL_CONFIG", self.config_dir());
        cmd
    }

    /// `postfix -c DIR ARGS`, which must succeed.
    pub fn postfix(&self, args: &[&str]) -> Output {
        run_ok(
            self.command("postfix")
                .arg("-c")
                .arg(self.config_dir())
                .args(args),
        )
    }

    /// Sets main.cf parameters with `postconf -e` and reloads a running instance.
    pub fn postconf(&self, settings: &[(&str, &str)]) {
        let mut cmd = self.command("postconf");
        cmd.arg("-c").arg(self.config_dir()).arg("-e");
        for (name, value) in settings {
            cmd.arg(format!("{name} = {value}"));
        }
        run_ok(&mut cmd);
        if self.running {
            self.postfix(&["reload"]);
        }
    }

    /// `sendmail -C DIR -i -f FROM -- TO...` with the message on stdin.
    pub fn sendmail(&self, from: &str, to: &[&str], message: &[u8]) -> Output {
        self.sendmail_with(&[], from, to, message)
    }

    /// `sendmail -C DIR -i OPTIONS... -f FROM -- TO...` with the message on
    /// stdin (options such as `-N success` or `-B 8BITMIME`).
    pub fn sendmail_with(
        &self,
        options: &[&str],
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> Output {
        let mut cmd = self.command("sendmail");
        cmd.arg("-C")
            .arg(self.config_dir())
            .arg("-i")
            .args(options)
            .args(["-f", from, "--"])
            .args(to);
        run_timeout(&mut cmd, message, COMMAND_TIMEOUT)
    }

    /// `postcat -c DIR -q QUEUE_ID`: a queued message's records.
    pub fn postcat(&self, queue_id: &str) -> String {
        let out = run_ok(
            self.command("postcat")
                .arg("-c")
                .arg(self.config_dir())
                .args(["-q", queue_id]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -c DIR -p` output.
    pub fn queue(&self) -> String {
        let out = run_ok(
            self.command("postqueue")
                .arg("-c")
                .arg(self.config_dir())
                .arg("-p"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -c DIR -f`: retry every deferred message now.
    pub fn flush(&self) {
        run_ok(
            self.command("postqueue")
                .arg("-c")
                .arg(self.config_dir())
                .arg("-f"),
        );
    }

    /// The queue tree as `postfix set-permissions` would make it (per
    /// /etc/postfix/postfix-files); done by hand because set-permissions takes
    /// about 3 s and also touches the system-wide files.
    fn make_queue_tree(&self) {
        let spool = self.dir.join("spool");
        mkdir(&spool, 0o755);
        for sub in [
            "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
            "private", "saved", "trace",
        ] {
            let path = spool.join(sub);
            mkdir(&path, 0o700);
            chown_to(&path, "postfix", Some("root"));
        }
        for (sub, mode) in [("maildrop", 0o730), ("public", 0o710)] {
            let path = spool.join(sub);
            mkdir(&path, mode);
            chown_to(&path, "postfix", Some("postdrop"));
        }
        mkdir(&spool.join("pid"), 0o755);
        let data = self.dir.join("data");
        mkdir(&data, 0o700);
        chown_to(&data, "postfix", None);
    }

    /// Aliases in texthash format: `key value` (a `key: value` line would make
    /// the key `key:`). Maildirs belong to `nobody`, the `default_privs` that
    /// local(8) uses for deliveries from a root-owned alias table.
    fn write_aliases(&self, mailboxes: &[String], extra: &[(String, String)]) {
        let mut aliases = String::new();
        let mut boxes: Vec<&str> = mailboxes.iter().map(String::as_str).collect();
        boxes.push("postmaster");
        for user in &boxes {
            let maildir = self.maildir(user);
            mkdir(&maildir.join(".."), 0o755);
            chown_to(&maildir.join(".."), "nobody", None);
            for sub in ["", "new", "cur", "tmp"] {
                mkdir(&maildir.join(sub), 0o700);
                chown_to(&maildir.join(sub), "nobody", None);
            }
            writeln!(aliases, "{user} {}/", maildir.display()).expect("write to String");
        }
        for (alias, mailbox) in extra {
            writeln!(aliases, "{alias} {}/", self.maildir(mailbox).display())
                .expect("write to String");
        }
        for user in ["root", "MAILER-DAEMON"] {
            writeln!(aliases, "{user} {}/", self.maildir("postmaster").display())
                .expect("write to String");
        }
        write_file(&self.config_dir().join("aliases"), aliases, 0o644);
    }

    fn main_cf(&self, setup: &PostfixSetup<'_>) -> String {
        let d = self.dir.display();
        let name = self.name;
        let host = setup.hostname;
        let mut cf = format!(
            "# Written by bsmtp-ssh-tests for one test; removed with it.
compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
maillog_file = {d}/maillog
syslog_name = postfix-{name}
myhostname = {host}
mydomain = {host}
myorigin = $myhostname
mydestination = {host}
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps = texthash:{d}/etc/aliases
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
# Nothing may leave the machine: anything not routed on purpose bounces.
default_transport = error:5.7.1 bsmtp-ssh-tests: no mail leaves this test
relay_transport = error:5.7.1 bsmtp-ssh-tests: no mail leaves this test
# Retry deferred mail within seconds (after postqueue -f at the latest).
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
delay_warning_time = 0h
"
        );
        for (k, v) in setup.main_cf {
            writeln!(cf, "{k} = {v}").expect("write to String");
        }
        cf
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True while a process exists and is not a zombie (the container's init may
/// not reap Postfix's orphaned children).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}
