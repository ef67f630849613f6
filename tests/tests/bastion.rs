//! Hubs behind a bastion (`proxy_jump`) and behind a program
//! (`proxy_command`), end to end: a bastion sshd whose only key line
//! permits forwarding to the hub's port and nothing else carries delivery
//! in pipe and batching mode (its log shows the forward); a bastion that
//! is down, refuses the login, offers a changed host key or refuses the
//! forward defers with the hop named; the hub's own pin is checked
//! through the bastion; `check` reports the hop; `flush` and `pull` and a
//! chain of two bastions work; idle timeouts hold through the hop; a
//! `proxy_command` (netcat) carries a delivery, and one that exits at once
//! defers naming the command and its stderr.

use std::time::{Duration, Instant};

use bsmtp_ssh_tests::bastion::{Bastion, BASTION};
use bsmtp_ssh_tests::hubs::SilentHub;
use bsmtp_ssh_tests::sshd::free_port;
use bsmtp_ssh_tests::util::poll;
use bsmtp_ssh_tests::{Env, EnvOptions, Log, HUB_PEER};

/// Long enough for a slow CI machine, short enough to fail a hung test.
const DELIVERY: Duration = Duration::from_secs(90);

const JUMP: &str = "proxy_jump = \"jump\"";

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: alice@leaf.test\nTo: bob@hub.test\nMessage-ID: <{id}@leaf.test>\nSubject: {id}\n\n{id} body\n"
    )
    .into_bytes()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the bastion's sshd logged a forward to the hub's port.
fn wait_forward_logged(bastion: &Bastion, hub_port: u16) -> String {
    let wanted = format!("target 127.0.0.1 port {hub_port}");
    poll(Duration::from_secs(10), || {
        let log = bastion.sshd.log();
        log.lines()
            .any(|l| l.contains("direct_tcpip") && l.contains(&wanted))
            .then_some(log)
    })
    .unwrap_or_else(|| panic!("no forward in the bastion's log:\n{}", bastion.sshd.log()))
}

/// Pipe mode through a bastion that may only forward to the hub: the
/// message arrives once, the status names the path, and the bastion's log
/// shows the forward.
#[test]
fn pipe_mode_delivers_through_a_forward_only_bastion() {
    let env = Env::start("bastion_pipe");
    let bastion = env.start_bastion();
    env.write_bastion_config(&bastion.spec(), &[JUMP]);
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4JUMP1"],
        &["bob@hub.test"],
        &message("jump.1"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.starts_with(&format!(
            "2.0.0 delivered via 127.0.0.1:{} via 127.0.0.1[127.0.0.1]:{}: 250 ",
            env.sshd_port(),
            bastion.sshd.port()
        )),
        "{said}"
    );
    env.wait_maildir("bob", 1, DELIVERY);
    wait_forward_logged(&bastion, env.sshd_port());
    // And through the leaf's Postfix (pipe(8)).
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("jump.2"));
    env.wait_maildir("bob", 2, DELIVERY);
    env.wait_pipe_status("sent", DELIVERY);
}

/// Batching mode (spawn(8), lmtp(8), `bsmtp-ssh lmtp`) through the bastion.
#[test]
fn batching_mode_delivers_through_a_forward_only_bastion() {
    let env = Env::start_with("bastion_lmtp", EnvOptions::default().batching());
    let bastion = env.start_bastion();
    env.write_bastion_config(&bastion.spec(), &[JUMP]);
    for i in 1..=3 {
        env.leaf_sendmail(
            "alice@leaf.test",
            &["bob@hub.test"],
            &message(&format!("jump.lmtp.{i}")),
        );
    }
    env.wait_maildir("bob", 3, DELIVERY);
    let sent = env.wait_log(Log::Leaf, "status=sent", DELIVERY);
    assert!(sent.contains("to=<bob@hub.test>"), "{sent}");
    env.wait_leaf_queue_empty(DELIVERY);
    wait_forward_logged(&bastion, env.sshd_port());
}

