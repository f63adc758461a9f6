//! `lbd decap` on a backend: the real binary attaches lb_decap (pinned, so it stays after the command exits), an
//! IP-in-IP packet from the balancer carrying a datagram to a VIP reaches a socket bound to the VIP, one from any
//! other source is dropped and counted, and `--detach` removes the program from one interface, the maps going
//! with the last.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use lb_common::Counter;
use lb_tests::harness::guards::BpffsDir;
use lb_tests::harness::netns::{NetNs, skip_unless_root, veth_pair};
use lb_tests::harness::packets::{Ip, encap4};
use lb_tests::harness::pinned::counter;
use lb_tests::lab::target_binary;
use lb_tests::lab::traffic::send_raw_ipv4;

const SENDER: Ipv4Addr = Ipv4Addr::new(198, 18, 210, 1);
/// Not a balancer: `lbd decap` is not told about it.
const STRANGER: Ipv4Addr = Ipv4Addr::new(198, 18, 210, 3);
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 210, 2);
/// The backend's address on its second interface.
const BACKEND2: Ipv4Addr = Ipv4Addr::new(198, 18, 211, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 210, 10);

fn lbd_decap(ns: &NetNs, args: &[&str]) -> std::process::Output {
    // nsenter keeps the host's mount namespace: the pins must land on the host's bpffs.
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns.name()))
        .arg("--")
        .arg(target_binary("lbd"))
        .arg("decap")
        .args(args)
        .output()
        .expect("run lbd decap")
}

#[test]
fn lbd_decap_attaches_decapsulates_and_detaches() {
    if skip_unless_root("lbd_decap_attaches_decapsulates_and_detaches") {
        return;
    }
    let sender = NetNs::new("dcs");
    let backend = NetNs::new("dcb");
    veth_pair(&sender, "s0", &backend, "b0");
    sender.add_addr("s0", &format!("{SENDER}/24"));
    backend.add_addr("b0", &format!("{BACKEND}/24"));
    backend.add_addr("lo", &format!("{VIP}/32"));
    let pins = BpffsDir::new("decap");
    let pin_dir = pins.path().to_str().expect("utf-8").to_string();

    let out = lbd_decap(
        &backend,
        &[
            "--iface",
            "b0",
            "--vip",
            &VIP.to_string(),
            "--from",
            &SENDER.to_string(),
            "--pin-dir",
            &pin_dir,
        ],
    );
    assert!(
        out.status.success(),
        "lbd decap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = backend.ip(&["link", "show", "b0"]);
    assert!(
        link.contains("lb_decap"),
        "lb_decap not attached after lbd decap exited:\n{link}"
    );

    let sock =
        backend.run(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(VIP), 5000)).expect("bind VIP"));
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let datagram =
        |text: &[u8]| Ip::udp(IpAddr::V4(SENDER), 4000, IpAddr::V4(VIP), 5000, text).bytes();
    // From a stranger first: dropped and counted, so nothing is waiting on the socket for the balancer's packet.
    sender.run(|| send_raw_ipv4(&encap4(STRANGER, BACKEND, &datagram(b"forged")), BACKEND));
    sender.run(|| {
        send_raw_ipv4(
            &encap4(SENDER, BACKEND, &datagram(b"through the tunnel")),
            BACKEND,
        )
    });
    let mut buf = [0u8; 64];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("the decapsulated datagram reaches the VIP's socket");
    assert_eq!(
        &buf[..n],
        b"through the tunnel",
        "the first datagram at the VIP's socket must be the balancer's, not the stranger's"
    );
    assert_eq!(from, SocketAddr::new(IpAddr::V4(SENDER), 4000));
    assert_eq!(
        counter(pins.path(), Counter::DecapDropSource),
        1,
        "the stranger's tunnel packet is counted as dropped"
    );
    assert_eq!(counter(pins.path(), Counter::DecapOk), 1);

    // A second interface on the same pin directory: detaching one leaves the other's link and the shared maps.
    veth_pair(&sender, "s1", &backend, "b1");
    backend.add_addr("b1", &format!("{BACKEND2}/24"));
    let out = lbd_decap(
        &backend,
        &[
            "--iface",
            "b1",
            "--vip",
            &VIP.to_string(),
            "--from",
            &SENDER.to_string(),
            "--pin-dir",
            &pin_dir,
        ],
    );
    assert!(
        out.status.success(),
        "lbd decap on b1 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let maps_dir = lb_userspace::pins::maps_dir(pins.path());
    for (iface, attached_after) in [("b0", true), ("b1", false)] {
        let out = lbd_decap(
            &backend,
            &["--iface", iface, "--detach", "--pin-dir", &pin_dir],
        );
        assert!(
            out.status.success(),
            "lbd decap --detach {iface} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let link = backend.ip(&["link", "show", iface]);
        assert!(
            !link.contains("lb_decap"),
            "lb_decap still attached to {iface} after --detach:\n{link}"
        );
        let other = if iface == "b0" { "b1" } else { "b0" };
        let other_link = backend.ip(&["link", "show", other]);
        if attached_after {
            assert!(
                other_link.contains("lb_decap"),
                "--detach of {iface} took lb_decap off {other} too:\n{other_link}"
            );
            assert!(
                maps_dir.join(lb_common::maps::DECAP_VIPS).exists(),
                "--detach of {iface} unpinned the maps {other} still uses"
            );
        }
    }
    assert!(
        !maps_dir.exists(),
        "the maps are still pinned after the last interface was detached"
    );
}
