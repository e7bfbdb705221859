//! CPU and memory of the containers on this node, from CRI
//! `ListContainerStats`, grouped into pods by the kubelet's labels; and the
//! same figures as Prometheus metrics (the names of Kubernetes' kubelet
//! resource metrics).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_api::proto::{ContainerStats, CpuStats, MemoryStats, NodeStats, PodStats, StatsRequest};
use skiff_telemetry::prometheus::core::{Collector, Desc};
use skiff_telemetry::prometheus::proto::MetricFamily;
use skiff_telemetry::prometheus::{CounterVec, GaugeVec, Opts};
use skiff_telemetry::Metrics;

use super::ServerError;
use crate::runtime::labels::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};
use crate::runtime::ContainerRuntime;

/// The last CPU sample of each container, to work out nano-cores where the
/// runtime leaves them out: (timestamp ns, usage core-ns).
#[derive(Debug, Default, Clone)]
pub struct CpuSamples(Arc<Mutex<HashMap<String, (i64, u64)>>>);

impl CpuSamples {
    /// `usage_nano_cores` from the runtime, else the rate since this
    /// container's previous sample (0 for its first).
    fn nano_cores(&self, id: &str, timestamp: i64, total: u64, reported: Option<u64>) -> u64 {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last.insert(id.to_string(), (timestamp, total));
        if let Some(n) = reported.filter(|n| *n > 0) {
            return n;
        }
        match previous {
            Some((t0, u0)) if timestamp > t0 && total >= u0 => {
                ((total - u0) as u128 * 1_000_000_000 / (timestamp - t0) as u128) as u64
            }
            _ => 0,
        }
    }

    /// Forgets containers no longer listed.
    fn retain(&self, ids: &[&str]) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| ids.contains(&id.as_str()));
    }
}

/// The stats of the pods `req` names (every pod for an empty request),
/// sorted by namespace and name.
pub async fn pod_stats(
    runtime: &dyn ContainerRuntime,
    samples: &CpuSamples,
    req: &StatsRequest,
) -> Result<Vec<PodStats>, ServerError> {
    let mut labels = Vec::new();
    if !req.namespace.is_empty() {
        labels.push((POD_NAMESPACE, req.namespace.as_str()));
    }
    if !req.pod.is_empty() {
        labels.push((POD_NAME, req.pod.as_str()));
    }
    let stats = runtime.container_stats(&labels).await?;
    let mut pods: BTreeMap<(String, String), PodStats> = BTreeMap::new();
    let mut seen = Vec::new();
    for s in &stats {
        let Some(attributes) = &s.attributes else { continue };
        let label = |k: &str| attributes.labels.get(k).cloned().unwrap_or_default();
        let (namespace, pod) = (label(POD_NAMESPACE), label(POD_NAME));
        // Containers that skiff did not start (no pod labels) are not a pod's.
        if namespace.is_empty() || pod.is_empty() {
            continue;
        }
        seen.push(attributes.id.as_str());
        let cpu = s.cpu.as_ref().map(|c| {
            let total = c.usage_core_nano_seconds.as_ref().map_or(0, |v| v.value);
            let reported = c.usage_nano_cores.as_ref().map(|v| v.value);
            CpuStats {
                timestamp: c.timestamp,
                usage_nano_cores: samples.nano_cores(&attributes.id, c.timestamp, total, reported),
                usage_core_nano_seconds: total,
            }
        });
        let memory = s.memory.as_ref().map(|m| MemoryStats {
            timestamp: m.timestamp,
            working_set_bytes: m.working_set_bytes.as_ref().map_or(0, |v| v.value),
        });
        let name = match label(CONTAINER_NAME) {
            n if n.is_empty() => attributes.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            n => n,
        };
        let entry = pods.entry((namespace.clone(), pod.clone())).or_insert_with(|| PodStats {
            namespace,
            name: pod,
            uid: label(POD_UID),
            cpu: Some(CpuStats::default()),
            memory: Some(MemoryStats::default()),
            containers: Vec::new(),
        });
        add(entry, cpu.as_ref(), memory.as_ref());
        entry.containers.push(ContainerStats { name, id: attributes.id.clone(), cpu, memory });
    }
    samples.retain(&seen);
    let mut pods: Vec<PodStats> = pods.into_values().collect();
    for p in &mut pods {
        p.containers.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(pods)
}

/// The whole host's CPU and memory, from /proc, as the node's own figures
/// (its name is for the caller to fill in): CPU busy time (all but idle
/// and iowait) and memory in use (MemTotal less MemAvailable).
pub fn node_stats(samples: &CpuSamples) -> Result<NodeStats, ServerError> {
    let read =
        |path: &'static str| std::fs::read_to_string(path).map_err(|source| ServerError::ReadHost { path, source });
    let busy = cpu_busy_core_ns(&read("/proc/stat")?).unwrap_or(0);
    let in_use = memory_in_use(&read("/proc/meminfo")?).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    Ok(NodeStats {
        name: String::new(),
        cpu: Some(CpuStats {
            timestamp: now,
            usage_nano_cores: samples.nano_cores("node", now, busy, None),
            usage_core_nano_seconds: busy,
        }),
        memory: Some(MemoryStats { timestamp: now, working_set_bytes: in_use }),
    })
}

/// CPU time the host spent busy, in core-nanoseconds, from /proc/stat's
/// `cpu` line (in USER_HZ ticks, 100 a second on Linux).
fn cpu_busy_core_ns(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user and nice).
    let busy: u64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Some(busy * 10_000_000)
}

