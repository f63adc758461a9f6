//! The load test's PNG chart: three stacked bar panels (wrk requests per balancer, packets forwarded per pps run,
//! iperf3 throughput through the balancer and direct), drawn with plotters on a bitmap.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::{NA, RunOf, num, or, pps_runs, ratio, text, times};
use super::results::*;

/// The PNG chart alone (report::write puts it beside the Markdown).
pub fn chart(r: &Results, path: &Path) -> Result<()> {
    let drawn = register_font().and_then(|()| draw_chart(r, path));
    drawn.with_context(|| format!("drawing the chart {}", path.display()))
}

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
        ("ecmp", &r.wrk.ecmp),
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

    #[test]
    fn axis_and_bar_labels_are_compact() {
        assert_eq!(tick(20_000.0), "20k");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(0.0), "0");
        assert_eq!(si(98_500.0), "98.5k");
        assert_eq!(short("abcdef", 4), "abc…");
    }
}
