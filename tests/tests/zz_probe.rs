use aya::programs::{TestRun, TestRunOptions};
use lb_common::{IPPROTO_TCP, VIP_F_L2DSR, maps};
use lb_tests::fixtures::*;
use lb_tests::packets::*;
use std::net::IpAddr;

fn warm(rig: &mut Rig, prog: &str, frame: &[u8]) -> (f64, u32, f64) {
    let ifindex = rig.lab.if_in;
    let xdp = rig.dp.xdp(prog).unwrap();
    let mut out = vec![0u8; 2048];
    let ctx = xdp_md(frame.len(), ifindex);
    let i0 = xdp.info().unwrap();
    let r = xdp
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 200_000,
            ..TestRunOptions::new()
        })
        .unwrap();
    let i1 = xdp.info().unwrap();
    (
        (i1.run_time() - i0.run_time()).as_nanos() as f64 / 200_000.0,
        r.return_value,
        r.duration.as_nanos() as f64,
    )
}

#[test]
fn probe() {
    let mut rig = Rig::new("probe");
    rig.apply(&Setup::new(vec![VipSpec::new(
        IpAddr::V4(VIP4B),
        80,
        IPPROTO_TCP,
        2,
        VIP_F_L2DSR,
        &[1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1],
    )]));
    let _s = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let l2 = L2::new(CLIENT_MAC, LB0_MAC);
    let arp = arp_request(&l2, CLIENT4, VIP4);
    let nonvip = frame(
        &l2,
        &Ip::tcp(
            IpAddr::V4(CLIENT4),
            1000,
            "198.18.50.1".parse().unwrap(),
            80,
            TCP_ACK,
        )
        .payload(&[0; 10])
        .bytes(),
    );
    let vipport = frame(
        &l2,
        &Ip::tcp(IpAddr::V4(CLIENT4), 1000, IpAddr::V4(VIP4B), 81, TCP_ACK)
            .payload(&[0; 10])
            .bytes(),
    );
    let dsr = frame(
        &l2,
        &Ip::tcp(IpAddr::V4(CLIENT4), 1000, IpAddr::V4(VIP4B), 80, TCP_ACK)
            .payload(&[0; 10])
            .bytes(),
    );
    if std::env::var("PROBE_HOLD").is_ok() {
        std::thread::sleep(std::time::Duration::from_secs(8));
    }
    let only = std::env::var("PROBE").ok();
    let dsrsyn = frame(
        &l2,
        &Ip::tcp(IpAddr::V4(CLIENT4), 1000, IpAddr::V4(VIP4B), 80, TCP_SYN)
            .payload(&[0; 10])
            .bytes(),
    );
    for round in 0..3 {
        for (name, prog, f) in [
            ("empty", maps::PROG_EMPTY, &nonvip),
            ("floor", maps::PROG_FLOOR, &nonvip),
            ("arp", maps::PROG_LB, &arp),
            ("nonvip", maps::PROG_LB, &nonvip),
            ("vip-other-port", maps::PROG_LB, &vipport),
            ("dsr", maps::PROG_LB, &dsr),
            ("dsrsyn", maps::PROG_LB, &dsrsyn),
        ] {
            if let Some(o) = &only {
                if o != name {
                    continue;
                }
                for _ in 0..20 {
                    warm(&mut rig, prog, f);
                }
            }
            let (ns, v, dur) = warm(&mut rig, prog, f);
            println!("round {round} {name:16} {ns:8.1} ns  verdict {v} timer {dur}");
        }
    }
}
