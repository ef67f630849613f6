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

use bsmtp::codec::{Command, Param, MAX_ADDRESS};
use bsmtp::reply::Reply;
use bsmtp::status::{Failure, FailureKind};
use log::info;

use crate::client::Client;
use crate::config::Peer;
use crate::ssh;

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
    /// Refuses addresses no hub could take; these bounce.
    pub fn check(&self) -> Result<(), Failure> {
        if self.recipients.is_empty() {
            return Err(Failure::new(
                FailureKind::Config,
                "no recipients on the command line: pipe(8)'s argv must end with -- ${recipient}",
            ));
        }
        for (what, address) in std::iter::once(("sender", &self.sender))
            .chain(self.recipients.iter().map(|r| ("recipient", r)))
        {
            let bad = address.len() > MAX_ADDRESS
                || address
                    .chars()
                    .any(|c| c.is_control() || c == '<' || c == '>')
                || (what == "recipient" && address.is_empty());
            if bad {
                return Err(Failure::new(
                    FailureKind::BadEnvelope,
                    format!(
                        "malformed {what} address <{}>",
                        bsmtp::status::one_line(address)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Delivers `content` to `peer`.
pub fn deliver(
    peer: &Peer,
    envelope: &Envelope,
    content: &mut impl Read,
) -> Result<Delivered, Failure> {
    envelope.check()?;
    let started = Instant::now();
    let ssh::Connection {
        session,
        channel,
        relay,
    } = ssh::connect(peer)?;
    let mut client = Client::new(channel, relay.clone());
    let result = transaction(&mut client, envelope, content);
    let mut channel = client.into_inner().0;
    // Best effort: the outcome is already decided by the replies.
    let _ = channel.send_eof();
    let _ = channel.close();
    let _ = session.disconnect(None, "done", None);
    let delay = started.elapsed().as_secs_f64();
    let queue_id = envelope.queue_id.as_deref().unwrap_or("NOQUEUE");
    for recipient in &envelope.recipients {
        match &result {
            Ok(reply) => info!(
                "{queue_id}: to=<{recipient}>, relay={relay}, delay={delay:.2}, status=sent ({})",
                reply.one_line()
            ),
            Err(failure) => info!(
                "{queue_id}: to=<{recipient}>, relay={relay}, delay={delay:.2}, status={} ({})",
                if failure.is_transient() {
                    "deferred"
                } else {
                    "bounced"
                },
                failure.text
            ),
        }
    }
    result.map(|reply| Delivered { relay, reply })
}

fn transaction<S: Read + Write>(
    client: &mut Client<S>,
    envelope: &Envelope,
    content: &mut impl Read,
) -> Result<Reply, Failure> {
    client.send(&Command::Ehlo(helo_name()));
    client.flush()?;
    let ehlo = client.read_reply()?;
    if !ehlo.is_positive() {
        return Err(remote(client, "EHLO", ehlo));
    }
    let extensions: Vec<String> = ehlo
        .lines
        .iter()
        .skip(1)
        .map(|l| l.to_ascii_uppercase())
        .collect();
    let has = |name: &str| {
        extensions
            .iter()
            .any(|e| e == name || e.starts_with(&format!("{name} ")))
    };
    let mut params = Vec::new();
    if let (Some(size), true) = (envelope.size, has("SIZE")) {
        params.push(Param {
            keyword: "SIZE".into(),
            value: Some(size.to_string()),
        });
    }
    let utf8 = !envelope.sender.is_ascii() || envelope.recipients.iter().any(|r| !r.is_ascii());
    if utf8 && has("SMTPUTF8") {
        params.push(Param {
            keyword: "SMTPUTF8".into(),
            value: None,
        });
    }
    client.send(&Command::Mail {
        from: envelope.sender.clone(),
        params,
    });
    for recipient in &envelope.recipients {
        client.send(&Command::Rcpt {
            to: recipient.clone(),
            params: Vec::new(),
        });
    }
    client.flush()?;
    // Read every reply before judging, so the stream stays in step.
    let mail = client.read_reply()?;
    let mut rcpt_replies = Vec::new();
    for _ in &envelope.recipients {
        rcpt_replies.push(client.read_reply()?);
    }
    if !mail.is_positive() {
        return Err(remote(client, "MAIL FROM", mail));
    }
    let refused = rcpt_replies
        .iter()
        .find(|r| r.is_transient())
        .or_else(|| rcpt_replies.iter().find(|r| !r.is_positive()));
    if let Some(refused) = refused {
        let refused = refused.clone();
        client.send(&Command::Rset);
        client.send(&Command::Quit);
        let _ = client.flush();
        return Err(remote(client, "RCPT TO", refused));
    }
    client.send(&Command::Data);
    client.send_body(content)?;
    client.flush()?;
    let data = client.read_reply()?;
    if data.code != 354 {
        return Err(remote(client, "DATA", data));
    }
    let fin = client.read_reply()?;
    if fin.code != 250 {
        return Err(remote(client, "end of DATA", fin));
    }
    client.send(&Command::Quit);
    if client.flush().is_ok() {
        let _ = client.read_reply();
    }
    Ok(fin)
}

/// The name we give in EHLO: this host's name.
pub fn helo_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A refusal from the hub, kept whole so its enhanced code decides.
fn remote<S: Read + Write>(client: &Client<S>, stage: &str, reply: Reply) -> Failure {
    let text = format!(
        "{} said: {} (in reply to {stage})",
        client.relay(),
        reply.one_line()
    );
    Failure::new(FailureKind::Remote(reply), text)
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
    let _ = writeln!(out, "{}", bsmtp::status::one_line(&line));
    let _ = out.flush();
}
