//! index.html: a static report of one run, with SVG charts drawn by plotters (latency and
//! throughput against concurrency, percentile distributions per step, cold starts), the
//! serverless/baseline ratios per step and the replica-seconds each target held. Reads only
//! the run's records; writes one file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use super::hist::{self, Latency};
use super::{Mode, Role, RunResult, StepRecord};

pub const REPORT_FILE: &str = "index.html";

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub(super) type Series = (String, Vec<(f64, f64)>);

/// One colour per target, the same in every chart: a series is named after its target
/// (`random-quote p99`, `random-quote-baseline corrected`) and takes that target's colour.
pub struct Palette {
    targets: Vec<String>,
}

impl Palette {
    /// A palette over these series prefixes, in this order.
    pub(super) fn over(targets: Vec<String>) -> Self {
        Self { targets }
    }

    fn of(run: &RunResult) -> Self {
        let mut targets: Vec<String> = Vec::new();
        for r in &run.records {
            if !targets.contains(&r.target) {
                targets.push(r.target.clone());
            }
        }
        for f in &run.functions {
            for name in [f.clone(), super::plan::baseline_name(f)] {
                if !targets.contains(&name) {
                    targets.push(name);
                }
            }
        }
        Self { targets }
    }

    /// The colour of the longest target name `series` starts with.
    fn color(&self, series: &str) -> RGBColor {
        let index = self
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                series == t.as_str()
                    || series
                        .strip_prefix(t.as_str())
                        .is_some_and(|rest| rest.starts_with(' '))
            })
            .max_by_key(|(_, t)| t.len())
            .map_or(0, |(i, _)| i);
        COLORS[index % COLORS.len()]
    }
}

