//! The probes' own thread and tokio runtime. lbd's main runtime also rebuilds rings, writes maps and answers
//! lbctl and /metrics; a probe waiting there for its turn would report that wait as the backend's latency (the
//! demo showed ~190 ms for backends answering in 1 ms while a ring was rebuilt) and, past the check's timeout,
//! fail the backend for the daemon's own stall. On a thread of their own, probes are timed by nothing but the
//! network and the backend.

use std::io;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub struct ProbeThread {
    handle: Handle,
    /// Dropped with the checker: the thread's runtime then returns and drops every probe task. The thread is not
    /// joined, since the checker may be dropped inside the daemon's runtime, which must not block.
    _stop: oneshot::Sender<()>,
}

impl ProbeThread {
    pub fn start() -> io::Result<ProbeThread> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lbd-health".into())
            .spawn(move || {
                let rt = match Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle
            .recv()
            .map_err(|_| io::Error::other("the health-check thread died while starting"))??;
        Ok(ProbeThread {
            handle,
            _stop: stop,
        })
    }

    /// Where probe tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}
