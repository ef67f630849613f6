//! `bsmtp-ssh sendmail`, also run as `sendmail` (a link or a copy named
//! `/usr/sbin/sendmail`): the sendmail of a satellite with no MTA, a laptop
//! or a container. It takes sendmail's flags for sending mail and the no-op
//! ones mail user agents pass, spools the message (durably, in the spool of
//! store and forward), then tries to hand it to the hub at once over SSH
//! with the Batch SMTP verb and its exactly-once tag.
//!
//! Every address is settled before anything is spooled, as Postfix's
//! sendmail does with `myorigin`: a bare local part (`sendmail root`, what
//! cron, at(1) and `mail root` do) takes `recipient_domain` (a sender:
//! `sender_domain`); what is still not an address the spool and the hub
//! read back is refused at once, with `EX_NOUSER` (67) for the command
//! line's and `EX_DATAERR` (65) for the `-t` headers', and nothing is
//! spooled. A message that is spooled can always be sent.
//!
//! - The hub took it: exit 0, nothing printed (Emacs's `sendmail-send-it`
//!   takes any output as a failure).
//! - The hub refused it for good: the reply on standard error and an exit
//!   status mail user agents understand (`EX_NOUSER`, `EX_NOPERM`,
//!   `EX_UNAVAILABLE`), nothing kept.
//! - The hub is not reachable, or deferred it: it stays spooled, exit 0,
//!   nothing printed; `bsmtp-ssh flush` (a timer) sends it later, and what
//!   the hub then refuses comes back to the sender as a notice through the
//!   hub.
//!
//! The configuration is the first of `$BSMTP_SSH_CONFIG`,
//! `~/.config/bsmtp-ssh/bsmtp-ssh.conf` and `/etc/bsmtp-ssh/bsmtp-ssh.conf`.
//! Each user with a key of their own (readable by them alone) is the safe
//! setup: see bsmtp-ssh(8), "Satellites".

use std::io::{Read, Write};
use std::path::PathBuf;

use bsmtp::dsn::{parse_notify, MailDsn, RcptDsn, Ret};
use bsmtp::reply::EnhancedCode;
use bsmtp::sendmail::{self, Flags};
use bsmtp_session::forward::{self, Bouncer, Settings, Undeliverable};
use bsmtp_session::message::Submission;
use bsmtp_session::spool::{Entry, NewMessage, Spool, SpoolError};
use clap::Args as ClapArgs;
use sysexits::ExitCode;

use crate::config::ConfigFile;

/// `bsmtp-ssh sendmail`.
#[derive(Debug, ClapArgs)]
#[command(disable_help_flag = true)]
pub struct SendmailArgs {
    /// sendmail's own flags (-f SENDER, -r SENDER, -F NAME, -t, -i, -oi,
    /// -N NOTIFY, -R RET, -V ENVID, -B 7BIT|8BITMIME, --, and the no-op
    /// -oem, -odi, -m, -v...) and the recipients.
    #[arg(
        value_name = "ARG",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// Where the config is: `$BSMTP_SSH_CONFIG`, else the user's own, else
/// the system's.
pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os("BSMTP_SSH_CONFIG") {
        return PathBuf::from(path);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let own = PathBuf::from(home).join(".config/bsmtp-ssh/bsmtp-ssh.conf");
        if own.is_file() {
            return own;
        }
    }
    PathBuf::from(crate::config::DEFAULT_CONFIG)
}

/// Runs sendmail; messages for the user go to `err`; returns the exit
/// status.
pub fn run(args: &SendmailArgs, input: &mut impl Read, err: &mut impl Write) -> u8 {
    let invocation = match sendmail::parse(&args.args, Flags::Satellite) {
        Ok(invocation) => invocation,
        Err(e) => return say(err, ExitCode::Usage, &e.to_string()),
    };
    let path = config_path();
    let file = match ConfigFile::load(&path) {
        Ok(file) => file,
        Err(text) => return say(err, ExitCode::Config, &text),
    };
    // Logs go to syslog only: a mail user agent takes any output as failure.
    bsmtp_session::logging::init(
        "bsmtp-ssh",
        false,
        bsmtp_session::logging::Fallback::Discard,
        &bsmtp_session::logging::Target {
            postfix_config: None,
            postlog: None,
        },
    );
    match send(&file, &invocation, input) {
        Ok(()) => 0,
        Err((status, text)) => say(err, status, &text),
    }
}

fn say(err: &mut impl Write, status: ExitCode, text: &str) -> u8 {
    let _ = writeln!(err, "sendmail: {}", bsmtp::text::one_line(text));
    status as u8
}

