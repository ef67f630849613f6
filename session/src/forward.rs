//! Sending a peer's spool over one client session: `bsmtp-ssh flush` (a
//! leaf to its hub) and rsmtp's `pull` verb (a hub to the leaf that asked)
//! both run [`send`]; the roles differ only in who opened the SSH session.
//!
//! Transactions are pipelined: up to [`Settings::window`] messages go out
//! before the first replies are read. Each message carries its exactly-once
//! tag, and leaves the spool only after the receiver's `250` for every
//! recipient (or a bounce for the ones refused with 5xx), so a session cut
//! at any point loses nothing, and a retry of a message whose `250` was
//! lost is recognised by the receiver instead of queued twice.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

use bsmtp::bounce::{Action, RecipientReport};
use bsmtp::reply::EnhancedCode;
use bsmtp::status::{Failure, FailureKind};
use bsmtp::tag::Tag;
use log::{info, warn};

use crate::client::{self, ClientSession};
use crate::spool::{is_unreadable, Entry, Spool};

/// How a spool is sent.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bounce what waited longer than this.
    pub lifetime: Duration,
    /// Messages sent ahead of their replies. The receiver's replies to
    /// them must fit its output buffers, or both sides would wait on each
    /// other: a few dozen short replies do.
    pub window: usize,
}

/// Transactions in flight by default.
pub const DEFAULT_WINDOW: usize = 32;

/// One recipient that cannot be delivered: its index in the entry's
/// recipients and what its notice says.
#[derive(Debug, Clone)]
pub struct Undeliverable {
    /// Its index in the entry's recipients.
    pub index: usize,
    /// The notice's words about it.
    pub report: RecipientReport,
}

/// Tells senders about mail that cannot be delivered.
pub trait Bouncer {
    /// Queues a notice to `entry`'s sender about `failed`, honouring the
    /// recipients' DSN requests (none for `NOTIFY=NEVER`, or for the null
    /// sender). `Ok` once the notice is queued or none is due; until then
    /// the recipients stay in the spool.
    fn bounce(
        &mut self,
        spool: &Spool,
        entry: &Entry,
        failed: &[Undeliverable],
    ) -> Result<(), String>;
}

/// What a send did, in recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Accepted by the receiver.
    pub delivered: usize,
    /// Refused for good, or expired, and bounced.
    pub bounced: usize,
    /// Still in the spool.
    pub deferred: usize,
    /// Messages moved to `quarantine/` because they cannot be read.
    pub quarantined: usize,
}

impl Report {
    fn add(&mut self, other: &Report) {
        self.delivered += other.delivered;
        self.bounced += other.bounced;
        self.deferred += other.deferred;
        self.quarantined += other.quarantined;
    }
}

/// Moves a message that cannot be read out of the spool (see
/// [`Spool::quarantine`]) and says so; true when it is gone from the spool.
fn quarantine(spool: &Spool, id: &str, err: &std::io::Error) -> bool {
    match spool.quarantine(id, &err.to_string()) {
        Ok(path) => {
            warn!(
                "{}: {id}: cannot be read, moved to {}: {err}; repair it and move it back, or remove it (bsmtp-ssh queue lists it)",
                spool.peer(),
                path.display()
            );
            true
        }
        Err(moving) => {
            warn!(
                "{}: {id}: cannot be read ({err}), and not quarantined: {moving}",
                spool.peer()
            );
            false
        }
    }
}

