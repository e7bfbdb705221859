//! The container runtime harness on its own, without the kubelet: a local
//! registry with the test images, containerd driven over CRI v1 from this
//! test, a pod on the CNI bridge answering HTTP from the host.
//!
//! Needs root and `scripts/install-deps`; build the test server first:
//! `cargo build -p skiff-testserver && cargo test -p skiff-tests --test runtime`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use skiff_testkit::runtime::cri::v1::image_service_client::ImageServiceClient;
use skiff_testkit::runtime::cri::v1::runtime_service_client::RuntimeServiceClient;
use skiff_testkit::runtime::cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    KeyValue, ListImagesRequest, ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use skiff_testkit::runtime::{
    ensure_test_images, stop_detached_runtime, Containerd, ContainerdOptions, Registry, Runtime, RuntimeOptions,
    BUSYBOX_IMAGE, TESTSERVER_IMAGE,
};
use skiff_testkit::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `ip:port` over plain HTTP/1.1: (status, body).
async fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((ip, port))).await??;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The device the kernel would route `ip` through (`ip route get`).
fn route_device(ip: &str) -> String {
    let out = std::process::Command::new("ip").args(["route", "get", ip]).output().expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "dev" {
            return words.next().unwrap_or_default().to_string();
        }
    }
    String::new()
}

