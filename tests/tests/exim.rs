//! Interoperability with exim 4, the direction exim -> rsmtp: batches that
//! the real exim writes with an `appendfile` transport and `use_bsmtp` (LF,
//! CRLF, a HELO prefix, several messages in one file, one or all recipients
//! per transaction, dot-stuffed lines) are accepted by rsmtp over SSH and
//! offline (`rsmtp --peer leaf1 < batch`), and every message reaches the
//! hub's Maildirs exactly once with its body byte for byte. exim comes from
//! `scripts/test` (see the harness's `exim` module); without it these
//! tests fail and say so. Also here, for writers other than exim: the
//! looser envelope forms Postfix's smtpd takes, and the refusal of
//! unqualified addresses, through the real rsmtp.

use std::time::Duration;

use bsmtp_ssh_tests::exim::{BsmtpStyle, Exim, Message, EXIM_HOSTNAME};
use bsmtp_ssh_tests::Env;

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);

/// The sender of every message (the hub's policy allows `@leaf.test`).
const SENDER: &str = "alice@leaf.test";

/// One message given to exim, and what must arrive.
struct Sent {
    /// Unique over the whole test: finds the message in a Maildir.
    subject: String,
    recipients: &'static [&'static str],
    /// What exim was given.
    content: Vec<u8>,
    /// The body that must arrive: what exim was given, with the final
    /// newline exim adds when it is missing.
    body: Vec<u8>,
}

/// One batch exim wrote, and what it holds.
struct Batch {
    label: &'static str,
    style: BsmtpStyle,
    bytes: Vec<u8>,
    sent: Vec<Sent>,
}

impl Batch {
    /// How many transactions (MAIL commands) exim wrote for it.
    fn transactions(&self) -> usize {
        self.sent
            .iter()
            .map(|s| {
                if self.style.batch_recipients {
                    1
                } else {
                    s.recipients.len()
                }
            })
            .sum()
    }
}

/// The styles every test feeds through rsmtp.
fn styles() -> [(&'static str, BsmtpStyle); 5] {
    let lf = BsmtpStyle::default();
    [
        ("lf", lf),
        ("crlf", lf.crlf()),
        ("helo-lf", lf.helo()),
        ("helo-crlf", lf.helo().crlf()),
        ("rcpts-crlf", lf.batch_recipients().crlf()),
    ]
}

/// Three messages for one batch: dot-stuffed lines and 8-bit text to
/// bob, one message to bob and carol, and to dave a body without a final
/// newline.
fn messages(label: &str) -> Vec<Sent> {
    let bodies: [(&'static [&'static str], &[u8]); 3] = [
        (
            &["bob@hub.test"],
            b".leading dot\n.\n..\n...three\n. space\nx.\nFrom the start of a line\n\n\
              Gr\xc3\xbc\xc3\x9fe \xe2\x82\xac\n.last line starts with a dot\n",
        ),
        (
            &["bob@hub.test", "carol@hub.test"],
            b"for two\n.\n..\nend\n",
        ),
        (&["dave@hub.test"], b"no final newline\n.dot, then none"),
    ];
    bodies
        .iter()
        .enumerate()
        .map(|(i, (recipients, body))| {
            let subject = format!("exim {label} {}", i + 1);
            let mut content = format!(
                "From: Alice <{SENDER}>\nTo: {}\nSubject: {subject}\nMIME-Version: 1.0\n\
                 Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n",
                recipients.join(", ")
            )
            .into_bytes();
            content.extend_from_slice(body);
            let mut body = body.to_vec();
            if !body.ends_with(b"\n") {
                body.push(b'\n');
            }
            Sent {
                subject,
                recipients,
                content,
                body,
            }
        })
        .collect()
}

/// Has exim write one batch per style, and checks that each is written
/// the way the style says (so a test below cannot pass on batches exim
/// never wrote that way).
fn exim_batches(exim: &Exim) -> Vec<Batch> {
    styles()
        .into_iter()
        .map(|(label, style)| {
            let sent = messages(label);
            let given: Vec<Message<'_>> = sent
                .iter()
                .map(|s| Message {
                    sender: SENDER,
                    recipients: s.recipients,
                    content: &s.content,
                })
                .collect();
            let bytes = exim.write_bsmtp(style, &given);
            let batch = Batch {
                label,
                style,
                bytes,
                sent,
            };
            check_written(&batch);
            batch
        })
        .collect()
}

