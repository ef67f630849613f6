//! A loopback TCP relay that counts the bytes on the wire, both ways, and
//! can play a slow link (a rate limit per direction): put between
//! bsmtp-ssh and the hub's sshd, it measures what compression saves and
//! what that is worth in msg/s (tests/tests/compression.rs, the bench).
//!
//! Bounded: the accept loop stops when the relay is dropped, and every
//! read of a connection gives up after [`IDLE`].

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a relayed connection may stay silent.
const IDLE: Duration = Duration::from_mins(2);
/// How often the accept loop looks for a stop.
const TICK: Duration = Duration::from_millis(5);

/// A running relay; stops accepting on drop.
pub struct ByteRelay {
    /// Its port on 127.0.0.1.
    pub port: u16,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl ByteRelay {
    /// Relays 127.0.0.1:`port` (returned in [`ByteRelay::port`]) to
    /// 127.0.0.1:`target`; with `rate`, each direction moves at most that
    /// many bytes a second.
    pub fn start(target: u16, rate: Option<u64>) -> ByteRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("relay address").port();
        let relay = ByteRelay {
            port,
            up: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (up, down, stop) = (
            Arc::clone(&relay.up),
            Arc::clone(&relay.down),
            Arc::clone(&relay.stop),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        // As both ends do: no Nagle stalls added by the relay.
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        pipe(&client, &server, Arc::clone(&up), rate);
                        pipe(&server, &client, Arc::clone(&down), rate);
                    }
                    Err(_) => thread::sleep(TICK),
                }
            }
        });
        relay
    }

    /// Bytes from the client (bsmtp-ssh) to the server (sshd) so far.
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Bytes from the server to the client so far.
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

impl Drop for ByteRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` in a thread of its own, counting into `count`,
/// at most `rate` bytes a second; half-closes `to` at the end.
fn pipe(from: &TcpStream, to: &TcpStream, count: Arc<AtomicU64>, rate: Option<u64>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let _ = from.set_read_timeout(Some(IDLE));
        // When the link is free again: a piece takes its size / rate, and
        // idle time earns no credit (as on a real slow line).
        let mut free_at = Instant::now();
        // Small pieces, so a rate limit is smooth.
        let mut buf = vec![0u8; if rate.is_some() { 4096 } else { 64 * 1024 }];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(rate) = rate {
                #[allow(clippy::cast_precision_loss)]
                let takes = Duration::from_secs_f64(n as f64 / rate as f64);
                free_at = free_at.max(Instant::now()) + takes;
                thread::sleep(free_at.saturating_duration_since(Instant::now()));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