#[tokio::test]
async fn pod_on_containerd_serves_http() {
    let temp = tempfile::Builder::new().prefix("skiff-rt-").tempdir().unwrap();
    let started = Instant::now();
    let runtime = Runtime::start(temp.path(), &RuntimeOptions::default(), false).await.expect("start the runtime");
    eprintln!("registry + images + containerd ready in {:?}", started.elapsed());
    let containerd = runtime.containerd();
    let bridge = containerd.bridge().to_string();
    let channel = containerd.cri_channel();
    let mut cri = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    // Pull the project's own test server from the local registry.
    let image = runtime.registry().image(TESTSERVER_IMAGE);
    let t = Instant::now();
    let pulled = images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("pull testserver")
        .into_inner();
    eprintln!("pulled {image} in {:?}", t.elapsed());
    assert!(pulled.image_ref.starts_with("sha256:"), "image ref {}", pulled.image_ref);
    let listed = images.list_images(ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
    assert!(listed.iter().any(|i| i.repo_tags.contains(&image)), "{image} not among {listed:?}");

    // A pod sandbox: the pause image from the local registry, an IP from CNI.
    let log_dir = containerd.pod_log_dir().join("default_smoke");
    std::fs::create_dir_all(&log_dir).unwrap();
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "smoke".into(),
            uid: "00000000-0000-0000-0000-00000000smoke".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "smoke-pod".into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), "smoke".to_string())]),
        ..Default::default()
    };
    let t = Instant::now();
    let sandbox_id = cri
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: String::new() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let sandbox_time = t.elapsed();

    let t = Instant::now();
    let container_id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata { name: "server".into(), attempt: 0 }),
                image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
                envs: vec![KeyValue { key: "GREETING".into(), value: "hello".into() }],
                log_path: "server/0.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    let create_time = t.elapsed();
    let t = Instant::now();
    cri.start_container(StartContainerRequest { container_id: container_id.clone() }).await.expect("StartContainer");
    eprintln!("RunPodSandbox {sandbox_time:?}, CreateContainer {create_time:?}, StartContainer {:?}", t.elapsed());

    let status = cri
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: sandbox_id.clone(), verbose: false })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a sandbox status");
    let pod_ip = status.network.map(|n| n.ip).unwrap_or_default();
    let ip: std::net::Ipv4Addr = pod_ip.parse().unwrap_or_else(|_| panic!("pod IP {pod_ip:?}"));
    let cidr = containerd.pod_cidr();
    let prefix = cidr.rsplit_once(".0/").map(|(p, _)| p).unwrap();
    assert!(ip.to_string().starts_with(&format!("{prefix}.")), "pod IP {ip} outside {cidr}");
    // Only ever send to the pod through our own bridge, never a route out.
    assert_eq!(route_device(&pod_ip), bridge, "{pod_ip} must be routed via the CNI bridge");

    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, body) = loop {
        match http_get(&pod_ip, 8080, "/healthz").await {
            Ok(answer) => break answer,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("GET http://{pod_ip}:8080/healthz: {e}"),
        }
    };
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = http_get(&pod_ip, 8080, "/").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("hostname: smoke-pod"), "{body}");
    let (code, body) = http_get(&pod_ip, 8080, "/env").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.lines().any(|l| l == "GREETING=hello"), "{body}");
    assert!(body.lines().any(|l| l == "PORT=8080"), "image env missing: {body}");

    // Pod to pod across the bridge (FORWARD, where Docker's DROP policy
    // would bite): a busybox pod fetches the server's /healthz.
    let client_id = run_sandbox(&mut cri, "client").await;
    let busybox = runtime.registry().image(BUSYBOX_IMAGE);
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: busybox.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("pull busybox");
    let client_logs = containerd.pod_log_dir().join("default_client");
    std::fs::create_dir_all(&client_logs).unwrap();
    let fetch_config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "fetch".into(), attempt: 0 }),
        image: Some(ImageSpec { image: busybox, ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), format!("timeout 5 wget -qO- http://{pod_ip}:8080/healthz")],
        log_path: "fetch.log".into(),
        ..Default::default()
    };
    let client_sandbox =
        PodSandboxConfig { log_directory: client_logs.display().to_string(), ..sandbox_named("client") };
    let fetch_id = cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: client_id.clone(),
            config: Some(fetch_config),
            sandbox_config: Some(client_sandbox),
        })
        .await
        .expect("CreateContainer fetch")
        .into_inner()
        .container_id;
    cri.start_container(StartContainerRequest { container_id: fetch_id.clone() }).await.expect("StartContainer fetch");
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetched = loop {
        let st = cri
            .container_status(ContainerStatusRequest { container_id: fetch_id.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if st.state == ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let fetch_log = std::fs::read_to_string(client_logs.join("fetch.log")).unwrap_or_default();
    assert_eq!(fetched.exit_code, 0, "pod-to-pod GET failed; log: {fetch_log}");
    assert!(fetch_log.contains("ok"), "fetch log: {fetch_log}");
    cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: client_id.clone() }).await.unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: client_id }).await.unwrap();

    let running = cri
        .container_status(ContainerStatusRequest { container_id: container_id.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(running.state, ContainerState::ContainerRunning as i32);

    // Stop and remove through CRI, as the kubelet will.
    cri.stop_container(StopContainerRequest { container_id: container_id.clone(), timeout: 10 }).await.unwrap();
    let stopped = cri
        .container_status(ContainerStatusRequest { container_id: container_id.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(stopped.state, ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 0, "SIGTERM should end the testserver cleanly");
    let log = std::fs::read_to_string(log_dir.join("server/0.log")).unwrap_or_default();
    assert!(log.contains("listening on 0.0.0.0:8080"), "container log: {log}");
    cri.remove_container(RemoveContainerRequest { container_id }).await.unwrap();
    cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: sandbox_id.clone() }).await.unwrap();
    cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: sandbox_id.clone() }).await.unwrap();
    let left = cri.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
    assert!(left.is_empty(), "sandboxes left: {left:?}");

    let socket = containerd.socket_path().to_path_buf();
    let t = Instant::now();
    drop(runtime);
    eprintln!("runtime stopped and cleaned in {:?}", t.elapsed());
    assert!(!Path::new("/sys/class/net").join(&bridge).exists(), "bridge {bridge} left behind");
    assert!(!socket.exists() || std::os::unix::net::UnixStream::connect(&socket).is_err(), "containerd still serving");
}

