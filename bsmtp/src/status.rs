//! The one table that turns a delivery outcome into what Postfix acts on.
//!
//! pipe(8) decides between "sent", "deferred" and "bounced" from our exit
//! status and from the first characters of our output (Postfix
//! `src/global/pipe_command.c`, `src/global/sys_exits.c`):
//!
//! * output starting with `X.Y.Z text` on a non-zero exit wins: class 4
//!   defers, anything else bounces;
//! * otherwise only `EX_TEMPFAIL` (75) and `EX_OSERR` (71) defer; every other
//!   non-zero status, a panic's 101 included, bounces.
//!
//! So every failure here carries both an enhanced status code and an exit
//! code that agree, and anything we are not sure is permanent defers: a
//! deferred message is retried, a bounced one is gone.

use std::fmt;

use sysexits::ExitCode;

use crate::reply::{EnhancedCode, Reply};

/// Why a delivery attempt failed, in the classes Postfix must tell apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The peer could not be reached: name lookup, TCP connect, SSH handshake.
    Connect,
    /// The peer stopped answering within our deadline.
    Timeout,
    /// The peer's host key is not the pinned one (or none is pinned).
    HostKey,
    /// The peer refused our key.
    Auth,
    /// The peer answered with a 4xx or 5xx reply; its code decides.
    Remote(Reply),
    /// The peer broke the protocol (closed early, sent garbage): retry later.
    PeerProtocol,
    /// Our own configuration is wrong: defer, so the admin can fix it.
    Config,
    /// A local resource failed (reading the message, memory, a file).
    Local,
    /// A file system is below its free-space floor (`min_free`): nothing
    /// was written; retry once space is freed.
    Storage,
    /// The envelope handed to us cannot be delivered anywhere (bad address).
    BadEnvelope,
    /// A bug in this program; never lose mail over it.
    Internal,
}

impl FailureKind {
    /// How much a failure says about a destination, for the one reason a
    /// message defers with when every hub of it failed: what an admin must
    /// fix (our config, a host key, a refused key) before a local fault,
    /// before what a peer does wrong, before what passes by itself (a
    /// timeout, a refused connection). Higher is worse.
    pub fn severity(&self) -> u8 {
        match self {
            FailureKind::Connect => 1,
            FailureKind::Timeout => 2,
            FailureKind::PeerProtocol | FailureKind::Remote(_) => 3,
            FailureKind::Local | FailureKind::Storage | FailureKind::Internal => 4,
            FailureKind::Auth => 5,
            FailureKind::HostKey => 6,
            FailureKind::Config | FailureKind::BadEnvelope => 7,
        }
    }
}

/// A failed delivery: its class and a one-line explanation naming who and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class that decides defer or bounce.
    pub kind: FailureKind,
    /// What happened and, where it helps, what to do; one line.
    pub text: String,
}

impl Failure {
    /// A failure of `kind` explained by `text`.
    pub fn new(kind: FailureKind, text: impl Into<String>) -> Self {
        Failure {
            kind,
            text: text.into(),
        }
    }

    /// The enhanced status code (RFC 3463) Postfix logs and puts in a bounce.
    pub fn dsn(&self) -> EnhancedCode {
        match &self.kind {
            FailureKind::Connect => EnhancedCode::new(4, 4, 1),
            FailureKind::Timeout => EnhancedCode::new(4, 4, 2),
            FailureKind::HostKey | FailureKind::Auth => EnhancedCode::new(4, 7, 0),
            // Only a refusal decides with the hub's own code. Any other reply
            // where a command failed (a 2xx to DATA, a 3xx after the dot) is
            // a peer out of step: its class would bounce the mail.
            FailureKind::Remote(reply) if reply.is_transient() || reply.is_permanent() => {
                reply.status()
            }
            FailureKind::Remote(_) | FailureKind::PeerProtocol => EnhancedCode::new(4, 5, 0),
            FailureKind::Config => EnhancedCode::new(4, 3, 5),
            FailureKind::Local | FailureKind::Internal => EnhancedCode::new(4, 3, 0),
            FailureKind::Storage => EnhancedCode::new(4, 3, 1),
            FailureKind::BadEnvelope => EnhancedCode::new(5, 1, 3),
        }
    }

