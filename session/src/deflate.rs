//! Full-strength deflate of a whole mail session, above SSH.
//!
//! libssh2 compresses its side of the SSH transport Huffman-only (no string
//! matching: `comp.c` asks zlib for `Z_HUFFMAN_ONLY`), which saves less
//! than half of what plain text allows. With `compression = true` the
//! client asks the hub's rsmtp for `receive deflate`, and from the first
//! byte each direction of the channel is one zlib stream (RFC 1950) for
//! the whole session: the dictionary carries over from command to command
//! and from message to message, which is what gives text 3 x and more.
//!
//! Two promises, kept here once for both roles:
//! - **No deadlock.** A side about to block reading first pushes out all
//!   it has written (a `Z_SYNC_FLUSH` and a write of the result), so a
//!   peer waiting for our command or reply always gets it. An explicit
//!   `flush` does the same. The stream below is never flushed itself:
//!   libssh2's channel flush throws away incoming data (see
//!   [`crate::ssh::ChannelStream`]).
//! - **No truncation taken for an end.** A stream that stops before its
//!   zlib trailer (adler-32 checked) is an `UnexpectedEof` error, never a
//!   clean end of input, so nothing cut short looks complete.
//!
//! [`Deflated`] wraps one duplex stream (the client on its channel);
//! [`halves`] makes a reader and a writer that share the compressor (the
//! server, whose input and output are apart).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::idle::{Input, Output};

/// zlib's level: its default. Measured on the 100 KiB of English text of
/// the benchmark: 6 gives 3.18 x, 9 gives 3.19 x for a third more CPU,
/// 1 gives 2.62 x (see the README's Benchmark).
pub const LEVEL: u32 = 6;

/// The argument to `receive` that asks for a compressed session.
pub const RECEIVE_ARGUMENT: &str = "deflate";

/// Bytes of compressed output gathered before they are written.
const OUT_CHUNK: usize = 16 * 1024;
/// Bytes of compressed input read at a time.
const IN_CHUNK: usize = 16 * 1024;
/// Longest plain-text answer quoted from a peer that does not compress.
const MAX_PLAIN_ANSWER: usize = 300;
/// The first byte of every zlib stream flate2 writes (deflate, 32 KiB
/// window); an SMTP reply starts with a digit instead.
const ZLIB_FIRST_BYTE: u8 = 0x78;

/// The sending half: a compressor and the output it has not written yet.
struct Compressor {
    compress: Compress,
    /// Compressed bytes not yet written.
    pending: Vec<u8>,
    /// Data went in since the last sync flush.
    dirty: bool,
    /// The trailer is written: nothing more may be sent.
    finished: bool,
    /// A write failed: the stream below is broken, do not finish it.
    broken: bool,
}

impl Compressor {
    fn new() -> Self {
        Compressor {
            compress: Compress::new(Compression::new(LEVEL), true),
            pending: Vec::with_capacity(OUT_CHUNK * 2),
            dirty: false,
            finished: false,
            broken: false,
        }
    }

