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
