//! skiff on bare hosts with `deploy/install.sh`: the server role on one
//! host and the node role on another (network namespaces on a LAN, each
//! install under a root folder of its own), the node joining with the
//! command `skiffctl token create --print-join-command` printed. The units
//! pass `systemd-analyze verify`; as systemd is not PID 1 here, the
//! testkit's unit runner starts them. The node must register, become Ready
//! and run a pod.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use skiff_client::{Client, ClientConfig};
use skiff_testkit::netns::{Host, Lan};
use skiff_testkit::runtime::{ensure_test_images, Registry};
use skiff_testkit::{eventually, free_port, units, Process};

const SERVER_UNITS: [&str; 6] = ["etcd", "apiserver", "scheduler", "controller-manager", "dns", "ingress"];
const NODE_UNITS: [&str; 3] = ["containerd", "kubelet", "overlay"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `deploy/install.sh ARGS` with the test's binaries; its output.
fn install(args: &[&str]) -> String {
    let bin_dir = skiff_testkit::bin_dir();
    let out = Command::new(repo().join("deploy/install.sh"))
        .args(args)
        .args(["--bin-dir", &bin_dir.display().to_string()])
        .output()
        .expect("install.sh runs");
    assert!(out.status.success(), "install.sh {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Every unit passes `systemd-analyze verify` with `root` as the host (the
/// distribution's own units copied in, since units reach for their targets).
fn verify_units(root: &Path, names: &[&str]) {
    let system = root.join("usr/lib/systemd/system");
    if !system.exists() {
        std::fs::create_dir_all(system.parent().unwrap()).unwrap();
        let copied = Command::new("cp").arg("-r").arg("/usr/lib/systemd/system").arg(&system).status().unwrap();
        assert!(copied.success(), "copying the distribution's units");
    }
    for name in names {
        let unit = format!("skiff-{name}.service");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(&unit)
            .output()
            .expect("systemd-analyze (Debian: systemd) runs");
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify {unit}: {said}");
    }
}

/// The programs a node's units start that install.sh does not copy
/// (containerd is the distribution's), linked into `root` for verify.
fn link_host_programs(root: &Path) {
    let dir = root.join("usr/bin");
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("containerd");
    if !target.exists() && std::fs::hard_link("/usr/bin/containerd", &target).is_err() {
        std::fs::copy("/usr/bin/containerd", &target).unwrap();
    }
}

fn start(root: &Path, host: &Host, logs: &Path, names: &[&str], processes: &mut Vec<Process>) {
    for name in names {
        let unit = units::load(root, &format!("skiff-{name}")).unwrap();
        // wireguard-go's control socket path is the same in every namespace.
        processes.push(unit.spawn(host, logs, *name == "overlay").unwrap());
    }
}

/// The last lines a unit logged.
fn tail(logs: &Path, unit: &str) -> String {
    let log = std::fs::read_to_string(logs.join("logs").join(format!("{unit}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn node_ready(node: &Value) -> bool {
    let conditions = node["status"]["conditions"].as_array();
    conditions.is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[tokio::test]
async fn a_server_and_a_joined_node_installed_by_install_sh_run_a_pod() {
    let work = tempfile::tempdir().unwrap();
    let (server_root, node_root, logs) =
        (work.path().join("server"), work.path().join("node"), work.path().to_path_buf());
    for d in ["logs", "pids"] {
        std::fs::create_dir_all(logs.join(d)).unwrap();
    }
    let mut lan = Lan::create().expect("a LAN (root needed)");
    let (server, node) = (lan.add_host("server").unwrap(), lan.add_host("node").unwrap());
    let registry = Registry::start(&logs, (lan.gateway(), free_port()).into(), false).await.unwrap();
    ensure_test_images(&registry).await.unwrap();
    let mut processes = Vec::new();

    // The server.
    let said = install(&[
        "server",
        "--root",
        &server_root.display().to_string(),
        "--advertise-address",
        &server.ip().to_string(),
    ]);
    assert!(said.contains("token create --print-join-command"), "{said}");
    verify_units(&server_root, &SERVER_UNITS);
    start(&server_root, &server, &logs, &SERVER_UNITS, &mut processes);
    let admin_file = server_root.join("etc/skiff/pki/admin.yaml");
    let admin = Client::connect(&ClientConfig::load_from(&admin_file).unwrap().unwrap()).unwrap();
    eventually("the server's apiserver to answer", || async {
        admin.list("Namespace", "", &Default::default()).await.ok()
    })
    .await;

    // The join command, as an operator would copy it.
    let skiffctl = skiff_testkit::binary("skiffctl").unwrap();
    let out = Command::new(&skiffctl)
        .args(["--kubeconfig", &admin_file.display().to_string(), "token", "create", "--print-join-command"])
        .output()
        .unwrap();
    assert!(out.status.success(), "token create: {}", text(&out.stderr));
    let join = text(&out.stdout);
    let join_args: Vec<&str> = join.split_whitespace().skip_while(|w| *w != "node").collect();
    assert!(join_args.contains(&"--token") && join_args.contains(&"--ca-cert-base64"), "{join}");

    // The node: nothing of the server's but that command.
    let mut args = join_args.clone();
    let (root, ip, mirror) =
        (node_root.display().to_string(), node.ip().to_string(), format!("http://{}", registry.host()));
    args.extend(["--root", &root, "--node-name", "node-1", "--node-ip", &ip, "--registry-mirror", &mirror]);
    install(&args);
    link_host_programs(&node_root);
    verify_units(&node_root, &NODE_UNITS);
    assert!(!node_root.join("etc/skiff/pki/ca.key").exists(), "no CA key on a node");
    start(&node_root, &node, &logs, &NODE_UNITS, &mut processes);

    eventually("node-1 Ready", || async { admin.get("Node", "", "node-1").await.ok().filter(node_ready) }).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello"},
        "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/busybox:latest", "command": ["sleep", "3600"]}]}});
    admin.create("Pod", "default", &pod).await.unwrap();
    let mut running = None;
    for _ in 0..600 {
        let pod = admin.get("Pod", "default", "hello").await.unwrap();
        if pod["status"]["phase"] == "Running" {
            running = Some(pod);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let running = running.unwrap_or_else(|| {
        let pod = futures::executor::block_on(admin.get("Pod", "default", "hello")).unwrap_or_default();
        panic!(
            "the pod is not Running: {pod}\n--- kubelet ---\n{}\n--- containerd ---\n{}",
            tail(&logs, "skiff-kubelet"),
            tail(&logs, "skiff-containerd")
        )
    });
    assert_eq!(running["spec"]["nodeName"], "node-1");

    // Pods go before their node's containerd does, so CNI releases them.
    admin.delete("Pod", "default", "hello").await.unwrap();
    eventually("the pod gone", || async { admin.get("Pod", "default", "hello").await.err() }).await;
    for mut process in processes.into_iter().rev() {
        process.stop(std::time::Duration::from_secs(10));
    }
    drop(registry);
}
