//! A process's CPU time and resident memory, from /proc/PID/stat, in the
//! units of this machine's kernel: its clock tick and page size.

use std::path::PathBuf;

use crate::error::Error;

/// What a process has used so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User + system CPU, in seconds.
    pub cpu_s: f64,
    /// Resident set size, in MiB.
    pub rss_mib: f64,
}

/// The kernel's units for the fields of /proc/PID/stat.
#[derive(Debug, Clone, Copy)]
pub struct Units {
    pub ticks_per_second: u64,
    pub page_size: usize,
}

impl Units {
    pub fn of_this_machine() -> Self {
        Self { ticks_per_second: rustix::param::clock_ticks_per_second(), page_size: rustix::param::page_size() }
    }
}

/// The usage of `name`'s process, which must still be running: an exited
/// one (a zombie until reaped) shows an RSS of 0.
pub fn usage(name: &str, pid: Option<u32>) -> Result<Usage, Error> {
    let pid = pid.ok_or_else(|| Error::NoProcess { name: name.into() })?;
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat =
        std::fs::read_to_string(&path).map_err(|source| Error::ReadStat { name: name.into(), pid, path, source })?;
    let (state, usage) = parse_stat(&stat, Units::of_this_machine())?;
    if matches!(state, 'Z' | 'X' | 'x') {
        return Err(Error::Exited { name: name.into(), pid, state });
    }
    Ok(usage)
}

/// The processes whose parent is `pid` (an nginx master's workers, say),
/// from the ppid field of every /proc/PID/stat.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            // A process that exited since the listing has no stat: not a child.
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// The state letter and the usage in one /proc/PID/stat line.
pub fn parse_stat(stat: &str, units: Units) -> Result<(char, Usage), Error> {
    // The command name may hold spaces and parentheses: the fields start
    // after the last ")". Numbered from the state (field 3 in proc(5)).
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let missing = |field| Error::StatFormat { field, stat: stat.to_string() };
    let number = |i: usize, field| rest.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| missing(field));
    let state = rest.first().and_then(|s| s.chars().next()).ok_or_else(|| missing("state"))?;
    let ticks = number(11, "utime")? + number(12, "stime")?;
    let pages = number(21, "rss")?;
    Ok((
        state,
        Usage {
            cpu_s: ticks as f64 / units.ticks_per_second as f64,
            rss_mib: (pages as f64 * units.page_size as f64) / (1024.0 * 1024.0),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line, with a command name that holds ") (".
    const STAT: &str = "4242 (a) (b) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
        250 50 0 0 20 0 8 0 123456 1073741824 512 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn reads_cpu_in_the_given_ticks_and_rss_in_the_given_pages() {
        let (state, u) = parse_stat(STAT, Units { ticks_per_second: 100, page_size: 4096 }).unwrap();
        assert_eq!(state, 'S');
        assert_eq!(u, Usage { cpu_s: 3.0, rss_mib: 2.0 });
        let (_, u) = parse_stat(STAT, Units { ticks_per_second: 250, page_size: 65536 }).unwrap();
        assert_eq!(u, Usage { cpu_s: 1.2, rss_mib: 32.0 });
    }

    #[test]
    fn a_short_or_garbled_line_is_an_error_not_zero() {
        let units = Units { ticks_per_second: 100, page_size: 4096 };
        assert!(matches!(parse_stat("", units), Err(Error::StatFormat { field: "state", .. })));
        assert!(matches!(parse_stat("1 (x) S 1 2 3", units), Err(Error::StatFormat { field: "utime", .. })));
        let garbled = STAT.replace(" 512 ", " lots ");
        assert!(matches!(parse_stat(&garbled, units), Err(Error::StatFormat { field: "rss", .. })));
    }

    #[test]
    fn this_process_is_running_and_resident() {
        let u = usage("bench test", Some(std::process::id())).unwrap();
        assert!(u.rss_mib > 0.0, "{u:?}");
    }

    #[test]
    fn finds_the_children_of_a_process() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let found = children(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(children(5_000_000).is_empty());
    }

    #[test]
    fn no_pid_or_a_gone_pid_is_an_error() {
        assert!(matches!(usage("apiserver", None), Err(Error::NoProcess { .. })));
        // Above the largest pid_max the kernel allows (2^22).
        assert!(matches!(usage("apiserver", Some(5_000_000)), Err(Error::ReadStat { .. })));
    }
}
