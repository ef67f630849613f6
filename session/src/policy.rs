//! What one peer may do on a receiving session: the senders it may use,
//! the size and recipient limits, the header check. Filled in from wherever
//! the receiver reads its configuration (rsmtp.conf and the forced command;
//! a bridge allows everything its next hop allows).
//!
//! The peer's identity comes from the receiver's own configuration and
//! nothing else: a client never names itself.

use bsmtp::address::RoutingForm;

/// Longest peer name.
pub const MAX_PEER_NAME: usize = 64;

/// An allowed envelope sender: a whole address, `@domain`, `@.domain` for
/// its subdomains, or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// Any sender.
    Any,
    /// Exactly this address (case-insensitive).
    Address(String),
    /// Any address in this domain.
    Domain(String),
    /// Any address in a subdomain of this domain.
    Subdomains(String),
}

impl SenderPattern {
    /// Parses one pattern as written in the config or on the command line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad =
            || format!("bad address pattern \"{text}\": use user@domain, @domain, @.domain or *");
        if text == "*" {
            return Ok(SenderPattern::Any);
        }
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        // It would go into a forced command as its own word, where rsmtp
        // would read it as an option and refuse to start: a dead key.
        if text.starts_with('-') {
            return Err(format!(
                "bad address pattern \"{text}\": a pattern must not start with '-'"
            ));
        }
        if let Some(domain) = text.strip_prefix("@.") {
            if domain.is_empty() || domain.contains('@') {
                return Err(bad());
            }
            return Ok(SenderPattern::Subdomains(domain.to_ascii_lowercase()));
        }
        if let Some(domain) = text.strip_prefix('@') {
            if domain.is_empty() || domain.contains('@') {
                return Err(bad());
            }
            return Ok(SenderPattern::Domain(domain.to_ascii_lowercase()));
        }
        match text.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                Ok(SenderPattern::Address(text.to_ascii_lowercase()))
            }
            _ => Err(bad()),
        }
    }

    /// True when `sender` (not empty) matches.
    pub fn matches(&self, sender: &str) -> bool {
        let sender = sender.to_ascii_lowercase();
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        match self {
            SenderPattern::Any => true,
            SenderPattern::Address(address) => *address == sender,
            SenderPattern::Domain(d) => domain == d,
            SenderPattern::Subdomains(d) => domain
                .strip_suffix(d.as_str())
                .is_some_and(|head| head.ends_with('.')),
        }
    }
}

/// The rules for one peer.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The peer's name, from `--peer`.
    pub peer: String,
    /// Senders it may use; the null sender is always allowed (bounces).
    pub allow_sender: Vec<SenderPattern>,
    /// Recipients it may send to (same patterns); empty: any.
    pub allow_recipient: Vec<SenderPattern>,
    /// Largest message in bytes.
    pub max_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// The size limit was set by the admin (flag or config), not defaulted.
    pub max_size_set: bool,
    /// Refused commands before 421, if the admin set it.
    pub hard_error_limit: Option<usize>,
    /// From: header addresses must match `allow_sender` too.
    pub check_header_from: bool,
    /// Recipients whose local part routes elsewhere (`%`, `!`, a quoted
    /// `@`) are taken; off, they are refused whatever `allow_recipient`
    /// says ([`Policy::check_recipient`]).
    pub allow_routing_forms: bool,
}

/// Why a recipient is refused ([`Policy::check_recipient`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientRefusal {
    /// The local part routes elsewhere and the peer may not use that.
    RoutingForm(RoutingForm),
    /// Not among the peer's allowed recipients.
    NotAllowed,
}

impl Policy {
    /// Whether this peer may send as `sender` ("" is the null sender).
    pub fn sender_allowed(&self, sender: &str) -> bool {
        sender.is_empty() || self.allow_sender.iter().any(|p| p.matches(sender))
    }

    /// Whether this peer may send to `recipient` (internal form), judged
    /// by its domain alone: see [`Policy::check_recipient`].
    pub fn recipient_allowed(&self, recipient: &str) -> bool {
        self.allow_recipient.is_empty() || self.allow_recipient.iter().any(|p| p.matches(recipient))
    }

    /// Whether this peer may send to `recipient` (internal form).
    ///
    /// A routing form in the local part is refused first, for every peer,
    /// restricted or not: the patterns see the domain after the last `@`,
    /// but the hub's trivial-rewrite(8) strips that domain when it is local
    /// and, with Postfix's defaults, resolves `user%elsewhere`,
    /// `elsewhere!user` and `"user@elsewhere"` to `user@elsewhere`. A peer
    /// with no `allow_recipient` is refused too: postdrop applies no relay
    /// rules, and the fast path's smtpd sees rsmtp as a client in
    /// `mynetworks`, so the hub's own relay controls would not stop it.
    pub fn check_recipient(&self, recipient: &str) -> Result<(), RecipientRefusal> {
        if !self.allow_routing_forms {
            if let Some(form) = bsmtp::address::routing_form(recipient) {
                return Err(RecipientRefusal::RoutingForm(form));
            }
        }
        if self.recipient_allowed(recipient) {
            Ok(())
        } else {
            Err(RecipientRefusal::NotAllowed)
        }
    }
}

