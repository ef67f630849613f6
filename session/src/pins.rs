//! Which hub may hold a message whose acknowledgement was lost: the
//! sending side's half of exactly-once delivery across failover.
//!
//! Each hub keeps its own exactly-once tags ([`crate::tags`]): a retry
//! that reaches the hub which committed the first try is recognised and
//! answered with the original queue ID, but another hub has never seen the
//! tag and would queue the message a second time. So before a tagged
//! transaction starts on a destination with several hubs, the sender
//! *pins* it to the hub it is sent to (a file `DIR/.pinned/DEST/KEY`
//! naming the hub, written durably), and removes the pin once the
//! transaction's final reply was read, whatever it said. A pin left behind
//! means the session broke while the hub may have committed: the next try
//! goes to that hub only, and defers while it does not answer, so the hub's
//! tag store settles it. After `failover_hold` the pin is dropped and the
//! other hubs may take the message: a possible second copy is better than
//! a bounce when the hub is gone for good.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bsmtp::status::{Failure, FailureKind};

use crate::atomic;
use crate::ssh::{self, Hub, Peer};

/// The pins' directory under a tag directory.
const PINNED: &str = ".pinned";

/// How long a pin is kept at least: past a leaf's `maximal_queue_lifetime`
/// (5 days by default) its message is gone from the queue, and a pin left
/// behind (the message was removed with `postsuper -d`, or bounced) names
/// nothing; the sweep removes it.
const PIN_LIFETIME: Duration = Duration::from_hours(7 * 24);

/// One destination's pins.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

/// A pin found for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The hub that may hold the message ([`Hub::name`]).
    pub hub: String,
    /// How long ago it was set.
    pub age: Duration,
}

impl Pins {
    /// The pins of `destination` under the tag directory `base` (created,
    /// mode 0700, when missing).
    pub fn open(base: &Path, destination: &str) -> io::Result<Pins> {
        if destination.is_empty() || destination.contains('/') || destination.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("destination name {destination:?} cannot name a directory"),
            ));
        }
        let dir = base.join(PINNED).join(destination);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Pins { dir })
    }

    /// Removes pins older than `keep` (at least [`PIN_LIFETIME`]), at most
    /// once an hour ([`crate::tags::sweep_due`]; a pin's name never starts
    /// with a dot, the marker's does): a pin whose message left the queue without its final
    /// reply (deleted by the admin, expired) would stay for ever.
    pub fn sweep_if_due(&self, keep: Duration) {
        let keep = keep.max(PIN_LIFETIME);
        if !crate::tags::sweep_due(&self.dir) {
            return;
        }
        let now = SystemTime::now();
        let age = |m: &fs::Metadata| {
            m.modified()
                .map(|at| now.duration_since(at).unwrap_or_default())
                .unwrap_or_default()
        };
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let old = entry.metadata().is_ok_and(|m| age(&m) > keep);
            if old && !entry.file_name().to_string_lossy().starts_with(".swept") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The pin of `key` (a transaction tag), if one is set.
    pub fn get(&self, key: &str) -> Option<Pin> {
        let path = self.path(key)?;
        let text = fs::read_to_string(&path).ok()?;
        let hub = text.split_whitespace().next()?.to_owned();
        let age = fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|at| SystemTime::now().duration_since(at).unwrap_or_default())
            .unwrap_or_default();
        Some(Pin { hub, age })
    }

    /// Pins `key` to `hub`, durably: call before the transaction's final
    /// dot can reach the hub.
    pub fn set(&self, key: &str, hub: &str) -> io::Result<()> {
        let Some(path) = self.path(key) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{key:?} cannot name a pin"),
            ));
        };
        let dir = atomic::open_dir(&self.dir)?;
        atomic::replace_at(
            &dir,
            &self.dir,
            Path::new(path.file_name().unwrap_or_default()),
            format!("{hub}\n").as_bytes(),
            atomic::Options::PRIVATE,
        )
    }

    /// Removes the pin of `key`: its transaction's final reply was read.
    pub fn clear(&self, key: &str) {
        if let Some(path) = self.path(key) {
            let _ = fs::remove_file(path);
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        let plain = !key.is_empty()
            && key.len() <= 255
            && !key.starts_with('.')
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        plain.then(|| self.dir.join(key))
    }
}

