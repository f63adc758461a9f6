//! Renders one load-test run ([`Results`]) for people: a Markdown report with one table per phase, the PNG chart of
//! the headline figures ([`super::chart`]), and the raw figures as JSON beside them so a report can be re-rendered or
//! compared later.
//!
//! Every figure goes through one formatter that prints `n/a` for a missing or non-finite value, and every ratio
//! through one guard, so a phase that measured nothing (a zero baseline) shows `n/a` rather than `NaN` or `inf`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::results::*;

pub(super) const NA: &str = "n/a";

/// Markdown: one section per phase, each a table; then the notes. Returned as a String.
pub fn markdown(r: &Results) -> String {
    let mut out = String::from("# Load test\n\n");
    header(&mut out, r);
    pps_section(&mut out, &r.pps);
    wrk_section(&mut out, &r.wrk);
    iperf_section(&mut out, &r.iperf3);
    if !r.notes.is_empty() {
        out.push_str("## Notes\n\n");
        for note in &r.notes {
            // A multi-line note would otherwise end the list item at its first line break.
            let _ = writeln!(out, "- {}", note.trim().replace('\n', "\n  "));
        }
        out.push('\n');
    }
    out
}

/// Writes `<dir>/loadtest.md`, `<dir>/loadtest.json` (serde_json pretty of r) and `<dir>/loadtest.png`; creates dir.
/// Returns the paths written. Errors (anyhow) name the file and the cause.
pub fn write(r: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let md = dir.join("loadtest.md");
    std::fs::write(&md, markdown(r)).with_context(|| format!("writing {}", md.display()))?;

    let json = dir.join("loadtest.json");
    let mut text = serde_json::to_string_pretty(r)
        .with_context(|| format!("serializing {}", json.display()))?;
    text.push('\n');
    std::fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;

    let png = dir.join("loadtest.png");
    super::chart::chart(r, &png)?;

    Ok(vec![md, json, png])
}

// ---------------------------------------------------------------------------------------------------------------
// Markdown

fn header(out: &mut String, r: &Results) {
    let m = &r.machine;
    let run = if m.quick {
        "quick run (`--quick`: short runs, noisier figures)"
    } else {
        "full run"
    };
    let p = &r.phase_seconds;
    let _ = writeln!(
        out,
        "**Machine:** {} CPUs, kernel `{}`, {run}, {} s per measured run. \
         **Phase wall-clock:** pps {} s, wrk {} s, iperf3 {} s (set-up included).\n",
        m.cpus,
        text(&m.kernel),
        num(m.run_seconds),
        num(p.pps),
        num(p.wrk),
        num(p.iperf3),
    );
}

fn pps_section(out: &mut String, pps: &PpsPhase) {
    out.push_str("## Packet rate\n\n");
    out.push_str(
        "Small packets at the VIP through the program on the balancer's interface, into sinks on the hosts. \
         \"ns/pkt vs floor\" is the program's ns/packet over lb_floor's (parse, swap MACs, XDP_TX) with the same \
         generator and address family (tcp6-syn: the IPv6 VIP): the cost of balancing above the bare minimum.\n\n",
    );
    let rows: Vec<Vec<String>> = pps_runs(pps)
        .iter()
        .map(|(run, floor, names)| {
            vec![
                cell(or(&run.generator, names.0)),
                cell(or(&run.traffic, names.1)),
                cell(or(&run.program, names.2)),
                num(run.offered_pps / 1e6),
                num(run.balancer_pps / 1e6),
                num(run.forwarded_pps / 1e6),
                fixed(run.loss * 100.0, 2),
                num(run.prog_ns_per_packet),
                opt(run.generator_ns_per_packet),
                times(ratio(run.prog_ns_per_packet, floor.prog_ns_per_packet)),
            ]
        })
        .collect();
    table(
        out,
        &[
            "generator",
            "traffic",
            "program",
            "offered Mpps",
            "at balancer Mpps",
            "forwarded Mpps",
            "loss %",
            "program ns/pkt",
            "generator ns/pkt",
            "ns/pkt vs floor",
        ],
        3,
        &rows,
    );
}

