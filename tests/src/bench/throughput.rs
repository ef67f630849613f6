//! The throughput rows of the benchmark: msg/s through a real leaf Postfix
//! at concurrency 4, for 4 KiB and 100 KiB messages, [`messages`] per
//! figure, every route measured in the same run on the same leaf, hub and
//! sshd:
//!
//! 1. smtpd: the leaf's smtp(8) straight to an smtpd listener added to the
//!    hub (no SSH at all: the limit of the smtpd path);
//! 2. tunnel: the same through an OpenSSH `ssh -N -L` tunnel run by the
//!    bench;
//! 3. rsendmail: pipe(8) running `sshsendmail` (`PyPI` package `rsendmail`
//!    1.1.4, in a venv made here), which runs `ssh HOST rsendmail ...`; the
//!    hub's key is forced to `rsendmail`, which runs the hub's `sendmail`;
//! 4. pipe: bsmtp-ssh pipe mode (`bsmtp-ssh:hub`, one SSH session a message);
//! 5. batching: bsmtp-ssh batching mode (lmtp(8) -> spawn(8) -> `bsmtp-ssh
//!    lmtp`, many messages a session, rsmtp -> postdrop on the hub);
//! 6. postdrop: no leaf: the hub's own `postdrop -r` fed pre-built record
//!    streams by 4 workers (the limit of the postdrop path);
//! 7. fast: batching mode with rsmtp's fast injection path (`inject =
//!    "smtp:127.0.0.1:PORT"` in rsmtp.conf, the listener installed by
//!    `bsmtp-ssh postfix-install --hub`): rsmtp hands each session's
//!    messages to the hub's smtpd over one connection.
//!
//! `BSMTP_BENCH_ROUTES=smtpd,tunnel,fast` measures only the routes named
//! (keys as in the first column's order: smtpd, tunnel, rsendmail, pipe,
//! batching, postdrop, fast).
//!
//! Method for the leaf routes: the N messages are injected with the leaf's
//! sendmail and held there (a `header_checks` HOLD on their `X-Bench-Hold`
//! header), so injection is not timed; the clock starts at `postsuper -H
//! ALL` and `postqueue -f` and stops when the leaf has logged N
//! `status=sent` lines from the route's own delivery agent. The hub keeps what it accepts
//! (its local transport deferred, its retries pushed an hour away) and is
//! emptied before each figure. A figure counts only if the leaf sent exactly
//! N messages by the expected relay, nothing bounced on either side, the
//! hub's cleanup logged each of the N Message-IDs once and its queue holds N
//! messages; otherwise the route is reported as failed, with the reason.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use bsmtp_ssh_tests::sshd::free_port;
use bsmtp_ssh_tests::util::{
    chown_to, lookup_user, mkdir, poll, run_ok, run_timeout, set_mode, shell_quote, tail,
    write_file,
};
use bsmtp_ssh_tests::{
    Env, BATCHING_SERVICE, HUB_PEER, HUB_SSH_USER, LEAF_PIPE_USER, PIPE_TRANSPORT,
};

/// Messages per figure by default.
pub const DEFAULT_N: usize = 200;

/// Messages per figure: `BSMTP_BENCH_N` (1 to 100000; more gives steadier
/// figures on a busy machine), else [`DEFAULT_N`].
pub fn messages() -> usize {
    std::env::var("BSMTP_BENCH_N")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=100_000).contains(n))
        .unwrap_or(DEFAULT_N)
}
/// The leaf's destination concurrency on every route, and the raw
/// postdrop workers.
pub const CONCURRENCY: usize = 4;
/// The message sizes, each with its label.
pub const SIZES: [(&str, usize); 2] = [("4 KiB", 4 * 1024), ("100 KiB", 100 * 1024)];
/// How long one figure may take (the slowest route, rsendmail, needs about
/// 40 s for N messages).
const BATCH_TIMEOUT: Duration = Duration::from_mins(10);
/// How long injection, setup and clean-up steps may take.
const STEP_TIMEOUT: Duration = Duration::from_mins(2);
/// Log polling interval while a batch runs: the figure's resolution.
const TICK: Duration = Duration::from_millis(10);
/// The rsendmail release measured.
const RSENDMAIL: &str = "rsendmail==1.1.4";
/// The Host alias sshsendmail connects to (in the pipe user's ssh config).
const RSENDMAIL_HOST: &str = "bsmtp-bench-hub";

const SENDER: &str = "alice@leaf.test";
const RECIPIENT: &str = "bob@hub.test";

/// The routes, in the order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Smtpd,
    Tunnel,
    Rsendmail,
    Pipe,
    Batching,
    Postdrop,
    Fast,
}

impl Route {
    pub const ALL: [Route; 7] = [
        Route::Smtpd,
        Route::Tunnel,
        Route::Rsendmail,
        Route::Pipe,
        Route::Batching,
        Route::Postdrop,
        Route::Fast,
    ];

    /// The order of measurement: the limits first, the slowest last.
    const MEASURE_ORDER: [Route; 7] = [
        Route::Postdrop,
        Route::Smtpd,
        Route::Tunnel,
        Route::Fast,
        Route::Pipe,
        Route::Batching,
        Route::Rsendmail,
    ];

