//! Liveness, readiness and startup probes: `exec` (CRI ExecSync),
//! `httpGet` (plain HTTP to the pod IP) and `tcpSocket`, with Kubernetes'
//! timing fields (initialDelaySeconds, periodSeconds, timeoutSeconds,
//! successThreshold, failureThreshold).
//!
//! Probes run inside the pod's sync, not on timers of their own: each sync
//! runs the probes that are due and asks to be queued again when the next
//! one is ([`ContainerProbes::step`] returns that time). Until the startup
//! probe succeeds the others wait; a liveness or startup failure past its
//! threshold asks for the container to be killed (and so restarted); the
//! readiness result gates the container's `ready`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::runtime::ContainerRuntime;

/// The probe state of one running container.
#[derive(Debug)]
pub struct ContainerProbes {
    /// The CRI container these results are about: a new one starts afresh.
    pub container_id: String,
    pub started: bool,
    pub ready: bool,
    startup: Counter,
    liveness: Counter,
    readiness: Counter,
}

#[derive(Debug, Default)]
struct Counter {
    successes: i32,
    failures: i32,
    next: Option<Instant>,
}

/// What a probe step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do; run again at the given time (if any probe is left).
    Fine(Option<Instant>),
    /// Kill the container: a liveness or startup probe failed too often.
    Kill(String),
}

/// What happened on one probe run, for the Event.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub probe: &'static str,
    pub message: String,
}

impl ContainerProbes {
    pub fn new(container_id: &str, spec: &Container) -> Self {
        Self {
            container_id: container_id.to_string(),
            started: spec.startup_probe.is_none(),
            // Without a readiness probe a started container is ready.
            ready: spec.readiness_probe.is_none(),
            startup: Counter::default(),
            liveness: Counter::default(),
            readiness: Counter::default(),
        }
    }

    /// Runs the probes that are due. `running_for` is how long ago the
    /// container started (initialDelaySeconds counts from then). Failures
    /// (for Events) go into `failures`.
    pub async fn step(&mut self, target: &Target<'_>, running_for: Duration, failures: &mut Vec<Failure>) -> Verdict {
        let spec = target.spec;
        let now = Instant::now();
        if !self.started {
            if let Some(probe) = &spec.startup_probe {
                match run_if_due(&mut self.startup, probe, target, running_for, now).await {
                    Some(Ok(())) if self.startup.successes >= 1 => self.started = true,
                    Some(Err(message)) => {
                        failures.push(Failure { probe: "Startup", message: message.clone() });
                        if self.startup.failures >= threshold(probe.failure_threshold, 3) {
                            return Verdict::Kill(format!("Startup probe failed: {message}"));
                        }
                    }
                    _ => {}
                }
            }
            if !self.started {
                return Verdict::Fine(self.startup.next);
            }
        }
        if let Some(probe) = &spec.liveness_probe {
            if let Some(Err(message)) = run_if_due(&mut self.liveness, probe, target, running_for, now).await {
                failures.push(Failure { probe: "Liveness", message: message.clone() });
                if self.liveness.failures >= threshold(probe.failure_threshold, 3) {
                    return Verdict::Kill(format!("Liveness probe failed: {message}"));
                }
            }
        }
        if let Some(probe) = &spec.readiness_probe {
            match run_if_due(&mut self.readiness, probe, target, running_for, now).await {
                Some(Ok(())) if self.readiness.successes >= threshold(probe.success_threshold, 1) => self.ready = true,
                Some(Err(message)) => {
                    failures.push(Failure { probe: "Readiness", message });
                    if self.readiness.failures >= threshold(probe.failure_threshold, 3) {
                        self.ready = false;
                    }
                }
                _ => {}
            }
        }
        let next = [self.liveness.next, self.readiness.next].into_iter().flatten().min();
        Verdict::Fine(next)
    }
}

fn threshold(v: Option<i32>, default: i32) -> i32 {
    v.filter(|v| *v > 0).unwrap_or(default)
}

fn seconds(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.filter(|v| *v >= 0).unwrap_or(default) as u64)
}

/// Runs `probe` if its time has come; None if not yet.
async fn run_if_due(
    counter: &mut Counter,
    probe: &Probe,
    target: &Target<'_>,
    running_for: Duration,
    now: Instant,
) -> Option<Result<(), String>> {
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let due = match counter.next {
        Some(at) => at,
        // The first run waits out initialDelaySeconds from the container's start.
        None => now + seconds(probe.initial_delay_seconds, 0).saturating_sub(running_for),
    };
    if due > now {
        counter.next = Some(due);
        return None;
    }
    let result = run(probe, target).await;
    counter.next = Some(Instant::now() + period);
    match &result {
        Ok(()) => {
            counter.successes = counter.successes.saturating_add(1);
            counter.failures = 0;
        }
        Err(_) => {
            counter.failures = counter.failures.saturating_add(1);
            counter.successes = 0;
        }
    }
    Some(result)
}

/// What a probe is aimed at.
pub struct Target<'a> {
    pub runtime: &'a dyn ContainerRuntime,
    pub container_id: &'a str,
    pub pod_ip: &'a str,
    pub spec: &'a Container,
}

