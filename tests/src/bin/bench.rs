//! The benchmark behind SPEC.md's pipe-mode targets, run by `scripts/bench`:
//! each figure side by side with its anchor, measured in the same run on the
//! same leaf/hub/sshd set-up (release binaries), reported as a ratio.
//!
//! - pipe mode, 4 KiB message: `bsmtp-ssh deliver` (handshake, host-key
//!   check, login, BSMTP, postdrop commit on the hub) against OpenSSH's own
//!   `ssh hub true` on a key forced to `/bin/true` (one handshake, with
//!   OpenSSH's default key exchange and with the curve25519 bsmtp-ssh
//!   uses), and against `bsmtp-ssh check PEER` (our own handshake, login and
//!   an EHLO/QUIT session, without a message). Target: one handshake plus
//!   under 10 ms.
//! - 100 MB message: `bsmtp-ssh deliver` against `ssh hub 'cat >/dev/null'`
//!   (raw channel bandwidth), with the hub's Postfix stopped so that its
//!   pickup/cleanup of earlier runs do not compete (postdrop still commits
//!   each message to the maildrop queue). Target: >= 0.8 x.
//! - peak RSS of each side while moving 100 MB. Target: under 32 MB.
//! - throughput (msg/s) through a real leaf Postfix at concurrency 4, 4 KiB
//!   and 100 KiB messages, 200 a figure: batching mode against raw
//!   `postdrop -r` on the hub (target: at least 0.9 x), against rsendmail
//!   (target: at least 25 x), and beside SMTP straight to the hub's smtpd,
//!   an `ssh -L` tunnel to it, and pipe mode. See
//!   `tests/src/bench/throughput.rs`.
//! - compression (`compression = true`): bytes on the wire and msg/s for
//!   100 KiB text and base64 messages, on loopback and on a 2 Mbit/s link,
//!   with and without. `bench compression` runs these rows alone. See
//!   `tests/src/bench/compression.rs`.
//!
//! `BSMTP_BENCH_N` sets the messages per throughput figure (default 200).
//! `BSMTP_BENCH_THROUGHPUT_ONLY=1` skips everything but the throughput
//! rows, and `BSMTP_BENCH_ROUTES` picks some of those (see
//! `tests/src/bench/throughput.rs`): e.g. the fast injection path's
//! targets alone, `BSMTP_BENCH_THROUGHPUT_ONLY=1
//! BSMTP_BENCH_ROUTES=smtpd,tunnel,fast scripts/bench`.
//!
//! Timings come from hyperfine (warm-up runs, then a fixed number of runs;
//! the mean and standard deviation are printed). Nothing here asserts on a
//! figure: the numbers are for people to read next to their anchors. A
//! throughput route that did not deliver exactly its messages has no
//! figure; the bench then says why and exits 1.

// Sizes here are far below 2^52: the float conversions lose nothing.
#![allow(clippy::cast_precision_loss)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bsmtp_ssh_tests::{Env, EnvOptions};

#[path = "../bench/compression.rs"]
mod compression;
#[path = "../bench/throughput.rs"]
mod throughput;

/// Bytes of the "big" message.
const BIG: usize = 100 * 1024 * 1024;
/// Hyperfine runs for the small message and for the big one.
const RUNS_SMALL: u32 = 30;
const RUNS_BIG: u32 = 5;

fn main() {
    let started = Instant::now();
    if std::env::args().nth(1).as_deref() == Some("compression") {
        compression_only(started);
    } else {
        everything(started);
    }
}