/// The one way a unit of mail (a tagged message, or a whole spool) goes
/// over a destination's hubs, for every mode (deliver, the LMTP bridge,
/// flush): read its pin, pick the hubs it may take, connect, pin it to
/// the hub before its final dot can reach that hub, and settle the pin
/// once every reply was read (or drop a pin of its own when the dot never
/// went out). Without pins (one hub) or without a key (an untagged
/// message) every step is a no-op.
#[derive(Debug, Clone)]
pub struct Route {
    pins: Option<Pins>,
    key: Option<String>,
    /// The pin an earlier try left: its acknowledgement was lost.
    pin: Option<Pin>,
    /// This try wrote the pin.
    wrote: bool,
    /// What is routed, for log lines ("this message", "the spool").
    what: &'static str,
}

impl Route {
    /// The route of the unit `key` (a transaction tag, or a spool's name)
    /// under `pins`, with the pin an earlier try left.
    pub fn new(pins: Option<&Pins>, key: Option<&str>, what: &'static str) -> Self {
        let pins = pins.filter(|_| key.is_some()).cloned();
        let pin = pins.as_ref().zip(key).and_then(|(p, k)| p.get(k));
        Route {
            pins,
            key: key.map(str::to_owned),
            pin,
            wrote: false,
            what,
        }
    }

    /// Whether an earlier try left a pin (its acknowledgement was lost).
    pub fn was_pinned(&self) -> bool {
        self.pin.is_some()
    }

    /// The hubs this unit may go to ([`hubs_for`]).
    pub fn hubs<'a>(&self, peer: &'a Peer) -> Vec<&'a Hub> {
        hubs_for(peer, self.pin.as_ref(), self.what)
    }

    /// Connects to the first of [`Route::hubs`] that answers, for the
    /// peer's forced command.
    pub fn connect(&self, peer: &Peer) -> Result<ssh::Connection, Failure> {
        let hubs = self.hubs(peer);
        ssh::connect_to(peer, &hubs, &peer.command).map_err(|f| self.held(peer, &hubs, f))
    }

    /// `failure` to reach `hubs`, said as waiting for the pinned hub when
    /// the pin narrowed them.
    pub fn held(&self, peer: &Peer, hubs: &[&Hub], failure: Failure) -> Failure {
        match &self.pin {
            Some(pin) if hubs.len() < peer.hubs.len() => held(peer, pin, &failure),
            _ => failure,
        }
    }

    /// Pins the unit to `hub`, durably, before its final dot can reach
    /// it. A pin already naming this hub stays as it is: its age counts
    /// from the try whose acknowledgement was lost.
    pub fn pin_to(&mut self, hub: &str) -> Result<(), Failure> {
        let (Some(pins), Some(key)) = (&self.pins, &self.key) else {
            return Ok(());
        };
        if self.pin.as_ref().is_none_or(|p| p.hub != hub) {
            pins.set(key, hub).map_err(|e| set_failed(&e))?;
            self.wrote = true;
        }
        Ok(())
    }

    /// Every reply was read: the hub's answer decides ([`settled`]);
    /// `later` is its temporary refusal, if any.
    pub fn settle(&self, later: Option<&Failure>) {
        if let (Some(pins), Some(key)) = (&self.pins, &self.key) {
            if settled(self.pin.is_some(), later) {
                pins.clear(key);
            }
        }
    }

    /// The unit's final dot never went out: this try queued nothing, so a
    /// pin it wrote goes; a pin an earlier try left stays.
    pub fn abandon(&self) {
        if let (Some(pins), Some(key), true, false) =
            (&self.pins, &self.key, self.wrote, self.pin.is_some())
        {
            pins.clear(key);
        }
    }
}

/// The hubs a message may go to: all of `peer`'s, or, when `pin` is set
/// and younger than the peer's `failover_hold`, only the pinned hub. A
/// pin naming a hub no longer configured is ignored.
pub fn hubs_for<'a>(peer: &'a Peer, pin: Option<&Pin>, what: &str) -> Vec<&'a Hub> {
    let all = || peer.hubs.iter().collect();
    let Some(pin) = pin else {
        return all();
    };
    let pinned = peer.only(&pin.hub);
    if pinned.is_empty() {
        log::warn!(
            "peer {}: {what} was pinned to hub {}, which is no longer configured; trying every hub",
            peer.name,
            pin.hub
        );
        return all();
    }
    if pin.age > peer.failover_hold {
        log::warn!(
            "peer {}: {what} may have been queued by hub {} (its acknowledgement was lost {}s ago), which has not answered within failover_hold ({}s); trying every hub, which may deliver a second copy",
            peer.name,
            pin.hub,
            pin.age.as_secs(),
            peer.failover_hold.as_secs()
        );
        return all();
    }
    pinned
}

