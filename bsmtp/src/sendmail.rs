//! The sendmail(1) command line, as far as mail over bsmtp-ssh takes it,
//! and the header work `-t` needs. Two callers: rsmtp's `sendmail` and
//! `rsendmail` verbs (a client's `ssh hub sendmail -f a -- b`, the way
//! rsendmail's `sshsendmail` calls it), which take only the flags that
//! send mail; and `bsmtp-ssh sendmail`, a satellite's `/usr/sbin/sendmail`,
//! which also takes the flags cron, at(1), mail user agents and mailers
//! pass (see [`SATELLITE_NO_OPS`] and the callers' tests below).

use std::fmt;

/// What a sendmail command line asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `-f SENDER` or `-r SENDER`; `None` when not given.
    pub sender: Option<String>,
    /// `-F NAME`: the sender's full name, for a `From:` header the message
    /// lacks.
    pub full_name: Option<String>,
    /// `-t`: recipients also come from the `To:`, `Cc:` and `Bcc:` headers,
    /// and `Bcc:` is removed.
    pub from_headers: bool,
    /// Without `-i`/`-oi`, a line holding only `.` ends the message.
    pub dot_ends: bool,
    /// Recipients on the command line.
    pub recipients: Vec<String>,
    /// `-N`: the recipients' DSN `NOTIFY` (satellite only).
    pub notify: Option<String>,
    /// `-V`: the DSN envelope ID (satellite only).
    pub envid: Option<String>,
    /// `-R hdrs|full`: the DSN `RET` (satellite only).
    pub ret: Option<String>,
    /// `-B 7BIT|8BITMIME`: the body type the caller declares (satellite
    /// only). Informational: the spool looks at the bytes and sends
    /// `BODY=8BITMIME` when the content has any 8-bit byte.
    pub body: Option<String>,
}

/// How many flags are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flags {
    /// rsmtp's verb: `-f`, `-r`, `-F`, `-t`, `-i`, `-oi`, `--` only.
    Verb,
    /// A satellite's sendmail: those, `-N`, `-V`, `-R`, `-B`, and the
    /// flags cron, mail user agents and mailers pass that change nothing
    /// here ([`SATELLITE_NO_OPS`]).
    Satellite,
}

/// Why a command line was refused; its text says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The offending argument, printable.
    pub argument: String,
    /// Why.
    pub reason: &'static str,
    /// Which flags were taken.
    pub flags: Flags,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let taken = match self.flags {
            Flags::Verb => "-f SENDER, -r SENDER, -F NAME, -t, -i, -oi, --",
            Flags::Satellite => {
                "-f SENDER, -r SENDER, -F NAME, -t, -i, -oi, -N NOTIFY, -R RET, -V ENVID, -B 7BIT|8BITMIME, the ignored -oem -oee -oep -oeq -oew -odb -odi -odq -om -m -v -bm -U -o7 -o8 -h HOPS -L LABEL, -- (--help prints the usage)"
            }
        };
        write!(
            f,
            "sendmail argument \"{}\": {}; only {taken} and recipients are taken",
            self.argument, self.reason
        )
    }
}

impl std::error::Error for ArgError {}

/// Flags callers pass that change nothing for us: error reporting modes
/// (`-oe*`: Debian's cron and mutt pass `-oem`; we always report on
/// standard error and by exit status, and what fails later comes back as
/// a notice), delivery modes (`-od*`: Vixie cron passes `-odi`; we always
/// try the hub at once and spool what it does not take), "me too" (`-om`,
/// and `-m`, which BSD mail(1) and s-nail pass with `metoo` set), verbose
/// (`-v`, mail(1) with `verbose`), the default mode (`-bm`), and `-U`
/// (initial submission). Flags that name files (`-C`, `-oQ`, `-X`) or do
/// more than send (`-bp`, `-bs`, `-q`) are not among them.
/// `-o7` and `-o8` are ignored by Postfix's sendmail too (the spool looks
/// at the bytes).
pub const SATELLITE_NO_OPS: [&str; 15] = [
    "-oem", "-oee", "-oep", "-oeq", "-oew", "-odb", "-odi", "-odq", "-om", "-m", "-v", "-bm", "-U",
    "-o7", "-o8",
];

