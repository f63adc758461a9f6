//! HTTP(S) GET check over hyper's HTTP/1 client connection (no pool): healthy when the status is the expected
//! one. A fresh connection (and TLS handshake) per probe is what a health check should measure anyway.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::rt::{Read, Write};
use hyper_util::rt::TokioIo;

use super::tls::TlsClient;
use super::{Endpoint, ProbeError};

/// Bodies are read (so keep-alive servers see a clean exchange) but capped: a health endpoint is small.
const MAX_BODY: usize = 64 << 10;

/// One check: GET `path` (over TLS with `tls`), healthy when the answer has `expect_status`.
pub async fn probe(
    target: &Endpoint,
    path: &str,
    expect_status: u16,
    timeout: Duration,
    tls: Option<&TlsClient>,
) -> Result<(), ProbeError> {
    let (status, _) = bounded(timeout, fetch(target, path, tls)).await?;
    if status == expect_status {
        Ok(())
    } else {
        Err(ProbeError::backend(format!(
            "status {status}, expected {expect_status}"
        )))
    }
}

/// GET `path` from `target` over plain HTTP; the whole exchange (connect, request, body) is bounded by `timeout`.
/// (The metrics tests scrape with it.)
#[cfg(test)]
pub async fn get(
    target: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    bounded(timeout, fetch(&target.into(), path, None))
        .await
        .map_err(|e| e.reason)
}

async fn bounded<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::backend(format!(
            "http timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn fetch(
    target: &Endpoint,
    path: &str,
    tls: Option<&TlsClient>,
) -> Result<(u16, String), ProbeError> {
    let tcp = super::socket::tcp_connect(target).await?;
    let answer = match tls {
        None => exchange(TokioIo::new(tcp), target.addr.to_string(), path).await,
        Some(tls) => {
            let host = tls.host().unwrap_or_else(|| target.addr.to_string());
            let stream = tls.connect(tcp).await.map_err(ProbeError::backend)?;
            exchange(TokioIo::new(stream), host, path).await
        }
    };
    answer.map_err(ProbeError::backend)
}

async fn exchange<S>(io: S, host: String, path: &str) -> Result<(u16, String), String>
where
    S: Read + Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
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