/// Whether a transaction whose final reply was read no longer needs its
/// pin: always for a first try (the hub answered, so it holds nothing
/// unacknowledged); for a retry under a pin (`was_pinned`) only when the
/// hub settled it, with a success or a permanent refusal. A temporary
/// refusal of a retry keeps the pin: rsmtp says "try again later" exactly
/// while the first try may still be committing.
pub fn settled(was_pinned: bool, failure: Option<&Failure>) -> bool {
    !was_pinned || !failure.is_some_and(Failure::is_transient)
}

/// The failure of a message that waits for its pinned hub: it defers,
/// naming why, so the admin sees it in the queue.
pub fn held(peer: &Peer, pin: &Pin, why: &Failure) -> Failure {
    Failure::new(
        why.kind.clone(),
        format!(
            "waiting for hub {} of peer {}, which may have queued this message (its acknowledgement was lost): {}",
            pin.hub, peer.name, why.text
        ),
    )
}

/// The pin store for `peer` under `base`, when pinning applies: the
/// destination fails over, and the store can be opened (a warning says
/// why not; failover then works without it, as documented).
pub fn for_peer(base: Option<&Path>, peer: &Peer) -> Option<Pins> {
    if !peer.has_failover() {
        return None;
    }
    let base = base?;
    match Pins::open(base, &peer.name) {
        Ok(pins) => {
            pins.sweep_if_due(peer.failover_hold * 2);
            Some(pins)
        }
        Err(err) => {
            log::warn!(
                "peer {}: cannot keep failover pins: {err}; a message whose acknowledgement is lost may be queued by two hubs",
                peer.name
            );
            None
        }
    }
}

/// A failure of ours to set a pin: the message waits (defers) rather
/// than risk two copies.
pub fn set_failed(err: &io::Error) -> Failure {
    Failure::new(
        FailureKind::Local,
        format!("cannot record the hub a message goes to (failover pin): {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path(), "hubs").unwrap();
        assert_eq!(pins.get("Q1.ab"), None);
        pins.set("Q1.ab", "hub1").unwrap();
        let pin = pins.get("Q1.ab").unwrap();
        assert_eq!(pin.hub, "hub1");
        assert!(pin.age < Duration::from_mins(1));
        pins.clear("Q1.ab");
        assert_eq!(pins.get("Q1.ab"), None);
    }

    #[test]
    fn hostile_keys_and_names_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Pins::open(dir.path(), "../x").is_err());
        assert!(Pins::open(dir.path(), ".pinned").is_err());
        let pins = Pins::open(dir.path(), "hubs").unwrap();
        assert!(pins.set("../../etc/x", "hub1").is_err());
        assert!(pins.set(".hidden", "hub1").is_err());
    }

    #[test]
    fn a_retry_keeps_its_pin_until_the_hub_settles_it() {
        let later = Failure::new(FailureKind::Timeout, "busy");
        let refused = Failure::new(FailureKind::BadEnvelope, "no");
        // A first try: whatever the hub answered, it holds nothing unread.
        assert!(settled(false, None));
        assert!(settled(false, Some(&later)));
        // A retry of a lost acknowledgement: only a final answer settles.
        assert!(settled(true, None));
        assert!(settled(true, Some(&refused)));
        assert!(!settled(true, Some(&later)));
    }

    /// Audit: pins whose message left the queue without a final reply
    /// (`postsuper -d`) are swept, not kept for ever; young ones stay.
    #[test]
    fn orphaned_pins_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::open(dir.path(), "hubs").unwrap();
        pins.set("OLD.ab", "hub1").unwrap();
        pins.set("NEW.ab", "hub1").unwrap();
        fs::File::options()
            .write(true)
            .open(pins.dir.join("OLD.ab"))
            .unwrap()
            .set_modified(SystemTime::now() - PIN_LIFETIME - Duration::from_mins(1))
            .unwrap();
        pins.sweep_if_due(Duration::from_mins(10));
        assert_eq!(pins.get("OLD.ab"), None);
        assert!(pins.get("NEW.ab").is_some());
    }
}