    /// Compresses `data`; writes out what gathered once it is a chunk.
    fn write(&mut self, out: &mut impl Write, data: &[u8]) -> io::Result<usize> {
        if self.finished {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the end of the compressed stream",
            ));
        }
        if data.is_empty() {
            return Ok(0);
        }
        self.run(data, FlushCompress::None)?;
        self.dirty = true;
        if self.pending.len() >= OUT_CHUNK {
            self.drain(out)?;
        }
        Ok(data.len())
    }

    /// `Z_SYNC_FLUSH`: everything written so far goes out, decodable by
    /// the peer without what follows.
    fn sync(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.dirty && !self.finished {
            self.run(&[], FlushCompress::Sync)?;
            self.dirty = false;
        }
        self.drain(out)
    }

    /// Ends the stream (its trailer lets the peer tell an end from a cut).
    fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.finished {
            self.run(&[], FlushCompress::Finish)?;
            self.finished = true;
        }
        self.drain(out)
    }

    /// Feeds `data` to zlib with `flush`, growing `pending` until zlib
    /// has taken all of it and has nothing more to give.
    fn run(&mut self, mut data: &[u8], flush: FlushCompress) -> io::Result<()> {
        loop {
            if self.pending.capacity() - self.pending.len() < 64 {
                self.pending.reserve(OUT_CHUNK);
            }
            let before_in = self.compress.total_in();
            let before_out = self.pending.len();
            let status = self
                .compress
                .compress_vec(data, &mut self.pending, flush)
                .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
            let used = usize::try_from(self.compress.total_in() - before_in).unwrap_or(data.len());
            data = &data[used..];
            let room_left = self.pending.len() < self.pending.capacity();
            let done = match status {
                Status::StreamEnd => true,
                // zlib is done when it stopped with room to spare.
                Status::Ok | Status::BufError => data.is_empty() && room_left,
            };
            if done || (used == 0 && self.pending.len() == before_out && room_left) {
                return Ok(());
            }
        }
    }

    /// Writes what is pending (never flushing the stream below, see the
    /// module docs).
    fn drain(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = out.write_all(&self.pending);
        self.pending.clear();
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// A best-effort end for a stream being dropped: skipped when the
    /// stream below already failed (it would only wait out a timeout).
    fn close(&mut self, out: &mut impl Write) {
        if !self.broken {
            let _ = self.finish(out);
        }
    }
}

/// The receiving half: a decompressor and the compressed input it has
/// not decoded yet.
struct Decompressor {
    decompress: Decompress,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The zlib trailer was read and checked.
    ended: bool,
}

impl Decompressor {
    fn new() -> Self {
        Decompressor {
            decompress: Decompress::new(true),
            buf: vec![0; IN_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            ended: false,
        }
    }

    /// Decodes into `dst` from `input`, reading more of it only when
    /// nothing could be decoded from what is buffered. `Ok(0)` only after
    /// the stream's trailer.
    fn read(&mut self, input: &mut impl Read, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        loop {
            if self.ended {
                return Ok(0);
            }
            if self.decompress.total_in() == 0
                && self.start < self.end
                && self.buf[self.start] != ZLIB_FIRST_BYTE
            {
                return Err(self.plain_answer(input));
            }
            // Even with no input buffered: zlib may hold decoded bytes
            // that did not fit the last `dst`.
            let before_in = self.decompress.total_in();
            let before_out = self.decompress.total_out();
            let status = self
                .decompress
                .decompress(&self.buf[self.start..self.end], dst, FlushDecompress::None)
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("corrupt compressed stream: {e}"),
                    )
                })?;
            let used = usize::try_from(self.decompress.total_in() - before_in).unwrap_or(0);
            self.start += used;
            let produced = usize::try_from(self.decompress.total_out() - before_out).unwrap_or(0);
            if status == Status::StreamEnd {
                self.ended = true;
            }
            if produced > 0 || self.ended {
                return Ok(produced);
            }
            if self.start == self.end {
                // All buffered input decoded (a sync flush marker, a
                // header): only now wait for more.
                self.fill(input)?;
            } else if used == 0 {
                // zlib neither took input nor gave output: never loop on it.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt compressed stream: the decoder made no progress",
                ));
            }
        }
    }

    /// Reads more compressed input; its end before the trailer is a cut.
    fn fill(&mut self, input: &mut impl Read) -> io::Result<()> {
        loop {
            match input.read(&mut self.buf) {
                Ok(0) => return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the compressed stream was cut short (no end of stream before end of input)",
                )),
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The peer answered in plain text where a compressed stream should
    /// start: an rsmtp that does not know `receive deflate` refusing it
    /// (`421 4.7.0 ... "receive" takes no arguments`). Says so, quoting
    /// its first line, and what to do.
    fn plain_answer(&mut self, input: &mut impl Read) -> io::Error {
        let mut text = self.buf[self.start..self.end].to_vec();
        let mut chunk = [0u8; 256];
        while !text.contains(&b'\n') && text.len() < MAX_PLAIN_ANSWER {
            match input.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
            }
        }
        let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = &line[..line.len().min(MAX_PLAIN_ANSWER)];
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the hub answered \"receive {RECEIVE_ARGUMENT}\" without compression: \"{}\"; its rsmtp is too old for compression = true: upgrade rsmtp on the hub, or set compression = false for this peer",
                bsmtp::text::printable(line.trim_ascii_end())
            ),
        )
    }
}

