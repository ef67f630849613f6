//! Envelope addresses in Postfix's two forms, and the conversion between them.
//!
//! SMTP carries the *external* form, where a local part that is not a plain
//! dot-atom is quoted: `"john doe"@example.org`. Postfix keeps the
//! *internal*, unquoted form in its queue files and logs the external one:
//! the mailbox above is `john doe@example.org` inside Postfix. Its sendmail
//! and smtpd internalize what they receive (`unquote_822_local()`); pipe(8)
//! with `flags=q` hands a transport the external form again
//! (`quote_822_local()`). A program that writes queue records itself, as
//! rsmtp does through postdrop, must internalize too, or `"john doe"` becomes
//! a different mailbox, `"\"john doe\""`.
//!
//! Only the local part is ever quoted or unquoted: what follows the last
//! unquoted `@` is the domain and passes untouched.

/// RFC 5322 `specials` plus space: any of these in a local part needs quotes.
const SPECIALS: &str = "()<>@,;:\\\".[] ";

/// The internal (unquoted) form of an external address: quotes removed,
/// backslash escapes resolved, the domain untouched. `""` stays `""` (the
/// null sender).
pub fn to_internal(external: &str) -> String {
    let mut out = String::with_capacity(external.len());
    let mut in_quote = false;
    // Where the domain starts, in `out` and in `external`.
    let mut last_at: Option<(usize, usize)> = None;
    let mut chars = external.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => in_quote = !in_quote,
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    out.push(escaped);
                }
            }
            '@' if !in_quote => {
                last_at = Some((out.len(), at));
                out.push('@');
            }
            _ => out.push(c),
        }
    }
    if let Some((out_at, source_at)) = last_at {
        out.truncate(out_at);
        out.push_str(&external[source_at..]);
    }
    out
}

/// The external (RFC 5321) form of an internal address: the local part is
/// quoted when it is not a dot-atom, with `"` and `\` escaped inside. The
/// local part ends at the last `@`.
pub fn to_external(internal: &str) -> String {
    if internal.is_empty() {
        return String::new();
    }
    let (local, domain) = match internal.rfind('@') {
        Some(at) => (&internal[..at], Some(&internal[at + 1..])),
        None => (internal, None),
    };
    let mut out = String::with_capacity(internal.len() + 2);
    if is_dot_atom(local) {
        out.push_str(local);
    } else {
        out.push('"');
        for c in local.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    if let Some(domain) = domain {
        out.push('@');
        out.push_str(domain);
    }
    out
}

/// True for a local part that needs no quotes: atoms of non-special,
/// non-control characters joined by single dots.
fn is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| !c.is_control() && !SPECIALS.contains(c))
        })
}

/// `address` completed with `@domain` when it has no `@` outside a quoted
/// string: what Postfix's sendmail does with a bare local part (`root`
/// becomes `root@$myorigin`). The null sender (empty) stays empty.
pub fn qualify(address: &str, domain: &str) -> String {
    if address.is_empty() || has_unquoted_at(address) {
        return address.to_owned();
    }
    format!("{address}@{domain}")
}

/// True when `address` has an `@` outside a quoted string.
fn has_unquoted_at(address: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in address.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '@' if !quoted => return true,
            _ => {}
        }
    }
    false
}

/// True when `address`, as it is, goes into `MAIL FROM` or `RCPT TO` and
/// our own decoder reads it back unchanged: a valid external (RFC 5321)
/// form, at most [`crate::codec::MAX_ADDRESS`] bytes, qualified. Every
/// address that is spooled or sent passes here first, so a spool file
/// always reads back.
pub fn is_wire_form(address: &str) -> bool {
    use crate::codec::{encode_command, Command, MAX_ADDRESS};
    let mut line = Vec::new();
    encode_command(
        &Command::Rcpt {
            to: address.to_owned(),
            params: Vec::new(),
        },
        &mut line,
    );
    address.len() <= MAX_ADDRESS
        && Command::parse(line.strip_suffix(b"\r\n").unwrap_or(&line))
            .is_ok_and(|parsed| matches!(parsed, Command::Rcpt { to, .. } if to == address))
}

