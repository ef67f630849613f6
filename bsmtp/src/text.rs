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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_printable() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        assert_eq!(printable(b"ok \xff\n"), "ok \\xff\\n");
        assert_eq!(printable(&[b'x'; 101]).len(), 103);
    }
}
