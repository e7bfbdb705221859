//! skiffctl against a real apiserver: applying manifests written for
//! Kubernetes, listing them (as a table, JSON, YAML or names, and watching
//! them), deleting them, and reporting bad documents one by one.

use std::path::Path;

use serde_json::{json, Value};
use skiff_testkit::{Cluster, EVENTUALLY};
use tokio::io::AsyncBufReadExt;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn apply_sample_app_then_get_it() {
    let cluster = Cluster::start().await.expect("cluster");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-app.yaml");
    let out = cluster.skiffctl(&["apply", "-f", sample.to_str().unwrap()], None).unwrap();
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in ["namespace/demo created", "deployment.apps/web created", "service/web created"] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }

    let out = cluster.skiffctl(&["get", "deploy", "-n", "demo"], None).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.lines().next().unwrap().split_whitespace().eq(["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]),
        "{table}"
    );
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");

    let out = cluster.skiffctl(&["get", "deploy", "-n", "demo", "-o", "json"], None).unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("-o json prints JSON");
    assert_eq!(list["kind"], "DeploymentList");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    assert_eq!(list["items"][0]["spec"]["replicas"], 2);

    // Applying the same file again changes nothing.
    let out = cluster.skiffctl(&["apply", "-f", sample.to_str().unwrap()], None).unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("deployment.apps/web unchanged"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn apply_reports_each_bad_document_and_applies_the_rest() {
    let cluster = Cluster::start().await.expect("cluster");
    let manifest = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: good-one}
data: {a: "1"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad-replicas}
spec:
  replicas: three
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Widget
metadata: {name: w}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: Bad_Name}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: lost, namespace: nowhere}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: good-two}
"#;
    let out = cluster.skiffctl(&["apply", "-f", "-"], Some(manifest)).unwrap();
    assert!(!out.status.success(), "exit status is non-zero when a document fails");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("document 2 (Deployment bad-replicas)") && stderr.contains("spec.replicas"), "{stderr}");
    assert!(stderr.contains("document 3") && stderr.contains("Widget"), "{stderr}");
    assert!(stderr.contains("document 4") && stderr.contains("metadata.name"), "{stderr}");
    assert!(stderr.contains("document 5") && stderr.contains("nowhere"), "{stderr}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("configmap/good-one created") && stdout.contains("configmap/good-two created"), "{stdout}");

    let client = cluster.client();
    assert!(client.get("Deployment", "default", "bad-replicas").await.unwrap_err().is_not_found());

    let out = cluster.skiffctl(&["apply", "-f", "-"], Some("kind: ConfigMap\nmetadata: {name: [unclosed\n")).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("document 1"), "{}", text(&out.stderr));

    let out = cluster.skiffctl(&["get", "deploy", "missing"], None).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
}

/// Lines `skiffctl get -w` prints, read as they come.
struct Watching {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Watching {
    fn start(cluster: &Cluster, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::from(cluster.skiffctl_command().expect("build skiffctl"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start skiffctl get -w");
        let stdout = child.stdout.take().expect("piped stdout");
        Self { child, lines: tokio::io::BufReader::new(stdout).lines() }
    }

    /// The next line that `wanted` accepts; the lines skipped on the way.
    async fn line(&mut self, what: &str, wanted: impl Fn(&[&str]) -> bool) -> (String, Vec<String>) {
        let deadline = tokio::time::Instant::now() + EVENTUALLY;
        let mut skipped = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            let line = next.unwrap_or_else(|_| panic!("timed out waiting for {what}; printed: {skipped:?}"));
            let line = line.expect("read skiffctl's output").unwrap_or_else(|| {
                let status = self.child.try_wait();
                panic!("skiffctl stopped ({status:?}) before {what}; printed: {skipped:?}")
            });
            if wanted(&line.split_whitespace().collect::<Vec<_>>()) {
                return (line, skipped);
            }
            skipped.push(line);
        }
    }
}

#[tokio::test]
async fn get_watches_changes_and_prints_yaml_and_names() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();
    for name in ["alpha", "beta"] {
        client.create("ConfigMap", "default", &json!({"metadata": {"name": name}, "data": {"k": "1"}})).await.unwrap();
    }

