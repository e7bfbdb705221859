//! Cron schedules as CronJobs write them: five fields (minute, hour, day of
//! month, month, day of week) or one of the `@hourly`-style macros, read
//! the way Kubernetes' cron library (robfig/cron's standard parser) reads
//! them, and the times they fire in a time zone.
//!
//! - A field is `*`, `?`, or a comma list of `N`, `N-M`, `*/S`, `N/S` or
//!   `N-M/S`; months and weekdays may be names (`jan`, `mon`). Sunday is 0,
//!   and 7 as well, as Unix cron has it.
//! - When both day of month and day of week are restricted, a day matching
//!   either fires (`0 0 1 * mon`: the 1st, and every Monday); when one is
//!   `*`, only the other counts.
//! - Times are civil times in the schedule's zone: across a DST gap a time
//!   that does not exist fires shifted forward by the gap (02:30 on a
//!   spring-forward night fires at 03:30), and a time that happens twice
//!   fires once, at its first occurrence.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed schedule. Each field is a bit set of the values it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Day of month or day of week was `*` (or `?`): the other one alone decides.
    any_day: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[] };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[] };
const DAY_OF_MONTH: Field = Field { name: "day of month", min: 1, max: 31, names: &[] };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
};
const DAY_OF_WEEK: Field =
    Field { name: "day of week", min: 0, max: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] };

/// How far ahead a schedule is searched for its next time: past this a
/// schedule such as `0 0 30 2 *` (February 30th) never fires.
const SEARCH_YEARS: i16 = 5;

impl Schedule {
    /// Reads `spec`; the error says which field is wrong and why.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err("a time zone in the schedule is not allowed: use spec.timeZone".into());
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unknown macro {other:?}: use @yearly, @monthly, @weekly, @daily or @hourly"))
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(format!("{spec:?} has {} fields, a cron schedule has five", fields.len()));
        };
        let mut days_of_week = parse_field(dow, &DAY_OF_WEEK)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week | 1) & !(1 << 7);
        }
        Ok(Self {
            minutes: parse_field(minute, &MINUTE)?,
            hours: parse_field(hour, &HOUR)?,
            days_of_month: parse_field(dom, &DAY_OF_MONTH)?,
            months: parse_field(month, &MONTH)?,
            days_of_week,
            any_day: is_any(dom) || is_any(dow),
        })
    }

    /// The first time strictly after `after` that the schedule fires in `tz`,
    /// or `None` if it never does within the next few years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = tz.to_datetime(after);
        // The next whole minute after `after`.
        let whole_minute = jiff::civil::DateTimeRound::new().smallest(jiff::Unit::Minute).mode(jiff::RoundMode::Trunc);
        let mut t = start.round(whole_minute).ok()?.checked_add(1.minute()).ok()?;
        let last_year = t.year().checked_add(SEARCH_YEARS)?;
        while t.year() <= last_year {
            if !has(self.months, t.month() as u32) {
                t = first_of_next_month(t.date())?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().tomorrow().ok()?.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !has(self.hours, t.hour() as u32) {
                t = next_hour(t)?;
                continue;
            }
            if !has(self.minutes, t.minute() as u32) {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A civil time in a DST gap resolves to the instant after it;
            // one that happens twice resolves to its first occurrence,
            // which may lie at or before `after` (then look further on).
            let at = tz.to_timestamp(t).ok()?;
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The times it fires after `after` up to and including `until`,
    /// oldest first, at most `limit` of them; the flag says there were more.
    pub fn times_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        tz: &TimeZone,
        limit: usize,
    ) -> (Vec<Timestamp>, bool) {
        let mut times = Vec::new();
        let mut from = after;
        while let Some(next) = self.next_after(from, tz).filter(|t| *t <= until) {
            if times.len() == limit {
                return (times, true);
            }
            times.push(next);
            from = next;
        }
        (times, false)
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = has(self.days_of_month, date.day() as u32);
        let dow = has(self.days_of_week, date.weekday().to_sunday_zero_offset() as u32);
        if self.any_day {
            dom && dow
        } else {
            dom || dow
        }
    }
}

/// A time zone by its IANA name (`Europe/Berlin`), as CronJob's
/// spec.timeZone names it; none given is UTC, which is what the controller
/// manager runs in.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None | Some("") => Ok(TimeZone::UTC),
        Some(name) if name.eq_ignore_ascii_case("local") => {
            Err("\"Local\" is not allowed: name an IANA time zone such as \"Europe/Berlin\"".into())
        }
        Some(name) => TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}")),
    }
}

fn has(set: u64, value: u32) -> bool {
    set & (1 << value) != 0
}

fn is_any(field: &str) -> bool {
    field == "*" || field == "?"
}

fn first_of_next_month(date: Date) -> Option<DateTime> {
    let first = date.first_of_month().checked_add(1.month()).ok()?;
    Some(first.to_datetime(jiff::civil::Time::midnight()))
}

fn next_hour(t: DateTime) -> Option<DateTime> {
    let hour_start = t.with().minute(0).second(0).subsec_nanosecond(0).build().ok()?;
    hour_start.checked_add(1.hour()).ok()
}

fn parse_field(field: &str, f: &Field) -> Result<u64, String> {
    if field.is_empty() {
        return Err(format!("{}: empty", f.name));
    }
    let mut bits = 0u64;
    for part in field.split(',') {
        bits |= parse_part(part, f).map_err(|why| format!("{} field {field:?}: {why}", f.name))?;
    }
    Ok(bits)
}

