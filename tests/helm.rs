//! charts/skiff: `helm lint` passes, `helm template` renders the control
//! plane and node agents with the values asked for (and only kinds skiff
//! serves, with flags its binaries take), and the rendered manifests apply
//! cleanly to a real skiff apiserver.
//!
//! The helm binary is `$HELM` when set, else the one packed in
//! `../shared/tools` beside the checkout (where these machines and CI keep
//! it), else `helm` on PATH; without any of them the tests fail saying so
//! rather than pass unchecked.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use skiff_api::kinds::KindInfo;
use skiff_client::ClientConfig;
use skiff_testkit::runtime::RuntimeOptions;
use skiff_testkit::{eventually, Cluster, ClusterOptions};

const NS: &str = "skiff-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/skiff")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The newest `helm-v*-linux-amd64.xz` in `../shared/tools`, unpacked once
/// into cargo's temp dir for tests.
fn helm_from_shared_tools() -> Option<PathBuf> {
    let tools = repo().join("../shared/tools");
    let mut packed: Vec<PathBuf> = std::fs::read_dir(&tools)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("helm-v") && n.ends_with("-linux-amd64.xz"))
        })
        .collect();
    packed.sort();
    let packed = packed.pop()?;
    let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join(packed.file_stem()?);
    if dest.is_file() {
        return Some(dest);
    }
    // Unpacked beside its final name and renamed, so that test processes
    // running at once never run a half-written binary.
    let partial = dest.with_extension(format!("partial-{}", std::process::id()));
    let file = std::fs::File::create(&partial).expect("create the helm binary in CARGO_TARGET_TMPDIR");
    let status = Command::new("xz")
        .arg("-dc")
        .arg(&packed)
        .stdout(file)
        .status()
        .unwrap_or_else(|e| panic!("running xz to unpack {}: {e} (install xz-utils)", packed.display()));
    assert!(status.success(), "xz -dc {} failed: {status}", packed.display());
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).expect("chmod helm");
    std::fs::rename(&partial, &dest).expect("move helm into place");
    Some(dest)
}

fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let found = std::env::var_os("HELM")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(helm_from_shared_tools)
            .or_else(|| {
                Command::new("helm").arg("version").output().ok().filter(|o| o.status.success()).map(|_| "helm".into())
            });
        found.unwrap_or_else(|| {
            panic!(
                "no helm binary to check charts/skiff with: none in {} (helm-v*-linux-amd64.xz), \
                 $HELM unset, and no `helm` on PATH. Install Helm 3 (https://helm.sh/docs/intro/install/) \
                 or set HELM=/path/to/helm",
                repo().join("../shared/tools").display()
            )
        })
    })
}

/// Runs helm with its own empty config, cache and data dirs, so that
/// repositories or plugins of whoever runs the tests change nothing.
fn run_helm(args: &[&str]) -> Output {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let out = Command::new(helm())
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm().display()));
    assert!(out.status.success(), "helm {args:?} failed:\n{}{}", text(&out.stdout), text(&out.stderr));
    out
}

/// `helm template` of the chart as release `skiff` in `namespace`, with an
/// optional values file: the manifest text.
fn render(namespace: &str, values: Option<&str>) -> String {
    let chart = chart();
    let mut args = vec!["template", "skiff", chart.to_str().unwrap(), "--namespace", namespace];
    let file = values.map(values_file);
    if let Some(f) = &file {
        args.extend(["--values", f.path().to_str().unwrap()]);
    }
    text(&run_helm(&args).stdout)
}

/// The rendered objects, by `Kind/name`.
fn objects(yaml: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("helm renders YAML");
        if v.is_null() {
            continue;
        }
        let key = format!("{}/{}", v["kind"].as_str().unwrap(), v["metadata"]["name"].as_str().unwrap());
        assert!(out.insert(key.clone(), v).is_none(), "{key} rendered twice");
    }
    out
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// The one container of a workload's pod template.
fn container(workload: &Value) -> &Value {
    let containers = workload["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{}", workload["metadata"]["name"]);
    &containers[0]
}

fn args(workload: &Value) -> Vec<&str> {
    strs(&container(workload)["args"])
}

fn workloads(objs: &BTreeMap<String, Value>) -> impl Iterator<Item = (&String, &Value)> {
    objs.iter().filter(|(_, o)| matches!(o["kind"].as_str(), Some("Deployment" | "DaemonSet")))
}

