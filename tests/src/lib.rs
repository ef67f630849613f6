//! End-to-end harness: each test gets an [`Env`], a private directory under
//! `/var/lib/bsmtp-ssh-tests` holding a real leaf Postfix (routing `hub.test`
//! through pipe(8) to `bsmtp-ssh deliver`), a real hub Postfix (local(8) into
//! Maildirs) and a real sshd whose `authorized_keys` runs `rsmtp` as a forced
//! command. Everything is torn down on drop; every wait is bounded and panics
//! with the logs of all three daemons, so a failure explains itself.
//!
//! Needs root, Postfix (with a default /etc/postfix/main.cf) and OpenSSH; a
//! missing prerequisite panics with the command that installs it.

pub mod bastion;
pub mod binaries;
pub mod exim;
pub mod hubs;
pub mod lost_ack;
pub mod once;
pub mod postfix;
pub mod postlog;
pub mod proc_tree;
pub mod quickstart;
pub mod relay;
pub mod satellite;
pub mod sshd;
pub mod system;
pub mod util;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::postfix::{Postfix, PostfixSetup};
pub use crate::postlog::PostlogMode;
use crate::sshd::Sshd;
use crate::system::{HUB_USER, LEAF_USER};
use crate::util::{
    chown_to, explain, maildir_files, mkdir, poll, shell_quote, tail, write_file, COMMAND_TIMEOUT,
    TEST_ROOT,
};

pub use crate::system::{HUB_USER as HUB_SSH_USER, LEAF_USER as LEAF_PIPE_USER};

/// The peer name the leaf's transport uses for the hub (`bsmtp-ssh:hub`,
/// `[peer.hub]`).
pub const HUB_PEER: &str = "hub";
/// The leaf's pipe(8) transport: the name `postfix-install` gives it by
/// default, so that the tests run what admins get.
pub const PIPE_TRANSPORT: &str = bsmtp_ssh::install::DEFAULT_TRANSPORT;
/// The peer name the hub's forced command gives the leaf (`rsmtp --peer leaf1`).
pub const LEAF_PEER: &str = "leaf1";

/// How an [`Env`] differs from the default. Strings in `rsmtp_args` and
/// `forced_command` may use `{base}`, `{bin}` and `{hub_etc}`, replaced by the
/// environment's directories.
#[derive(Clone, Debug)]
#[allow(clippy::struct_excessive_bools)]
pub struct EnvOptions {
    /// Arguments after `rsmtp --peer leaf1 --postfix-config <hub etc>` in the
    /// forced command; default `--allow-sender @leaf.test`.
    pub rsmtp_args: Vec<String>,
    /// Replaces the whole forced command (shell syntax, run by /bin/sh).
    pub forced_command: Option<String>,
    /// Build and install `bsmtp-ssh` and `rsmtp` (default true). The harness's
    /// own tests turn it off so they do not depend on those binaries.
    pub build_binaries: bool,
    /// Extra hub main.cf parameters.
    pub hub_main_cf: Vec<(String, String)>,
    /// Extra leaf main.cf parameters.
    pub leaf_main_cf: Vec<(String, String)>,
    /// Hub local parts with a Maildir (default bob, carol, dave).
    pub hub_mailboxes: Vec<String>,
    /// Leaf local parts with a Maildir (default alice, bob).
    pub leaf_mailboxes: Vec<String>,
    /// More hub local parts, each an alias of a hub mailbox.
    pub hub_aliases: Vec<(String, String)>,
    /// The `/usr/sbin/postlog` both sides' daemons see (default: the
    /// machine's own).
    pub postlog: PostlogMode,
    /// Route hub.test through the batching transport (spawn(8), lmtp(8),
    /// `bsmtp-ssh lmtp`) instead of pipe(8).
    pub batching: bool,
    /// More rsmtp.conf lines (top level; `{base}` is expanded).
    pub rsmtp_conf: Vec<String>,
    /// More lines for the leaf's `[peer.hub]` section of bsmtp-ssh.conf.
    pub peer_conf: Vec<String>,
    /// More top-level lines for the leaf's bsmtp-ssh.conf (`{base}` is
    /// expanded).
    pub leaf_conf: Vec<String>,
    /// Route mail for leaf.test on the hub back to the leaf (a pipe(8)
    /// transport running the leaf's sendmail), so the hub's DSNs reach
    /// leaf senders. Off by default: nothing leaves the hub.
    pub hub_returns_to_leaf: bool,
    /// Route hub.test on the leaf into the spool (`bsmtp-ssh enqueue`),
    /// sent by `bsmtp-ssh flush` ([`Env::flush`]).
    pub spool: bool,
    /// Route leaf.test on the hub into the hub's spool for leaf1, and
    /// grant leaf1's key `pull` ([`Env::pull`]).
    pub pull: bool,
    /// Put the leaf's spool on a tmpfs of this many bytes.
    pub leaf_spool_size: Option<u64>,
    /// Put the hub's Postfix queue on a tmpfs of this many bytes.
    pub hub_queue_size: Option<u64>,
    /// Leave `tag_directory` out of rsmtp.conf, as a hub set up from the
    /// README has it: rsmtp picks its store itself.
    pub hub_default_tags: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        EnvOptions {
            rsmtp_args: strings(&["--allow-sender", "@leaf.test"]),
            forced_command: None,
            build_binaries: true,
            hub_main_cf: Vec::new(),
            leaf_main_cf: Vec::new(),
            hub_mailboxes: strings(&["bob", "carol", "dave"]),
            leaf_mailboxes: strings(&["alice", "bob"]),
            hub_aliases: Vec::new(),
            batching: false,
            rsmtp_conf: Vec::new(),
            peer_conf: Vec::new(),
            leaf_conf: Vec::new(),
            hub_returns_to_leaf: false,
            spool: false,
            pull: false,
            leaf_spool_size: None,
            hub_queue_size: None,
            hub_default_tags: false,
            postlog: PostlogMode::System,
        }
    }
}

impl EnvOptions {
    /// Replaces the policy arguments given to rsmtp.
    #[must_use]
    pub fn rsmtp_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.rsmtp_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the whole forced command.
    #[must_use]
    pub fn forced_command(mut self, command: impl Into<String>) -> Self {
        self.forced_command = Some(command.into());
        self
    }