/// Asserts a deferral (exit 75, a 4.x.x status) whose reason names the
/// bastion hop and says `wanted`.
fn assert_defers_naming_the_hop(env: &Env, id: &str, wanted: &str) -> String {
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", id],
        &["bob@hub.test"],
        &message(id),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(said.starts_with("4."), "{said}");
    assert!(said.contains(&format!("bastion {BASTION}: ")), "{said}");
    assert!(said.contains(wanted), "{wanted}: {said}");
    said
}

/// Each way a bastion can fail defers, naming the hop: down, login
/// refused, a refused forward (`permitopen`), a hub down behind it, a
/// changed host key. Nothing is delivered.
#[test]
fn each_bastion_failure_defers_naming_the_hop() {
    let env = Env::start("bastion_failures");
    let mut bastion = env.start_bastion();
    let good_keys = Bastion::key_line(&env, env.sshd_port());

    // Down: nothing listens on its port.
    let mut down = bastion.spec();
    down.port = free_port();
    env.write_bastion_config(&down, &[JUMP]);
    assert_defers_naming_the_hop(&env, "4DOWN", "connect to 127.0.0.1[127.0.0.1]:");

    env.write_bastion_config(&bastion.spec(), &[JUMP]);
    // Login refused: the bastion knows no key of ours.
    bastion.set_authorized_keys("");
    assert_defers_naming_the_hop(&env, "4LOGIN", "refused");

    // The forward refused: the key may only forward elsewhere.
    bastion.set_authorized_keys(&Bastion::key_line(&env, free_port()));
    let said = assert_defers_naming_the_hop(
        &env,
        "4PERMIT",
        &format!("forward to 127.0.0.1:{} refused", env.sshd_port()),
    );
    assert!(said.contains("permitopen"), "{said}");

    // The hub is down behind the bastion: not a refusal, no permitopen hint.
    let gone = free_port();
    bastion.set_authorized_keys(&Bastion::key_line(&env, gone));
    let mut hub = env.hub_spec(HUB_PEER);
    hub.port = gone;
    hub.lines = vec![JUMP.to_owned()];
    env.write_peer_sections(&[hub, bastion.spec()], "");
    let said = assert_defers_naming_the_hop(
        &env,
        "4HUBDOWN",
        &format!("forward to 127.0.0.1:{gone} failed"),
    );
    assert!(
        said.contains("cannot reach the hub") && !said.contains("permitopen"),
        "{said}"
    );
    env.write_bastion_config(&bastion.spec(), &[JUMP]);

    // A changed host key: the bastion now offers another one.
    bastion.set_authorized_keys(&good_keys);
    bastion.sshd.stop();
    bastion.sshd.new_host_key();
    bastion.sshd.start(false);
    assert_defers_naming_the_hop(&env, "4HOSTKEY", "host key mismatch");

    assert!(
        Env::read_maildir(&env.hub_maildir("bob")).is_empty(),
        "a failed bastion delivered"
    );
}