/// The batch has the line ends, HELO lines, transactions and dot-stuffing
/// its style promises, and nothing else of SMTP (no QUIT).
fn check_written(batch: &Batch) {
    let text = String::from_utf8_lossy(&batch.bytes);
    let eol = if batch.style.crlf { "\r\n" } else { "\n" };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    assert!(
        lines.iter().all(|l| l.ends_with(eol)),
        "{}: every line must end {eol:?}:\n{text}",
        batch.label
    );
    if !batch.style.crlf {
        assert!(!text.contains('\r'), "{}: a CR in\n{text}", batch.label);
    }
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    let transactions = batch.transactions();
    assert_eq!(
        count("MAIL FROM:<"),
        transactions,
        "{}:\n{text}",
        batch.label
    );
    assert_eq!(count("DATA"), transactions, "{}:\n{text}", batch.label);
    let rcpts: usize = batch.sent.iter().map(|s| s.recipients.len()).sum();
    assert_eq!(count("RCPT TO:<"), rcpts, "{}:\n{text}", batch.label);
    let helo = format!("HELO {EXIM_HOSTNAME}{eol}");
    if batch.style.helo {
        assert!(text.starts_with(&helo), "{}:\n{text}", batch.label);
        assert_eq!(count("HELO "), transactions, "{}:\n{text}", batch.label);
    } else {
        assert!(text.starts_with("MAIL FROM:<"), "{}:\n{text}", batch.label);
        assert_eq!(count("HELO "), 0, "{}:\n{text}", batch.label);
    }
    assert_eq!(count("QUIT"), 0, "{}:\n{text}", batch.label);
    assert!(
        text.contains(&format!(
            "{eol}..leading dot{eol}..{eol}...{eol}....three{eol}"
        )),
        "{}: dot-stuffing:\n{text}",
        batch.label
    );
    assert!(
        text.ends_with(&format!("{eol}.{eol}")),
        "{}:\n{text}",
        batch.label
    );
}

/// The body of a delivered message: everything after the first empty line.
fn body_of(delivered: &[u8]) -> &[u8] {
    let at = delivered
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("a delivered message has a header/body separator");
    &delivered[at + 2..]
}

/// True when the message's header holds `Subject: subject` as a line.
fn has_subject(delivered: &[u8], subject: &str) -> bool {
    let head = &delivered[..delivered.len() - body_of(delivered).len()];
    String::from_utf8_lossy(head)
        .lines()
        .any(|l| l == format!("Subject: {subject}"))
}

/// Every message of every batch is in each of its recipients' Maildirs
/// exactly once with its body byte for byte, and nothing else arrived.
fn check_arrived_once(env: &Env, batches: &[Batch]) {
    for mailbox in ["bob", "carol", "dave"] {
        let address = format!("{mailbox}@hub.test");
        let expected: Vec<&Sent> = batches
            .iter()
            .flat_map(|b| &b.sent)
            .filter(|s| s.recipients.contains(&address.as_str()))
            .collect();
        env.wait_maildir(mailbox, expected.len(), DELIVERY);
        // Give a duplicate the chance to show up before counting.
        std::thread::sleep(Duration::from_secs(2));
        let delivered = Env::read_maildir(&env.hub_maildir(mailbox));
        if delivered.len() != expected.len() {
            env.fail(&format!(
                "{mailbox}: {} messages, {} expected",
                delivered.len(),
                expected.len()
            ));
        }
        for sent in expected {
            let copies: Vec<&Vec<u8>> = delivered
                .iter()
                .filter(|d| has_subject(d, &sent.subject))
                .collect();
            if copies.len() != 1 {
                env.fail(&format!(
                    "{mailbox}: {} copies of {:?}",
                    copies.len(),
                    sent.subject
                ));
            }
            let body = body_of(copies[0]);
            if body != sent.body.as_slice() {
                env.fail(&format!(
                    "{mailbox}: {:?}: body differs:\n--- sent ---\n{}\n--- arrived ---\n{}",
                    sent.subject,
                    String::from_utf8_lossy(&sent.body),
                    String::from_utf8_lossy(body)
                ));
            }
        }
    }
}

/// exim-written batches, each fed to rsmtp through sshd as one session:
/// rsmtp answers every command (HELO included) with no refusal, queues
/// each transaction, and every message arrives exactly once, byte-exact.
#[test]
fn exim_batches_are_accepted_over_ssh() {
    let env = Env::start("exim_over_ssh");
    let exim = Exim::new(&env.base().join("exim"));
    let batches = exim_batches(&exim);
    for batch in &batches {
        let out = env.ssh_exec("receive", &batch.bytes);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: {}\nstdout: {stdout}\nstderr: {stderr}",
            batch.label,
            out.status
        );
        let refused: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with('4') || l.starts_with('5'))
            .collect();
        assert!(refused.is_empty(), "{}: {stdout}", batch.label);
        assert_eq!(
            stdout.matches("250 2.0.0 Ok: queued as ").count(),
            batch.transactions(),
            "{}: {stdout}",
            batch.label
        );
        if batch.style.helo {
            assert!(
                stdout.starts_with("250 "),
                "{}: HELO is answered: {stdout}",
                batch.label
            );
        }
    }
    check_arrived_once(&env, &batches);
}

