//! Integration tests of the BSMTP codec: the golden corpus under
//! `fixtures/bsmtp/`, fed whole, byte by byte and split at every offset, in
//! LF and CRLF form; encoder output; and `decode(encode(x)) == x`.

use std::fmt::Write as _;

use bsmtp::codec::{
    encode_command, BodyEncoder, Command, CommandError, Decoder, Event, Param, MAX_BODY_PIECE,
};
use proptest::prelude::*;

/// An event with its bytes owned, body pieces joined into whole lines, so
/// that runs with different chunking compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Command(Command),
    /// A complete body line, without its terminator.
    Line(Vec<u8>),
    /// The start of a body line the stream ended in.
    PartialLine(Vec<u8>),
    DataEnd,
    Invalid(CommandError),
    Truncated,
}

/// Collects events the way a real caller does: a buffer that gets chunks
/// appended and consumed bytes dropped, then `decode_eof` at the end. Also
/// checks what every event promises.
fn run<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<Owned> {
    let mut decoder = Decoder::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut line: Option<Vec<u8>> = None;
    let take = |event: Event<'_>, line: &mut Option<Vec<u8>>, events: &mut Vec<Owned>| {
        if let Event::BodyPiece { bytes, end_of_line } = event {
            assert!(bytes.len() <= MAX_BODY_PIECE, "piece too long");
            assert!(end_of_line || !bytes.is_empty(), "empty piece mid-line");
            let current = line.get_or_insert_with(Vec::new);
            current.extend_from_slice(bytes);
            if end_of_line {
                events.push(Owned::Line(line.take().unwrap()));
            }
            return;
        }
        assert!(line.is_none(), "{event:?} in the middle of a body line");
        match event {
            Event::Command(c) => events.push(Owned::Command(c)),
            Event::DataEnd => events.push(Owned::DataEnd),
            Event::Invalid(e) => events.push(Owned::Invalid(e)),
            Event::Skipped => {}
            Event::BodyPiece { .. } => unreachable!(),
        }
    };
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        while let Some((n, event)) = decoder.decode(&buf[pos..]) {
            assert!(n > 0 && pos + n <= buf.len(), "bad consumed count {n}");
            pos += n;
            take(event, &mut line, &mut events);
        }
        buf.drain(..pos);
    }
    let mut pos = 0;
    loop {
        match decoder.decode_eof(&buf[pos..]) {
            Ok(Some((n, event))) => {
                assert!(pos + n <= buf.len());
                pos += n;
                take(event, &mut line, &mut events);
            }
            Ok(None) => {
                assert_eq!(pos, buf.len(), "decode_eof left input unconsumed");
                assert!(line.is_none());
                break;
            }
            Err(_) => {
                if let Some(partial) = line.take() {
                    events.push(Owned::PartialLine(partial));
                }
                events.push(Owned::Truncated);
                break;
            }
        }
    }
    events
}

/// Runs `input` whole, one byte at a time and split at every offset, and
/// checks that all runs agree.
fn decode_every_way(input: &[u8]) -> Vec<Owned> {
    let whole = run([input]);
    assert_eq!(run(input.chunks(1)), whole, "one byte at a time");
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(run([a, b]), whole, "split at {i}");
    }
    whole
}