/// A values file holding `values`, removed on drop.
fn values_file(values: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().expect("values file");
    std::fs::write(f.path(), values).expect("write values");
    f
}

#[test]
fn chart_lints_clean() {
    let chart = chart();
    let overrides = values_file(OVERRIDES);
    for extra in [vec![], vec!["--values", overrides.path().to_str().unwrap()]] {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend(extra);
        let report = text(&run_helm(&args).stdout);
        assert!(!report.contains("[WARNING]") && !report.contains("[ERROR]"), "{args:?}: {report}");
        assert!(report.contains("0 chart(s) failed"), "{args:?}: {report}");
    }
}

#[test]
fn defaults_render_the_control_plane_and_node_agents() {
    let objs = objects(&render(NS, None));
    let names: Vec<&String> = objs.keys().collect();
    for want in [
        "Deployment/skiff-apiserver",
        "Deployment/skiff-scheduler",
        "Deployment/skiff-controller-manager",
        "Deployment/skiff-dns",
        "Deployment/skiff-ingress",
        "DaemonSet/skiff-kubelet",
        "DaemonSet/skiff-overlay",
        "Service/skiff-apiserver",
        "Service/skiff-dns",
        "Service/skiff-ingress",
        "IngressClass/skiff",
    ] {
        assert!(objs.contains_key(want), "{want} in {names:?}");
    }
    // Nothing skiff would refuse as an unknown kind (RBAC kinds above all).
    for (key, o) in &objs {
        let kind = o["kind"].as_str().unwrap();
        let info = KindInfo::by_kind(kind).unwrap_or_else(|_| panic!("{key}: skiff serves no {kind}"));
        assert_eq!(o["apiVersion"], info.api_version, "{key}");
    }

    let apiserver = &objs["Deployment/skiff-apiserver"];
    assert!(args(apiserver).contains(&"--etcd-endpoints=http://etcd:2379"), "{:?}", args(apiserver));
    assert!(args(apiserver).contains(&"--listen=0.0.0.0:6443"), "{:?}", args(apiserver));

    for name in ["skiff-scheduler", "skiff-controller-manager"] {
        let d = &objs[&format!("Deployment/{name}")];
        assert_eq!(d["spec"]["replicas"], 2, "{name}");
        let a = args(d);
        for flag in [
            "--leader-elect=true",
            "--leader-elect-identity=$(POD_NAME)",
            &format!("--lease-namespace={NS}"),
            &format!("--server=https://skiff-apiserver.{NS}.svc:6443"),
            "--kubeconfig=/etc/skiff/pki/kubeconfig.yaml",
        ] {
            assert!(a.contains(&flag), "{name}: {flag} in {a:?}");
        }
        let env = &container(d)["env"];
        let pod_name = env.as_array().unwrap().iter().find(|e| e["name"] == "POD_NAME").expect("POD_NAME env");
        assert_eq!(pod_name["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name", "{name}");
    }

    // Every component: scraped, probed and listening on its metrics port.
    for (key, w) in workloads(&objs) {
        let c = container(w);
        let port = c["ports"].as_array().unwrap().iter().find(|p| p["name"] == "metrics").expect("a metrics port");
        let port = port["containerPort"].as_i64().unwrap();
        let ann = &w["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(ann["prometheus.io/scrape"], "true", "{key}");
        assert_eq!(ann["prometheus.io/port"], port.to_string(), "{key}");
        assert_eq!(ann["prometheus.io/path"], "/metrics", "{key}");
        assert!(args(w).contains(&format!("--metrics-listen=0.0.0.0:{port}").as_str()), "{key}: {:?}", args(w));
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{key} {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{key} {probe}");
        }
    }

    for name in ["skiff-kubelet", "skiff-overlay"] {
        let ds = &objs[&format!("DaemonSet/{name}")];
        assert_eq!(ds["spec"]["template"]["spec"]["hostNetwork"], true, "{name}");
        assert_eq!(container(ds)["securityContext"]["privileged"], true, "{name}");
        assert!(args(ds).contains(&"--node-name=$(NODE_NAME)"), "{name}: {:?}", args(ds));
    }

    let ingress = &objs["Service/skiff-ingress"];
    assert_eq!(ingress["spec"]["type"], "LoadBalancer");
    let ports: Vec<i64> =
        ingress["spec"]["ports"].as_array().unwrap().iter().filter_map(|p| p["port"].as_i64()).collect();
    assert_eq!(ports, [80, 443]);
    let dns: Vec<(i64, &str)> = objs["Service/skiff-dns"]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_i64().unwrap(), p["protocol"].as_str().unwrap()))
        .filter(|(port, _)| *port == 53)
        .collect();
    assert_eq!(dns, [(53, "UDP"), (53, "TCP")]);
}