/// The peer satellites send to: `sendmail_peer`, else the only one (a
/// bastion, named by a `proxy_jump`, is not a peer to send to).
fn peer_name(file: &ConfigFile) -> Result<String, String> {
    if let Some(name) = &file.sendmail_peer {
        return Ok(name.clone());
    }
    let bastions = file.bastions();
    let mut names = file
        .peer
        .keys()
        .filter(|name| !bastions.contains(&name.as_str()));
    match (names.next(), names.next()) {
        (Some(only), None) => Ok(only.clone()),
        _ => {
            Err("set sendmail_peer in the config: which [peer.NAME] takes this host's mail".into())
        }
    }
}

/// The sender when `-f` is not given: the login name at `sender_domain`
/// (default: the host name).
fn default_sender(file: &ConfigFile) -> String {
    let login = login_name();
    bsmtp::address::qualify(&login, &file.sender_domain())
}

/// Who runs us: `$LOGNAME`, `$USER`, else the password file's name for
/// our user ID.
fn login_name() -> String {
    std::env::var("LOGNAME")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "nobody".into())
}

/// Where an address came from, for the refusal of one that is not valid.
#[derive(Clone, Copy)]
enum Source {
    /// `-f`/`-r`, or the login name.
    Sender,
    /// The command line.
    Argument,
    /// A `To:`, `Cc:` or `Bcc:` header, with `-t`.
    Header,
}

/// `address` qualified with `domain` when it is a bare local part, if
/// the result is an address the spool and the hub read back; else the
/// refusal: `EX_NOUSER` for the command line's, `EX_DATAERR` for the
/// message's own headers.
fn settle(address: &str, domain: &str, source: Source) -> Result<String, (ExitCode, String)> {
    let qualified = bsmtp::address::qualify(address, domain);
    if qualified.is_empty() || bsmtp::address::is_wire_form(&qualified) {
        return Ok(qualified);
    }
    let shown = bsmtp::text::printable(address.as_bytes());
    Err(match source {
        Source::Sender => (
            ExitCode::NoUser,
            format!("<{shown}>: malformed sender address; give -f user@domain (nothing was sent)"),
        ),
        Source::Argument => (
            ExitCode::NoUser,
            format!("<{shown}>: malformed recipient address; give user@domain, or a bare user name (nothing was sent)"),
        ),
        Source::Header => (
            ExitCode::DataErr,
            format!("<{shown}>: malformed recipient address in the To:, Cc: or Bcc: header (-t); write \"Name <user@domain>\" or user@domain, separated by commas (nothing was sent)"),
        ),
    })
}

/// Spools the message, then tries the hub.
fn send(
    file: &ConfigFile,
    invocation: &sendmail::Invocation,
    input: &mut impl Read,
) -> Result<(), (ExitCode, String)> {
    let config = |text: String| (ExitCode::Config, text);
    let name = peer_name(file).map_err(config)?;
    // The sender first: -F puts it into a From: header.
    let sender_domain = file.sender_domain();
    let mut invocation = invocation.clone();
    invocation.sender = match invocation.sender.take() {
        Some(sender) => Some(settle(&sender, &sender_domain, Source::Sender)?),
        None => None,
    };
    let default_sender = settle(&default_sender(file), &sender_domain, Source::Sender)?;
    let mut submission = Submission::read(&invocation, &default_sender, input)
        .map_err(|e| (ExitCode::IoErr, format!("reading the message: {e}")))?;
    let recipient_domain = file.recipient_domain();
    let given = invocation.recipients.len();
    submission.recipients = submission
        .recipients
        .iter()
        .enumerate()
        .map(|(i, to)| {
            let source = if i < given {
                Source::Argument
            } else {
                Source::Header
            };
            settle(to, &recipient_domain, source)
        })
        .collect::<Result<_, _>>()?;
    let notify = match &invocation.notify {
        Some(value) => Some(parse_notify(value).ok_or_else(|| {
            (
                ExitCode::Usage,
                format!("-N {value}: use never, or some of success,delay,failure"),
            )
        })?),
        None => None,
    };
    let recipients: Vec<String> = submission.recipients.clone();
    if recipients.is_empty() {
        return Err((
            ExitCode::Usage,
            "no recipients (none on the command line, none in the headers with -t)".into(),
        ));
    }
    let message = NewMessage {
        sender: submission.sender.clone(),
        queue_id: Some(unique_id()),
        dsn: MailDsn {
            ret: invocation.ret.as_deref().and_then(Ret::parse),
            envid: invocation.envid.clone(),
        },
        recipient_dsn: recipients
            .iter()
            .map(|_| RcptDsn {
                notify: notify.clone(),
                orcpt: None,
            })
            .collect(),
        recipients,
    };
    let spool = Spool::new(&file.spool_directory(), &name);
    let id = spool
        .enqueue(&message, &mut submission.content(), file.min_free(), 0)
        .map_err(|e| match e {
            SpoolError::NoRoom { .. } => (ExitCode::TempFail, e.to_string()),
            SpoolError::BadAddress(_) => (ExitCode::NoUser, e.to_string()),
            SpoolError::Io(_) => (
                ExitCode::CantCreat,
                format!("cannot spool the message ({e}); set spool_directory to a directory this user can write"),
            ),
        })?;
    deliver_now(file, &name, &spool, &id)
}