/// Writes `<run>/index.html`.
pub fn write(run: &RunResult) -> std::io::Result<()> {
    std::fs::write(run.dir.join(REPORT_FILE), html(run))
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The whole page.
pub fn html(run: &RunResult) -> String {
    let mut page = String::new();
    let pal = Palette::of(run);
    let name = run
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cubeflash bench {name}</title>\n<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}td:first-child,th:first-child{{text-align:left}}.charts{{display:flex;flex-wrap:wrap;gap:1em}}.note{{color:#555}}</style></head><body>\n<h1>cubeflash bench {name}</h1>\n<p class=\"note\">Latencies in milliseconds. <b>closed</b>: N workers each send their next request when the last is answered. <b>open</b>: requests due at a fixed rate, latency counted from the due time (corrected for coordinated omission; the uncorrected figure counts from the actual send). <b>cold</b>: the function scaled to zero before each sample, timed from connect to the last byte; baseline and URL targets are not scaled (first request on a new connection). <b>warmup</b> samples are kept apart. Errors are counted, never mixed into latency. Files: summary.csv, one .hgrm per target and step, run.hlog (HdrHistogram interval log).</p>\n"
    );
    if !run.conclusion.is_empty() {
        page.push_str("<h2>In short</h2>\n<ul class=\"conclusion\">\n");
        for line in &run.conclusion {
            let _ = writeln!(page, "<li>{}</li>", esc(line.trim()));
        }
        page.push_str("</ul>\n");
    }
    timeline_section(&mut page, run, &pal);
    trace_section(&mut page, run, &pal);
    closed_section(&mut page, &run.records, &pal);
    ratio_section(&mut page, &run.records);
    cost_section(&mut page, run);
    open_section(&mut page, &run.records, &pal);
    cold_section(&mut page, &run.records, &pal);
    summary_table(&mut page, &run.records);
    page.push_str("</body></html>\n");
    page
}

fn closed_section(page: &mut String, records: &[StepRecord], pal: &Palette) {
    let closed: Vec<&StepRecord> = records
        .iter()
        .filter(|r| matches!(r.mode, Mode::Closed { .. }))
        .collect();
    if closed.is_empty() {
        return;
    }
    let by_target = group(&closed);
    let conc = |r: &StepRecord| match r.mode {
        Mode::Closed { concurrency } => f64::from(concurrency),
        _ => 0.0,
    };
    let mut lat: Vec<Series> = Vec::new();
    let mut rps: Vec<Series> = Vec::new();
    for (target, recs) in &by_target {
        let pts = |q: f64| -> Vec<(f64, f64)> {
            recs.iter()
                .filter(|r| !r.outcome.latency.is_empty())
                .map(|r| {
                    let v = r.outcome.latency.value_at_quantile(q) as f64 / hist::SCALE_TO_MS;
                    (conc(r), v)
                })
                .collect()
        };
        lat.push((format!("{target} p50"), pts(0.5)));
        lat.push((format!("{target} p99"), pts(0.99)));
        rps.push((
            target.clone(),
            recs.iter().map(|r| (conc(r), r.outcome.rps())).collect(),
        ));
    }
    let max_c = closed.iter().map(|r| conc(r)).fold(1.0, f64::max);
    page.push_str("<h2>Closed loop: latency and throughput against concurrency</h2>\n<div class=\"charts\">\n");
    page.push_str(&chart(
        "p50 and p99 latency",
        "concurrent requests",
        "ms",
        (1.0..max_c.max(2.0)).log_scale(),
        y_log_range(&lat).log_scale(),
        &lat,
        pal,
    ));
    let max_rps = rps
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    page.push_str(&chart(
        "throughput",
        "concurrent requests",
        "requests/s",
        (1.0..max_c.max(2.0)).log_scale(),
        0.0..max_rps * 1.1,
        &rps,
        pal,
    ));
    page.push_str("</div>\n<h3>Percentile distribution per step</h3>\n<div class=\"charts\">\n");
    let mut steps: BTreeMap<u32, Vec<&StepRecord>> = BTreeMap::new();
    for r in &closed {
        if let Mode::Closed { concurrency } = r.mode {
            steps.entry(concurrency).or_default().push(r);
        }
    }
    for (c, recs) in steps {
        let series: Vec<Series> = recs
            .iter()
            .map(|r| (r.target.clone(), distribution(&r.outcome.latency)))
            .collect();
        page.push_str(&distribution_chart(
            &format!("concurrency {c}"),
            &series,
            pal,
        ));
    }
    page.push_str("</div>\n");
}

fn open_section(page: &mut String, records: &[StepRecord], pal: &Palette) {
    let open: Vec<&StepRecord> = records
        .iter()
        .filter(|r| matches!(r.mode, Mode::Open { .. }))
        .collect();
    if open.is_empty() {
        return;
    }
    page.push_str("<h2>Open loop (fixed rate)</h2>\n<table><tr><th>target</th><th>requested/s</th><th>achieved/s</th><th>start lateness p50 ms</th><th>max start lateness ms</th><th>missed starts</th><th>p50 ms</th><th>p99 ms</th><th>p99 uncorrected ms</th><th>max ms</th><th>errors</th></tr>\n");
    for r in &open {
        let s = r.outcome.schedule.unwrap_or_default();
        let f = hist::figures(&r.outcome.latency);
        let u = r
            .outcome
            .uncorrected
            .as_ref()
            .map(hist::figures)
            .unwrap_or_default();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{:.0}</td><td>{:.1}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            esc(&r.target),
            s.requested_rate,
            s.achieved_rate,
            s.late_p50.as_secs_f64() * 1000.0,
            s.max_late.as_secs_f64() * 1000.0,
            s.missed,
            f.p50,
            f.p99,
            u.p99,
            f.max,
            r.outcome.errors.total()
        );
    }
    page.push_str("</table>\n<p class=\"note\">Start lateness is how long after its due time a request went out: while the server keeps up, it is the generator's own timer resolution (about 1 ms), and it is part of the corrected latencies.</p>\n<div class=\"charts\">\n");
    for r in &open {
        let mut series = vec![(
            format!("{} corrected", r.target),
            distribution(&r.outcome.latency),
        )];
        if let Some(u) = &r.outcome.uncorrected {
            series.push((format!("{} uncorrected", r.target), distribution(u)));
        }
        let title = match r.mode {
            Mode::Open { rate } => {
                format!("{} at {} req/s", r.target, super::output::fmt_num(rate))
            }
            _ => r.target.clone(),
        };
        page.push_str(&distribution_chart(&title, &series, pal));
    }
    page.push_str("</div>\n");
}

