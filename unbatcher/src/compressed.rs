//! `receive deflate`: a session whose two directions are zlib streams
//! (a leaf's `compression = true`). The session itself is the plain one;
//! only its input and output are wrapped (see [`bsmtp_session::deflate`]).

use bsmtp_session::deflate::{self, DeflatedInput, DeflatedOutput};
use bsmtp_session::idle::{Input, Output};

use crate::run::RunError;

/// Runs `session` on compressed halves of `input` and `output`, then ends
/// our stream so the client's decoder sees a clean end. Input cut short
/// inside the client's stream is an I/O error of the session, so an
/// unfinished message is dropped as with a cut connection.
pub(crate) fn receive<I: Input, O: Output>(
    input: &mut I,
    output: &mut O,
    session: impl FnOnce(
        &mut DeflatedInput<'_, I, O>,
        &mut DeflatedOutput<'_, O>,
    ) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let (mut input, mut output) = deflate::halves(input, output);
    match session(&mut input, &mut output) {
        Ok(()) => output.finish().map_err(RunError::Io),
        // The session's own error decides; ending our stream is only a
        // courtesy then (skipped when writing already failed).
        Err(err) => {
            output.close();
            Err(err)
        }
    }
}