    /// The exit status for pipe(8); agrees with [`Failure::dsn`]'s class.
    pub fn exit_code(&self) -> ExitCode {
        match &self.kind {
            FailureKind::Remote(reply) if reply.is_permanent() => ExitCode::Unavailable,
            FailureKind::BadEnvelope => ExitCode::DataErr,
            FailureKind::Connect
            | FailureKind::Timeout
            | FailureKind::HostKey
            | FailureKind::Auth
            | FailureKind::Remote(_)
            | FailureKind::PeerProtocol
            | FailureKind::Config
            | FailureKind::Local
            | FailureKind::Storage
            | FailureKind::Internal => ExitCode::TempFail,
        }
    }

    /// True when Postfix will retry the message rather than bounce it.
    pub fn is_transient(&self) -> bool {
        self.exit_code() == ExitCode::TempFail
    }
}

/// The status line for pipe(8): `X.Y.Z text`, one line.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dsn(), crate::text::one_line(&self.text))
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, dsn: (u8, u16, u16)) -> Reply {
        Reply::new(code, Some(EnhancedCode::new(dsn.0, dsn.1, dsn.2)), "text")
    }

    /// Every class defers or bounces exactly as pipe(8) will read it: the DSN
    /// class and the exit code must agree, or Postfix picks the DSN.
    #[test]
    fn dsn_class_agrees_with_exit_code() {
        let kinds = [
            FailureKind::Connect,
            FailureKind::Timeout,
            FailureKind::HostKey,
            FailureKind::Auth,
            FailureKind::Remote(reply(451, (4, 3, 0))),
            FailureKind::Remote(reply(550, (5, 7, 1))),
            // Replies out of step with our commands: never a bounce.
            FailureKind::Remote(reply(250, (2, 0, 0))),
            FailureKind::Remote(reply(354, (2, 0, 0))),
            FailureKind::Remote(Reply::new(220, None, "hub ESMTP")),
            FailureKind::Remote(Reply::new(221, None, "bye")),
            FailureKind::PeerProtocol,
            FailureKind::Config,
            FailureKind::Local,
            FailureKind::BadEnvelope,
            FailureKind::Internal,
        ];
        for kind in kinds {
            let failure = Failure::new(kind.clone(), "x");
            let defers = matches!(failure.exit_code(), ExitCode::TempFail | ExitCode::OsErr);
            assert_eq!(defers, failure.dsn().class == 4, "{kind:?}");
        }
    }

    /// Regression (audit): a 2xx to DATA, a 3xx after the dot or a 220
    /// greeting gave a `2.0.0` status line, and pipe(8) bounces every status
    /// whose class is not 4, whatever the exit code.
    #[test]
    fn replies_out_of_step_defer_4_5_0() {
        for unexpected in [
            reply(250, (2, 0, 0)),
            reply(354, (2, 0, 0)),
            Reply::new(220, None, "hub ESMTP"),
        ] {
            let failure = Failure::new(FailureKind::Remote(unexpected), "x");
            assert_eq!(failure.to_string(), "4.5.0 x");
            assert_eq!(failure.exit_code(), ExitCode::TempFail);
        }
    }

    /// What an admin must fix outranks what passes by itself, so a
    /// deferral after every hub failed names the host key, not the hub
    /// that was merely down.
    #[test]
    fn the_worst_failure_is_the_one_to_fix() {
        let order = [
            FailureKind::Connect,
            FailureKind::Timeout,
            FailureKind::PeerProtocol,
            FailureKind::Local,
            FailureKind::Auth,
            FailureKind::HostKey,
            FailureKind::Config,
        ];
        for pair in order.windows(2) {
            assert!(pair[0].severity() < pair[1].severity(), "{pair:?}");
        }
    }

    #[test]
    fn remote_reply_keeps_its_enhanced_code() {
        let failure = Failure::new(FailureKind::Remote(reply(553, (5, 7, 1))), "hub said");
        assert_eq!(failure.to_string(), "5.7.1 hub said");
        assert_eq!(failure.exit_code(), ExitCode::Unavailable);
    }

    #[test]
    fn status_line_is_one_line() {
        let failure = Failure::new(FailureKind::Connect, "a\nb\r\tc");
        assert_eq!(failure.to_string(), "4.4.1 a b  c");
    }
}