    let out = cluster.skiffctl(&["get", "cm", "alpha", "-o", "yaml"], None).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let alpha: Value = serde_yaml_ng::from_slice(&out.stdout).expect("-o yaml prints YAML");
    assert_eq!(alpha["kind"], "ConfigMap");
    assert_eq!(alpha["metadata"]["name"], "alpha");
    assert_eq!(alpha["data"]["k"], "1");
    let out = cluster.skiffctl(&["get", "cm", "-o", "yaml"], None).unwrap();
    let list: Value = serde_yaml_ng::from_slice(&out.stdout).expect("-o yaml prints YAML");
    assert_eq!(list["kind"], "ConfigMapList");
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().filter_map(|o| o["metadata"]["name"].as_str()).collect();
    assert_eq!(names, ["alpha", "beta"]);

    let out = cluster.skiffctl(&["get", "cm", "-o", "name"], None).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "configmap/alpha\nconfigmap/beta\n");

    // The table first, then a row for each change to the named object only.
    let mut watching = Watching::start(&cluster, &["get", "cm", "alpha", "-w"]);
    let (row, header) = watching.line("alpha's first row", |words| words.first() == Some(&"alpha")).await;
    assert!(
        header.len() == 1 && header[0].split_whitespace().eq(["NAME", "DATA", "AGE"]),
        "the header comes first: {header:?}"
    );
    assert_eq!(row.split_whitespace().nth(1), Some("1"), "{row}");
    client.patch("ConfigMap", "default", "beta", &json!({"data": {"other": "x"}})).await.unwrap();
    client.patch("ConfigMap", "default", "alpha", &json!({"data": {"k2": "2"}})).await.unwrap();
    let (_, skipped) = watching.line("a row for alpha with two keys", |words| words.starts_with(&["alpha", "2"])).await;
    assert!(skipped.iter().all(|l| l.starts_with("alpha ")), "only alpha's changes are printed: {skipped:?}");
}

#[tokio::test]
async fn delete_by_name_and_by_manifest_and_create_namespace() {
    let cluster = Cluster::start().await.expect("cluster");
    let client = cluster.client();

    let out = cluster.skiffctl(&["create", "namespace", "team"], None).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "namespace/team created\n");
    assert_eq!(client.get("Namespace", "", "team").await.unwrap()["metadata"]["name"], "team");
    let out = cluster.skiffctl(&["create", "ns", "team"], None).unwrap();
    assert!(!out.status.success(), "creating it twice fails");
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));

    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one, namespace: team}\n---\n\
                    apiVersion: v1\nkind: ConfigMap\nmetadata: {name: two, namespace: team}\n";
    let out = cluster.skiffctl(&["apply", "-f", "-"], Some(manifest)).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    client.create("ConfigMap", "team", &json!({"metadata": {"name": "three"}})).await.unwrap();

    let out = cluster.skiffctl(&["delete", "configmap", "three", "-n", "team"], None).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "configmap \"three\" deleted\n");
    assert!(client.get("ConfigMap", "team", "three").await.unwrap_err().is_not_found());
    assert!(client.get("ConfigMap", "team", "one").await.is_ok(), "only the named object goes");
    let out = cluster.skiffctl(&["delete", "configmap", "three", "-n", "team"], None).unwrap();
    assert!(!out.status.success(), "deleting a missing object fails");
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));

    let out = cluster.skiffctl(&["delete", "-f", "-"], Some(manifest)).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "configmap \"two\" deleted\nconfigmap \"one\" deleted\n", "last first");
    for name in ["one", "two"] {
        assert!(client.get("ConfigMap", "team", name).await.unwrap_err().is_not_found(), "{name} deleted");
    }
}

#[tokio::test]
async fn get_into_a_closed_pipe_exits_quietly() {
    let cluster = Cluster::start().await.expect("cluster");
    // `skiffctl get ns | head -0`, without the race: the reader is gone
    // before skiffctl writes its first line.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = cluster.skiffctl_command().unwrap().args(["get", "namespaces"]).stdout(writer).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "128 + SIGPIPE, as kubectl; stderr: {stderr}");
    assert!(stderr.is_empty(), "nothing to say: {stderr}");
}

