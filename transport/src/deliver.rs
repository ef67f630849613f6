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

use bsmtp::codec::{encode_command, Command, Param, MAX_ADDRESS};
use bsmtp::reply::Reply;
use bsmtp::status::{Failure, FailureKind};
use log::info;

use bsmtp_session::client::Client;
use bsmtp_session::ssh;
use bsmtp_session::ssh::Peer;

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
        Ok(Envelope {
            sender,
            recipients,
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
    let valid = |candidate: &str| {
        let mut line = Vec::new();
        encode_command(
            &Command::Rcpt {
                to: candidate.to_owned(),
                params: Vec::new(),
            },
            &mut line,
        );
        candidate.len() <= MAX_ADDRESS
            && Command::parse(line.strip_suffix(b"\r\n").unwrap_or(&line))
                .is_ok_and(|parsed| matches!(parsed, Command::Rcpt { to, .. } if to == candidate))
    };
    if valid(address) {
        return Ok(address.to_owned());
    }
    let quoted = bsmtp::address::to_external(address);
    if valid(&quoted) {
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

/// Delivers `content` to `peer`.
pub fn deliver(
    peer: &Peer,
    envelope: &Envelope,
    content: &mut impl Read,
) -> Result<Delivered, Failure> {
    let envelope = &envelope.check()?;
    let started = Instant::now();
    let ssh::Connection {
        session,
        channel,
        relay,
    } = ssh::connect(peer, &peer.command)?;
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
    let reply = client.read_reply()?;
    let ehlo = greeting(client, reply)?;
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
    expect(client, "MAIL FROM", mail, |code| code / 100 == 2)?;
    if let Some(odd) = rcpt_replies
        .iter()
        .find(|r| !(r.code / 100 == 2 || r.is_transient() || r.is_permanent()))
    {
        return Err(out_of_step(client, "RCPT TO", odd));
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
    expect(client, "DATA", data, |code| code == 354)?;
    let fin = client.read_reply()?;
    let fin = expect(client, "end of DATA", fin, |code| code == 250)?;
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

/// `reply` if `wanted` accepts its code; else a refusal (4xx, 5xx), or for
/// any other code a protocol error: a 2xx where 354 was due, a 3xx after
/// the dot or a 220 greeting means the replies are out of step with our
/// commands (a receiver that is not rsmtp), and nothing it says can be
/// trusted. That defers (4.5.0); taking its class would bounce the mail.
fn expect<S: Read + Write>(
    client: &Client<S>,
    stage: &str,
    reply: Reply,
    wanted: impl Fn(u16) -> bool,
) -> Result<Reply, Failure> {
    if wanted(reply.code) {
        return Ok(reply);
    }
    if reply.is_transient() || reply.is_permanent() {
        return Err(remote(client, stage, reply));
    }
    Err(out_of_step(client, stage, &reply))
}

fn out_of_step<S: Read + Write>(client: &Client<S>, stage: &str, reply: &Reply) -> Failure {
    Failure::new(
        FailureKind::PeerProtocol,
        format!(
            "{} answered {stage} with an unexpected reply: {}; is the key's forced command rsmtp?",
            client.relay(),
            reply.one_line()
        ),
    )
}

/// The reply to EHLO, which opens the session: anything but 250 means the
/// peer will take no mail at all on this session. A refusal (rsmtp refusing
/// the SSH command we asked for, a peer not granted this verb) is a
/// configuration fault on one side, never the message's: it defers (4.3.5)
/// even when the hub said 5xx, or every queued message would bounce.
fn greeting<S: Read + Write>(client: &Client<S>, reply: Reply) -> Result<Reply, Failure> {
    if reply.code == 250 {
        return Ok(reply);
    }
    if reply.is_transient() || reply.is_permanent() {
        return Err(Failure::new(
            FailureKind::Config,
            format!(
                "{} refused the session: {} (in reply to EHLO); check the peer's command setting and the key's forced command on the hub",
                client.relay(),
                reply.one_line()
            ),
        ));
    }
    expect(client, "EHLO", reply, |_| false)
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