/// The whole benchmark: every figure, then the tables.
fn everything(started: Instant) {
    let limit = (2 * BIG).to_string();
    let env = bench_env(&limit);
    let work = env.base().join("bench");
    fs::create_dir_all(&work).expect("bench dir");
    if throughput_only() {
        println!(
            "bsmtp-ssh benchmark, throughput rows only (loopback, {})",
            env.base().display()
        );
        return finish(env, &work, started, None);
    }
    let small = write_message(&work.join("small.eml"), 4 * 1024);
    let big = write_message(&work.join("big.eml"), BIG);
    let rss_file = PathBuf::from(format!("/tmp/bsmtp-bench-rsmtp-rss-{}", std::process::id()));
    let true_key = anchor_key(&env, &work, "true", "/bin/true");
    let cat_key = anchor_key(&env, &work, "cat", "cat >/dev/null");
    let rss_key = anchor_key(
        &env,
        &work,
        "rss",
        &format!(
            "/usr/bin/time -f %M -o {} {}/rsmtp --peer leaf1 --postfix-config {} --allow-sender @leaf.test --max-size {limit}",
            rss_file.display(),
            env.bin_dir().display(),
            env.hub_config_dir().display()
        ),
    );

    let ssh = |key: &Path| {
        format!(
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o IdentitiesOnly=yes -i {} -p {} bsmtp-hub@127.0.0.1",
            env.known_hosts().display(),
            key.display(),
            env.sshd_port()
        )
    };
    let deliver = format!(
        "{}/bsmtp-ssh deliver --config {} --peer hub -f alice@leaf.test -- bob@hub.test",
        env.bin_dir().display(),
        env.transport_config().display()
    );

    println!(
        "bsmtp-ssh benchmark (release build, loopback, {})",
        env.base().display()
    );
    let handshake = hyperfine(
        &work,
        "handshake",
        RUNS_SMALL,
        &format!("{} true", ssh(&true_key)),
    );
    // The same handshake with the key exchange bsmtp-ssh picks: OpenSSH's
    // default post-quantum hybrid costs about twice as much.
    let curve25519 = ssh(&true_key).replace("ssh -F", "ssh -o KexAlgorithms=curve25519-sha256 -F");
    let handshake_curve25519 = hyperfine(
        &work,
        "handshake-curve25519",
        RUNS_SMALL,
        &format!("{curve25519} true"),
    );
    let check = hyperfine(
        &work,
        "check",
        RUNS_SMALL,
        &format!(
            "{}/bsmtp-ssh check --config {} hub > /dev/null",
            env.bin_dir().display(),
            env.transport_config().display()
        ),
    );
    let pipe = hyperfine(
        &work,
        "pipe",
        RUNS_SMALL,
        &format!("{deliver} < {}", small.display()),
    );
    // Only our path counts for bandwidth: with the hub's Postfix running,
    // pickup and cleanup copying the previous 100 MB message would compete
    // for the two cores. postdrop still commits into the maildrop queue.
    env.hub().postfix(&["stop"]);
    let raw = hyperfine(
        &work,
        "raw",
        RUNS_BIG,
        &format!("{} < {}", ssh(&cat_key), big.display()),
    );
    let bulk = hyperfine(
        &work,
        "bulk",
        RUNS_BIG,
        &format!("{deliver} < {}", big.display()),
    );
    let sender_rss = peak_rss_kib(&format!("{deliver} < {}", big.display()));
    let receiver_rss = receiver_rss(&env, &rss_key, &big, &rss_file);
    let figures = Figures {
        handshake,
        handshake_curve25519,
        check,
        pipe,
        raw,
        bulk,
        sender_rss,
        receiver_rss,
    };
    finish(env, &work, started, Some(&figures));
}

/// `BSMTP_BENCH_THROUGHPUT_ONLY=1`: the throughput rows alone.
fn throughput_only() -> bool {
    std::env::var("BSMTP_BENCH_THROUGHPUT_ONLY").is_ok_and(|v| v == "1")
}

/// The leaf, hub and sshd every figure is measured on.
fn bench_env(limit: &str) -> Env {
    Env::start_with(
        "bench",
        EnvOptions::default()
            // The spawn(8) and lmtp(8) entries for the throughput rows'
            // batching route; the other routes are set up beside them.
            .batching()
            .rsmtp_args(["--allow-sender", "@leaf.test", "--max-size", limit])
            .hub_param("message_size_limit", limit)
            // Keep the hub's local delivery out of the measurement: accepted
            // mail waits in the hub's queue.
            .hub_param("defer_transports", "local"),
    )
}