/// The hub's host key is still checked end to end: a bastion that
/// forwards to some other sshd (here: a hub whose pin does not match)
/// cannot pass it off as the hub.
#[test]
fn the_hubs_own_pin_is_checked_through_the_bastion() {
    let env = Env::start("bastion_hub_pin");
    let bastion = env.start_bastion();
    let other = env.start_second_hub("other");
    // The leaf pins the environment's hub key for the other hub's port.
    let spec = env.relayed_hub_spec(HUB_PEER, other.sshd.port());
    bastion.set_authorized_keys(&Bastion::key_line(&env, other.sshd.port()));
    let mut hub = spec.clone();
    hub.lines = vec![JUMP.to_owned()];
    env.write_peer_sections(&[hub, bastion.spec()], "");
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4MITM"],
        &["bob@hub.test"],
        &message("mitm"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(said.contains("host key mismatch"), "{said}");
    assert!(!said.contains(&format!("bastion {BASTION}: ")), "{said}");
}

/// `check` reports the hop and the hub reached through it.
#[test]
fn check_reports_the_bastion_hop() {
    let env = Env::start("bastion_check");
    let bastion = env.start_bastion();
    env.write_bastion_config(&bastion.spec(), &[JUMP]);
    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config], b"");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for wanted in [
        format!("ok:   peer hub: config: hub hub (host 127.0.0.1, port {}, user bsmtp-hub, via bastion jump (host 127.0.0.1, port {}", env.sshd_port(), bastion.sshd.port()),
        "ok:   peer hub via jump: hop bastion jump: ".to_owned(),
        format!("ok:   peer hub via jump: hop bastion jump: 127.0.0.1:{}: host key matches the pin", bastion.sshd.port()),
        format!("forward to 127.0.0.1:{} allowed", env.sshd_port()),
        "ok:   peer hub via jump: session: ".to_owned(),
        "ok:   bastion jump: ".to_owned(),
    ] {
        assert!(said.contains(&wanted), "{wanted}\n{said}");
    }
    assert!(!said.contains("peer jump:"), "{said}");

    // A refused forward is a FAIL naming the hop.
    bastion.set_authorized_keys(&Bastion::key_line(&env, free_port()));
    let out = env.bsmtp_ssh(&["check", "--config", &config, HUB_PEER], b"");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "FAIL: peer hub via jump: hop bastion jump: bastion jump: 127.0.0.1[127.0.0.1]:{}: forward to 127.0.0.1:{} refused",
            bastion.sshd.port(),
            env.sshd_port()
        )),
        "{said}"
    );
}

/// `proxy_command`: netcat carries the session to the hub; the hub's key
/// is checked as ever.
#[test]
fn proxy_command_carries_a_delivery() {
    assert!(
        std::path::Path::new("/usr/bin/nc").exists(),
        "netcat is missing (/usr/bin/nc); scripts/test installs it: apt-get install -y netcat-openbsd"
    );
    let env = Env::start("proxy_command");
    let mut hub = env.hub_spec(HUB_PEER);
    hub.lines = vec!["proxy_command = \"nc %h %p\"".to_owned()];
    env.write_peer_sections(&[hub], "");
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4NC1"],
        &["bob@hub.test"],
        &message("nc.1"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.starts_with(&format!(
            "2.0.0 delivered via 127.0.0.1:{} via proxy_command \"nc 127.0.0.1 {}\": 250 ",
            env.sshd_port(),
            env.sshd_port()
        )),
        "{said}"
    );
    env.wait_maildir("bob", 1, DELIVERY);
    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config], b"");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "ok:   peer hub: hop proxy_command: \"nc %h %p\" carried the session to 127.0.0.1:{}",
            env.sshd_port()
        )),
        "{said}"
    );
}

