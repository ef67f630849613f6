//! The compression rows of the benchmark (`compression = true`: the
//! session deflated above SSH as `receive deflate`, libssh2's zlib under
//! it): pipe mode, [`N`] messages of 100 KiB one after another, each its
//! own `bsmtp-ssh deliver`, without and with compression, on two links:
//! loopback as it is, and a slow link played by a relay that moves at most
//! [`SLOW_LINK`] bytes a second each way. The relay (see
//! `bsmtp_ssh_tests::relay`) counts the bytes on the wire, both ways, so
//! every row has bytes a message and msg/s, and the CPU time of the
//! `bsmtp-ssh` processes (user + system, from `getrusage` of our children)
//! gives the sender's cost a message. Two kinds of body: English text
//! (Debian's license texts), where compression pays, and base64 lines
//! like an attachment, where it pays little.
//!
//! Run alone with `bench compression` (see `scripts/bench`).

// Byte counts and times here are far below 2^52.
#![allow(clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use bsmtp_ssh_tests::relay::ByteRelay;
use bsmtp_ssh_tests::util::{license_text, write_file};
use bsmtp_ssh_tests::Env;

/// Messages per row.
pub const N: usize = 20;
/// The slow link: 2 Mbit/s each way.
pub const SLOW_LINK: u64 = 250_000;
/// The message body size.
const SIZE: usize = 100 * 1024;

/// One row: a body kind, a link, compression on or off.
#[derive(Debug, Clone)]
pub struct Row {
    /// What the row measured.
    pub label: String,
    /// Bytes leaf -> hub per message.
    pub up: f64,
    /// Bytes hub -> leaf per message.
    pub down: f64,
    /// Messages a second.
    pub rate: f64,
    /// CPU milliseconds of the sender (`bsmtp-ssh`) per message.
    pub cpu_ms: f64,
}

/// Measures every row; `progress` gets a line per row.
pub fn run(env: &Env, work: &Path, progress: &dyn Fn(&str)) -> Vec<Row> {
    let fast = ByteRelay::start(env.sshd_port(), None);
    let slow = ByteRelay::start(env.sshd_port(), Some(SLOW_LINK));
    let mut hubs = Vec::new();
    for (link, relay) in [("fast", &fast), ("slow", &slow)] {
        for zip in [false, true] {
            let name = format!("{link}-{}", if zip { "zlib" } else { "plain" });
            let mut hub = env.relayed_hub_spec(&name, relay.port);
            if zip {
                hub.lines.push("compression = true".to_owned());
            }
            hubs.push(hub);
        }
    }
    let config = work.join("compression.conf");
    write_file(&config, env.peer_sections(&hubs, ""), 0o644);
    let bodies = [("text", license_text(SIZE)), ("base64", base64_lines(SIZE))];
    let mut rows = Vec::new();
    for (kind, body) in &bodies {
        let message = work.join(format!("compression-{kind}.eml"));
        let mut text =
            b"From: alice@leaf.test\nTo: bob@hub.test\nSubject: compression\n\n".to_vec();
        text.extend_from_slice(body);
        std::fs::write(&message, text).expect("write the message");
        for (link, relay) in [("loopback", &fast), ("2 Mbit/s", &slow)] {
            for zip in [false, true] {
                let peer = format!(
                    "{}-{}",
                    if relay.port == fast.port {
                        "fast"
                    } else {
                        "slow"
                    },
                    if zip { "zlib" } else { "plain" }
                );
                let row = measure(env, &config, &peer, &message, relay, kind, link, zip);
                progress(&format!(
                    "compression: {}: {:.0} bytes up a message, {:.1} msg/s",
                    row.label, row.up, row.rate
                ));
                rows.push(row);
            }
        }
    }
    rows
}

/// Delivers `message` [`N`] times to `peer`, one `bsmtp-ssh deliver` each.
#[allow(clippy::too_many_arguments)]
fn measure(
    env: &Env,
    config: &Path,
    peer: &str,
    message: &Path,
    relay: &ByteRelay,
    kind: &str,
    link: &str,
    zip: bool,
) -> Row {
    let before = (relay.up(), relay.down());
    let cpu_before = children_cpu();
    let started = Instant::now();
    for _ in 0..N {
        let input = std::fs::File::open(message).expect("open the message");
        let out = Command::new(env.bin_dir().join("bsmtp-ssh"))
            .args(["deliver", "--config"])
            .arg(config)
            .args([
                "--peer",
                peer,
                "-f",
                "alice@leaf.test",
                "--",
                "bob@hub.test",
            ])
            .stdin(Stdio::from(input))
            .output()
            .expect("run bsmtp-ssh deliver");
        assert!(
            out.status.success(),
            "bsmtp-ssh deliver --peer {peer}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let secs = started.elapsed().as_secs_f64();
    // The relay's threads count what the last session's close moved.
    std::thread::sleep(std::time::Duration::from_millis(300));
    Row {
        label: format!(
            "{kind}, {link}, {}",
            if zip { "compression" } else { "plain" }
        ),
        up: (relay.up() - before.0) as f64 / N as f64,
        down: (relay.down() - before.1) as f64 / N as f64,
        rate: N as f64 / secs,
        cpu_ms: (children_cpu() - cpu_before) * 1000.0 / N as f64,
    }
}

/// CPU seconds (user + system) of the children we waited for so far.
fn children_cpu() -> f64 {
    let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
    else {
        return 0.0;
    };
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

/// Base64 lines of pseudo-random bytes, like an attachment that is
/// already compressed (a photo, a zip).
fn base64_lines(size: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = Vec::with_capacity(size + 80);
    while text.len() < size {
        for _ in 0..76 {
            // Knuth's MMIX linear congruential generator, top bits.
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            text.push(ALPHABET[usize::try_from(state >> 58).unwrap_or(0)]);
        }
        text.push(b'\n');
    }
    text
}

/// The rows as a table, with the ratios plain / compressed.
pub fn report(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncompression (pipe mode, {N} x 100 KiB, one deliver each; bytes on the wire counted by a relay)"
    );
    let _ = writeln!(
        out,
        "{:<36} {:>14} {:>14} {:>10} {:>12} {:>10} {:>12}",
        "row", "bytes up/msg", "bytes down/msg", "msg/s", "fewer bytes", "msg/s x", "CPU ms/msg"
    );
    for pair in rows.chunks(2) {
        let [plain, zip] = pair else { continue };
        for (row, ratio, speed) in [
            (plain, String::new(), String::new()),
            (
                zip,
                format!("{:.2} x", plain.up / zip.up),
                format!("{:.2}", zip.rate / plain.rate),
            ),
        ] {
            let _ = writeln!(
                out,
                "{:<36} {:>14.0} {:>14.0} {:>10.1} {:>12} {:>10} {:>12.1}",
                row.label, row.up, row.down, row.rate, ratio, speed, row.cpu_ms
            );
        }
    }
    let _ = writeln!(
        out,
        "target: compression on >= 3 x fewer bytes on the wire for text (SPEC.md); CPU: the sender's bsmtp-ssh, user + system"
    );
    out
}
