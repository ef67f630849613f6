//! Postfix's queue-file record format, as postdrop(1) reads it on its
//! standard input (the protocol Postfix's own sendmail speaks): a type byte,
//! the length in 7-bit groups low first with the high bit meaning "more",
//! then the data. Postfix `src/global/record.c`, `src/global/rec_type.h`.
//!
//! Sans I/O: these append to a caller's buffer.

/// Envelope sender record.
pub const REC_FROM: u8 = b'S';
/// Envelope recipient record.
pub const REC_RCPT: u8 = b'R';
/// Attribute record (`name=value`).
pub const REC_ATTR: u8 = b'A';
/// Start of message content.
pub const REC_MESG: u8 = b'M';
/// A whole line of content (or the last piece of a long one).
pub const REC_NORM: u8 = b'N';
/// A piece of a long line that continues in the next record.
pub const REC_CONT: u8 = b'L';
/// End of content, start of extracted envelope information.
pub const REC_XTRA: u8 = b'X';
/// End of the submission: from here postdrop commits.
pub const REC_END: u8 = b'E';

/// Attribute names postdrop passes on to cleanup (`src/global/mail_proto.h`,
/// `MAIL_ATTR_*`); it drops others with a warning.
pub mod attr {
    /// The DSN envelope ID (`ENVID=`, `sendmail -V`).
    pub const DSN_ENVID: &str = "envelope_id";
    /// What a DSN returns (`RET=`): 1 full, 2 headers.
    pub const DSN_RET: &str = "ret_flags";
    /// The next recipient's `NOTIFY=` bit mask.
    pub const DSN_NOTIFY: &str = "notify_flags";
    /// The next recipient's `ORCPT=`: `type;address`.
    pub const DSN_ORCPT: &str = "dsn_orig_rcpt";
    /// The body's encoding: `7bit` or `8bit` (`BODY=`).
    pub const ENCODING: &str = "encoding";
    /// Address rewriting context: `local` or `remote`.
    pub const REWRITE_CONTEXT: &str = "rewrite_context";
}

/// Longest record data we write. postdrop refuses records longer than its
/// `line_limit` (2048 by default), so long lines go as `L` continuations.
pub const MAX_RECORD: usize = 1024;

/// Appends one record to `out`.
pub fn put_record(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
    out.push(kind);
    let mut len = data.len();
    loop {
        // Seven bits at a time, low first; the high bit says more follow.
        let mut byte = u8::try_from(len & 0x7f).unwrap_or(0);
        len >>= 7;
        if len != 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(data);
}

/// Appends a piece of a content line as one or more records: `L` for pieces
/// that continue, `N` for the piece that ends the line.
pub fn put_line_piece(out: &mut Vec<u8>, mut bytes: &[u8], end_of_line: bool) {
    while bytes.len() > MAX_RECORD {
        put_record(out, REC_CONT, &bytes[..MAX_RECORD]);
        bytes = &bytes[MAX_RECORD..];
    }
    if end_of_line {
        put_record(out, REC_NORM, bytes);
    } else if !bytes.is_empty() {
        put_record(out, REC_CONT, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_length_uses_seven_bit_groups_low_first() {
        let mut out = Vec::new();
        put_record(&mut out, b'N', &[b'x'; 300]);
        // 300 = 0b10_0101100: low seven bits 0x2c with the more-bit, then 2.
        assert_eq!(&out[..3], &[b'N', 0xac, 0x02]);
        assert_eq!(out.len(), 3 + 300);
        out.clear();
        put_record(&mut out, b'E', b"");
        assert_eq!(out, [b'E', 0]);
    }

    #[test]
    fn long_line_becomes_continuations_then_one_norm() {
        let mut out = Vec::new();
        put_line_piece(&mut out, &vec![b'a'; MAX_RECORD * 2 + 5], true);
        let kinds: Vec<u8> = records(&out).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [REC_CONT, REC_CONT, REC_NORM]);
        out.clear();
        put_line_piece(&mut out, b"abc", false);
        put_line_piece(&mut out, b"", true);
        assert_eq!(records(&out), [(REC_CONT, 3), (REC_NORM, 0)]);
    }

    fn records(mut bytes: &[u8]) -> Vec<(u8, usize)> {
        let mut out = Vec::new();
        while let Some((&kind, rest)) = bytes.split_first() {
            let (mut len, mut shift, mut i) = (0usize, 0, 0);
            loop {
                let b = rest[i];
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                i += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
            out.push((kind, len));
            bytes = &rest[i + len..];
        }
        out
    }
}