    /// The routes `BSMTP_BENCH_ROUTES` names (comma-separated keys), in
    /// the order of measurement; all when it is unset or empty.
    fn selected() -> Result<Vec<Route>, String> {
        let wanted = std::env::var("BSMTP_BENCH_ROUTES").unwrap_or_default();
        let keys: Vec<&str> = wanted
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(unknown) = keys
            .iter()
            .find(|k| !Route::ALL.iter().any(|r| r.key() == **k))
        {
            return Err(format!(
                "BSMTP_BENCH_ROUTES: unknown route {unknown:?} (known: {})",
                Route::ALL.map(Route::key).join(",")
            ));
        }
        Ok(Route::MEASURE_ORDER
            .into_iter()
            .filter(|r| keys.is_empty() || keys.contains(&r.key()))
            .collect())
    }

    fn key(self) -> &'static str {
        match self {
            Route::Smtpd => "smtpd",
            Route::Tunnel => "tunnel",
            Route::Rsendmail => "rsendmail",
            Route::Pipe => "pipe",
            Route::Batching => "batching",
            Route::Postdrop => "postdrop",
            Route::Fast => "fast",
        }
    }

    /// The table's label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Smtpd => "1 leaf smtp -> hub smtpd (limit)",
            Route::Tunnel => "2 leaf smtp -> ssh -L -> smtpd",
            Route::Rsendmail => "3 leaf pipe -> ssh -> rsendmail",
            Route::Pipe => "4 bsmtp-ssh pipe mode",
            Route::Batching => "5 bsmtp-ssh batching, postdrop",
            Route::Postdrop => "6 hub postdrop -r x4 (limit)",
            Route::Fast => "7 batching, smtpd fast path",
        }
    }
}

/// One figure: seconds from release until the leaf logged N sent lines
/// (for the raw postdrop route: until the last postdrop committed), and
/// until the hub's cleanup had logged all N Message-IDs.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    pub sent_secs: f64,
    pub hub_secs: f64,
    /// Cores busy on the whole machine while the figure ran (of 2).
    pub cores_busy: f64,
    /// Deferred deliveries logged by the leaf during the batch (retried).
    pub deferred: usize,
}

impl Figure {
    pub fn rate(&self) -> f64 {
        messages() as f64 / self.sent_secs
    }

    pub fn hub_rate(&self) -> f64 {
        messages() as f64 / self.hub_secs
    }
}

/// What the throughput part measured: per route, one result per size.
pub struct Results {
    pub rows: Vec<(Route, Vec<Result<Figure, String>>)>,
}

impl Results {
    pub fn get(&self, route: Route, size: usize) -> Option<&Figure> {
        self.rows
            .iter()
            .find(|(r, _)| *r == route)
            .and_then(|(_, figures)| figures.get(size))
            .and_then(|f| f.as_ref().ok())
    }

    /// The failures, as `route, size: reason`.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (route, figures) in &self.rows {
            for (i, figure) in figures.iter().enumerate() {
                if let Err(reason) = figure {
                    out.push(format!("{} {}: {reason}", route.key(), SIZES[i].0));
                }
            }
        }
        out
    }
}

/// Runs every throughput measurement. `log` prints a progress line.
pub fn run(env: &Env, work: &Path, log: &dyn Fn(&str)) -> Results {
    let routes = Route::selected().unwrap_or_else(|err| {
        log(&err);
        std::process::exit(2)
    });
    let mut setup = Setup::new(env, work);
    let mut rows = Vec::new();
    for route in routes {
        let figures = measure_route(&mut setup, route, log);
        rows.push((route, figures));
    }
    setup.finish();
    rows.sort_by_key(|(route, _)| Route::ALL.iter().position(|r| r == route));
    Results { rows }
}

/// Both sizes of one route, after one warm-up message that proves the
/// route before N messages are spent on it.
fn measure_route(
    setup: &mut Setup<'_>,
    route: Route,
    log: &dyn Fn(&str),
) -> Vec<Result<Figure, String>> {
    let ready = setup.prepare(route).and_then(|()| {
        setup
            .measure(route, SIZES[0].1, 1, &format!("{}-warm", route.key()))
            .map_err(|reason| format!("warm-up message failed: {reason}"))
    });
    if let Err(reason) = ready {
        log(&format!("{}: not measured: {reason}", route.key()));
        return SIZES.iter().map(|_| Err(reason.clone())).collect();
    }
    let mut figures = Vec::new();
    for (label, size) in SIZES {
        let tag = format!("{}-{}", route.key(), size / 1024);
        let result = setup.measure(route, size, messages(), &tag);
        match &result {
            Ok(f) => log(&format!(
                "{} {label}: {:.1} msg/s ({:.2} s; the hub had all after {:.2} s; \
                 {:.2} cores busy; {} deferrals)",
                route.key(),
                f.rate(),
                f.sent_secs,
                f.hub_secs,
                f.cores_busy,
                f.deferred
            )),
            Err(reason) => log(&format!("{} {label}: FAILED: {reason}", route.key())),
        }
        figures.push(result);
    }
    figures
}

