//! What bsmtp-ssh (the sending transport) and rsmtp (the receiver) share:
//! the Batch SMTP codec (sans I/O), SMTP replies with enhanced status codes,
//! the one table that maps outcomes to exit codes, logging in Postfix's
//! style, the OpenSSH `known_hosts` reader that checks a hub's host key
//! (sans I/O too), and the small helpers every caller needs once: envelope
//! address forms, main.cf reading, child processes with a cut-down
//! environment.

pub mod address;
pub mod child;
pub mod codec;
pub mod known_hosts;
pub mod logging;
pub mod main_cf;
pub mod reply;
pub mod status;