/// The hub back up, the throughput rows, then both tables and the wall
/// time; exits 1 (after tearing the environment down) when a throughput
/// route has no figure.
fn finish(env: Env, work: &Path, started: Instant, figures: Option<&Figures>) {
    if figures.is_some() {
        // Stopped for the bandwidth figures.
        restart_hub_empty(&env);
    }
    let progress = |line: &str| println!("[+{:.0} s] {line}", started.elapsed().as_secs_f64());
    let compressed = compression::run(&env, work, &progress);
    let throughput = throughput::run(&env, work, &progress);
    if let Some(figures) = figures {
        report(figures);
    }
    throughput::report(&throughput);
    print!("{}", compression::report(&compressed));
    let failed = !throughput.failures().is_empty();
    drop(env);
    println!(
        "\nbench wall time: {:.0} s (after the build)",
        started.elapsed().as_secs_f64()
    );
    if failed {
        eprintln!("bench: some throughput routes were not measured (see above)");
        std::process::exit(1);
    }
}

/// `bench compression`: the compression rows alone, on an environment of
/// their own (the hub keeps what it accepts, as in the full run).
fn compression_only(started: Instant) {
    let env = Env::start_with(
        "bench_compression",
        EnvOptions::default().hub_param("defer_transports", "local"),
    );
    let work = env.base().join("bench");
    fs::create_dir_all(&work).expect("bench dir");
    let progress = |line: &str| println!("[+{:.0} s] {line}", started.elapsed().as_secs_f64());
    let rows = compression::run(&env, &work, &progress);
    print!("{}", compression::report(&rows));
    drop(env);
    println!(
        "\nbench wall time: {:.0} s (after the build)",
        started.elapsed().as_secs_f64()
    );
}

/// Means and standard deviations in seconds, peak RSS in KiB.
struct Figures {
    handshake: (f64, f64),
    handshake_curve25519: (f64, f64),
    check: (f64, f64),
    pipe: (f64, f64),
    raw: (f64, f64),
    bulk: (f64, f64),
    sender_rss: Option<u64>,
    receiver_rss: Option<u64>,
}

fn report(f: &Figures) {
    let mib = |bytes: usize, secs: f64| bytes as f64 / (1024.0 * 1024.0) / secs;
    let extra = |anchor: (f64, f64)| format!("{:+.1} ms", (f.pipe.0 - anchor.0) * 1000.0);
    let rss =
        |kib: Option<u64>| kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!();
    row("measure", "anchor", "bsmtp-ssh", "ratio", "target");
    row(
        "one handshake, OpenSSH default kex",
        &format!("ssh true {}", ms(f.handshake)),
        "",
        "",
        "",
    );
    row(
        "pipe mode, 4 KiB, vs curve25519",
        &format!("ssh true {}", ms(f.handshake_curve25519)),
        &ms(f.pipe),
        &extra(f.handshake_curve25519),
        "+< 10 ms",
    );
    row(
        "pipe mode, 4 KiB, vs our handshake",
        &format!("check {}", ms(f.check)),
        &ms(f.pipe),
        &extra(f.check),
        "+< 10 ms",
    );
    row(
        "100 MB message, bandwidth",
        &format!("ssh cat {:.0} MiB/s", mib(BIG, f.raw.0)),
        &format!("{:.0} MiB/s", mib(BIG, f.bulk.0)),
        &format!("{:.2}", f.raw.0 / f.bulk.0),
        ">= 0.8",
    );
    row(
        "peak RSS, 100 MB, sender",
        "-",
        &rss(f.sender_rss),
        "",
        "< 32 MiB",
    );
    row(
        "peak RSS, 100 MB, receiver (rsmtp)",
        "-",
        &rss(f.receiver_rss),
        "",
        "< 32 MiB",
    );
}

