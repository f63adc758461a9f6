//! Renders one load-test run ([`Results`]) for people: a Markdown report with one table per phase, a PNG chart of
//! the headline figures, and the raw figures as JSON beside them so a report can be re-rendered or compared later.
//!
//! Every figure goes through one formatter that prints `n/a` for a missing or non-finite value, and every ratio
//! through one guard, so a phase that measured nothing (a zero baseline) shows `n/a` rather than `NaN` or `inf`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::results::*;

const NA: &str = "n/a";

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
    chart(r, &png)?;

    Ok(vec![md, json, png])
}

/// The PNG chart alone (used by write).
pub fn chart(r: &Results, path: &Path) -> Result<()> {
    let drawn = register_font().and_then(|()| draw_chart(r, path));
    drawn.with_context(|| format!("drawing the chart {}", path.display()))
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
         generator: the cost of balancing above the bare minimum.\n\n",
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
fn pps_runs(pps: &PpsPhase) -> [(&PpsRun, &PpsRun, (&'static str, &'static str, &'static str)); 5] {
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
            &pps.floor_trafgen_syn,
            &pps.floor_trafgen_syn,
            ("trafgen", "tcp-syn", "lb_floor"),
        ),
        (
            &pps.floor_live_syn,
            &pps.floor_live_syn,
            ("live-frames", "tcp-syn", "lb_floor"),
        ),
    ]
}

fn or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.trim().is_empty() { fallback } else { s }
}

/// Picks one mode's run out of a balancer's figures.
type RunOf = fn(&WrkBalancer) -> &WrkRun;

fn wrk_section(out: &mut String, wrk: &WrkPhase) {
    out.push_str("## Requests (wrk)\n\n");
    let balancers = [
        ("xdp", &wrk.xdp),
        ("haproxy", &wrk.haproxy),
        ("nftables", &wrk.nftables),
    ];
    for (name, b) in &balancers {
        let _ = writeln!(out, "- **{name}**: {}", text(&b.what));
    }
    out.push_str(
        "\nBalancer CPU is the balancer's own time where it can be attributed; lab CPU is the whole machine's busy \
         time (client, balancer, backends), comparable across balancers.\n\n",
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
            "req/s vs xdp",
        ],
        2,
        &rows,
    );
}

fn iperf_section(out: &mut String, iperf: &IperfPhase) {
    out.push_str("## Throughput (iperf3)\n\n");
    out.push_str(
        "TCP through the balancer, and the same client straight to a backend (\"direct\").\n\n",
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
                times(ratio(run.gbit_per_s, direct.gbit_per_s)),
            ]
        })
        .collect();
    table(
        out,
        &["run", "flows", "Gbit/s", "retransmits", "vs direct"],
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
fn num(v: f64) -> String {
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
fn ratio(value: f64, baseline: f64) -> Option<f64> {
    if baseline == 0.0 || !baseline.is_finite() || !value.is_finite() {
        return None;
    }
    Some(value / baseline).filter(|r| r.is_finite())
}

fn times(r: Option<f64>) -> String {
    r.map_or_else(|| NA.into(), |r| format!("{}x", fixed(r, 2)))
}

fn text(s: &str) -> String {
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

// ---------------------------------------------------------------------------------------------------------------
// Chart

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1200, 960);
/// Room right of each panel for its legend, so the legend never covers a bar.
const LEGEND_WIDTH: u32 = 200;
/// One category's width on a chart's x axis.
const X_UNIT: i32 = 1000;

const BLUE_BAR: RGBColor = RGBColor(31, 119, 180);
const ORANGE_BAR: RGBColor = RGBColor(255, 127, 14);
/// Baselines (lb_floor, no balancer) are grey so the eye goes to the balancer's bars.
const GREY_BAR: RGBColor = RGBColor(150, 150, 150);
const INK: RGBColor = RGBColor(40, 40, 40);

/// plotters is built without its `ttf` feature (that needs system font libraries at build time), so it has no
/// font until one is registered; the registry is process-wide and wants `'static` bytes, hence once and leaked.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    let registered = REGISTERED.get_or_init(|| {
        let bytes = std::fs::read(FONT_PATH).map_err(|e| {
            format!(
                "reading the chart font {FONT_PATH}: {e}; install the Debian package fonts-dejavu-core \
                 (`cargo xtask setup` does)"
            )
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT_PATH} is not a font plotters can read; reinstall fonts-dejavu-core"))
    });
    registered.clone().map_err(|e| anyhow!(e))
}

/// One bar chart: categories along x, each split into `slots` side-by-side bars; a group is one legend entry.
struct Bars {
    caption: String,
    y_desc: &'static str,
    /// Two lines under each category: what it is, then the detail that tells similar ones apart.
    categories: Vec<(String, String)>,
    slots: usize,
    groups: Vec<BarGroup>,
    /// Value printed above each bar.
    label: fn(f64) -> String,
}

