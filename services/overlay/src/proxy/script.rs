//! nft scripts from [`Ruleset`]s: the whole table (first sync, or after a
//! failed apply), or only what changed between what is installed and what
//! is desired. Either is applied as one transaction.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::rules::{Chain, Ruleset, MAPS};

/// Elements per `add element` line: keeps lines short for nft's parser.
const ELEMENTS_PER_LINE: usize = 500;

/// Deletes table `ip TABLE`, there or not.
pub fn delete(table: &str) -> String {
    // `add` first so that `delete` can't fail on a missing table.
    format!("add table ip {table}\ndelete table ip {table}\n")
}

/// Replaces table `ip TABLE` (if any) with `rs`.
pub fn full(table: &str, rs: &Ruleset) -> String {
    let t = format!("ip {table}");
    let mut s = delete(table);
    let _ = writeln!(s, "add table {t}");
    for (map, ty) in MAPS {
        let _ = writeln!(s, "add map {t} {map} {{ type {ty} ; }}");
    }
    for (name, chain) in &rs.chains {
        add_chain(&mut s, &t, name, chain);
    }
    for (name, chain) in &rs.chains {
        add_rules(&mut s, &t, name, chain);
    }
    for (map, elements) in &rs.maps {
        add_elements(&mut s, &t, map, elements.iter());
    }
    s
}

/// The script that turns `installed` into `desired`, touching only the
/// chains and map elements that differ; None when they are equal.
pub fn diff(table: &str, installed: &Ruleset, desired: &Ruleset) -> Option<String> {
    if installed == desired {
        return None;
    }
    let t = format!("ip {table}");
    let mut s = String::new();
    // New chains exist before anything (an element, an `ext-` rule) names them.
    for (name, chain) in desired.chains.iter().filter(|(n, _)| !installed.chains.contains_key(*n)) {
        add_chain(&mut s, &t, name, chain);
    }
    for (name, chain) in &desired.chains {
        match installed.chains.get(name) {
            None => add_rules(&mut s, &t, name, chain),
            Some(old) if old.rules != chain.rules => {
                let _ = writeln!(s, "flush chain {t} {name}");
                add_rules(&mut s, &t, name, chain);
            }
            Some(_) => {}
        }
    }
    // Doomed chains lose their rules first, so no `goto` between two of
    // them keeps the other in use when it is deleted.
    let doomed: Vec<&String> = installed.chains.keys().filter(|n| !desired.chains.contains_key(*n)).collect();
    for name in &doomed {
        let _ = writeln!(s, "flush chain {t} {name}");
    }
    for (map, _) in MAPS {
        let (old, new) = (elements(installed, map), elements(desired, map));
        let gone: Vec<&String> = old.iter().filter(|(k, v)| new.get(*k) != Some(*v)).map(|(k, _)| k).collect();
        for chunk in gone.chunks(ELEMENTS_PER_LINE) {
            let keys: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
            let _ = writeln!(s, "delete element {t} {map} {{ {} }}", keys.join(", "));
        }
        add_elements(&mut s, &t, map, new.iter().filter(|(k, v)| old.get(*k) != Some(*v)));
    }
    for name in doomed {
        let _ = writeln!(s, "delete chain {t} {name}");
    }
    Some(s)
}

fn elements<'a>(rs: &'a Ruleset, map: &str) -> &'a BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    rs.maps.get(map).unwrap_or(&EMPTY)
}

fn add_chain(s: &mut String, t: &str, name: &str, chain: &Chain) {
    match chain.base {
        Some(base) => writeln!(s, "add chain {t} {name} {{ {base} }}"),
        None => writeln!(s, "add chain {t} {name}"),
    }
    .expect("writing to a String");
}

fn add_rules(s: &mut String, t: &str, name: &str, chain: &Chain) {
    for rule in &chain.rules {
        let _ = writeln!(s, "add rule {t} {name} {rule}");
    }
}

