//! Why a probe failed, and whose fault it was. A probe that failed on this host (no descriptor left, no buffer, no
//! free local port) says nothing about the backend: counting it towards `fall` would let a full descriptor table in
//! lbd take every backend of every VIP down at once, so such a result is "unknown", logged and counted, and leaves
//! the backend's state alone.

use std::fmt;
use std::io;

/// The errnos of a failed system call that describe this host, not the peer. Routing errors (ENETUNREACH,
/// EHOSTUNREACH) are not among them: a backend the balancer cannot route to is down for forwarded traffic too.
const LOCAL_ERRNOS: &[i32] = &[
    libc::EMFILE,        // this process is out of descriptors
    libc::ENFILE,        // the system is
    libc::ENOBUFS,       // no socket buffer memory
    libc::ENOMEM,        // no kernel memory
    libc::EADDRNOTAVAIL, // no free local port (or the local address went away)
    libc::EADDRINUSE,    // the chosen local port clashes
    libc::EAGAIN,        // out of local ports, on the connect paths that say so this way
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    pub reason: String,
    /// True when this host could not run the probe: the backend was not judged.
    pub local: bool,
}

impl ProbeError {
    /// The backend failed the check: refused, reset, silent, or a wrong answer.
    pub fn backend(reason: impl Into<String>) -> ProbeError {
        ProbeError {
            reason: reason.into(),
            local: false,
        }
    }

    /// This host could not run the check.
    pub fn local(reason: impl Into<String>) -> ProbeError {
        ProbeError {
            reason: reason.into(),
            local: true,
        }
    }

    /// Step `what` of a probe failed with `e`: local when its errno is about this host's resources.
    pub fn io(what: &str, e: &io::Error) -> ProbeError {
        let reason = format!("{what}: {e}");
        if e.raw_os_error().is_some_and(|n| LOCAL_ERRNOS.contains(&n)) {
            ProbeError::local(reason)
        } else {
            ProbeError::backend(reason)
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errnos_are_local_and_the_peers_answers_are_not() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            let e = ProbeError::io("connect", &io::Error::from_raw_os_error(errno));
            assert!(e.local, "{e}");
        }
        for errno in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
        ] {
            let e = ProbeError::io("connect", &io::Error::from_raw_os_error(errno));
            assert!(!e.local, "{e}");
        }
        let e = ProbeError::io("recv", &io::Error::other("no errno"));
        assert!(!e.local && e.reason.starts_with("recv: "), "{e}");
    }
}
