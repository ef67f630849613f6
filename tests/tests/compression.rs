//! `compression = true` in a `[peer.NAME]` section: libssh2's zlib on the
//! SSH link. Messages arrive byte for byte as without it, the hub's sshd
//! really agreed to compress (`check` names the method libssh2 agreed),
//! and a text message takes far fewer bytes on the wire, counted by a
//! relay between bsmtp-ssh and sshd.

use bsmtp_ssh_tests::relay::ByteRelay;
use bsmtp_ssh_tests::util::{license_text, poll};
use bsmtp_ssh_tests::{Env, EnvOptions, LEAF_PEER};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: std::time::Duration = std::time::Duration::from_secs(90);

/// About 100 KiB of real English text (Debian's license texts, always
/// installed by base-files), as a message with headers local(8) writes
/// back unchanged, a line that needs dot-stuffing and 8-bit text.
fn text_message(id: &str) -> Vec<u8> {
    let body = license_text(100 * 1024);
    let mut message = format!(
        "From: alice@leaf.test\nTo: bob@hub.test\nDate: Wed, 2 Dec 2026 04:00:00 +0000\n\
         Message-ID: <{id}@leaf.test>\nSubject: {id}\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
         .a line that starts with a dot\nGrüße aus dem Blätterwald\n"
    )
    .into_bytes();
    message.extend(body);
    message
}

/// Compression on and off deliver the same bytes; with it on, libssh2
/// negotiated zlib and the message took at least 1.5 x fewer bytes from
/// bsmtp-ssh to the hub. Not more: the bundled libssh2 (1.11.2) deflates
/// Huffman-only (`comp.c`: `Z_BEST_SPEED`, `Z_HUFFMAN_ONLY`, no string
/// matching, against compression side channels between the channels of
/// one session), which gives plain prose about 1.7 x (measured here),
/// where zlib's default level gives about 3 x.
#[test]
fn compression_on_and_off_deliver_the_same_bytes_with_fewer_on_the_wire() {
    let env = Env::start("compression");
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
        zipped_up * 3 <= plain_up * 2,
        "compression saved too little: {plain_up} bytes plain, {zipped_up} compressed"
    );
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
