//! Delivery status notifications about mail we held and could not deliver:
//! composed by [`bsmtp::bounce`], queued into the local Postfix with the
//! null sender through postdrop, so Postfix delivers them like its own.
//! Used by `flush` and the hub's `pull` (a spooled message refused or
//! expired) and by offline rsmtp (a refused transaction in a batch). A
//! satellite with no Postfix spools its notices for the hub instead
//! ([`Sink::Spool`]).

use std::time::{SystemTime, UNIX_EPOCH};

use bsmtp::bounce::{self, Composed, Notice, RecipientReport};
use bsmtp::dsn::{MailDsn, RcptDsn};
use bsmtp::records::attr;
use log::info;

use crate::forward::{Bouncer, Undeliverable};
use crate::postdrop::{Envelope, Postdrop, PostdropCommand};
use crate::spool::{Entry, Spool};

/// What a notice is about, besides the recipients' reports.
#[derive(Debug, Clone, Default)]
pub struct About<'a> {
    /// The original's envelope sender: who gets the notice.
    pub sender: &'a str,
    /// Its queue ID, for the report and the boundary.
    pub queue_id: Option<&'a str>,
    /// When it arrived.
    pub arrival: Option<SystemTime>,
    /// Its DSN request (`RET`, `ENVID`).
    pub dsn: MailDsn,
    /// It was sent with SMTPUTF8.
    pub smtputf8: bool,
    /// The original message (may be cut short), or empty.
    pub original: &'a [u8],
}

/// Where notices go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Into a Postfix instance, with postdrop (its `config_dir` names the
    /// instance).
    Postdrop(PostdropCommand),
    /// Into a peer's spool, for the next flush: a satellite with no
    /// Postfix of its own sends its notices through its hub.
    Spool(Spool),
}

/// Queues notices.
#[derive(Debug, Clone)]
pub struct Notifier {
    sink: Sink,
    hostname: String,
}

impl Notifier {
    /// Notices from `hostname`, queued with `command` (its
    /// `config_dir` names the Postfix instance).
    pub fn new(command: PostdropCommand, hostname: &str) -> Self {
        Self::to(Sink::Postdrop(command), hostname)
    }

    /// Notices from `hostname`, queued into `sink`.
    pub fn to(sink: Sink, hostname: &str) -> Self {
        Notifier {
            sink,
            hostname: hostname.to_owned(),
        }
    }

    /// Queues a failure notice about `reports` to `about.sender`, keeping
    /// only the recipients whose `NOTIFY` asks for one (`dsn[i]` goes with
    /// `reports[i]`; none given means failures are reported, RFC 3461).
    /// Returns the notice's queue ID, or `None` when none is due: the null
    /// sender (a notice is never sent about a notice) or nobody asked.
    pub fn failure(
        &self,
        about: &About<'_>,
        reports: &[RecipientReport],
        dsn: &[Option<&RcptDsn>],
    ) -> Result<Option<String>, String> {
        let wanted: Vec<RecipientReport> = reports
            .iter()
            .enumerate()
            .filter(|(i, _)| wants_failure_notice(dsn.get(*i).copied().flatten()))
            .map(|(_, report)| report.clone())
            .collect();
        if about.sender.is_empty() {
            info!(
                "{}: undeliverable mail from the null sender: no notice (a notice is not sent about a notice)",
                about.queue_id.unwrap_or("NOQUEUE")
            );
            return Ok(None);
        }
        if wanted.is_empty() {
            return Ok(None);
        }
        let composed = self.compose(about, &wanted);
        let queue_id = self.queue(about.sender, &composed)?;
        info!(
            "{}: sender non-delivery notification: {queue_id}",
            about.queue_id.unwrap_or("NOQUEUE")
        );
        Ok(Some(queue_id))
    }

