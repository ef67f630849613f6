//! `compression = true` in a `[peer.NAME]` section: the mail session is
//! one zlib stream each way above SSH (`receive deflate`, level 6, one
//! dictionary for the whole session), and libssh2's zlib is on under it.
//! Messages arrive byte for byte as without it (pipe mode, batching mode,
//! flush), the hub's sshd really agreed to compress (`check` names the
//! method libssh2 agreed), a text message takes 3 x fewer bytes on the
//! wire (counted by a relay between bsmtp-ssh and sshd), a compressed
//! stream cut short injects nothing, and an rsmtp too old for
//! `receive deflate` gets a deferral that says what to do.

use std::io::{Read, Write};

use bsmtp_ssh_tests::once::assert_exactly_once;
use bsmtp_ssh_tests::postlog::PostlogMode;
use bsmtp_ssh_tests::relay::ByteRelay;
use bsmtp_ssh_tests::util::{license_text, poll, write_file};
use bsmtp_ssh_tests::{Env, EnvOptions, Log, HUB_PEER, LEAF_PEER};
use flate2::write::ZlibEncoder;
use flate2::Compression;

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: std::time::Duration = std::time::Duration::from_secs(90);

/// About 100 KiB of real English text (Debian's license texts, always
/// installed by base-files), as a message with headers local(8) writes
/// back unchanged, lines that need dot-stuffing (one a lone dot), UTF-8
/// and bare 8-bit bytes.
fn text_message(id: &str) -> Vec<u8> {
    let body = license_text(100 * 1024);
    let mut message = format!(
        "From: alice@leaf.test\nTo: bob@hub.test\nDate: Wed, 2 Dec 2026 04:00:00 +0000\n\
         Message-ID: <{id}@leaf.test>\nSubject: {id}\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
         .a line that starts with a dot\n.\nthe line above is a lone dot\n\
         Grüße aus dem Blätterwald\n"
    )
    .into_bytes();
    // 8-bit bytes that are not UTF-8 either.
    message.extend_from_slice(b"latin-1: Gr\xfc\xdfe aus dem Bl\xe4tterwald\n");
    message.extend(body);
    message
}

/// Compression on and off deliver the same bytes; with it on, the session
/// went as `receive deflate` (the hub logs what it saved), libssh2
/// negotiated zlib under it, and the message took at least 3 x fewer
/// bytes from bsmtp-ssh to the hub, SSH handshake included (measured
/// 3.07 x; the message alone deflates 3.2 x at level 6). libssh2's own
/// zlib alone gave 1.68 x: it deflates Huffman-only (`comp.c`:
/// `Z_BEST_SPEED`, `Z_HUFFMAN_ONLY`, no string matching).
#[test]
fn compression_on_and_off_deliver_the_same_bytes_with_fewer_on_the_wire() {
    // rsmtp logs through postlog into the hub's log.
    let env = Env::start_with(
        "compression",
        EnvOptions::default().postlog(PostlogMode::SetGid),
    );
    let relay = ByteRelay::start(env.sshd_port(), None);
    let plain = env.relayed_hub_spec("plain", relay.port);
    let mut zipped = env.relayed_hub_spec("zipped", relay.port);
    zipped.lines.push("compression = true".to_owned());
    env.write_peer_sections(&[plain, zipped], "");
    let mut sent = Vec::new();
    let mut wire = Vec::new();
    // Each its own queue ID: one tag would make the second a retry.
    for (peer, queue_id) in [("plain", "4PLAIN"), ("zipped", "4ZIPPED")] {
        let message = text_message(peer);
        let before = (relay.up(), relay.down());
        let out = env.deliver_as_leaf_to(
            peer,
            "alice@leaf.test",
            &["--queue-id", queue_id],
            &["bob@hub.test"],
            &message,
        );
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{said}");
        // The relay has counted everything once the session is closed.
        std::thread::sleep(std::time::Duration::from_millis(300));
        wire.push((relay.up() - before.0, relay.down() - before.1));
        sent.push(message);
    }
    // What the hub's sshd agreed to, as `check` reports it.
    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config], b"");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("ok:   peer zipped: compression: negotiated zlib@openssh.com"),
        "{said}"
    );
    assert!(!said.contains("peer plain: compression"), "{said}");
    let delivered = env.wait_maildir("bob", 2, DELIVERY);
    for message in &sent {
        let id = String::from_utf8_lossy(&message[..200]).into_owned();
        let id = id.lines().find(|l| l.starts_with("Message-ID:")).unwrap();
        let copy = delivered
            .iter()
            .find(|d| String::from_utf8_lossy(d).contains(id))
            .unwrap_or_else(|| env.fail(&format!("no message with {id}")));
        assert!(
            copy.ends_with(message),
            "{id}: the delivered message is not the sent one, byte for byte"
        );
    }
    let ((plain_up, plain_down), (zipped_up, zipped_down)) = (wire[0], wire[1]);
    println!(
        "100 KiB text message, bytes on the wire leaf->hub / hub->leaf: plain {plain_up} / {plain_down}, compressed {zipped_up} / {zipped_down} ({:.2} x fewer up)",
        f64::from(u32::try_from(plain_up).unwrap()) / f64::from(u32::try_from(zipped_up).unwrap())
    );
    assert!(
        zipped_up * 3 <= plain_up,
        "compression saved too little: {plain_up} bytes plain, {zipped_up} compressed"
    );
    let saved = env.wait_log(Log::Hub, "receive deflate: in ", DELIVERY);
    assert!(
        saved.contains("peer leaf1: receive deflate: in "),
        "{saved}"
    );
    println!("hub: {saved}");
    // The compressed delivery and `check`'s probe; the plain one not. Each
    // rsmtp logs it as its session ends, the probe's maybe a little later.
    let lines = bsmtp_ssh_tests::util::poll(DELIVERY, || {
        let lines = env.log_lines(Log::Hub, "receive deflate");
        (lines.len() >= 2).then_some(lines)
    })
    .unwrap_or_else(|| env.fail("rsmtp logged receive deflate for fewer than 2 sessions"));
    assert_eq!(lines.len(), 2, "{lines:#?}");
}