/// Bytes of memory in use: MemTotal less MemAvailable.
fn memory_in_use(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

/// Adds a container's figures to its pod's sums.
fn add(pod: &mut PodStats, cpu: Option<&CpuStats>, memory: Option<&MemoryStats>) {
    if let (Some(sum), Some(c)) = (pod.cpu.as_mut(), cpu) {
        sum.timestamp = sum.timestamp.max(c.timestamp);
        sum.usage_nano_cores += c.usage_nano_cores;
        sum.usage_core_nano_seconds += c.usage_core_nano_seconds;
    }
    if let (Some(sum), Some(m)) = (pod.memory.as_mut(), memory) {
        sum.timestamp = sum.timestamp.max(m.timestamp);
        sum.working_set_bytes += m.working_set_bytes;
    }
}

#[cfg(test)]
mod host_tests {
    use super::*;

    #[test]
    fn host_figures_come_from_proc() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n";
        assert_eq!(cpu_busy_core_ns(stat), Some((100 + 5 + 50 + 1 + 2 + 3) * 10_000_000));
        let meminfo = "MemTotal:       16000 kB\nMemFree:         1000 kB\nMemAvailable:    6000 kB\n";
        assert_eq!(memory_in_use(meminfo), Some(10_000 * 1024));
        let first = node_stats(&CpuSamples::default()).unwrap();
        assert!(first.memory.unwrap().working_set_bytes > 0, "this host uses some memory");
    }
}

// === impl StatsMetrics ===

/// Prometheus metrics of the pods and containers on this node, refreshed
/// from CRI by [`StatsMetrics::run`] and served from the last refresh (a
/// scrape never waits on the runtime):
///
/// - `container_cpu_usage_seconds_total{namespace,pod,container}` (counter)
/// - `container_memory_working_set_bytes{namespace,pod,container}`
/// - `pod_cpu_usage_seconds_total{namespace,pod}` (counter)
/// - `pod_memory_working_set_bytes{namespace,pod}`
///
/// Series of removed containers go away at the next refresh.
#[derive(Clone)]
pub struct StatsMetrics {
    snapshot: Arc<Mutex<Vec<PodStats>>>,
    container_cpu: CounterVec,
    container_memory: GaugeVec,
    pod_cpu: CounterVec,
    pod_memory: GaugeVec,
}

impl StatsMetrics {
    /// Registers the metrics with the kubelet's registry.
    pub fn register(metrics: &Metrics) -> Result<Self, ServerError> {
        let container = ["namespace", "pod", "container"];
        let pod = ["namespace", "pod"];
        let counter = |name, help, labels: &[&str]| CounterVec::new(Opts::new(name, help), labels);
        let gauge = |name, help, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let this = Self {
            snapshot: Arc::default(),
            container_cpu: counter("container_cpu_usage_seconds_total", "CPU time used by the container", &container)?,
            container_memory: gauge(
                "container_memory_working_set_bytes",
                "Working set memory of the container",
                &container,
            )?,
            pod_cpu: counter("pod_cpu_usage_seconds_total", "CPU time used by the pod's containers", &pod)?,
            pod_memory: gauge("pod_memory_working_set_bytes", "Working set memory of the pod's containers", &pod)?,
        };
        Ok(metrics.register(this)?)
    }