/// Everything the routes need, made once; the tunnel and the pipe user's
/// ssh config are undone on drop.
struct Setup<'a> {
    env: &'a Env,
    work: PathBuf,
    smtpd_port: Result<u16, String>,
    tunnel: Option<Result<Tunnel, String>>,
    rsendmail: Option<Result<SshConfigGuard, String>>,
    venv: PathBuf,
    /// The fast path's listener, once installed.
    inject_port: Option<u16>,
}

impl<'a> Setup<'a> {
    /// Common settings: the leaf holds the bench's messages on injection,
    /// every route's transport runs at concurrency 4 from the start, the
    /// hub keeps what it accepts without retrying it, and the hub gets an
    /// smtpd listener. The rsendmail transport is added to the leaf's
    /// master.cf here (its venv comes later, when its route is prepared).
    fn new(env: &'a Env, work: &Path) -> Setup<'a> {
        let hold = work.join("hold.regexp");
        write_file(&hold, "/^X-Bench-Hold:/ HOLD bench\n", 0o644);
        let venv = work.join("venv");
        append_master_cf(
            &env.leaf().config_dir(),
            &format!(
                "rsendmail unix  -       n       n       -       -       pipe\n  \
                 flags=Rq user={LEAF_PIPE_USER} argv={}/bin/sshsendmail --host {RSENDMAIL_HOST} \
                 -f ${{sender}} ${{recipient}}\n",
                venv.display()
            ),
        );
        let concurrency = CONCURRENCY.to_string();
        let lmtp = format!("{BATCHING_SERVICE}-lmtp");
        let mut leaf: Vec<(String, String)> = vec![
            ("header_checks".into(), format!("regexp:{}", hold.display())),
            ("rsendmail_destination_recipient_limit".into(), "1".into()),
        ];
        for transport in ["smtp", PIPE_TRANSPORT, "rsendmail", lmtp.as_str()] {
            for param in [
                "destination_concurrency_limit",
                "initial_destination_concurrency",
            ] {
                leaf.push((format!("{transport}_{param}"), concurrency.clone()));
            }
        }
        let leaf: Vec<(&str, &str)> = leaf.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.leaf().postconf(&leaf);

        let port = free_port();
        append_master_cf(
            &env.hub().config_dir(),
            &format!("127.0.0.1:{port} inet n - n - - smtpd\n"),
        );
        env.hub().postconf(&[
            ("queue_run_delay", "3600s"),
            ("minimal_backoff_time", "3600s"),
            ("maximal_backoff_time", "3600s"),
        ]);
        let smtpd_port = poll(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| port)
        })
        .ok_or_else(|| format!("the hub's smtpd did not listen on 127.0.0.1:{port}"));
        Setup {
            env,
            work: work.to_path_buf(),
            smtpd_port,
            tunnel: None,
            rsendmail: None,
            venv,
            inject_port: None,
        }
    }

    /// Sets (or, with `None`, removes) `inject` in the hub's rsmtp.conf;
    /// rsmtp reads it at the start of each session.
    fn set_inject(&self, inject: Option<&str>) {
        let path = self.env.rsmtp_config();
        let text = fs::read_to_string(&path).expect("read rsmtp.conf");
        let mut kept = String::new();
        if let Some(inject) = inject {
            // Before any [section]: a top-level key.
            let _ = writeln!(kept, "inject = \"{inject}\"");
        }
        for line in text.lines().filter(|l| !l.starts_with("inject =")) {
            let _ = writeln!(kept, "{line}");
        }
        write_file(&path, kept, 0o644);
    }

    /// Installs the hub's fast injection listener (once) the way an admin
    /// does; returns its port.
    fn inject_listener(&mut self) -> Result<u16, String> {
        if let Some(port) = self.inject_port {
            return Ok(port);
        }
        let port = free_port();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.env.install_hub_listener(port);
        }))
        .map_err(|_| "postfix-install --hub did not give a listener".to_owned())?;
        self.inject_port = Some(port);
        Ok(port)
    }

    /// Makes what `route` needs and routes hub.test through it.
    fn prepare(&mut self, route: Route) -> Result<(), String> {
        if route == Route::Fast {
            let port = self.inject_listener()?;
            self.set_inject(Some(&format!("smtp:127.0.0.1:{port}")));
        } else {
            self.set_inject(None);
        }
        let next_hop = match route {
            Route::Postdrop => return Ok(()),
            Route::Smtpd => format!("smtp:[127.0.0.1]:{}", self.smtpd_port.clone()?),
            Route::Tunnel => {
                let port = self.smtpd_port.clone()?;
                let tunnel = Tunnel::start(self.env, &self.work, port);
                let local = tunnel.as_ref().map(|t| t.local_port).map_err(Clone::clone);
                self.tunnel = Some(tunnel);
                format!("smtp:[127.0.0.1]:{}", local?)
            }
            Route::Rsendmail => {
                let guard = prepare_rsendmail(self.env, &self.work, &self.venv);
                let ok = guard.as_ref().map(|_| ()).map_err(Clone::clone);
                self.rsendmail = Some(guard);
                ok?;
                format!("rsendmail:{HUB_PEER}")
            }
            Route::Pipe => format!("{PIPE_TRANSPORT}:{HUB_PEER}"),
            Route::Batching | Route::Fast => {
                format!("{BATCHING_SERVICE}-lmtp:unix:private/{BATCHING_SERVICE}")
            }
        };
        write_file(
            &self.env.leaf().config_dir().join("transport"),
            format!("hub.test {next_hop}\n"),
            0o644,
        );
        self.env.leaf().postfix(&["reload"]);
        Ok(())
    }

    /// The relay= text of the route's delivery agent lines on the leaf.
    fn relay(&self, route: Route) -> String {
        match route {
            Route::Smtpd => format!(
                "relay=127.0.0.1[127.0.0.1]:{},",
                self.smtpd_port.clone().unwrap_or_default()
            ),
            Route::Tunnel => format!(
                "relay=127.0.0.1[127.0.0.1]:{},",
                self.tunnel
                    .as_ref()
                    .and_then(|t| t.as_ref().ok())
                    .map_or(0, |t| t.local_port)
            ),
            Route::Rsendmail => "relay=rsendmail,".into(),
            Route::Pipe => format!("relay={PIPE_TRANSPORT},"),
            Route::Batching | Route::Fast => format!("[private/{BATCHING_SERVICE}],"),
            Route::Postdrop => String::new(),
        }
    }

    /// One figure; a panic in a harness helper becomes the route's failure.
    /// Whatever happened, both queues are emptied afterwards.
    fn measure(&self, route: Route, size: usize, n: usize, tag: &str) -> Result<Figure, String> {
        let tag = format!("{tag}.{}", std::process::id());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if route == Route::Postdrop {
                self.postdrop_batch(size, n, &tag)
            } else {
                self.leaf_batch(route, size, n, &tag)
            }
        }))
        .unwrap_or_else(|panic| {
            Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panicked".into()))
        });
        if let Err(reason) = &result {
            eprintln!(
                "throughput: {} ({size} bytes) failed: {reason}\n{}",
                route.key(),
                self.env.diagnostics()
            );
        }
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.empty_queues()));
        result
    }

    /// Empties both queues (bounded): each figure starts equal.
    fn empty_queues(&self) {
        for (pf, what) in [(self.env.leaf(), "leaf"), (self.env.hub(), "hub")] {
            let emptied = poll(STEP_TIMEOUT, || {
                if queue_files(&pf.dir) == 0 {
                    return Some(());
                }
                let _ = run_timeout(
                    pf.command("postsuper")
                        .arg("-c")
                        .arg(pf.config_dir())
                        .args(["-d", "ALL"]),
                    b"",
                    STEP_TIMEOUT,
                );
                thread::sleep(Duration::from_millis(200));
                None
            });
            assert!(
                emptied.is_some(),
                "the {what} queue still holds {} files after {STEP_TIMEOUT:?} of postsuper -d ALL",
                queue_files(&pf.dir)
            );
        }
    }

    fn leaf_batch(&self, route: Route, size: usize, n: usize, tag: &str) -> Result<Figure, String> {
        let env = self.env;
        let leaf = env.leaf();
        self.empty_queues();
        for i in 0..n {
            let message = message_text(size, Some(&format!("{tag}.{i}@leaf.test")), true);
            let out = leaf.sendmail(SENDER, &[RECIPIENT], &message);
            if !out.status.success() {
                return Err(format!(
                    "leaf sendmail failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        // pickup removes a maildrop file only after cleanup has written
        // the held copy: wait until the hold queue is the whole queue.
        let hold_dir = leaf.dir.join("spool/hold");
        let all_held = poll(STEP_TIMEOUT, || {
            (count_files(&hold_dir, 2) == n && queue_files(&leaf.dir) == n).then_some(())
        });
        if all_held.is_none() {
            return Err(format!(
                "{STEP_TIMEOUT:?} after injecting {n} messages the leaf holds {} and its queue \
                 {} files",
                count_files(&hold_dir, 2),
                queue_files(&leaf.dir)
            ));
        }

        let relay = self.relay(route);
        let mut leaf_log = LogTail::at_end(&leaf.log_path());
        let mut hub_log = LogTail::at_end(&env.hub().log_path());
        let mut watch = Watch::new(tag, &relay);
        let cpu = CpuTimes::now();
        let start = Instant::now();
        run_ok(
            leaf.command("postsuper")
                .arg("-c")
                .arg(leaf.config_dir())
                .args(["-H", "ALL"]),
        );
        leaf.flush();
        let mut sent_at = None;
        let mut busy = 0.0;
        let mut hub_at = None;
        while sent_at.is_none() || hub_at.is_none() {
            watch.leaf_lines(&leaf_log.new_lines())?;
            watch.hub_lines(&hub_log.new_lines())?;
            if sent_at.is_none() && watch.sent >= n {
                sent_at = Some(start.elapsed());
                busy = cpu.cores_busy();
            }
            if hub_at.is_none() && watch.hub_ids.len() >= n {
                hub_at = Some(start.elapsed());
            }
            if start.elapsed() > BATCH_TIMEOUT {
                return Err(format!(
                    "after {BATCH_TIMEOUT:?} the leaf had sent {} and the hub queued {} of {n}",
                    watch.sent,
                    watch.hub_ids.len()
                ));
            }
            thread::sleep(TICK);
        }
        // The queues settle: the leaf removes what it sent, the hub keeps
        // exactly what it accepted.
        let settled = poll(STEP_TIMEOUT, || {
            (queue_files(&leaf.dir) == 0 && queue_files(&env.hub().dir) == n).then_some(())
        });
        watch.leaf_lines(&leaf_log.new_lines())?;
        watch.hub_lines(&hub_log.new_lines())?;
        if settled.is_none() {
            return Err(format!(
                "after delivery the leaf queue holds {} files and the hub queue {} \
                 (expected 0 and {n})",
                queue_files(&leaf.dir),
                queue_files(&env.hub().dir)
            ));
        }
        watch.check(n)?;
        Ok(Figure {
            sent_secs: sent_at.map_or(f64::NAN, |d| d.as_secs_f64()),
            hub_secs: hub_at.map_or(f64::NAN, |d| d.as_secs_f64()),
            cores_busy: busy,
            deferred: watch.deferred,
        })
    }

    /// N pre-built record streams through the hub's `postdrop -r`,
    /// [`CONCURRENCY`] at a time, timed by the wall clock around the whole
    /// batch (from the first start to the last commit).
    fn postdrop_batch(&self, size: usize, n: usize, tag: &str) -> Result<Figure, String> {
        let env = self.env;
        self.empty_queues();
        let dir = self.work.join(format!("records-{tag}"));
        mkdir(&dir, 0o755);
        let files: Vec<PathBuf> = (0..n)
            .map(|i| {
                let path = dir.join(i.to_string());
                let message = message_text(size, Some(&format!("{tag}.{i}@leaf.test")), false);
                fs::write(&path, records(&message)).expect("write records");
                path
            })
            .collect();
        let mut hub_log = LogTail::at_end(&env.hub().log_path());
        let mut watch = Watch::new(tag, "");
        let next = AtomicUsize::new(0);
        let errors = Mutex::new(Vec::new());
        let config = env.hub_config_dir();
        let cpu = CpuTimes::now();
        let start = Instant::now();
        thread::scope(|scope| {
            for _ in 0..CONCURRENCY {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= files.len() {
                        break;
                    }
                    let left = BATCH_TIMEOUT.saturating_sub(start.elapsed());
                    if let Err(err) = postdrop_one(&config, &files[i], left) {
                        errors.lock().expect("errors").push(err);
                        break;
                    }
                });
            }
        });
        let sent_at = start.elapsed();
        let busy = cpu.cores_busy();
        let errors = errors.into_inner().expect("errors");
        if let Some(first) = errors.first() {
            return Err(format!(
                "{} postdrop runs failed; first: {first}",
                errors.len()
            ));
        }
        let hub_at = poll(BATCH_TIMEOUT, || {
            watch.hub_lines(&hub_log.new_lines()).ok()?;
            (watch.hub_ids.len() >= n).then(|| start.elapsed())
        });
        let Some(hub_at) = hub_at else {
            return Err(format!(
                "the hub's cleanup logged {} of {n} Message-IDs after {BATCH_TIMEOUT:?}",
                watch.hub_ids.len()
            ));
        };
        if poll(STEP_TIMEOUT, || {
            (queue_files(&env.hub().dir) == n).then_some(())
        })
        .is_none()
        {
            return Err(format!(
                "the hub queue holds {} files, not {n}",
                queue_files(&env.hub().dir)
            ));
        }
        watch.hub_lines(&hub_log.new_lines())?;
        watch.sent = n;
        watch.check(n)?;
        let _ = fs::remove_dir_all(&dir);
        Ok(Figure {
            sent_secs: sent_at.as_secs_f64(),
            hub_secs: hub_at.as_secs_f64(),
            cores_busy: busy,
            deferred: 0,
        })
    }

    /// Stops the tunnel and removes the pipe user's ssh config.
    fn finish(&mut self) {
        self.tunnel = None;
        self.rsendmail = None;
    }
}

/// Appends entries to an instance's master.cf (the caller reloads).
fn append_master_cf(config_dir: &Path, entries: &str) {
    let path = config_dir.join("master.cf");
    let text = fs::read_to_string(&path).expect("read master.cf");
    write_file(&path, text + entries, 0o644);
}

/// Adds a new key to the hub user's `authorized_keys` with `options`; the
/// private key is owned by `owner` (0600).
fn add_key(env: &Env, dir: &Path, name: &str, options: &str, owner: &str) -> PathBuf {
    let key = dir.join(format!("key-{name}"));
    run_ok(
        Command::new("/usr/bin/ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    chown_to(&key, owner, None);
    set_mode(&key, 0o600);
    let public = fs::read_to_string(key.with_extension("pub")).expect("public key");
    let keys = fs::read_to_string(env.authorized_keys()).expect("authorized_keys");
    let line = format!("{options} {}\n", public.trim());
    write_file(&env.authorized_keys(), keys + &line, 0o644);
    key
}

/// `ssh -N -L LOCAL:127.0.0.1:SMTPD` to the hub, as root, with a key that
/// may only open that one forwarding. Killed (by its PID) on drop.
struct Tunnel {
    child: Child,
    local_port: u16,
}

impl Tunnel {
    fn start(env: &Env, work: &Path, smtpd_port: u16) -> Result<Tunnel, String> {
        let key = add_key(
            env,
            work,
            "tunnel",
            &format!("restrict,port-forwarding,permitopen=\"127.0.0.1:{smtpd_port}\""),
            "root",
        );
        let local_port = free_port();
        let log = work.join("tunnel.log");
        let stderr =
            File::create(&log).map_err(|err| format!("create {}: {err}", log.display()))?;
        let child = Command::new("/usr/bin/ssh")
            .args(["-F", "/dev/null", "-N", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                env.known_hosts().display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes"])
            .arg("-i")
            .arg(&key)
            .arg("-p")
            .arg(env.sshd_port().to_string())
            .arg("-L")
            .arg(format!("{local_port}:127.0.0.1:{smtpd_port}"))
            .arg(format!("{HUB_SSH_USER}@127.0.0.1"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("cannot run ssh: {err}"))?;
        let mut tunnel = Tunnel { child, local_port };
        let up = poll(Duration::from_secs(30), || {
            if TcpStream::connect(("127.0.0.1", local_port)).is_ok() {
                return Some(true);
            }
            matches!(tunnel.child.try_wait(), Ok(Some(_))).then_some(false)
        });
        if up == Some(true) {
            Ok(tunnel)
        } else {
            Err(format!(
                "ssh -L did not listen on 127.0.0.1:{local_port}: {}",
                tail(&fs::read_to_string(&log).unwrap_or_default(), 5)
            ))
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rsendmail in a venv readable by both users, a hub key forced to it, and
/// the pipe user's ssh config naming [`RSENDMAIL_HOST`].
fn prepare_rsendmail(env: &Env, work: &Path, venv: &Path) -> Result<SshConfigGuard, String> {
    // The system Python: a pyenv one under /root is out of the pipe
    // user's and the hub user's reach.
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        return Err("/usr/bin/python3 is missing (apt-get install python3-venv)".into());
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = run_timeout(cmd.env_remove("PYTHONDONTWRITEBYTECODE"), b"", STEP_TIMEOUT);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}): {}{}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stdout), 5),
                tail(&String::from_utf8_lossy(&out.stderr), 10)
            ))
        }
    };
    run(
        Command::new(python).args(["-m", "venv"]).arg(venv),
        "python3 -m venv (apt-get install python3-venv)",
    )?;
    run(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            RSENDMAIL,
        ]),
        &format!("pip install {RSENDMAIL}"),
    )?;
    run(
        Command::new("/bin/chmod").args(["-R", "a+rX"]).arg(venv),
        "chmod the venv",
    )?;
    for program in ["rsendmail", "sshsendmail"] {
        if !venv.join("bin").join(program).exists() {
            return Err(format!("{RSENDMAIL} installed no bin/{program}"));
        }
    }
    let forced = format!(
        "MAIL_CONFIG={} {}",
        shell_quote(&env.hub_config_dir().to_string_lossy()),
        shell_quote(&venv.join("bin/rsendmail").to_string_lossy())
    );
    let key = add_key(
        env,
        work,
        "rsendmail",
        &format!("restrict,command=\"{}\"", forced.replace('"', "\\\"")),
        LEAF_PIPE_USER,
    );
    let config = format!(
        "# Written by the bsmtp-ssh benchmark; removed when it ends.\n\
         Host {RSENDMAIL_HOST}\n    HostName 127.0.0.1\n    Port {}\n    User {HUB_SSH_USER}\n    \
         IdentityFile {}\n    IdentitiesOnly yes\n    UserKnownHostsFile {}\n    \
         GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n    BatchMode yes\n    \
         LogLevel ERROR\n",
        env.sshd_port(),
        key.display(),
        env.known_hosts().display()
    );
    Ok(SshConfigGuard::install(&config))
}

