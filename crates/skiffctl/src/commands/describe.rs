//! `skiffctl describe KIND [NAME...]`: each object (every one in the
//! namespace when none is named) with the Events about it.

use anyhow::{Context, Result};
use chrono::Utc;
use serde_json::Value;
use skiff_api::{meta, KindInfo};
use skiff_client::{Client, ListParams};

use super::{error_message, AlreadyReported, Globals};
use crate::{describe, resource};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kind, e.g. pods, deploy, svc, nodes.
    pub kind: String,
    /// Objects to describe (every one in the namespace when none is named).
    pub names: Vec<String>,
    /// Describe the objects whose labels match (instead of names).
    #[arg(short = 'l', long = "selector", conflicts_with = "names")]
    pub selector: Option<String>,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let info = resource::lookup(&args.kind)?;
    let namespace = resource::scope(info, &globals.namespace);
    let client = globals.client()?;
    let mut failed = false;
    let objects = if args.names.is_empty() {
        let params = ListParams::default().labels(args.selector.as_deref().unwrap_or(""));
        client.list(info.kind, namespace, &params).await?.items
    } else {
        let mut objects = Vec::new();
        for name in &args.names {
            match client.get(info.kind, namespace, name).await {
                Ok(obj) => objects.push(obj),
                Err(e) => {
                    eprintln!("error: {}", error_message(&e.into()));
                    failed = true;
                }
            }
        }
        objects
    };
    for (i, obj) in objects.iter().enumerate() {
        let related = describe::Related {
            events: events_about(&client, info, obj).await?,
            endpoints: backend_endpoints(&client, info, obj).await,
        };
        if i > 0 {
            outln!();
        }
        out!("{}", describe::describe(info, obj, &related, Utc::now()));
    }
    if failed {
        return Err(AlreadyReported.into());
    }
    Ok(())
}

/// For an Ingress, the Endpoints of each Service it routes to (those that
/// exist; a missing one is shown as such).
async fn backend_endpoints(client: &Client, info: &KindInfo, obj: &Value) -> Vec<Value> {
    if info.kind != "Ingress" {
        return Vec::new();
    }
    let spec = &obj["spec"];
    let paths = spec["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["http"]["paths"].as_array().into_iter().flatten());
    let backends = paths.map(|p| &p["backend"]).chain(std::iter::once(&spec["defaultBackend"]));
    let mut services: Vec<&str> = backends.filter_map(|b| b["service"]["name"].as_str()).collect();
    services.sort_unstable();
    services.dedup();
    let mut found = Vec::new();
    for name in services {
        if let Ok(eps) = client.get("Endpoints", meta::namespace(obj), name).await {
            found.push(eps);
        }
    }
    found
}

/// The Events whose involvedObject is `obj`, from its namespace (from every
/// namespace for a cluster-scoped object).
async fn events_about(client: &Client, info: &KindInfo, obj: &Value) -> Result<Vec<Value>> {
    let name = meta::name(obj);
    let fields = format!("involvedObject.name={name},involvedObject.kind={}", info.kind);
    let list = client
        .list("Event", meta::namespace(obj), &ListParams::default().fields(&fields))
        .await
        .with_context(|| format!("listing the events of {}", resource::object_ref(info, name)))?;
    Ok(list.items)
}
