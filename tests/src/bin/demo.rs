//! The README's demo: a leaf and a hub on loopback, one message from
//! alice@leaf.test to bob@hub.test through the leaf's own sendmail, Postfix's
//! pipe(8), `bsmtp-ssh`, sshd and `rsmtp`; then the message and the log lines
//! that tell its way. Run as root by `scripts/demo`.

use std::time::Duration;

use bsmtp_ssh_tests::{Env, Log, PIPE_TRANSPORT};

const MESSAGE: &str = "From: Alice <alice@leaf.test>
To: Bob <bob@hub.test>
Subject: hello over ssh

This message left the leaf through Postfix's pipe(8) and bsmtp-ssh,
crossed an SSH session pinned to the hub's host key, and entered the
hub's queue through rsmtp and postdrop.
";

fn main() {
    println!("== starting a leaf Postfix, a hub Postfix and the hub's sshd");
    let env = Env::start("demo");
    println!("   environment: {}", env.base().display());
    println!("   programs: {}", env.bin_dir().display());
    println!("   sshd on 127.0.0.1:{}", env.sshd_port());

    println!("== leaf: sendmail -f alice@leaf.test bob@hub.test");
    env.leaf_sendmail("alice@leaf.test", &["bob@hub.test"], MESSAGE.as_bytes());

    let mail = env.wait_maildir("bob", 1, Duration::from_secs(30));
    println!("== the message in bob's Maildir on the hub");
    println!("{}", String::from_utf8_lossy(&mail[0]).trim_end());

    println!("== leaf log (pipe transport to the hub)");
    for line in env.log_lines(Log::Leaf, &format!("relay={PIPE_TRANSPORT},")) {
        println!("   {line}");
    }
    println!("== sshd log (the leaf's key)");
    for line in env.log_lines(Log::Sshd, "Accepted publickey") {
        println!("   {line}");
    }
    println!("== hub log (pickup, cleanup, qmgr, local)");
    for line in env.hub_log().lines() {
        if ["/pickup[", "/cleanup[", "/qmgr[", "/local["]
            .iter()
            .any(|d| line.contains(d))
        {
            println!("   {line}");
        }
    }
    println!("== done; tearing down");
}
