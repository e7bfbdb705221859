//! Durations as every skiff flag writes them: `500ms`, `30s`, `5m`, `1h`.

use std::time::Duration;

/// Parses `500ms`, `30s`, `5m` or `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 30s or 5m"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("{s:?} has an unknown unit (use ms, s, m or h)")),
    }
}

/// Like [`parse_duration`], for periods (timers, heartbeats, back-offs):
/// zero is refused, since a zero period would spin or stop the timer.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flag_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "5d", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_period("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_period("0s").unwrap_err(), "\"0s\" must be longer than zero");
    }
}