/// The pipe user's `~/.ssh/config` for the rsendmail route; on drop, the
/// previous file (if any) comes back, or the file (and a `.ssh` made here)
/// goes.
struct SshConfigGuard {
    dir: PathBuf,
    made_dir: bool,
    previous: Option<Vec<u8>>,
}

impl SshConfigGuard {
    fn install(config: &str) -> SshConfigGuard {
        let home = lookup_user(LEAF_PIPE_USER).dir;
        let dir = home.join(".ssh");
        let made_dir = !dir.exists();
        if made_dir {
            mkdir(&dir, 0o700);
            chown_to(&dir, LEAF_PIPE_USER, None);
        }
        let file = dir.join("config");
        let previous = fs::read(&file).ok();
        write_file(&file, config, 0o600);
        chown_to(&file, LEAF_PIPE_USER, None);
        SshConfigGuard {
            dir,
            made_dir,
            previous,
        }
    }
}

impl Drop for SshConfigGuard {
    fn drop(&mut self) {
        let file = self.dir.join("config");
        match &self.previous {
            Some(text) => {
                let _ = fs::write(&file, text);
            }
            None => {
                let _ = fs::remove_file(&file);
            }
        }
        if self.made_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// A message: headers (with a Message-ID, and the leaf's hold marker when
/// `hold`), then base64-like body lines up to `size` bytes.
pub fn message_text(size: usize, message_id: Option<&str>, hold: bool) -> Vec<u8> {
    let mut text = format!("From: {SENDER}\nTo: {RECIPIENT}\nSubject: bench\n");
    if let Some(id) = message_id {
        let _ = writeln!(text, "Message-ID: <{id}>");
    }
    if hold {
        text.push_str("X-Bench-Hold: yes\n");
    }
    text.push('\n');
    let mut text = text.into_bytes();
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n";
    while text.len() < size {
        text.extend_from_slice(line);
    }
    text
}

/// The record stream Postfix's sendmail gives `postdrop -r` for `message`
/// (as rsmtp writes it: `A rewrite_context=remote`, `S`, `R`, `M`, an `N`
/// per line, long lines as `L` pieces, `X`, `E`).
fn records(message: &[u8]) -> Vec<u8> {
    const MAX_RECORD: usize = 1024;
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 256);
    bsmtp::records::put_record(&mut out, b'A', b"rewrite_context=remote");
    bsmtp::records::put_record(&mut out, b'S', SENDER.as_bytes());
    bsmtp::records::put_record(&mut out, b'R', RECIPIENT.as_bytes());
    bsmtp::records::put_record(&mut out, b'M', b"");
    let body = message.strip_suffix(b"\n").unwrap_or(message);
    for line in body.split(|&b| b == b'\n') {
        let mut rest = line;
        while rest.len() > MAX_RECORD {
            bsmtp::records::put_record(&mut out, b'L', &rest[..MAX_RECORD]);
            rest = &rest[MAX_RECORD..];
        }
        bsmtp::records::put_record(&mut out, b'N', rest);
    }
    bsmtp::records::put_record(&mut out, b'X', b"");
    bsmtp::records::put_record(&mut out, b'E', b"");
    out
}

/// One `postdrop -r -c DIR < file`: Ok when postdrop's `status` attribute
/// says 0 and it exits 0. Bounded by `timeout` (poll on its output).
fn postdrop_one(config: &Path, file: &Path, timeout: Duration) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let input = File::open(file).map_err(|err| format!("open {}: {err}", file.display()))?;
    let mut child = Command::new("/usr/sbin/postdrop")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg("-r")
        .arg("-c")
        .arg(config)
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run postdrop: {err}"))?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let ready = {
            let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, wait)
        };
        match ready {
            Ok(0) => break false,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(format!("poll postdrop's output: {err}")),
        }
        match stdout.read(&mut buf) {
            Ok(0) => break true,
            Ok(len) => out.extend_from_slice(&buf[..len]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("read postdrop's output: {err}")),
        }
    };
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("postdrop still running after {timeout:?}, killed"));
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = child
        .wait()
        .map_err(|err| format!("wait for postdrop: {err}"))?;
    let verdict = out
        .split(|&b| b == 0)
        .skip_while(|field| *field != b"status")
        .nth(1)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    if status.success() && verdict.as_deref() == Some("0") {
        Ok(())
    } else {
        Err(format!(
            "postdrop {status}, status attribute {verdict:?}: {}",
            stderr.trim()
        ))
    }
}