/// A local part that names another destination: Postfix's trivial-rewrite(8)
/// strips a local domain and then, with its default settings, resolves
/// what is left again, so the mailbox is not where the domain says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingForm {
    /// `user%elsewhere@local`: `allow_percent_hack` makes it `user@elsewhere`.
    Percent,
    /// `elsewhere!user@local`: `swap_bangpath` makes it `user@elsewhere`.
    Bang,
    /// `"user@elsewhere"@local` (internal `user@elsewhere@local`), or a
    /// source route: `resolve_dequoted_address` reads past the quotes.
    At,
}

impl RoutingForm {
    /// The character in the local part.
    pub fn character(self) -> char {
        match self {
            RoutingForm::Percent => '%',
            RoutingForm::Bang => '!',
            RoutingForm::At => '@',
        }
    }

    /// The Postfix main.cf parameter that routes this form (on by default).
    pub fn postfix_parameter(self) -> &'static str {
        match self {
            RoutingForm::Percent => "allow_percent_hack",
            RoutingForm::Bang => "swap_bangpath",
            RoutingForm::At => "resolve_dequoted_address",
        }
    }
}

/// The routing form in the local part of an *internal* address (everything
/// before its last `@`), if any: the first `@`, `%` or `!` there. Judge the
/// internal form, never the external one: the quotes of
/// `"user%elsewhere"@local` hide nothing from trivial-rewrite(8).
pub fn routing_form(internal: &str) -> Option<RoutingForm> {
    let local = internal.rfind('@').map_or(internal, |at| &internal[..at]);
    local.chars().find_map(|c| match c {
        '%' => Some(RoutingForm::Percent),
        '!' => Some(RoutingForm::Bang),
        '@' => Some(RoutingForm::At),
        _ => None,
    })
}

