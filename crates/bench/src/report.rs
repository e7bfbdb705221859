//! The one output path of every scenario: `name: value unit` lines, each
//! built as a [`Figure`], which refuses a value that was not measured.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::error::Error;

/// One measured value, ready to print.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
}

impl Figure {
    /// A NaN or an infinity comes from dividing by nothing measured.
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Result<Self, Error> {
        let name = name.into();
        if !value.is_finite() {
            return Err(Error::NotFinite { figure: name, value });
        }
        Ok(Self { name, value, unit })
    }

    /// `skiff / baseline`: a baseline of zero (or less, or not finite)
    /// means the baseline was not measured, whatever the reason.
    pub fn ratio(name: impl Into<String>, skiff: f64, baseline: f64) -> Result<Self, Error> {
        let name = name.into();
        if !(baseline.is_finite() && baseline > 0.0) {
            return Err(Error::NoBaseline { figure: name, baseline });
        }
        Self::new(name, skiff / baseline, "x")
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:.3} {}", self.name, self.value, self.unit)
    }
}

pub fn figure(name: impl Into<String>, value: f64, unit: &'static str) -> Result<(), Error> {
    println!("{}", Figure::new(name, value, unit)?);
    Ok(())
}

pub fn ratio(name: impl Into<String>, skiff: f64, baseline: f64) -> Result<(), Error> {
    println!("{}", Figure::ratio(name, skiff, baseline)?);
    Ok(())
}

/// Latencies in microseconds. It grows past two minutes rather than refuse
/// a slower sample: a dropped sample would flatter the quantiles.
pub fn histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds");
    h.auto(true);
    h
}

pub fn record(h: &mut Histogram<u64>, d: Duration) -> Result<(), Error> {
    h.record((d.as_micros() as u64).max(1)).map_err(|source| Error::Record { source })
}

/// A latency quantile in ms; an empty histogram has none (hdrhistogram
/// would answer 0).
pub fn ms(h: &Histogram<u64>, quantile: f64) -> Result<f64, Error> {
    if h.is_empty() {
        return Err(Error::NoSamples { what: "latency" });
    }
    Ok(h.value_at_quantile(quantile) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_refuses_a_baseline_that_was_not_measured() {
        for baseline in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY] {
            let r = Figure::ratio("x_vs_base", 5.0, baseline);
            assert!(matches!(r, Err(Error::NoBaseline { .. })), "{baseline}: {r:?}");
        }
    }

    #[test]
    fn ratio_divides_by_a_measured_baseline() {
        assert_eq!(Figure::ratio("x_vs_base", 5.0, 2.0).unwrap().to_string(), "x_vs_base: 2.500 x");
    }

    #[test]
    fn a_figure_refuses_a_value_from_nothing_measured() {
        assert!(matches!(Figure::new("rate", 1.0 / 0.0, "ops/s"), Err(Error::NotFinite { .. })));
        assert!(matches!(Figure::new("rate", f64::NAN, "ops/s"), Err(Error::NotFinite { .. })));
        assert_eq!(Figure::new("lost", 0.0, "queries").unwrap().to_string(), "lost: 0.000 queries");
    }

    #[test]
    fn an_empty_histogram_has_no_quantile() {
        let mut h = histogram();
        assert!(matches!(ms(&h, 0.99), Err(Error::NoSamples { .. })));
        record(&mut h, Duration::from_millis(3)).unwrap();
        assert!((ms(&h, 0.99).unwrap() - 3.0).abs() < 0.01);
    }

    #[test]
    fn a_sample_slower_than_the_bounds_is_kept() {
        let mut h = histogram();
        record(&mut h, Duration::from_secs(600)).unwrap();
        assert_eq!(h.len(), 1);
        assert!(ms(&h, 1.0).unwrap() >= 599_000.0);
    }
}