/// Bounces every message in `ids` that waited longer than `lifetime`, with
/// its last error; returns the IDs still spooled and what it did. Runs
/// before connecting, so mail for a peer that never comes back still
/// bounces.
pub fn expire(
    spool: &Spool,
    ids: Vec<String>,
    lifetime: Duration,
    bouncer: &mut impl Bouncer,
    now: SystemTime,
) -> (Vec<String>, Report) {
    let mut report = Report::default();
    let mut left = Vec::new();
    for id in ids {
        let entry = match spool.load(&id) {
            Ok(entry) => entry,
            Err(err) if is_unreadable(&err) && quarantine(spool, &id, &err) => {
                report.quarantined += 1;
                continue;
            }
            Err(_) => {
                left.push(id);
                continue;
            }
        };
        if entry.age(now) <= lifetime {
            left.push(id);
            continue;
        }
        let (status, why) = match &entry.meta.last_error {
            Some(error) => (status_of(error), error.clone()),
            None => (None, "never attempted".to_owned()),
        };
        let days = entry.age(now).as_secs() / 86_400;
        let failed: Vec<Undeliverable> = entry
            .pending()
            .into_iter()
            .map(|index| Undeliverable {
                index,
                report: RecipientReport {
                    final_recipient: entry.recipients[index].clone(),
                    original_recipient: orcpt(&entry, index),
                    action: Action::Failed,
                    status: status.unwrap_or(EnhancedCode::new(4, 4, 7)),
                    remote_mta: None,
                    diagnostic: None,
                    reason: format!(
                        "message expired after {days} days in the spool for {}: {why}",
                        spool.peer()
                    ),
                },
            })
            .collect();
        let mut outcome = Report::default();
        match finish_failed(spool, &entry, &failed, bouncer, &mut outcome) {
            Ok(()) if entry.meta.done.len() + failed.len() == entry.recipients.len() => {
                remove(spool, &entry);
            }
            _ => left.push(id),
        }
        report.add(&outcome);
    }
    (left, report)
}

