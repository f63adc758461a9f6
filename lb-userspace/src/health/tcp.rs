//! TCP connect check: healthy when the three-way handshake completes within the timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use super::ProbeError;

pub async fn probe(target: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, connect(target)).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(ProbeError::backend(format!(
            "connect timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}

/// A connection to `target`. The socket is made first, on its own, so that its failure (out of descriptors) is
/// known to be this host's and not the backend's.
pub async fn connect(target: SocketAddr) -> Result<TcpStream, ProbeError> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| ProbeError::local(format!("socket: {e}")))?;
    socket
        .connect(target)
        .await
        .map_err(|e| ProbeError::io("connect", &e))
}
