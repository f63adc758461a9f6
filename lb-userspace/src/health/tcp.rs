//! TCP connect check: healthy when the three-way handshake completes within the timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

pub async fn probe(target: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!(
            "connect timed out after {} ms",
            timeout.as_millis()
        )),
    }
}