fn cold_section(page: &mut String, records: &[StepRecord], pal: &Palette) {
    let cold: Vec<&StepRecord> = records.iter().filter(|r| r.mode == Mode::Cold).collect();
    if cold.is_empty() {
        return;
    }
    page.push_str("<h2>Cold starts</h2>\n<table><tr><th>target</th><th>kind</th><th>samples</th><th>p50 ms</th><th>p90 ms</th><th>max ms</th><th>errors</th></tr>\n");
    for r in &cold {
        let f = hist::figures(&r.outcome.latency);
        let kind = match r.role {
            Role::Serverless => "scaled to zero before each sample",
            _ => "not scaled: first request on a new connection",
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{kind}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            esc(&r.target),
            f.count,
            f.p50,
            f.p90,
            f.max,
            r.outcome.errors.total()
        );
    }
    page.push_str("</table>\n");
    let series: Vec<Series> = cold
        .iter()
        .map(|r| (r.target.clone(), distribution(&r.outcome.latency)))
        .collect();
    page.push_str(&distribution_chart("cold-start distribution", &series, pal));
}

/// Serverless against baseline, step by step: the price of scaling to zero.
fn ratio_section(page: &mut String, records: &[StepRecord]) {
    let mut rows = String::new();
    for s in records.iter().filter(|r| r.role == Role::Serverless) {
        for baseline in [
            super::plan::baseline_name(&s.target),
            super::plan::gateway_baseline_name(&s.target),
        ] {
            let Some(b) = records
                .iter()
                .find(|r| r.target == baseline && r.mode == s.mode)
            else {
                continue;
            };
            let (fs, fb) = (
                hist::figures(&s.outcome.latency),
                hist::figures(&b.outcome.latency),
            );
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else {
                    "-".into()
                }
            };
            let _ = writeln!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.target),
                esc(&baseline),
                s.mode.name(),
                s.mode.param(),
                ratio(fs.p50, fb.p50),
                ratio(fs.p99, fb.p99),
                ratio(s.outcome.rps(), b.outcome.rps()),
            );
        }
    }
    if !rows.is_empty() {
        let _ = write!(
            page,
            "<h2>Serverless / baseline, per step</h2>\n<p class=\"note\">Above 1: the serverless path is slower (latency) or faster (throughput) than the always-on baseline. Against NAME-baseline (called directly) the ratio holds the gateway hop and scale-to-zero together; against NAME-baseline-gw (the same baseline through the gateway) only scale-to-zero.</p>\n<table><tr><th>function</th><th>against</th><th>step</th><th>p50 ratio</th><th>p99 ratio</th><th>throughput ratio</th></tr>\n{rows}</table>\n"
        );
    }
}

fn cost_section(page: &mut String, run: &RunResult) {
    if run.replica_seconds.is_empty() {
        return;
    }
    page.push_str("<h2>Cost: replica-seconds held during the run</h2>\n<p class=\"note\">Replica-seconds are replicas held times seconds, whether they worked or idled; the replicas per step and their CPU time are in the table below and in summary.csv. Which side held more is said in the summary at the top, from these figures.</p>\n<table><tr><th>target</th><th>replica-seconds</th></tr>\n");
    for (t, s) in &run.replica_seconds {
        let _ = writeln!(page, "<tr><td>{}</td><td>{s:.1}</td></tr>", esc(t));
    }
    page.push_str("</table>\n");
}

