//! Integration tests of SMTP replies: wire form and parsing as snapshots,
//! and `parse(encode(r)) == r` as a property.

use std::fmt::Write as _;

use bsmtp::reply::{EnhancedCode, Reply, ReplyError, ReplyParser};
use proptest::prelude::*;

/// Parses every reply in `input`, fed in chunks split at `cut` (as a caller
/// keeping unconsumed bytes and appending more would).
fn parse_split(input: &[u8], cut: usize) -> Result<Vec<Reply>, ReplyError> {
    let mut parser = ReplyParser::new();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    for chunk in [&input[..cut], &input[cut..]] {
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        while let Some((n, reply)) = parser.parse(&buf[pos..])? {
            pos += n;
            replies.push(reply);
        }
        buf.drain(..pos);
    }
    assert!(
        buf.is_empty(),
        "unconsumed: {:?}",
        buf.escape_ascii().to_string()
    );
    Ok(replies)
}

/// Parses `input` split at every offset, checking that all agree.
fn parse_every_way(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
    let whole = parse_split(input, 0);
    for cut in 1..=input.len() {
        assert_eq!(parse_split(input, cut), whole, "split at {cut}");
    }
    whole
}

#[test]
fn reply_wire_form() {
    let replies = [
        Reply::new(
            250,
            Some(EnhancedCode::new(2, 0, 0)),
            "Ok: queued as 4F1A2B3C",
        ),
        Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"),
        Reply::new(
            550,
            Some(EnhancedCode::new(5, 1, 1)),
            "<x@hub.example>: Recipient address rejected",
        ),
        Reply {
            code: 250,
            enhanced: None,
            lines: vec!["hub.example".into(), "PIPELINING".into(), "8BITMIME".into()],
        },
        Reply {
            code: 451,
            enhanced: Some(EnhancedCode::new(4, 3, 0)),
            lines: vec!["temporary failure".into(), "try again later".into()],
        },
        Reply::new(221, Some(EnhancedCode::new(2, 0, 0)), ""),
    ];
    let mut rendered = String::new();
    for reply in &replies {
        let mut out = Vec::new();
        reply.encode(&mut out);
        writeln!(rendered, "{}", out.escape_ascii()).unwrap();
        writeln!(rendered, "  one_line: {reply}").unwrap();
        writeln!(rendered, "  status: {}", reply.status()).unwrap();
    }
    insta::assert_snapshot!(rendered);
}

#[test]
fn replies_from_real_servers() {
    // Postfix repeats the enhanced code on every line; some servers use LF
    // only; exim sends 250 without enhanced codes to HELO.
    let input = b"220 hub.example ESMTP Postfix\r\n\
250-hub.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n\
250 2.1.0 Ok\r\n\
550-5.7.1 Message rejected\n550-5.7.1 see https://hub.example/policy\n550 5.7.1 bye\n\
250 hub.example Hello leaf.example [192.0.2.1]\r\n\
421 4.4.2 hub.example Error: timeout exceeded\r\n";
    let replies = parse_every_way(input).unwrap();
    let mut rendered = String::new();
    for reply in &replies {
        writeln!(rendered, "{reply:?}").unwrap();
    }
    insta::assert_snapshot!(rendered);
}

#[test]
fn malformed_replies() {
    let cases: &[&[u8]] = &[
        b"hello\r\n",
        b"25\r\n",
        b"2500 x\r\n",
        b"099 x\r\n",
        b"250_x\r\n",
        b"250-a\r\n251 b\r\n",
    ];
    let mut rendered = String::new();
    for input in cases {
        let err = parse_every_way(input).unwrap_err();
        writeln!(rendered, "{} -> {err}", input.escape_ascii()).unwrap();
    }
    insta::assert_snapshot!(rendered);
}

#[test]
fn line_of_exactly_the_limit_parses() {
    let mut line = b"250 ".to_vec();
    line.resize(bsmtp::reply::MAX_REPLY_LINE - 2, b'x');
    line.extend_from_slice(b"\r\n");
    assert_eq!(parse_split(&line, 0).unwrap().len(), 1);
    line.insert(5, b'x');
    assert_eq!(parse_split(&line, 0), Err(ReplyError::LineTooLong));
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    (
        prop::sample::select(vec![2u16, 4, 5]),
        0u16..100,
        prop::option::of((0u16..1000, 0u16..1000)),
        prop::collection::vec("[A-Za-z<>@.:;,()\\[\\]é-][ -~é]{0,40}", 1..5),
    )
        .prop_map(|(class, rest, enhanced, lines)| Reply {
            code: class * 100 + rest,
            enhanced: enhanced.map(|(s, d)| EnhancedCode::new(u8::try_from(class).unwrap(), s, d)),
            lines,
        })
}

proptest! {
    #[test]
    fn parse_of_encode_is_identity(reply in reply_strategy(), cut in any::<usize>()) {
        let mut wire = Vec::new();
        reply.encode(&mut wire);
        let cut = cut % (wire.len() + 1);
        prop_assert_eq!(parse_split(&wire, cut).unwrap(), vec![reply]);
    }
}
