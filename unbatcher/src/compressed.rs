//! `receive deflate`: a session whose two directions are zlib streams
//! (a leaf's `compression = true`). The session itself is the plain one;
//! only its input and output are wrapped (see [`bsmtp_session::deflate`]).

use bsmtp_session::deflate::{self, DeflatedInput, DeflatedOutput, Totals};
use bsmtp_session::idle::{Input, Output};
use log::info;

use crate::run::RunError;

/// Runs `session` on compressed halves of `input` and `output`, then ends
/// our stream so the client's decoder sees a clean end, and logs what
/// compression saved. Input cut short inside the client's stream is an I/O
/// error of the session, so an unfinished message is dropped as with a cut
/// connection.
pub(crate) fn receive<I: Input, O: Output>(
    peer: &str,
    input: &mut I,
    output: &mut O,
    session: impl FnOnce(
        &mut DeflatedInput<'_, I, O>,
        &mut DeflatedOutput<'_, O>,
    ) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let (mut input, mut output) = deflate::halves(input, output);
    let result = match session(&mut input, &mut output) {
        Ok(()) => output.finish().map_err(RunError::Io),
        // The session's own error decides; ending our stream is only a
        // courtesy then (skipped when writing already failed).
        Err(err) => {
            output.close();
            Err(err)
        }
    };
    info!(
        "peer {peer}: receive deflate: in {}, out {}",
        shown(input.totals()),
        shown(output.totals())
    );
    result
}

/// `W bytes for P (R x)`: wire bytes, session bytes, and their ratio.
fn shown(totals: Totals) -> String {
    // Session sizes are far below 2^52: the ratio is exact enough.
    #[allow(clippy::cast_precision_loss)]
    let ratio = totals.plain as f64 / totals.wire.max(1) as f64;
    format!("{} bytes for {} ({ratio:.2} x)", totals.wire, totals.plain)
}
