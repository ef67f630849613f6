//! What bsmtp-ssh (the sending transport) and rsmtp (the receiver) share:
//! the Batch SMTP codec (sans I/O), SMTP replies with enhanced status codes,
//! the one table that maps outcomes to exit codes, and logging in Postfix's
//! style.

pub mod codec;
pub mod logging;
pub mod reply;
pub mod status;
