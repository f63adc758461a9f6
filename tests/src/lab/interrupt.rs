//! SIGINT and SIGTERM for the lab's long-running commands (`lb-lab up`, `lb-lab demo`): caught and turned into an
//! ordinary return, so the lab's RAII guards run (lbd and the servers stopped, pins removed, namespaces deleted)
//! instead of everything being left behind until the next start cleans up after a dead process.

use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Installed once, before the lab is built: a signal that arrives while it is being built is kept and acted on as
/// soon as the caller looks.
pub struct Interrupt {
    received: Receiver<i32>,
}

impl Interrupt {
    pub fn install() -> Interrupt {
        let mut signals = Signals::new([SIGINT, SIGTERM]).expect("install SIGINT/SIGTERM handlers");
        let (tx, received) = channel();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        });
        Interrupt { received }
    }

    /// Waits up to `limit` for a signal; returns its name when one came.
    pub fn wait(&self, limit: Duration) -> Option<&'static str> {
        match self.received.recv_timeout(limit) {
            Ok(sig) => Some(name(sig)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// A signal received since the last look, without waiting.
    pub fn pending(&self) -> Option<&'static str> {
        self.received.try_recv().ok().map(name)
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