/// Each packet-rate run with the floor it is compared to and the (generator, traffic, program) its field stands
/// for. The floor is chosen by field, not by the strings, so a mislabelled run cannot pick the wrong one; the names
/// stand in when a run left its strings empty (it did not run), so the row still says which run it is.
pub(super) fn pps_runs(
    pps: &PpsPhase,
) -> [(&PpsRun, &PpsRun, (&'static str, &'static str, &'static str)); 7] {
    [
        (
            &pps.trafgen_syn,
            &pps.floor_trafgen_syn,
            ("trafgen", "tcp-syn", "lb_xdp"),
        ),
        (
            &pps.trafgen_udp,
            &pps.floor_trafgen_syn,
            ("trafgen", "udp", "lb_xdp"),
        ),
        (
            &pps.live_syn,
            &pps.floor_live_syn,
            ("live-frames", "tcp-syn", "lb_xdp"),
        ),
        (
            &pps.trafgen_syn_v6,
            &pps.floor_trafgen_syn_v6,
            ("trafgen", "tcp6-syn", "lb_xdp"),
        ),
        (
            &pps.floor_trafgen_syn,
            &pps.floor_trafgen_syn,
            ("trafgen", "tcp-syn", "lb_floor"),
        ),
        (
            &pps.floor_live_syn,
            &pps.floor_live_syn,
            ("live-frames", "tcp-syn", "lb_floor"),
        ),
        (
            &pps.floor_trafgen_syn_v6,
            &pps.floor_trafgen_syn_v6,
            ("trafgen", "tcp6-syn", "lb_floor"),
        ),
    ]
}

pub(super) fn or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.trim().is_empty() { fallback } else { s }
}

/// Picks one mode's run out of a balancer's figures.
pub(super) type RunOf = fn(&WrkBalancer) -> &WrkRun;

fn wrk_section(out: &mut String, wrk: &WrkPhase) {
    out.push_str("## Requests (wrk)\n\n");
    let balancers = [
        ("xdp", &wrk.xdp),
        ("haproxy", &wrk.haproxy),
        ("nftables", &wrk.nftables),
        ("ecmp", &wrk.ecmp),
    ];
    for (name, b) in &balancers {
        let _ = writeln!(out, "- **{name}**: {}", text(&b.what));
    }
    out.push_str("\n**Keep-alive, the headline:** ");
    let headline: Vec<String> = balancers[..3]
        .iter()
        .map(|(name, b)| {
            let k = &b.keepalive;
            format!(
                "{name} {} req/s at {} µs of balancer CPU per request (p99 {} ms)",
                num(k.req_per_s),
                opt(k.balancer_cpu_us_per_req),
                num(k.p99_ms)
            )
        })
        .collect();
    let _ = writeln!(out, "{}.", headline.join("; "));
    out.push_str(
        "\nBalancer CPU is the balancer's own time where it can be attributed; lab CPU is the whole machine's busy \
         time (client, balancer, backends), comparable across balancers. Busiest backend: its server's CPU time \
         over the run's wall time (one thread each: near 100% the backends limited the run).\n\n",
    );
    let modes: [(&str, RunOf); 2] = [
        ("keep-alive", |b| &b.keepalive),
        ("new conn per request", |b| &b.new_conn),
    ];
    let mut rows = Vec::new();
    for (mode, run_of) in modes {
        let baseline = run_of(&wrk.xdp).req_per_s;
        for (name, b) in &balancers {
            let run = run_of(b);
            rows.push(vec![
                mode.to_string(),
                name.to_string(),
                run.connections.to_string(),
                num(run.req_per_s),
                num(run.p50_ms),
                num(run.p99_ms),
                run.errors.to_string(),
                opt(run.balancer_cpu_us_per_req),
                num(run.lab_cpu_us_per_req),
                run.busiest_backend_cpu
                    .map_or_else(|| NA.into(), |c| fixed(c * 100.0, 0)),
                times(ratio(run.req_per_s, baseline)),
            ]);
        }
    }
    table(
        out,
        &[
            "mode",
            "balancer",
            "connections",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "balancer CPU µs/req",
            "lab CPU µs/req",
            "busiest backend CPU %",
            "req/s vs xdp",
        ],
        2,
        &rows,
    );
}

fn iperf_section(out: &mut String, iperf: &IperfPhase) {
    out.push_str("## Throughput (iperf3)\n\n");
    out.push_str(
        "TCP through the balancer, and the same client straight to a backend (\"direct\"). Ring drops: frames the \
         lab's switch could not hand to a host because its veth receive ring was full (all ports; in brackets the \
         balancer's port, in front of lb_xdp).\n\n",
    );
    let runs = [
        ("xdp, one flow", &iperf.xdp_one_flow, &iperf.direct_one_flow),
        (
            "xdp, many flows",
            &iperf.xdp_many_flows,
            &iperf.direct_many_flows,
        ),
        (
            "direct, one flow",
            &iperf.direct_one_flow,
            &iperf.direct_one_flow,
        ),
        (
            "direct, many flows",
            &iperf.direct_many_flows,
            &iperf.direct_many_flows,
        ),
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|(name, run, direct)| {
            vec![
                name.to_string(),
                run.flows.to_string(),
                num(run.gbit_per_s),
                run.retransmits.to_string(),
                format!("{} ({})", run.ring_drops, run.balancer_ring_drops),
                times(ratio(run.gbit_per_s, direct.gbit_per_s)),
            ]
        })
        .collect();
    table(
        out,
        &[
            "run",
            "flows",
            "Gbit/s",
            "retransmits",
            "ring drops (balancer)",
            "vs direct",
        ],
        1,
        &rows,
    );
}

/// The first `text_cols` columns are left-aligned, the rest are figures and right-aligned so digits line up.
fn table(out: &mut String, header: &[&str], text_cols: usize, rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let rule: Vec<&str> = (0..header.len())
        .map(|i| if i < text_cols { "---" } else { "---:" })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
}

/// Three significant figures, no exponent: the runs are noisier than that, and readers compare magnitudes.
pub(super) fn num(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    fixed(v, decimals)
}

fn fixed(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return NA.into();
    }
    let s = format!("{v:.decimals$}");
    // A tiny negative figure (loss when a counter raced) rounds to "-0.00", which reads as a sign error.
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| NA.into(), num)
}