/// What the logs said during one batch.
struct Watch {
    tag: String,
    relay: String,
    sent: usize,
    deferred: usize,
    first_deferral: Option<String>,
    hub_ids: HashSet<String>,
    duplicates: usize,
}

impl Watch {
    fn new(tag: &str, relay: &str) -> Watch {
        Watch {
            tag: format!("{tag}."),
            relay: relay.to_owned(),
            sent: 0,
            deferred: 0,
            first_deferral: None,
            hub_ids: HashSet::new(),
            duplicates: 0,
        }
    }

    /// Counts the leaf's delivery agent lines (pipe, smtp, lmtp: those
    /// with `delays=`; bsmtp-ssh's own lines have none). A bounce, or a
    /// message sent by another relay, fails the batch.
    fn leaf_lines(&mut self, lines: &[String]) -> Result<(), String> {
        for line in lines {
            if !line.contains("postfix-leaf/") || !line.contains(", delays=") {
                continue;
            }
            if line.contains("status=sent ") {
                if !line.contains(&self.relay) {
                    return Err(format!("sent by another relay than {}: {line}", self.relay));
                }
                self.sent += 1;
            } else if line.contains("status=deferred ") {
                self.deferred += 1;
                self.first_deferral.get_or_insert_with(|| line.clone());
            } else if line.contains("status=") {
                return Err(format!("the leaf logged: {line}"));
            }
        }
        Ok(())
    }

