//! rsmtp: receives Batch SMTP from a peer and injects each message into
//! Postfix. It runs as the OpenSSH forced command of the peer's key, so its
//! input is hostile: the peer's identity comes from `--peer` alone, what the
//! client asked to run is parsed by [`command`], and every message passes the
//! peer's [`policy`] in the server session of `bsmtp-session`, whose postdrop
//! injector commits it.

pub mod authorize;
pub mod check;
pub mod command;
mod compressed;
pub mod mode;
mod offline;
pub mod policy;
mod pull;
pub mod rejects;
mod run;
mod sendmail;
mod table;

pub use mode::over_ssh;
pub use run::{run, AdminCommand, Args, RunError};
