//! bsmtp-ssh: the sending side. Postfix runs it from pipe(8) to deliver a
//! message over SSH to a peer's `rsmtp` forced command, as Batch SMTP.

pub mod check;
pub mod config;
pub mod deliver;
pub mod enqueue;
pub mod flush;
pub mod install;
pub mod lmtp;
pub mod pull;
pub mod push;
pub mod report;
mod run;
pub mod sendmail;

pub use run::{install_panic_hook, run, Action, Cli};
