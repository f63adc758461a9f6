//! The wrk row through the ECMP lab (tests/src/lab/ecmp.rs): the same requests as through the single balancer, from
//! a client behind a router that spreads the connections over three lbd + lb_xdp balancers with ECMP over the
//! routes their BIRDs announce. Its own lab, built for this row and torn down after it.

use anyhow::{Result, ensure};

use super::measure::xdp_prog_id;
use super::requests::{self, BalancerCpu, Mode};
use super::results::WrkBalancer;
use crate::lab::HOST_IF;
use crate::lab::ecmp::{EcmpLab, EcmpOptions, vip4};
use crate::lab::traffic;

/// Keep-alive and new-connection runs of `seconds` each; balancer CPU is the three programs' run time together.
pub fn wrk_row(seconds: f64) -> Result<WrkBalancer> {
    let lab = EcmpLab::new(&EcmpOptions {
        clients: 1,
        ..Default::default()
    });
    let client = &lab.clients[0].ns;
    // As for the other rows: first contact (ARP, accept queues, flow tables) is not measured.
    let warm = traffic::http_burst(client, vip4(), super::WARM_UP_REQUESTS, 16);
    ensure!(
        warm.failures == 0,
        "ECMP lab: warm-up requests failed:\n{}",
        warm.render()
    );
    let progs = lab
        .balancers
        .iter()
        .map(|b| xdp_prog_id(&b.host.ns, HOST_IF))
        .collect::<Result<Vec<u32>>>()?;
    let cpu = BalancerCpu::XdpPrograms(progs);
    Ok(WrkBalancer {
        what: format!(
            "{} x (lbd + lb_xdp) behind a router with ECMP over their BGP routes (one more hop)",
            lab.balancers.len()
        ),
        keepalive: requests::wrk(client, Mode::KeepAlive, seconds, &cpu, &[])?,
        new_conn: requests::wrk(client, Mode::NewConnection, seconds, &cpu, &[])?,
    })
}