/// A peer name is a plain identifier: it ends up in logs and, later, in
/// spool paths.
pub fn check_peer_name(peer: &str) -> Result<(), String> {
    let ok = !peer.is_empty()
        && peer.len() <= MAX_PEER_NAME
        && peer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !peer.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad peer name \"{}\": use letters, digits, '.', '_' and '-' (at most {MAX_PEER_NAME})",
            bsmtp::text::printable(peer.as_bytes())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_patterns() {
        let domain = SenderPattern::parse("@Leaf.test").unwrap();
        assert!(domain.matches("alice@leaf.TEST"));
        assert!(!domain.matches("alice@evil-leaf.test"));
        assert!(!domain.matches("alice@sub.leaf.test"));
        let sub = SenderPattern::parse("@.leaf.test").unwrap();
        assert!(sub.matches("a@x.leaf.test"));
        assert!(!sub.matches("a@leaf.test"));
        assert!(!sub.matches("a@evilleaf.test"));
        let address = SenderPattern::parse("alice@leaf.test").unwrap();
        assert!(address.matches("Alice@leaf.test"));
        assert!(!address.matches("bob@leaf.test"));
        // Regression (audit): "--peer=x@y" became its own word in the forced
        // command, which rsmtp then refused to parse: a dead key.
        for bad in [
            "",
            "@",
            "alice",
            "a b@c",
            "@a@b",
            "--peer=x@y",
            "-x@y",
            "-@a",
        ] {
            assert!(SenderPattern::parse(bad).is_err(), "{bad}");
        }
    }

    fn restricted(allow_routing_forms: bool, recipients: &[&str]) -> Policy {
        Policy {
            peer: "leaf1".into(),
            allow_sender: vec![SenderPattern::Any],
            allow_recipient: recipients
                .iter()
                .map(|p| SenderPattern::parse(p).unwrap())
                .collect(),
            max_size: 1000,
            max_size_set: false,
            max_recipients: 10,
            hard_error_limit: None,
            check_header_from: false,
            allow_routing_forms,
        }
    }

    /// Regression (audit H1): a peer allowed `@hub.test` relayed anywhere
    /// with `victim%external.test@hub.test`, `external.test!victim@hub.test`
    /// or `"victim@external.test"@hub.test`, since the pattern saw only
    /// hub.test. Refused now for restricted and unrestricted peers alike,
    /// unless the peer opts in; plain (even quoted) mailboxes still pass.
    #[test]
    fn routing_forms_are_refused_unless_the_peer_opts_in() {
        use bsmtp::address::to_internal;
        let check =
            |policy: &Policy, external: &str| policy.check_recipient(&to_internal(external));
        for policy in [restricted(false, &["@hub.test"]), restricted(false, &[])] {
            for (external, form) in [
                ("victim%external.test@hub.test", RoutingForm::Percent),
                ("external.test!victim@hub.test", RoutingForm::Bang),
                ("\"victim@external.test\"@hub.test", RoutingForm::At),
                ("\"victim%external.test\"@hub.test", RoutingForm::Percent),
                ("\"external.test!victim\"@hub.test", RoutingForm::Bang),
            ] {
                assert_eq!(
                    check(&policy, external),
                    Err(RecipientRefusal::RoutingForm(form)),
                    "{external}"
                );
            }
            for plain in ["bob@hub.test", "\"john doe\"@hub.test", "\"bob\"@hub.test"] {
                assert_eq!(check(&policy, plain), Ok(()), "{plain}");
            }
        }
        let restricted_peer = restricted(false, &["@hub.test"]);
        assert_eq!(
            check(&restricted_peer, "victim@external.test"),
            Err(RecipientRefusal::NotAllowed)
        );
        // Opted in: the old behaviour, the domain after the last `@` decides.
        let opted_in = restricted(true, &["@hub.test"]);
        assert_eq!(check(&opted_in, "victim%external.test@hub.test"), Ok(()));
        assert_eq!(
            check(&opted_in, "\"victim@external.test\"@hub.test"),
            Ok(())
        );
        assert_eq!(
            check(&opted_in, "victim%hub.test@external.test"),
            Err(RecipientRefusal::NotAllowed)
        );
    }

    #[test]
    fn peer_names_are_plain() {
        for bad in ["", "../x", "a b", "-x", ".x", "a/b", &"x".repeat(65)] {
            assert!(check_peer_name(bad).is_err(), "{bad}");
        }
        check_peer_name("leaf1.example-2_b").unwrap();
    }
}