/// Adds a CR before every LF that lacks one.
fn to_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 2);
    for (i, &b) in input.iter().enumerate() {
        if b == b'\n' && (i == 0 || input[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn show_bytes(bytes: &[u8]) -> String {
    if bytes.len() > 80 {
        format!(
            "({} bytes) \"{}\" ... \"{}\"",
            bytes.len(),
            bytes[..20].escape_ascii(),
            bytes[bytes.len() - 10..].escape_ascii()
        )
    } else {
        // Text as text (UTF-8 bodies stay readable), anything else escaped.
        match std::str::from_utf8(bytes) {
            Ok(text) => format!("{text:?}"),
            Err(_) => format!("b\"{}\"", bytes.escape_ascii()),
        }
    }
}

/// One event per line, for snapshots a person can check by eye.
fn render(events: &[Owned]) -> String {
    let mut out = String::new();
    for event in events {
        match event {
            Owned::Command(c) => writeln!(out, "command   {c:?}"),
            Owned::Line(l) => writeln!(out, "line      {}", show_bytes(l)),
            Owned::PartialLine(l) => writeln!(out, "partial   {}", show_bytes(l)),
            Owned::DataEnd => writeln!(out, "data-end"),
            Owned::Invalid(e) => writeln!(out, "invalid   {e:?} -> {}", e.reply()),
            Owned::Truncated => writeln!(out, "truncated"),
        }
        .unwrap();
    }
    out
}

#[test]
fn golden_corpus() {
    insta::glob!("fixtures/bsmtp/**/*.bsmtp", |path| {
        let lf = std::fs::read(path).unwrap();
        let events = decode_every_way(&lf);
        let crlf = to_crlf(&lf);
        assert_eq!(decode_every_way(&crlf), events, "CRLF form differs");
        insta::assert_snapshot!(render(&events));
    });
}

/// The body lines of the messages in `events`.
fn body_lines(events: &[Owned]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Owned::Line(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn smuggling_lf_dot_crlf_ends_the_message() {
    // A bare LF ends a line, so "\n.\r\n" is a dot line: the MAIL after it
    // is a new transaction, never part of the first message.
    let events = run([&b"DATA\nbody\n.\r\nQUIT\n"[..]]);
    assert_eq!(
        events,
        [
            Owned::Command(Command::Data),
            Owned::Line(b"body".to_vec()),
            Owned::DataEnd,
            Owned::Command(Command::Quit)
        ]
    );
}

#[test]
fn smuggling_cr_dot_crlf_is_data() {
    // A bare CR is data, so "\r.\r\n" does not end the message.
    let events = run([&b"DATA\nbody\r.\r\nQUIT\n"[..]]);
    assert_eq!(
        events,
        [
            Owned::Command(Command::Data),
            Owned::Line(b"body\r.".to_vec()),
            Owned::Line(b"QUIT".to_vec()),
            Owned::Truncated
        ]
    );
}

#[test]
fn smuggling_lf_dot_lf_ends_the_message() {
    let events = run([&b"DATA\nbody\n.\nQUIT\n"[..]]);
    assert_eq!(events[2], Owned::DataEnd);
    assert_eq!(events[3], Owned::Command(Command::Quit));
}

#[test]
fn smuggling_crlf_dot_cr_is_data() {
    // ".\r" followed by more is a stuffed line holding "\rQUIT".
    let events = run([&b"DATA\r\nbody\r\n.\rQUIT\r\n"[..]]);
    assert_eq!(body_lines(&events), [b"body".to_vec(), b"\rQUIT".to_vec()]);
    assert_eq!(events.last(), Some(&Owned::Truncated));
}

#[test]
fn command_after_data_end_is_a_command_again() {
    let events = run([&b"DATA\n.\nDATA\nx\n.\n"[..]]);
    assert_eq!(
        events,
        [
            Owned::Command(Command::Data),
            Owned::DataEnd,
            Owned::Command(Command::Data),
            Owned::Line(b"x".to_vec()),
            Owned::DataEnd
        ]
    );
}

#[test]
fn blank_command_line_is_invalid() {
    let events = run([&b"\r\nQUIT\r\n"[..]]);
    assert_eq!(
        events,
        [
            Owned::Invalid(CommandError::EmptyLine),
            Owned::Command(Command::Quit)
        ]
    );
}

#[test]
fn over_long_command_line_held_in_bounded_buffer() {
    // A line with no end in sight must not grow the caller's buffer.
    let mut decoder = Decoder::new();
    let chunk = vec![b'x'; 65536];
    for _ in 0..16 {
        let (n, event) = decoder.decode(&chunk).unwrap();
        assert_eq!((n, event), (chunk.len(), Event::Skipped));
    }
    assert_eq!(decoder.decode_eof(b"xx"), Ok(Some((2, Event::Skipped))));
    assert_eq!(
        decoder.decode_eof(b""),
        Ok(Some((0, Event::Invalid(CommandError::LineTooLong))))
    );
    assert_eq!(decoder.decode_eof(b""), Ok(None));
}

fn encode_body(chunks: &[&[u8]]) -> String {
    let mut encoder = BodyEncoder::new();
    let mut out = Vec::new();
    for chunk in chunks {
        encoder.encode(chunk, &mut out);
    }
    encoder.finish(&mut out);
    out.escape_ascii().to_string()
}

#[test]
fn encoder_output() {
    let cases: &[(&str, &[&[u8]])] = &[
        ("empty", &[]),
        ("lf_lines", &[b"Subject: x\n\nbody\n"]),
        ("crlf_lines", &[b"Subject: x\r\n\r\nbody\r\n"]),
        ("no_final_newline", &[b"a\nb"]),
        ("dots", &[b".\n..\n.x\nx.\n."]),
        ("dot_after_split", &[b"a\n", b".", b"b\n"]),
        ("bare_cr", &[b"a\rb\r", b"\r\n\r"]),
        ("cr_split_from_lf", &[b"a\r", b"\n", b".\r", b"\n"]),
        ("nul_and_8bit", &[b"\0\n\xc3\xa9\xff\n"]),
    ];
    let mut rendered = String::new();
    for (name, chunks) in cases {
        writeln!(rendered, "{name}: {}", encode_body(chunks)).unwrap();
    }
    insta::assert_snapshot!(rendered);
}

#[test]
fn command_encoding() {
    let commands = [
        Command::Ehlo("leaf.example".into()),
        Command::Helo("leaf.example".into()),
        Command::Mail {
            from: String::new(),
            params: vec![],
        },
        Command::Mail {
            from: "alice@leaf.example".into(),
            params: vec![
                Param {
                    keyword: "SIZE".into(),
                    value: Some("42".into()),
                },
                Param {
                    keyword: "SMTPUTF8".into(),
                    value: None,
                },
            ],
        },
        Command::Rcpt {
            to: "\"john smith\"@hub.example".into(),
            params: vec![Param {
                keyword: "NOTIFY".into(),
                value: Some("NEVER".into()),
            }],
        },
        Command::Data,
        Command::Rset,
        Command::Noop,
        Command::Quit,
    ];
    let mut out = Vec::new();
    for command in &commands {
        let start = out.len();
        encode_command(command, &mut out);
        // What we write, we read back unchanged.
        let line = &out[start..out.len() - 2];
        assert_eq!(Command::parse(line).as_ref(), Ok(command));
    }
    // Escaped, so that the snapshot shows every CRLF.
    let mut rendered = String::new();
    for line in out.split_inclusive(|&b| b == b'\n') {
        writeln!(rendered, "{}", line.escape_ascii()).unwrap();
    }
    insta::assert_snapshot!(rendered);
}

/// The lines of raw content as the decoder gives them back: split at LF,
/// one CR before each LF dropped, a last line without LF kept.
fn expected_lines(content: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
    // The piece after the last LF is no line when empty; when not empty it
    // is a last line without LF, whose final CR (if any) is data.
    let last = pieces.pop().filter(|l| !l.is_empty());
    let mut lines: Vec<Vec<u8>> = pieces
        .into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .collect();
    lines.extend(last.map(<[u8]>::to_vec));
    lines
}

/// Cuts `bytes` at the given offsets (taken modulo its length).
fn chunks_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for cut in cuts {
        chunks.push(&bytes[last..cut]);
        last = cut;
    }
    chunks.push(&bytes[last..]);
    chunks
}

fn content_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop::sample::select(vec![b'.', b'\r', b'\n', 0, b'a', b' ', 0xc3, 0xff]),
        0..200,
    )
}

proptest! {
    #[test]
    fn decode_of_encode_gives_the_content_lines(
        content in content_bytes(),
        encode_cuts in prop::collection::vec(any::<usize>(), 0..5),
        decode_cuts in prop::collection::vec(any::<usize>(), 0..5),
    ) {
        let mut wire = Vec::new();
        encode_command(&Command::Data, &mut wire);
        let mut encoder = BodyEncoder::new();
        for chunk in chunks_at(&content, &encode_cuts) {
            encoder.encode(chunk, &mut wire);
        }
        encoder.finish(&mut wire);
        let events = run(chunks_at(&wire, &decode_cuts));
        let mut expected = vec![Owned::Command(Command::Data)];
        expected.extend(expected_lines(&content).into_iter().map(Owned::Line));
        expected.push(Owned::DataEnd);
        prop_assert_eq!(events, expected);
    }

    #[test]
    fn chunking_never_changes_events(
        input in prop::collection::vec(
            prop::sample::select(b".\r\n\0 aDATMIL:<>@".to_vec()),
            0..300,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        // Start in DATA so that dot and CR handling gets most of the bytes.
        let mut stream = b"DATA\n".to_vec();
        stream.extend_from_slice(&input);
        prop_assert_eq!(run(chunks_at(&stream, &cuts)), run([&stream[..]]));
    }
}