/// `skiffctl up --state-dir B` while the cluster of state dir A runs: the
/// launcher must not take A's etcd (on the same fixed ports) for its own.
#[tokio::test]
async fn a_second_state_dir_does_not_share_the_first_clusters_etcd() {
    use skiff_testkit::{free_port, ClusterOptions};
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ports = (free_port(), free_port());
    let options = |dir: &tempfile::TempDir| ClusterOptions {
        state_dir: Some(dir.path().to_path_buf()),
        etcd_ports: Some(ports),
        ..Default::default()
    };
    let _first = Cluster::start_with(options(&first_dir)).await.expect("first cluster");
    let err = match Cluster::start_with(options(&second_dir)).await {
        Ok(_) => panic!("the second cluster started on the first one's etcd"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("port {}", ports.0)), "{err}");
    assert!(err.contains(&first_dir.path().display().to_string()), "names the other state dir: {err}");
}

/// `skiffctl up`'s etcd ports (and, with a node, its registry port, pod
/// bridge and nftables table) are fixed: its tests take turns.
static ONE_UP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `skiffctl` with its own config file and no cluster from the environment.
fn skiffctl_with(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(skiff_testkit::binary("skiffctl").expect("skiffctl is built"))
        .args(args)
        .env("SKIFF_CONFIG", config)
        // `up` adds its kubectl context here, not to the machine's ~/.kube/config.
        .env("KUBECONFIG", config.with_file_name("kubeconfig"))
        .env_remove("SKIFF_SERVER")
        .env_remove("SKIFF_STATE_DIR")
        .output()
        .expect("run skiffctl");
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `skiffctl up` starts a control plane that skiffctl then finds through
/// the config file it wrote, and `skiffctl down` stops every process it
/// started (each pid in the state dir's pid files).
#[tokio::test]
async fn up_starts_a_control_plane_that_down_stops() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_string();
    let config = state.path().join("client.yaml");
    let listen = format!("127.0.0.1:{}", skiff_testkit::free_port());
    let skiffctl = |args: &[&str]| skiffctl_with(&config, args);

    let _one_up_at_a_time = ONE_UP.lock().await;
    let (ok, _, err) = skiffctl(&["up", "--no-node", "--state-dir", &state_dir, "--listen", &listen]);
    assert!(ok, "up: {err}");
    let pids: Vec<u32> = std::fs::read_dir(state.path().join("pids"))
        .expect("up writes pid files")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .collect();
    assert!(pids.len() >= 2, "etcd and the apiserver at least: {pids:?}");

    // No --server: skiffctl reads the address up wrote to $SKIFF_CONFIG.
    let (ok, out, err) = skiffctl(&["get", "ns"]);
    assert!(ok && out.contains("default") && out.contains("kube-system"), "get ns: {out}{err}");
    // kubectl too, with no flags: up made its context current in $KUBECONFIG.
    let kubectl = std::process::Command::new("kubectl")
        .args(["get", "namespaces"])
        .env("KUBECONFIG", config.with_file_name("kubeconfig"))
        .env("HOME", state.path())
        .output()
        .expect("kubectl is on PATH");
    let out = text(&kubectl.stdout);
    assert!(kubectl.status.success() && out.contains("kube-system"), "kubectl: {out}{}", text(&kubectl.stderr));

    let (ok, _, err) = skiffctl(&["down", "--state-dir", &state_dir]);
    assert!(ok, "down: {err}");
    skiff_testkit::eventually("every process up started gone", || async {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| skiff_testkit::running(*p)).collect();
        alive.is_empty().then_some(())
    })
    .await;
}

/// Runs `skiffctl down` when dropped, so a failed assertion leaves no
/// cluster (nor its nftables table) behind; a second `down` is harmless.
struct DownOnDrop<'a> {
    config: &'a Path,
    state_dir: &'a str,
}

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = skiffctl_with(self.config, &["down", "--state-dir", self.state_dir]);
    }
}

