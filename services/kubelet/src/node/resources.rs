//! What this host has and how full it is: CPUs, memory, disk, GPUs, its
//! address and name, read from /proc, statvfs and /dev.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// The extended resource GPUs are offered as.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A `/proc/meminfo` field in bytes (the file says kB).
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, field)
}

fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        if name.trim() != field {
            return None;
        }
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// (total, available to unprivileged users) bytes of the filesystem
/// holding `path` (or its nearest existing ancestor).
pub fn disk(path: &Path) -> Option<(u64, u64)> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    Some((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

/// How many NVIDIA GPUs this host has: `/dev/nvidia0`, `/dev/nvidia1`…
pub fn gpu_count() -> usize {
    std::fs::read_dir("/dev")
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The host name, lower-cased as node names must be.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The first non-loopback IPv4 address (`ip -4 -o addr`), or the one the
/// default route would leave from.
pub fn first_ipv4() -> Option<Ipv4Addr> {
    let from_ip = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()
        .and_then(|out| parse_ip_addr(&String::from_utf8_lossy(&out.stdout)));
    from_ip.or_else(|| {
        // Connecting a UDP socket sends nothing; it only picks a source.
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("192.0.2.1:9").ok()?;
        match socket.local_addr().ok()?.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
            _ => None,
        }
    })
}

fn parse_ip_addr(text: &str) -> Option<Ipv4Addr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "inet")?;
        let ip: Ipv4Addr = words.next()?.split('/').next()?.parse().ok()?;
        (!ip.is_loopback()).then_some(ip)
    })
}

/// Capacity as the Node reports it: cpu, memory, pods, ephemeral-storage,
/// GPUs when there are any, and the extended resources from the flags.
pub fn capacity(root_dir: &Path, max_pods: u32, extended: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut capacity = BTreeMap::new();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    capacity.insert("cpu".to_string(), cpus.to_string());
    if let Some(mem) = meminfo("MemTotal") {
        capacity.insert("memory".into(), format!("{}Ki", mem / 1024));
    }
    capacity.insert("pods".into(), max_pods.to_string());
    if let Some((total, _)) = disk(root_dir) {
        capacity.insert("ephemeral-storage".into(), format!("{}Ki", total / 1024));
    }
    let gpus = gpu_count();
    if gpus > 0 {
        capacity.insert(GPU_RESOURCE.into(), gpus.to_string());
    }
    for (k, v) in extended {
        capacity.insert(k.clone(), v.clone());
    }
    capacity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_fields() {
        let text = "MemTotal:       16337188 kB\nMemFree:         1000 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(parse_meminfo(text, "MemTotal"), Some(16337188 * 1024));
        assert_eq!(parse_meminfo(text, "MemAvailable"), Some(2048 * 1024));
        assert_eq!(parse_meminfo(text, "Nope"), None);
        assert!(meminfo("MemTotal").is_some(), "this host has /proc/meminfo");
    }

    #[test]
    fn picks_the_first_global_ipv4() {
        let text = "2: eth0    inet 10.1.2.3/24 brd 10.1.2.255 scope global eth0\\n       valid_lft forever\n\
                    3: eth1    inet 192.168.1.4/24 scope global eth1\n";
        assert_eq!(parse_ip_addr(text), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(parse_ip_addr("1: lo inet 127.0.0.1/8 scope host lo\n"), None);
    }

    #[test]
    fn capacity_has_the_basics_and_extras() {
        let extra = BTreeMap::from([("example.com/fpga".to_string(), "2".to_string())]);
        let c = capacity(Path::new("/nonexistent/below/root"), 110, &extra);
        assert!(c["cpu"].parse::<u32>().unwrap() >= 1);
        assert!(c["memory"].ends_with("Ki"));
        assert_eq!(c["pods"], "110");
        assert!(c.contains_key("ephemeral-storage"), "statvfs of / through the nearest ancestor");
        assert_eq!(c["example.com/fpga"], "2");
    }
}