/// One line of the report table.
fn row(measure: &str, anchor: &str, ours: &str, ratio: &str, target: &str) {
    println!("{measure:<34} {anchor:>22} {ours:>22} {ratio:>10}  {target}");
}

/// Peak RSS of rsmtp on the hub while it receives `big`, through a key whose
/// forced command runs it under GNU time.
fn receiver_rss(env: &Env, key: &Path, big: &Path, rss_file: &Path) -> Option<u64> {
    let _ = fs::remove_file(rss_file);
    let one = format!(
        "{}/bsmtp-ssh deliver --host 127.0.0.1 --port {} --user bsmtp-hub --identity {} --known-hosts {} -f alice@leaf.test -- bob@hub.test < {}",
        env.bin_dir().display(),
        env.sshd_port(),
        key.display(),
        env.known_hosts().display(),
        big.display()
    );
    run_shell(&one);
    let text = fs::read_to_string(rss_file).unwrap_or_default();
    let _ = fs::remove_file(rss_file);
    text.trim().parse::<u64>().ok()
}

/// Drops the big messages and restarts the hub, so teardown finds the
/// Postfix it started.
fn restart_hub_empty(env: &Env) {
    let maildrop = env.hub().dir.join("spool/maildrop");
    for file in fs::read_dir(&maildrop).into_iter().flatten().flatten() {
        let _ = fs::remove_file(file.path());
    }
    env.hub().postfix(&["start"]);
}

/// Writes a message with headers and `size` bytes of base64-like body lines.
fn write_message(path: &Path, size: usize) -> PathBuf {
    fs::write(path, throughput::message_text(size, None, false)).expect("write message");
    path.to_path_buf()
}

/// A second key for the hub's user, forced to `command`: the anchors run
/// over the same sshd, user and network path as bsmtp-ssh.
fn anchor_key(env: &Env, dir: &Path, name: &str, command: &str) -> PathBuf {
    let key = dir.join(format!("anchor-{name}"));
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
    let public = fs::read_to_string(key.with_extension("pub")).expect("public key");
    let keys = fs::read_to_string(env.authorized_keys()).expect("authorized_keys");
    let line = format!("restrict,command=\"{command}\" {}\n", public.trim());
    fs::write(env.authorized_keys(), keys + &line).expect("write authorized_keys");
    key
}

/// Mean and standard deviation in seconds of `command`, by hyperfine.
fn hyperfine(dir: &Path, name: &str, runs: u32, command: &str) -> (f64, f64) {
    let json = dir.join(format!("{name}.json"));
    let status = Command::new("hyperfine")
        .args([
            "--style",
            "basic",
            "--warmup",
            "2",
            "--runs",
            &runs.to_string(),
        ])
        .arg("--export-json")
        .arg(&json)
        .args(["--command-name", name, command])
        .status()
        .expect("hyperfine is missing: apt-get install hyperfine");
    assert!(status.success(), "hyperfine failed for {command}");
    let text = fs::read_to_string(&json).expect("hyperfine json");
    (
        json_number(&text, "\"mean\":"),
        json_number(&text, "\"stddev\":"),
    )
}

/// The first number after `key` in hyperfine's JSON (no JSON crate needed
/// for two numbers).
fn json_number(text: &str, key: &str) -> f64 {
    let at = text.find(key).map_or(text.len(), |i| i + key.len());
    text[at..]
        .trim_start()
        .split(|c: char| c == ',' || c == '}' || c.is_whitespace())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN)
}

fn ms((mean, stddev): (f64, f64)) -> String {
    format!("{:.1} ± {:.1} ms", mean * 1000.0, stddev * 1000.0)
}

fn run_shell(command: &str) {
    let status = Command::new("/bin/sh")
        .args(["-c", command])
        .status()
        .expect("sh");
    assert!(status.success(), "failed: {command}");
}

/// Peak resident set of `command` in KiB, by GNU time.
fn peak_rss_kib(command: &str) -> Option<u64> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "/bin/sh", "-c", command])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}