/// Each container runs a skiff binary of this workspace and passes only
/// flags that binary's `--help` lists: a renamed flag breaks the chart here,
/// not at a pod's first start.
#[test]
fn rendered_commands_use_real_binaries_and_flags() {
    let objs = objects(&render(NS, None));
    let mut help = BTreeMap::<String, String>::new();
    for (key, w) in workloads(&objs) {
        let c = container(w);
        let command = strs(&c["command"]);
        let bin = *command.first().unwrap_or_else(|| panic!("{key}: no command"));
        let text = help.entry(bin.to_string()).or_insert_with(|| {
            let path = skiff_testkit::binary(bin).unwrap_or_else(|e| panic!("{key} runs {bin}: {e}"));
            let out = Command::new(path).arg("--help").output().expect("run --help");
            assert!(out.status.success(), "{bin} --help");
            String::from_utf8_lossy(&out.stdout).into_owned()
        });
        for arg in strs(&c["args"]) {
            let flag = arg.split('=').next().unwrap();
            assert!(flag.starts_with("--"), "{key}: {arg:?} is not a --flag");
            assert!(
                text.lines().any(|l| l.trim_start().split([' ', ',']).any(|w| w == flag)),
                "{key}: {bin} has no {flag}"
            );
        }
    }
}

const OVERRIDES: &str = r#"
image: {registry: registry.example.com, tag: "0.2.0"}
etcd:
  endpoints: [https://etcd-0.etcd:2379, https://etcd-1.etcd:2379, https://etcd-2.etcd:2379]
apiserver: {replicas: 3}
scheduler:
  replicas: 3
  nodeSelector: {node-role.kubernetes.io/control-plane: ""}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
controllerManager: {replicas: 3}
dns: {replicas: 3, service: {clusterIP: 10.43.0.10}}
ingress: {replicas: 3}
leaderElection: {leaseDuration: 30s}
node:
  kubelet: {image: {repository: skiff-node-gpu}}
metrics: {scrapeAnnotations: false}
"#;

#[test]
fn overrides_are_honoured() {
    let objs = objects(&render("prod", Some(OVERRIDES)));
    for name in ["apiserver", "scheduler", "controller-manager", "dns", "ingress"] {
        let d = &objs[&format!("Deployment/skiff-{name}")];
        assert_eq!(d["spec"]["replicas"], 3, "{name}");
        assert_eq!(container(d)["image"], format!("registry.example.com/skiff-{name}:0.2.0"), "{name}");
        assert!(d["spec"]["template"]["metadata"]["annotations"].is_null(), "{name}: scrape annotations turned off");
    }
    let apiserver = &objs["Deployment/skiff-apiserver"];
    let endpoints = "--etcd-endpoints=https://etcd-0.etcd:2379,https://etcd-1.etcd:2379,https://etcd-2.etcd:2379";
    assert!(args(apiserver).contains(&endpoints), "{:?}", args(apiserver));

    let scheduler = &objs["Deployment/skiff-scheduler"];
    assert!(args(scheduler).contains(&"--lease-namespace=prod"), "{:?}", args(scheduler));
    assert!(args(scheduler).contains(&"--lease-duration=30s"), "{:?}", args(scheduler));
    let pod = &scheduler["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"]["node-role.kubernetes.io/control-plane"], "");
    assert_eq!(pod["tolerations"][0]["effect"], "NoSchedule");

    assert_eq!(objs["Service/skiff-dns"]["spec"]["clusterIP"], "10.43.0.10");
    let kubelet = &objs["DaemonSet/skiff-kubelet"];
    assert!(args(kubelet).contains(&"--cluster-dns=10.43.0.10"), "{:?}", args(kubelet));
    assert!(args(kubelet).contains(&"--server=https://skiff-apiserver.prod.svc:6443"), "{:?}", args(kubelet));
    assert_eq!(container(kubelet)["image"], "registry.example.com/skiff-node-gpu:0.2.0", "its own repository");
    assert_eq!(container(&objs["DaemonSet/skiff-overlay"])["image"], "registry.example.com/skiff-node:0.2.0");
}