/// The other direction: `pull` fetches what the hub spooled for the leaf,
/// and there the hub's sshd compresses what it sends. OpenSSH 9.2 deflates
/// at zlib's default level, so the same 100 KiB text takes about 3 x
/// fewer bytes hub->leaf with `compression = true` (measured 3.02 x; the
/// test wants 2.8 x, the handshake does not shrink), and arrives whole.
#[test]
fn pull_with_compression_takes_three_times_fewer_bytes() {
    let env = Env::start_with("compression_pull", EnvOptions::default().pull());
    let relay = ByteRelay::start(env.sshd_port(), None);
    let plain = env.relayed_hub_spec("plain", relay.port);
    let mut zipped = env.relayed_hub_spec("zipped", relay.port);
    zipped.lines.push("compression = true".to_owned());
    env.write_peer_sections(&[plain, zipped], "");
    let mut wire = Vec::new();
    for (i, peer) in ["plain", "zipped"].into_iter().enumerate() {
        let mut message = text_message(&format!("pull-{peer}"));
        message = String::from_utf8_lossy(&message)
            .replace(
                "From: alice@leaf.test\nTo: bob@hub.test",
                "From: bob@hub.test\nTo: alice@leaf.test",
            )
            .into_bytes();
        env.hub_sendmail("bob@hub.test", &["alice@leaf.test"], &message);
        let spooled = poll(DELIVERY, || {
            (Env::spooled(&env.hub_spool_directory(), LEAF_PEER).len() == 1).then_some(())
        });
        if spooled.is_none() {
            env.fail("the hub did not spool the message for leaf1");
        }
        let before = relay.down();
        let out = env.bsmtp_ssh_as_leaf(&["pull", peer]);
        assert!(out.status.success(), "{out:?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        wire.push(relay.down() - before);
        let got = env.wait_leaf_maildir("alice", i + 1, DELIVERY);
        let body = &message[message.windows(2).position(|w| w == b"\n\n").unwrap()..];
        assert!(
            got.iter().filter(|m| m.ends_with(body)).count() == i + 1,
            "the pulled message is not whole"
        );
    }
    let (plain_down, zipped_down) = (wire[0], wire[1]);
    println!(
        "100 KiB text message pulled, bytes on the wire hub->leaf: plain {plain_down}, compressed {zipped_down} ({:.2} x fewer)",
        f64::from(u32::try_from(plain_down).unwrap()) / f64::from(u32::try_from(zipped_down).unwrap())
    );
    assert!(
        zipped_down * 28 <= plain_down * 10,
        "compression saved too little: {plain_down} bytes plain, {zipped_down} compressed"
    );
}

/// The message's Message-ID line, to find its copy.
fn message_id(message: &[u8]) -> String {
    String::from_utf8_lossy(&message[..300])
        .lines()
        .find(|l| l.starts_with("Message-ID:"))
        .unwrap_or_default()
        .to_owned()
}

/// Every message in `sent` is in bob's Maildir on the hub, byte for byte
/// (after the headers the hub's local(8) adds).
fn assert_delivered_whole(env: &Env, sent: &[Vec<u8>]) {
    let delivered = env.wait_maildir("bob", sent.len(), DELIVERY);
    for message in sent {
        let id = message_id(message);
        let copy = delivered
            .iter()
            .find(|d| String::from_utf8_lossy(d).contains(&id))
            .unwrap_or_else(|| env.fail(&format!("no message with {id}")));
        assert!(
            copy.ends_with(message),
            "{id}: the delivered message is not the sent one, byte for byte"
        );
    }
}

/// Batching mode (`bsmtp-ssh lmtp`, several messages over one session):
/// with compression every message arrives whole, over compressed sessions
/// (one dictionary for all messages of a session: the hub logs better
/// than 3 x for the session's input).
#[test]
fn batching_mode_with_compression_delivers_the_same_bytes() {
    let env = Env::start_with(
        "compression_batching",
        EnvOptions::default()
            .batching()
            .peer_conf("compression = true")
            .postlog(PostlogMode::SetGid),
    );
    let sent: Vec<Vec<u8>> = (0..6).map(|i| text_message(&format!("batch{i}"))).collect();
    for message in &sent {
        env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], message);
    }
    assert_delivered_whole(&env, &sent);
    let saved = env.wait_log(Log::Hub, "receive deflate: in ", DELIVERY);
    let ratio: f64 = saved
        .split("receive deflate: in ")
        .nth(1)
        .and_then(|rest| rest.split(" (").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ratio| ratio.parse().ok())
        .unwrap_or_else(|| env.fail(&format!("no ratio in {saved}")));
    println!("batching, first session: {saved}");
    assert!(ratio >= 3.0, "{saved}");
}

