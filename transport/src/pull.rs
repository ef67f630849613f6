//! `bsmtp-ssh pull PEER`: a leaf that accepts no inbound connection logs in
//! to its hub and fetches the mail the hub spooled for it. The roles turn
//! over on the channel: the hub's rsmtp sends BSMTP transactions, and we
//! are the server that injects each into the local Postfix (the same
//! server session and postdrop injector as rsmtp) and acknowledges it. The
//! hub removes a message only after our `250`, and our tag store
//! recognises a message sent again after a lost `250`.

use std::io::{Read, Write};
use std::path::PathBuf;

use bsmtp::status::{Failure, FailureKind};
use bsmtp_session::main_cf::MainCf;
use bsmtp_session::policy::{Policy, SenderPattern};
use bsmtp_session::postdrop::{MinFree, PostdropInjector};
use bsmtp_session::server::{Receiver, Settings};
use bsmtp_session::ssh;
use bsmtp_session::tags::{self, TagStore};
use clap::Args as ClapArgs;
use sysexits::ExitCode;

use crate::config::ConfigFile;

/// `bsmtp-ssh pull`.
#[derive(Debug, ClapArgs)]
pub struct PullArgs {
    /// Configuration file naming the peer.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log debug lines too.
    #[arg(short, long)]
    pub verbose: bool,
    /// The hub to pull from: a [peer.NAME] section.
    #[arg(value_name = "PEER")]
    pub peer: String,
}

/// Runs `pull`; returns the exit status: 0 when the hub's session ended
/// cleanly, 75 when it could not be reached or was cut (what was not
/// acknowledged stays on the hub), 78 for a config error.
pub fn run(args: &PullArgs, out: &mut impl Write) -> u8 {
    let file = match ConfigFile::load_for_command("pull", &args.config, args.verbose, out) {
        Ok(file) => file,
        Err(status) => return status,
    };
    match pull(&file, &args.peer) {
        Ok(accepted) => {
            if accepted > 0 {
                let _ = writeln!(out, "{}: {accepted} message(s) pulled", args.peer);
            }
            0
        }
        Err(failure) => {
            log::warn!("pull {}: {failure}", args.peer);
            let _ = writeln!(out, "{}: {failure}", args.peer);
            if failure.kind == FailureKind::Config {
                ExitCode::Config as u8
            } else {
                ExitCode::TempFail as u8
            }
        }
    }
}

/// Pulls from `name`; returns how many messages were queued locally.
fn pull(file: &ConfigFile, name: &str) -> Result<usize, Failure> {
    let peer = file
        .peer(name)
        .map_err(|text| Failure::new(FailureKind::Config, text))?;
    let postfix_config = file.postfix_config();
    let main_cf = MainCf::load(&postfix_config);
    let settings = receiver_settings(file, name, &main_cf);
    let injector = PostdropInjector {
        command: file.postdrop_command(),
        min_free: match file.min_free() {
            0 => None,
            bytes => Some(MinFree {
                queue_directory: main_cf.queue_directory(),
                bytes,
            }),
        },
    };
    let mut connection = ssh::connect(&peer, "pull")?;
    let mut reader = connection.channel.reader();
    let first = first_line(&mut reader).map_err(|err| {
        Failure::new(
            FailureKind::PeerProtocol,
            format!("{} said nothing: {err}", connection.relay),
        )
    })?;
    refused(&first, &connection.relay)?;
    let mut input = std::io::Cursor::new(first).chain(reader);
    let summary = Receiver::new(settings, injector)
        .run(&mut input, &mut connection.channel)
        .map_err(|err| {
            Failure::new(
                FailureKind::PeerProtocol,
                format!("session with {} broke: {err}", connection.relay),
            )
        })?;
    let _ = connection.session.disconnect(None, "done", None);
    log::info!(
        "pull from {}: accepted={} rejected={} refused_commands={}",
        connection.relay,
        summary.accepted,
        summary.rejected,
        summary.refused
    );
    if summary.truncated {
        return Err(Failure::new(
            FailureKind::PeerProtocol,
            format!(
                "{} ended the session inside a message; it stays on the hub for the next pull",
                connection.relay
            ),
        ));
    }
    Ok(summary.accepted)
}