/// The addresses in an address header's value (From:, To:, Cc:...): comments dropped, each
/// `name <addr>` or bare `addr`, group names (`team: a@b, c@d;`) skipped.
pub fn header_addresses(value: &str) -> Vec<String> {
    let mut plain = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                plain.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    plain.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                plain.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            // Outside quotes, a separator becomes one we can split on.
            ',' | ';' if !quoted && depth == 0 => plain.push('\0'),
            _ if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    plain
        .split('\0')
        .filter_map(|part| {
            let part = match (part.find(':'), part.find(['@', '<'])) {
                // "team: first@x": the group's name goes.
                (Some(colon), at) if at.is_none_or(|at| colon < at) && !part.contains('"') => {
                    &part[colon + 1..]
                }
                _ => part,
            };
            let address = match (part.rfind('<'), part.rfind('>')) {
                (Some(open), Some(close)) if open < close => &part[open + 1..close],
                _ => part,
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (audit M4): `sendmail root` was spooled as `root`, which
    /// the spool's reader refuses for ever. A bare local part takes the
    /// domain; what has one, or is the null sender, is kept.
    #[test]
    fn bare_local_parts_are_qualified() {
        for (given, qualified) in [
            ("root", "root@leaf.test"),
            ("postmaster", "postmaster@leaf.test"),
            ("a@b", "a@b"),
            ("\"a@b\"", "\"a@b\"@leaf.test"),
            ("john doe", "john doe@leaf.test"),
            ("", ""),
        ] {
            assert_eq!(qualify(given, "leaf.test"), qualified, "{given}");
        }
    }

    /// What the decoder would refuse is not a wire form, nor is an
    /// internal (unquoted) form that needs quotes.
    #[test]
    fn wire_form_is_what_the_decoder_reads_back() {
        for good in [
            "bob@hub.test",
            "\"john doe\"@hub.test",
            "gr\u{fc}n@hub.test",
        ] {
            assert!(is_wire_form(good), "{good}");
        }
        for bad in [
            "John Smith john@x",
            "john doe@hub.test",
            "root",
            "a@",
            "@x",
            "a@b c",
            "a@b\r\nRCPT TO:<c@d>",
            "<a@b>",
            "a@b>",
        ] {
            assert!(!is_wire_form(bad), "{bad:?}");
        }
        assert!(!is_wire_form(&format!("{}@x", "a".repeat(1100))));
    }

    #[test]
    fn quoted_local_parts_become_internal_like_postfix() {
        for (external, internal) in [
            ("\"john doe\"@hub.test", "john doe@hub.test"),
            ("\"john..doe\"@hub.test", "john..doe@hub.test"),
            ("\"odd<box>\"@hub.test", "odd<box>@hub.test"),
            ("\"a@b\"@hub.test", "a@b@hub.test"),
            ("\"a\\\"b\"@hub.test", "a\"b@hub.test"),
            ("\"back\\\\slash\"@hub.test", "back\\slash@hub.test"),
            ("plain@hub.test", "plain@hub.test"),
            ("\"postmaster\"", "postmaster"),
            ("", ""),
            // The domain is never unquoted.
            ("a@[\"x\"]", "a@[\"x\"]"),
        ] {
            assert_eq!(to_internal(external), internal, "{external}");
        }
    }

    #[test]
    fn internal_local_parts_are_quoted_only_when_needed() {
        for (internal, external) in [
            ("john doe@hub.test", "\"john doe\"@hub.test"),
            ("john..doe@hub.test", "\"john..doe\"@hub.test"),
            (".lead@hub.test", "\".lead\"@hub.test"),
            ("a\"b@hub.test", "\"a\\\"b\"@hub.test"),
            ("a@b@hub.test", "\"a@b\"@hub.test"),
            ("j.doe+tag@hub.test", "j.doe+tag@hub.test"),
            ("gr\u{fc}n@hub.test", "gr\u{fc}n@hub.test"),
            ("postmaster", "postmaster"),
            ("", ""),
        ] {
            assert_eq!(to_external(internal), external, "{internal}");
        }
    }

    /// Regression (audit H1): `%`, `!` and a quoted `@` in a local part
    /// route elsewhere once the hub's trivial-rewrite strips its own domain;
    /// found in the internal form whether or not the sender quoted them.
    #[test]
    fn routing_forms_are_found_in_the_internal_local_part() {
        for (external, form) in [
            ("victim%external.test@hub.test", Some(RoutingForm::Percent)),
            (
                "\"victim%external.test\"@hub.test",
                Some(RoutingForm::Percent),
            ),
            ("external.test!victim@hub.test", Some(RoutingForm::Bang)),
            ("\"external.test!victim\"@hub.test", Some(RoutingForm::Bang)),
            ("\"victim@external.test\"@hub.test", Some(RoutingForm::At)),
            ("\"victim\\@external.test\"@hub.test", Some(RoutingForm::At)),
            ("victim\\@external.test@hub.test", Some(RoutingForm::At)),
            ("@hub.test:victim@external.test", Some(RoutingForm::At)),
            ("a!b%c@hub.test", Some(RoutingForm::Bang)),
            // Plain mailboxes, quoted or not, stay plain.
            ("bob@hub.test", None),
            ("\"john doe\"@hub.test", None),
            ("\"john..doe\"@hub.test", None),
            ("\"odd<box>\"@hub.test", None),
            ("j.doe+tag@hub.test", None),
            ("gr\u{fc}n@hub.test", None),
            // The domain is not the local part.
            ("bob@[127.0.0.1]", None),
            // No domain: the whole address is the local part.
            ("victim%external.test", Some(RoutingForm::Percent)),
            ("postmaster", None),
        ] {
            assert_eq!(routing_form(&to_internal(external)), form, "{external}");
        }
        assert_eq!(
            RoutingForm::Percent.postfix_parameter(),
            "allow_percent_hack"
        );
        assert_eq!(RoutingForm::Bang.character(), '!');
    }

    #[test]
    fn round_trip_keeps_the_mailbox() {
        for internal in [
            "john doe@hub.test",
            "a\"b\\c@hub.test",
            "x@y@hub.test",
            "odd<box>@hub.test",
            "plain@hub.test",
        ] {
            assert_eq!(to_internal(&to_external(internal)), internal);
        }
    }
}
