//! The pure parts of bsmtp-ssh, shared by the transport (bsmtp-ssh) and the
//! receiver (rsmtp): the Batch SMTP codec, SMTP replies with enhanced status
//! codes, the typed EHLO extensions, the one table that maps outcomes to
//! exit codes, Postfix's queue-file records, envelope address forms, the
//! OpenSSH `known_hosts` reader, delivery status notifications, the
//! sendmail(1) command line, the table-push request and table names, the
//! exactly-once transaction tag and its record, and
//! text made safe for a log line. Nothing
//! here reads, writes, spawns or looks at a clock (except
//! `KnownHosts::load`, one file read kept apart); the I/O lives in the
//! `bsmtp-session` crate.

pub mod address;
pub mod bounce;
pub mod codec;
pub mod dsn;
pub mod extensions;
pub mod known_hosts;
pub mod records;
pub mod reply;
pub mod sendmail;
pub mod status;
pub mod table;
pub mod tag;
pub mod text;
