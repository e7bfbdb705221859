//! `skiffctl logs POD [-c C] [-f] [--previous] [--tail N] [--timestamps]`:
//! a container's log, through the apiserver's PodProxy from the pod's
//! kubelet.

use std::io::Write;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::Value;
use skiff_api::proto::LogsRequest;
use skiff_client::Client;

use super::{proxy_error, Globals};

/// The annotation naming the container `logs` and `exec` pick by default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (NAME or pod/NAME).
    pub pod: String,
    /// The container (default: the pod's default-container annotation, else its first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Keep printing what the container writes until it exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The log of the previous instance (before the last restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let pod = pod_name(&args.pod)?;
    let container = container_for(&globals.client()?, &globals.namespace, pod, args.container).await?;
    let request = LogsRequest {
        namespace: globals.namespace.clone(),
        pod: pod.to_string(),
        container,
        follow: args.follow,
        previous: args.previous,
        tail_lines: (args.tail >= 0).then_some(args.tail),
        timestamps: args.timestamps,
    };
    let mut stream = globals.pod_proxy()?.logs(request).await.map_err(proxy_error)?.into_inner();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(proxy_error)?;
        stdout.write_all(&chunk.data).and_then(|()| stdout.flush()).context("writing the log")?;
    }
    Ok(())
}

/// `web` or `pod/web` (or `pods/web`, `po/web`) → `web`.
pub fn pod_name(arg: &str) -> Result<&str> {
    match arg.split_once('/') {
        None => Ok(arg),
        Some(("pod" | "pods" | "po", name)) if !name.is_empty() => Ok(name),
        Some(_) => anyhow::bail!("{arg:?} is not a pod: use NAME or pod/NAME"),
    }
}

/// The container named, else the one the pod names as its default, else
/// its first (saying so on stderr when there were several to choose from).
pub async fn container_for(client: &Client, namespace: &str, pod: &str, named: Option<String>) -> Result<String> {
    if let Some(name) = named {
        return Ok(name);
    }
    let obj = client.get("Pod", namespace, pod).await?;
    let (container, others) = default_container(&obj).with_context(|| format!("pod {pod:?} has no containers"))?;
    if others.len() > 1 {
        eprintln!("Defaulted container {container:?} out of: {}", others.join(", "));
    }
    Ok(container)
}

/// The default container of a pod object, and all its containers.
fn default_container(pod: &Value) -> Option<(String, Vec<String>)> {
    let names: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let annotated = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|a| names.iter().any(|n| n == a));
    let chosen = annotated.map(String::from).or_else(|| names.first().cloned())?;
    Some((chosen, names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_default_container_is_the_annotated_one_else_the_first() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(default_container(&pod), Some(("a".into(), vec!["a".into(), "b".into()])));
        let annotated = json!({
            "metadata": {"annotations": {DEFAULT_CONTAINER_ANNOTATION: "b"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
        });
        assert_eq!(default_container(&annotated).unwrap().0, "b");
        let stale = json!({
            "metadata": {"annotations": {DEFAULT_CONTAINER_ANNOTATION: "gone"}},
            "spec": {"containers": [{"name": "a"}]},
        });
        assert_eq!(default_container(&stale).unwrap().0, "a");
        assert_eq!(default_container(&json!({"spec": {"containers": []}})), None);
    }

    #[test]
    fn pod_names() {
        assert_eq!(pod_name("web").unwrap(), "web");
        assert_eq!(pod_name("pod/web").unwrap(), "web");
        assert_eq!(pod_name("po/web").unwrap(), "web");
        assert!(pod_name("deploy/web").is_err());
    }
}