/// A proxy command that exits at once, and one that cannot start, defer
/// naming the command and what it said.
#[test]
fn a_failing_proxy_command_defers_naming_it_and_its_stderr() {
    let env = Env::start("proxy_command_fails");
    let mut hub = env.hub_spec(HUB_PEER);
    hub.lines = vec!["proxy_command = \"/bin/sh -c 'echo no route to %h >&2; exit 3'\"".to_owned()];
    env.write_peer_sections(&[hub.clone()], "");
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4NC2"],
        &["bob@hub.test"],
        &message("nc.2"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(said.starts_with("4."), "{said}");
    assert!(said.contains("proxy_command \"/bin/sh -c "), "{said}");
    assert!(said.contains("exit status: 3"), "{said}");
    assert!(said.contains("stderr: no route to 127.0.0.1"), "{said}");

    hub.lines = vec!["proxy_command = \"/nonexistent/proxy %h %p\"".to_owned()];
    env.write_peer_sections(&[hub], "");
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4NC3"],
        &["bob@hub.test"],
        &message("nc.3"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.contains("proxy_command \"/nonexistent/proxy 127.0.0.1 ")
            && said.contains("cannot start /nonexistent/proxy"),
        "{said}"
    );
    assert!(Env::read_maildir(&env.hub_maildir("bob")).is_empty());
}

/// `flush` and `pull` (store and forward) go through the bastion too.
#[test]
fn flush_and_pull_go_through_the_bastion() {
    let env = Env::start_with("bastion_spool", EnvOptions::default().spool().pull());
    let bastion = env.start_bastion();
    env.write_bastion_config(&bastion.spec(), &[JUMP]);
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], &message("jump.flush"));
    let spooled = poll(DELIVERY, || {
        (Env::spooled(&env.leaf_spool_directory(), HUB_PEER).len() == 1).then_some(())
    });
    assert!(spooled.is_some(), "{}", env.diagnostics());
    let out = env.flush();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 delivered"), "{}", text(&out));
    env.wait_maildir("bob", 1, DELIVERY);

    env.hub_sendmail(
        "bob@hub.test",
        &["alice@leaf.test"],
        b"From: bob@hub.test\nTo: alice@leaf.test\nMessage-ID: <jump.pull@hub.test>\nSubject: p\n\nfor the leaf\n",
    );
    let spooled = poll(DELIVERY, || {
        (Env::spooled(&env.hub_spool_directory(), bsmtp_ssh_tests::LEAF_PEER).len() == 1)
            .then_some(())
    });
    assert!(spooled.is_some(), "{}", env.diagnostics());
    let out = env.pull();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.wait_leaf_maildir("alice", 1, DELIVERY);
}

/// A chain: the hub behind `jump`, which is itself behind `outer`; each
/// bastion's key line permits only the next hop.
#[test]
fn a_chain_of_two_bastions_delivers() {
    let env = Env::start("bastion_chain");
    let inner = env.start_bastion();
    let outer = env.start_bastion_to("outer", inner.sshd.port());
    let mut inner_spec = inner.spec();
    inner_spec.lines = vec!["proxy_jump = \"outer\"".to_owned()];
    let mut hub = env.hub_spec(HUB_PEER);
    hub.lines = vec![JUMP.to_owned()];
    env.write_peer_sections(&[hub, inner_spec, outer.spec()], "");
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4CHAIN"],
        &["bob@hub.test"],
        &message("chain"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.starts_with(&format!(
            "2.0.0 delivered via 127.0.0.1:{} via 127.0.0.1:{} via 127.0.0.1[127.0.0.1]:{}: 250 ",
            env.sshd_port(),
            inner.sshd.port(),
            outer.sshd.port()
        )),
        "{said}"
    );
    env.wait_maildir("bob", 1, DELIVERY);
    wait_forward_logged(&outer, inner.sshd.port());
    wait_forward_logged(&inner, env.sshd_port());
}

/// Timeouts hold through the hop: a bastion that never answers costs one
/// idle timeout, and so does a hub behind a working bastion that never
/// answers; both defer.
#[test]
fn timeouts_hold_through_the_bastion() {
    let env = Env::start("bastion_timeouts");
    let silent = SilentHub::start();
    let mut hung = env.hub_spec(BASTION);
    hung.port = silent.port;
    env.write_bastion_config(&hung, &[JUMP, "idle_timeout = 2"]);
    let started = Instant::now();
    let said = assert_defers_naming_the_hop(&env, "4HUNG", "SSH handshake");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}: {said}"
    );

    let bastion = env.start_bastion_to(BASTION, silent.port);
    let mut hub = env.hub_spec(HUB_PEER);
    hub.port = silent.port;
    hub.lines = vec![JUMP.to_owned(), "idle_timeout = 2".to_owned()];
    env.write_peer_sections(&[hub, bastion.spec()], "");
    let started = Instant::now();
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4HUNGHUB"],
        &["bob@hub.test"],
        &message("hung"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(said.contains("SSH handshake"), "{said}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}: {said}"
    );
}