/// What a satellite's `sendmail --help` (or a bare `-h`) prints.
pub const USAGE: &str = "\
usage: sendmail [-f SENDER] [-F NAME] [-t] [-i] [-N NOTIFY] [-R hdrs|full]
                [-V ENVID] [-B 7BIT|8BITMIME] [--] [RECIPIENT...]
Sends the message on standard input to the hub over SSH (bsmtp-ssh), or
spools it for `bsmtp-ssh flush` when the hub is away.
  -f, -r SENDER  envelope sender (default: login name at sender_domain)
  -F NAME        full name for a From: header the message lacks
  -t             recipients also from To:, Cc:, Bcc: (Bcc: is removed)
  -i, -oi        a line holding only \".\" does not end the message
  -N, -R, -V     DSN: NOTIFY (never, or success,delay,failure), RET, ENVID
  -B TYPE        body type: 7BIT or 8BITMIME
Ignored, as by Postfix's sendmail: -oem -oee -oep -oeq -oew -odb -odi -odq
-om -m -v -bm -U -o7 -o8, -h HOPS, -L LABEL. Refused: -bp, -bs, -q, -C and
other flags that manage a queue or name files. See bsmtp-ssh(8).
";

/// True when `args` ask for [`USAGE`]: `--help`, or `-h` without the hop
/// count (a number) that Postfix's sendmail takes and ignores. Only flags
/// before `--` count.
pub fn asks_for_help(args: &[String]) -> bool {
    let mut words = args.iter().take_while(|a| *a != "--").peekable();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--help" => return true,
            "-h" if !words.peek().is_some_and(|n| is_number(n)) => return true,
            _ => {}
        }
    }
    false
}

fn is_number(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_digit())
}

/// The body types `-B` takes (sendmail's, and Postfix's sendmail's).
const BODY_TYPES: [&str; 2] = ["7BIT", "8BITMIME"];

/// The `RET` values `-R` takes (mutt passes `-R hdrs` or `-R full`).
const RET_VALUES: [&str; 2] = ["hdrs", "full"];

/// Parses a sendmail command line (without the program name).
pub fn parse(args: &[String], flags: Flags) -> Result<Invocation, ArgError> {
    let mut invocation = Invocation {
        dot_ends: true,
        ..Invocation::default()
    };
    let mut rest = args.iter();
    let refuse = |argument: &str, reason: &'static str| ArgError {
        argument: crate::text::printable(argument.as_bytes()),
        reason,
        flags,
    };
    while let Some(arg) = rest.next() {
        let arg = arg.as_str();
        if arg == "--" {
            invocation.recipients.extend(rest.by_ref().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            invocation.recipients.push(arg.to_owned());
            continue;
        }
        // Flags with a value take it glued (-fa@b) or as the next word.
        let mut value = |flag: &str| -> Result<String, ArgError> {
            match arg.strip_prefix(flag).filter(|v| !v.is_empty()) {
                Some(glued) => Ok(glued.to_owned()),
                None => rest
                    .next()
                    .cloned()
                    .ok_or_else(|| refuse(arg, "needs a value")),
            }
        };
        match arg {
            _ if arg.starts_with("-f") => invocation.sender = Some(strip_brackets(&value("-f")?)),
            _ if arg.starts_with("-r") => invocation.sender = Some(strip_brackets(&value("-r")?)),
            _ if arg.starts_with("-F") => invocation.full_name = Some(value("-F")?),
            "-t" => invocation.from_headers = true,
            "-i" | "-oi" => invocation.dot_ends = false,
            _ if flags == Flags::Satellite && arg.starts_with("-N") => {
                invocation.notify = Some(value("-N")?);
            }
            _ if flags == Flags::Satellite && arg.starts_with("-V") => {
                invocation.envid = Some(value("-V")?);
            }
            _ if flags == Flags::Satellite && arg.starts_with("-R") => {
                let wanted = value("-R")?;
                if !RET_VALUES.iter().any(|v| v.eq_ignore_ascii_case(&wanted)) {
                    return Err(refuse(&wanted, "-R takes hdrs or full"));
                }
                invocation.ret = Some(wanted.to_ascii_lowercase());
            }
            _ if flags == Flags::Satellite && arg.starts_with("-B") => {
                let body = value("-B")?;
                if !BODY_TYPES.iter().any(|v| v.eq_ignore_ascii_case(&body)) {
                    return Err(refuse(&body, "-B takes 7BIT or 8BITMIME"));
                }
                invocation.body = Some(body.to_ascii_uppercase());
            }
            _ if flags == Flags::Satellite && SATELLITE_NO_OPS.contains(&arg) => {}
            // Postfix's sendmail ignores a hop count and a logging label.
            _ if flags == Flags::Satellite && arg.starts_with("-h") => {
                if !is_number(&value("-h")?) {
                    return Err(refuse(
                        arg,
                        "-h takes a hop count (--help prints the usage)",
                    ));
                }
            }
            _ if flags == Flags::Satellite && arg.starts_with("-L") => {
                value("-L")?;
            }
            _ => return Err(refuse(arg, "not allowed")),
        }
    }
    if let Some(bad) = invocation.recipients.iter().find(|r| r.starts_with('-')) {
        return Err(refuse(bad, "a recipient cannot start with '-'"));
    }
    if invocation.recipients.is_empty() && !invocation.from_headers {
        return Err(refuse(
            "",
            "no recipients: give them after the flags, or -t",
        ));
    }
    Ok(invocation)
}

