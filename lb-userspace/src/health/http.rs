//! HTTP GET check over hyper's HTTP/1 client connection (no pool, no TLS): healthy when the status is the expected
//! one. A fresh connection per probe is what a health check should measure anyway.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bodies are read (so keep-alive servers see a clean exchange) but capped: a health endpoint is small.
const MAX_BODY: usize = 64 << 10;

pub async fn probe(
    target: SocketAddr,
    path: &str,
    expect_status: u16,
    timeout: Duration,
) -> Result<(), String> {
    let (status, _) = get(target, path, timeout).await?;
    if status == expect_status {
        Ok(())
    } else {
        Err(format!("status {status}, expected {expect_status}"))
    }
}

/// GET `path` from `target`; the whole exchange (connect, request, body) is bounded by `timeout`.
pub async fn get(
    target: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    match tokio::time::timeout(timeout, exchange(target, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("http timed out after {} ms", timeout.as_millis())),
    }
}

async fn exchange(target: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, target.to_string())
        .header(hyper::header::USER_AGENT, "lbd-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("http: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("http body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    conn.abort();
    result
}