/// Pods left running are removed when containerd drops: nothing of them
/// stays outside the state dir.
#[tokio::test]
async fn dropping_the_runtime_removes_running_pods() {
    let temp = tempfile::Builder::new().prefix("skiff-rt-").tempdir().unwrap();
    // The pieces one by one, as a kubelet test on several nodes might.
    let t = Instant::now();
    let registry =
        Registry::start(temp.path(), std::net::SocketAddr::from(([127, 0, 0, 1], skiff_testkit::free_port())), false)
            .await
            .expect("start the registry");
    eprintln!("registry ready in {:?}", t.elapsed());
    let t = Instant::now();
    ensure_test_images(&registry).await.expect("test images");
    eprintln!("test images ensured in {:?}", t.elapsed());
    let t = Instant::now();
    ensure_test_images(&registry).await.expect("test images, again");
    eprintln!("test images ensured again (no-op) in {:?}", t.elapsed());
    let t = Instant::now();
    let containerd = Containerd::start(temp.path(), &registry, &ContainerdOptions::default(), false)
        .await
        .expect("start containerd");
    eprintln!("containerd ready in {:?}", t.elapsed());
    let mut cri = RuntimeServiceClient::new(containerd.cri_channel());
    let sandbox_id = run_sandbox(&mut cri, "leftover").await;
    let bridge = containerd.bridge().to_string();
    assert!(Path::new("/sys/class/net").join(&bridge).exists(), "CNI made no bridge {bridge}");
    assert!(cni_result(&sandbox_id), "no CNI result for the sandbox");
    assert!(shim_running(&sandbox_id), "no shim for the sandbox");

    drop(containerd);
    assert!(!shim_running(&sandbox_id), "the sandbox's shim outlived containerd");
    assert!(!cni_result(&sandbox_id), "CNI result for {sandbox_id} left behind");
    assert!(!Path::new("/sys/class/net").join(&bridge).exists(), "bridge {bridge} left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = temp.path().display().to_string();
    assert!(!mounts.contains(&dir), "mounts left under {dir}");
    drop(registry);
}

/// A detached runtime (`skiffctl up`) outlives its handle until
/// `stop_detached_runtime` removes its pods and stops it (`skiffctl down`).
#[tokio::test]
async fn detached_runtime_is_stopped_by_state_dir() {
    let temp = tempfile::Builder::new().prefix("skiff-rt-").tempdir().unwrap();
    let runtime = Runtime::start(temp.path(), &RuntimeOptions::default(), true).await.expect("start the runtime");
    let socket = runtime.containerd().socket_path().to_path_buf();
    let bridge = runtime.containerd().bridge().to_string();
    let containerd_pid = runtime.containerd().pid().unwrap();
    let registry_addr = runtime.registry().addr();
    let mut cri = RuntimeServiceClient::new(runtime.containerd().cri_channel());
    let sandbox_id = run_sandbox(&mut cri, "detached").await;
    drop(cri);
    drop(runtime);
    assert!(running(containerd_pid), "a detached containerd stopped on drop");
    assert!(shim_running(&sandbox_id), "a detached pod stopped on drop");

    assert!(stop_detached_runtime(temp.path()).await.unwrap(), "no runtime found in the state dir");
    assert!(!running(containerd_pid), "containerd still running");
    assert!(!shim_running(&sandbox_id), "the sandbox's shim outlived containerd");
    assert!(!cni_result(&sandbox_id), "CNI result for {sandbox_id} left behind");
    assert!(!Path::new("/sys/class/net").join(&bridge).exists(), "bridge {bridge} left behind");
    assert!(std::net::TcpStream::connect(registry_addr).is_err(), "registry still serving");
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err(), "containerd socket still serving");
    assert!(!stop_detached_runtime(Path::new("/nonexistent-skiff")).await.unwrap());
}

/// `ClusterOptions::runtime` starts the registry and containerd beside etcd
/// and the apiserver; `Cluster::start()` alone starts neither.
#[tokio::test]
async fn cluster_with_runtime() {
    let cluster =
        Cluster::start_with(ClusterOptions { runtime: Some(RuntimeOptions::default()), ..Default::default() })
            .await
            .expect("start a cluster with a runtime");
    let runtime = cluster.runtime().expect("a runtime");
    let mut images = ImageServiceClient::new(runtime.containerd().cri_channel());
    let busybox = runtime.registry().image(BUSYBOX_IMAGE);
    images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: busybox.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("pull busybox");
    let listed = images.list_images(ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
    assert!(listed.iter().any(|i| i.repo_tags.contains(&busybox)), "{busybox} not among {listed:?}");
    // The apiserver of the same cluster answers too.
    cluster.client().list("Namespace", "", &Default::default()).await.expect("list namespaces");

    let plain = Cluster::start().await.unwrap();
    assert!(plain.runtime().is_none());
}

async fn run_sandbox(cri: &mut RuntimeServiceClient<tonic::transport::Channel>, name: &str) -> String {
    cri.run_pod_sandbox(RunPodSandboxRequest { config: Some(sandbox_named(name)), runtime_handler: String::new() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

fn sandbox_named(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

/// Whether `pid` runs (a zombie, exited but not yet reaped, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

fn cni_result(id: &str) -> bool {
    std::fs::read_dir("/var/lib/cni/results")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains(id)))
        .unwrap_or(false)
}

/// Whether a containerd shim for `id` runs (its command line names the id).
fn shim_running(id: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("containerd-shim") && cmdline.contains(id)
    })
}