/// Applies a rendered chart: every object must be accepted as it is (a
/// refusal names the field skiff's validation objects to).
fn apply(cluster: &Cluster, yaml: &str) -> String {
    let out = cluster.skiffctl(&["apply", "-f", "-"], Some(yaml)).unwrap();
    assert!(out.status.success(), "apply failed:\n{}", text(&out.stderr));
    text(&out.stdout)
}

#[tokio::test]
async fn rendered_chart_applies_to_skiff() {
    let cluster = Cluster::start().await.expect("cluster");
    for (ns, values) in [(NS, None), ("prod", Some(OVERRIDES))] {
        let out = cluster.skiffctl(&["create", "namespace", ns], None).unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let yaml = render(ns, values);
        let rendered = objects(&yaml).len();
        let applied = apply(&cluster, &yaml);
        // The IngressClass is cluster-wide: the second release finds it.
        let created = applied.lines().filter(|l| l.ends_with(" created")).count();
        assert!(created == rendered || (ns == "prod" && created == rendered - 1), "{applied}");

        // Applying the same manifests again (a `helm upgrade` with nothing
        // changed) changes nothing: skiff's defaulting leaves no field the
        // chart sets fighting it.
        let again = apply(&cluster, &yaml);
        assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");

        let out = cluster.skiffctl(&["get", "deploy", "-n", ns], None).unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let table = text(&out.stdout);
        let listed: Vec<&str> = table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(
            listed,
            ["skiff-apiserver", "skiff-controller-manager", "skiff-dns", "skiff-ingress", "skiff-scheduler"],
            "{table}"
        );
        let out = cluster.skiffctl(&["get", "daemonsets", "-n", ns, "-o", "name"], None).unwrap();
        let listed = text(&out.stdout);
        assert!(listed.contains("skiff-kubelet") && listed.contains("skiff-overlay"), "{listed}");
    }

    let client = cluster.client();
    let scheduler = client.get("Deployment", "prod", "skiff-scheduler").await.expect("stored");
    assert_eq!(scheduler["spec"]["replicas"], 3);
    let svc = client.get("Service", NS, "skiff-ingress").await.expect("stored");
    assert!(svc["spec"]["ports"][0]["nodePort"].as_i64().is_some(), "a LoadBalancer Service gets node ports: {svc}");
}

