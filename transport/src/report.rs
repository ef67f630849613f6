//! The per-recipient log line of a delivery, in Postfix's shape
//! (`QUEUEID: to=<...>, relay=..., delay=..., status=... (...)`), the same
//! for every mode.

use bsmtp::reply::Reply;
use bsmtp::status::Failure;
use log::info;

/// Logs what became of `recipient`.
pub fn delivery(
    queue_id: &str,
    recipient: &str,
    relay: &str,
    delay: f64,
    result: &Result<Reply, Failure>,
) {
    match result {
        Ok(reply) => info!(
            "{queue_id}: to=<{recipient}>, relay={relay}, delay={delay:.2}, status=sent ({})",
            reply.one_line()
        ),
        Err(failure) => info!(
            "{queue_id}: to=<{recipient}>, relay={relay}, delay={delay:.2}, status={} ({})",
            if failure.is_transient() {
                "deferred"
            } else {
                "bounced"
            },
            failure.text
        ),
    }
}