/// Both directions of one session: what we send is compressed, what we
/// read is decompressed. Holds no stream, so that a stream type can keep
/// one beside its own fields (see [`crate::ssh::ChannelStream`]).
pub struct Duplex {
    tx: Compressor,
    rx: Decompressor,
}

impl Default for Duplex {
    fn default() -> Self {
        Self::new()
    }
}

impl Duplex {
    /// A fresh pair of streams, as at the start of a session.
    pub fn new() -> Self {
        Duplex {
            tx: Compressor::new(),
            rx: Decompressor::new(),
        }
    }

    /// Reads decompressed data from `stream`, after sending everything
    /// written so far (the peer may be waiting for it to answer).
    pub fn read<S: Read + Write>(&mut self, stream: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        self.tx.sync(stream)?;
        self.rx.read(stream, buf)
    }

    /// Compresses `buf` toward `stream`.
    pub fn write(&mut self, stream: &mut impl Write, buf: &[u8]) -> io::Result<usize> {
        self.tx.write(stream, buf)
    }

    /// Sends everything written so far (a sync flush).
    pub fn flush(&mut self, stream: &mut impl Write) -> io::Result<()> {
        self.tx.sync(stream)
    }

    /// Ends our stream: the peer's decoder sees a clean end.
    pub fn finish(&mut self, stream: &mut impl Write) -> io::Result<()> {
        self.tx.finish(stream)
    }

    /// Ends our stream unless writing already failed (for a drop).
    pub fn close(&mut self, stream: &mut impl Write) {
        self.tx.close(stream);
    }
}

/// A duplex stream with a compressed session on it. Dropping it ends the
/// outgoing stream cleanly (as closing a socket sends a FIN), unless a
/// write had failed.
pub struct Deflated<S: Read + Write> {
    stream: S,
    duplex: Duplex,
}

impl<S: Read + Write> Deflated<S> {
    /// Starts a compressed session on `stream`.
    pub fn new(stream: S) -> Self {
        Deflated {
            stream,
            duplex: Duplex::new(),
        }
    }

    /// Ends the outgoing stream.
    pub fn finish(&mut self) -> io::Result<()> {
        self.duplex.finish(&mut self.stream)
    }

    /// The stream below.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: Read + Write> Read for Deflated<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.duplex.read(&mut self.stream, buf)
    }
}

impl<S: Read + Write> Write for Deflated<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.duplex.write(&mut self.stream, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.duplex.flush(&mut self.stream)
    }
}

impl<S: Read + Write> Drop for Deflated<S> {
    fn drop(&mut self) {
        self.duplex.close(&mut self.stream);
    }
}

/// The server's output and compressor, shared by both halves.
struct Sender<'a, O> {
    output: &'a mut O,
    tx: Compressor,
}

/// The reading half of a compressed server session (see [`halves`]).
pub struct DeflatedInput<'a, I, O> {
    input: &'a mut I,
    rx: Decompressor,
    sender: Rc<RefCell<Sender<'a, O>>>,
}

/// The writing half of a compressed server session (see [`halves`]).
pub struct DeflatedOutput<'a, O> {
    sender: Rc<RefCell<Sender<'a, O>>>,
}

/// Splits a server session's `input` and `output` into compressed halves
/// that share one compressor: the reader sends all the writer wrote before
/// it waits for input. End the session with [`DeflatedOutput::finish`].
pub fn halves<'a, I: Input, O: Output>(
    input: &'a mut I,
    output: &'a mut O,
) -> (DeflatedInput<'a, I, O>, DeflatedOutput<'a, O>) {
    let sender = Rc::new(RefCell::new(Sender {
        output,
        tx: Compressor::new(),
    }));
    (
        DeflatedInput {
            input,
            rx: Decompressor::new(),
            sender: Rc::clone(&sender),
        },
        DeflatedOutput { sender },
    )
}