fn summary_table(page: &mut String, records: &[StepRecord]) {
    page.push_str("<h2>All figures</h2>\n<table><tr><th>target</th><th>mode</th><th>step</th><th>requests</th><th>errors</th><th>req/s</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\n");
    for r in records {
        for row in r.rows() {
            let (f, errors, mode) = (hist::figures(row.latency), row.errors, row.mode);
            let rps = row.rps.map_or(String::new(), |v| format!("{v:.0}"));
            let e = if errors.total() > 0 {
                format!("{} ({})", errors.total(), errors.describe())
            } else {
                "0".into()
            };
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{mode}</td><td>{}</td><td>{}</td><td>{e}</td><td>{rps}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                esc(&r.target),
                r.mode.param(),
                f.count,
                f.mean,
                f.p50,
                f.p90,
                f.p99,
                f.p999,
                f.max
            );
        }
    }
    page.push_str("</table>\n");
}

fn group<'a>(records: &[&'a StepRecord]) -> Vec<(String, Vec<&'a StepRecord>)> {
    let mut out: Vec<(String, Vec<&StepRecord>)> = Vec::new();
    for r in records {
        match out.iter_mut().find(|(t, _)| *t == r.target) {
            Some((_, v)) => v.push(r),
            None => out.push((r.target.clone(), vec![r])),
        }
    }
    out
}

/// (1/(1-percentile), ms) points, the x axis HdrHistogram's plotter uses; the 100% point is
/// left out (it has no finite x).
fn distribution(h: &Latency) -> Vec<(f64, f64)> {
    hist::percentile_points(h)
        .into_iter()
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, v)| (1.0 / (1.0 - q), v))
        .collect()
}

fn distribution_chart(title: &str, series: &[Series], pal: &Palette) -> String {
    let max_x = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(10.0, f64::max);
    chart(
        title,
        "percentile (1/(1-p): 10 = p90, 100 = p99)",
        "ms",
        (1.0..max_x).log_scale(),
        y_log_range(series).log_scale(),
        series,
        pal,
    )
}

pub(super) fn y_log_range(series: &[Series]) -> std::ops::Range<f64> {
    let ys = || series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let lo = ys().fold(f64::INFINITY, f64::min);
    let hi = ys().fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && lo > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.01, 1.0)
    };
    lo..hi.max(lo * 10.0)
}

/// An axis label: no trailing `.0`, thousands as `12k`.
fn tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// Marks the silences of a series sampled at a fixed interval (intervals without requests
/// are absent): a NaN point where two neighbours are further apart than 1.5 intervals, so
/// the line breaks there instead of drawing data across the silence.
fn with_gaps(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let step = points
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .filter(|d| *d > 0.0)
        .fold(f64::INFINITY, f64::min);
    let mut out = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        if i > 0 && p.0 - points[i - 1].0 > 1.5 * step {
            out.push((p.0, f64::NAN));
        }
        out.push(*p);
    }
    out
}

/// One line chart as an inline SVG element. A point whose y is NaN breaks its line.
pub(super) fn chart<X, Y>(
    title: &str,
    x_label: &str,
    y_label: &str,
    x: X,
    y: Y,
    series: &[Series],
    pal: &Palette,
) -> String
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (520, 340)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut c = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(x, y)?;
            c.configure_mesh()
                .light_line_style(TRANSPARENT)
                .bold_line_style(RGBColor(225, 225, 225))
                .x_labels(8)
                .y_labels(8)
                .x_label_formatter(&|v: &f64| tick(*v))
                .y_label_formatter(&|v: &f64| tick(*v))
                .x_desc(x_label)
                .y_desc(y_label)
                .label_style(("sans-serif", 11))
                .draw()?;
            for (name, pts) in series {
                let color = pal.color(name);
                // The second figure of a target (p99, uncorrected, run B of a comparison): dashed,
                // in its colour.
                let dashed = name.ends_with(" p99")
                    || name.ends_with(" uncorrected")
                    || name.ends_with(" B");
                let style = color.stroke_width(2);
                let mut segments = pts.split(|p| p.1.is_nan()).filter(|s| !s.is_empty());
                let Some(first) = segments.next() else {
                    continue;
                };
                for seg in segments {
                    if dashed {
                        c.draw_series(DashedLineSeries::new(seg.iter().copied(), 6, 4, style))?;
                    } else {
                        c.draw_series(LineSeries::new(seg.iter().copied(), style))?;
                    }
                }
                let drawn = if dashed {
                    c.draw_series(DashedLineSeries::new(first.iter().copied(), 6, 4, style))?
                } else {
                    c.draw_series(LineSeries::new(first.iter().copied(), style))?
                };
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    if dashed {
                        PathElement::new(vec![(x, y), (x + 6, y)], style)
                    } else {
                        PathElement::new(vec![(x, y), (x + 16, y)], style)
                    }
                });
                c.draw_series(
                    pts.iter()
                        .filter(|p| !p.1.is_nan())
                        .map(|&p| Circle::new(p, 2, color.filled())),
                )?;
            }
            let position = legend_corner(&c, series);
            c.configure_series_labels()
                .position(position)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .draw()?;
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            return format!(
                "<p>chart {} could not be drawn: {}</p>",
                esc(title),
                esc(&e.to_string())
            );
        }
    }
    svg
}