struct BarGroup {
    legend: String,
    color: RGBColor,
    slot: usize,
    /// (category index, value)
    bars: Vec<(usize, f64)>,
}

fn draw_chart(r: &Results, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    draw_bars(&panels[0], &wrk_bars(r))?;
    draw_bars(&panels[1], &pps_bars(r))?;
    draw_bars(&panels[2], &iperf_bars(r))?;
    // Without an explicit present the file is written on drop, where an I/O error would be lost.
    root.present()?;
    Ok(())
}

fn wrk_bars(r: &Results) -> Bars {
    let balancers = [
        ("xdp", &r.wrk.xdp),
        ("haproxy", &r.wrk.haproxy),
        ("nftables", &r.wrk.nftables),
    ];
    let group = |legend: &str, color, slot, run_of: RunOf| BarGroup {
        legend: legend.into(),
        color,
        slot,
        bars: balancers
            .iter()
            .enumerate()
            .map(|(i, (_, b))| (i, run_of(b).req_per_s))
            .collect(),
    };
    Bars {
        caption: "HTTP requests through each balancer (wrk)".into(),
        y_desc: "requests/s",
        categories: balancers
            .iter()
            .map(|(name, b)| (name.to_string(), short(&text(&b.what), 44)))
            .collect(),
        slots: 2,
        groups: vec![
            group("keep-alive", BLUE_BAR, 0, |b| &b.keepalive),
            group("new conn per request", ORANGE_BAR, 1, |b| &b.new_conn),
        ],
        label: si,
    }
}

fn pps_bars(r: &Results) -> Bars {
    let runs = pps_runs(&r.pps);
    // Coloured by program so lb_xdp reads against its floor; the program's name is also under each bar.
    let group = |legend: &str, color, program| BarGroup {
        legend: legend.into(),
        color,
        slot: 0,
        bars: runs
            .iter()
            .enumerate()
            .filter(|(_, (_, _, names))| names.2 == program)
            .map(|(i, (run, _, _))| (i, run.forwarded_pps / 1e6))
            .collect(),
    };
    Bars {
        caption: "Packets forwarded to the sinks, per run".into(),
        y_desc: "forwarded Mpps",
        categories: runs
            .iter()
            .map(|(run, _, names)| {
                let what = format!(
                    "{} {}",
                    or(&run.generator, names.0),
                    or(&run.traffic, names.1)
                );
                (what, or(&run.program, names.2).to_string())
            })
            .collect(),
        slots: 1,
        groups: vec![
            group("lb_xdp", BLUE_BAR, "lb_xdp"),
            group("lb_floor (bare XDP_TX)", GREY_BAR, "lb_floor"),
        ],
        label: num,
    }
}

fn iperf_bars(r: &Results) -> Bars {
    let i = &r.iperf3;
    // Grouped by flow count so each xdp bar stands next to the direct run it is judged against.
    let pairs = [
        ("one flow", &i.xdp_one_flow, &i.direct_one_flow),
        ("many flows", &i.xdp_many_flows, &i.direct_many_flows),
    ];
    let flows = |n: u32| {
        if n == 1 {
            "1 flow".to_string()
        } else {
            format!("{n} flows")
        }
    };
    let group =
        |legend: &str, color, slot, run_of: fn(&(&str, &IperfRun, &IperfRun)) -> f64| BarGroup {
            legend: legend.into(),
            color,
            slot,
            bars: pairs
                .iter()
                .enumerate()
                .map(|(k, pair)| (k, run_of(pair)))
                .collect(),
        };
    Bars {
        caption: "TCP throughput (iperf3)".into(),
        y_desc: "Gbit/s",
        categories: pairs
            .iter()
            .map(|(name, xdp, direct)| {
                let what = match (xdp.flows, direct.flows) {
                    (x, d) if x == d && x > 0 => flows(x),
                    (0, 0) => name.to_string(),
                    (x, d) => format!("xdp {}, direct {}", flows(x), flows(d)),
                };
                (
                    what,
                    format!(
                        "xdp vs direct: {}",
                        times(ratio(xdp.gbit_per_s, direct.gbit_per_s))
                    ),
                )
            })
            .collect(),
        slots: 2,
        groups: vec![
            group("through xdp", BLUE_BAR, 0, |p| p.1.gbit_per_s),
            group("direct (no balancer)", GREY_BAR, 1, |p| p.2.gbit_per_s),
        ],
        label: num,
    }
}