/// Sends the messages `ids` over `session`, pipelined, and settles each by
/// its replies; `progress` hears (settled, total) after each. An `Err`
/// means the session failed: what was settled before stays settled, the
/// rest stays spooled (see [`note_failure`]).
pub fn send<S: Read + Write>(
    spool: &Spool,
    ids: &[String],
    session: &mut ClientSession<S>,
    bouncer: &mut impl Bouncer,
    settings: &Settings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report, (Report, Failure)> {
    let mut report = Report::default();
    let mut in_flight: VecDeque<(Entry, Vec<usize>)> = VecDeque::new();
    let mut settled = 0;
    let relay = session.relay().to_owned();
    for id in ids {
        let entry = match spool.load(id) {
            Ok(entry) => entry,
            Err(err) if is_unreadable(&err) && quarantine(spool, id, &err) => {
                report.quarantined += 1;
                settled += 1;
                continue;
            }
            Err(err) => {
                warn!(
                    "{}: {id}: cannot read, left in the spool: {err}",
                    spool.peer()
                );
                settled += 1;
                continue;
            }
        };
        let pending = entry.pending();
        if pending.is_empty() {
            remove(spool, &entry);
            settled += 1;
            continue;
        }
        if let Err(failure) = transmit(spool, &entry, &pending, session) {
            return Err((report, failure));
        }
        in_flight.push_back((entry, pending));
        while session.unread() >= settings.window.max(1) {
            let (entry, pending) = in_flight.pop_front().expect("one per unread transaction");
            let outcome = session.collect().map_err(|f| (report.clone(), f))?;
            let done = settle(spool, &entry, &pending, &outcome, &relay, bouncer);
            report.add(&done.map_err(|f| (report.clone(), f))?);
            settled += 1;
            progress(settled, ids.len());
        }
    }
    while let Some((entry, pending)) = in_flight.pop_front() {
        let outcome = session.collect().map_err(|f| (report.clone(), f))?;
        let done = settle(spool, &entry, &pending, &outcome, &relay, bouncer);
        report.add(&done.map_err(|f| (report.clone(), f))?);
        settled += 1;
        progress(settled, ids.len());
    }
    Ok(report)
}

/// Records a failure that kept the messages `ids` from being sent (the
/// peer unreachable, the session cut), for `bsmtp-ssh queue` to show.
pub fn note_failure(spool: &Spool, ids: &[String], failure: &Failure) {
    for id in ids {
        if let Ok(mut entry) = spool.load(id) {
            entry.meta.attempts += 1;
            entry.meta.last_attempt = Some(unix_now());
            entry.meta.last_error = Some(failure.to_string());
            let _ = spool.save_meta(id, &entry.meta);
        }
    }
}

/// Sends one message's transaction (envelope, body, dot) without waiting.
fn transmit<S: Read + Write>(
    spool: &Spool,
    entry: &Entry,
    pending: &[usize],
    session: &mut ClientSession<S>,
) -> Result<(), Failure> {
    let recipients: Vec<String> = pending
        .iter()
        .map(|&i| entry.recipients[i].clone())
        .collect();
    let tag_id: String = entry
        .meta
        .queue_id
        .clone()
        .unwrap_or_else(|| entry.id.replace(['.', '-', '_'], ""));
    let envelope = client::Envelope {
        tag: Tag::mint(&tag_id, &entry.sender, &recipients, Some(entry.meta.size)),
        sender: entry.sender.clone(),
        recipients,
        size: Some(entry.meta.size),
        eight_bit: entry.meta.eight_bit,
        smtputf8: entry.meta.smtputf8,
        dsn: entry.meta.dsn.clone(),
        recipient_dsn: pending
            .iter()
            .map(|&i| entry.meta.recipient_dsn.get(i).cloned().unwrap_or_default())
            .collect(),
    };
    session.begin(&envelope);
    // A spool file that cannot be read to its end leaves the transaction
    // open mid-body; only ending the session keeps the receiver from
    // taking a part of it.
    let mut sent = Ok(());
    let read = spool.for_each_piece(&entry.id, |bytes, end_of_line| {
        sent = session.piece(bytes, end_of_line);
        sent.clone().map_err(|f| f.to_string())
    });
    sent?;
    if read.is_err() {
        // Damaged after it was listed (its envelope read): it goes aside,
        // so the next session does not stop at it again.
        if let Err(err) = spool.verify(&entry.id) {
            if is_unreadable(&err) {
                quarantine(spool, &entry.id, &err);
            }
        }
    }
    read.map_err(|err| {
        Failure::new(
            FailureKind::Local,
            format!(
                "{}: spool file unreadable mid-message, session abandoned: {err}",
                entry.id
            ),
        )
    })?;
    session.end()
}

/// Settles one message by its replies: delivered recipients are done,
/// refused ones bounced, deferred ones stay; the spool entry goes when
/// nothing is left. When the spool cannot record that progress, the whole
/// entry is deferred and the flush ends with a local failure: the next
/// flush sends it again under the same tag, and the receiver's record
/// answers the recipients it already has and queues only the others.
fn settle(
    spool: &Spool,
    entry: &Entry,
    pending: &[usize],
    outcome: &client::Outcome,
    relay: &str,
    bouncer: &mut impl Bouncer,
) -> Result<Report, Failure> {
    let mut entry = entry.clone();
    let mut report = Report::default();
    let mut failed = Vec::new();
    let mut last_error = None;
    let delay = entry.age(SystemTime::now()).as_secs();
    for (k, &index) in pending.iter().enumerate() {
        let reply = outcome.for_recipient(k);
        let to = &entry.recipients[index];
        let id = entry.log_id().to_owned();
        if reply.code / 100 == 2 {
            info!(
                "{id}: to=<{to}>, relay={relay}, delay={delay}, status=sent ({})",
                reply.one_line()
            );
            entry.meta.done.insert(index);
            report.delivered += 1;
        } else if reply.is_permanent() {
            info!(
                "{id}: to=<{to}>, relay={relay}, delay={delay}, status=bounced ({})",
                reply.one_line()
            );
            failed.push(Undeliverable {
                index,
                report: RecipientReport::from_reply(
                    to,
                    orcpt(&entry, index),
                    reply,
                    Some(relay),
                    outcome.stage_for(k),
                ),
            });
        } else {
            info!(
                "{id}: to=<{to}>, relay={relay}, delay={delay}, status=deferred ({})",
                reply.one_line()
            );
            last_error = Some(format!("{} said: {}", relay, reply.one_line()));
        }
    }
    if finish_failed(spool, &entry, &failed, bouncer, &mut report).is_ok() {
        entry.meta.done.extend(failed.iter().map(|f| f.index));
    } else {
        last_error.get_or_insert_with(|| "a bounce could not be queued".to_owned());
    }
    if entry.meta.done.len() >= entry.recipients.len() {
        remove(spool, &entry);
    } else {
        report.deferred += entry.recipients.len() - entry.meta.done.len();
        entry.meta.attempts += 1;
        entry.meta.last_attempt = Some(unix_now());
        entry.meta.last_error = last_error.or(entry.meta.last_error);
        if let Err(err) = spool.save_meta(&entry.id, &entry.meta) {
            return Err(Failure::new(
                FailureKind::Local,
                format!(
                    "{}: cannot record in the spool which recipients were delivered: {err}; the message stays whole in the spool, and its next try is answered from the receiver's tag record for those",
                    entry.id
                ),
            ));
        }
    }
    Ok(report)
}

/// Bounces `failed` (if any) and counts them.
fn finish_failed(
    spool: &Spool,
    entry: &Entry,
    failed: &[Undeliverable],
    bouncer: &mut impl Bouncer,
    report: &mut Report,
) -> Result<(), ()> {
    if failed.is_empty() {
        return Ok(());
    }
    match bouncer.bounce(spool, entry, failed) {
        Ok(()) => {
            report.bounced += failed.len();
            Ok(())
        }
        Err(err) => {
            warn!(
                "{}: cannot queue the bounce, recipients kept in the spool: {err}",
                entry.log_id()
            );
            report.deferred += failed.len();
            Err(())
        }
    }
}

/// A recipient's ORCPT, for its notice.
fn orcpt(entry: &Entry, index: usize) -> Option<(String, String)> {
    entry
        .meta
        .recipient_dsn
        .get(index)
        .and_then(|dsn| dsn.orcpt.clone())
}

/// The RFC 3463 code a stored error starts with.
fn status_of(error: &str) -> Option<EnhancedCode> {
    let word = error.split(' ').next()?;
    let mut parts = word.split('.').map(|p| p.parse::<u16>().ok());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Some(class @ (4 | 5))), Some(Some(subject)), Some(Some(detail)), None) => Some(
            EnhancedCode::new(u8::try_from(class).ok()?, subject, detail),
        ),
        _ => None,
    }
}