/// `<a@b>` as given to `-f` is `a@b`; `<>` is the null sender.
fn strip_brackets(sender: &str) -> String {
    sender
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(sender)
        .to_owned()
}

/// The length of the header section at the start of `message`, up to and
/// including the empty line that ends it; `None` when no empty line is in
/// `message` yet.
pub fn header_length(message: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = message[at..].iter().position(|&b| b == b'\n')? + at + 1;
        let line = &message[at..line_end];
        if line == b"\n" || line == b"\r\n" {
            return Some(line_end);
        }
        at = line_end;
    }
}

/// The header fields of a header section, unfolded: (name, value).
pub fn fields(header: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(header);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    fields
}

/// The recipients `-t` takes: every address in the `To:`, `Cc:` and
/// `Bcc:` fields (and their `Resent-` forms when any is present, as
/// sendmail does).
pub fn header_recipients(header: &[u8]) -> Vec<String> {
    let fields = fields(header);
    let resent = fields
        .iter()
        .any(|(name, _)| name.to_ascii_lowercase().starts_with("resent-"));
    let wanted: &[&str] = if resent {
        &["resent-to", "resent-cc", "resent-bcc"]
    } else {
        &["to", "cc", "bcc"]
    };
    fields
        .iter()
        .filter(|(name, _)| wanted.contains(&name.to_ascii_lowercase().as_str()))
        .flat_map(|(_, value)| crate::address::header_addresses(value))
        .collect()
}

