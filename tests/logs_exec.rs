//! `skiffctl logs` and `skiffctl exec` end to end: skiffctl → the
//! apiserver's PodProxy → the kubelet's server (`skiff_kubelet::server`,
//! started in this test) → containerd over CRI.
//!
//! The kubelet's pod lifecycle is not used: the test creates the sandbox and
//! container over CRI with the labels the kubelet sets, and the matching Pod
//! (bound) and Node (InternalIP 127.0.0.1, the server's port) objects.
//!
//! Needs root and `scripts/install-deps`; build first:
//! `cargo build -p skiff-apiserver -p skiffctl && cargo test -p skiff-tests --test logs_exec`.

use std::collections::HashMap;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus, Pod};
use serde_json::json;
use skiff_api::proto::kubelet_client::KubeletClient;
use skiff_api::proto::{ExecInput, StatsRequest};
use skiff_kubelet::runtime::labels::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID, RESTART_COUNT_ANNOTATION};
use skiff_testkit::runtime::cri::v1::image_service_client::ImageServiceClient;
use skiff_testkit::runtime::cri::v1::runtime_service_client::RuntimeServiceClient;
use skiff_testkit::runtime::cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, PodSandboxConfig, PodSandboxMetadata,
    PullImageRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
};
use skiff_testkit::runtime::{RuntimeOptions, BUSYBOX_IMAGE};
use skiff_testkit::{Cluster, ClusterOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

async fn skiffctl(cluster: &Cluster, args: &[&str]) -> Output {
    command(cluster, args).output().await.expect("run skiffctl")
}

fn command(cluster: &Cluster, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(cluster.skiffctl_command().expect("skiffctl built"));
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `skiffctl args` until `check` accepts its output (the runtime
/// writes logs asynchronously), returning that output.
async fn until(cluster: &Cluster, args: &[&str], check: impl Fn(&Output) -> bool) -> Output {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = skiffctl(cluster, args).await;
        if check(&out) || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Node whose kubelet API is at 127.0.0.1:`port`.
async fn create_node(cluster: &Cluster, name: &str, port: u16) {
    let nodes = cluster.client().api::<Node>("");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    let mut node = nodes.create(&node).await.unwrap_or_else(|e| panic!("create node {name}: {e}"));
    node.status = Some(NodeStatus {
        addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: "127.0.0.1".into() }]),
        ..Default::default()
    });
    skiff_kubelet::server::advertise(&mut node, port);
    nodes.update_status(&node).await.unwrap_or_else(|e| panic!("node {name} status: {e}"));
}

/// A Pod with one container `app`, bound to `node` when one is given.
async fn create_pod(cluster: &Cluster, name: &str, node: Option<&str>) -> String {
    let pods = cluster.client().api::<Pod>("default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }))
    .unwrap();
    let pod = pods.create(&pod).await.unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(node) = node {
        cluster.client().bind("default", name, node, &uid).await.expect("bind");
    }
    uid
}

/// Starts container `app` of pod `pod` (attempt `attempt`) in `sandbox`,
/// labelled as the kubelet labels its containers.
async fn start_container(
    cri: &mut RuntimeServiceClient<Channel>,
    sandbox: (&str, &PodSandboxConfig),
    image: &str,
    attempt: u32,
    script: &str,
) -> String {
    let meta = sandbox.1.metadata.clone().unwrap();
    let labels = HashMap::from([
        (POD_NAMESPACE.to_string(), meta.namespace.clone()),
        (POD_NAME.to_string(), meta.name.clone()),
        (POD_UID.to_string(), meta.uid.clone()),
        (CONTAINER_NAME.to_string(), "app".to_string()),
    ]);
    let id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.0.to_string(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata { name: "app".into(), attempt }),
                image: Some(ImageSpec { image: image.into(), ..Default::default() }),
                command: vec!["sh".into(), "-c".into(), script.into()],
                log_path: format!("app/{attempt}.log"),
                labels,
                annotations: HashMap::from([(RESTART_COUNT_ANNOTATION.to_string(), attempt.to_string())]),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox.1.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
    id
}

/// Prints three lines, then the contents of /tmp/say each time it appears.
const SAY_SCRIPT: &str =
    "echo one; echo two; echo three; while true; do [ -f /tmp/say ] && cat /tmp/say && rm /tmp/say; sleep 0.1; done";

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

async fn next_line(lines: &mut Lines, what: &str) -> Option<String> {
    let next = tokio::time::timeout(WAIT, lines.next_line()).await;
    next.unwrap_or_else(|_| panic!("logs -f: no {what} in time")).unwrap()
}

#[tokio::test]
async fn logs_exec_and_stats_through_the_apiserver() {
    let cluster =
        Cluster::start_with(ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() })
            .await
            .expect("start a cluster with a runtime");
    let runtime = cluster.runtime().expect("a runtime");
    let containerd = runtime.containerd();
    let channel = skiff_kubelet::runtime::cri::dial(containerd.socket_path());
    let mut cri = RuntimeServiceClient::new(channel.clone());
    let busybox = runtime.registry().image(BUSYBOX_IMAGE);
    ImageServiceClient::new(channel.clone())
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: busybox.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("pull busybox");

    // The kubelet's server, and the objects the apiserver finds it by.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cri_runtime = skiff_kubelet::runtime::CriRuntime::connect(&containerd.socket_path().display().to_string())
        .expect("the CRI socket path");
    // It serves TLS with a certificate of the cluster CA and asks the
    // apiserver who may use it, as a kubelet started by the testkit does.
    let pki = cluster.pki().expect("a secure cluster");
    let tls = pki.kubelet_tls("kubelet-node-a", std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
    let (_, kubelet_identity) =
        pki.client_config("node-a-identity", skiff_testkit::identity_of("skiff-kubelet")).unwrap();
    let auth = skiff_kubelet::server::auth::KubeletAuth::new(
        "node-a".into(),
        false,
        skiff_kubelet::server::auth::AuthorizationMode::Webhook,
        skiff_client::Client::connect(&kubelet_identity).unwrap(),
    );
    let security = skiff_kubelet::server::ApiSecurity {
        tls: Some(skiff_pki::serve::server_config(&tls).unwrap()),
        auth: std::sync::Arc::new(auth),
    };
    let addr = skiff_kubelet::server::serve(
        "127.0.0.1:0".parse().unwrap(),
        std::sync::Arc::new(cri_runtime),
        security,
        async move {
            let _ = stopped.await;
        },
    )
    .await
    .expect("serve the kubelet API");
    create_node(&cluster, "node-a", addr.port()).await;
    let uid = create_pod(&cluster, "talker", Some("node-a")).await;

    // The pod in containerd: three lines, then whatever an exec drops into
    // /tmp/say (so the test decides when the log grows).
    let log_dir = containerd.pod_log_dir().join(format!("default_talker_{uid}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "talker".into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "talker".into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([
            (POD_NAMESPACE.to_string(), "default".to_string()),
            (POD_NAME.to_string(), "talker".to_string()),
            (POD_UID.to_string(), uid.clone()),
        ]),
        ..Default::default()
    };
    let sandbox_id = cri
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: String::new() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let sandbox = (sandbox_id.as_str(), &sandbox_config);
    let first = start_container(&mut cri, sandbox, &busybox, 0, SAY_SCRIPT).await;

    // logs: every line, then the last two, then with timestamps.
    let out = until(&cluster, &["logs", "talker"], |o| text(&o.stdout) == "one\ntwo\nthree\n").await;
    assert!(out.status.success(), "logs failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\ntwo\nthree\n");
    let out = skiffctl(&cluster, &["logs", "talker", "--tail", "2"]).await;
    assert_eq!(text(&out.stdout), "two\nthree\n", "stderr: {}", text(&out.stderr));
    let out = skiffctl(&cluster, &["logs", "pod/talker", "-c", "app", "--timestamps", "--tail=1"]).await;
    let line = text(&out.stdout);
    let (stamp, rest) = line.split_once(' ').unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    assert_eq!(rest, "three\n");
    // RFC 3339 in UTC, as the runtime writes it: 2024-05-01T10:00:00.123456789Z.
    let (date, time) = stamp.split_once('T').unwrap_or_else(|| panic!("timestamp {stamp:?}"));
    assert_eq!(date.len(), 10, "timestamp {stamp:?}");
    assert!(time.ends_with('Z') && time.len() > 9, "timestamp {stamp:?}");

    // exec: output, and the command's exit status passed on.
    let out = skiffctl(&cluster, &["exec", "talker", "--", "echo", "hi"]).await;
    assert!(out.status.success(), "exec failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let out = skiffctl(&cluster, &["exec", "talker", "-c", "app", "--", "sh", "-c", "echo oops >&2; exit 3"]).await;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "oops\n");
    // -i with an empty stdin: the command reads EOF and ends.
    let out = skiffctl(&cluster, &["exec", "-i", "talker", "--", "cat"]).await;
    assert!(out.status.success(), "exec -i failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    // The kubelet API itself: nothing without a certificate of the cluster
    // CA, nothing for a user without a role that allows it.
    let as_kubelet_client = |config: skiff_client::ClientConfig| {
        let config = skiff_client::ClientConfig { server: format!("https://{addr}"), ..config };
        KubeletClient::new(config.channel().unwrap())
    };
    let stats_of = |pod: &str| StatsRequest { namespace: "default".into(), pod: pod.into(), nodes: false };
    let anonymous = skiff_client::ClientConfig {
        certificate_authority: Some(pki.ca_file()),
        ..skiff_client::ClientConfig::default()
    };
    let refused = as_kubelet_client(anonymous).stats(stats_of("talker")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let (_, alice) = pki.client_config("alice", skiff_testkit::Identity { user: "alice", groups: &[] }).unwrap();
    let refused = as_kubelet_client(alice.clone()).stats(stats_of("talker")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("\"alice\""), "{refused:?}");
    let exec = ExecInput {
        input: Some(skiff_api::proto::exec_input::Input::Start(skiff_api::proto::ExecStart {
            namespace: "default".into(),
            pod: "talker".into(),
            container: "app".into(),
            command: vec!["true".into()],
            ..Default::default()
        })),
    };
    let refused = as_kubelet_client(alice).exec(futures::stream::iter([exec])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "exec is refused too: {refused:?}");

    // Stats straight from the kubelet's server, as the admin.
    let mut kubelet = as_kubelet_client(cluster.admin_config().clone());
    let deadline = Instant::now() + WAIT;
    let pods = loop {
        let req = StatsRequest { namespace: "default".into(), pod: "talker".into(), nodes: false };
        let pods = kubelet.stats(req).await.expect("Stats").into_inner().pods;
        let memory = pods.first().and_then(|p| p.memory.as_ref()).map_or(0, |m| m.working_set_bytes);
        if memory > 0 || Instant::now() > deadline {
            break pods;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!((pods[0].namespace.as_str(), pods[0].name.as_str(), pods[0].uid.as_str()), ("default", "talker", &*uid));
    let app = &pods[0].containers;
    assert_eq!(app.iter().map(|c| (c.name.as_str(), c.id.as_str())).collect::<Vec<_>>(), [("app", first.as_str())]);
    assert!(app[0].memory.as_ref().unwrap().working_set_bytes > 0, "{pods:?}");
    assert!(app[0].cpu.as_ref().unwrap().usage_core_nano_seconds > 0, "{pods:?}");
    let other = kubelet.stats(StatsRequest { namespace: "other".into(), ..Default::default() }).await.unwrap();
    assert!(other.into_inner().pods.is_empty());

    // logs -f: what is there, then lines written later, and it ends by
    // itself once the container exits.
    let mut follower = command(&cluster, &["logs", "-f", "talker"]).spawn().expect("logs -f");
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    for want in ["one", "two", "three"] {
        assert_eq!(next_line(&mut lines, want).await.as_deref(), Some(want));
    }
    let out = skiffctl(
        &cluster,
        &["exec", "talker", "--", "sh", "-c", "echo four > /tmp/say.new && mv /tmp/say.new /tmp/say"],
    )
    .await;
    assert!(out.status.success(), "exec failed: {}", text(&out.stderr));
    let out = until(&cluster, &["logs", "talker", "--tail", "1"], |o| text(&o.stdout) == "four\n").await;
    assert_eq!(text(&out.stdout), "four\n", "the exec's line is in the log: {}", text(&out.stderr));
    assert_eq!(next_line(&mut lines, "four").await.as_deref(), Some("four"));
    cri.stop_container(StopContainerRequest { container_id: first.clone(), timeout: 1 }).await.expect("stop");
    assert_eq!(next_line(&mut lines, "end").await, None, "logs -f should end when the container exits");
    let status = tokio::time::timeout(WAIT, follower.wait()).await.expect("logs -f exits").unwrap();
    assert!(status.success());

    // A restart: logs shows the new instance, --previous the old one.
    let second = start_container(&mut cri, sandbox, &busybox, 1, "echo second life; exec sleep 3600").await;
    let out = until(&cluster, &["logs", "talker"], |o| text(&o.stdout) == "second life\n").await;
    assert_eq!(text(&out.stdout), "second life\n", "stderr: {}", text(&out.stderr));
    let out = skiffctl(&cluster, &["logs", "talker", "--previous"]).await;
    assert_eq!(text(&out.stdout), "one\ntwo\nthree\nfour\n", "stderr: {}", text(&out.stderr));
    let out = skiffctl(&cluster, &["exec", "talker", "--", "cat", "/proc/1/cmdline"]).await;
    assert!(text(&out.stdout).contains("sleep"), "exec runs in the running instance: {out:?}");

    // Errors name what is wrong.
    let out = skiffctl(&cluster, &["logs", "talker", "-c", "nope"]).await;
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr).trim(), "error: container \"nope\" is not valid for pod \"talker\"");
    let out = skiffctl(&cluster, &["logs", "ghost"]).await;
    assert!(text(&out.stderr).contains("pods \"ghost\" not found"), "{}", text(&out.stderr));

    cri.stop_container(StopContainerRequest { container_id: second, timeout: 1 }).await.expect("stop");
    let _ = stop.send(());
}

/// Without a runtime: a pod not scheduled yet, and a node whose kubelet
/// does not answer, are refused with clear messages.
#[tokio::test]
async fn unscheduled_pods_and_unreachable_kubelets() {
    let cluster = Cluster::start().await.expect("cluster");
    create_pod(&cluster, "pending", None).await;
    let out = skiffctl(&cluster, &["logs", "pending"]).await;
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr).trim(), "error: pod \"pending\" is not scheduled to a node yet");
    let out = skiffctl(&cluster, &["exec", "pending", "--", "true"]).await;
    assert_eq!(text(&out.stderr).trim(), "error: pod \"pending\" is not scheduled to a node yet");

    // Nothing listens on the advertised port.
    let port = skiff_testkit::free_port();
    create_node(&cluster, "node-gone", port).await;
    create_pod(&cluster, "stranded", Some("node-gone")).await;
    let out = skiffctl(&cluster, &["logs", "stranded"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: the kubelet of node \"node-gone\" is unreachable: "), "{stderr}");
    assert!(stderr.contains(&format!("https://127.0.0.1:{port}")), "{stderr}");

    // A node that advertises no kubelet port.
    cluster
        .client()
        .create("Node", "", &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}}))
        .await
        .unwrap();
    create_pod(&cluster, "nowhere", Some("bare")).await;
    let out = skiffctl(&cluster, &["exec", "nowhere", "--", "true"]).await;
    assert!(text(&out.stderr).contains("advertises no kubelet port"), "{}", text(&out.stderr));
}
