//! An Indexed Job's set of indexes, kept in status as Kubernetes writes
//! it: sorted ranges, `"0-2,5,7-9"`.

use std::collections::BTreeSet;

/// Reads `text`, keeping only indexes below `completions`; a malformed
/// part is skipped (the status is the controller's own writing).
pub fn parse(text: Option<&str>, completions: i32) -> BTreeSet<i32> {
    let mut set = BTreeSet::new();
    for part in text.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (low, high) = match part.split_once('-') {
            Some((a, b)) => (a.parse().ok(), b.parse().ok()),
            None => (part.parse().ok(), part.parse().ok()),
        };
        if let (Some(low), Some(high)) = (low, high) {
            set.extend((low..=high).filter(|i: &i32| *i >= 0 && *i < completions));
        }
    }
    set
}

/// Writes `set` as sorted ranges; an empty set is `None` (the field absent).
pub fn format(set: &BTreeSet<i32>) -> Option<String> {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_trip() {
        let set = parse(Some("0-2,5,7-9"), 100);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 5, 7, 8, 9]);
        assert_eq!(format(&set).as_deref(), Some("0-2,5,7-9"));
        assert_eq!(format(&BTreeSet::new()), None);
        assert_eq!(format(&[4].into()).as_deref(), Some("4"));
    }

    #[test]
    fn out_of_range_and_malformed_parts_are_dropped() {
        assert_eq!(parse(Some("1,x,3-a,4-6"), 5).into_iter().collect::<Vec<_>>(), [1, 4]);
        assert!(parse(None, 5).is_empty());
    }
}
