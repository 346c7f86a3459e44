//! Latency histograms (HdrHistogram, microseconds, 3 significant digits) and their text forms:
//! the percentile distribution exactly as HdrHistogram's Java `outputPercentileDistribution`
//! prints it (`.hgrm`), and the few figures the summary and report quote. No IO here.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Significant digits every bench histogram keeps.
pub const SIGFIG: u8 = 3;
/// Percentile ticks per halving of the distance to 100%, as the Java tools print them.
pub const TICKS_PER_HALF: u32 = 5;
/// Values are recorded in microseconds and printed in milliseconds.
pub const SCALE_TO_MS: f64 = 1000.0;

pub type Latency = Histogram<u64>;

/// An empty, auto-resizing histogram for microsecond latencies.
pub fn new() -> Latency {
    let mut h = Histogram::new(SIGFIG).expect("3 significant digits is a valid histogram");
    h.auto(true);
    h
}

/// Records one latency, in microseconds (at least 1: a zero would say "not measured").
#[inline]
pub fn record(h: &mut Latency, micros: u64) {
    // Not saturating_record: that clamps to the current range instead of growing it.
    if h.record(micros.max(1)).is_err() {
        h.saturating_record(micros.max(1));
    }
}

/// Adds `from` into `into`; both are auto-resizing, so this cannot fail for want of range.
pub fn merge(into: &mut Latency, from: &Latency) {
    into.add(from).expect("auto-resizing histograms always add");
}

/// The figures the summary and the terminal table quote, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

pub fn figures(h: &Latency) -> Figures {
    if h.is_empty() {
        return Figures::default();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / SCALE_TO_MS;
    Figures {
        count: h.len(),
        mean: h.mean() / SCALE_TO_MS,
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / SCALE_TO_MS,
    }
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format, byte for byte what the
/// Java reference (`outputPercentileDistribution(out, 5, 1000.0)`) prints for the same data:
/// a header and a blank line, then `Value Percentile TotalCount 1/(1-Percentile)` rows (the
/// 100% row has no fourth column), then the `#[Mean`, `#[Max` and `#[Buckets` footers.
pub fn hgrm(h: &Latency) -> String {
    let mut out = String::new();
    let digits = usize::from(h.sigfig());
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(TICKS_PER_HALF) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / SCALE_TO_MS;
            let q = v.quantile_iterated_to();
            if q != 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.digits$} {q:>2.12} {total:>10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.digits$}, StdDeviation   = {:>12.digits$}]",
        h.mean() / SCALE_TO_MS,
        h.stdev() / SCALE_TO_MS
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.digits$}, Total count    = {:>12}]",
        h.max() as f64 / SCALE_TO_MS,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// The sub-bucket count HdrHistogram derives from the significant digits:
/// 2^ceil(log2(2 * 10^digits)).
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2 * 10u64.pow(u32::from(sigfig));
    largest.next_power_of_two()
}

/// The (percentile, value in ms) points of the distribution, for charts.
pub fn percentile_points(h: &Latency) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(TICKS_PER_HALF)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / SCALE_TO_MS,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_has_the_java_layout() {
        let mut h = new();
        for v in 1..=10_000u64 {
            record(&mut h, v);
        }
        let text = hgrm(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // The first row is the smallest value at percentile 0.
        assert_eq!(
            lines[2],
            "       0.001 0.000000000000          1           1.00"
        );
        // The median row: 5,000 µs is 5.000 ms with 5,000 values at or below it.
        assert!(
            lines.contains(&"       5.003 0.500000000000       5003           2.00"),
            "{text}"
        );
        let body: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with('#'))
            .collect();
        let (last, rows) = body.split_last().unwrap();
        for row in rows {
            assert_eq!(row.split_whitespace().count(), 4, "{row}");
        }
        assert_eq!(last.split_whitespace().count(), 3, "{last}");
        assert!(last.contains(" 1.000000000000 "), "{last}");
        let footer = &lines[lines.len() - 3..];
        assert!(
            footer[0].starts_with("#[Mean    =        5.00"),
            "{}",
            footer[0]
        );
        assert!(
            footer[0].contains("StdDeviation   =        2.88"),
            "{}",
            footer[0]
        );
        assert_eq!(
            footer[1],
            "#[Max     =       10.007, Total count    =        10000]"
        );
        assert!(footer[2].starts_with("#[Buckets = "));
        assert!(footer[2].ends_with("SubBuckets     =         2048]"));
    }

    #[test]
    fn latencies_beyond_the_first_bucket_are_kept_not_clamped() {
        // saturating_record would have clamped 5 s to the histogram's first range (2,047 µs).
        let mut h = new();
        record(&mut h, 100);
        record(&mut h, 5_000_000);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 4_990_000, "max {}", h.max());
        assert_eq!(h.min(), 100);
    }

    #[test]
    fn an_empty_histogram_prints_header_and_footers_only() {
        let text = hgrm(&new());
        assert_eq!(text.lines().count(), 5);
        assert!(text.contains("Total count    =            0]"));
    }
}
