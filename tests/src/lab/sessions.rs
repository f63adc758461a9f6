//! Long-lived client connections that keep talking: each sends a request every `period` and must get its answer
//! from the backend it started on. A connection is broken when a request fails (reset, timeout, closed) or another
//! backend answers (the flow was moved to a backend that cannot know it). Bounded: the workers stop when told, or
//! at `limit` at the latest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::netns::NetNs;
use crate::lab::traffic::HttpConn;

/// A request unanswered for this long breaks its connection. Far above any answer here (under a millisecond), and
/// above a TCP retransmission or two, so a stall of the shared machine is not taken for a broken path; a connection
/// sent to a backend that does not know it is reset at once anyway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per worker thread: each request takes well under a millisecond here, so a worker gets round its
/// connections well within the 100 ms period.
const PER_WORKER: usize = 30;

/// One connection's account.
#[derive(Debug, Clone)]
pub struct Session {
    pub local: SocketAddr,
    pub vip: SocketAddr,
    /// The backend that answered the first request.
    pub backend: String,
    pub messages: u64,
    /// Why it broke, if it did.
    pub broken: Option<String>,
}

pub struct Sessions {
    stop: Arc<AtomicBool>,
    messages: Arc<AtomicU64>,
    workers: Vec<JoinHandle<Vec<Session>>>,
    /// Every connection's local and VIP address, in opening order.
    pub flows: Vec<(SocketAddr, SocketAddr)>,
}

/// What the connections went through.
#[derive(Debug, Clone)]
pub struct SessionsReport {
    pub sessions: Vec<Session>,
}

impl SessionsReport {
    pub fn broken(&self) -> Vec<&Session> {
        self.sessions
            .iter()
            .filter(|s| s.broken.is_some())
            .collect()
    }

    pub fn messages(&self) -> u64 {
        self.sessions.iter().map(|s| s.messages).sum()
    }
}

impl Sessions {
    /// Opens `n` connections from `ns` to each VIP of `vips` in turn (one request each, which names its backend),
    /// then keeps each exchanging a request every `period` until [`Sessions::finish`] or `limit`.
    pub fn open(
        ns: &NetNs,
        vips: &[SocketAddr],
        n: usize,
        period: Duration,
        limit: Duration,
    ) -> Sessions {
        let conns: Vec<(HttpConn, Session)> = ns.run(|| {
            (0..n)
                .map(|i| {
                    let vip = vips[i % vips.len()];
                    let mut c = HttpConn::connect(vip)
                        .and_then(|c| c.set_timeout(REQUEST_TIMEOUT).map(|()| c))
                        .unwrap_or_else(|e| panic!("opening connection {i} to {vip}: {e}"));
                    let backend = c
                        .get()
                        .unwrap_or_else(|e| panic!("first request on connection {i}: {e}"));
                    let s = Session {
                        local: c.local,
                        vip,
                        backend,
                        messages: 1,
                        broken: None,
                    };
                    (c, s)
                })
                .collect()
        });
        let flows = conns.iter().map(|(_, s)| (s.local, s.vip)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let messages = Arc::new(AtomicU64::new(n as u64));
        let deadline = Instant::now() + limit;
        let mut workers = Vec::new();
        let mut conns = conns.into_iter().peekable();
        while conns.peek().is_some() {
            let chunk: Vec<(HttpConn, Session)> = conns.by_ref().take(PER_WORKER).collect();
            let (stop, messages) = (stop.clone(), messages.clone());
            workers.push(std::thread::spawn(move || {
                talk(chunk, period, deadline, &stop, &messages)
            }));
        }
        Sessions {
            stop,
            messages,
            workers,
            flows,
        }
    }

    /// Requests answered so far, over all connections.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Stops the exchanges and returns every connection's account.
    pub fn finish(mut self) -> SessionsReport {
        self.stop.store(true, Ordering::Relaxed);
        let sessions = std::mem::take(&mut self.workers)
            .into_iter()
            .flat_map(|w| w.join().expect("a session worker panicked"))
            .collect();
        SessionsReport { sessions }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        // Also when a test fails before finish(): the workers must not outlive the lab.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One worker: a request on each live connection every `period`; a connection that breaks is closed and counted.
fn talk(
    mut conns: Vec<(HttpConn, Session)>,
    period: Duration,
    deadline: Instant,
    stop: &AtomicBool,
    messages: &AtomicU64,
) -> Vec<Session> {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        next += period;
        for (c, s) in conns.iter_mut().filter(|(_, s)| s.broken.is_none()) {
            match c.get() {
                Ok(who) if who == s.backend => {
                    s.messages += 1;
                    messages.fetch_add(1, Ordering::Relaxed);
                }
                Ok(who) => {
                    s.broken = Some(format!(
                        "answered by {who} after {} messages from {}",
                        s.messages, s.backend
                    ))
                }
                Err(e) => s.broken = Some(format!("after {} messages: {e}", s.messages)),
            }
        }
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        } else {
            // Behind (a slow moment of a shared machine): carry on from now rather than burst to catch up.
            next = Instant::now();
        }
    }
    conns.into_iter().map(|(_, s)| s).collect()
}