fn draw_bars(area: &DrawingArea<BitMapBackend<'_>, Shift>, spec: &Bars) -> Result<()> {
    let (plot, legend) = area.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let n = spec.categories.len().max(1);
    let top = spec
        .groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|&(_, v)| v))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    // Headroom for the value printed above the tallest bar; an all-zero run still gets a drawable axis.
    let y_max = if top > 0.0 { top * 1.18 } else { 1.0 };
    // x runs in thousandths of a category: plotters' f64 axis cannot take fixed key points (ticks at the centres).
    let centres: Vec<i32> = (0..n as i32).map(|i| i * X_UNIT + X_UNIT / 2).collect();

    let mut chart = ChartBuilder::on(&plot)
        .caption(&spec.caption, (FONT, 22).into_font().color(&INK))
        .margin(8)
        .margin_right(16)
        .x_label_area_size(46)
        .y_label_area_size(66)
        .build_cartesian_2d((0..n as i32 * X_UNIT).with_key_points(centres), 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .y_labels(6)
        .y_desc(spec.y_desc)
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 14))
        // Category names are drawn below as two lines; the mesh only places the tick marks.
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|v| tick(*v))
        .draw()?;

    let slots = spec.slots.max(1) as i32;
    let inner = X_UNIT * 72 / 100;
    let width = inner / slots;
    let gap = X_UNIT / 100;
    let value_style = TextStyle::from((FONT, 14).into_font())
        .color(&INK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for group in &spec.groups {
        let x0 = |i: usize| i as i32 * X_UNIT + (X_UNIT - inner) / 2 + group.slot as i32 * width;
        chart.draw_series(
            group
                .bars
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|&(i, v)| {
                    Rectangle::new(
                        [(x0(i) + gap, 0.0), (x0(i) + width - gap, v.max(0.0))],
                        group.color.filled(),
                    )
                }),
        )?;
        chart.draw_series(group.bars.iter().map(|&(i, v)| {
            let label = if v.is_finite() {
                (spec.label)(v)
            } else {
                NA.to_string()
            };
            let at = (
                x0(i) + width / 2,
                if v.is_finite() { v.max(0.0) } else { 0.0 },
            );
            EmptyElement::at(at) + Text::new(label, (0, -3), value_style.clone())
        }))?;
    }

    let base = plot.get_base_pixel();
    let first = TextStyle::from((FONT, 15).into_font())
        .color(&INK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    let second = TextStyle::from((FONT, 13).into_font())
        .color(&RGBColor(90, 90, 90))
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, (line1, line2)) in spec.categories.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as i32 * X_UNIT + X_UNIT / 2, 0.0));
        let (x, y) = (x - base.0, y - base.1);
        plot.draw_text(line1, &first, (x, y + 9))?;
        plot.draw_text(line2, &second, (x, y + 28))?;
    }

    let entry = TextStyle::from((FONT, 15).into_font())
        .color(&INK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (k, group) in spec.groups.iter().enumerate() {
        let y = 60 + 28 * k as i32;
        legend.draw(&Rectangle::new(
            [(4, y - 8), (20, y + 8)],
            group.color.filled(),
        ))?;
        legend.draw_text(&group.legend, &entry, (28, y))?;
    }
    Ok(())
}

/// Axis ticks: short, with k/M so a req/s axis does not need six digits.
fn tick(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = num(scaled);
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{suffix}")
}

/// A bar's value with k/M, three significant figures.
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", num(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", num(v / 1e3))
    } else {
        num(v)
    }
}

/// Keeps a label inside its category's width.
fn short(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
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
        }
    }

    fn iperf(flows: u32, gbit: f64, retransmits: u64) -> IperfRun {
        IperfRun {
            flows,
            seconds: 10.0,
            gbit_per_s: gbit,
            retransmits,
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
            "req/s vs xdp",
            "flows",
            "Gbit/s",
            "retransmits",
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
            "| keep-alive | haproxy | 64 | 61200 | 1.00 | 4.40 | 0 | 11.8 | 55.0 | 0.62x |"
        );
        assert!(
            row(&md, "| new conn per request | nftables |").contains("| 1 | n/a | 150 | 0.85x |")
        );

        assert_eq!(
            row(&md, "| xdp, one flow |"),
            "| xdp, one flow | 1 | 18.4 | 12 | 0.80x |"
        );
        assert_eq!(
            row(&md, "| xdp, many flows |"),
            "| xdp, many flows | 8 | 31.0 | 240 | 0.80x |"
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
        assert_eq!(tick(20_000.0), "20k");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.0), "0");
        assert_eq!(si(98_500.0), "98.5k");
        assert_eq!(cell("a|b"), "a\\|b");
        assert_eq!(cell(" "), "n/a");
        assert_eq!(short("abcdef", 4), "abc…");
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
        chart(&Results::default(), &path).expect("chart");
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
