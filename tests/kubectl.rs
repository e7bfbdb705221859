//! Real kubectl (1.32, the machine's) against skiff's Kubernetes REST API
//! (`--rest-listen`), on a cluster whose pods run as real containers: a
//! kubelet on containerd, the scheduler and the controller-manager. Every
//! command's exit status and the cluster state after it are checked.
//!
//! Needs root, `scripts/install-deps` and kubectl on PATH; build first:
//! `cargo build --workspace --bins && cargo test -p skiff-tests --test kubectl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_testkit::runtime::{BUSYBOX_IMAGE, TESTSERVER_IMAGE};
use skiff_testkit::Cluster;

const NODE: &str = "kubectl-node";
const WAIT: Duration = Duration::from_secs(120);

/// kubectl with its own HOME (discovery cache) and a kubeconfig for the cluster.
struct Kubectl {
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(cluster: &Cluster) -> Kubectl {
        let home = tempfile::tempdir().expect("a temp HOME");
        let kubeconfig = home.path().join(".kube").join("config");
        cluster.write_kubeconfig(&kubeconfig, "skiff").expect("write the kubeconfig");
        Kubectl { home, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command
            .args(args)
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn run_with(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
        use std::io::Write;
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("kubectl is on PATH (the machine image has kubectl 1.32)");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write kubectl's stdin");
        child.wait_with_output().expect("kubectl ran")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, "", &[])
    }

    /// Runs kubectl, asserts it succeeded, and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, "", &[])
    }

    fn ok_with(&self, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> String {
        let out = self.run_with(args, stdin, env);
        assert!(out.status.success(), "kubectl {}: {}\n{}", args.join(" "), text(&out.stderr), text(&out.stdout));
        text(&out.stdout)
    }

    /// Runs kubectl until its stdout satisfies `check` (the cluster
    /// converges on its own time), returning that stdout.
    fn until(&self, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.run(args);
            let stdout = text(&out.stdout);
            if out.status.success() && check(&stdout) {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: kubectl {} last printed {stdout}{}",
                args.join(" "),
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).expect("kubectl -o json prints JSON")
    }
}

/// A long-running kubectl (`-w`, `-f`) whose output lines are read as
/// they come; killed on drop.
struct Follow {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follow {
    fn start(k: &Kubectl, args: &[&str]) -> Follow {
        use std::io::BufRead;
        let mut child = k.command(args).spawn().expect("kubectl starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follow { child, lines }
    }

    /// Reads lines until one satisfies `check`.
    fn until(&mut self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if check(&line) => return,
                Ok(line) => seen.push(line),
                Err(_) => panic!("{what}: kubectl printed {seen:?}"),
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a manifest");
    path
}

async fn cluster() -> Cluster {
    Cluster::start_with_workers(NODE).await.expect("start a cluster with a runtime and a kubelet")
}

fn manifest(image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {image}
        command: ["sh", "-c", "echo hello from $HOSTNAME; while true; do sleep 1; done"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: blue
"#
    )
}

#[tokio::test]
async fn kubectl_drives_a_cluster_with_real_containers() {
    let cluster = cluster().await;
    let runtime = cluster.runtime().expect("the runtime");
    let busybox = runtime.registry().image(BUSYBOX_IMAGE);
    let testserver = runtime.registry().image(TESTSERVER_IMAGE);
    let k = Kubectl::new(&cluster);
    let dir = k.home.path().to_path_buf();

    // Discovery and schema.
    assert!(k.ok(&["version"]).contains("Server Version: v1.32"));
    let resources = k.ok(&["api-resources"]);
    for line in ["deployments", "deploy", "apps/v1", "pods", "po"] {
        assert!(resources.contains(line), "api-resources lacks {line}: {resources}");
    }
    assert!(k.ok(&["explain", "deployment.spec.replicas"]).contains("Number of desired pods"));

    // A multi-document manifest, applied client-side, then again (no change).
    let app = write(&dir, "app.yaml", &manifest(&busybox));
    let app = app.to_str().unwrap();
    let applied = k.ok(&["apply", "-f", app]);
    for created in ["deployment.apps/web created", "service/web created", "configmap/settings created"] {
        assert!(applied.contains(created), "{applied}");
    }
    assert!(k.ok(&["apply", "-f", app]).contains("deployment.apps/web unchanged"));
    k.ok(&["wait", "--for=condition=Available", "deployment/web", "--timeout=120s"]);
    let pods =
        k.until(&["get", "pods", "-l", "app=web"], "two running pods", |out| out.matches("Running").count() == 2);
    assert!(pods.starts_with("NAME"), "a table: {pods}");
    assert_eq!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.status.readyReplicas}"]), "2");
    let wide = k.ok(&["get", "deploy", "web", "-o", "wide"]);
    assert!(wide.contains("IMAGES") && wide.contains(&busybox), "{wide}");
    let yaml = k.ok(&["get", "configmap", "settings", "-o", "yaml"]);
    assert!(yaml.contains("mode: blue"), "{yaml}");
    let all = k.ok(&["get", "all"]);
    for kind in ["deployment.apps/web", "service/web", "replicaset.apps/web-", "pod/web-"] {
        assert!(all.contains(kind), "get all lacks {kind}: {all}");
    }
    let described = k.ok(&["describe", "deployment", "web"]);
    assert!(described.contains("Replicas:") && described.contains("2 desired"), "{described}");

    // Logs of a real container.
    let pod = k.json(&["get", "pods", "-l", "app=web"])["items"][0]["metadata"]["name"].as_str().unwrap().to_string();
    k.until(&["logs", &pod], "the container's log", |out| out.contains(&format!("hello from {pod}")));

    // kubectl top, through metrics.k8s.io.
    let top = k.ok(&["top", "pod", "-l", "app=web"]);
    assert!(top.contains("CPU(cores)") && top.contains(&pod) && top.contains("Mi"), "{top}");
    let nodes = k.ok(&["top", "node"]);
    assert!(nodes.contains("CPU(%)") && nodes.contains(NODE), "{nodes}");

    // diff and a server-side dry run show a change without making it.
    let changed = write(&dir, "changed.yaml", &manifest(&busybox).replace("mode: blue", "mode: amber"));
    let changed = changed.to_str().unwrap();
    let diff = k.run(&["diff", "-f", changed]);
    assert_eq!(diff.status.code(), Some(1), "diff exits 1 when something differs: {}", text(&diff.stderr));
    assert!(text(&diff.stdout).contains("+  mode: amber"), "{}", text(&diff.stdout));
    assert!(k.ok(&["apply", "-f", changed, "--dry-run=server"]).contains("configured (server dry run)"));
    assert_eq!(k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]), "blue");