    /// Collects the batch's Message-IDs from the hub's cleanup; a bounce on
    /// the hub fails the batch.
    fn hub_lines(&mut self, lines: &[String]) -> Result<(), String> {
        for line in lines {
            if line.contains("status=bounced") {
                return Err(format!("the hub logged: {line}"));
            }
            let Some(at) = line.find(" message-id=<") else {
                continue;
            };
            let id = &line[at + " message-id=<".len()..];
            let id = id.split('>').next().unwrap_or_default();
            if id.starts_with(&self.tag) && !self.hub_ids.insert(id.to_owned()) {
                self.duplicates += 1;
            }
        }
        Ok(())
    }

    fn check(&self, n: usize) -> Result<(), String> {
        if self.sent != n {
            return Err(format!(
                "the leaf logged {} sent lines for {n} messages",
                self.sent
            ));
        }
        if self.hub_ids.len() != n || self.duplicates != 0 {
            return Err(format!(
                "the hub queued {} distinct of {n} messages, {} duplicates",
                self.hub_ids.len(),
                self.duplicates
            ));
        }
        if let Some(line) = &self.first_deferral {
            eprintln!(
                "throughput: {} deferrals in this batch, the first: {line}",
                self.deferred
            );
        }
        Ok(())
    }
}

/// Reads a growing log from where it was, whole lines only.
struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl LogTail {
    fn at_end(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            offset: fs::metadata(path).map_or(0, |m| m.len()),
            partial: Vec::new(),
        }
    }

    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        let Ok(len) = file.read_to_end(&mut bytes) else {
            return Vec::new();
        };
        self.offset += u64::try_from(len).unwrap_or(0);
        self.partial.extend_from_slice(&bytes);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        String::from_utf8_lossy(&whole)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The machine's CPU time counters (/proc/stat), for how busy both cores
