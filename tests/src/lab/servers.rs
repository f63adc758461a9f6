//! What the lab's backends run: an HTTP server answering every request with the backend's name, the same over
//! HTTPS, and UDP responders that send the name back from the VIP address (so the reply's source is the VIP, as
//! DSR needs). Run as `lb-lab serve` inside a backend namespace; the lab kills the process to take a backend down.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// HTTPS on `port` with the certificate chain and key in these PEM files.
pub struct Https {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Serves until the process is killed. `udp` sockets are bound to the exact VIP addresses.
pub fn serve(
    name: &str,
    http_port: u16,
    udp: &[SocketAddr],
    https: Option<&Https>,
) -> anyhow::Result<()> {
    let body = format!("{name}\n");
    // Before the HTTP server: the lab treats an accepting HTTP port as "all servers up".
    if let Some(h) = https {
        serve_https(h, body.clone())?;
    }
    for addr in udp {
        let sock = UdpSocket::bind(addr).map_err(|e| anyhow::anyhow!("bind udp {addr}: {e}"))?;
        let reply = body.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                // "ping" is the lab config's UDP health check; everything else learns who answered.
                let answer: &[u8] = if &buf[..n] == b"ping" {
                    b"pong"
                } else {
                    reply.as_bytes()
                };
                let _ = sock.send_to(answer, from);
            }
        });
    }
    // [::] with the default bindv6only=0 takes IPv4 connections as well.
    let server = Arc::new(
        tiny_http::Server::http(("::", http_port))
            .map_err(|e| anyhow::anyhow!("bind http :{http_port}: {e}"))?,
    );
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let server = Arc::clone(&server);
            let body = body.clone();
            std::thread::spawn(move || {
                while let Ok(req) = server.recv() {
                    let _ = req.respond(tiny_http::Response::from_string(body.clone()));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

/// A thread per connection: the TLS handshake, one request read, the name as the answer, close.
fn serve_https(h: &Https, body: String) -> anyhow::Result<()> {
    let certs = CertificateDer::pem_file_iter(&h.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("read {}", h.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&h.key)
        .with_context(|| format!("read {}", h.key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    let config = Arc::new(config);
    let listener =
        TcpListener::bind(("::", h.port)).with_context(|| format!("bind https :{}", h.port))?;
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (config, body) = (Arc::clone(&config), body.clone());
            std::thread::spawn(move || answer_https(config, tcp, &body));
        }
    });
    Ok(())
}

fn answer_https(config: Arc<rustls::ServerConfig>, tcp: TcpStream, body: &str) {
    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 << 10 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(response.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