    // exec over WebSocket: output, stderr and the exit code; stdin; cp.
    let out = k.run(&["exec", &pod, "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));
    assert_eq!(k.ok_with(&["exec", "-i", &pod, "--", "tr", "a-z", "A-Z"], "hello\n", &[]), "HELLO\n");
    let local = write(&dir, "copied.txt", "copied through tar\n");
    k.ok(&["cp", local.to_str().unwrap(), &format!("{pod}:/tmp/copied.txt")]);
    assert_eq!(k.ok(&["exec", &pod, "--", "cat", "/tmp/copied.txt"]), "copied through tar\n");
    let back = dir.join("back.txt");
    k.ok(&["cp", &format!("{pod}:/tmp/copied.txt"), back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied through tar\n");

    // Scale, label, annotate; each one visible in the object.
    assert!(k.ok(&["scale", "deployment/web", "--replicas=3"]).contains("scaled"));
    k.until(&["get", "deploy", "web", "-o", "jsonpath={.status.readyReplicas}"], "three ready", |out| out == "3");
    k.ok(&["label", "deployment", "web", "tier=front"]);
    k.ok(&["annotate", "deployment", "web", "owner=team-a"]);
    let web = k.json(&["get", "deployment", "web"]);
    assert_eq!(web["metadata"]["labels"]["tier"], "front");
    assert_eq!(web["metadata"]["annotations"]["owner"], "team-a");

    // A new image rolls out; history has both revisions; undo goes back.
    k.ok(&["set", "image", "deployment/web", &format!("web={testserver}")]);
    let status = k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let history = k.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    k.ok(&["rollout", "undo", "deployment/web"]);
    k.until(
        &["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"],
        "the undone image",
        |out| out == busybox,
    );
    k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);

    // edit with a scripted editor.
    k.ok_with(
        &["edit", "configmap", "settings"],
        "",
        &[("EDITOR", "sed -i s/mode:\\ blue/mode:\\ green/"), ("KUBE_EDITOR", "")],
    );
    assert_eq!(k.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]), "green");

    // Watches print the current state, then follow changes: as values,
    // and as the table rows kubectl prints by default.
    let mut values = Follow::start(&k, &["get", "configmap", "settings", "-w", "-o", "jsonpath={.data.mode}{\"\\n\"}"]);
    let mut rows = Follow::start(&k, &["get", "configmap", "settings", "-w"]);
    values.until("the current value", |line| line == "green");
    rows.until("the table header", |line| line.starts_with("NAME") && line.contains("DATA"));
    rows.until("the current row", |line| line.starts_with("settings "));
    k.ok(&["patch", "configmap", "settings", "--type=merge", "-p", r#"{"data":{"mode":"red"}}"#]);
    values.until("the changed value", |line| line == "red");
    rows.until("the changed row", |line| line.starts_with("settings "));

    // logs -f follows a running container (one of the Deployment's, as
    // kubectl picks it).
    Follow::start(&k, &["logs", "-f", "deployment/web"])
        .until("the followed log", |l| l.starts_with("hello from web-"));

    // Server-side apply: fields a manager drops go, another manager's
    // different value conflicts unless forced.
    let ssa = |data: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n{data}");
    let first = write(&dir, "ssa1.yaml", &ssa("  a: \"1\"\n  b: \"2\"\n"));
    assert!(k.ok(&["apply", "--server-side", "-f", first.to_str().unwrap()]).contains("serverside-applied"));
    let second = write(&dir, "ssa2.yaml", &ssa("  a: \"1\"\n"));
    k.ok(&["apply", "--server-side", "-f", second.to_str().unwrap()]);
    assert_eq!(k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data}"]), r#"{"a":"1"}"#);
    let other = write(&dir, "ssa3.yaml", &ssa("  a: \"9\"\n"));
    let conflict = k.run(&["apply", "--server-side", "--field-manager=other", "-f", other.to_str().unwrap()]);
    assert!(!conflict.status.success());
    assert!(text(&conflict.stderr).contains(r#"conflict with "kubectl""#), "{}", text(&conflict.stderr));
    k.ok(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", other.to_str().unwrap()]);
    assert_eq!(k.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]), "9");

    // Imperative commands, which kubectl sends as protobuf.
    k.ok(&["create", "configmap", "literal", "--from-literal=greeting=hi"]);
    assert_eq!(k.ok(&["get", "cm", "literal", "-o", "jsonpath={.data.greeting}"]), "hi");
    k.ok(&["create", "deployment", "made", &format!("--image={busybox}"), "--", "sleep", "3600"]);
    k.ok(&["expose", "deployment", "made", "--port=80", "--target-port=8080"]);
    let svc = k.json(&["get", "service", "made"]);
    assert!(svc["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.starts_with("10.43.")), "{svc}");
    assert_eq!(svc["spec"]["selector"]["app"], "made");
    k.ok(&["rollout", "status", "deployment/made", "--timeout=120s"]);
    k.ok(&["run", "once", &format!("--image={busybox}"), "--restart=Never", "--", "sh", "-c", "echo ran"]);
    k.ok(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/once", "--timeout=120s"]);
    k.until(&["logs", "once"], "the finished pod's log", |out| out == "ran\n");
    k.ok(&["delete", "deployment/made", "service/made", "pod/once", "configmap/literal"]);

    // pods/proxy and services/proxy reach a pod's HTTP server.
    let httpd = "echo proxied > /tmp/index.html; exec httpd -f -p 8080 -h /tmp";
    k.ok(&["run", "http", &format!("--image={busybox}"), "--port=8080", "--", "sh", "-c", httpd]);
    k.ok(&["wait", "--for=condition=Ready", "pod/http", "--timeout=120s"]);
    let page = "/api/v1/namespaces/default/pods/http:8080/proxy/index.html";
    k.until(&["get", "--raw", page], "the pod's page through pods/proxy", |out| out == "proxied\n");
    k.ok(&["expose", "pod", "http", "--port=80", "--target-port=8080"]);
    let page = "/api/v1/namespaces/default/services/http:80/proxy/index.html";
    k.until(&["get", "--raw", page], "the page through services/proxy", |out| out == "proxied\n");
    k.ok(&["delete", "pod/http", "service/http"]);

    // Authorization answers, and bad input is refused with the field named.
    assert_eq!(k.ok(&["auth", "can-i", "create", "deployments"]).trim(), "yes");
    // An unknown user (impersonated, as the admin may) is granted nothing.
    let bob = k.run(&["auth", "can-i", "create", "deployments", "--as=bob"]);
    assert_eq!(bob.status.code(), Some(1));
    assert!(text(&bob.stdout).starts_with("no"), "{}", text(&bob.stdout));
    let as_bob = k.run(&["get", "pods", "--as=bob"]);
    assert!(text(&as_bob.stderr).contains("Forbidden"), "{}", text(&as_bob.stderr));
    let invalid = write(&dir, "invalid.yaml", &manifest(&busybox).replace("replicas: 2", "replicas: -1"));
    let out = k.run(&["apply", "-f", invalid.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("spec.replicas"), "{}", text(&out.stderr));
    let missing = k.run(&["get", "deployment", "nothing-here"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains(r#"deployments.apps "nothing-here" not found"#),
        "{}",
        text(&missing.stderr)
    );

    // Foreground deletion: kubectl returns once the Deployment is gone, and
    // its ReplicaSets and pods went first.
    k.ok(&["delete", "deployment", "web", "--cascade=foreground", "--timeout=120s"]);
    assert!(!k.run(&["get", "deployment", "web"]).status.success());
    k.until(&["get", "pods", "-l", "app=web", "-o", "name"], "the pods gone", |out| out.trim().is_empty());
    k.ok(&["delete", "-f", app, "--ignore-not-found"]);
    assert!(!k.run(&["get", "configmap", "settings"]).status.success());
}