    fn compose(&self, about: &About<'_>, reports: &[RecipientReport]) -> Composed {
        let now = SystemTime::now();
        let unix = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let id = about.queue_id.unwrap_or("bsmtp");
        let rfc2822 = |t: SystemTime| chrono::DateTime::<chrono::Local>::from(t).to_rfc2822();
        let arrival = about.arrival.map(rfc2822);
        let boundary = bounce::boundary(id, unix.as_secs(), &self.hostname);
        let message_id = format!(
            "<{}.{}.{}@{}>",
            unix.as_secs(),
            unix.subsec_nanos(),
            std::process::id(),
            self.hostname
        );
        let postmaster = format!("MAILER-DAEMON@{}", self.hostname);
        bounce::compose(&Notice {
            reporting_mta: &self.hostname,
            postmaster: &postmaster,
            recipient_of_notice: about.sender,
            date: &rfc2822(now),
            message_id: &message_id,
            boundary: &boundary,
            arrival_date: arrival.as_deref(),
            will_retry_until: None,
            envid: about.dsn.envid.as_deref(),
            queue_id: about.queue_id,
            recipients: reports,
            ret: about.dsn.ret,
            smtputf8: about.smtputf8,
            original: about.original,
            size_limit: bounce::DEFAULT_SIZE_LIMIT,
        })
    }

    /// Queues a composed notice from the null sender.
    fn queue(&self, to: &str, notice: &Composed) -> Result<String, String> {
        match &self.sink {
            Sink::Postdrop(command) => Self::postdrop(command, to, notice),
            Sink::Spool(spool) => {
                let message = crate::spool::NewMessage {
                    sender: String::new(),
                    recipients: vec![to.to_owned()],
                    ..crate::spool::NewMessage::default()
                };
                spool
                    .enqueue(&message, &mut notice.message.as_slice(), 0, 0)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Hands a composed notice to postdrop, from the null sender.
    fn postdrop(command: &PostdropCommand, to: &str, notice: &Composed) -> Result<String, String> {
        let to = bsmtp::address::to_internal(to);
        let attributes = if notice.eight_bit {
            vec![format!("{}=8bit", attr::ENCODING)]
        } else {
            Vec::new()
        };
        let recipients = [(to, Vec::new())];
        let mut postdrop = Postdrop::start(
            command,
            &Envelope {
                sender: "",
                recipients: &recipients,
                message: &[],
                attributes: &attributes,
            },
        )
        .map_err(|e| e.to_string())?;
        let text = notice
            .message
            .strip_suffix(b"\n")
            .unwrap_or(&notice.message);
        for line in text.split(|&b| b == b'\n') {
            postdrop
                .write_piece(line, true)
                .map_err(|e| e.to_string())?;
        }
        postdrop.commit().map_err(|e| e.to_string())
    }
}

/// True unless the recipient's `NOTIFY` leaves out `FAILURE`.
fn wants_failure_notice(dsn: Option<&RcptDsn>) -> bool {
    dsn.and_then(|d| d.notify.as_deref())
        .is_none_or(|notify| notify.split(',').any(|word| word == "FAILURE"))
}

/// The [`Bouncer`] of `flush` and `pull`: notices about spooled messages,
/// queued into the local Postfix (or, on a satellite, the spool).
pub struct NoticeBouncer {
    notifier: Notifier,
}

impl NoticeBouncer {
    /// Notices from `hostname`, queued with `command`.
    pub fn new(command: PostdropCommand, hostname: &str) -> Self {
        Self::to(Sink::Postdrop(command), hostname)
    }

    /// Notices from `hostname`, queued into `sink`.
    pub fn to(sink: Sink, hostname: &str) -> Self {
        NoticeBouncer {
            notifier: Notifier::to(sink, hostname),
        }
    }
}

impl Bouncer for NoticeBouncer {
    fn bounce(
        &mut self,
        spool: &Spool,
        entry: &Entry,
        failed: &[Undeliverable],
    ) -> Result<(), String> {
        let (original, _) = spool.content(&entry.id, bounce::DEFAULT_SIZE_LIMIT + 1)?;
        let reports: Vec<RecipientReport> = failed.iter().map(|f| f.report.clone()).collect();
        let dsn: Vec<Option<&RcptDsn>> = failed
            .iter()
            .map(|f| entry.meta.recipient_dsn.get(f.index))
            .collect();
        let about = About {
            sender: &entry.sender,
            queue_id: Some(entry.log_id()),
            arrival: Some(UNIX_EPOCH + std::time::Duration::from_secs(entry.meta.arrival)),
            dsn: entry.meta.dsn.clone(),
            smtputf8: entry.meta.smtputf8,
            original: &original,
        };
        self.notifier.failure(&about, &reports, &dsn).map(|_| ())
    }
}