/// The header section without its `Bcc:` (and `Resent-Bcc:`) fields,
/// continuation lines included.
pub fn without_bcc(header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    let mut dropping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
            dropping = name == "bcc" || name == "resent-bcc";
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// True when the header section has a field called `name`.
pub fn has_field(header: &[u8], name: &str) -> bool {
    fields(header)
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn rsendmail_and_mua_command_lines() {
        // What rsendmail's sshsendmail sends: `rsendmail -f SENDER RCPT...`.
        let sent = parse(
            &args(&["-f", "alice@leaf.test", "bob@hub.test", "c@hub.test"]),
            Flags::Verb,
        )
        .unwrap();
        assert_eq!(sent.sender.as_deref(), Some("alice@leaf.test"));
        assert_eq!(sent.recipients, ["bob@hub.test", "c@hub.test"]);
        assert!(sent.dot_ends);
        // And for a bounce it leaves -f out.
        let bounce = parse(&args(&["bob@hub.test"]), Flags::Verb).unwrap();
        assert_eq!(bounce.sender, None);
        let full = parse(
            &args(&["-oi", "-t", "-fa@b", "-F", "Alice A", "-r<>", "--", "x@y"]),
            Flags::Verb,
        )
        .unwrap();
        assert_eq!(full.sender.as_deref(), Some(""));
        assert_eq!(full.full_name.as_deref(), Some("Alice A"));
        assert!(full.from_headers && !full.dot_ends);
        assert_eq!(full.recipients, ["x@y"]);
        // mutt, git send-email, Emacs.
        for line in [
            &["-oem", "-oi", "--", "x@y"][..],
            &["-i", "x@y"],
            &["-oi", "-t"],
        ] {
            assert!(parse(&args(line), Flags::Satellite).is_ok(), "{line:?}");
        }
        assert!(parse(&args(&["-oem", "x@y"]), Flags::Verb).is_err());
    }

    /// Regression (audit M4): Debian's cron ran `sendmail -FCronDaemon -i
    /// -B8BITMIME -oem root`, refused with 64, and cron's mail was lost.
    /// Each caller's exact argv, with its source.
    #[test]
    fn what_cron_at_and_mailers_pass_is_taken() {
        let satellite = |words: &[&str]| {
            parse(&args(words), Flags::Satellite).unwrap_or_else(|e| panic!("{words:?}: {e}"))
        };
        // Debian cron 3.0pl1 (do_command.c, MAILARGS).
        let cron = satellite(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]);
        assert_eq!(cron.full_name.as_deref(), Some("CronDaemon"));
        assert_eq!(cron.body.as_deref(), Some("8BITMIME"));
        assert_eq!(cron.recipients, ["root"]);
        assert!(!cron.dot_ends && cron.sender.is_none());
        // Vixie cron / cronie upstream (config.h, MAILARGS): -t, the
        // recipient in To:.
        let cronie = satellite(&["-FCronDaemon", "-odi", "-oem", "-oi", "-t"]);
        assert!(cronie.from_headers && !cronie.dot_ends);
        // systemd's cron emulation and others: -B as two words.
        assert_eq!(
            satellite(&["-i", "-B", "7BIT", "u@x"]).body.as_deref(),
            Some("7BIT")
        );
        // Debian at 3.2 (atd.c): execl(SENDMAIL, "sendmail", "-i", mailname).
        let at = satellite(&["-i", "root"]);
        assert_eq!(at.recipients, ["root"]);
        // mutt (sendlib.c mutt_invoke_sendmail): $sendmail "-oem -oi", then
        // -B8BITMIME with $use_8bitmime, -f with $use_envelope_from, -N,
        // -R and -V for DSN, --, recipients.
        let mutt = satellite(&[
            "-oem",
            "-oi",
            "-B8BITMIME",
            "-f",
            "alice@leaf.test",
            "-N",
            "failure,delay",
            "-R",
            "hdrs",
            "-V",
            "env1",
            "--",
            "bob@hub.test",
        ]);
        assert_eq!(mutt.ret.as_deref(), Some("hdrs"));
        assert_eq!(mutt.envid.as_deref(), Some("env1"));
        assert_eq!(mutt.recipients, ["bob@hub.test"]);
        // git send-email: "-i", with an envelope sender "-f", recipients.
        let git = satellite(&["-i", "-f", "alice@leaf.test", "bob@hub.test", "c@hub.test"]);
        assert_eq!(git.recipients.len(), 2);
        // BSD mail(1) / Debian's bsd-mailx (send.c/names.c unpack):
        // "-i", "-m" with metoo, "-v" with verbose; -r FROM.
        satellite(&["-i", "-m", "-v", "bob@hub.test"]);
        assert_eq!(
            satellite(&["-r", "alice@leaf.test", "-i", "bob"])
                .sender
                .as_deref(),
            Some("alice@leaf.test")
        );
        // s-nail / mailx: "-i" (unless mta-no-default-arguments), "-m",
        // "-v", -f FROM for -r FROM, "--" before recipients.
        satellite(&["-i", "-f", "alice@leaf.test", "--", "bob@hub.test"]);
        // Heirloom mailx / mailx with sendmail -oi -oem style and -F.
        satellite(&["-oi", "-oem", "-F", "Alice A", "bob@hub.test"]);
        // What -B and -R take, and the rsmtp verb's narrower set.
        for bad in [&["-BBINARYMIME", "x@y"][..], &["-R", "all", "x@y"]] {
            let err = parse(&args(bad), Flags::Satellite).unwrap_err();
            assert!(err.to_string().contains("takes"), "{err}");
        }
        let err = parse(&args(&["-B8BITMIME", "x@y"]), Flags::Verb).unwrap_err();
        assert!(!err.to_string().contains("-B 7BIT"), "{err}");
    }

    /// `sendmail --help` (and a bare `-h`) print the usage instead of a
    /// refusal; `-h HOPS` and `-L LABEL` are ignored, as Postfix's
    /// sendmail ignores them; queue management stays refused.
    #[test]
    fn help_and_what_postfix_sendmail_ignores() {
        for asks in [
            &["--help"][..],
            &["-h"],
            &["-i", "-h", "x@y"],
            &["-oi", "--help", "x@y"],
        ] {
            assert!(asks_for_help(&args(asks)), "{asks:?}");
        }
        for not in [&["-h", "20", "x@y"][..], &["-i", "--", "--help"], &["x@y"]] {
            assert!(!asks_for_help(&args(not)), "{not:?}");
        }
        let ignored = parse(
            &args(&["-h", "20", "-h30", "-L", "cron", "-o7", "-o8", "-i", "x@y"]),
            Flags::Satellite,
        )
        .unwrap();
        assert_eq!(ignored.recipients, ["x@y"]);
        assert!(parse(&args(&["-hx", "x@y"]), Flags::Satellite).is_err());
        assert!(parse(&args(&["-h", "20", "x@y"]), Flags::Verb).is_err());
        assert!(USAGE.contains("-t") && USAGE.contains("bsmtp-ssh(8)"));
    }

    #[test]
    fn flags_that_do_more_than_send_are_refused() {
        for flag in [
            "-bp",
            "-bi",
            "-bd",
            "-q",
            "-q1h",
            "-bs",
            "-C/etc/x",
            "-O",
            "-X/tmp/log",
            "-bv",
            "-oQ/tmp",
        ] {
            let err = parse(&args(&[flag, "x@y"]), Flags::Verb).unwrap_err();
            assert!(err.to_string().contains("not allowed"), "{flag}: {err}");
            assert!(
                parse(&args(&[flag, "x@y"]), Flags::Satellite).is_err(),
                "{flag}"
            );
        }
        assert!(parse(&args(&["-f"]), Flags::Verb).is_err());
        assert!(parse(&args(&["-i"]), Flags::Verb).is_err(), "no recipients");
        assert!(parse(&args(&["--", "-x@y"]), Flags::Verb).is_err());
    }

    #[test]
    fn headers_for_minus_t() {
        let message = b"From: a@b\r\nTo: Bob <bob@hub.test>,\r\n carol@hub.test\r\nBcc: (hidden) dave@hub.test\r\n  , eve@hub.test\r\nSubject: x\r\n\r\nbody\r\n";
        let length = header_length(message).unwrap();
        assert_eq!(&message[length..], b"body\r\n");
        let header = &message[..length];
        assert_eq!(
            header_recipients(header),
            [
                "bob@hub.test",
                "carol@hub.test",
                "dave@hub.test",
                "eve@hub.test"
            ]
        );
        let kept = without_bcc(header);
        assert_eq!(
            String::from_utf8_lossy(&kept),
            "From: a@b\r\nTo: Bob <bob@hub.test>,\r\n carol@hub.test\r\nSubject: x\r\n\r\n"
        );
        assert!(has_field(header, "from") && !has_field(&kept, "Bcc"));
        let resent = b"To: old@x\nResent-To: new@x\n\n";
        assert_eq!(header_recipients(resent), ["new@x"]);
        assert_eq!(header_length(b"To: x\nno end"), None);
    }
}