/// Tries the hub once; what it does not take stays spooled.
fn deliver_now(
    file: &ConfigFile,
    name: &str,
    spool: &Spool,
    id: &str,
) -> Result<(), (ExitCode, String)> {
    let Ok(Some(_lock)) = spool.lock() else {
        // A flush is running: it takes the message along.
        return Ok(());
    };
    let peer = file.peer(name).map_err(|text| (ExitCode::Config, text))?;
    let mut refusals = Refusals::default();
    let sent = crate::flush::spool_session(file, &peer, |session| {
        let settings = Settings {
            lifetime: std::time::Duration::MAX,
            window: 1,
        };
        forward::send(
            spool,
            &[id.to_owned()],
            session,
            &mut refusals,
            &settings,
            &mut |_, _| {},
        )
        .map_err(|(_, failure)| failure)
    });
    if let Err(failure) = sent {
        // Queued: the next flush sends it.
        log::info!("{id}: hub not reached, spooled for flush: {failure}");
        forward::note_failure(spool, &[id.to_owned()], &failure);
        return Ok(());
    }
    match refusals.first {
        None => Ok(()),
        Some((to, status, text)) => Err((exit_status(status), format!("<{to}>: {text}"))),
    }
}

/// The exit status a mail user agent understands for a refusal for good:
/// about the address `EX_NOUSER`, about policy `EX_NOPERM`, else
/// `EX_UNAVAILABLE`.
fn exit_status(status: EnhancedCode) -> ExitCode {
    match status.subject {
        1 => ExitCode::NoUser,
        7 => ExitCode::NoPerm,
        _ => ExitCode::Unavailable,
    }
}

/// Collects the hub's refusals for the user instead of sending notices:
/// the user is there to read them.
#[derive(Default)]
struct Refusals {
    first: Option<(String, EnhancedCode, String)>,
}

impl Bouncer for Refusals {
    fn bounce(&mut self, _: &Spool, entry: &Entry, failed: &[Undeliverable]) -> Result<(), String> {
        for failure in failed {
            let report = &failure.report;
            let text = report
                .diagnostic
                .as_ref()
                .map_or_else(|| report.reason.clone(), |(_, text)| text.clone());
            self.first.get_or_insert((
                entry.recipients[failure.index].clone(),
                report.status,
                text,
            ));
        }
        Ok(())
    }
}

/// An ID for the exactly-once tag, letters and digits: unique per host
/// (time and process).
fn unique_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "S{:x}{:08x}{:x}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (audit M4): `sendmail root` was spooled unqualified and
    /// never sent. A bare name takes `recipient_domain`, which defaults to
    /// `sender_domain`; a malformed address is refused, 67 from the
    /// command line, 65 from `-t` headers.
    #[test]
    fn bare_names_are_qualified_and_bad_addresses_refused() {
        let file: ConfigFile = toml::from_str("sender_domain = \"leaf.test\"\n").unwrap();
        assert_eq!(file.recipient_domain(), "leaf.test");
        let own: ConfigFile =
            toml::from_str("sender_domain = \"leaf.test\"\nrecipient_domain = \"hub.test\"\n")
                .unwrap();
        assert_eq!(own.recipient_domain(), "hub.test");
        let ok = |address, source| settle(address, "leaf.test", source).map_err(|(_, t)| t);
        assert_eq!(ok("root", Source::Argument).unwrap(), "root@leaf.test");
        assert_eq!(ok("bob@hub.test", Source::Header).unwrap(), "bob@hub.test");
        assert_eq!(ok("", Source::Sender).unwrap(), "");
        for (address, source, status) in [
            ("John Smith john@x", Source::Header, ExitCode::DataErr),
            ("John Smith john@x", Source::Argument, ExitCode::NoUser),
            ("a b", Source::Sender, ExitCode::NoUser),
            ("x@", Source::Argument, ExitCode::NoUser),
        ] {
            let (got, text) = settle(address, "leaf.test", source).unwrap_err();
            assert_eq!(got as u8, status as u8, "{address}: {text}");
            assert!(text.contains("nothing was sent"), "{text}");
        }
    }
}
