//! The leader-election flags every singleton component (scheduler,
//! controller-manager) takes, with the same names and defaults, and the
//! one way a replica names itself in the lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use skiff_api::parse_duration;

use super::{LeaderElector, LeaseTimings};
use crate::{Client, Result};

/// `--leader-elect` and the lease it competes for.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderElectionFlags {
    /// Act only while holding the lease, so that one replica acts at a time
    /// (false: always, for a single replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// This replica's name in the lease (default: host name and a random suffix).
    #[arg(long)]
    pub leader_elect_identity: Option<String>,
    /// The Lease replicas compete for (default: the component's name).
    #[arg(long)]
    pub lease_name: Option<String>,
    /// The Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    pub lease_namespace: String,
    /// How long others wait after the leader's last renewal before taking over.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader tries to renew before it steps down.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew the lease.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
}

impl LeaderElectionFlags {
    /// The candidate these flags describe, for the lease named after
    /// `component` unless `--lease-name` says otherwise; `None` when
    /// `--leader-elect=false`. Fails on timings that would not be safe.
    pub fn elector(&self, client: &Client, component: &str) -> Result<Option<LeaderElector>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let identity = self.leader_elect_identity.clone().unwrap_or_else(|| default_identity(component));
        let timings = LeaseTimings {
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        };
        let name = self.lease_name.as_deref().unwrap_or(component);
        LeaderElector::new(client.api::<Lease>(&self.lease_namespace), name, &identity).with_timings(timings).map(Some)
    }
}

/// A candidate name unique per process, as Kubernetes' components make
/// theirs: the host name and a random suffix (a pid alone repeats across
/// containers).
fn default_identity(fallback_host: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| fallback_host.to_string());
    format!("{host}_{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        election: LeaderElectionFlags,
    }

    fn parse(args: &[&str]) -> LeaderElectionFlags {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap().election
    }

    #[test]
    fn defaults_are_kubernetes_ones() {
        let f = parse(&[]);
        assert!(f.leader_elect);
        assert_eq!(f.lease_namespace, "kube-system");
        assert_eq!(
            (f.lease_duration, f.renew_deadline, f.retry_period),
            (Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2))
        );
    }

    #[test]
    fn leader_elect_takes_a_bare_flag_or_a_value() {
        assert!(parse(&["--leader-elect"]).leader_elect);
        assert!(!parse(&["--leader-elect=false"]).leader_elect);
    }

    #[tokio::test]
    async fn names_the_lease_after_the_component_unless_told() {
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let elector = parse(&[]).elector(&client, "skiff-scheduler").unwrap().unwrap();
        assert_eq!(elector.lease_key(), "kube-system/skiff-scheduler");
        let elector =
            parse(&["--lease-name=other", "--leader-elect-identity=me"]).elector(&client, "x").unwrap().unwrap();
        assert_eq!((elector.lease_key().as_str(), elector.identity()), ("kube-system/other", "me"));
        assert!(parse(&["--leader-elect=false"]).elector(&client, "x").unwrap().is_none());
    }

    #[tokio::test]
    async fn unsafe_timings_are_refused() {
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let flags = parse(&["--lease-duration=5s", "--renew-deadline=10s"]);
        assert!(flags.elector(&client, "x").is_err());
    }

    #[test]
    fn identities_differ_per_call() {
        assert_ne!(default_identity("h"), default_identity("h"));
    }
}
