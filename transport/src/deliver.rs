//! pipe(8) mode: one message from Postfix, delivered over one SSH session.
//!
//! Success means the hub's rsmtp answered `250` after the terminating dot,
//! which it does only after postdrop committed the queue file. Nothing else
//! counts: libssh2 reports exit status 0 when the server sent none.
//!
//! One pipe(8) invocation has one status for all its recipients, so when
//! the hub refuses any recipient we deliver to none and report the worst
//! reply (a 4xx defers them all, else the 5xx bounces them all). With
//! `<transport>_destination_recipient_limit = 1`, as the snippets set, every
//! recipient gets its own result.

use std::io::{Read, Write};
use std::time::Instant;

use bsmtp::dsn::{valid_envid, MailDsn};
use bsmtp::reply::Reply;
use bsmtp::status::{Failure, FailureKind};
use bsmtp::tag::Tag;
use bsmtp_session::client::{self, ClientSession};
use bsmtp_session::pins::{self, Pins};
use bsmtp_session::ssh::{self, Peer};

/// One message's envelope as Postfix's pipe(8) gives it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// `${sender}`; empty for the null sender.
    pub sender: String,
    /// `${recipient}`, one or more.
    pub recipients: Vec<String>,
    /// `${queue_id}`, for logs.
    pub queue_id: Option<String>,
    /// `${size}`, announced with SIZE when the hub supports it.
    pub size: Option<u64>,
    /// `${envid}` (Postfix 3.9 and later): the sender's DSN envelope ID,
    /// passed on as `ENVID=` so the hub's DSNs carry it. pipe(8) has no
    /// macros for `RET`, `NOTIFY` or `ORCPT`; those stay on the leaf.
    pub envid: Option<String>,
}

/// A delivery the hub took.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// `name[address]:port`.
    pub relay: String,
    /// The hub's final reply.
    pub reply: Reply,
}

impl Envelope {
    /// Refuses addresses no hub could take (these bounce) and returns the
    /// envelope in its SMTP (external) form.
    pub fn check(&self) -> Result<Envelope, Failure> {
        if self.recipients.is_empty() {
            return Err(Failure::new(
                FailureKind::Config,
                "no recipients on the command line: pipe(8)'s argv must end with -- ${recipient}",
            ));
        }
        let sender = if self.sender.is_empty() {
            String::new()
        } else {
            wire_address("sender", &self.sender)?
        };
        let recipients = self
            .recipients
            .iter()
            .map(|r| wire_address("recipient", r))
            .collect::<Result<_, _>>()?;
        // Postfix checked the ID when it took the message; one that is not
        // valid anyway is dropped rather than failing the delivery.
        let envid = self.envid.clone().filter(|id| !id.is_empty()).filter(|id| {
            let valid = valid_envid(id);
            if !valid {
                log::warn!(
                    "envelope ID is not valid, not passed on: {}",
                    bsmtp::text::one_line(id)
                );
            }
            valid
        });
        Ok(Envelope {
            sender,
            recipients,
            envid,
            ..self.clone()
        })
    }
}

/// The form of `address` that goes into MAIL FROM or RCPT TO. pipe(8) with
/// the shipped `flags=q` gives the external (quoted) form, which is used as
/// it is; without `q` it gives Postfix's internal form, whose local part we
/// quote (`john doe@x` becomes `"john doe"@x`). An address that is valid in
/// neither form bounces with 5.1.3.
fn wire_address(what: &str, address: &str) -> Result<String, Failure> {
    if bsmtp::address::is_wire_form(address) {
        return Ok(address.to_owned());
    }
    let quoted = bsmtp::address::to_external(address);
    if bsmtp::address::is_wire_form(&quoted) {
        return Ok(quoted);
    }
    Err(Failure::new(
        FailureKind::BadEnvelope,
        format!(
            "malformed {what} address <{}>",
            bsmtp::text::one_line(address)
        ),
    ))
}

/// Delivers `content` to `peer`: to the first of its hubs that answers,
/// or, when `pins` says a hub may hold this message already (an earlier
/// try lost its acknowledgement), to that hub only.
pub fn deliver(
    peer: &Peer,
    pins: Option<&Pins>,
    envelope: &Envelope,
    content: &mut impl Read,
) -> Result<Delivered, Failure> {
    let envelope = &envelope.check()?;
    let started = Instant::now();
    let session_envelope = envelope.to_session();
    // Pins are kept for tagged messages only: without a tag no hub can
    // recognise a retry anyway.
    let tag = session_envelope.tag.as_ref().map(Tag::as_str);
    let mut route = pins::Route::new(pins, tag, "this message");
    let ssh::Connection {
        session,
        channel,
        relay,
        hub: hub_name,
    } = route.connect(peer)?;
    let result = ClientSession::start(channel, relay.clone(), &helo_name()).and_then(|mut hub| {
        route.pin_to(&hub_name)?;
        let outcome = hub
            .send_message(&session_envelope, content)
            .map(|outcome| outcome.all_or_nothing(&relay));
        if let Ok(result) = &outcome {
            // Every reply read: the hub's answer decides, unless it says
            // "later" to a retry of a lost acknowledgement (the first try
            // may still be committing there).
            route.settle(result.as_ref().err());
        }
        let _ = hub.quit();
        outcome?
    });
    // Best effort: the outcome is already decided by the replies.
    let _ = session.disconnect(None, "done", None);
    let delay = started.elapsed().as_secs_f64();
    let queue_id = envelope.queue_id.as_deref().unwrap_or("NOQUEUE");
    for recipient in &envelope.recipients {
        crate::report::delivery(queue_id, recipient, &relay, delay, &result);
    }
    result.map(|reply| Delivered { relay, reply })
}

impl Envelope {
    /// The session's envelope, with the exactly-once tag of this delivery.
    fn to_session(&self) -> client::Envelope {
        client::Envelope {
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            size: self.size,
            eight_bit: false,
            smtputf8: false,
            dsn: MailDsn {
                ret: None,
                envid: self.envid.clone(),
            },
            recipient_dsn: Vec::new(),
            tag: self
                .queue_id
                .as_deref()
                .and_then(|id| Tag::mint(id, &self.sender, &self.recipients, self.size)),
        }
    }
}

/// The name we give in EHLO: this host's name.
pub fn helo_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Prints pipe(8)'s status line: the first thing Postfix sees of our output.
pub fn status_line(out: &mut impl Write, result: &Result<Delivered, Failure>) {
    let line = match result {
        Ok(done) => format!(
            "{} delivered via {}: {}",
            done.reply.status(),
            done.relay,
            done.reply.one_line()
        ),
        Err(failure) => failure.to_string(),
    };
    let _ = writeln!(out, "{}", bsmtp::text::one_line(&line));
    let _ = out.flush();
}
