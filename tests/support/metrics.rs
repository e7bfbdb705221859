//! Reading a service's /metrics from inside the network namespace it serves in.

use std::net::SocketAddr;

use skiff_testkit::netns::Host;

/// The Prometheus text `metrics` serves, fetched with curl in `host`.
pub fn scrape(host: &Host, metrics: SocketAddr) -> String {
    let out = host.command("curl").args(["-s", &format!("http://{metrics}/metrics")]).output().expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
