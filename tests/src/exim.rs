//! exim 4, the independent BSMTP peer (SPEC: "Interoperable both ways with
//! exim's BSMTP"): an [`Exim`] runs the real exim binary with its own
//! config files, spools and logs inside a test's directory, to write BSMTP
//! the way exim's `use_bsmtp` transports write it ([`Exim::write_bsmtp`])
//! and to read BSMTP the way `exim -bS` reads it ([`Exim::read_bsmtp`]).
//!
//! Debian's exim4 packages conflict with postfix, so exim is not installed:
//! `scripts/test` unpacks exim4-daemon-light with `dpkg -x` into
//! [`EXIM_ROOT`] and creates the user exim looks up at start
//! ([`EXIM_USER`]). Root runs it with `-C`, which exim allows root without
//! a trusted-config list. Every command is bounded in time; a missing exim
//! or a failed run panics with what exim said.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::{Uid, User};

use crate::util::{chown_to, explain, mkdir, read_lossy, run_timeout, write_file, COMMAND_TIMEOUT};

/// Where `scripts/test` unpacks exim4-daemon-light.
pub const EXIM_ROOT: &str = "/opt/bsmtp-ssh-tests/exim";

/// The exim binary inside [`EXIM_ROOT`].
pub const EXIM: &str = "/opt/bsmtp-ssh-tests/exim/usr/sbin/exim4";

/// The user Debian's exim is built to run as (it looks it up at start and
/// refuses to run without it); local deliveries run as this user too.
pub const EXIM_USER: &str = "Debian-exim";

/// exim's `primary_hostname`: the HELO prefix names it.
pub const EXIM_HOSTNAME: &str = "exim.test";

/// How exim's `appendfile` transport with `use_bsmtp` writes a batch; the
/// default is exim's default: LF line ends, no HELO, one recipient per
/// transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BsmtpStyle {
    /// `use_crlf`: every line ends CRLF (commands, content, the final dot).
    pub crlf: bool,
    /// `message_prefix = HELO $primary_hostname` (with the style's line
    /// end): the spec's way to get a HELO, written before each message's
    /// MAIL command.
    pub helo: bool,
    /// `batch_max = 100`: all of a message's recipients in one transaction
    /// (several RCPT commands); exim's default of 1 writes one transaction
    /// per recipient.
    pub batch_recipients: bool,
}

impl BsmtpStyle {
    /// Lines end CRLF (`use_crlf`).
    #[must_use]
    pub fn crlf(mut self) -> Self {
        self.crlf = true;
        self
    }

    /// A HELO before each message (`message_prefix`).
    #[must_use]
    pub fn helo(mut self) -> Self {
        self.helo = true;
        self
    }

    /// All of a message's recipients in one transaction (`batch_max`).
    #[must_use]
    pub fn batch_recipients(mut self) -> Self {
        self.batch_recipients = true;
        self
    }

    /// The transport options this style sets, one per line.
    fn transport_options(self) -> String {
        let eol = if self.crlf { r"\r\n" } else { r"\n" };
        let mut options = String::new();
        if self.crlf {
            options.push_str("  use_crlf\n");
        }
        if self.helo {
            // The prefix is written as given: use_crlf does not touch it.
            options.push_str("  message_prefix = HELO $primary_hostname");
            options.push_str(eol);
            options.push('\n');
        }
        if self.batch_recipients {
            options.push_str("  batch_max = 100\n");
        }
        options
    }
}

/// One message for [`Exim::write_bsmtp`]: exim receives `content` (header
/// and body, LF line ends, as sendmail takes it) from `sender` for
/// `recipients`, adding its Received:, Message-Id: and Date: (and From:
/// when missing) in front, and a final newline when the body lacks one.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// The envelope sender (`-f`); `""` for the null sender.
    pub sender: &'a str,
    /// The envelope recipients.
    pub recipients: &'a [&'a str],
    /// Header and body.
    pub content: &'a [u8],
}

