//! What bsmtp-ssh and rsmtp share that does I/O: the two protocol roles as
//! library sessions, and the helpers every mode needs once.
//!
//! - [`client`]: the sending role, one EHLO and many transactions over any
//!   byte stream, each returning the fate of every recipient.
//! - [`server`]: the receiving role, BSMTP or LMTP, over an [`server::Injector`]
//!   that hands each message to its next hop ([`postdrop`], the hub's own
//!   smtpd on rsmtp's fast path ([`smtp_inject`]), or a hub).
//! - [`ssh`]: an SSH channel to a peer's forced command, host key pinned,
//!   over the first of its hubs that answers; [`pins`] keeps a message
//!   whose acknowledgement was lost with the hub that may hold it;
//!   [`proxy`] reaches a hub through a bastion (`proxy_jump`) or a program
//!   (`proxy_command`).
//! - [`deflate`]: a whole session as one zlib stream each way
//!   (`receive deflate`, for `compression = true`).
//! - [`idle`]: reads and writes that give up when the peer goes quiet.
//! - [`logging`], [`main_cf`], [`child`], [`atomic`]: where Postfix logs,
//!   what its main.cf says, children with a cut-down environment, files
//!   replaced atomically; [`config_keys`]: where a misplaced config key
//!   belongs.
//!
//! A mode (pipe, LMTP bridge, flush, pull) is then a few lines that join a
//! source of transactions to a session.

pub mod atomic;
pub mod child;
pub mod client;
pub mod config_keys;
pub mod deflate;
pub mod forward;
pub mod idle;
pub mod logging;
pub mod main_cf;
pub mod message;
pub mod notice;
pub mod pins;
pub mod policy;
pub mod postdrop;
pub mod proxy;
pub mod server;
pub mod smtp_inject;
pub mod spool;
pub mod ssh;
pub mod tags;
