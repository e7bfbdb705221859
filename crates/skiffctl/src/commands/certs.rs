//! `skiffctl certs`: lays out a cluster's CA and every component's
//! certificate and client config in one folder, as `kubeadm init phase
//! certs` and `kubeconfig` do, for clusters started by something other than
//! `skiffctl up` (docker-compose's `init` service, bare hosts).
//!
//! Idempotent: the CA and the ServiceAccount signing key are made once and
//! kept; leaf certificates are issued anew on every run, so re-running it
//! after adding a node or an apiserver name is how they are added.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use skiff_testkit::{identity_of, ClusterPki, ADMIN};

/// The components that run with a client config of their own, by binary.
const COMPONENTS: [&str; 5] =
    ["skiff-scheduler", "skiff-controller-manager", "skiff-dns", "skiff-ingress", "skiff-overlay"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folder to write into (made if missing).
    #[arg(long, default_value = "/etc/skiff/pki")]
    pub dir: PathBuf,
    /// The apiserver's address as its clients dial it, written into every
    /// client config.
    #[arg(long, default_value = "https://apiserver:6443")]
    pub server: String,
    /// Names and addresses the apiserver's serving certificate is valid for
    /// (comma-separated; localhost and 127.0.0.1 are always added).
    #[arg(long, value_delimiter = ',')]
    pub apiserver_names: Vec<String>,
    /// A node, as NAME=IP: its kubelet's client config (`node-NAME.yaml`,
    /// user `system:node:NAME`) and serving certificate (`kubelet-NAME`).
    #[arg(long = "node", value_parser = parse_node)]
    pub nodes: Vec<(String, IpAddr)>,
    /// Names and addresses etcd's serving certificate is valid for, besides
    /// loopback (comma-separated): written as `etcd-server.*`, with the
    /// apiserver's client certificate for etcd (`apiserver-etcd-client.*`).
    #[arg(long, value_delimiter = ',')]
    pub etcd_names: Vec<String>,
    /// Also write `admin-local.yaml`: the administrator's config with this
    /// server address, for use from outside the cluster's network (such as
    /// `https://127.0.0.1:6443` where a port is published).
    #[arg(long)]
    pub local_server: Option<String>,
}

fn parse_node(value: &str) -> Result<(String, IpAddr), String> {
    let (name, ip) = value.split_once('=').ok_or_else(|| format!("{value:?}: want NAME=IP"))?;
    if let Some(problem) = skiff_api::dns_subdomain_problem(name) {
        return Err(format!("node name: {problem}"));
    }
    let ip = ip.parse().map_err(|e| format!("node {name}: address {ip:?}: {e}"))?;
    Ok((name.to_string(), ip))
}

pub fn run(args: Args) -> Result<()> {
    let mut names = args.apiserver_names.clone();
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    if let Some(host) = server_host(&args.server) {
        names.push(host);
    }
    names.sort();
    names.dedup();
    let pki = ClusterPki::open(&args.dir, &args.server, &names).with_context(|| pki_context(&args))?;
    pki.client_config("admin", ADMIN)?;
    for binary in COMPONENTS {
        pki.client_config(binary, identity_of(binary))?;
    }
    pki.etcd_tls(&args.etcd_names)?;
    for (name, ip) in &args.nodes {
        pki.node_client_config(name)?;
        pki.kubelet_tls(&format!("kubelet-{name}"), *ip)?;
    }
    if let Some(local) = &args.local_server {
        let (_, mut admin) = pki.client_config("admin-local", ADMIN)?;
        admin.server = local.clone();
        admin.save_to(&args.dir.join("admin-local.yaml"))?;
    }
    outln!("certificates and client configs written to {}", args.dir.display());
    Ok(())
}

/// The host part of `https://HOST:PORT`, which the serving certificate must name.
fn server_host(server: &str) -> Option<String> {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then(|| host.to_string())
}

fn pki_context(args: &Args) -> String {
    format!("writing the cluster's certificates into {}", args.dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component missing from `identity_of` would run as the administrator.
    #[test]
    fn every_component_has_its_own_identity() {
        for binary in COMPONENTS {
            assert_ne!(identity_of(binary).user, ADMIN.user, "{binary}");
        }
    }

    #[test]
    fn the_servers_host_is_named_in_the_certificate() {
        assert_eq!(server_host("https://apiserver:6443").as_deref(), Some("apiserver"));
        assert_eq!(server_host("https://10.0.0.1:6443/").as_deref(), Some("10.0.0.1"));
        assert_eq!(server_host("https://[fd00::1]:6443").as_deref(), Some("fd00::1"));
        assert_eq!(server_host("https://:6443"), None);
    }

    #[test]
    fn a_node_is_name_equals_address() {
        assert_eq!(parse_node("node-1=172.30.0.21").unwrap().0, "node-1");
        assert!(parse_node("node-1").unwrap_err().contains("NAME=IP"));
        assert!(parse_node("Node_1=172.30.0.21").unwrap_err().contains("node name"));
        assert!(parse_node("node-1=nowhere").unwrap_err().contains("address"));
    }

    #[test]
    fn it_writes_a_config_per_component_and_node_and_keeps_the_ca() {
        let dir = std::env::temp_dir().join(format!("skiffctl-certs-{}", std::process::id()));
        let args = || Args {
            dir: dir.clone(),
            server: "https://apiserver:6443".into(),
            apiserver_names: vec!["apiserver-1".into()],
            nodes: vec![("node-1".into(), "172.30.0.21".parse().unwrap())],
            etcd_names: vec!["etcd-1".into()],
            local_server: Some("https://127.0.0.1:6443".into()),
        };
        run(args()).unwrap();
        let ca = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        for file in ["admin.yaml", "admin-local.yaml", "skiff-scheduler.yaml", "node-node-1.yaml", "kubelet-node-1.crt"]
        {
            assert!(dir.join(file).exists(), "{file} missing");
        }
        let local = std::fs::read_to_string(dir.join("admin-local.yaml")).unwrap();
        assert!(local.contains("https://127.0.0.1:6443"), "{local}");
        run(args()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), ca, "a second run replaced the CA");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