/// The corner of the plot its legend hides the fewest points in (the legend box is about
/// 210 px wide and 15 px a series high).
fn legend_corner<DB, CT>(c: &ChartContext<'_, DB, CT>, series: &[Series]) -> SeriesLabelPosition
where
    DB: DrawingBackend,
    CT: CoordTranslate<From = (f64, f64)>,
{
    let area = c.plotting_area();
    let ((left, top), (right, bottom)) = {
        let (w, h) = area.dim_in_pixel();
        let (x0, y0) = area.get_base_pixel();
        ((x0, y0), (x0 + w as i32, y0 + h as i32))
    };
    let (bw, bh) = (210, 15 * series.len() as i32 + 12);
    let corners = [
        (SeriesLabelPosition::UpperLeft, left, top),
        (SeriesLabelPosition::UpperRight, right - bw, top),
        (SeriesLabelPosition::LowerRight, right - bw, bottom - bh),
        (SeriesLabelPosition::LowerLeft, left, bottom - bh),
    ];
    // The points, and the lines between them (sampled), in pixels.
    let mut points: Vec<(i32, i32)> = Vec::new();
    for (_, pts) in series {
        for seg in pts.split(|p| p.1.is_nan()) {
            let px: Vec<(i32, i32)> = seg.iter().map(|p| area.map_coordinate(p)).collect();
            points.extend(&px);
            for w in px.windows(2) {
                for k in 1..10 {
                    let t = f64::from(k) / 10.0;
                    let lerp = |a: i32, b: i32| a + (f64::from(b - a) * t) as i32;
                    points.push((lerp(w[0].0, w[1].0), lerp(w[0].1, w[1].1)));
                }
            }
        }
    }
    corners
        .into_iter()
        .map(|(pos, x, y)| {
            let hidden = points
                .iter()
                .filter(|(px, py)| (x..x + bw).contains(px) && (y..y + bh).contains(py))
                .count();
            (hidden, pos)
        })
        .min_by_key(|(hidden, _)| *hidden)
        .map_or(SeriesLabelPosition::UpperLeft, |(_, pos)| pos)
}

/// Replicas over the run (from the gateway, every 200 ms), and what each step held.
fn timeline_section(page: &mut String, run: &RunResult, pal: &Palette) {
    if run.timeline.is_empty() {
        return;
    }
    let mut series: Vec<Series> = Vec::new();
    for (i, f) in run.functions.iter().enumerate() {
        let mine = || run.timeline.iter().filter(|s| s.function == i);
        series.push((
            format!("{f} serverless replicas"),
            mine()
                .map(|s| (s.at.as_secs_f64(), f64::from(s.serverless)))
                .collect(),
        ));
        if mine().any(|s| s.baseline > 0) {
            series.push((
                format!("{} replicas", super::plan::baseline_name(f)),
                mine()
                    .map(|s| (s.at.as_secs_f64(), f64::from(s.baseline)))
                    .collect(),
            ));
        }
    }
    let max_t = run
        .timeline
        .last()
        .map_or(1.0, |s| s.at.as_secs_f64())
        .max(1.0);
    let max_r = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    page.push_str("<h2>Replicas over the run</h2>\n<div class=\"charts\">\n");
    page.push_str(&chart(
        "ready replicas",
        "seconds since the run began",
        "replicas",
        0.0..max_t,
        0.0..max_r + 1.0,
        &series,
        pal,
    ));
    page.push_str("</div>\n<table><tr><th>target</th><th>step</th><th>from s</th><th>to s</th><th>replicas min</th><th>max</th><th>mean</th><th>replica-seconds</th><th>CPU seconds</th></tr>\n");
    for r in &run.records {
        let Some(h) = r.resources else { continue };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{} {}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
            esc(&r.target),
            r.mode.name(),
            r.mode.param(),
            r.window.0.as_secs_f64(),
            r.window.1.as_secs_f64(),
            h.replicas_min,
            h.replicas_max,
            h.replicas_mean,
            h.replica_seconds,
            h.cpu_seconds.map_or("-".into(), |c| format!("{c:.3}")),
        );
    }
    page.push_str("</table>\n<p class=\"note\">The two baseline targets share one baseline replica. CPU seconds: user and system time of the replica processes, from the process table (local platform only).</p>\n");
}

