//! What the lab's backends run: an HTTP server answering every request with the backend's name, and UDP
//! responders that send the name back from the VIP address (so the reply's source is the VIP, as DSR needs).
//! Run as `lb-lab serve` inside a backend namespace; the lab kills the process to take a backend down.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

/// Serves until the process is killed. `udp` sockets are bound to the exact VIP addresses.
pub fn serve(name: &str, http_port: u16, udp: &[SocketAddr]) -> anyhow::Result<()> {
    let body = format!("{name}\n");
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
