//! The real object in the real kernel: every program passes the verifier, and a smoke run of `lb_xdp` counts.
//! Needs root (BPF); without it the test says why and returns.

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{Counter, XDP_PASS, maps};
use lb_userspace::dataplane::{ALL_PROGRAMS, Dataplane, LoadOptions, MapSizes};

fn small() -> LoadOptions {
    LoadOptions {
        sizes: MapSizes {
            max_vips: 4,
            max_backends: 16,
            flow_table_size: 64,
            max_ring_size: 13,
        },
        pin_dir: None,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: loading BPF programs needs root");
        return false;
    }
    true
}

#[test]
fn every_program_passes_the_verifier() {
    if !is_root() {
        return;
    }
    let mut dp = Dataplane::load(&small()).unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    for name in ALL_PROGRAMS {
        let prog = dp.xdp(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(prog.fd().is_ok(), "{name} is not loaded");
    }
    assert_eq!(dp.sizes().max_ring_size, 13);
}

#[test]
fn arp_frame_is_passed_and_counted() {
    if !is_root() {
        return;
    }
    let mut dp = Dataplane::load(&small()).unwrap_or_else(|e| panic!("loading the object: {e:?}"));
    // Broadcast ARP request: Ethernet (ethertype 0x0806) + 28 bytes of ARP.
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend([0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend([
        0x02, 0, 0, 0, 0, 1, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 198, 18, 0, 2,
    ]);
    let res = dp
        .xdp(maps::PROG_LB)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
    assert_eq!(res.return_value, XDP_PASS, "ARP must go to the kernel");
    let counters = dp.counters().unwrap();
    let get = |c: Counter| {
        counters
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert_eq!(get(Counter::PassNotIp), 1, "counters: {counters:?}");
    let total: u64 = counters.iter().map(|(_, v)| v).sum();
    assert_eq!(total, 1, "exactly one counter per packet: {counters:?}");
}

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const CLIENT: [u8; 4] = [198, 18, 1, 10];
const VIP: [u8; 4] = [198, 18, 2, 1];
const LB_ADDR: [u8; 4] = [198, 18, 0, 1];
const BACKEND: [u8; 4] = [198, 18, 0, 2];

/// Ethernet + IPv4 (no options) + TCP (20 bytes) + `payload` zero bytes.
fn tcp4(dst: [u8; 4], dport: u16, flags: u8, frag_off: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(LB_MAC);
    f.extend(CLIENT_MAC);
    f.extend([0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    f.extend([0x45, 0]);
    f.extend(total.to_be_bytes());
    f.extend([0, 1]);
    f.extend(frag_off.to_be_bytes());
    f.extend([64, 6, 0, 0]);
    f.extend(CLIENT);
    f.extend(dst);
    f.extend(40000u16.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0; 8]);
    f.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend(std::iter::repeat_n(0u8, payload));
    f
}

/// `xdp_md` for BPF_PROG_TEST_RUN: the frame arrives on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> Vec<u8> {
    [0u32, len as u32, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect()
}

fn sh(args: &str) {
    let st = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .unwrap_or_else(|e| panic!("ip {args}: {e}"));
    assert!(st.success(), "ip {args} failed");
}

/// Moves the calling thread into a new network namespace. It vanishes with the thread (nothing to tear down),
/// and nothing in it is visible to other tests or helpers.
fn private_netns() {
    // SAFETY: unshare only affects the calling thread's namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

struct Run {
    action: u32,
    out: Vec<u8>,
    ns: u128,
}

fn run(dp: &mut Dataplane, prog: &str, frame: &[u8], ifindex: u32) -> Run {
    let md = xdp_md(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let res = dp
        .xdp(prog)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&md),
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("{prog}: BPF_PROG_TEST_RUN: {e:?}"));
    out.truncate(res.data_size_out as usize);
    Run {
        action: res.return_value,
        out,
        ns: res.duration.as_nanos(),
    }
}

/// One's-complement sum of `b` (a valid checksummed region sums to 0xffff).
fn ones_sum(b: &[u8]) -> u16 {
    let sum = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
        .sum();
    lb_common::csum::fold(sum)
}

fn counter(dp: &Dataplane, c: Counter) -> u64 {
    dp.counters()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == c)
        .map(|(_, v)| v)
        .unwrap()
}

/// Mean duration of `n` single runs (a single run's kernel-measured time; repeat > 1 would re-run on the already
/// rewritten buffer).
fn mean_ns(dp: &mut Dataplane, prog: &str, frame: &[u8], ifindex: u32, n: u32) -> u128 {
    (0..n)
        .map(|_| run(dp, prog, frame, ifindex).ns)
        .sum::<u128>()
        / n as u128
}

/// One VIP with one backend behind a real route and neighbour: the main verdicts, the encapsulated bytes, and
/// the decapsulated result, end to end through the kernel's FIB.
#[test]
fn forwarding_smoke() {
    use lb_common::*;
    use std::net::{IpAddr, Ipv4Addr};
    if !is_root() {
        return;
    }
    private_netns();
    sh("link add lbt0 address 02:00:00:00:00:01 type veth peer name lbt1");
    sh("addr add 198.18.0.1/24 dev lbt0");
    sh("link set lbt0 up");
    sh("link set lbt1 up");
    // bpf_fib_lookup answers FWD_DISABLED unless the ingress interface forwards: a balancer host must enable it.
    let st = std::process::Command::new("sysctl")
        .args(["-qw", "net.ipv4.conf.lbt0.forwarding=1"])
        .status();
    assert!(st.is_ok_and(|s| s.success()), "enabling forwarding on lbt0");
    sh("neigh replace 198.18.0.2 lladdr 02:00:00:00:00:03 dev lbt0 nud permanent");
    // SAFETY: a NUL-terminated name; if_nametoindex asks the calling thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(c"lbt0".as_ptr()) };
    assert_ne!(ifindex, 0, "if_nametoindex(lbt0)");

    let mut dp = Dataplane::load(&small()).unwrap();
    dp.set_config(&GlobalConfig {
        encap_src_v4: u32::from_ne_bytes(LB_ADDR),
        ring_stride: 13,
        mtu: 1500,
        ..Default::default()
    })
    .unwrap();
    let v4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
    dp.set_backend(1, &Backend::new(v4(BACKEND), BACKEND_F_ACTIVE))
        .unwrap();
    let key = VipKey::new(v4(VIP), 80, IPPROTO_TCP);
    let meta = dp
        .install_ring(
            &key,
            VipMeta {
                vip_id: 1,
                flags: 0,
                ring_slot: 0,
                ring_size: 13,
            },
            &[1; 13],
        )
        .unwrap();
    assert_eq!(
        meta.ring_slot, 2,
        "a new VIP's ring goes to slot 2 * vip_id"
    );
    assert_eq!(dp.read_ring(&meta).unwrap(), vec![1; 13]);

    // Non-VIP traffic goes to the kernel untouched.
    let other = tcp4([198, 18, 9, 9], 80, 0x10, 0, 0);
    let r = run(&mut dp, maps::PROG_LB, &other, ifindex);
    assert_eq!((r.action, &r.out), (XDP_PASS, &other));
    assert_eq!(counter(&dp, Counter::PassNotVip), 1);

    // A SYN: ring, flow insert, IPIP out of the ingress interface.
    let syn = tcp4(VIP, 80, 0x02, 0, 10);
    let r = run(&mut dp, maps::PROG_LB, &syn, ifindex);
    assert_eq!(
        r.action,
        XDP_TX,
        "SYN to the VIP: {:?}",
        dp.counters().unwrap()
    );
    assert_eq!(r.out.len(), syn.len() + 20);
    assert_eq!(&r.out[0..6], &BACKEND_MAC, "next-hop MAC from the FIB");
    assert_eq!(&r.out[6..12], &LB_MAC);
    assert_eq!(&r.out[12..14], &[0x08, 0x00]);
    let ip = &r.out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        syn.len() - 14 + 20
    );
    assert_eq!(&ip[6..8], &[0x40, 0], "DF");
    assert_eq!((ip[8], ip[9]), (64, IPPROTO_IPIP));
    assert_eq!(&ip[12..16], &LB_ADDR);
    assert_eq!(&ip[16..20], &BACKEND);
    let words: Vec<u16> = ip
        .chunks(2)
        .map(|c| u16::from_ne_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(
        lb_common::csum::fold(words.iter().map(|&w| w as u64).sum()),
        0xffff,
        "outer checksum"
    );
    assert_eq!(&r.out[34..], &syn[14..], "inner packet carried unchanged");
    assert_eq!(dp.flows(10).unwrap().len(), 1);
    assert_eq!(dp.vip_stats(1).unwrap().new_flows, 1);
    assert_eq!(dp.backend_stats(1).unwrap().packets, 1);

    // The backend side strips it again.
    dp.add_decap_local(&AddrKey::new(v4(BACKEND))).unwrap();
    dp.add_decap_vip(&AddrKey::new(v4(VIP))).unwrap();
    let d = run(&mut dp, maps::PROG_DECAP, &r.out, ifindex);
    assert_eq!(d.action, XDP_PASS);
    assert_eq!(
        &d.out[12..],
        &syn[12..],
        "decapsulated frame is the original"
    );
    assert_eq!(counter(&dp, Counter::DecapOk), 1);

    // Established: the flow entry, no new flow.
    let ack = tcp4(VIP, 80, 0x10, 0, 10);
    assert_eq!(run(&mut dp, maps::PROG_LB, &ack, ifindex).action, XDP_TX);
    assert_eq!(dp.vip_stats(1).unwrap().new_flows, 1);
    assert_eq!(dp.vip_stats(1).unwrap().lru_misses, 0);

    // Fragments of a VIP with the default policy are dropped.
    let frag = tcp4(VIP, 80, 0x10, 0x2000, 10);
    dp.upsert_vip(
        &VipKey::new(v4(VIP), 0, IPPROTO_TCP),
        &VipMeta {
            flags: VIP_F_FRAG_ONLY,
            ..meta
        },
    )
    .unwrap();
    assert_eq!(run(&mut dp, maps::PROG_LB, &frag, ifindex).action, XDP_DROP);
    assert_eq!(counter(&dp, Counter::DropFragment), 1);

    // Over the MTU once encapsulated.
    let big = tcp4(VIP, 80, 0x10, 0x4000, 1500 - 40 - 10);
    assert_eq!(run(&mut dp, maps::PROG_LB, &big, ifindex).action, XDP_DROP);
    assert_eq!(counter(&dp, Counter::DropOverMtu), 1);

    // ... and with ICMP answers enabled: fragmentation needed back to the client.
    let cfg = GlobalConfig {
        flags: CFG_F_ICMP_TOO_BIG,
        ..dp.config().unwrap()
    };
    dp.set_config(&cfg).unwrap();
    let r = run(&mut dp, maps::PROG_LB, &big, ifindex);
    assert_eq!(
        r.action,
        XDP_TX,
        "too-big answer: {:?}",
        dp.counters().unwrap()
    );
    assert_eq!(counter(&dp, Counter::IcmpTooBigSent), 1);
    assert_eq!(r.out.len(), 14 + 576, "answer capped at 576 bytes of IP");
    assert_eq!(
        (&r.out[0..6], &r.out[6..12]),
        (&CLIENT_MAC[..], &LB_MAC[..]),
        "MACs swapped"
    );
    let ip = &r.out[14..34];
    assert_eq!((ip[0], ip[8], ip[9]), (0x45, 64, IPPROTO_ICMP));
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 576);
    assert_eq!((&ip[12..16], &ip[16..20]), (&VIP[..], &CLIENT[..]));
    assert_eq!(ones_sum(ip), 0xffff, "IPv4 header checksum");
    let icmp = &r.out[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1500 - 20,
        "next-hop MTU"
    );
    assert_eq!(&icmp[8..], &big[14..14 + 548], "quote");
    assert_eq!(ones_sum(icmp), 0xffff, "ICMP checksum");
    dp.set_config(&GlobalConfig { flags: 0, ..cfg }).unwrap();

    // No route to the backend: nothing cached, counted.
    dp.set_backend(2, &Backend::new(v4([198, 19, 0, 2]), BACKEND_F_ACTIVE))
        .unwrap();
    let key2 = VipKey::new(v4([198, 18, 2, 2]), 80, IPPROTO_TCP);
    dp.install_ring(
        &key2,
        VipMeta {
            vip_id: 2,
            flags: 0,
            ring_slot: 0,
            ring_size: 13,
        },
        &[2; 13],
    )
    .unwrap();
    let r = run(
        &mut dp,
        maps::PROG_LB,
        &tcp4([198, 18, 2, 2], 80, 0x02, 0, 0),
        ifindex,
    );
    assert_eq!(r.action, XDP_DROP);
    assert_eq!(counter(&dp, Counter::DropNoRoute), 1);

    let total: u64 = dp.counters().unwrap().iter().map(|(_, v)| v).sum();
    assert_eq!(
        total,
        8,
        "one verdict counter per packet: {:?}",
        dp.counters().unwrap()
    );
    assert_eq!(
        dp.ebpf_mut().maps().count(),
        lb_userspace::dataplane::ALL_MAPS.len()
    );

    // Rough per-packet cost, printed for the report (the benches own the real numbers). Repeated runs reuse the
    // rewritten buffer, so they only suit in-place idempotent paths: floor, non-VIP, established L2 DSR.
    let dsr = VipKey::new(v4([198, 18, 2, 3]), 80, IPPROTO_TCP);
    let dsr_meta = VipMeta {
        vip_id: 3,
        flags: VIP_F_L2DSR,
        ring_slot: 0,
        ring_size: 13,
    };
    dp.install_ring(&dsr, dsr_meta, &[1; 13]).unwrap();
    let est = tcp4([198, 18, 2, 3], 80, 0x10, 0, 10);
    assert_eq!(
        run(&mut dp, maps::PROG_LB, &est, ifindex).action,
        XDP_TX,
        "L2 DSR"
    );
    let per_run = |dp: &mut Dataplane, prog: &str, frame: &[u8]| {
        let md = xdp_md(frame.len(), ifindex);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&md),
            repeat: 200_000,
            ..TestRunOptions::new()
        };
        dp.xdp(prog)
            .unwrap()
            .test_run(opts)
            .unwrap()
            .duration
            .as_nanos()
    };
    let empty = per_run(&mut dp, maps::PROG_EMPTY, &ack);
    let floor = per_run(&mut dp, maps::PROG_FLOOR, &ack);
    let non_vip = per_run(&mut dp, maps::PROG_LB, &other);
    let established = per_run(&mut dp, maps::PROG_LB, &est);
    let ipip = mean_ns(&mut dp, maps::PROG_LB, &ack, ifindex, 2000);
    let ipip_empty = mean_ns(&mut dp, maps::PROG_EMPTY, &ack, ifindex, 2000);
    eprintln!(
        "ns per run: empty {empty} floor {floor} non-VIP {non_vip} established L2 DSR {established}; \
         single runs: empty {ipip_empty} established IPIP {ipip}"
    );
}

/// Ethernet + IPv6 + TCP (20 bytes) + `payload` zero bytes.
fn tcp6(src: [u8; 16], dst: [u8; 16], dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(LB_MAC);
    f.extend(CLIENT_MAC);
    f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend(((20 + payload) as u16).to_be_bytes());
    f.extend([TCP_PROTO, 64]);
    f.extend(src);
    f.extend(dst);
    f.extend(40000u16.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0; 8]);
    f.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend(std::iter::repeat_n(0u8, payload));
    f
}
const TCP_PROTO: u8 = 6;

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = last;
    a
}

