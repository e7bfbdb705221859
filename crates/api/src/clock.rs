//! The wall clock in the forms the API stores: the one place skiff reads
//! it for timestamps (jiff's own `Timestamp::now` needs its `std` feature,
//! which k8s-openapi leaves off).

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

/// Now, to the nanosecond.
pub fn now() -> Timestamp {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    // subsec_nanos is below 10^9, so it always fits.
    let nanos = i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0);
    Timestamp::new(seconds, nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Now, in whole seconds: a metav1.Time as the API stores it, so that a
/// value written and read back compares equal.
pub fn now_time() -> Time {
    Time(Timestamp::from_second(now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Now, as a metav1.MicroTime (Lease renewals, Events).
pub fn now_micro_time() -> MicroTime {
    let now = now();
    let micros = now.subsec_nanosecond() / 1000 * 1000;
    MicroTime(Timestamp::new(now.as_second(), micros).unwrap_or(now))
}

/// [`now_time`] as the API's JSON string (`2024-05-01T12:00:00Z`).
pub fn now_rfc3339() -> String {
    json_string(&now_time())
}

/// [`now_micro_time`] as the API's JSON string (`2024-05-01T12:00:00.123456Z`).
pub fn now_rfc3339_micros() -> String {
    json_string(&now_micro_time())
}

/// The string k8s-openapi writes for a time, so every component formats
/// timestamps exactly as the types do.
fn json_string(t: &impl serde::Serialize) -> String {
    match serde_json::to_value(t) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_have_the_api_precision() {
        let secs = now_rfc3339();
        assert_eq!(secs.len(), "2024-05-01T12:00:00Z".len(), "{secs}");
        assert!(secs.ends_with('Z'));
        let micros = now_rfc3339_micros();
        assert_eq!(micros.len(), "2024-05-01T12:00:00.123456Z".len(), "{micros}");
        let parsed: MicroTime = serde_json::from_value(serde_json::json!(micros)).unwrap();
        assert_eq!(parsed.0.subsec_nanosecond() % 1000, 0);
    }

    #[test]
    fn time_is_whole_seconds_and_not_in_the_past() {
        let before = now().as_second();
        let t = now_time();
        assert_eq!(t.0.subsec_nanosecond(), 0);
        assert!(t.0.as_second() >= before);
    }
}