/// Runs one probe once: Ok, or why it failed.
pub async fn run(probe: &Probe, target: &Target<'_>) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        return match target.runtime.exec_sync(target.container_id, cmd, Some(timeout)).await {
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => Err(format!("command exited with {}: {}", out.exit_code, out.text().trim())),
            Err(e) => Err(e.to_string()),
        };
    }
    if let Some(http) = &probe.http_get {
        if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")) {
            return Err("HTTPS probes are not supported by this kubelet".into());
        }
        let port = resolve_port(&http.port, target.spec)?;
        let host = http.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.to_string());
        let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        return match tokio::time::timeout(timeout, http_get(&host, port, &path)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get \"http://{host}:{port}{path}\": {e}")),
            Err(_) => Err(format!("Get \"http://{host}:{port}{path}\": timed out after {timeout:?}")),
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let port = resolve_port(&tcp.port, target.spec)?;
        let host = tcp.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| target.pod_ip.to_string());
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: timed out")),
        };
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by this kubelet".into());
    }
    Err("the probe has no handler".into())
}

/// A probe port: a number, or the name of one of the container's ports.
fn resolve_port(port: &IntOrString, spec: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

/// `GET path` over HTTP/1.1: the status code.
async fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: skiff-probe/1.0\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all that matters; read until it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;
    use serde_json::json;

    fn container(probes: serde_json::Value) -> Container {
        let mut c = json!({"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]});
        c.as_object_mut().unwrap().extend(probes.as_object().unwrap().clone());
        serde_json::from_value(c).unwrap()
    }

    #[tokio::test]
    async fn liveness_kills_after_the_failure_threshold() {
        let runtime = FakeRuntime::default();
        let spec = container(
            json!({"livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2}}),
        );
        let mut probes = ContainerProbes::new("c1", &spec);
        let target = Target { runtime: &runtime, container_id: "c1", pod_ip: "10.0.0.5", spec: &spec };
        let mut failures = Vec::new();
        assert!(matches!(probes.step(&target, Duration::ZERO, &mut failures).await, Verdict::Fine(Some(_))));
        assert_eq!(failures.len(), 1);
        probes.liveness.next = Some(Instant::now());
        let verdict = probes.step(&target, Duration::ZERO, &mut failures).await;
        assert!(matches!(verdict, Verdict::Kill(ref m) if m.starts_with("Liveness probe failed")), "{verdict:?}");
    }

    #[tokio::test]
    async fn readiness_gates_ready_and_waits_for_its_delay() {
        let runtime = FakeRuntime::default();
        let spec = container(json!({"readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 5}}));
        let mut probes = ContainerProbes::new("c1", &spec);
        assert!(!probes.ready);
        let target = Target { runtime: &runtime, container_id: "c1", pod_ip: "10.0.0.5", spec: &spec };
        let mut failures = Vec::new();
        let Verdict::Fine(Some(next)) = probes.step(&target, Duration::from_secs(1), &mut failures).await else {
            panic!("expected a next time")
        };
        assert!(!probes.ready, "not run before its initial delay");
        assert!(next > Instant::now() + Duration::from_secs(3));
        probes.readiness.next = Some(Instant::now());
        probes.step(&target, Duration::from_secs(6), &mut failures).await;
        assert!(probes.ready);
    }

    #[tokio::test]
    async fn startup_holds_the_others_back() {
        let runtime = FakeRuntime::default();
        let spec = container(json!({
            "startupProbe": {"exec": {"command": ["false"]}, "failureThreshold": 1},
            "livenessProbe": {"exec": {"command": ["true"]}}
        }));
        let mut probes = ContainerProbes::new("c1", &spec);
        let target = Target { runtime: &runtime, container_id: "c1", pod_ip: "10.0.0.5", spec: &spec };
        let verdict = probes.step(&target, Duration::ZERO, &mut Vec::new()).await;
        assert!(matches!(verdict, Verdict::Kill(ref m) if m.starts_with("Startup probe failed")));
        assert!(probes.liveness.next.is_none(), "liveness never ran");
    }

    #[tokio::test]
    async fn http_and_tcp_probes_reach_a_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in [200, 500] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let runtime = FakeRuntime::default();
        let spec = container(json!({}));
        let target = Target { runtime: &runtime, container_id: "c1", pod_ip: "127.0.0.1", spec: &spec };
        let probe: Probe = serde_json::from_value(json!({"httpGet": {"path": "/healthz", "port": port}})).unwrap();
        assert_eq!(run(&probe, &target).await, Ok(()));
        let err = run(&probe, &target).await.unwrap_err();
        assert!(err.contains("statuscode: 500"), "{err}");
        let closed: Probe = serde_json::from_value(json!({"tcpSocket": {"port": 1}})).unwrap();
        assert!(run(&closed, &target).await.is_err());
        let named: Probe = serde_json::from_value(json!({"tcpSocket": {"port": "nope"}})).unwrap();
        assert!(run(&named, &target).await.unwrap_err().contains("no port named"));
    }
}