    /// Skips building and installing `bsmtp-ssh` and `rsmtp`.
    #[must_use]
    pub fn without_binaries(mut self) -> Self {
        self.build_binaries = false;
        self
    }

    /// Adds a hub main.cf parameter.
    #[must_use]
    pub fn hub_param(mut self, name: &str, value: &str) -> Self {
        self.hub_main_cf.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Pins the `/usr/sbin/postlog` both sides' daemons see.
    #[must_use]
    pub fn postlog(mut self, mode: PostlogMode) -> Self {
        self.postlog = mode;
        self
    }

    /// Adds a top-level rsmtp.conf line (`{base}` is expanded).
    #[must_use]
    pub fn rsmtp_conf(mut self, line: &str) -> Self {
        self.rsmtp_conf.push(line.to_owned());
        self
    }

    /// Adds a line to the leaf's `[peer.hub]` section.
    #[must_use]
    pub fn peer_conf(mut self, line: &str) -> Self {
        self.peer_conf.push(line.to_owned());
        self
    }

    /// Routes hub.test through the batching transport.
    #[must_use]
    pub fn batching(mut self) -> Self {
        self.batching = true;
        self
    }

    /// Delivers the hub local part `alias` to the Maildir of `mailbox`.
    #[must_use]
    pub fn hub_alias(mut self, alias: &str, mailbox: &str) -> Self {
        self.hub_aliases
            .push((alias.to_owned(), mailbox.to_owned()));
        self
    }

    /// Adds a top-level line to the leaf's bsmtp-ssh.conf.
    #[must_use]
    pub fn leaf_conf(mut self, line: &str) -> Self {
        self.leaf_conf.push(line.to_owned());
        self
    }

    /// Routes hub.test on the leaf into the spool, for `flush`.
    #[must_use]
    pub fn spool(mut self) -> Self {
        self.spool = true;
        self
    }

    /// Puts the leaf's spool on a tmpfs of `bytes`.
    #[must_use]
    pub fn leaf_spool_size(mut self, bytes: u64) -> Self {
        self.leaf_spool_size = Some(bytes);
        self
    }

    /// Puts the hub's Postfix queue on a tmpfs of `bytes`.
    #[must_use]
    pub fn hub_queue_size(mut self, bytes: u64) -> Self {
        self.hub_queue_size = Some(bytes);
        self
    }

    /// Spools leaf.test on the hub for leaf1, which may `pull`.
    #[must_use]
    pub fn pull(mut self) -> Self {
        self.pull = true;
        self
    }

    /// Routes leaf.test on the hub back to the leaf, for the hub's DSNs.
    #[must_use]
    pub fn hub_returns_to_leaf(mut self) -> Self {
        self.hub_returns_to_leaf = true;
        self
    }

    /// Adds a leaf main.cf parameter.
    #[must_use]
    pub fn leaf_param(mut self, name: &str, value: &str) -> Self {
        self.leaf_main_cf.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Which daemon's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    /// The leaf Postfix's `maillog_file` (includes pipe(8) status lines).
    Leaf,
    /// The hub Postfix's `maillog_file`.
    Hub,
    /// The sshd `-E` log (sshd's own lines; the forced command's stderr goes to the client).
    Sshd,
}

/// One test's leaf, hub and sshd. See the crate docs.
pub struct Env {
    base: PathBuf,
    options: EnvOptions,
    // Field order is drop order: sshd first, then both Postfix instances.
    sshd: Sshd,
    leaf: Postfix,
    hub: Postfix,
    registered: bool,
    /// The postlog copy both sides' configs name, if the options pinned one.
    postlog: Option<PathBuf>,
    /// Where `bsmtp-ssh` and `rsmtp` are: this environment's `bin/` with
    /// fresh copies, or the installed package's directory.
    programs: PathBuf,
}

/// Names the directory of installed `bsmtp-ssh` and `rsmtp` (the Debian
/// package's `/usr/sbin`) for an environment to run instead of the
/// workspace's build: how `scripts/test-package` runs the demo against the
/// package.
pub const INSTALLED_ENV: &str = "BSMTP_TEST_INSTALLED";

/// The directory [`INSTALLED_ENV`] names, if set.
fn installed_programs() -> Option<PathBuf> {
    std::env::var_os(INSTALLED_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The leaf's pipe(8) entry, from the shipped snippet (the one
/// `bsmtp-ssh postfix-install` applies), so every test runs what admins get.
fn leaf_master_cf_entry(program: &Path, config: &Path) -> String {
    snippet_lines(
        include_str!("../../postfix-snippets/leaf/master.cf"),
        &Fill::leaf(program, config, BATCHING_SERVICE),
    )
}

/// The leaf's batching entries (spawn(8), lmtp(8)) and main.cf lines, from
/// the shipped snippets, for the peer `hub`.
fn leaf_batching(program: &Path, config: &Path) -> (String, Vec<(String, String)>) {
    let fill = Fill::leaf(program, config, BATCHING_SERVICE);
    let master = snippet_lines(
        include_str!("../../postfix-snippets/leaf/batching-master.cf"),
        &fill,
    );
    let main = snippet_lines(
        include_str!("../../postfix-snippets/leaf/batching-main.cf"),
        &fill,
    )
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
    .collect();
    (master, main)
}

/// The spool transport's entry (`bsmtp-ssh enqueue`), for the leaf (user
/// [`LEAF_USER`]) or the hub (the peers' login, [`HUB_USER`]).
fn spool_master_cf_entry(program: &Path, config: &Path, user: &str) -> String {
    snippet_lines(
        include_str!("../../postfix-snippets/spool/master.cf"),
        &Fill {
            user,
            ..Fill::leaf(program, config, SPOOL_SERVICE)
        },
    )
}

/// What replaces a snippet's placeholders.
struct Fill<'a> {
    program: &'a Path,
    config: &'a Path,
    user: &'a str,
    service: &'a str,
}

impl<'a> Fill<'a> {
    fn leaf(program: &'a Path, config: &'a Path, service: &'a str) -> Self {
        Fill {
            program,
            config,
            user: LEAF_USER,
            service,
        }
    }
}

/// A snippet's non-comment lines with the placeholders filled in the way
/// postfix-install fills them for this environment.
fn snippet_lines(snippet: &str, fill: &Fill<'_>) -> String {
    let mut entry = String::new();
    for line in snippet
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let line = line
            .replace("@TRANSPORT@", PIPE_TRANSPORT)
            .replace("@SERVICE@", fill.service)
            .replace("@PEER@", HUB_PEER)
            .replace("@USER@", fill.user)
            .replace("@PROGRAM@", &fill.program.display().to_string())
            .replace("@CONFIG@", &fill.config.display().to_string())
            .replace(
                "@ENVID@",
                if system::postfix_has_envid_macro() {
                    bsmtp_ssh::install::ENVID_ARGS
                } else {
                    ""
                },
            );
        entry.push_str(&line);
        entry.push('\n');
    }
    let placeholder =
        entry.split('@').skip(1).step_by(2).find(|word| {
            !word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        });
    assert!(
        placeholder.is_none(),
        "unfilled snippet placeholder: {entry}"
    );
    entry
}

/// The hub's main.cf lines and master.cf entries: the options' own, and
/// routes for leaf.test: with `pull`, the spool transport for leaf1 (run as
/// the peers' login, whose rsmtp serves the spool); else with
/// `hub_returns_to_leaf`, a transport `toleaf` that hands leaf.test mail to
/// the leaf's sendmail (as `nobody`; `null_sender=` keeps bounces' `<>`).
fn hub_routes(options: &EnvOptions, base: &Path) -> (Vec<(String, String)>, String) {
    let (hub_dir, leaf_dir) = (base.join("hub"), base.join("leaf"));
    let mut main_cf = options.hub_main_cf.clone();
    let (route, master_cf) = if options.pull {
        let entry = spool_master_cf_entry(
            &base.join("bin/bsmtp-ssh"),
            &hub_dir.join("bsmtp-ssh.conf"),
            HUB_USER,
        );
        (format!("{SPOOL_SERVICE}:{LEAF_PEER}"), entry)
    } else if options.hub_returns_to_leaf {
        let entry = format!(
            "toleaf unix - n n - - pipe\n  flags= null_sender= user=nobody\n  \
             argv=/usr/sbin/sendmail -C {}/etc -i -f ${{sender}} -- ${{recipient}}\n",
            leaf_dir.display()
        );
        ("toleaf:".to_owned(), entry)
    } else {
        return (main_cf, String::new());
    };
    mkdir(&hub_dir.join("etc"), 0o755);
    let table = hub_dir.join("etc/transport");
    write_file(&table, format!("leaf.test {route}\n"), 0o644);
    main_cf.push((
        "transport_maps".to_owned(),
        format!("texthash:{}", table.display()),
    ));
    (main_cf, master_cf)
}

/// The batching transport's spawn(8) service on the leaf
/// (`postfix-install --batching --peer hub`).
pub const BATCHING_SERVICE: &str = "bsmtp-hub";

/// `min_free` in the tests' configs: low, so that a nearly full disk on
/// the test machine does not fail tests that are not about it.
pub const TEST_MIN_FREE: u64 = 1024 * 1024;

/// The spool transport's pipe(8) service (`postfix-install --spool`), on
/// the leaf (for `flush`) and the hub (for `pull`).
pub const SPOOL_SERVICE: &str = "bsmtp-spool";

impl Env {
    /// Starts an environment with the default options. `name` (the test's name)
    /// becomes part of the directory name.
    pub fn start(name: &str) -> Env {
        Env::start_with(name, EnvOptions::default())
    }

    /// Starts an environment: users, binaries, both Postfix instances, sshd.
    pub fn start_with(name: &str, options: EnvOptions) -> Env {
        system::check_prerequisites();
        system::ensure_users();
        system::reap_stale_environments();
        let installed = installed_programs();
        let binaries = (options.build_binaries && installed.is_none()).then(binaries::binaries);
        let base = new_base_dir(name);
        let bin = base.join("bin");
        mkdir(&bin, 0o755);
        let programs = installed.unwrap_or_else(|| bin.clone());
        if let Some(b) = &binaries {
            for (from, name) in [(&b.bsmtp_ssh, "bsmtp-ssh"), (&b.rsmtp, "rsmtp")] {
                let to = bin.join(name);
                std::fs::copy(from, &to).unwrap_or_else(|err| {
                    panic!("copy {} to {}: {err}", from.display(), to.display())
                });
                util::set_mode(&to, 0o755);
            }
        }

        let leaf_dir = base.join("leaf");
        let (hub_main_cf, hub_master_cf) = hub_routes(&options, &base);
        let hub = Postfix::create(
            "hub",
            base.join("hub"),
            &PostfixSetup {
                hostname: "hub.test",
                mailboxes: &options.hub_mailboxes,
                aliases: &options.hub_aliases,
                main_cf: &hub_main_cf,
                master_cf: &hub_master_cf,
                queue_size: options.hub_queue_size,
            },
        );
        let mut leaf_main_cf = vec![
            (
                "transport_maps".to_owned(),
                format!("texthash:{}/etc/transport", leaf_dir.display()),
            ),
            (
                format!("{PIPE_TRANSPORT}_destination_recipient_limit"),
                "1".to_owned(),
            ),
        ];
        let program = programs.join("bsmtp-ssh");
        let config = leaf_dir.join("bsmtp-ssh.conf");
        let mut master_cf = leaf_master_cf_entry(&program, &config);
        let route = if options.spool {
            master_cf.push_str(&spool_master_cf_entry(&program, &config, LEAF_USER));
            format!("{SPOOL_SERVICE}:{HUB_PEER}")
        } else if options.batching {
            let (entries, main) = leaf_batching(&program, &config);
            master_cf.push_str(&entries);
            leaf_main_cf.extend(main);
            format!("{BATCHING_SERVICE}-lmtp:unix:private/{BATCHING_SERVICE}")
        } else {
            format!("{PIPE_TRANSPORT}:{HUB_PEER}")
        };
        leaf_main_cf.extend(options.leaf_main_cf.iter().cloned());
        mkdir(&leaf_dir.join("etc"), 0o755);
        write_file(
            &leaf_dir.join("etc/transport"),
            format!("hub.test {route}\n"),
            0o644,
        );
        let leaf = Postfix::create(
            "leaf",
            leaf_dir,
            &PostfixSetup {
                hostname: "leaf.test",
                mailboxes: &options.leaf_mailboxes,
                aliases: &[],
                main_cf: &leaf_main_cf,
                master_cf: &master_cf,
                queue_size: None,
            },
        );
        let sshd = Sshd::create(base.join("ssh"));
        let postlog = options.postlog.prepare(&bin);
        let mut env = Env {
            postlog,
            base,
            options,
            sshd,
            leaf,
            hub,
            registered: false,
            programs,
        };

        system::update_alternates(&[&env.hub.config_dir(), &env.leaf.config_dir()], &[]);
        env.registered = true;
        env.make_leaf_key();
        let command = env.default_forced_command();
        env.set_forced_command(&command);
        env.sshd.start(true);
        env.pin_host_key();
        env.write_transport_config();
        env.hub.start();
        env.leaf.start();
        env
    }

    /// The environment's directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The directory holding the `bsmtp-ssh` and `rsmtp` this environment
    /// runs (see [`INSTALLED_ENV`]).
    pub fn bin_dir(&self) -> PathBuf {
        self.programs.clone()
    }

    /// The hub Postfix instance (config dir, queue, log, postconf...).
    pub fn hub(&self) -> &Postfix {
        &self.hub
    }

    /// The leaf Postfix instance.
    pub fn leaf(&self) -> &Postfix {
        &self.leaf
    }

    /// The hub's `config_directory`.
    pub fn hub_config_dir(&self) -> PathBuf {
        self.hub.config_dir()
    }

    /// The leaf's `config_directory`.
    pub fn leaf_config_dir(&self) -> PathBuf {
        self.leaf.config_dir()
    }

    /// The transport's TOML config, `<base>/leaf/bsmtp-ssh.conf`.
    pub fn transport_config(&self) -> PathBuf {
        self.base.join("leaf/bsmtp-ssh.conf")
    }

    /// The leaf's private key (owned by `bsmtp-leaf`, 0600).
    pub fn leaf_key(&self) -> PathBuf {
        self.base.join("leaf/id_ed25519")
    }

    /// The leaf's `known_hosts`, pinning the hub sshd's host key.
    pub fn known_hosts(&self) -> PathBuf {
        self.base.join("leaf/known_hosts")
    }

    /// The sshd's port on 127.0.0.1.
    pub fn sshd_port(&self) -> u16 {
        self.sshd.port()
    }

    /// The hub user's `authorized_keys` file.
    pub fn authorized_keys(&self) -> PathBuf {
        self.sshd.authorized_keys(HUB_USER)
    }

    /// Replaces `{base}`, `{bin}` and `{hub_etc}` in a forced-command string.
    pub fn expand(&self, text: &str) -> String {
        text.replace("{base}", &self.base.to_string_lossy())
            .replace("{bin}", &self.bin_dir().to_string_lossy())
            .replace("{hub_etc}", &self.hub_config_dir().to_string_lossy())
    }

    fn default_forced_command(&self) -> String {
        if let Some(cmd) = &self.options.forced_command {
            return self.expand(cmd);
        }
        let mut words = vec![
            self.bin_dir().join("rsmtp").to_string_lossy().into_owned(),
            "--peer".to_owned(),
            LEAF_PEER.to_owned(),
            "--postfix-config".to_owned(),
            self.hub_config_dir().to_string_lossy().into_owned(),
        ];
        words.push("--config".to_owned());
        words.push(self.rsmtp_config().to_string_lossy().into_owned());
        words.extend(self.options.rsmtp_args.iter().map(|a| self.expand(a)));
        if self.options.pull {
            words.extend(["--allow-verb".to_owned(), "pull".to_owned()]);
        }
        words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Rewrites the hub user's `authorized_keys` with this forced command (shell
    /// syntax). sshd reads the file at each login: no restart needed.
    pub fn set_forced_command(&self, command: &str) {
        let public = util::read_lossy(&self.leaf_key().with_extension("pub"));
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        // sshd's option parser knows one escape, \" (auth-options.c):
        // backslashes are taken as they are.
        let escaped = command.replace('"', "\\\"");
        let line = format!(
            "restrict,command=\"{escaped}\" {} {LEAF_PEER}\n",
            key.join(" ")
        );
        write_file(&self.authorized_keys(), line, 0o644);
    }

    fn make_leaf_key(&self) {
        let key = self.leaf_key();
        util::run_ok(
            Command::new("/usr/bin/ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", LEAF_PEER, "-f"])
                .arg(&key),
        );
        chown_to(&key, LEAF_USER, None);
        chown_to(&key.with_extension("pub"), LEAF_USER, None);
        util::set_mode(&key, 0o600);
    }

    /// Writes the leaf's `known_hosts` with the hub sshd's current host key
    /// (`[127.0.0.1]:PORT ssh-ed25519 AAAA...`).
    pub fn pin_host_key(&self) {
        let line = format!(
            "[127.0.0.1]:{} {}\n",
            self.sshd_port(),
            self.sshd.host_public_key()
        );
        write_file(&self.known_hosts(), line, 0o644);
        chown_to(&self.known_hosts(), LEAF_USER, None);
    }

    fn write_transport_config(&self) {
        // A top-level key comes before the first section in TOML.
        let postlog = self
            .postlog
            .as_ref()
            .map(|p| format!("postlog = \"{}\"\n", p.display()))
            .unwrap_or_default();
        // rsmtp runs as the hub user: its tag store and the spools it
        // serves to pulling peers must be that user's; bsmtp-ssh (flush,
        // pull, bounces) runs as the leaf user.
        let tags = self.tag_directory();
        if let Some(bytes) = self.options.leaf_spool_size {
            system::mount_tmpfs(&self.leaf_spool_directory(), bytes, LEAF_USER);
        }
        for (dir, user) in [
            (tags.clone(), HUB_USER),
            (self.hub_spool_directory(), HUB_USER),
            (self.leaf_spool_directory(), LEAF_USER),
            (self.base.join("leaf-tags"), LEAF_USER),
        ] {
            mkdir(&dir, 0o700);
            chown_to(&dir, user, None);
        }
        write_file(
            &self.base.join("hub/bsmtp-ssh.conf"),
            format!(
                "# Written by bsmtp-ssh-tests: the hub's enqueue for pulling peers.\n{postlog}\
                 spool_directory = \"{}\"\npostfix_config = \"{}\"\nmin_free = {TEST_MIN_FREE}\n",
                self.hub_spool_directory().display(),
                self.hub_config_dir().display()
            ),
            0o644,
        );
        let tag_line = if self.options.hub_default_tags {
            String::new()
        } else {
            format!("tag_directory = \"{}\"\n", tags.display())
        };
        write_file(
            &self.rsmtp_config(),
            format!(
                "# Written by bsmtp-ssh-tests.\n{postlog}{tag_line}spool_directory = \"{}\"\n\
                 reject_directory = \"{}\"\n{}",
                self.hub_spool_directory().display(),
                self.reject_directory().display(),
                self.options
                    .rsmtp_conf
                    .iter()
                    .map(|l| self.expand(l) + "\n")
                    .collect::<String>()
            ),
            0o644,
        );
        let mut conf = format!(
            "# Written by bsmtp-ssh-tests.\n{postlog}spool_directory = \"{}\"\n\
             postfix_config = \"{}\"\ntag_directory = \"{}\"\nmin_free = {TEST_MIN_FREE}\n{}\
             [peer.{HUB_PEER}]\nhost = \"127.0.0.1\"\nport = {}\n\
             user = \"{HUB_USER}\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\n",
            self.leaf_spool_directory().display(),
            self.leaf_config_dir().display(),
            self.base.join("leaf-tags").display(),
            self.options
                .leaf_conf
                .iter()
                .map(|l| self.expand(l) + "\n")
                .collect::<String>(),
            self.sshd_port(),
            self.leaf_key().display(),
            self.known_hosts().display()
        );
        for line in &self.options.peer_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        write_file(&self.transport_config(), conf, 0o644);
        chown_to(&self.transport_config(), LEAF_USER, None);
    }

    /// Kills every SSH session in progress (the per-connection sshd
    /// processes below the listener), which drops their TCP connections;
    /// returns how many processes it signalled.
    pub fn kill_ssh_sessions(&self) -> usize {
        let Some(listener) = self.sshd.pid() else {
            return 0;
        };
        let sessions: Vec<i32> = proc_tree::descendants(listener)
            .into_iter()
            .filter(|p| proc_tree::comm(*p).as_deref() == Some("sshd"))
            .collect();
        for session in &sessions {
            proc_tree::signal(*session, nix::sys::signal::Signal::SIGKILL);
        }
        sessions.len()
    }

    /// Stops sshd (the hub is then unreachable; sessions in progress go on).
    pub fn stop_sshd(&mut self) {
        self.sshd.stop();
    }

    /// Starts sshd again on the same port.
    pub fn start_sshd(&mut self) {
        self.sshd.start(false);
    }

    /// Gives the hub sshd a fresh host key and restarts it; the leaf's
    /// `known_hosts` still pins the old one (call [`Env::pin_host_key`] to accept it).
    pub fn replace_host_key(&mut self) {
        self.sshd.stop();
        self.sshd.new_host_key();
        self.sshd.start(false);
    }

    /// Injects a message with the leaf's own `sendmail -C <leaf etc> -i -f FROM -- TO...`;
    /// panics unless sendmail exits 0.
    pub fn leaf_sendmail(&self, from: &str, to: &[&str], message: &[u8]) {
        let out = self.leaf.sendmail(from, to, message);
        assert!(
            out.status.success(),
            "{}",
            explain("leaf sendmail", out.status, &out.stdout, &out.stderr)
        );
    }

    /// [`Env::leaf_sendmail`] with more sendmail options before `-f`.
    pub fn leaf_sendmail_with(&self, options: &[&str], from: &str, to: &[&str], message: &[u8]) {
        let out = self.leaf.sendmail_with(options, from, to, message);
        assert!(
            out.status.success(),
            "{}",
            explain("leaf sendmail", out.status, &out.stdout, &out.stderr)
        );
    }

    /// Injects a message with the hub's own sendmail; panics unless it exits 0.
    pub fn hub_sendmail(&self, from: &str, to: &[&str], message: &[u8]) {
        let out = self.hub.sendmail(from, to, message);
        assert!(
            out.status.success(),
            "{}",
            explain("hub sendmail", out.status, &out.stdout, &out.stderr)
        );
    }

    /// A hub user's Maildir.
    pub fn hub_maildir(&self, user: &str) -> PathBuf {
        self.hub.maildir(user)
    }

    /// A leaf user's Maildir (bounce notices land here).
    pub fn leaf_maildir(&self, user: &str) -> PathBuf {
        self.leaf.maildir(user)
    }

    /// Messages now in a Maildir (`new/` and `cur/`), oldest first.
    pub fn read_maildir(maildir: &Path) -> Vec<Vec<u8>> {
        maildir_files(maildir)
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .collect()
    }

    /// The `Subject:` of each message in a hub Maildir, sorted.
    pub fn hub_subjects(&self, user: &str) -> Vec<String> {
        let mut found: Vec<String> = Env::read_maildir(&self.hub_maildir(user))
            .iter()
            .filter_map(|m| {
                String::from_utf8_lossy(m)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect();
        found.sort();
        found
    }

    /// Waits until the hub user's Maildir holds at least `count` messages and
    /// returns them all, oldest first; panics with the logs on timeout.
    pub fn wait_maildir(&self, user: &str, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.wait_in_maildir(&self.hub_maildir(user), count, timeout)
    }

    /// Like [`Env::wait_maildir`] for a leaf user (bounce notices).
    pub fn wait_leaf_maildir(&self, user: &str, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        self.wait_in_maildir(&self.leaf_maildir(user), count, timeout)
    }

    fn wait_in_maildir(&self, maildir: &Path, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let found = poll(timeout, || {
            let files = maildir_files(maildir);
            (files.len() >= count).then_some(())
        });
        if found.is_none() {
            self.fail(&format!(
                "{} holds {} of {count} messages after {timeout:?}",
                maildir.display(),
                maildir_files(maildir).len()
            ));
        }
        Env::read_maildir(maildir)
    }

    /// A log's text so far.
    pub fn log(&self, which: Log) -> String {
        match which {
            Log::Leaf => self.leaf.log(),
            Log::Hub => self.hub.log(),
            Log::Sshd => self.sshd.log(),
        }
    }

    /// The leaf Postfix log.
    pub fn leaf_log(&self) -> String {
        self.log(Log::Leaf)
    }

    /// The hub Postfix log.
    pub fn hub_log(&self) -> String {
        self.log(Log::Hub)
    }

    /// The sshd log.
    pub fn sshd_log(&self) -> String {
        self.log(Log::Sshd)
    }

    /// Log lines containing `pattern`.
    pub fn log_lines(&self, which: Log, pattern: &str) -> Vec<String> {
        self.log(which)
            .lines()
            .filter(|l| l.contains(pattern))
            .map(str::to_owned)
            .collect()
    }

    /// Waits for a log line containing `pattern` and returns the first one;
    /// panics with the logs on timeout.
    pub fn wait_log(&self, which: Log, pattern: &str, timeout: Duration) -> String {
        let line = poll(timeout, || {
            self.log_lines(which, pattern).into_iter().next()
        });
        line.unwrap_or_else(|| {
            self.fail(&format!(
                "no {which:?} log line contains {pattern:?} after {timeout:?}"
            ))
        })
    }

    /// Runs the installed `bsmtp-ssh` as root with `args` and `stdin`
    /// (bounded like every command here).
    pub fn bsmtp_ssh(&self, args: &[&str], stdin: &[u8]) -> Output {
        util::run_timeout(
            Command::new(self.bin_dir().join("bsmtp-ssh")).args(args),
            stdin,
            COMMAND_TIMEOUT,
        )
    }

    /// `rsmtp --peer leaf1 --postfix-config <hub etc>`, and `--config` with
    /// the environment's rsmtp.conf when it has one: what the forced
    /// command runs, without the policy arguments.
    pub fn rsmtp_command(&self) -> Command {
        let mut command = Command::new(self.bin_dir().join("rsmtp"));
        command
            .args(["--peer", LEAF_PEER, "--postfix-config"])
            .arg(self.hub_config_dir());
        command.arg("--config").arg(self.rsmtp_config());
        command
    }

    /// The leaf's `spool_directory` (its enqueue, flush and queue).
    pub fn leaf_spool_directory(&self) -> PathBuf {
        self.base.join("leaf-spool")
    }

    /// The hub's `spool_directory` (its enqueue for pulling peers, and
    /// rsmtp's pull).
    pub fn hub_spool_directory(&self) -> PathBuf {
        self.base.join("hub-spool")
    }

    /// The IDs of the messages spooled under `dir` for `peer`.
    pub fn spooled(dir: &Path, peer: &str) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(dir.join(peer))
            .map(|list| {
                list.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".bsmtp").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// `bsmtp-ssh ARGS` as the leaf's account (the one its pipe(8) and
    /// timers run it as), with the leaf's config.
    pub fn bsmtp_ssh_as_leaf(&self, args: &[&str]) -> Output {
        self.bsmtp_ssh_as_leaf_with(&self.transport_config(), args)
    }

    /// [`Env::bsmtp_ssh_as_leaf`] with another config file (see
    /// [`Env::add_peer_key`]).
    pub fn bsmtp_ssh_as_leaf_with(&self, config: &Path, args: &[&str]) -> Output {
        let user = util::lookup_user(LEAF_USER);
        let config = config.display().to_string();
        // setpriv drops root's supplementary groups too, as a timer's
        // service for that account would have none of them.
        util::run_timeout(
            Command::new("/usr/bin/setpriv")
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .args(["--clear-groups", "--"])
                .arg(self.bin_dir().join("bsmtp-ssh"))
                .arg(args[0])
                .args(["--config", &config])
                .args(&args[1..])
                .current_dir("/"),
            b"",
            COMMAND_TIMEOUT,
        )
    }

    /// Gives another peer `name` a key of its own on the hub, whose forced
    /// command is rsmtp `--peer name` plus `rsmtp_args`, and returns a copy
    /// of the leaf's bsmtp-ssh.conf that logs in with it.
    pub fn add_peer_key(&self, name: &str, rsmtp_args: &[&str]) -> PathBuf {
        let key = self.base.join("ssh").join(format!("{name}_ed25519"));
        util::run_ok(
            Command::new("/usr/bin/ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key),
        );
        chown_to(&key, LEAF_USER, None);
        util::set_mode(&key, 0o600);
        let public = util::read_lossy(&key.with_extension("pub"));
        let public: Vec<&str> = public.split_whitespace().take(2).collect();
        let mut words = vec![
            self.bin_dir().join("rsmtp").display().to_string(),
            "--peer".to_owned(),
            name.to_owned(),
            "--postfix-config".to_owned(),
            self.hub_config_dir().display().to_string(),
            "--config".to_owned(),
            self.rsmtp_config().display().to_string(),
        ];
        words.extend(rsmtp_args.iter().map(|a| (*a).to_owned()));
        let command: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        let mut keys = util::read_lossy(&self.authorized_keys());
        let _ = writeln!(
            keys,
            "restrict,command=\"{}\" {} {name}",
            command.join(" ").replace('"', "\\\""),
            public.join(" ")
        );
        write_file(&self.authorized_keys(), keys, 0o644);
        let config = self.base.join(format!("{name}.conf"));
        let text = util::read_lossy(&self.transport_config()).replace(
            &format!("identity = \"{}\"", self.leaf_key().display()),
            &format!("identity = \"{}\"", key.display()),
        );
        write_file(&config, text, 0o644);
        chown_to(&config, LEAF_USER, None);
        config
    }

    /// The leaf as a satellite: `sendmail ARGS` (the bsmtp-ssh binary run by
    /// that name, as a link `/usr/sbin/sendmail` would run it) as the leaf's
    /// account, with the leaf's config (`BSMTP_SSH_CONFIG`), the message on
    /// standard input.
    pub fn satellite_sendmail(&self, args: &[&str], message: &[u8]) -> Output {
        let link = self.base.join("bin").join("sendmail");
        if !link.exists() {
            std::os::unix::fs::symlink(self.bin_dir().join("bsmtp-ssh"), &link)
                .unwrap_or_else(|err| panic!("link {}: {err}", link.display()));
        }
        let user = util::lookup_user(LEAF_USER);
        util::run_timeout(
            Command::new("/usr/bin/setpriv")
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .args(["--clear-groups", "--"])
                .arg(&link)
                .args(args)
                .env("BSMTP_SSH_CONFIG", self.transport_config())
                .env("LOGNAME", "alice")
                .current_dir("/"),
            message,
            COMMAND_TIMEOUT,
        )
    }

    /// `bsmtp-ssh flush` on the leaf.
    pub fn flush(&self) -> Output {
        self.bsmtp_ssh_as_leaf(&["flush"])
    }

    /// `bsmtp-ssh pull hub` on the leaf.
    pub fn pull(&self) -> Output {
        self.bsmtp_ssh_as_leaf(&["pull", HUB_PEER])
    }

    /// `bsmtp-ssh queue` on the leaf, its output.
    pub fn spool_listing(&self) -> String {
        let out = self.bsmtp_ssh_as_leaf(&["queue"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The hub's rsmtp.conf: the tag store, the spool for pulling peers,
    /// and postlog when pinned.
    pub fn rsmtp_config(&self) -> PathBuf {
        self.base.join("hub/rsmtp.conf")
    }

    /// Where offline rsmtp keeps transactions refused at `MAIL FROM` (one
    /// directory per peer inside, made by rsmtp).
    pub fn reject_directory(&self) -> PathBuf {
        self.base.join("hub/rejects")
    }

    /// The hub's exactly-once tag store (one directory per peer inside).
    pub fn tag_directory(&self) -> PathBuf {
        self.base.join("hub/tags")
    }

    /// Runs the installed `rsmtp` as root without SSH, reading `stdin` from
    /// a file the way `rsmtp --peer leaf1 < batch` does, injecting into the
    /// hub: [`Env::rsmtp_command`] with `args`.
    pub fn rsmtp_offline(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.rsmtp_batch_file(&mut self.rsmtp_command(), args, stdin)
    }

    /// `command args < file`, `file` holding `stdin`: one file in the
    /// environment's directory per content, written once, so feeding the
    /// same batch again reads the same file, as a UUCP spool or an admin
    /// does (rsmtp tells batches apart by their file).
    pub fn rsmtp_batch_file(&self, command: &mut Command, args: &[&str], stdin: &[u8]) -> Output {
        use std::hash::{Hash, Hasher};
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        stdin.hash(&mut hash);
        let path = self
            .base
            .join(format!("batch-{:016x}.bsmtp", hash.finish()));
        if !path.exists() {
            std::fs::write(&path, stdin).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        }
        util::run_timeout_file(command.args(args), &path, COMMAND_TIMEOUT)
    }

    /// `bsmtp-ssh deliver` by hand with the leaf's transport config, as
    /// pipe(8) would run it: `-f sender [extra...] -- recipients`.
    pub fn deliver_by_hand(
        &self,
        sender: &str,
        extra: &[&str],
        recipients: &[&str],
        message: &[u8],
    ) -> Output {
        let config = self.transport_config().display().to_string();
        let mut args = vec![
            "deliver", "--config", &config, "--peer", HUB_PEER, "-f", sender,
        ];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(recipients);
        self.bsmtp_ssh(&args, message)
    }

    /// Waits for the leaf's pipe(8) line for the bsmtp-ssh transport
    /// (`relay=bsmtp-ssh, ... status=STATUS (...)`) and returns it.
    /// bsmtp-ssh's own log lines name the hub as relay, so they never match.
    pub fn wait_pipe_status(&self, status: &str, timeout: Duration) -> String {
        let wanted = format!("status={status} ");
        let relay = format!("relay={PIPE_TRANSPORT}, ");
        let line = poll(timeout, || {
            self.log_lines(Log::Leaf, &relay)
                .into_iter()
                .find(|l| l.contains(&wanted))
        });
        line.unwrap_or_else(|| {
            self.fail(&format!(
                "no pipe(8) line with status={status} in the leaf log after {timeout:?}"
            ))
        })
    }

    /// The leaf's pipe(8) lines for the bsmtp-ssh transport with
    /// `status=STATUS`.
    pub fn pipe_lines(&self, status: &str) -> Vec<String> {
        let wanted = format!("status={status} ");
        self.log_lines(Log::Leaf, &format!("relay={PIPE_TRANSPORT}, "))
            .into_iter()
            .filter(|l| l.contains(&wanted))
            .collect()
    }

    /// `postqueue -p` of the leaf.
    pub fn leaf_queue(&self) -> String {
        self.leaf.queue()
    }

    /// `postqueue -p` of the hub.
    pub fn hub_queue(&self) -> String {
        self.hub.queue()
    }

    /// Adds an smtpd listener on a free port of 127.0.0.1 to the running
    /// hub, sets `params` in its main.cf (e.g. `relay_domains` and
    /// `relay_recipient_maps`), reloads it, and returns the port once it
    /// accepts connections. The probe's connection starts an smtpd, which
    /// opens every table main.cf names: they must exist by then.
    pub fn start_hub_smtpd(&self, params: &[(&str, &str)]) -> u16 {
        let port = sshd::free_port();
        let master_cf = self.hub_config_dir().join("master.cf");
        let mut text = util::read_lossy(&master_cf);
        let _ = writeln!(text, "127.0.0.1:{port} inet n - n - - smtpd");
        write_file(&master_cf, text, 0o644);
        if params.is_empty() {
            self.hub.postfix(&["reload"]);
        } else {
            self.hub.postconf(params);
        }
        let listening = poll(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        if listening.is_none() {
            self.fail(&format!(
                "the hub's smtpd does not listen on 127.0.0.1:{port}"
            ));
        }
        port
    }

    /// Adds the hub's fast injection listener on 127.0.0.1:`port` the way
    /// an admin does, `bsmtp-ssh postfix-install --hub --listen` (so the
    /// shipped snippet is what runs), reloads the hub, and waits until
    /// the listener accepts connections. rsmtp uses it when told so
    /// (`--inject smtp:127.0.0.1:PORT`, or `inject` in rsmtp.conf).
    pub fn install_hub_listener(&self, port: u16) {
        let listen = format!("127.0.0.1:{port}");
        let out = util::run_timeout(
            Command::new(self.bin_dir().join("bsmtp-ssh"))
                .args(["postfix-install", "--hub", "--listen", &listen])
                .arg("--config-directory")
                .arg(self.hub_config_dir()),
            b"",
            COMMAND_TIMEOUT,
        );
        if !out.status.success() {
            self.fail(&explain(
                "postfix-install --hub",
                out.status,
                &out.stdout,
                &out.stderr,
            ));
        }
        self.hub.postfix(&["reload"]);
        let listening = poll(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        if listening.is_none() {
            self.fail(&format!(
                "the hub's injection listener does not listen on {listen}"
            ));
        }
    }

    /// True when the leaf's queue is empty.
    pub fn leaf_queue_is_empty(&self) -> bool {
        self.leaf_queue().contains("Mail queue is empty")
    }

    /// Waits until the leaf's queue is empty; panics with the logs on timeout.
    pub fn wait_leaf_queue_empty(&self, timeout: Duration) {
        if poll(timeout, || self.leaf_queue_is_empty().then_some(())).is_none() {
            self.fail(&format!("the leaf queue is not empty after {timeout:?}"));
        }
    }

    /// True when the hub's queue is empty (maildrop included).
    pub fn hub_queue_is_empty(&self) -> bool {
        let maildrop = self.hub().dir.join("spool/maildrop");
        self.hub_queue().contains("Mail queue is empty")
            && std::fs::read_dir(maildrop).is_ok_and(|mut d| d.next().is_none())
    }

    /// Waits until the hub's queue is empty; panics with the logs on timeout.
    pub fn wait_hub_queue_empty(&self, timeout: Duration) {
        if poll(timeout, || self.hub_queue_is_empty().then_some(())).is_none() {
            self.fail(&format!("the hub queue is not empty after {timeout:?}"));
        }
    }

    /// `postqueue -f` on the leaf: retry deferred mail now.
    pub fn leaf_flush(&self) {
        self.leaf.flush();
    }

    /// Runs OpenSSH's `ssh` as root with the leaf's key and `known_hosts` against
    /// the hub sshd; `original_command` becomes the forced command's
    /// `SSH_ORIGINAL_COMMAND` (none when empty). Bounded to 60 s.
    pub fn ssh_exec(&self, original_command: &str, stdin: &[u8]) -> Output {
        self.ssh_exec_with(&[], original_command, stdin)
    }

    /// Like [`Env::ssh_exec`] with extra `ssh` options (placed before the host).
    pub fn ssh_exec_with(&self, options: &[&str], original_command: &str, stdin: &[u8]) -> Output {
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            self.known_hosts().display()
        ))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "ConnectTimeout=10", "-i"])
        .arg(self.leaf_key())
        .arg("-p")
        .arg(self.sshd_port().to_string())
        .args(options)
        .arg(format!("{HUB_USER}@127.0.0.1"));
        if !original_command.is_empty() {
            cmd.arg("--").arg(original_command);
        }
        util::run_timeout(&mut cmd, stdin, COMMAND_TIMEOUT)
    }

    /// All three logs' tails and the leaf queue, for failure messages.
    pub fn diagnostics(&self) -> String {
        let queue = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.leaf_queue()))
            .unwrap_or_else(|_| "(postqueue failed)".to_owned());
        format!(
            "environment: {}\n--- leaf log ---\n{}\n--- hub log ---\n{}\n--- sshd log ---\n{}\n\
             --- leaf queue ---\n{}",
            self.base.display(),
            tail(&self.leaf_log(), 40),
            tail(&self.hub_log(), 40),
            tail(&self.sshd_log(), 30),
            queue.trim_end()
        )
    }

    /// Panics with `what` and [`Env::diagnostics`].
    pub fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", self.diagnostics())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let keep = std::env::var("BSMTP_KEEP").is_ok_and(|v| v == "1");
        if std::thread::panicking() {
            eprintln!(
                "bsmtp-ssh-tests: test failed in {}{}",
                self.base.display(),
                if keep {
                    " (kept)"
                } else {
                    " (set BSMTP_KEEP=1 to keep it)"
                }
            );
        }
        self.sshd.stop();
        // `postfix stop` polls with `sleep 1`: stop both instances at once.
        let (leaf, hub) = (&mut self.leaf, &mut self.hub);
        std::thread::scope(|scope| {
            scope.spawn(|| leaf.stop());
            hub.stop();
        });
        if self.registered {
            system::update_alternates(&[], &[&self.hub.config_dir(), &self.leaf.config_dir()]);
        }
        system::unmount_under(&self.base);
        if keep {
            // Tells a later run's reaper to leave this directory in place.
            write_file(&self.base.join(".keep"), "BSMTP_KEEP=1\n", 0o644);
        } else {
            remove_base(&self.base);
        }
    }
}

fn new_base_dir(name: &str) -> PathBuf {
    // Short enough that Postfix's socket paths (spool/private/proxywrite) stay
    // under the 108-byte sun_path limit.
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = Path::new(TEST_ROOT).join(format!("{clean}-{}-{n}", std::process::id()));
    if base.exists() {
        remove_base(&base);
    }
    mkdir(&base, 0o755);
    base
}

fn remove_base(base: &Path) {
    // A Postfix child may still be finishing a write: retry a few times.
    for attempt in 1..=5 {
        match std::fs::remove_dir_all(base) {
            Ok(()) => return,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
            Err(err) if attempt == 5 => eprintln!("remove {}: {err}", base.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
