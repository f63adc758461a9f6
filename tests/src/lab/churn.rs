//! The ECMP lab's churn: long-lived connections keep talking while one balancer is removed (its BGP session goes
//! down) and added back, and another is drained and undrained. Each change makes the router rehash some flows onto
//! other balancers, which have never seen them: they survive only because every balancer picks the same backend.
//! What `cargo xtask demo ecmp` shows and tests/ecmp.rs asserts; it measures how long the router took to follow
//! each change and how many connections moved.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::lab::ecmp::{EcmpLab, vip4, vip6};
use crate::lab::sessions::Sessions;

pub struct ChurnOptions {
    /// Long-lived connections, spread over the lab's clients and both VIPs.
    pub connections: usize,
    /// Each connection sends a request this often.
    pub period: Duration,
    /// How long the connections talk after each change (so moved ones prove they work on their new balancer).
    pub dwell: Duration,
}

impl Default for ChurnOptions {
    fn default() -> Self {
        ChurnOptions {
            connections: 240,
            period: Duration::from_millis(100),
            dwell: Duration::from_secs(3),
        }
    }
}

/// One change and how the router followed it.
#[derive(Debug, Clone)]
pub struct Convergence {
    pub change: String,
    /// From the change (the BGP session closed, `lbctl announce drain` answered, ...) to the router's routes to
    /// both VIPs through the expected balancers.
    pub took: Duration,
    /// Connections the router sent through another balancer afterwards.
    pub moved: usize,
}

#[derive(Debug, Clone)]
pub struct ChurnReport {
    pub connections: usize,
    /// Balancers at least one connection went through.
    pub balancers: usize,
    pub messages: u64,
    /// Each broken connection, with why.
    pub broken: Vec<String>,
    pub changes: Vec<Convergence>,
}

impl ChurnReport {
    /// The demo's last line.
    pub fn summary(&self) -> String {
        format!(
            "ecmp: {} connections through {} balancers, {} broken",
            self.connections,
            self.balancers,
            self.broken.len()
        )
    }

    /// The convergence table.
    pub fn render(&self) -> String {
        let mut s = format!("  {:<58} {:>10} {:>8}\n", "change", "converged", "moved");
        for c in &self.changes {
            s += &format!(
                "  {:<58} {:>8.3} s {:>4}/{}\n",
                c.change,
                c.took.as_secs_f64(),
                c.moved,
                self.connections
            );
        }
        s += &format!(
            "  {} requests answered, each by the backend its connection started on\n",
            self.messages
        );
        for b in self.broken.iter().take(10) {
            s += &format!("  BROKEN: {b}\n");
        }
        s
    }
}

/// How long the router may take to follow one change: BGP propagation here is milliseconds, a session's return
/// about two seconds (BIRD's 1 s connect delay, the OPEN exchange), and a return from drain the lab's 1.5 s
/// hold-down; thirty seconds leave a shared machine's stalls room without hiding a route that never converges.
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);
/// Which balancer carries a connection is watched for this many request periods: every connection sends a few
/// requests in it even when a worker runs late.
const PATH_WINDOW_PERIODS: u32 = 5;
/// The connections never run longer than this, whatever happens to the caller.
const SESSIONS_LIMIT: Duration = Duration::from_secs(600);

/// Runs the churn on a lab of at least two balancers: the last one is removed and added back, the first drained
/// and undrained. Prints each step.
pub fn churn(lab: &mut EcmpLab, opts: &ChurnOptions) -> ChurnReport {
    let n = lab.balancers.len();
    assert!(n >= 2, "churn needs two balancers at least");
    let (removed, drained) = (n - 1, 0);
    let all = lab.all();
    let without = |k: usize| -> Vec<usize> { all.iter().copied().filter(|&x| x != k).collect() };

    let per_client = opts.connections.div_ceil(lab.clients.len());
    let mut sessions: Vec<Sessions> = lab
        .clients
        .iter()
        .map(|c| {
            // Two in three over IPv4, one over IPv6: both families' ECMP and announcements take part.
            Sessions::open(
                &c.ns,
                &[vip4(), vip4(), vip6()],
                per_client,
                opts.period,
                SESSIONS_LIMIT,
            )
        })
        .collect();
    let flows: Vec<_> = sessions.iter().flat_map(|s| s.flows.clone()).collect();
    println!(
        "  {} connections open, each sending a request every {} ms",
        flows.len(),
        opts.period.as_millis()
    );
    let window = opts.period * PATH_WINDOW_PERIODS;
    let mut routes = lab.flow_balancers(window);
    let mut used: BTreeSet<usize> = routes.values().copied().collect();
    print_spread(lab, &routes);
    std::thread::sleep(opts.dwell);

    let mut changes = Vec::new();
    let mut step = |lab: &mut EcmpLab,
                    change: String,
                    act: &mut dyn FnMut(&mut EcmpLab),
                    expect: &[usize]| {
        let start = Instant::now();
        act(lab);
        lab.wait_next_hops(expect, CONVERGE_LIMIT);
        let took = start.elapsed();
        let now = lab.flow_balancers(window);
        let moved = routes
            .iter()
            .filter(|(flow, k)| now.get(flow).is_some_and(|j| j != *k))
            .count();
        used.extend(now.values().copied());
        routes = now;
        let talked = sessions.iter().map(Sessions::messages).sum::<u64>();
        std::thread::sleep(opts.dwell);
        let talked = sessions.iter().map(Sessions::messages).sum::<u64>() - talked;
        println!(
            "  {change}: the router followed in {:.3} s; {moved} of {} connections moved; {talked} requests \
             answered in the next {} s",
            took.as_secs_f64(),
            flows.len(),
            opts.dwell.as_secs()
        );
        changes.push(Convergence {
            change,
            took,
            moved,
        });
    };

    let name = |k: usize| lab.balancers[k].name.clone();
    let (rn, dn) = (name(removed), name(drained));
    step(
        lab,
        format!("{rn} removed (its BIRD killed: BGP session down)"),
        &mut |lab| lab.balancers[removed].bird.kill(),
        &without(removed),
    );
    step(
        lab,
        format!("{rn} added back (its BIRD started again)"),
        &mut |lab| lab.balancers[removed].bird.restart(),
        &all,
    );
    step(
        lab,
        format!("{dn} drained (lbctl announce drain)"),
        &mut |lab| {
            lab.balancers[drained].lbd.lbctl(&["announce", "drain"]);
        },
        &without(drained),
    );
    step(
        lab,
        format!("{dn} undrained (lbctl announce undrain; hold-down)"),
        &mut |lab| {
            lab.balancers[drained].lbd.lbctl(&["announce", "undrain"]);
        },
        &all,
    );

    let mut messages = 0;
    let mut broken = Vec::new();
    for s in sessions.drain(..) {
        let report = s.finish();
        messages += report.messages();
        broken.extend(report.broken().iter().map(|b| {
            format!(
                "{} -> {} (backend {}): {}",
                b.local,
                b.vip,
                b.backend,
                b.broken.as_deref().unwrap_or("")
            )
        }));
    }
    ChurnReport {
        connections: flows.len(),
        balancers: used.len(),
        messages,
        broken,
        changes,
    }
}

/// How many connections each balancer carries.
fn print_spread(lab: &EcmpLab, routes: &BTreeMap<SocketAddr, usize>) {
    let line: Vec<String> = lab
        .balancers
        .iter()
        .enumerate()
        .map(|(k, b)| {
            let n = routes.values().filter(|r| **r == k).count();
            format!("{} {n}", b.name)
        })
        .collect();
    println!("  through the balancers: {}", line.join(", "));
}
