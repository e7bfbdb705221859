//! The one output format of every scenario: `name: value unit`.

use std::time::Duration;

use hdrhistogram::Histogram;

pub fn figure(name: &str, value: f64, unit: &str) {
    println!("{name}: {value:.3} {unit}");
}

pub fn ratio(name: &str, skiff: f64, baseline: f64) {
    figure(name, if baseline == 0.0 { 0.0 } else { skiff / baseline }, "x");
}

/// Latencies in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).max(1));
}

pub fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// CPU seconds (user + system) a process has used, and its resident memory
/// in MiB, from /proc.
pub fn proc_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that closes the command name; utime and stime are
    // the 12th and 13th of them, rss (pages) the 22nd.
    let rest: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let field = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ticks = 100.0;
    let cpu = (field(11) + field(12)) / ticks;
    let rss_mib = field(21) * 4096.0 / (1024.0 * 1024.0);
    (cpu, rss_mib)
}