/// A message far larger than the SSH windows crosses the bridge whole
/// (flow control both ways through the bastion's channel).
#[test]
fn a_large_message_crosses_the_bastion_whole() {
    let env = Env::start("bastion_large");
    let bastion = env.start_bastion();
    env.write_bastion_config(&bastion.spec(), &[JUMP]);
    let mut body = message("jump.large");
    for i in 0..60_000 {
        body.extend_from_slice(
            format!("line {i:06} of a large message through a bastion\n").as_bytes(),
        );
    }
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4LARGE"],
        &["bob@hub.test"],
        &body,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = env.wait_maildir("bob", 1, DELIVERY);
    let got = String::from_utf8_lossy(&got[0]);
    assert!(
        got.contains("line 000000 of")
            && got.ends_with("line 059999 of a large message through a bastion\n"),
        "{} bytes",
        got.len()
    );
    assert_eq!(
        got.matches(" of a large message through a bastion\n")
            .count(),
        60_000
    );
}

/// A satellite (`sendmail`, no MTA) and `push-table` reach the hub through
/// the bastion; the satellite's only peer is the hub, not the bastion.
#[test]
fn sendmail_and_push_table_go_through_the_bastion() {
    let env = Env::start_with(
        "bastion_satellite",
        EnvOptions::default()
            .leaf_conf("sender_domain = \"leaf.test\"")
            .rsmtp_args([
                "--allow-sender",
                "@leaf.test",
                "--allow-table",
                "relay_recipients",
            ])
            .rsmtp_conf("table_directory = \"{base}/tables\""),
    );
    let bastion = env.start_bastion();
    env.write_bastion_config(&bastion.spec(), &[JUMP]);
    let out = env.satellite_sendmail(
        &["-oi", "-f", "alice@leaf.test", "--", "bob@hub.test"],
        b"From: alice@leaf.test\nSubject: satellite\n\nthrough the bastion\n",
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    assert!(
        Env::spooled(&env.leaf_spool_directory(), HUB_PEER).is_empty(),
        "the satellite spooled instead of sending"
    );
    env.wait_maildir("bob", 1, DELIVERY);

    let tables = env.base().join("tables");
    bsmtp_ssh_tests::util::mkdir(&tables, 0o755);
    bsmtp_ssh_tests::util::chown_to(&tables, bsmtp_ssh_tests::HUB_SSH_USER, None);
    let source = env.base().join("relay_recipients");
    bsmtp_ssh_tests::util::write_file(&source, "bob@hub.test OK\n", 0o644);
    let out = env.bsmtp_ssh_as_leaf(&[
        "push-table",
        HUB_PEER,
        "relay_recipients",
        &source.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(tables.join("relay_recipients").exists(), "{}", text(&out));
}

/// The code blocks of README.md's "Hubs behind a bastion": runs of lines
/// indented four spaces (blank lines inside a block kept).
fn readme_bastion_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(bsmtp_ssh_tests::binaries::workspace_root().join("README.md"))
            .expect("read README.md");
    let start = readme
        .find("## Hubs behind a bastion")
        .expect("README.md has no \"Hubs behind a bastion\"");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks: Vec<String> = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if let Some(code) = line.strip_prefix("    ") {
            if !in_block {
                blocks.push(String::new());
                in_block = true;
            }
            let block = blocks.last_mut().expect("a block");
            block.push_str(code);
            block.push('\n');
        } else if !line.trim().is_empty() {
            in_block = false;
        }
    }
    blocks
}

/// README.md's "Hubs behind a bastion", followed literally: its config
/// block and the bastion's key line are read from the README, with only
/// what must differ here substituted (the example host names become
/// loopback ports, /etc/bsmtp-ssh paths the environment's files, the
/// accounts the harness's), then a delivery goes through, and `check`
/// prints the lines the README shows.
#[test]
fn readme_bastion_section_delivers() {
    let blocks = readme_bastion_blocks();
    let config = blocks
        .iter()
        .find(|b| b.contains("proxy_jump"))
        .expect("README: no config block with proxy_jump");
    let key_line = blocks
        .iter()
        .find(|b| b.contains("permitopen"))
        .expect("README: no bastion key line");
    let check_lines: Vec<&str> = blocks
        .iter()
        .flat_map(|b| b.lines())
        .filter(|l| l.starts_with("ok:"))
        .collect();
    assert!(!check_lines.is_empty(), "README: no check output");

    let env = Env::start("bastion_readme");
    let bastion = env.start_bastion_to("bastion", env.sshd_port());
    let key = env.leaf_key().display().to_string();
    let user = bsmtp_ssh_tests::HUB_SSH_USER;
    let mut converted = String::new();
    for line in config.lines() {
        let line = line.split('#').next().unwrap_or_default().trim_end();
        let line = if line == "host = \"hub.internal\"" {
            format!(
                "host = \"127.0.0.1\"\nport = {}\nuser = \"{user}\"\nidentity = \"{key}\"",
                env.sshd_port()
            )
        } else if line == "host = \"bastion.example.com\"" {
            format!(
                "host = \"127.0.0.1\"\nport = {}\nidentity = \"{key}\"",
                bastion.sshd.port()
            )
        } else if line.starts_with("user = ") {
            format!("user = \"{user}\"")
        } else {
            line.replace(
                "/etc/bsmtp-ssh/known_hosts.bastion",
                &bastion.known_hosts.display().to_string(),
            )
            .replace(
                "/etc/bsmtp-ssh/known_hosts",
                &env.known_hosts().display().to_string(),
            )
        };
        converted.push_str(&line);
        converted.push('\n');
    }
    for leftover in ["example.com", "hub.internal", "/etc/"] {
        assert!(
            !converted.contains(leftover),
            "{leftover} left in:\n{converted}"
        );
    }
    let conf = env.peer_sections(&[], &converted);
    bsmtp_ssh_tests::util::write_file(&env.transport_config(), conf, 0o644);
    let public = bsmtp_ssh_tests::util::read_lossy(&env.leaf_key().with_extension("pub"));
    let public: Vec<&str> = public.split_whitespace().take(2).collect();
    let keys = key_line
        .replace("hub.internal:22", &format!("127.0.0.1:{}", env.sshd_port()))
        .replace("ssh-ed25519 AAAA... leaf", &public.join(" "));
    assert!(!keys.contains("AAAA..."), "{keys}");
    bastion.set_authorized_keys(&keys);

    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4README"],
        &["bob@hub.test"],
        &message("readme"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    env.wait_maildir("bob", 1, DELIVERY);
    wait_forward_logged(&bastion, env.sshd_port());

    let config = env.transport_config().display().to_string();
    let out = env.bsmtp_ssh(&["check", "--config", &config, HUB_PEER], b"");
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    for line in check_lines {
        // The README's line up to its first host-specific part.
        let shown: Vec<&str> = line.splitn(4, ": ").take(3).collect();
        let shown = shown.join(": ");
        assert!(
            said.contains(&shown),
            "README shows {line:?}, check said:\n{said}"
        );
    }
}

/// The bastion itself reached through a `proxy_command` (netcat): the
/// proxies compose.
#[test]
fn a_bastion_reached_through_a_proxy_command() {
    let env = Env::start("bastion_via_nc");
    let bastion = env.start_bastion();
    let mut spec = bastion.spec();
    spec.lines = vec!["proxy_command = \"nc %h %p\"".to_owned()];
    let mut hub = env.hub_spec(HUB_PEER);
    hub.lines = vec![JUMP.to_owned()];
    env.write_peer_sections(&[hub, spec], "");
    let out = env.deliver_as_leaf(
        "alice@leaf.test",
        &["--queue-id", "4JUMPNC"],
        &["bob@hub.test"],
        &message("jump.nc"),
    );
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "via 127.0.0.1:{} via proxy_command \"nc 127.0.0.1 {}\": 250 ",
            bastion.sshd.port(),
            bastion.sshd.port()
        )),
        "{said}"
    );
    env.wait_maildir("bob", 1, DELIVERY);
}
