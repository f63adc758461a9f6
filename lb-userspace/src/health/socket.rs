//! The probe's socket: for a VIP-path probe, marked (SO_MARK, so the policy rule routes it to `lb_hc`) and bound to
//! the balancer's encapsulation source (where the backend's direct reply returns) before it connects.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::{Endpoint, ProbeError};

/// A TCP connection to `ep`. The socket is made and prepared first, on its own, so that a failure there (out of
/// descriptors, no permission to mark) is known to be this host's and not the backend's.
pub async fn tcp_connect(ep: &Endpoint) -> Result<TcpStream, ProbeError> {
    let socket = if ep.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| ProbeError::local(format!("socket: {e}")))?;
    prepare(&socket, ep)?;
    if let Some(src) = ep.source {
        // The port is chosen at connect, per destination, as for an unbound socket: a bind with port 0 would take
        // a port no other socket on the host holds, and a few thousand probes in TIME_WAIT would exhaust them.
        setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)
            .map_err(|e| ProbeError::local(format!("IP_BIND_ADDRESS_NO_PORT: {e}")))?;
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| ProbeError::local(format!("bind {src}: {e}")))?;
    }
    socket
        .connect(ep.addr)
        .await
        .map_err(|e| connect_error(ep, &e))
}

/// A UDP socket connected to `ep` (so an ICMP port-unreachable fails the probe at once).
pub async fn udp_connect(ep: &Endpoint) -> Result<UdpSocket, ProbeError> {
    let local = SocketAddr::new(
        ep.source.unwrap_or(match ep.addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }),
        0,
    );
    // Binding to an ephemeral port involves no backend: any failure there is this host's.
    let std_sock = std::net::UdpSocket::bind(local)
        .map_err(|e| ProbeError::local(format!("bind {local}: {e}")))?;
    prepare(&std_sock, ep)?;
    std_sock
        .set_nonblocking(true)
        .map_err(|e| ProbeError::local(format!("nonblocking: {e}")))?;
    let sock =
        UdpSocket::from_std(std_sock).map_err(|e| ProbeError::local(format!("register: {e}")))?;
    sock.connect(ep.addr)
        .await
        .map_err(|e| connect_error(ep, &e))?;
    Ok(sock)
}

/// Marks a VIP-path probe's socket.
fn prepare(socket: &impl AsFd, ep: &Endpoint) -> Result<(), ProbeError> {
    if let Some(mark) = ep.mark {
        setsockopt(socket, sockopt::Mark, &mark).map_err(|e| {
            ProbeError::local(format!(
                "SO_MARK {mark:#x}: {e} (VIP-path checks need CAP_NET_RAW or CAP_NET_ADMIN)"
            ))
        })?;
    }
    Ok(())
}

/// A failed connect. For a VIP-path probe EINVAL means the probe route is missing: lbd's probe interface was
/// deleted, so its policy table has only the blackhole fallback. That is this host's fault, not the backend's.
fn connect_error(ep: &Endpoint, e: &io::Error) -> ProbeError {
    if ep.mark.is_some() && e.raw_os_error() == Some(libc::EINVAL) {
        return ProbeError::local(format!(
            "connect: {e} (the VIP-path probe route is missing: is lbd's probe interface {} up?)",
            crate::probe_path::INTERFACE
        ));
    }
    ProbeError::io("connect", e)
}