/// The one place ratios are taken: a zero or non-finite baseline means "not comparable", not infinity.
pub(super) fn ratio(value: f64, baseline: f64) -> Option<f64> {
    if baseline == 0.0 || !baseline.is_finite() || !value.is_finite() {
        return None;
    }
    Some(value / baseline).filter(|r| r.is_finite())
}

pub(super) fn times(r: Option<f64>) -> String {
    r.map_or_else(|| NA.into(), |r| format!("{}x", fixed(r, 2)))
}

pub(super) fn text(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        NA.into()
    } else {
        s.replace('\n', " ")
    }
}

/// A table cell: a `|` inside would split the cell.
fn cell(s: &str) -> String {
    text(s).replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pps(
        generator: &str,
        traffic: &str,
        program: &str,
        offered: f64,
        fwd: f64,
        ns: f64,
    ) -> PpsRun {
        PpsRun {
            generator: generator.into(),
            traffic: traffic.into(),
            program: program.into(),
            seconds: 10.0,
            offered_pps: offered,
            balancer_pps: offered * 0.99,
            forwarded_pps: fwd,
            loss: 1.0 - fwd / offered,
            prog_ns_per_packet: ns,
            generator_ns_per_packet: (generator == "live-frames").then_some(95.5),
        }
    }

    fn wrk(req_per_s: f64, p50: f64, p99: f64, errors: u64, cpu: Option<f64>, lab: f64) -> WrkRun {
        let busiest_backend_cpu = (req_per_s > 50_000.0).then_some(0.62);
        WrkRun {
            connections: 64,
            seconds: 10.0,
            requests: (req_per_s * 10.0) as u64,
            req_per_s,
            p50_ms: p50,
            p99_ms: p99,
            errors,
            balancer_cpu_us_per_req: cpu,
            lab_cpu_us_per_req: lab,
            busiest_backend_cpu,
        }
    }

    fn iperf(flows: u32, gbit: f64, retransmits: u64) -> IperfRun {
        IperfRun {
            flows,
            seconds: 10.0,
            gbit_per_s: gbit,
            retransmits,
            ring_drops: retransmits / 2,
            balancer_ring_drops: retransmits / 4,
        }
    }

    /// Realistic figures, with the live-frames floor at 0 ns so its ratios must come out `n/a`.
    fn sample() -> Results {
        Results {
            pps: PpsPhase {
                trafgen_syn: pps("trafgen", "tcp-syn", "lb_xdp", 1_450_000.0, 1_392_000.0, 61.0),
                trafgen_udp: pps("trafgen", "udp", "lb_xdp", 1_510_000.0, 1_480_000.0, 48.5),
                live_syn: pps("live-frames", "tcp-syn", "lb_xdp", 4_200_000.0, 2_150_000.0, 66.2),
                floor_trafgen_syn: pps("trafgen", "tcp-syn", "lb_floor", 1_460_000.0, 1_455_000.0, 40.0),
                floor_live_syn: pps("live-frames", "tcp-syn", "lb_floor", 4_300_000.0, 3_900_000.0, 0.0),
                trafgen_syn_v6: pps("trafgen", "tcp6-syn", "lb_xdp", 1_300_000.0, 1_200_000.0, 72.0),
                floor_trafgen_syn_v6: pps("trafgen", "tcp6-syn", "lb_floor", 1_400_000.0, 1_390_000.0, 45.0),
            },
            wrk: WrkPhase {
                xdp: WrkBalancer {
                    what: "lbd + lb_xdp (IPIP, DSR)".into(),
                    keepalive: wrk(98_500.0, 0.61, 2.9, 0, Some(0.21), 38.0),
                    new_conn: wrk(21_300.0, 2.8, 9.7, 3, Some(0.4), 142.0),
                },
                haproxy: WrkBalancer {
                    what: "HAProxy 2.6, TCP mode".into(),
                    keepalive: wrk(61_200.0, 1.0, 4.4, 0, Some(11.8), 55.0),
                    new_conn: wrk(9_800.0, 6.1, 21.0, 0, Some(38.0), 260.0),
                },
                nftables: WrkBalancer {
                    what: "nftables DNAT, numgen".into(),
                    keepalive: wrk(90_100.0, 0.66, 3.2, 0, None, 40.0),
                    new_conn: wrk(18_000.0, 3.3, 12.5, 1, None, 150.0),
                },
                ecmp: WrkBalancer {
                    what: "3 x lbd + lb_xdp behind a BGP ECMP router".into(),
                    keepalive: wrk(80_000.0, 0.8, 3.5, 0, Some(0.2), 45.0),
                    new_conn: wrk(17_000.0, 3.4, 11.0, 0, Some(0.4), 160.0),
                },
            },
            iperf3: IperfPhase {
                xdp_one_flow: iperf(1, 18.4, 12),
                xdp_many_flows: iperf(8, 31.0, 240),
                direct_one_flow: iperf(1, 23.0, 3),
                direct_many_flows: iperf(8, 38.75, 120),
            },
            phase_seconds: PhaseSeconds { pps: 74.2, wrk: 131.0, iperf3: 48.9 },
            machine: Machine { cpus: 2, kernel: "6.12.12-amd64".into(), quick: false, run_seconds: 10.0 },
            notes: vec![
                "trafgen is bound to one CPU, so its offered rate is a ceiling of the generator, not the balancer."
                    .into(),
                "nftables runs in softirq context: no balancer CPU figure.".into(),
            ],
        }
    }

    fn no_nan_or_inf(md: &str) {
        assert!(!md.contains("NaN"), "NaN in:\n{md}");
        let inf = md
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| w.eq_ignore_ascii_case("inf"));
        assert!(!inf, "inf in:\n{md}");
    }

    fn row<'a>(md: &'a str, starts: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no row starting {starts:?} in:\n{md}"))
    }

    #[test]
    fn markdown_has_every_table_row_and_column() {
        let md = markdown(&sample());
        for heading in [
            "# Load test",
            "## Packet rate",
            "## Requests (wrk)",
            "## Throughput (iperf3)",
            "## Notes",
        ] {
            assert!(md.contains(heading), "missing {heading:?} in:\n{md}");
        }
        for column in [
            "generator",
            "traffic",
            "program",
            "offered Mpps",
            "at balancer Mpps",
            "forwarded Mpps",
            "loss %",
            "program ns/pkt",
            "ns/pkt vs floor",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "balancer CPU µs/req",
            "lab CPU µs/req",
            "busiest backend CPU %",
            "req/s vs xdp",
            "flows",
            "Gbit/s",
            "retransmits",
            "ring drops (balancer)",
            "vs direct",
        ] {
            assert!(md.contains(column), "missing column {column:?} in:\n{md}");
        }
        assert!(md.contains("2 CPUs") && md.contains("6.12.12-amd64") && md.contains("full run"));
        assert!(md.contains("pps 74.2 s, wrk 131 s, iperf3 48.9 s"));
        for what in [
            "lbd + lb_xdp (IPIP, DSR)",
            "HAProxy 2.6, TCP mode",
            "nftables DNAT, numgen",
        ] {
            assert_eq!(
                md.matches(what).count(),
                1,
                "{what:?} should appear once in:\n{md}"
            );
        }
        assert!(md.contains("- nftables runs in softirq context"));

        // lb_xdp 61 ns over the trafgen floor's 40 ns; UDP uses the same (trafgen) floor.
        let syn = row(&md, "| trafgen | tcp-syn | lb_xdp |");
        assert!(
            syn.contains("| 1.45 | 1.44 | 1.39 | 4.00 | 61.0 | n/a | 1.52x |"),
            "{syn}"
        );
        assert!(row(&md, "| trafgen | udp | lb_xdp |").ends_with("| 1.21x |"));
        assert!(row(&md, "| trafgen | tcp-syn | lb_floor |").ends_with("| 1.00x |"));
        // IPv6 against the IPv6 floor: 72 / 45.
        assert!(row(&md, "| trafgen | tcp6-syn | lb_xdp |").ends_with("| 1.60x |"));
        assert!(row(&md, "| trafgen | tcp6-syn | lb_floor |").ends_with("| 1.00x |"));
        // The live-frames floor measured 0 ns: no ratio, for the floor row too.
        let live = row(&md, "| live-frames | tcp-syn | lb_xdp |");
        assert!(live.contains("| 95.5 | n/a |"), "{live}");
        assert!(row(&md, "| live-frames | tcp-syn | lb_floor |").ends_with("| n/a |"));

        for mode in ["keep-alive", "new conn per request"] {
            for balancer in ["xdp", "haproxy", "nftables"] {
                row(&md, &format!("| {mode} | {balancer} |"));
            }
            assert!(row(&md, &format!("| {mode} | xdp |")).ends_with("| 1.00x |"));
        }
        let ha = row(&md, "| keep-alive | haproxy |");
        assert_eq!(
            ha,
            "| keep-alive | haproxy | 64 | 61200 | 1.00 | 4.40 | 0 | 11.8 | 55.0 | 62 | 0.62x |"
        );
        assert!(
            md.contains(
                "**Keep-alive, the headline:** xdp 98500 req/s at 0.210 µs of balancer CPU per request (p99 2.90 ms); \
                 haproxy 61200 req/s at 11.8 µs of balancer CPU per request (p99 4.40 ms); nftables 90100 req/s at \
                 n/a µs of balancer CPU per request (p99 3.20 ms)."
            ),
            "{md}"
        );
        assert!(
            row(&md, "| new conn per request | nftables |")
                .contains("| 1 | n/a | 150 | n/a | 0.85x |")
        );

        assert_eq!(
            row(&md, "| xdp, one flow |"),
            "| xdp, one flow | 1 | 18.4 | 12 | 6 (3) | 0.80x |"
        );
        assert_eq!(
            row(&md, "| xdp, many flows |"),
            "| xdp, many flows | 8 | 31.0 | 240 | 120 (60) | 0.80x |"
        );
        row(&md, "| direct, one flow | 1 |");
        row(&md, "| direct, many flows | 8 |");
        no_nan_or_inf(&md);
    }

    #[test]
    fn zero_and_non_finite_figures_give_na() {
        let mut r = Results::default();
        r.pps.trafgen_syn.prog_ns_per_packet = f64::NAN;
        r.wrk.haproxy.keepalive.req_per_s = f64::INFINITY;
        r.pps.live_syn.loss = -0.00001;
        let md = markdown(&r);
        no_nan_or_inf(&md);
        assert!(!md.contains("-0.00"), "{md}");
        assert!(!md.contains("## Notes"));
        // A run that left its names empty is still named by the field it came from.
        assert!(row(&md, "| trafgen | udp | lb_xdp |").ends_with("| n/a |"));
        assert!(row(&md, "| live-frames | tcp-syn | lb_floor |").contains("| 0 |"));
        assert!(row(&md, "| keep-alive | haproxy |").contains("| n/a |"));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, -0.0), None);
        assert_eq!(ratio(f64::MAX, f64::MIN_POSITIVE), None);
        assert_eq!(times(ratio(3.0, 2.0)), "1.50x");
    }

    #[test]
    fn formatting_is_compact() {
        assert_eq!(num(1234.6), "1235");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.01234), "0.012");
        assert_eq!(num(f64::NEG_INFINITY), "n/a");
        assert_eq!(cell("a|b"), "a\\|b");
        assert_eq!(cell(" "), "n/a");
    }

    /// Removes the test's directory however the test ends.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            Self(
                std::env::temp_dir()
                    .join(format!("lb-report-{tag}-{}-{nanos}", std::process::id())),
            )
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            if std::fs::remove_dir_all(&self.0).is_err() {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn write_produces_markdown_json_and_png() {
        let tmp = TempDir::new("write");
        let dir = tmp.0.join("nested");
        let r = sample();
        let paths = write(&r, &dir).expect("write");
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["loadtest.md", "loadtest.json", "loadtest.png"]);
        assert!(paths.iter().all(|p| p.parent() == Some(dir.as_path())));

        assert_eq!(std::fs::read_to_string(&paths[0]).unwrap(), markdown(&r));
        let back: Results =
            serde_json::from_str(&std::fs::read_to_string(&paths[1]).unwrap()).unwrap();
        assert_eq!(back.wrk.haproxy.new_conn.req_per_s, 9_800.0);
        assert_eq!(back.notes, r.notes);

        let png = std::fs::read(&paths[2]).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(png.len() > 10_000, "PNG only {} bytes", png.len());
    }

    #[test]
    fn chart_of_an_empty_run_still_draws() {
        let tmp = TempDir::new("empty");
        std::fs::create_dir_all(&tmp.0).unwrap();
        let path = tmp.0.join("empty.png");
        crate::perf::loadtest::chart::chart(&Results::default(), &path).expect("chart");
        assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
    }

    #[test]
    fn write_error_names_the_file() {
        let tmp = TempDir::new("err");
        std::fs::write(&tmp.0, b"a file where the directory should be").unwrap();
        let err = format!("{:#}", write(&sample(), &tmp.0).unwrap_err());
        assert!(err.contains(&tmp.0.display().to_string()), "{err}");
    }
}