/// The hub's first line, read byte by byte (nothing past it is consumed).
fn first_line(reader: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        if reader.read(&mut byte)? == 0 {
            break;
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    Ok(line)
}

/// A pull session starts with the hub's EHLO. A reply instead is rsmtp
/// refusing the verb (not granted to this key, or a hub that knows no
/// pull): an admin must fix the key's forced command, so say so.
fn refused(first: &[u8], relay: &str) -> Result<(), Failure> {
    let is_reply = first.len() >= 4
        && first[..3].iter().all(u8::is_ascii_digit)
        && matches!(first[3], b' ' | b'-');
    if !is_reply {
        return Ok(());
    }
    Err(Failure::new(
        FailureKind::Config,
        format!(
            "{relay} refused the pull: {}; grant it on the hub with --allow-verb pull in this key's forced command (or allow_verb in rsmtp.conf)",
            bsmtp::text::printable(first.trim_ascii_end())
        ),
    ))
}

/// The server session's settings: the hub is trusted with any sender and
/// recipient domain (it routed the mail here), within the local Postfix's
/// size and recipient limits (`smtpd_recipient_limit`: a hostile hub
/// cannot grow the leaf without bound; the recipients past it are
/// deferred and come in a later transaction); committed tags are kept so
/// that a resend is recognised.
/// Routing forms are refused unless the peer's section allows them: the
/// hub routed `user%elsewhere@leaf` here by its domain, and our Postfix,
/// for which that domain is local, would relay it to `elsewhere`.
fn receiver_settings(file: &ConfigFile, name: &str, main_cf: &MainCf) -> Settings {
    let limit = main_cf.message_size_limit();
    let policy = Policy {
        peer: name.to_owned(),
        allow_sender: vec![SenderPattern::Any],
        allow_recipient: Vec::new(),
        max_size: if limit == 0 { u64::MAX } else { limit },
        max_recipients: usize::try_from(main_cf.number("smtpd_recipient_limit", 1000))
            .unwrap_or(1000)
            .max(1),
        max_size_set: false,
        hard_error_limit: None,
        check_header_from: false,
        allow_routing_forms: file
            .peer
            .get(name)
            .and_then(|section| section.allow_routing_forms)
            .unwrap_or(false),
    };
    let error_limit = usize::try_from(main_cf.number("smtpd_hard_error_limit", 20)).unwrap_or(20);
    let mut settings = Settings::new(crate::deliver::helo_name(), policy, error_limit.max(1));
    let dir = file
        .tag_directory
        .clone()
        .unwrap_or_else(|| PathBuf::from(tags::DEFAULT_DIRECTORY));
    if !dir.as_os_str().is_empty() {
        settings.tags = TagStore::open(&dir, name, tags::DEFAULT_LIFETIME, tags::DEFAULT_LIMIT)
            .inspect_err(|err| {
                log::warn!(
                    "pull {name}: transaction tags off ({err}): a message sent again after a lost acknowledgement could be queued twice; create {} writable by this account, or set tag_directory",
                    dir.display()
                );
            })
            .ok();
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (audit H1, pull): mail the hub routed here by its domain
    /// is refused when its local part routes elsewhere, unless the hub's
    /// section opts in; this host's Postfix would otherwise relay it.
    #[test]
    fn pulled_routing_forms_are_refused_unless_the_section_allows_them() {
        let file: ConfigFile = toml::from_str(
            "tag_directory = \"\"\n[peer.hub]\nhost = \"a\"\n\
             [peer.open]\nhost = \"b\"\nallow_routing_forms = true\n",
        )
        .unwrap();
        let main_cf = MainCf::parse("message_size_limit = 0\nsmtpd_hard_error_limit = 20\n");
        let check = |name: &str| {
            receiver_settings(&file, name, &main_cf)
                .policy
                .check_recipient("victim%external.test@leaf.test")
                .is_ok()
        };
        assert!(!check("hub"));
        assert!(check("open"));
        let plain = receiver_settings(&file, "hub", &main_cf)
            .policy
            .check_recipient("alice@leaf.test");
        assert_eq!(plain, Ok(()));
    }

    /// Audit L4: a hostile hub cannot send unbounded recipients in one
    /// transaction: the local `smtpd_recipient_limit` applies.
    #[test]
    fn pulled_recipients_are_bounded_by_smtpd_recipient_limit() {
        let file: ConfigFile =
            toml::from_str("tag_directory = \"\"\n[peer.hub]\nhost = \"a\"\n").unwrap();
        let limit = |text: &str| {
            receiver_settings(&file, "hub", &MainCf::parse(text))
                .policy
                .max_recipients
        };
        assert_eq!(limit("smtpd_recipient_limit = 50\n"), 50);
        assert_eq!(limit(""), 1000);
    }
}
