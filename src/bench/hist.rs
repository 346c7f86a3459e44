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
    let ms = |percent: f64| value_at_percentile(h, percent) as f64 / SCALE_TO_MS;
    Figures {
        count: h.len(),
        mean: h.mean() / SCALE_TO_MS,
        p50: ms(50.0),
        p90: ms(90.0),
        p99: ms(99.0),
        p999: ms(99.9),
        max: h.max() as f64 / SCALE_TO_MS,
    }
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format, byte for byte what the
/// Java reference (`outputPercentileDistribution(out, 5, 1000.0)`) prints for the same data:
/// a header and a blank line, then `Value Percentile TotalCount 1/(1-Percentile)` rows (the
/// 100% row has no fourth column), then the `#[Mean`, `#[Max` and `#[Buckets` footers.
/// The walk and the mean follow Java's arithmetic (percent levels, sum then divide), not the
/// Rust crate's quantile iterator, whose floating-point steps pick another bucket when a
/// level falls exactly on a bucket's cumulative count.
pub fn hgrm(h: &Latency) -> String {
    let mut out = String::new();
    let digits = usize::from(h.sigfig());
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for (value, percentile, total) in java_percentiles(h, TICKS_PER_HALF) {
        let value = java_fixed(value as f64 / SCALE_TO_MS, digits);
        let q = percentile / 100.0;
        let shown_q = java_fixed(q, 12);
        if percentile != 100.0 {
            let inverse = java_fixed(1.0 / (1.0 - q), 2);
            let _ = writeln!(out, "{value:>12} {shown_q:>2} {total:>10} {inverse:>14}");
        } else {
            let _ = writeln!(out, "{value:>12} {shown_q:>2} {total:>10}");
        }
    }
    let (mean, stdev) = java_mean_stdev(h);
    let _ = writeln!(
        out,
        "#[Mean    = {:>12}, StdDeviation   = {:>12}]",
        java_fixed(mean / SCALE_TO_MS, digits),
        java_fixed(stdev / SCALE_TO_MS, digits)
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12}, Total count    = {:>12}]",
        java_fixed(h.max() as f64 / SCALE_TO_MS, digits),
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

/// `x` with `decimals` digits after the point, rounded as Java's `Formatter` does: HALF_UP
/// on the shortest decimal that identifies the double (what `Double.toString` shows), so
/// 0.9997802734375 prints as ...438 where Rust's `{:.12}` (exact value, ties to even) prints
/// ...437. Percentile levels are often such binary fractions.
pub fn java_fixed(x: f64, decimals: usize) -> String {
    // Rust's `{}` is the shortest round-trip decimal, never in exponent form.
    let shortest = format!("{}", x.abs());
    let (whole, frac) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let frac = format!("{frac:0<width$}", width = decimals + 1);
    let mut digits: Vec<u8> = format!("{whole}{}", &frac[..decimals]).into_bytes();
    if frac.as_bytes().get(decimals).is_some_and(|d| *d >= b'5') {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let point = digits.len() - decimals;
    let mut out = String::from_utf8(digits[..point].to_vec()).expect("ascii digits");
    if decimals > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[point..]).expect("ascii digits"));
    }
    if x.is_sign_negative() && out.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        out.insert(0, '-');
    }
    out
}

/// Java's `PercentileIterator`: (value iterated to, percentile level in percent, total count
/// to that value) at `ticks` steps per halving of the distance to 100%, then 100%.
fn java_percentiles(h: &Latency, ticks: u32) -> Vec<(u64, f64, u64)> {
    let total = h.len();
    let mut out = Vec::new();
    if total == 0 {
        return out;
    }
    let cells: Vec<(u64, u64)> = h
        .iter_all()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    let (mut level, mut running, mut index, mut fresh) = (0.0f64, 0u64, 0usize, true);
    let mut reached_last = false;
    loop {
        if running >= total {
            if reached_last {
                break;
            }
            level = 100.0;
            reached_last = true;
        }
        loop {
            let Some(&(value, count)) = cells.get(index) else {
                return out;
            };
            if fresh {
                running += count;
                fresh = false;
            }
            if count != 0 && (100.0 * running as f64) / total as f64 >= level {
                out.push((value, level, running));
                let halvings = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i64;
                let reporting = u64::from(ticks).saturating_mul(
                    2u64.saturating_pow(halvings.saturating_add(1).clamp(0, 62) as u32),
                );
                level += 100.0 / reporting as f64;
                break;
            }
            index += 1;
            fresh = true;
        }
    }
    out
}