/// `flush`: a satellite's `sendmail` spools while the hub is away, and the
/// flush carries the spool over one compressed session, every message
/// whole and once.
#[test]
fn flush_with_compression_delivers_the_same_bytes_once() {
    let mut env = Env::start_with(
        "compression_flush",
        EnvOptions::default()
            .peer_conf("compression = true")
            .postlog(PostlogMode::SetGid),
    );
    env.stop_sshd();
    let sent: Vec<Vec<u8>> = (0..3).map(|i| text_message(&format!("flush{i}"))).collect();
    for message in &sent {
        let out = env.satellite_sendmail(&["-i", "-f", "alice@leaf.test", "bob@hub.test"], message);
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).len(), 3);
    env.start_sshd();
    let flushed = env.flush();
    assert!(flushed.status.success(), "{flushed:?}");
    assert_delivered_whole(&env, &sent);
    let ids: Vec<String> = (0..3).map(|i| format!("flush{i}")).collect();
    assert_exactly_once(&env, &["bob"], &ids, DELIVERY);
    assert!(Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty());
    assert_eq!(env.log_lines(Log::Hub, "receive deflate: in ").len(), 1);
}

/// Batching mode with compression, the SSH sessions killed in the middle
/// of a stream of messages: Postfix retries what was not acknowledged,
/// and every message is there exactly once, none cut short.
#[test]
fn compressed_session_killed_mid_stream_loses_and_doubles_nothing() {
    let env = Env::start_with(
        "compression_killed",
        EnvOptions::default()
            .batching()
            .peer_conf("compression = true"),
    );
    let ids: Vec<String> = (0..16).map(|i| format!("cut{i}")).collect();
    for id in &ids[..8] {
        env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &text_message(id));
    }
    poll(DELIVERY, || {
        (!Env::read_maildir(&env.hub_maildir("bob")).is_empty()).then_some(())
    })
    .unwrap_or_else(|| env.fail("nothing arrived"));
    let killed = env.kill_ssh_sessions();
    for id in &ids[8..] {
        env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &text_message(id));
    }
    env.leaf_flush();
    assert_exactly_once(&env, &["bob"], &ids, DELIVERY);
    let sent: Vec<Vec<u8>> = ids.iter().map(|id| text_message(id)).collect();
    assert_delivered_whole(&env, &sent);
    assert!(killed > 0, "no SSH session was running to be cut");
}