/// IPv6 VIP and backend: IP6IP6 bytes (flow label from the flow hash) and the ICMPv6 packet-too-big answer.
#[test]
fn forwarding_smoke_v6() {
    use lb_common::*;
    use std::net::{IpAddr, Ipv6Addr};
    if !is_root() {
        return;
    }
    private_netns();
    sh("link add lbt0 address 02:00:00:00:00:01 type veth peer name lbt1");
    sh("link set lbt0 up");
    sh("link set lbt1 up");
    sh("-6 addr add fd00::1/64 dev lbt0 nodad");
    sh("-6 neigh replace fd00::2 lladdr 02:00:00:00:00:03 dev lbt0 nud permanent");
    for knob in [
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv6.conf.lbt0.forwarding=1",
    ] {
        let st = std::process::Command::new("sysctl")
            .args(["-qw", knob])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "sysctl {knob}");
    }
    // SAFETY: a NUL-terminated name; if_nametoindex asks the calling thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(c"lbt0".as_ptr()) };
    assert_ne!(ifindex, 0, "if_nametoindex(lbt0)");

    let ip = |a: [u8; 16]| IpAddr::V6(Ipv6Addr::from(a));
    let (client, vip, lb, backend) = (v6(0x10), v6(0x80), v6(1), v6(2));
    let mut dp = Dataplane::load(&small()).unwrap();
    dp.set_config(&GlobalConfig {
        encap_src_v6: addr_words(ip(lb)).0,
        ring_stride: 13,
        mtu: 1500,
        flags: CFG_F_ICMP_TOO_BIG,
        ..Default::default()
    })
    .unwrap();
    dp.set_backend(1, &Backend::new(ip(backend), BACKEND_F_ACTIVE))
        .unwrap();
    let key = VipKey::new(ip(vip), 443, IPPROTO_TCP);
    dp.install_ring(
        &key,
        VipMeta {
            vip_id: 0,
            flags: 0,
            ring_slot: 0,
            ring_size: 13,
        },
        &[1; 13],
    )
    .unwrap();

    let syn = tcp6(client, vip, 443, 0x02, 10);
    let r = run(&mut dp, maps::PROG_LB, &syn, ifindex);
    assert_eq!(r.action, XDP_TX, "IPv6 SYN: {:?}", dp.counters().unwrap());
    assert_eq!(r.out.len(), syn.len() + 40);
    assert_eq!(
        (&r.out[0..6], &r.out[12..14]),
        (&BACKEND_MAC[..], &[0x86, 0xdd][..])
    );
    let o = &r.out[14..54];
    let hash =
        lb_common::hash::flow_hash(&FlowKey::new(ip(client), 40000, ip(vip), 443, IPPROTO_TCP));
    let label = u32::from_be_bytes([0, o[1] & 0x0f, o[2], o[3]]);
    assert_eq!(
        (o[0], o[1] >> 4, label),
        (0x60, 0, hash & 0xfffff),
        "version, traffic class, flow label"
    );
    assert_eq!(u16::from_be_bytes([o[4], o[5]]) as usize, syn.len() - 14);
    assert_eq!((o[6], o[7]), (IPPROTO_IPV6, 64));
    assert_eq!((&o[8..24], &o[24..40]), (&lb[..], &backend[..]));
    assert_eq!(&r.out[54..], &syn[14..]);

    // Over the MTU: ICMPv6 packet too big from the VIP, quoting up to 1280 bytes in all.
    let big = tcp6(client, vip, 443, 0x10, 1500 - 60);
    let r = run(&mut dp, maps::PROG_LB, &big, ifindex);
    assert_eq!(r.action, XDP_TX, "too big: {:?}", dp.counters().unwrap());
    assert_eq!(r.out.len(), 14 + 1280);
    let (h, icmp) = (&r.out[14..54], &r.out[54..]);
    assert_eq!((h[0], h[6], h[7]), (0x60, IPPROTO_ICMPV6, 64));
    assert_eq!(u16::from_be_bytes([h[4], h[5]]), 1280 - 40);
    assert_eq!((&h[8..24], &h[24..40]), (&vip[..], &client[..]));
    assert_eq!((icmp[0], icmp[1]), (2, 0));
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1500 - 40
    );
    assert_eq!(&icmp[8..], &big[14..14 + 1232]);
    let mut pseudo = Vec::from(&h[8..40]);
    pseudo.extend((icmp.len() as u32).to_be_bytes());
    pseudo.extend([0, 0, 0, IPPROTO_ICMPV6]);
    pseudo.extend(icmp);
    assert_eq!(ones_sum(&pseudo), 0xffff, "ICMPv6 checksum");
    assert_eq!(dp.vip_stats(0).unwrap().packets, 2);
    assert_eq!(dp.backend_stats(1).unwrap().packets, 2);
}
