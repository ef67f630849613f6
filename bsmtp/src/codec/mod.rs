//! The BSMTP (RFC 2442) wire format: commands and dot-stuffed bodies.
//!
//! This is the one place that knows how BSMTP looks on the wire, so that
//! bsmtp-ssh (which writes it) and rsmtp (which reads it) cannot disagree, and
//! so that dot-stuffing is decided once (pipe(8) is run without `flags=.`).
//!
//! It is sans I/O: the [`Decoder`] takes bytes and returns [`Event`]s or
//! "need more", the encoders append to a caller's buffer. Nothing here reads,
//! writes, spawns or looks at a clock, so every byte boundary can be tested.
//! Line and dot state survive chunk boundaries and bodies come out in
//! pieces, so a message of any size streams through in bounded memory.
//!
//! What the decoder accepts: lines ending CRLF or bare LF (one CR right
//! before the LF is part of the terminator; a CR anywhere else is data).
//! That one rule settles every SMTP smuggling variant: `\n.\n` and
//! `\n.\r\n` end a message, `\r.\r\n` and `\n.\r` followed by more do not.

mod decode;
mod encode;

pub use decode::{Command, CommandError, Decoder, Event, Param, Truncated};
pub use encode::{encode_command, BodyEncoder};

/// Longest command line the decoder accepts, terminator included.
pub const MAX_COMMAND_LINE: usize = 4096;

/// Longest body piece one [`Event::BodyPiece`] carries.
pub const MAX_BODY_PIECE: usize = 8192;

/// Longest path inside `<...>` of MAIL FROM or RCPT TO, source route included.
pub const MAX_ADDRESS: usize = 1024;