/// Bytes of one direction of a compressed session: on the wire and as
/// the session sees them (for the log line that shows what it saved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Compressed bytes.
    pub wire: u64,
    /// Session bytes.
    pub plain: u64,
}

impl<I, O> DeflatedInput<'_, I, O> {
    /// What was read so far.
    pub fn totals(&self) -> Totals {
        Totals {
            wire: self.rx.decompress.total_in(),
            plain: self.rx.decompress.total_out(),
        }
    }
}

impl<I: Input, O: Output> Read for DeflatedInput<'_, I, O> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        {
            let mut sender = self.sender.borrow_mut();
            let Sender { output, tx } = &mut *sender;
            tx.sync(output)?;
        }
        self.rx.read(self.input, buf)
    }
}

impl<I: Input, O: Output> Input for DeflatedInput<'_, I, O> {
    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.input.set_idle_timeout(timeout);
    }
}

impl<O> DeflatedOutput<'_, O> {
    /// What was written so far (compressed: what zlib gave out).
    pub fn totals(&self) -> Totals {
        let sender = self.sender.borrow();
        Totals {
            wire: sender.tx.compress.total_out(),
            plain: sender.tx.compress.total_in(),
        }
    }
}

impl<O: Output> DeflatedOutput<'_, O> {
    /// Ends the outgoing stream: the client's decoder sees a clean end.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut sender = self.sender.borrow_mut();
        let Sender { output, tx } = &mut *sender;
        tx.finish(output)
    }

    /// Ends the outgoing stream unless writing already failed (for a
    /// session that ended on an error).
    pub fn close(&mut self) {
        let mut sender = self.sender.borrow_mut();
        let Sender { output, tx } = &mut *sender;
        tx.close(output);
    }
}

impl<O: Output> Write for DeflatedOutput<'_, O> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut sender = self.sender.borrow_mut();
        let Sender { output, tx } = &mut *sender;
        tx.write(output, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut sender = self.sender.borrow_mut();
        let Sender { output, tx } = &mut *sender;
        tx.sync(output)
    }
}

