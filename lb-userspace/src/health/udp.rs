//! UDP send/expect check (DNS-style): send a payload, healthy when a reply arrives within the timeout and starts
//! with the expected bytes. A connected socket turns an ICMP port-unreachable into a fast failure.

use std::time::Duration;

use super::{Endpoint, ProbeError};

pub async fn probe(
    ep: &Endpoint,
    send: &[u8],
    expect: &[u8],
    timeout: Duration,
) -> Result<(), ProbeError> {
    let sock = super::socket::udp_connect(ep).await?;
    sock.send(send)
        .await
        .map_err(|e| ProbeError::io("send", &e))?;
    let mut buf = vec![0u8; 64 << 10];
    let n = match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(ProbeError::io("recv", &e)),
        Err(_) => {
            return Err(ProbeError::backend(format!(
                "no reply within {} ms",
                timeout.as_millis()
            )));
        }
    };
    if buf[..n].starts_with(expect) {
        Ok(())
    } else {
        Err(ProbeError::backend(format!(
            "reply {:?} does not start with {:?}",
            String::from_utf8_lossy(&buf[..n.min(64)]),
            String::from_utf8_lossy(expect)
        )))
    }
}
