//! `skiffctl scale KIND NAME --replicas N` (or `KIND/NAME`): sets
//! spec.replicas of a Deployment, ReplicaSet or StatefulSet.

use anyhow::{bail, Result};
use serde_json::json;
use skiff_api::KindInfo;

use super::Globals;
use crate::resource;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to scale: deploy/web, or deploy web.
    #[arg(required = true, num_args = 1..=2)]
    pub target: Vec<String>,
    /// The number of replicas wanted.
    #[arg(long)]
    pub replicas: i32,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let (info, name) = resource::parse_target(&args.target)?;
    check(info, args.replicas)?;
    let client = globals.client()?;
    client.patch(info.kind, &globals.namespace, &name, &replicas_patch(args.replicas)).await?;
    outln!("{} scaled", resource::object_ref(info, &name));
    Ok(())
}

/// Only kinds with spec.replicas scale, and never below zero.
fn check(info: &KindInfo, replicas: i32) -> Result<()> {
    if !matches!(info.kind, "Deployment" | "ReplicaSet" | "StatefulSet") {
        bail!("cannot scale {}: only deployments, replicasets and statefulsets scale", info.plural);
    }
    if replicas < 0 {
        bail!("--replicas must be 0 or more, not {replicas}");
    }
    Ok(())
}

fn replicas_patch(replicas: i32) -> serde_json::Value {
    json!({"spec": {"replicas": replicas}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_workloads_only_and_never_below_zero() {
        assert!(check(resource::lookup("deploy").unwrap(), 3).is_ok());
        assert!(check(resource::lookup("rs").unwrap(), 0).is_ok());
        assert!(check(resource::lookup("sts").unwrap(), 1).is_ok());
        let err = check(resource::lookup("svc").unwrap(), 1).unwrap_err().to_string();
        assert_eq!(err, "cannot scale services: only deployments, replicasets and statefulsets scale");
        assert!(check(resource::lookup("deploy").unwrap(), -1).is_err());
        assert_eq!(replicas_patch(3), json!({"spec": {"replicas": 3}}));
    }
}
