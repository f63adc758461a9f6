//! Phase 3, throughput: iperf3 TCP through the balancer (client → VIP → lb_xdp → IPIP → backend, replies direct),
//! one flow and many flows, and the same streams sent straight to the backends as the reference.
//!
//! An iperf3 server serves one test at a time and every stream of a test must reach it, so each backend runs its
//! own server on its own port and the VIP has one single-backend service per port ([`vip_entries`]). "Many flows"
//! is one client per port, in parallel, each with [`STREAMS_PER_CLIENT`] streams.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::measure::{check, run_bounded, tx_drops};
use super::results::IperfRun;
use crate::harness::guards::ChildGuard;
use crate::lab::{self, Lab};

pub const BASE_PORT: u16 = 5201;
pub const STREAMS_PER_CLIENT: u32 = 4;

fn port(i: usize) -> u16 {
    BASE_PORT + i as u16
}

/// lbd config entries: VIP:5201+i → backend i, health-checked on the backend's HTTP port (iperf3 serves one
/// client at a time, so a check on its own port could make a test find it busy).
pub fn vip_entries(lab: &Lab) -> Vec<toml::Value> {
    lab.backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let text = format!(
                "address = \"{}\"\nport = {}\nprotocol = \"tcp\"\nmode = \"ipip\"\nbackends = [{{ address = \"{}\" \
                 }}]\nhealth = {{ kind = \"tcp\", port = {}, interval_ms = 500, timeout_ms = 300, rise = 2, fall = \
                 2 }}\n",
                lab::VIP_V4,
                port(i),
                b.host.v4,
                lab::HTTP_PORT
            );
            toml::Value::Table(text.parse().expect("iperf3 VIP entry parses"))
        })
        .collect()
}

/// iperf3 servers, one per backend, killed on drop.
pub struct Servers {
    _children: Vec<ChildGuard>,
}

impl Servers {
    pub fn start(lab: &Lab) -> Result<Servers> {
        let mut children = Vec::new();
        for (i, b) in lab.backends.iter().enumerate() {
            let p = port(i).to_string();
            let mut cmd = b.host.ns.command(&["iperf3", "--server", "--port", &p]);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            children.push(ChildGuard::spawn(
                cmd,
                &format!("iperf3 server on {}", b.name),
            ));
        }
        for (i, b) in lab.backends.iter().enumerate() {
            let addr = SocketAddr::new(IpAddr::V4(b.host.v4), port(i));
            let mut up = false;
            for _ in 0..100 {
                // Probe with a listening-socket check, not a connection: iperf3 would take a probe as a client.
                let ss = b
                    .host
                    .ns
                    .exec(&["ss", "-Htln", &format!("sport = :{}", port(i))]);
                if !ss.trim().is_empty() {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !up {
                bail!("iperf3 server on {addr} did not start within 5 s");
            }
        }
        Ok(Servers {
            _children: children,
        })
    }
}

/// Through the balancer (`via_vip`) or straight to the backends: one client of one stream to backend 0's
/// service, or (`many`) one client per backend service in parallel.
pub fn iperf(lab: &Lab, via_vip: bool, many: bool, seconds: f64) -> Result<IperfRun> {
    let secs = seconds.ceil().max(1.0) as u64;
    let clients = if many { lab.backends.len() } else { 1 };
    let streams = if many { STREAMS_PER_CLIENT } else { 1 };
    let drops0 = tx_drops(&lab.switch, "p-")?;
    let outputs: Vec<Result<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                s.spawn(move || {
                    let host = if via_vip {
                        lab::VIP_V4.to_string()
                    } else {
                        lab.backends[i].host.v4.to_string()
                    };
                    let argv = [
                        "iperf3".to_string(),
                        "--client".into(),
                        host,
                        "--port".into(),
                        port(i).to_string(),
                        "--time".into(),
                        secs.to_string(),
                        "--parallel".into(),
                        streams.to_string(),
                        "--connect-timeout".into(),
                        "3000".into(),
                        "--json".into(),
                    ];
                    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                    // A server still closing the previous test answers "busy" for a moment.
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let out = run_bounded(
                            lab.client().ns.command(&argv),
                            "iperf3 client",
                            Duration::from_secs(secs + 15),
                        )?;
                        match check(&out, "iperf3 client") {
                            Err(e) if tries < 3 && format!("{e:#}").contains("busy") => {
                                std::thread::sleep(Duration::from_millis(500));
                            }
                            other => return other,
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let drops1 = tx_drops(&lab.switch, "p-")?;
    let balancer_port = lab::balancer_switch_port();
    let mut run = IperfRun {
        flows: clients as u32 * streams,
        seconds: secs as f64,
        ..IperfRun::default()
    };
    for (port, after) in &drops1 {
        let before = drops0
            .iter()
            .find(|(p, _)| p == port)
            .map_or(0, |(_, d)| *d);
        let d = after.saturating_sub(before);
        run.ring_drops += d;
        if *port == balancer_port {
            run.balancer_ring_drops += d;
        }
    }
    for out in outputs {
        let (bps, retrans) = parse_iperf(&out?)?;
        run.gbit_per_s += bps / 1e9;
        run.retransmits += retrans;
    }
    Ok(run)
}

/// (bits/s received, retransmits) from `iperf3 --json`.
pub fn parse_iperf(json: &str) -> Result<(f64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 --json output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("end.sum_received.bits_per_second")?;
    let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps, retrans))
}
