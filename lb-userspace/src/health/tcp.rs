//! TCP connect check: healthy when the three-way handshake completes within the timeout.

use std::time::Duration;

use super::{Endpoint, ProbeError};

pub async fn probe(ep: &Endpoint, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, super::socket::tcp_connect(ep)).await {
        Ok(r) => r.map(drop),
        Err(_) => Err(ProbeError::backend(format!(
            "connect timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}