fn add_elements<'a>(s: &mut String, t: &str, map: &str, elements: impl Iterator<Item = (&'a String, &'a String)>) {
    let all: Vec<String> = elements.map(|(k, v)| format!("{k} : {v}")).collect();
    for chunk in all.chunks(ELEMENTS_PER_LINE) {
        let _ = writeln!(s, "add element {t} {map} {{ {} }}", chunk.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::proxy::model::{Desired, Protocol, ServicePort};
    use crate::proxy::rules::{chain_name, render, Network};

    fn port(key: &str, ip: &str, endpoints: &[&str], node_port: Option<u16>) -> ServicePort {
        ServicePort {
            key: key.into(),
            protocol: Protocol::Tcp,
            cluster_ip: ip.parse().unwrap(),
            port: 80,
            node_port,
            client_ip_affinity: false,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn rules(ports: Vec<ServicePort>) -> Ruleset {
        let net = Network { cluster_cidr: "10.42.0.0/16".parse().unwrap(), wireguard_interface: None };
        render(&Desired { ports, pod_cidr: "10.42.1.0/24".parse().ok(), skipped: vec![] }, &net)
    }

    fn before() -> Ruleset {
        rules(vec![
            port("default/a/", "10.43.0.1", &["10.42.1.2:80"], None),
            port("default/b/", "10.43.0.2", &["10.42.1.3:80", "10.42.2.3:80"], Some(30002)),
            port("default/c/", "10.43.0.3", &["10.42.1.4:80"], None),
        ])
    }

    #[test]
    fn full_script_replaces_the_table() {
        let s = full("skiff", &before());
        assert!(s.starts_with("add table ip skiff\ndelete table ip skiff\nadd table ip skiff\n"), "{s}");
        assert!(s.contains("add map ip skiff service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }"));
        assert!(s.contains(
            "add chain ip skiff prerouting { type nat hook prerouting priority dstnat ; policy accept ; }\n"
        ));
        let a = chain_name("svc", "default/a/");
        assert!(s.contains(&format!("add rule ip skiff {a} meta l4proto tcp dnat to 10.42.1.2:80\n")), "{s}");
        assert!(s.contains(&format!("10.43.0.1 . tcp . 80 : goto {a}")), "{s}");
    }

    #[test]
    fn diff_touches_only_what_changed() {
        let old = before();
        let new = rules(vec![
            port("default/a/", "10.43.0.1", &["10.42.1.2:80"], None),
            port("default/b/", "10.43.0.2", &["10.42.1.3:80"], Some(30002)),
            port("default/c/", "10.43.0.3", &[], None),
            port("default/d/", "10.43.0.4", &["10.42.1.9:80"], None),
        ]);
        assert_eq!(diff("skiff", &old, &old), None);
        let s = diff("skiff", &old, &new).unwrap();
        let (b, c, d) =
            (chain_name("svc", "default/b/"), chain_name("svc", "default/c/"), chain_name("svc", "default/d/"));
        let want = [
            format!("add chain ip skiff {d}"),
            // Chains in name order; the names start with their hash.
            format!("add rule ip skiff {d} ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x4000"),
            format!("add rule ip skiff {d} meta l4proto tcp dnat to 10.42.1.9:80"),
            format!("flush chain ip skiff {b}"),
            format!("add rule ip skiff {b} ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x4000"),
            format!("add rule ip skiff {b} meta l4proto tcp dnat to 10.42.1.3:80"),
            format!("flush chain ip skiff {c}"),
            "delete element ip skiff service-ips { 10.43.0.3 . tcp . 80 }".to_string(),
            format!("add element ip skiff service-ips {{ 10.43.0.4 . tcp . 80 : goto {d} }}"),
            "add element ip skiff no-endpoint-services { 10.43.0.3 . tcp . 80 : goto reject-chain }".to_string(),
            format!("delete chain ip skiff {c}"),
        ];
        assert_eq!(s.lines().collect::<Vec<_>>(), want, "got:\n{s}");
    }

    /// nft's own check (`nft -c`: parsed and evaluated by the kernel, then
    /// aborted) of a full script followed by a diff, where nft can run.
    #[test]
    fn nft_accepts_the_scripts() {
        let new = rules(vec![
            port("default/b/", "10.43.0.2", &["10.42.1.3:80"], None),
            port("default/c/", "10.43.0.3", &[], Some(30003)),
        ]);
        let script =
            format!("{}{}", full("skiff-unit-check", &before()), diff("skiff-unit-check", &before(), &new).unwrap());
        let child = Command::new("nft").args(["-c", "-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let Ok(mut child) = child else {
            eprintln!("nft is not installed: skipped");
            return;
        };
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Operation not permitted") {
            eprintln!("nft needs CAP_NET_ADMIN: skipped");
            return;
        }
        assert!(out.status.success(), "nft -c rejected the script: {stderr}\n{script}");
    }
}