/// A message in exim's queue: its envelope from `exim -bp`, its text from
/// `exim -Mvc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// exim's message ID.
    pub id: String,
    /// The envelope sender without angle brackets; `""` for `<>`.
    pub sender: String,
    /// The recipients not yet delivered, in exim's order.
    pub recipients: Vec<String>,
    /// The message as exim would deliver it (header and body, LF line ends).
    pub message: Vec<u8>,
}

impl Queued {
    /// The body: everything after the first empty line.
    pub fn body(&self) -> &[u8] {
        self.message
            .windows(2)
            .position(|w| w == b"\n\n")
            .map_or(&[][..], |at| &self.message[at + 2..])
    }
}

/// What `exim -bS` made of a batch ([`Exim::read_bsmtp`]).
#[derive(Debug)]
pub struct BsmtpRead {
    /// exim's exit status: 0 when everything was accepted, 1 when some
    /// messages were accepted before an error, 2 when none were.
    pub status: ExitStatus,
    /// The stylized error report (`554 Unexpected end of file`,
    /// `Transaction started in line N`, ...), empty when all went well.
    pub stdout: String,
    /// The same report for humans.
    pub stderr: String,
    /// The messages this batch queued, in arrival order.
    pub queued: Vec<Queued>,
}

impl BsmtpRead {
    /// Everything about this read, for a failure message.
    pub fn explain(&self) -> String {
        format!(
            "{}\n--- queued ---\n{:#?}",
            explain(
                "exim -bS",
                self.status,
                self.stdout.as_bytes(),
                self.stderr.as_bytes()
            ),
            self.queued
        )
    }
}

/// exim with its own configs, spools and logs in one directory. Nothing
/// runs in the background: each call runs exim to completion.
pub struct Exim {
    dir: PathBuf,
    /// The config of the reading side (spool-read), also used for -bV.
    read_config: PathBuf,
    calls: AtomicU32,
}

/// Panics, saying how to fix it, unless exim can run here.
fn check_installed() {
    assert!(
        Uid::effective().is_root(),
        "the exim tests run exim with its own config (-C), which exim allows only root: run them as root"
    );
    let hint = "run ./scripts/test as root: it unpacks Debian's exim4-daemon-light there \
        (apt-get download and dpkg -x: the package conflicts with postfix, so it is never \
        installed), installs the libraries exim needs and creates the user Debian-exim";
    assert!(
        Path::new(EXIM).is_file(),
        "exim is missing ({EXIM} not found); {hint}"
    );
    assert!(
        User::from_name(EXIM_USER).ok().flatten().is_some(),
        "user {EXIM_USER} is missing (exim looks it up at start); {hint}"
    );
}

impl Exim {
    /// Sets up exim in `dir` (created if missing; inside a test's own
    /// directory, e.g. `env.base().join("exim")`) and checks that it runs:
    /// panics, naming `scripts/test`, when exim is not installed.
    pub fn new(dir: &Path) -> Exim {
        check_installed();
        mkdir(dir, 0o755);
        // exim writes its spools, logs and (delivering as the exim user)
        // its batches as EXIM_USER.
        for sub in ["spool-write", "spool-read", "log", "out"] {
            let path = dir.join(sub);
            mkdir(&path, 0o755);
            chown_to(&path, EXIM_USER, None);
        }
        let read_config = dir.join("read.conf");
        // Nothing is delivered from the reading side's queue: the
        // transport's file stays unwritten.
        write_config(
            &read_config,
            dir,
            "spool-read",
            BsmtpStyle::default(),
            &dir.join("out/never-written"),
        );
        let exim = Exim {
            dir: dir.to_owned(),
            read_config,
            calls: AtomicU32::new(0),
        };
        let out = Exim::run(&exim.read_config, &["-bV"], b"");
        assert!(
            out.status.success(),
            "{}\n(exim does not run: run ./scripts/test as root to install what it needs)\n{}",
            explain("exim -bV", out.status, &out.stdout, &out.stderr),
            exim.log()
        );
        exim
    }