/// Every component reaches the apiserver over TLS with credentials of its
/// own, and only the controller-manager, which signs nodes' requests, gets
/// the CA's key.
#[test]
fn components_get_their_own_credentials_and_only_the_signer_the_ca_key() {
    let objs = objects(&render(NS, None));
    for name in ["ca", "apiserver-tls", "kubelet-bootstrap", "admin"] {
        assert!(objs.contains_key(&format!("Secret/skiff-{name}")), "Secret skiff-{name}");
    }
    for (key, w) in workloads(&objs) {
        let a = args(w);
        assert!(
            a.iter().any(|f| f.starts_with("--server=https://") || f.starts_with("--tls-cert-file=")),
            "{key}: {a:?}"
        );
        let volumes = w["spec"]["template"]["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        let secrets: Vec<&Value> = volumes.iter().filter(|v| v["secret"].is_object()).collect();
        assert!(!secrets.is_empty(), "{key}: no credentials mounted");
        // A Secret volume without `items` mounts every key.
        let holds_ca_key = secrets.iter().any(|v| {
            let items = v["secret"]["items"].as_array();
            v["secret"]["secretName"] == "skiff-ca" && items.is_none_or(|i| i.iter().any(|i| i["key"] == "ca.key"))
        });
        assert_eq!(holds_ca_key, key == "Deployment/skiff-controller-manager", "{key}");
    }
    let kubelet = args(&objs["DaemonSet/skiff-kubelet"]);
    assert!(kubelet.contains(&"--bootstrap-kubeconfig=/etc/skiff/pki/bootstrap.yaml"), "{kubelet:?}");
    let apiserver = args(&objs["Deployment/skiff-apiserver"]);
    for flag in ["--client-ca-file=/etc/skiff/pki/ca.crt", "--token-auth-file=/etc/skiff/pki/tokens.csv"] {
        assert!(apiserver.contains(&flag), "{flag} in {apiserver:?}");
    }
}

/// The data of Secret `name` of a rendered release, decoded.
fn secret_data(objs: &BTreeMap<String, Value>, name: &str) -> BTreeMap<String, Vec<u8>> {
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(objs[&format!("Secret/{name}")].clone()).expect("a Secret");
    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

fn write(path: &Path, contents: &[u8]) -> PathBuf {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path.to_path_buf()
}

/// What the chart makes with Helm's crypto functions runs a real cluster:
/// its CA (an RSA key, from genCA) signs, its ServiceAccount key (SEC1, from
/// genPrivateKey) loads, its token file lets the administrator in, each
/// component's certificate is that component and no more, and a kubelet
/// holding only the chart's join token and CA joins and gets its
/// certificates signed by the chart's CA.
#[tokio::test]
async fn the_charts_certificates_and_tokens_run_a_cluster_a_node_joins() {
    let objs = objects(&render(NS, None));
    let ca = secret_data(&objs, "skiff-ca");
    let dir = tempfile::tempdir().unwrap();
    // The testkit takes the CA and ServiceAccount key found in its state
    // dir's pki/ and issues the rest from that CA.
    let state = dir.path().join("state");
    let pki = state.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    for key in ["ca.crt", "ca.key", "sa.key"] {
        write(&pki.join(key), &ca[key]);
    }
    assert!(text(&ca["ca.key"]).starts_with("-----BEGIN RSA PRIVATE KEY-----"), "genCA's key form");
    let tokens = write(&dir.path().join("tokens.csv"), &ca["tokens.csv"]);
    let options = ClusterOptions {
        state_dir: Some(state),
        runtime: Some(RuntimeOptions::default()),
        apiserver_args: vec![format!("--token-auth-file={}", tokens.display())],
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(options).await.expect("a cluster on the chart's CA");
    cluster.start_service("controller-manager", "skiff-controller-manager", &[]).await.expect("controller-manager");
    let ca_file = pki.join("ca.crt");

    let admin = ClientConfig {
        server: cluster.server(),
        certificate_authority: Some(ca_file.clone()),
        token: Some(text(&ca["admin-token"])),
        ..ClientConfig::default()
    };
    let admin = skiff_client::Client::connect(&admin).unwrap();
    admin.list("Secret", "kube-system", &Default::default()).await.expect("the admin token may do anything");

    // The scheduler's pair: the scheduler's rights (nodes), not more (Secrets).
    let scheduler = secret_data(&objs, "skiff-scheduler-client");
    let config: ClientConfig = serde_yaml_ng::from_slice(&scheduler["kubeconfig.yaml"]).unwrap();
    assert_eq!(config.server, format!("https://skiff-apiserver.{NS}.svc:6443"));
    let scheduler = ClientConfig {
        server: cluster.server(),
        certificate_authority: Some(ca_file.clone()),
        client_certificate: Some(write(&dir.path().join("scheduler.crt"), &scheduler["tls.crt"])),
        client_key: Some(write(&dir.path().join("scheduler.key"), &scheduler["tls.key"])),
        token: None,
    };
    let scheduler = skiff_client::Client::connect(&scheduler).unwrap();
    scheduler.list("Node", "", &Default::default()).await.expect("the scheduler reads nodes");
    let denied = scheduler.list("Secret", "kube-system", &Default::default()).await.expect_err("no Secrets");
    assert!(denied.to_string().contains("system:kube-scheduler"), "{denied}");

    // A node joins with the chart's bootstrap config, pointed at this cluster.
    let bootstrap = secret_data(&objs, "skiff-kubelet-bootstrap");
    let mut join: ClientConfig = serde_yaml_ng::from_slice(&bootstrap["bootstrap.yaml"]).unwrap();
    assert!(join.token.as_deref().is_some_and(|t| t.len() == 23 && t.as_bytes()[6] == b'.'), "{join:?}");
    join.server = cluster.server();
    join.certificate_authority = Some(ca_file);
    let join_file = dir.path().join("bootstrap.yaml");
    join.save_to(&join_file).unwrap();
    cluster.start_joining_kubelet("chart-node", &join_file).await.expect("the node joins");
    eventually("node chart-node Ready", || async {
        let node = admin.get("Node", "", "chart-node").await.ok()?;
        let conditions = node["status"]["conditions"].as_array()?.clone();
        conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True").then_some(())
    })
    .await;
}