fn parse_part(part: &str, f: &Field) -> Result<u64, String> {
    let (range, step) = match part.split_once('/') {
        Some((range, step)) => {
            let step: u32 = step.parse().map_err(|_| format!("step {step:?} is not a number"))?;
            if step == 0 {
                return Err("a step of 0 never fires".into());
            }
            (range, Some(step))
        }
        None => (part, None),
    };
    let (low, high) = if is_any(range) {
        (f.min, if f.max == 7 { 6 } else { f.max })
    } else if let Some((a, b)) = range.split_once('-') {
        (value(a, f)?, value(b, f)?)
    } else {
        let v = value(range, f)?;
        // `N/S` runs from N to the end of the field, as robfig/cron reads it.
        (v, if step.is_some() { f.max } else { v })
    };
    if low > high {
        return Err(format!("range {low}-{high} runs backwards"));
    }
    let step = step.unwrap_or(1);
    Ok((low..=high).step_by(step as usize).fold(0, |bits, v| bits | (1 << v)))
}

fn value(text: &str, f: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    let v = match f.names.iter().position(|n| *n == lower) {
        Some(i) => i as u32 + if f.min == 1 { 1 } else { 0 },
        None => text.parse().map_err(|_| format!("{text:?} is not a number"))?,
    };
    if v < f.min || v > f.max {
        return Err(format!("{v} is out of range {}-{}", f.min, f.max));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec).unwrap().next_after(ts(after), &TimeZone::UTC).unwrap().to_string()
    }

    #[test]
    fn fields_ranges_steps_and_names() {
        assert_eq!(next("* * * * *", "2026-01-01T00:00:00Z"), "2026-01-01T00:01:00Z");
        assert_eq!(next("* * * * *", "2026-01-01T00:00:30Z"), "2026-01-01T00:01:00Z");
        assert_eq!(next("*/15 * * * *", "2026-01-01T00:16:00Z"), "2026-01-01T00:30:00Z");
        assert_eq!(next("5 4 * * *", "2026-01-01T04:05:00Z"), "2026-01-02T04:05:00Z");
        assert_eq!(next("0 9-17/4 * * *", "2026-01-01T10:00:00Z"), "2026-01-01T13:00:00Z");
        assert_eq!(next("0 0 1 jan,Jul *", "2026-02-01T00:00:00Z"), "2026-07-01T00:00:00Z");
        assert_eq!(next("30/10 * * * *", "2026-01-01T00:51:00Z"), "2026-01-01T01:30:00Z");
        // 2026-01-01 is a Thursday.
        assert_eq!(next("0 12 * * sat", "2026-01-01T00:00:00Z"), "2026-01-03T12:00:00Z");
        assert_eq!(next("0 12 * * 7", "2026-01-01T00:00:00Z"), "2026-01-04T12:00:00Z");
        assert_eq!(next("0 0 29 2 *", "2026-01-01T00:00:00Z"), "2028-02-29T00:00:00Z");
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 15th, or any Monday: Monday 2026-01-05 comes first.
        assert_eq!(next("0 0 15 * mon", "2026-01-01T00:00:00Z"), "2026-01-05T00:00:00Z");
        // Only the day of month counts when day of week is `*` or `?`.
        assert_eq!(next("0 0 15 * ?", "2026-01-01T00:00:00Z"), "2026-01-15T00:00:00Z");
    }

    #[test]
    fn macros_expand() {
        assert_eq!(next("@hourly", "2026-01-01T00:00:00Z"), "2026-01-01T01:00:00Z");
        assert_eq!(next("@daily", "2026-01-01T00:00:00Z"), "2026-01-02T00:00:00Z");
        assert_eq!(next("@weekly", "2026-01-01T00:00:00Z"), "2026-01-04T00:00:00Z");
        assert_eq!(next("@monthly", "2026-01-01T00:00:00Z"), "2026-02-01T00:00:00Z");
        assert_eq!(next("@yearly", "2026-01-01T00:00:00Z"), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn bad_schedules_are_named() {
        let err = |s: &str| Schedule::parse(s).unwrap_err();
        assert!(err("* * * *").contains("has 4 fields"), "{}", err("* * * *"));
        assert!(err("60 * * * *").contains("minute field \"60\": 60 is out of range 0-59"));
        assert!(err("* * * foo *").contains("month field"));
        assert!(err("*/0 * * * *").contains("step of 0"));
        assert!(err("5-1 * * * *").contains("backwards"));
        assert!(err("@every 5m").contains("unknown macro"));
        assert!(err("TZ=UTC * * * * *").contains("spec.timeZone"));
    }

    #[test]
    fn never_firing_schedules_end() {
        let s = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(s.next_after(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC), None);
    }

    #[test]
    fn time_zones_and_dst() {
        let berlin = time_zone(Some("Europe/Berlin")).unwrap();
        let s = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(s.next_after(ts("2026-01-01T00:00:00Z"), &berlin).unwrap().to_string(), "2026-01-01T08:00:00Z");
        assert_eq!(s.next_after(ts("2026-07-01T00:00:00Z"), &berlin).unwrap().to_string(), "2026-07-01T07:00:00Z");
        // 02:30 does not exist on 2026-03-29 in Berlin: it fires at 03:30 CEST.
        let gap = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(gap.next_after(ts("2026-03-28T12:00:00Z"), &berlin).unwrap().to_string(), "2026-03-29T01:30:00Z");
        assert!(time_zone(Some("Mars/Olympus")).unwrap_err().contains("unknown time zone"));
        assert!(time_zone(Some("Local")).is_err());
    }

    #[test]
    fn missed_times_are_listed_up_to_a_limit() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let (times, more) = s.times_between(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:30:00Z"), &TimeZone::UTC, 5);
        assert_eq!(times.len(), 3);
        assert!(!more);
        let (times, more) = s.times_between(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T02:00:00Z"), &TimeZone::UTC, 5);
        assert_eq!((times.len(), more), (5, true));
    }
}