fn remove(spool: &Spool, entry: &Entry) {
    if let Err(err) = spool.remove(&entry.id) {
        // Left behind, it goes again; the receiver's tag store catches it.
        warn!("{}: cannot remove from the spool: {err}", entry.id);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoNotices;

    impl Bouncer for NoNotices {
        fn bounce(&mut self, _: &Spool, _: &Entry, _: &[Undeliverable]) -> Result<(), String> {
            Ok(())
        }
    }

    /// Regression (audit M4): a spool file the reader refuses was left in
    /// place, skipped by every flush, never expired nor bounced. Now the
    /// first look moves it to `quarantine/`, and the rest goes on.
    #[test]
    fn an_unreadable_message_is_quarantined_not_skipped_for_ever() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        spool.create().unwrap();
        std::fs::write(
            spool.dir().join("1.bsmtp"),
            b"MAIL FROM:<a@x>\r\nRCPT TO:<root>\r\nDATA\r\nhi\r\n.\r\n",
        )
        .unwrap();
        std::fs::write(
            spool.dir().join("2.bsmtp"),
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhi\r\n.\r\n",
        )
        .unwrap();
        let ids = spool.ids().unwrap();
        let (left, report) = expire(
            &spool,
            ids,
            Duration::from_hours(1),
            &mut NoNotices,
            SystemTime::now(),
        );
        assert_eq!(left, ["2"]);
        assert_eq!(report.quarantined, 1);
        assert_eq!(spool.quarantined().unwrap()[0].id, "1");
    }

    /// Audit M2 (flush): delivered recipients that cannot be recorded in
    /// the spool used to be left to the receiver's tag (whose record then
    /// answered the deferred ones as delivered too). Now the flush stops
    /// with a local failure and the message stays whole in the spool; its
    /// next try is answered per recipient from the receiver's record.
    #[test]
    fn progress_that_cannot_be_recorded_defers_the_whole_entry() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::new(base.path(), "hub");
        spool.create().unwrap();
        std::fs::write(
            spool.dir().join("1.bsmtp"),
            b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\nhi\r\n.\r\n",
        )
        .unwrap();
        let entry = spool.load("1").unwrap();
        // The meta file can no longer be replaced.
        std::fs::create_dir(spool.dir().join("1.meta")).unwrap();
        let ok = |code| bsmtp::reply::Reply::new(code, None, "x");
        let outcome = client::Outcome {
            mail: ok(250),
            recipients: vec![ok(250), ok(450)],
            data: Some(ok(354)),
            end: Some(ok(250)),
        };
        let failure = settle(&spool, &entry, &[0, 1], &outcome, "hub", &mut NoNotices)
            .expect_err("unrecorded progress must end the flush");
        assert_eq!(failure.kind, FailureKind::Local);
        assert!(failure.text.contains("cannot record"), "{failure}");
        assert_eq!(spool.ids().unwrap(), ["1"]);
    }
}