/// The value at `percent`, chosen as the .hgrm rows choose theirs (the first bucket whose
/// running count reaches `percent` of the total, its highest equivalent value), so that
/// summary.csv's p50 and p90 equal the .hgrm's 50% and 90% rows.
pub fn value_at_percentile(h: &Latency, percent: f64) -> u64 {
    let total = h.len();
    if total == 0 {
        return 0;
    }
    let mut running = 0u64;
    for v in h.iter_recorded() {
        running += v.count_at_value();
        if (100.0 * running as f64) / total as f64 >= percent {
            return v.value_iterated_to();
        }
    }
    h.max()
}

/// Java's `getMean` and `getStdDeviation`: bucket midpoints, summed, then divided.
fn java_mean_stdev(h: &Latency) -> (f64, f64) {
    let total = h.len();
    if total == 0 {
        return (0.0, 0.0);
    }
    let mut sum = 0.0;
    for v in h.iter_recorded() {
        sum += h.median_equivalent(v.value_iterated_to()) as f64 * v.count_at_value() as f64;
    }
    let mean = sum / total as f64;
    let mut dev = 0.0;
    for v in h.iter_recorded() {
        let d = h.median_equivalent(v.value_iterated_to()) as f64 - mean;
        dev += d * d * v.count_since_last_iteration() as f64;
    }
    (mean, (dev / total as f64).sqrt())
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
    java_percentiles(h, TICKS_PER_HALF)
        .into_iter()
        .map(|(value, percentile, _)| (percentile / 100.0, value as f64 / SCALE_TO_MS))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles_equal_the_hgrm_rows_even_on_bucket_boundaries() {
        // 200 samples, half at 1 ms and half at 2 ms: the 50% level falls exactly on the
        // running count of the first bucket, where a float quantile can pick the next one.
        for (low, high, n) in [(1000u64, 2000u64, 100u64), (150, 900, 7), (3, 70_000, 1000)] {
            let mut h = new();
            for _ in 0..n {
                record(&mut h, low);
                record(&mut h, high);
            }
            let text = hgrm(&h);
            let rows = text.lines().skip(2).take_while(|l| !l.starts_with('#'));
            let mut checked = 0;
            for l in rows {
                let cells: Vec<&str> = l.split_whitespace().collect();
                let level: f64 = cells[1].parse().unwrap();
                let ours = value_at_percentile(&h, level * 100.0) as f64 / SCALE_TO_MS;
                assert_eq!(
                    format!("{ours:.3}"),
                    cells[0],
                    "{low}/{high} at {level}: {l}"
                );
                checked += 1;
            }
            assert!(checked >= 3, "{text}");
            let f = figures(&h);
            assert_eq!(f.p50, value_at_percentile(&h, 50.0) as f64 / SCALE_TO_MS);
        }
    }

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
    fn ties_round_half_up_like_java() {
        assert_eq!(java_fixed(0.9997802734375, 12), "0.999780273438");
        assert_eq!(java_fixed(0.125, 2), "0.13");
        assert_eq!(java_fixed(0.124, 2), "0.12");
        assert_eq!(java_fixed(9.9996, 3), "10.000");
        assert_eq!(java_fixed(2.0, 2), "2.00");
        assert_eq!(java_fixed(0.0, 3), "0.000");
        assert_eq!(java_fixed(-1.5, 0), "-2");
    }

    #[test]
    fn an_empty_histogram_prints_header_and_footers_only() {
        let text = hgrm(&new());
        assert_eq!(text.lines().count(), 5);
        assert!(text.contains("Total count    =            0]"));
    }
}