/// Trace steps: latency per interval over the run, and what each burst's first request
/// paid (the cold start, for the serverless target).
fn trace_section(page: &mut String, run: &RunResult, pal: &Palette) {
    let traces: Vec<&StepRecord> = run
        .records
        .iter()
        .filter(|r| matches!(r.mode, Mode::Trace { .. }))
        .collect();
    if traces.is_empty() {
        return;
    }
    page.push_str("<h2>Trace: bursts and silences</h2>\n<p class=\"note\">Requests due on the trace's schedule (open loop, latency from the due time). The serverless side falls to zero replicas in silences longer than its scale.idle and pays a cold start at the next burst's first request; the baseline holds its replica throughout. Replicas over time are in the chart above.</p>\n<div class=\"charts\">\n");
    let series: Vec<Series> = traces
        .iter()
        .map(|r| {
            let at = r.window.0.as_secs_f64();
            (
                format!("{} p99", r.target),
                with_gaps(
                    r.intervals
                        .iter()
                        .map(|i| (at + i.0, i.2.max(0.001)))
                        .collect(),
                ),
            )
        })
        .collect();
    let max_t = traces
        .iter()
        .map(|r| r.window.1.as_secs_f64())
        .fold(1.0, f64::max);
    let min_t = traces
        .iter()
        .map(|r| r.window.0.as_secs_f64())
        .fold(max_t, f64::min);
    page.push_str(&chart(
        "p99 latency per interval",
        "seconds since the run began",
        "ms",
        min_t..max_t,
        y_log_range(&series).log_scale(),
        &series,
        pal,
    ));
    page.push_str("</div>\n<table><tr><th>target</th><th>step</th><th>burst</th><th>starts at s</th><th>first request ms</th></tr>\n");
    for r in &traces {
        for (i, (start, first)) in r.outcome.bursts.iter().enumerate() {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                esc(&r.target),
                r.mode.param(),
                i + 1,
                r.window.0.as_secs_f64() + start.as_secs_f64(),
                first.map_or("failed".into(), |us| format!("{:.3}", us as f64 / 1000.0)),
            );
        }
    }
    page.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_breaks_the_line_and_no_nan_reaches_the_svg() {
        let pts = vec![(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (10.0, 4.0), (11.0, 5.0)];
        let gapped = with_gaps(pts);
        assert_eq!(gapped.len(), 6);
        assert!(gapped[3].1.is_nan() && gapped[3].0 == 10.0, "{gapped:?}");
        assert!(with_gaps(vec![(0.0, 1.0), (1.0, 1.0)])
            .iter()
            .all(|p| !p.1.is_nan()));
        let series = vec![("a p99".to_string(), gapped)];
        let svg = chart(
            "t",
            "x",
            "y",
            0.0..12.0,
            0.5..6.0,
            &series,
            &Palette::over(vec!["a".into()]),
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
        // Two segments: two dashed polylines' worth of path elements, not one across the gap.
        assert!(svg.matches("<polyline").count() >= 2 || svg.matches("<path").count() >= 2);
    }
}
