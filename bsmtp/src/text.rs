//! Text from outside made safe for one log line, one status line or one
//! error message: the one place that decides how hostile bytes are shown.

/// Folds `text` onto one line, control characters becoming spaces: pipe(8)
/// turns newlines into spaces anyway, and a log line must never be split by
/// what a peer sent.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Shows hostile bytes safely: printable ASCII as is, the rest escaped
/// (`\xff`, `\n`), at most 100 characters of input, then `...`.
pub fn printable(bytes: &[u8]) -> String {
    const SHOWN: usize = 100;
    let mut out: String = bytes
        .iter()
        .take(SHOWN)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > SHOWN {
        out.push_str("...");
    }
    out
}

/// Shows text from outside on a terminal or in a listing, keeping what
/// is printable (letters of any script included) and escaping, Rust
/// style, what could move the cursor, clear the screen, send a terminal
/// command or reorder what is shown: C0 and C1 controls and DEL
/// (`\u{9b}` is a C1 CSI), and the bidirectional and zero-width format
/// characters; a backslash is doubled, so the result reads back
/// unambiguously.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let format = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || format {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_printable() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        assert_eq!(printable(b"ok \xff\n"), "ok \\xff\\n");
        assert_eq!(printable(&[b'x'; 101]).len(), 103);
    }

    /// Regression (audit): `bsmtp-ssh queue` printed C1 controls raw
    /// (`\u{9b}` is CSI on many terminals).
    #[test]
    fn shown_escapes_what_a_terminal_acts_on() {
        assert_eq!(shown("gr\u{fc}n@x"), "gr\u{fc}n@x");
        assert_eq!(shown("a\u{9b}2Jb"), "a\\u{9b}2Jb");
        assert_eq!(shown("\u{1b}[31m\u{7f}"), "\\u{1b}[31m\\u{7f}");
        assert_eq!(shown("x\u{202e}y\\"), "x\\u{202e}y\\\\");
        assert_eq!(shown("tab\tnl\n"), "tab\\tnl\\n");
    }
}