    /// Refreshes the figures from CRI every `interval` until `shutdown`.
    pub async fn run(
        self,
        runtime: Arc<dyn ContainerRuntime>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let samples = CpuSamples::default();
        let mut ticks = tokio::time::interval(interval);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = &mut shutdown => return,
            }
            match pod_stats(runtime.as_ref(), &samples, &StatsRequest::default()).await {
                Ok(pods) => self.set(pods),
                Err(e) => tracing::warn!(error = %e, "refreshing container metrics"),
            }
        }
    }

    /// Replaces the figures served with `pods`.
    pub fn set(&self, pods: Vec<PodStats>) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = pods;
    }
}

fn seconds(cpu: Option<&CpuStats>) -> f64 {
    cpu.map_or(0.0, |c| c.usage_core_nano_seconds as f64 / 1e9)
}

fn bytes(memory: Option<&MemoryStats>) -> f64 {
    memory.map_or(0.0, |m| m.working_set_bytes as f64)
}

impl Collector for StatsMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [self.container_cpu.desc(), self.container_memory.desc(), self.pod_cpu.desc(), self.pod_memory.desc()]
            .into_iter()
            .flatten()
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // The lock also keeps two scrapes from interleaving reset and set.
        let pods = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        self.container_cpu.reset();
        self.container_memory.reset();
        self.pod_cpu.reset();
        self.pod_memory.reset();
        for p in pods.iter() {
            self.pod_cpu.with_label_values(&[&p.namespace, &p.name]).inc_by(seconds(p.cpu.as_ref()));
            self.pod_memory.with_label_values(&[&p.namespace, &p.name]).set(bytes(p.memory.as_ref()));
            for c in &p.containers {
                let labels = [p.namespace.as_str(), p.name.as_str(), c.name.as_str()];
                self.container_cpu.with_label_values(&labels).inc_by(seconds(c.cpu.as_ref()));
                self.container_memory.with_label_values(&labels).set(bytes(c.memory.as_ref()));
            }
        }
        [
            self.container_cpu.collect(),
            self.container_memory.collect(),
            self.pod_cpu.collect(),
            self.pod_memory.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_from_the_runtime_else_from_the_previous_sample() {
        let s = CpuSamples::default();
        assert_eq!(s.nano_cores("a", 1_000_000_000, 500, None), 0, "first sample: no rate yet");
        // Half a core: 0.5 s of CPU over 1 s.
        assert_eq!(s.nano_cores("a", 2_000_000_000, 500_000_500, None), 500_000_000);
        assert_eq!(s.nano_cores("a", 3_000_000_000, 600_000_000, Some(42)), 42);
        s.retain(&[]);
        assert_eq!(s.nano_cores("a", 4_000_000_000, 700_000_000, None), 0, "forgotten");
    }

    #[test]
    fn metrics_show_the_last_snapshot_only() {
        let metrics = Metrics::new();
        let stats = StatsMetrics::register(&metrics).unwrap();
        let container = |name: &str, ns: u64, mem: u64| ContainerStats {
            name: name.into(),
            id: name.into(),
            cpu: Some(CpuStats { usage_core_nano_seconds: ns, ..Default::default() }),
            memory: Some(MemoryStats { working_set_bytes: mem, ..Default::default() }),
        };
        let mut pod = PodStats {
            namespace: "default".into(),
            name: "web".into(),
            cpu: Some(CpuStats::default()),
            memory: Some(MemoryStats::default()),
            ..Default::default()
        };
        for c in [container("app", 1_500_000_000, 1000), container("side", 500_000_000, 24)] {
            add(&mut pod, c.cpu.as_ref(), c.memory.as_ref());
            pod.containers.push(c);
        }
        stats.set(vec![pod]);
        let text = gather(&metrics);
        assert!(
            text.contains(r#"container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"} 1.5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"container_memory_working_set_bytes{container="side",namespace="default",pod="web"} 24"#)
        );
        assert!(text.contains(r#"pod_cpu_usage_seconds_total{namespace="default",pod="web"} 2"#), "{text}");
        assert!(text.contains(r#"pod_memory_working_set_bytes{namespace="default",pod="web"} 1024"#), "{text}");
        stats.set(Vec::new());
        assert!(!gather(&metrics).contains("pod=\"web\""), "removed pods' series stay");
    }

    fn gather(metrics: &Metrics) -> String {
        use skiff_telemetry::prometheus::{Encoder, TextEncoder};
        let mut out = Vec::new();
        TextEncoder::new().encode(&metrics.registry().gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }
}
