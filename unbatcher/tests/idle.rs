//! A client that goes quiet does not hold rsmtp (and a postdrop) for ever.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn quiet_client_is_dropped_after_the_idle_timeout() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rsmtp"))
        .args([
            "--peer",
            "leaf1",
            "--allow-sender",
            "*",
            "--idle-timeout",
            "1",
        ])
        // As under sshd: a session whose replies a client reads (offline,
        // rsmtp writes none).
        .env("SSH_CONNECTION", "127.0.0.1 50000 127.0.0.1 22")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rsmtp");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"EHLO leaf.test\r\n").expect("write");
    let started = Instant::now();
    // Keep stdin open: only the idle timeout can end the session.
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rsmtp still waiting after 30 s with --idle-timeout 1"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert_eq!(
        status.code(),
        Some(74),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.starts_with("250-"),
        "EHLO was answered first: {stdout}"
    );
    assert!(stderr.contains("idle timeout"), "{stderr}");
}