/// The same batches as files read offline, `rsmtp --peer leaf1 < batch`:
/// exit 0 for each (all accepted), and every message arrives exactly once,
/// byte-exact. exim itself (`exim -bS`) reads each batch as the same
/// messages, which checks the harness's reading side too.
#[test]
fn exim_batches_are_accepted_offline() {
    let env = Env::start("exim_offline");
    let exim = Exim::new(&env.base().join("exim"));
    let batches = exim_batches(&exim);
    for batch in &batches {
        let out = env.rsmtp_offline(&["--allow-sender", "@leaf.test"], &batch.bytes);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: rsmtp < batch\nstdout: {}\nstderr: {}",
            batch.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let read = exim.read_bsmtp(&batch.bytes);
        assert!(read.status.success(), "{}: {}", batch.label, read.explain());
        assert_eq!(
            read.queued.len(),
            batch.transactions(),
            "{}: {}",
            batch.label,
            read.explain()
        );
        for sent in &batch.sent {
            let queued: Vec<_> = read
                .queued
                .iter()
                .filter(|q| has_subject(&q.message, &sent.subject))
                .collect();
            let mut recipients: Vec<&str> = queued
                .iter()
                .flat_map(|q| q.recipients.iter().map(String::as_str))
                .collect();
            recipients.sort_unstable();
            assert_eq!(recipients, sent.recipients, "{}", read.explain());
            for q in queued {
                assert_eq!(q.sender, SENDER, "{}", read.explain());
                assert_eq!(
                    q.body(),
                    sent.body.as_slice(),
                    "{}: {:?}: exim -bS body",
                    batch.label,
                    sent.subject
                );
            }
        }
    }
    check_arrived_once(&env, &batches);
}

/// The envelope forms Postfix's smtpd takes by default (a space after the
/// colon, no angle brackets) are accepted by the real rsmtp; unqualified
/// addresses are refused, a bare `<Postmaster>` too, so none of them can
/// reach a hub mailbox as a local address.
#[test]
fn postfix_envelope_forms_accepted_and_unqualified_addresses_refused() {
    let env = Env::start("envelope_forms");
    let batch = b"EHLO leaf.test\r\n\
        MAIL FROM: <alice@leaf.test>\r\n\
        RCPT TO: <bob@hub.test>\r\n\
        RCPT TO:carol@hub.test\r\n\
        RCPT TO: dave@hub.test NOTIFY=NEVER\r\n\
        RCPT TO:bob\r\n\
        RCPT TO:<Postmaster>\r\n\
        DATA\r\nSubject: lenient 1\r\n\r\none\r\n.\r\n\
        MAIL FROM:alice@leaf.test BODY=8BITMIME\r\n\
        RCPT TO:bob@hub.test\r\n\
        DATA\r\nSubject: lenient 2\r\n\r\ntwo\r\n.\r\n\
        MAIL FROM:alice\r\n\
        RCPT TO:bob@hub.test\r\n\
        DATA\r\nSubject: unqualified sender\r\n\r\nthree\r\n.\r\n\
        QUIT\r\n";
    // The replies are what a client goes by; the exit status (75 when
    // anything was refused) is the offline reader's business.
    let out = env.ssh_exec("receive", batch);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stdout = format!(
        "{stdout}\n({}; stderr: {})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<&str> = stdout
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with("250-"))
        .collect();
    let expected_starts = [
        "250 ",       // EHLO
        "250 2.1.0 ", // MAIL FROM: <alice@leaf.test>
        "250 2.1.5 ", // RCPT TO: <bob@hub.test>
        "250 2.1.5 ", // RCPT TO:carol@hub.test
        "250 2.1.5 ", // RCPT TO: dave@hub.test NOTIFY=NEVER
        "501 5.1.3 Bad address syntax: unqualified address (user@domain required)",
        "501 5.1.3 <Postmaster>: Recipient address must be user@domain",
        "354 ",
        "250 2.0.0 Ok: queued as ",
        "250 2.1.0 ", // MAIL FROM:alice@leaf.test BODY=8BITMIME
        "250 2.1.5 ",
        "354 ",
        "250 2.0.0 Ok: queued as ",
        "501 5.1.7 Bad address syntax: unqualified address (user@domain required)",
        "503 5.5.1 ", // RCPT without MAIL
        "503 5.5.1 ", // DATA without MAIL: its content is read and dropped
        "221 ",
    ];
    assert_eq!(replies.len(), expected_starts.len(), "{stdout}");
    for (reply, start) in replies.iter().zip(expected_starts) {
        assert!(
            reply.starts_with(start),
            "{reply:?} should start {start:?}:\n{stdout}"
        );
    }
    for (mailbox, subjects) in [
        ("bob", &["lenient 1", "lenient 2"][..]),
        ("carol", &["lenient 1"][..]),
        ("dave", &["lenient 1"][..]),
    ] {
        env.wait_maildir(mailbox, subjects.len(), DELIVERY);
    }
    std::thread::sleep(Duration::from_secs(2));
    for (mailbox, subjects) in [
        ("bob", &["lenient 1", "lenient 2"][..]),
        ("carol", &["lenient 1"][..]),
        ("dave", &["lenient 1"][..]),
    ] {
        let delivered = Env::read_maildir(&env.hub_maildir(mailbox));
        let mut got: Vec<String> = delivered
            .iter()
            .filter_map(|d| {
                String::from_utf8_lossy(d)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect();
        got.sort();
        assert_eq!(got, subjects, "{mailbox}");
    }
}
