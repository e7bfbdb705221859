//! Counters on what leaves a host by its LAN link (`eth0`): plain traffic
//! to the pod network, which must stay 0 when the overlay does its job, and
//! WireGuard (UDP 51820). For the tests that prove the wire is encrypted.

use std::io::Write;

use skiff_testkit::netns::Host;

const TABLE: &str = "skiffwire";

/// Installs the counters in `host`'s namespace.
pub fn count_wire(host: &Host) {
    let rules = format!(
        "table ip {TABLE} {{\n chain out {{\n  type filter hook postrouting priority 0; policy accept;\n  oifname \"eth0\" ip daddr 10.42.0.0/16 counter comment \"plain\"\n  oifname \"eth0\" udp dport 51820 counter comment \"wireguard\"\n }}\n}}\n"
    );
    let mut child = host.command("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("run nft");
    child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "installing the wire counters");
}

/// Packets counted by the rule commented `which` (`plain` or `wireguard`).
pub fn wire_packets(host: &Host, which: &str) -> u64 {
    let out = host.run("nft", &["list", "table", "ip", TABLE]).expect("list the wire counters");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.contains(&format!("comment \"{which}\""))).expect("counter rule");
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets").expect("packets field");
    words[at + 1].parse().unwrap()
}
