//! `cubeflash bench compare RUN_A RUN_B`: two runs' summary.csv side by side, step by step,
//! with the ratio B/A of p50, p99 and throughput, printed and written as a page
//! (`<results>/compare-A-vs-B/index.html`) with the closed-loop curves of both runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::report::{self, Palette, Series};

/// Why two runs could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("no bench run at {}: give a run folder, or a run's name under {} (`ls` it; `latest` is the newest)", path.display(), results.display())]
    NoRun { path: PathBuf, results: PathBuf },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{} lacks the column {column:?}: it was written by another version of cubeflash", path.display())]
    Column { path: PathBuf, column: &'static str },
    #[error(
        "the two runs share no step (same target, mode and step): compare runs of the same plan"
    )]
    Disjoint,
    #[error("failed to write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One measured step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    p50: f64,
    p99: f64,
    rps: Option<f64>,
    errors: u64,
}

/// (target, mode, step) → figures, in the run's order.
type Steps = Vec<((String, String, String), Figures)>;

/// Column widths of the printed table.
const WIDTHS: [usize; 11] = [28, 24, 9, 9, 6, 9, 9, 6, 9, 9, 6];

pub struct Comparison {
    pub table: String,
    pub page: PathBuf,
}

fn find_run(results: &Path, run: &Path) -> Result<PathBuf, CompareError> {
    for candidate in [run.to_path_buf(), results.join(run)] {
        if candidate.join(super::output::SUMMARY_FILE).is_file() {
            return Ok(std::fs::canonicalize(&candidate).unwrap_or(candidate));
        }
    }
    Err(CompareError::NoRun {
        path: run.to_path_buf(),
        results: results.to_path_buf(),
    })
}

fn read(dir: &Path) -> Result<Steps, CompareError> {
    let path = dir.join(super::output::SUMMARY_FILE);
    let err = |source| CompareError::Read {
        path: path.clone(),
        source,
    };
    let mut r = csv::Reader::from_path(&path).map_err(err)?;
    let headers = r.headers().map_err(err)?.clone();
    let col = |name: &'static str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or(CompareError::Column {
                path: path.clone(),
                column: name,
            })
    };
    let (target, mode, conc, rate, step) = (
        col("target")?,
        col("mode")?,
        col("concurrency")?,
        col("rate")?,
        headers.iter().position(|h| h == "step"),
    );
    let (p50, p99, rps, errors) = (col("p50_ms")?, col("p99_ms")?, col("rps")?, col("errors")?);
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(err)?;
        let get = |i: usize| rec.get(i).unwrap_or("").to_string();
        let m = get(mode);
        if m.ends_with("-warmup") {
            continue;
        }
        let param = match step.map(get).filter(|s| !s.is_empty()) {
            Some(s) => s,
            None if !get(conc).is_empty() => format!("c{}", get(conc)),
            None if !get(rate).is_empty() => format!("r{}", get(rate)),
            None => String::new(),
        };
        let num = |i: usize| get(i).parse::<f64>().ok();
        out.push((
            (get(target), m, param),
            Figures {
                p50: num(p50).unwrap_or(0.0),
                p99: num(p99).unwrap_or(0.0),
                rps: num(rps),
                errors: num(errors).unwrap_or(0.0) as u64,
            },
        ));
    }
    Ok(out)
}

/// B/A with two decimals (`-` where A is zero).
pub fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 {
        format!("{:.2}", b / a)
    } else {
        "-".into()
    }
}