/// A GET from this machine (the node itself); the body on 200.
fn host_get(ip: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(ip.parse().ok()?, 80);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

fn nft_tables() -> String {
    let out = std::process::Command::new("nft").args(["list", "tables"]).output().expect("run nft");
    text(&out.stdout)
}

/// The one-node `skiffctl up` (root, containerd) runs skiff-overlay and
/// skiff-dns: a pod reaches a Service by its DNS name and ClusterIP, the
/// node reaches the ClusterIP too, and `skiffctl down` removes the
/// overlay's nftables table.
#[tokio::test]
async fn up_with_a_node_serves_cluster_ips_and_dns_and_down_removes_its_rules() {
    let _one_up_at_a_time = ONE_UP.lock().await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_string();
    let config = state.path().join("client.yaml");
    let skiffctl = |args: &[&str]| skiffctl_with(&config, args);
    let listen = format!("127.0.0.1:{}", skiff_testkit::free_port());
    let (http, https) = (skiff_testkit::free_port().to_string(), skiff_testkit::free_port().to_string());

    let down = DownOnDrop { config: &config, state_dir: &state_dir };
    let (ok, out, err) =
        skiffctl(&["up", "--state-dir", &state_dir, "--listen", &listen, "--http-port", &http, "--https-port", &https]);
    assert!(ok, "up: {out}{err}");
    assert!(out.contains("skiff-dns, skiff-overlay"), "up names what runs: {out}");
    assert!(nft_tables().contains("table ip skiff-local"), "the overlay's table: {}", nft_tables());

    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-app.yaml");
    let (ok, out, err) = skiffctl(&["apply", "-f", sample.to_str().unwrap()]);
    assert!(ok, "apply: {out}{err}");
    let client = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: sh\n    image: 127.0.0.1:5000/busybox:latest\n    command: [sleep, '3600']\n";
    let manifest = state.path().join("client-pod.yaml");
    std::fs::write(&manifest, client).unwrap();
    let (ok, out, err) = skiffctl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "apply: {out}{err}");

    let (ok, out, err) = skiffctl(&["get", "svc", "web", "-n", "demo", "-o", "json"]);
    assert!(ok, "get svc: {out}{err}");
    let service: Value = serde_json::from_str(&out).unwrap();
    let cluster_ip = service["spec"]["clusterIP"].as_str().expect("a ClusterIP").to_string();

    let exec = |script: &str| {
        let (ok, out, _) = skiffctl(&["exec", "-n", "demo", "client", "--", "sh", "-c", script]);
        ok.then_some(out)
    };
    let page = "Hello from skiff";
    // busybox 1.35's `wget -T` crashes: `timeout` bounds it.
    let by_ip = format!("timeout 5 wget -qO- http://{cluster_ip}/");
    skiff_testkit::eventually("the ClusterIP to answer the pod", || async {
        exec(&by_ip).filter(|body| body.contains(page))
    })
    .await;
    let resolv = exec("cat /etc/resolv.conf").expect("the client pod runs");
    assert!(resolv.contains(&format!("nameserver {}", skiff_testkit::DNS_SERVICE_IP)), "{resolv}");
    skiff_testkit::eventually("the Service's DNS name to answer the pod", || async {
        exec("timeout 5 wget -qO- http://web.demo.svc.cluster.local/").filter(|body| body.contains(page))
    })
    .await;
    let lookup = exec("nslookup web.demo.svc.cluster.local").unwrap_or_default();
    assert!(lookup.contains(&cluster_ip), "the name is the ClusterIP: {lookup}");
    skiff_testkit::eventually("the ClusterIP to answer the node", || async {
        host_get(&cluster_ip, "/").filter(|body| body.contains(page))
    })
    .await;

    let (ok, out, err) = skiffctl(&["down", "--state-dir", &state_dir]);
    assert!(ok, "down: {out}{err}");
    drop(down);
    assert!(!nft_tables().contains("skiff-local"), "down removes the overlay's table: {}", nft_tables());
}