    /// The directory this exim works in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Has exim deliver each of `messages` at once (`-odi`) through a router
    /// and an `appendfile` transport with `use_bsmtp` and `style`, all into
    /// one new file, and returns the bytes exim wrote there: the batch as
    /// exim writes it, messages in the given order. Panics with exim's
    /// output and logs unless every delivery completed.
    pub fn write_bsmtp(&self, style: BsmtpStyle, messages: &[Message<'_>]) -> Vec<u8> {
        assert!(!messages.is_empty(), "write_bsmtp: no messages to write");
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let batch = self.dir.join(format!("out/batch-{n}"));
        let config = self.dir.join(format!("write-{n}.conf"));
        write_config(&config, &self.dir, "spool-write", style, &batch);
        for message in messages {
            let sender = if message.sender.is_empty() {
                "<>"
            } else {
                message.sender
            };
            // -oi: a line holding only a dot is content, not the end.
            let mut args = vec!["-odi", "-oi", "-f", sender, "--"];
            args.extend_from_slice(message.recipients);
            let out = Exim::run(&config, &args, message.content);
            assert!(
                out.status.success(),
                "{}\n{}",
                explain("exim -odi", out.status, &out.stdout, &out.stderr),
                self.log()
            );
        }
        let left = self.queue_in(&config);
        assert!(
            left.is_empty(),
            "exim did not deliver everything into {}: still queued {left:#?}\n{}",
            batch.display(),
            self.log()
        );
        self.assert_no_panic();
        std::fs::read(&batch)
            .unwrap_or_else(|err| panic!("read {}: {err}\n{}", batch.display(), self.log()))
    }

    /// Feeds `batch` to `exim -bS` (queue only, `-odq`: nothing is
    /// delivered) as root, a trusted caller whose MAIL senders exim
    /// believes, and returns exim's exit status, its output and the
    /// messages this batch added to its queue. Does not judge the outcome:
    /// a refused batch is a result, see [`BsmtpRead`].
    pub fn read_bsmtp(&self, batch: &[u8]) -> BsmtpRead {
        let before: Vec<String> = self.queue().into_iter().map(|q| q.id).collect();
        let out = Exim::run(&self.read_config, &["-odq", "-bS"], batch);
        self.assert_no_panic();
        let queued = self
            .queue()
            .into_iter()
            .filter(|q| !before.contains(&q.id))
            .collect();
        BsmtpRead {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            queued,
        }
    }

    /// Everything [`Exim::read_bsmtp`] has queued so far, in arrival order.
    pub fn queue(&self) -> Vec<Queued> {
        self.queue_in(&self.read_config)
    }

    /// exim's main and panic logs so far, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "--- exim mainlog ({}) ---\n{}\n--- exim paniclog ---\n{}",
            self.dir.display(),
            read_lossy(&self.dir.join("log/mainlog")),
            read_lossy(&self.dir.join("log/paniclog"))
        )
    }

    /// Runs exim with `config` and `args`, `stdin` as input, bounded.
    fn run(config: &Path, args: &[&str], stdin: &[u8]) -> Output {
        run_timeout(
            Command::new(EXIM).arg("-C").arg(config).args(args),
            stdin,
            COMMAND_TIMEOUT,
        )
    }

    /// The queue of `config`'s spool, in arrival order.
    fn queue_in(&self, config: &Path) -> Vec<Queued> {
        let out = Exim::run(config, &["-bp"], b"");
        assert!(
            out.status.success(),
            "{}\n{}",
            explain("exim -bp", out.status, &out.stdout, &out.stderr),
            self.log()
        );
        let mut queued: Vec<Queued> = parse_queue_listing(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .map(|(id, sender, recipients)| {
                let out = Exim::run(config, &["-Mvc", &id], b"");
                assert!(
                    out.status.success(),
                    "{}\n{}",
                    explain("exim -Mvc", out.status, &out.stdout, &out.stderr),
                    self.log()
                );
                Queued {
                    id,
                    sender,
                    recipients,
                    message: out.stdout,
                }
            })
            .collect();
        queued.sort_by(|a, b| arrival_key(&a.id).cmp(&arrival_key(&b.id)));
        queued
    }

    /// Panics with the logs when exim wrote to its panic log.
    fn assert_no_panic(&self) {
        let panic = read_lossy(&self.dir.join("log/paniclog"));
        assert!(panic.is_empty(), "exim panicked:\n{}", self.log());
    }
}

