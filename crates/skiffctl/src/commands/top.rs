//! `skiffctl top pod [NAME] [-A]` and `skiffctl top node [NAME]`: CPU and
//! memory of pods, or of the nodes' hosts, as the kubelets measure them,
//! through the apiserver's PodProxy Stats. Printed as kubectl prints them:
//! CPU in millicores, memory in Mi (Ki for pods under 1 Mi, which kubectl
//! would show as a bare 0Mi), a node's share of its allocatable in percent.

use anyhow::{bail, Result};
use serde_json::Value;
use skiff_api::proto::{NodeStats, PodStats, StatsRequest};
use skiff_api::quantity::parse_milli;

use super::logs::pod_name;
use super::{proxy_error, Globals};
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// CPU and memory of one pod, or of every pod of the namespace.
    #[command(visible_alias = "pods", visible_alias = "po")]
    Pod(PodArgs),
    /// CPU and memory of one node, or of every node.
    #[command(visible_alias = "nodes", visible_alias = "no")]
    Node {
        /// The node; every node without it.
        name: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct PodArgs {
    /// The pod (NAME or pod/NAME); every pod of the namespace without it.
    pub name: Option<String>,
    /// Pods of every namespace.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let args = match args.what {
        What::Pod(args) => args,
        What::Node { name } => return top_nodes(globals, name).await,
    };
    let pod = args.name.as_deref().map(pod_name).transpose()?.unwrap_or_default().to_string();
    let namespace = if args.all_namespaces { String::new() } else { globals.namespace.clone() };
    let request = StatsRequest { namespace: namespace.clone(), pod: pod.clone(), nodes: false };
    let pods = globals.pod_proxy()?.stats(request).await.map_err(proxy_error)?.into_inner().pods;
    if pods.is_empty() {
        if !pod.is_empty() {
            bail!("metrics not available for pod {namespace}/{pod}");
        }
        match namespace.as_str() {
            "" => eprintln!("No resources found"),
            ns => eprintln!("No resources found in {ns} namespace."),
        }
        return Ok(());
    }
    out!("{}", table(&pods, args.all_namespaces).render());
    Ok(())
}

async fn top_nodes(globals: &Globals, name: Option<String>) -> Result<()> {
    let request = StatsRequest { nodes: true, ..Default::default() };
    let mut nodes = globals.pod_proxy()?.stats(request).await.map_err(proxy_error)?.into_inner().nodes;
    if let Some(name) = &name {
        nodes.retain(|n| &n.name == name);
        if nodes.is_empty() {
            bail!("metrics not available for node {name}");
        }
    }
    if nodes.is_empty() {
        eprintln!("No resources found");
        return Ok(());
    }
    let client = globals.client()?;
    let mut rows = Vec::new();
    for node in &nodes {
        let allocatable = client.get("Node", "", &node.name).await.ok().map(|n| n["status"]["allocatable"].clone());
        rows.push((node, allocatable.unwrap_or(Value::Null)));
    }
    out!("{}", node_table(&rows).render());
    Ok(())
}

/// NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%), as kubectl's.
fn node_table(nodes: &[(&NodeStats, Value)]) -> Table {
    let header = ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"].map(String::from).into();
    let mut table = Table::new(header);
    for (node, allocatable) in nodes {
        let cpu = node.cpu.as_ref().map_or(0, |c| c.usage_nano_cores);
        let memory = node.memory.as_ref().map_or(0, |m| m.working_set_bytes);
        let of = |resource: &str, used_milli: i128| {
            let total = allocatable[resource].as_str().and_then(|q| parse_milli(q).ok()).filter(|t| *t > 0);
            total.map_or("<unknown>".to_string(), |t| format!("{}%", used_milli * 100 / t))
        };
        table.rows.push(vec![
            node.name.clone(),
            millicores(cpu),
            of("cpu", i128::from(cpu / 1_000_000)),
            bytes(memory),
            of("memory", i128::from(memory) * 1000),
        ]);
    }
    table
}

fn table(pods: &[PodStats], with_namespace: bool) -> Table {
    let mut header: Vec<String> = ["NAME", "CPU(cores)", "MEMORY(bytes)"].map(String::from).into();
    if with_namespace {
        header.insert(0, "NAMESPACE".into());
    }
    let mut table = Table::new(header);
    for p in pods {
        let cpu = p.cpu.as_ref().map_or(0, |c| c.usage_nano_cores);
        let memory = p.memory.as_ref().map_or(0, |m| m.working_set_bytes);
        let mut row = vec![p.name.clone(), millicores(cpu), bytes(memory)];
        if with_namespace {
            row.insert(0, p.namespace.clone());
        }
        table.rows.push(row);
    }
    table
}

fn millicores(nano_cores: u64) -> String {
    format!("{}m", nano_cores / 1_000_000)
}

fn bytes(n: u64) -> String {
    const KI: u64 = 1024;
    const MI: u64 = 1024 * 1024;
    match n {
        n if n >= MI => format!("{}Mi", n / MI),
        n if n >= KI => format!("{}Ki", n / KI),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::proto::{CpuStats, MemoryStats};

    fn pod(ns: &str, name: &str, nano_cores: u64, memory: u64) -> PodStats {
        PodStats {
            namespace: ns.into(),
            name: name.into(),
            cpu: Some(CpuStats { usage_nano_cores: nano_cores, ..Default::default() }),
            memory: Some(MemoryStats { working_set_bytes: memory, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_show_their_share_of_allocatable() {
        let node = NodeStats {
            name: "n1".into(),
            cpu: Some(CpuStats { usage_nano_cores: 500_000_000, ..Default::default() }),
            memory: Some(MemoryStats { working_set_bytes: 2 * 1024 * 1024 * 1024, ..Default::default() }),
        };
        let allocatable = serde_json::json!({"cpu": "2", "memory": "8Gi"});
        assert_eq!(
            node_table(&[(&node, allocatable), (&node, Value::Null)]).render(),
            "NAME   CPU(cores)   CPU(%)      MEMORY(bytes)   MEMORY(%)\n\
             n1     500m         25%         2048Mi          25%\n\
             n1     500m         <unknown>   2048Mi          <unknown>\n"
        );
    }

    #[test]
    fn columns_are_millicores_and_mebibytes() {
        let pods = [pod("default", "web", 12_500_000, 3 * 1024 * 1024 + 5), pod("default", "tiny", 0, 300 * 1024)];
        assert_eq!(
            table(&pods, false).render(),
            "NAME   CPU(cores)   MEMORY(bytes)\nweb    12m          3Mi\ntiny   0m           300Ki\n"
        );
        let all = table(&pods[..1], true).render();
        assert!(all.starts_with("NAMESPACE   NAME   CPU(cores)"), "{all}");
        assert_eq!(bytes(512), "512");
    }
}
