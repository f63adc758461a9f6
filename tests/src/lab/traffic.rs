//! Client-side traffic for the lab: HTTP requests (new connection each, or held open), UDP request/response.
//! Every loop is bounded by a count and every socket operation by a timeout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::Duration;

use crate::harness::netns::NetNs;

pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Which backend answered how often, and how many requests failed (with the first few errors).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub per_backend: BTreeMap<String, usize>,
    pub failures: usize,
    pub errors: Vec<String>,
}

impl Tally {
    pub fn total_ok(&self) -> usize {
        self.per_backend.values().sum()
    }

    fn record(&mut self, r: Result<String, String>) {
        match r {
            Ok(name) => *self.per_backend.entry(name).or_default() += 1,
            Err(e) => {
                self.failures += 1;
                if self.errors.len() < 5 {
                    self.errors.push(e);
                }
            }
        }
    }

    pub fn merge(&mut self, other: Tally) {
        for (k, v) in other.per_backend {
            *self.per_backend.entry(k).or_default() += v;
        }
        self.failures += other.failures;
        for e in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e);
            }
        }
    }

    /// A table of shares, one line per backend.
    pub fn render(&self) -> String {
        let total = self.total_ok().max(1);
        let mut out = String::new();
        for (name, n) in &self.per_backend {
            let pct = 100.0 * *n as f64 / total as f64;
            out += &format!(
                "  {name:<12} {n:>6}  {pct:5.1}%  {}\n",
                "#".repeat((pct / 2.0) as usize)
            );
        }
        out += &format!("  {:<12} {:>6}\n", "failed", self.failures);
        for e in &self.errors {
            out += &format!("    e.g. {e}\n");
        }
        out
    }
}

/// One HTTP/1.1 keep-alive connection from the client to a VIP.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    pub local: SocketAddr,
}

impl HttpConn {
    pub fn connect(vip: SocketAddr) -> Result<HttpConn, String> {
        let s = TcpStream::connect_timeout(&vip, IO_TIMEOUT)
            .map_err(|e| format!("connect {vip}: {e}"))?;
        HttpConn::over(s)
    }

    /// Like [`HttpConn::connect`], from `local` (a chosen source port makes the flow's 5-tuple known in advance).
    pub fn connect_from(local: SocketAddr, vip: SocketAddr) -> Result<HttpConn, String> {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket,
            sockopt,
        };
        use std::os::fd::AsRawFd;
        let family = if vip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| format!("socket: {e}"))?;
        // A blocking connect gives up after the send timeout (Linux), as connect_timeout would.
        setsockopt(
            &fd,
            sockopt::SendTimeout,
            &nix::sys::time::TimeVal::new(IO_TIMEOUT.as_secs() as _, 0),
        )
        .map_err(|e| format!("SO_SNDTIMEO: {e}"))?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(local))
            .map_err(|e| format!("bind {local}: {e}"))?;
        connect(fd.as_raw_fd(), &SockaddrStorage::from(vip))
            .map_err(|e| format!("connect {local} -> {vip}: {e}"))?;
        HttpConn::over(TcpStream::from(fd))
    }

    fn over(s: TcpStream) -> Result<HttpConn, String> {
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let local = s.local_addr().map_err(|e| e.to_string())?;
        Ok(HttpConn {
            stream: BufReader::new(s),
            local,
        })
    }

    /// How long a read or write may wait before the request fails (default [`IO_TIMEOUT`]).
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), String> {
        let s = self.stream.get_ref();
        s.set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())
    }

    /// GET / on this connection; returns the body (the backend's name).
    pub fn get(&mut self) -> Result<String, String> {
        let req = "GET / HTTP/1.1\r\nHost: lab\r\nConnection: keep-alive\r\n\r\n";
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("send from {}: {e}", self.local))?;
        let mut status = String::new();
        self.stream
            .read_line(&mut status)
            .map_err(|e| format!("read status on {}: {e}", self.local))?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(format!("bad status on {}: {status:?}", self.local));
        }
        let mut len = None;
        loop {
            let mut line = String::new();
            self.stream
                .read_line(&mut line)
                .map_err(|e| format!("read header on {}: {e}", self.local))?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let len = len.ok_or_else(|| format!("no content-length on {}", self.local))?;
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("read body on {}: {e}", self.local))?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

/// `n` requests, each on a new connection (so each is a new flow from a new source port), `parallel` at a time,
/// from inside `ns`.
pub fn http_burst(ns: &NetNs, vip: SocketAddr, n: usize, parallel: usize) -> Tally {
    let tally = Mutex::new(Tally::default());
    let parallel = parallel.clamp(1, 64);
    ns.run(|| {
        std::thread::scope(|s| {
            for w in 0..parallel {
                let tally = &tally;
                s.spawn(move || {
                    let mut local = Tally::default();
                    for _ in (w..n).step_by(parallel) {
                        local.record(HttpConn::connect(vip).and_then(|mut c| c.get()));
                    }
                    tally.lock().expect("tally").merge(local);
                });
            }
        });
    });
    tally.into_inner().expect("tally")
}

/// Opens `n` keep-alive connections and makes one request on each; returns them with the backend each reached.
pub fn open_connections(ns: &NetNs, vip: SocketAddr, n: usize) -> Vec<(HttpConn, String)> {
    ns.run(|| {
        (0..n)
            .map(|i| {
                let mut c =
                    HttpConn::connect(vip).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let who = c
                    .get()
                    .unwrap_or_else(|e| panic!("first request on connection {i}: {e}"));
                (c, who)
            })
            .collect()
    })
}

/// One UDP request/response from inside `ns`; returns the answering backend's name.
pub fn udp_request(ns: &NetNs, vip: SocketAddr) -> Result<String, String> {
    ns.run(|| {
        let bind: SocketAddr = if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("addr");
        let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        // Connected, so a reply from any source other than the VIP (a broken DSR path) is not accepted.
        s.connect(vip).map_err(|e| format!("connect {vip}: {e}"))?;
        s.send(b"who?").map_err(|e| format!("send to {vip}: {e}"))?;
        let mut buf = [0u8; 256];
        let n = s
            .recv(&mut buf)
            .map_err(|e| format!("no UDP answer from {vip}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

/// `n` UDP requests from distinct source ports.
pub fn udp_burst(ns: &NetNs, vip: SocketAddr, n: usize) -> Tally {
    let mut t = Tally::default();
    for _ in 0..n {
        t.record(udp_request(ns, vip));
    }
    t
}

/// Sends a complete IPv4 packet (header included) through a raw socket of the calling thread's namespace.
pub fn send_raw_ipv4(packet: &[u8], dst: std::net::Ipv4Addr) {
    // SAFETY: plain socket syscalls on a descriptor owned by this function.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, packet.len() as isize, "sendto: {err}");
    }
}