/// A BSMTP session as `bsmtp-ssh` would send it, compressed the way
/// `receive deflate` expects: a sync flush after `upto` bytes of the
/// session, and the stream ended only when `finish`.
fn compressed_session(session: &[u8], upto: usize, finish: bool) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::new(6));
    encoder.write_all(&session[..upto]).unwrap();
    // flate2's flush is a Z_SYNC_FLUSH: all of it decodable, no end.
    encoder.flush().unwrap();
    if finish {
        encoder.finish().unwrap()
    } else {
        encoder.get_ref().clone()
    }
}

/// The hub's side of a cut: a compressed stream that stops in the middle
/// of a message (before its end of data and before the stream's end) must
/// inject nothing, and rsmtp says the session was cut; the same stream
/// whole delivers the message and answers in a compressed stream that ends
/// cleanly.
#[test]
fn truncated_compressed_stream_injects_nothing() {
    let env = Env::start("compression_truncated");
    let message = text_message("truncated");
    let mut session =
        b"EHLO leaf.test\r\nMAIL FROM:<alice@leaf.test>\r\nRCPT TO:<bob@hub.test>\r\nDATA\r\n"
            .to_vec();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            session.push(b'.');
        }
        session.extend_from_slice(&line[..line.len() - 1]);
        session.extend_from_slice(b"\r\n");
    }
    session.extend_from_slice(b".\r\nQUIT\r\n");
    let half = session.len() / 2;
    // Cut in the middle of the message, after a sync flush (all of what
    // came is decodable) and at a byte that is not a flush boundary.
    for (i, cut) in [
        compressed_session(&session, half, false),
        compressed_session(&session, session.len(), true)[..1000].to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let out = env.ssh_exec("receive deflate", &cut);
        assert_eq!(out.status.code(), Some(74), "cut {i}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cut short"), "cut {i}: {stderr}");
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        Env::read_maildir(&env.hub_maildir("bob")).is_empty(),
        "a message cut short was delivered"
    );
    let whole = env.ssh_exec(
        "receive deflate",
        &compressed_session(&session, session.len(), true),
    );
    assert_eq!(whole.status.code(), Some(0), "{whole:?}");
    let mut replies = Vec::new();
    flate2::read::ZlibDecoder::new(whole.stdout.as_slice())
        .read_to_end(&mut replies)
        .expect("the replies are one whole zlib stream");
    let replies = String::from_utf8_lossy(&replies);
    assert!(replies.starts_with("250-"), "{replies}");
    assert!(
        replies.contains("\r\n354 ") && replies.contains("\r\n221 "),
        "{replies}"
    );
    assert_delivered_whole(&env, &[message]);
}

/// An rsmtp from before `receive deflate` refuses the argument (in plain
/// text, `421 4.7.0 ... "receive" takes no arguments`, exit 77): the leaf
/// defers, and says to upgrade rsmtp on the hub or turn compression off.
/// The old rsmtp is played by a forced command that answers as it did.
#[test]
fn an_rsmtp_too_old_for_compression_gets_a_deferral_that_says_what_to_do() {
    let env = Env::start_with(
        "compression_old_rsmtp",
        EnvOptions::default().peer_conf("compression = true"),
    );
    let old = env.base().join("old-rsmtp");
    write_file(
        &old,
        "#!/bin/sh\n# rsmtp before receive deflate: a receive with an argument is refused.\n\
         printf '421 4.7.0 refused SSH command \"%s\": \"receive\" takes no arguments; this key may run only \"receive\"\\r\\n' \"$SSH_ORIGINAL_COMMAND\"\n\
         exit 77\n",
        0o755,
    );
    env.set_forced_command(&old.display().to_string());
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &[],
        &["bob@hub.test"],
        &text_message("old"),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    println!("an old rsmtp: exit {:?}: {said}", out.status.code());
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(said.starts_with("4."), "{said}");
    for words in [
        "receive deflate",
        "421 4.7.0 refused SSH command",
        "upgrade rsmtp on the hub",
        "compression = false",
    ] {
        assert!(said.contains(words), "{words}: {said}");
    }
    assert!(!said.contains('\u{fffd}'), "{said}");
}
