//! `skiffctl top pod [NAME] [-A]`: CPU and memory of pods, as the kubelets
//! of their nodes measure them, through the apiserver's PodProxy Stats.
//! Printed as kubectl prints them: CPU in millicores, memory in Mi (Ki for
//! pods under 1 Mi, which kubectl would show as a bare 0Mi).

use anyhow::{bail, Result};
use skiff_api::proto::{PodStats, StatsRequest};

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
    let What::Pod(args) = args.what;
    let pod = args.name.as_deref().map(pod_name).transpose()?.unwrap_or_default().to_string();
    let namespace = if args.all_namespaces { String::new() } else { globals.namespace.clone() };
    let request = StatsRequest { namespace: namespace.clone(), pod: pod.clone() };
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