/// were during a figure (other work on the machine counts too).
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn now() -> CpuTimes {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        // idle and iowait are not busy.
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        CpuTimes {
            busy: total - idle,
            total,
        }
    }

    /// Cores busy on average since `self`.
    fn cores_busy(&self) -> f64 {
        let now = CpuTimes::now();
        let cores = thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return f64::NAN;
        }
        (now.busy.saturating_sub(self.busy)) as f64 / total as f64 * cores as f64
    }
}

/// Messages in an instance's queue (maildrop, incoming, active, deferred,
/// hold; the hashed ones are a level or two deep).
fn queue_files(instance: &Path) -> usize {
    ["maildrop", "incoming", "active", "deferred", "hold"]
        .iter()
        .map(|q| count_files(&instance.join("spool").join(q), 3))
        .sum()
}

fn count_files(dir: &Path, depth: u32) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => count_files(&e.path(), depth - 1),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// The throughput table and its ratios.
pub fn report(results: &Results) {
    println!();
    println!(
        "throughput through a real leaf Postfix, concurrency {CONCURRENCY}, {} messages a figure \
         (msg/s until the leaf logged all sent; [msg/s until the hub's cleanup had all N]; \
         cores busy of 2)",
        messages()
    );
    println!("{:<34} {:>28} {:>28}", "route", SIZES[0].0, SIZES[1].0);
    for (route, figures) in &results.rows {
        let cells: Vec<String> = figures
            .iter()
            .map(|f| match f {
                Ok(f) => format!(
                    "{:.1} [{:.1}] {:.1}c{}",
                    f.rate(),
                    f.hub_rate(),
                    f.cores_busy,
                    if f.deferred > 0 {
                        format!(" {}d", f.deferred)
                    } else {
                        String::new()
                    }
                ),
                Err(_) => "FAILED".into(),
            })
            .collect();
        println!(
            "{:<34} {:>28} {:>28}",
            route.label(),
            cells.first().map_or("", String::as_str),
            cells.get(1).map_or("", String::as_str)
        );
    }
    println!();
    println!(
        "{:<34} {:>10} {:>10}  target",
        "ratio (msg/s)", SIZES[0].0, SIZES[1].0
    );
    for (ours, against, label, target) in [
        (
            Route::Batching,
            Route::Postdrop,
            "batching / raw postdrop",
            ">= 0.9",
        ),
        (
            Route::Batching,
            Route::Tunnel,
            "batching / ssh -L tunnel",
            "(none for this path)",
        ),
        (
            Route::Batching,
            Route::Rsendmail,
            "batching / rsendmail",
            ">= 25",
        ),
        (
            Route::Batching,
            Route::Smtpd,
            "batching / smtpd (no SSH)",
            "(none for this path)",
        ),
        (
            Route::Fast,
            Route::Smtpd,
            "fast path / smtpd (no SSH)",
            ">= 0.9",
        ),
        (
            Route::Fast,
            Route::Tunnel,
            "fast path / ssh -L tunnel",
            ">= 1.5",
        ),
    ] {
        let cells: Vec<String> = (0..SIZES.len())
            .map(|i| match (results.get(ours, i), results.get(against, i)) {
                (Some(ours), Some(theirs)) => format!("{:.2}", ours.rate() / theirs.rate()),
                _ => "n/a".into(),
            })
            .collect();
        println!("{label:<34} {:>10} {:>10}  {target}", cells[0], cells[1]);
    }
    for failure in results.failures() {
        println!("not measured: {failure}");
    }
}