pub fn compare(results: &Path, a: &Path, b: &Path) -> Result<Comparison, CompareError> {
    let (da, db) = (find_run(results, a)?, find_run(results, b)?);
    let (ra, rb) = (read(&da)?, read(&db)?);
    let rb_map: BTreeMap<_, _> = rb.iter().cloned().collect();
    let name = |d: &Path| {
        d.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (na, nb) = (name(&da), name(&db));
    let mut table = format!(
        "A = {na}, B = {nb}; ratios are B/A (above 1: B is slower, or has more throughput)\n{:<28} {:<24} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6}\n",
        "target", "mode", "A p50", "B p50", "B/A", "A p99", "B p99", "B/A", "A req/s", "B req/s", "B/A"
    );
    let mut rows = String::new();
    let mut shared = 0;
    for (key, fa) in &ra {
        let Some(fb) = rb_map.get(key) else { continue };
        shared += 1;
        let rps = |f: &Figures| f.rps.map_or("-".into(), |v| format!("{v:.0}"));
        let rps_ratio = match (fa.rps, fb.rps) {
            (Some(x), Some(y)) => ratio(x, y),
            _ => "-".into(),
        };
        let cells = [
            key.0.clone(),
            format!("{} {}", key.1, key.2),
            format!("{:.3}", fa.p50),
            format!("{:.3}", fb.p50),
            ratio(fa.p50, fb.p50),
            format!("{:.3}", fa.p99),
            format!("{:.3}", fb.p99),
            ratio(fa.p99, fb.p99),
            rps(fa),
            rps(fb),
            rps_ratio,
        ];
        for (k, (cell, width)) in cells.iter().zip(WIDTHS).enumerate() {
            let _ = match k {
                0 | 1 => write!(table, "{cell:<width$} "),
                _ => write!(table, "{cell:>width$} "),
            };
        }
        table.truncate(table.trim_end().len());
        table.push('\n');
        rows.push_str("<tr>");
        for cell in &cells {
            let _ = write!(rows, "<td>{}</td>", report::esc(cell));
        }
        let _ = writeln!(rows, "<td>{} / {}</td></tr>", fa.errors, fb.errors);
    }
    if shared == 0 {
        return Err(CompareError::Disjoint);
    }
    table.push_str("(latencies in ms)\n");
    let out = results.join(format!("compare-{na}-vs-{nb}"));
    let page = out.join(report::REPORT_FILE);
    let write_err = |source| CompareError::Write {
        path: page.clone(),
        source,
    };
    std::fs::create_dir_all(&out).map_err(write_err)?;
    let html = page_html(&na, &nb, &rows, &ra, &rb);
    std::fs::write(&page, html).map_err(write_err)?;
    Ok(Comparison { table, page })
}

fn page_html(na: &str, nb: &str, rows: &str, ra: &Steps, rb: &Steps) -> String {
    let mut page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cubeflash bench: {na} against {nb}</title>\n<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eee}}td:first-child,th:first-child{{text-align:left}}.charts{{display:flex;flex-wrap:wrap;gap:1em}}.note{{color:#555}}</style></head><body>\n<h1>A = {}, B = {}</h1>\n<p class=\"note\">Ratios are B/A: above 1, B is slower (latency) or serves more (throughput). Latencies in ms. The closed-loop curves: A solid, B dashed, one colour per target.</p>\n<table><tr><th>target</th><th>step</th><th>A p50</th><th>B p50</th><th>B/A</th><th>A p99</th><th>B p99</th><th>B/A</th><th>A req/s</th><th>B req/s</th><th>B/A</th><th>errors A / B</th></tr>\n{rows}</table>\n",
        report::esc(na),
        report::esc(nb)
    );
    let closed = |steps: &Steps, target: &str| -> Vec<(f64, f64)> {
        steps
            .iter()
            .filter(|((t, m, _), _)| t == target && m == "closed")
            .filter_map(|((_, _, p), f)| Some((p.strip_prefix('c')?.parse::<f64>().ok()?, f.p50)))
            .collect()
    };
    let mut targets: Vec<String> = Vec::new();
    for ((t, _, _), _) in ra.iter().chain(rb) {
        if !targets.contains(t) {
            targets.push(t.clone());
        }
    }
    let mut series: Vec<Series> = Vec::new();
    for t in &targets {
        series.push((format!("{t} A"), closed(ra, t)));
        series.push((format!("{t} B"), closed(rb, t)));
    }
    series.retain(|s| !s.1.is_empty());
    if !series.is_empty() {
        let max_c = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.0))
            .fold(2.0, f64::max);
        page.push_str("<div class=\"charts\">\n");
        page.push_str(&report::chart(
            "closed loop p50",
            "concurrent requests",
            "ms",
            (1.0..max_c).log_scale(),
            report::y_log_range(&series).log_scale(),
            &series,
            &Palette::over(targets),
        ));
        page.push_str("</div>\n");
    }
    page.push_str("</body></html>\n");
    page
}