impl<O: Output> Output for DeflatedOutput<'_, O> {
    fn set_idle_timeout(&mut self, timeout: Duration) {
        self.sender.borrow_mut().output.set_idle_timeout(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::thread;

    /// Compresses `chunks` as one session's stream, each chunk its own
    /// write, then ends it.
    fn compressed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut tx = Compressor::new();
        for chunk in chunks {
            assert_eq!(tx.write(&mut wire, chunk).unwrap(), chunk.len());
        }
        tx.finish(&mut wire).unwrap();
        wire
    }

    /// Decompresses all of `wire`, `step` bytes of output at a time.
    fn decompressed(mut wire: &[u8], step: usize) -> io::Result<Vec<u8>> {
        let mut rx = Decompressor::new();
        let mut out = Vec::new();
        let mut buf = vec![0; step];
        loop {
            match rx.read(&mut wire, &mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn text(bytes: usize) -> Vec<u8> {
        let line: &[u8] = b"The quick brown fox jumps over the lazy dog, 0123456789 \xc3\xa4.\r\n";
        line.iter().copied().cycle().take(bytes).collect()
    }

    #[test]
    fn round_trip_whole_and_in_small_writes() {
        let data = text(300 * 1024);
        let whole = compressed(&[&data]);
        assert!(whole.len() * 10 < data.len(), "{} bytes", whole.len());
        assert_eq!(decompressed(&whole, 4096).unwrap(), data);
        let pieces: Vec<&[u8]> = data.chunks(7).collect();
        let small = compressed(&pieces);
        assert_eq!(decompressed(&small, 1).unwrap()[..1000], data[..1000]);
        assert_eq!(decompressed(&small, 65536).unwrap(), data);
        assert!(compressed(&[]).len() < 16);
        assert_eq!(decompressed(&compressed(&[]), 10).unwrap(), b"");
    }

    /// Regression guard: a stream that stops before its trailer must never
    /// read as a clean end (rsmtp would take a cut session for a QUIT).
    #[test]
    fn truncated_stream_is_an_error_not_an_end() {
        let data = text(20 * 1024);
        let wire = compressed(&[&data]);
        for cut in [0, 1, 2, wire.len() / 2, wire.len() - 4, wire.len() - 1] {
            let err = decompressed(&wire[..cut], 512).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "cut at {cut}: {err}"
            );
        }
        // Cut right after a sync flush: everything before it decodes, and
        // the end is still a cut.
        let mut wire = Vec::new();
        let mut tx = Compressor::new();
        tx.write(&mut wire, b"MAIL FROM:<a@b>\r\n").unwrap();
        tx.sync(&mut wire).unwrap();
        let mut rx = Decompressor::new();
        let mut buf = [0u8; 64];
        let mut input = wire.as_slice();
        let n = rx.read(&mut input, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAIL FROM:<a@b>\r\n");
        let err = rx.read(&mut input, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn corrupt_stream_is_an_error() {
        let mut wire = compressed(&[&text(10 * 1024)]);
        let at = wire.len() - 2;
        wire[at] ^= 0xff;
        let err = decompressed(&wire, 512).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// An rsmtp too old for `receive deflate` answers in plain text: the
    /// error quotes it and says what to do.
    #[test]
    fn plain_answer_says_upgrade_or_turn_off() {
        let answer: &[u8] = b"421 4.7.0 refused SSH command \"receive deflate\": \"receive\" takes no arguments; this key may run only \"receive\"\r\n";
        let err = decompressed(answer, 512).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("421 4.7.0 refused SSH command"), "{text}");
        assert!(text.contains("upgrade rsmtp on the hub"), "{text}");
        assert!(text.contains("compression = false"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    /// A request/response dialogue over a socket pair, as an SMTP client
    /// and server: each side blocks reading the other's answer, so this
    /// hangs unless every read first sync-flushes what was written. The
    /// server uses the split halves, the client the duplex wrapper.
    #[test]
    fn interleaved_dialogue_does_not_deadlock() {
        let (client, server) = UnixStream::pair().unwrap();
        for end in [&client, &server] {
            end.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        let server = thread::spawn(move || {
            let mut reader = Socket(server.try_clone().unwrap());
            let mut writer = Socket(server);
            let (mut input, mut output) = halves(&mut reader, &mut writer);
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            let mut answered = 0;
            loop {
                if input.read(&mut byte).unwrap() == 0 {
                    break;
                }
                line.push(byte[0]);
                if byte[0] == b'\n' {
                    // Many small writes for one reply, no explicit flush.
                    output.write_all(b"250 ").unwrap();
                    output.write_all(&line).unwrap();
                    answered += 1;
                    line.clear();
                }
            }
            output.finish().unwrap();
            answered
        });
        let mut session = Deflated::new(client);
        // One line of 64 KiB (the server answers line by line).
        let big: Vec<u8> = text(64 * 1024)
            .into_iter()
            .map(|b| if b == b'\n' { b' ' } else { b })
            .chain(*b"\n")
            .collect();
        for round in 0..200 {
            let request = format!("request {round}\n");
            session.write_all(request.as_bytes()).unwrap();
            let mut reply = vec![0u8; 4 + request.len()];
            session.read_exact(&mut reply).unwrap();
            assert_eq!(&reply[4..], request.as_bytes());
            if round % 50 == 0 {
                // Several compressor chunks in two writes, and an explicit flush.
                session.write_all(&big[..1000]).unwrap();
                session.write_all(&big[1000..]).unwrap();
                session.flush().unwrap();
                let mut reply = vec![0u8; 4 + big.len()];
                session.read_exact(&mut reply).unwrap();
                assert!(reply[4..] == big[..], "the long line came back changed");
            }
        }
        session.finish().unwrap();
        // The server saw our clean end, answered everything, ended its
        // stream, and we see its clean end.
        let mut rest = Vec::new();
        session.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(server.join().unwrap(), 204);
    }

    /// A socket as a session's input or output.
    struct Socket(UnixStream);

    impl Read for Socket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    impl Input for Socket {}
    impl Output for Socket {}
}