/// Writes the config `path`: exim in `dir` with the spool `spool` (a
/// subdirectory), whose one router sends every address to a `use_bsmtp`
/// transport of `style` appending to the file `batch`.
fn write_config(path: &Path, dir: &Path, spool: &str, style: BsmtpStyle, batch: &Path) {
    let text = format!(
        "# Written by bsmtp-ssh-tests (tests/src/exim.rs).\n\
         exim_path = {EXIM}\n\
         primary_hostname = {EXIM_HOSTNAME}\n\
         qualify_domain = {EXIM_HOSTNAME}\n\
         spool_directory = {spool}\n\
         log_file_path = {log}/%slog\n\
         keep_environment =\n\
         # Deliver as the exim user without re-executing as root: a -C\n\
         # config would lose root there anyway (and say so in the panic log).\n\
         deliver_drop_privilege = true\n\
         \n\
         begin routers\n\
         \n\
         bsmtp:\n  driver = accept\n  transport = bsmtp\n\
         \n\
         begin transports\n\
         \n\
         bsmtp:\n  driver = appendfile\n  file = {batch}\n  user = {EXIM_USER}\n  \
         mode = 0644\n  use_bsmtp\n{options}",
        spool = dir.join(spool).display(),
        log = dir.join("log").display(),
        batch = batch.display(),
        options = style.transport_options(),
    );
    write_file(path, text, 0o644);
}

/// Sorts exim 4.96 message IDs (`TTTTTT-PPPPPP-FF`: arrival second,
/// process ID, fraction of the second, each in base 62 whose digits sort
/// as ASCII does) by arrival: second, then fraction, then process.
fn arrival_key(id: &str) -> (&str, &str, &str) {
    let mut parts = id.splitn(3, '-');
    let (second, process, fraction) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    (second, fraction, process)
}

/// Parses `exim -bp`: per message a line `AGE SIZE ID <SENDER>` (maybe
/// `*** frozen ***` after it), then one indented line per recipient
/// (`D ` in front of delivered ones, which are left out), then an empty
/// line.
fn parse_queue_listing(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut messages = Vec::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(first) = lines.next() else {
            continue;
        };
        let id = first
            .split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("exim -bp: no message ID in {first:?}"))
            .to_owned();
        let (Some(open), Some(close)) = (first.find('<'), first.rfind('>')) else {
            panic!("exim -bp: no <sender> in {first:?}");
        };
        let sender = first[open + 1..close].to_owned();
        let recipients = lines
            .map(str::trim)
            .filter(|l| !l.starts_with("D "))
            .map(str::to_owned)
            .collect();
        messages.push((id, sender, recipients));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_listing_parses_senders_recipients_and_skips_delivered() {
        let listing =
            " 0m   294 1xYaB5-00075y-2V <alice@leaf.test>\n          bob@hub.test\n        \
                       D carol@hub.test\n\n25m  2.9K 1xYaB5-00075y-2W <> *** frozen ***\n          \
                       dave@hub.test\n\n";
        assert_eq!(
            parse_queue_listing(listing),
            [
                (
                    "1xYaB5-00075y-2V".to_owned(),
                    "alice@leaf.test".to_owned(),
                    vec!["bob@hub.test".to_owned()]
                ),
                (
                    "1xYaB5-00075y-2W".to_owned(),
                    String::new(),
                    vec!["dave@hub.test".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn ids_sort_by_arrival_across_processes() {
        let mut ids = vec!["1xYaB5-00075z-2V", "1xYaB5-00075y-2W", "1xYaB4-00075z-3a"];
        ids.sort_by_key(|id| arrival_key(id));
        assert_eq!(
            ids,
            ["1xYaB4-00075z-3a", "1xYaB5-00075z-2V", "1xYaB5-00075y-2W"]
        );
    }

    #[test]
    fn styles_set_exim_transport_options() {
        assert_eq!(BsmtpStyle::default().transport_options(), "");
        assert_eq!(
            BsmtpStyle::default()
                .crlf()
                .helo()
                .batch_recipients()
                .transport_options(),
            "  use_crlf\n  message_prefix = HELO $primary_hostname\\r\\n\n  batch_max = 100\n"
        );
    }
}
