//! One sync of one pod: compare the spec with what the runtime runs for it
//! (found by the pod uid label, so a restarted kubelet sees the same), act,
//! and report the status. Never panics on a spec: what cannot be done
//! becomes a waiting reason in the status or an Event.
//!
//! Order of work, as Kubernetes' kubelet does it:
//! deleting → stop the containers within the grace period, remove the
//! sandbox and volumes, and ask for the final delete; finished → nothing
//! runs; otherwise volumes → sandbox → init containers one by one to
//! completion → containers, each started, probed, or restarted after its
//! crash back-off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use tokio::time::Instant;

use super::spec::{self, ContainerContext};
use super::status::{self, ContainerView, Observed};
use super::Objects;
use crate::probes::{ContainerProbes, Target, Verdict};
use crate::runtime::{labels, proto, ContainerRuntime};
use crate::serviceaccount::TokenManager;
use crate::volumes::Volumes;
use crate::Error;
use skiff_api::clock;

/// A crashed container starts again no sooner than this after it ran this
/// long (Kubernetes: the back-off resets after 10 minutes of running).
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Containers of a pod that no pod wants any more get this long to stop.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// Waits before trying again what failed for a reason that can pass (a
/// missing ConfigMap, a create error).
const RETRY: Duration = Duration::from_secs(5);

/// Node-wide settings of the pod syncs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub node_ip: String,
    pub pod_log_dir: std::path::PathBuf,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub dns: super::dns::NodeDns,
}

/// An Event to record about the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What one sync asks the caller to do through the API.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The new status, when it differs from the stored one.
    pub status: Option<PodStatus>,
    /// Sync again after this long (probes, back-offs).
    pub requeue: Option<Duration>,
    pub events: Vec<PodEvent>,
    /// The pod's containers have stopped: delete it for good.
    pub delete: bool,
}

impl Outcome {
    fn requeue_after(&mut self, d: Duration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.events.push(PodEvent { warning, reason, message });
    }
}

/// What the kubelet remembers of a pod between syncs. Losing it (a
/// restart) costs only back-off history and probe counts.
#[derive(Debug, Default)]
struct PodMemory {
    /// Why a container's next attempt is not running (reason, message).
    waiting: HashMap<String, (String, String)>,
    crash: HashMap<String, CrashBackoff>,
    images: HashMap<String, ImageBackoff>,
    probes: HashMap<String, ContainerProbes>,
}

#[derive(Debug, Default)]
struct CrashBackoff {
    delay: Duration,
    /// finishedAt of the crash the delay was computed for.
    seen: i64,
}

#[derive(Debug)]
struct ImageBackoff {
    failures: u32,
    until: Instant,
    message: String,
}

/// Syncs pods against the runtime. Shared by the pod workers; the work
/// queue makes sure one pod is synced by one worker at a time.
pub struct PodSyncer {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub objects: Arc<dyn Objects>,
    pub volumes: Volumes,
    pub settings: Settings,
    /// Pods' ServiceAccount tokens; None: pods get none (no cluster CA known).
    pub tokens: Option<Arc<TokenManager>>,
    memory: Mutex<HashMap<String, PodMemory>>,
}

fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn is(c: &proto::ContainerStatus, state: proto::ContainerState) -> bool {
    c.state == state as i32
}

fn attempt(c: &proto::ContainerStatus) -> u32 {
    c.metadata.as_ref().map_or(0, |m| m.attempt)
}

/// Whether the restart policy restarts a container that exited with `code`.
fn restarts(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// The pod's grace period: the deletion's, else the spec's (default 30s).
pub fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

impl PodSyncer {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        objects: Arc<dyn Objects>,
        volumes: Volumes,
        settings: Settings,
    ) -> Self {
        Self { runtime, objects, volumes, settings, tokens: None, memory: Mutex::new(HashMap::new()) }
    }

    /// Projects ServiceAccount tokens from `tokens` into the pods.
    pub fn with_tokens(mut self, tokens: Arc<TokenManager>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    fn take_memory(&self, uid: &str) -> PodMemory {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).remove(uid).unwrap_or_default()
    }

    fn put_memory(&self, uid: &str, memory: PodMemory) {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.to_string(), memory);
    }

    fn forget(&self, uid: &str) {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    /// Brings the runtime in line with `pod` and reports what it shows.
    pub async fn sync(&self, pod: &Pod) -> Result<Outcome, Error> {
        let (uid, _, _) = spec::ids(pod);
        let uid = uid.to_string();
        let mut memory = self.take_memory(&uid);
        let result = self.sync_inner(pod, &mut memory).await;
        match &result {
            Ok(out) if out.delete => self.forget(&uid),
            _ => self.put_memory(&uid, memory),
        }
        result
    }

    /// Stops and removes whatever runs for the pod `namespace/name` (it is
    /// gone from the API): sandboxes, containers, volumes.
    pub async fn remove_pod(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let sandboxes =
            self.runtime.list_sandboxes(&[(labels::POD_NAMESPACE, namespace), (labels::POD_NAME, name)]).await?;
        let mut uids: Vec<String> = sandboxes.iter().filter_map(|s| s.labels.get(labels::POD_UID).cloned()).collect();
        uids.sort();
        uids.dedup();
        for uid in uids {
            tracing::info!(pod = %format!("{namespace}/{name}"), %uid, "removing containers no pod wants");
            let mine: Vec<_> =
                sandboxes.iter().filter(|s| s.labels.get(labels::POD_UID) == Some(&uid)).cloned().collect();
            self.kill_pod(&uid, &mine, ORPHAN_GRACE).await?;
            self.forget(&uid);
        }
        Ok(())
    }

    /// Stops every container of pod `uid` within `grace` (SIGTERM, then
    /// SIGKILL from the runtime), then stops and removes its sandboxes and
    /// volumes.
    async fn kill_pod(&self, uid: &str, sandboxes: &[proto::PodSandbox], grace: Duration) -> Result<(), Error> {
        let containers = self.runtime.list_containers(&[(labels::POD_UID, uid)]).await?;
        let stops = containers
            .iter()
            .filter(|c| c.state != proto::ContainerState::ContainerExited as i32)
            .map(|c| self.runtime.stop_container(&c.id, grace));
        for result in futures::future::join_all(stops).await {
            result?;
        }
        for sb in sandboxes {
            self.runtime.stop_sandbox(&sb.id).await?;
            self.runtime.remove_sandbox(&sb.id).await?;
        }
        if let Some(tokens) = &self.tokens {
            tokens.forget(uid);
        }
        self.volumes.cleanup(uid)
    }

    /// The pod's containers by name, newest attempt first.
    async fn observe(&self, uid: &str) -> Result<History, Error> {
        let listed = self.runtime.list_containers(&[(labels::POD_UID, uid)]).await?;
        let mut by_name: HashMap<String, Vec<proto::ContainerStatus>> = HashMap::new();
        for c in listed {
            let status = match self.runtime.container_status(&c.id).await {
                Ok(s) => s,
                // Removed between the list and now.
                Err(Error::Cri { source, .. }) if source.code() == tonic::Code::NotFound => continue,
                Err(e) => return Err(e),
            };
            let name = c.labels.get(labels::CONTAINER_NAME).cloned().unwrap_or_default();
            by_name.entry(name).or_default().push(status);
        }
        for history in by_name.values_mut() {
            history.sort_by_key(|c| std::cmp::Reverse((attempt(c), c.created_at)));
        }
        Ok(by_name)
    }

    async fn sync_inner(&self, pod: &Pod, memory: &mut PodMemory) -> Result<Outcome, Error> {
        let mut out = Outcome::default();
        let (uid, ns, name) = spec::ids(pod);
        self.remove_older_pods(uid, ns, name).await?;
        let sandboxes = self.runtime.list_sandboxes(&[(labels::POD_UID, uid)]).await?;

        if pod.metadata.deletion_timestamp.is_some() {
            let grace = grace_period(pod);
            tracing::info!(pod = %format!("{ns}/{name}"), ?grace, "stopping the pod's containers");
            self.kill_pod(uid, &sandboxes, grace).await?;
            out.delete = true;
            return Ok(out);
        }
        let current_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let ready_sandbox = sandboxes
            .iter()
            .filter(|s| s.state == proto::PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at);
        if matches!(current_phase, "Succeeded" | "Failed") {
            // Finished for good: nothing may run again. The stopped sandbox
            // and containers stay (for logs) until the pod is deleted.
            if let Some(sb) = ready_sandbox {
                self.stop_sandbox(uid, &sb.id, grace_period(pod)).await?;
            }
            return Ok(out);
        }
        let Some(pod_spec) = pod.spec.as_ref() else { return Ok(out) };

        let projection = match &self.tokens {
            Some(tokens) if crate::serviceaccount::wants_token(pod) => match tokens.projection(pod).await {
                Ok(p) => Some(p),
                Err(e) => return Ok(self.mount_failed(pod, pod_spec, memory, out, &e)),
            },
            _ => None,
        };
        let prepared = match self.volumes.prepare(pod, self.objects.as_ref(), projection.as_ref()) {
            Ok(p) => p,
            Err(e) => return Ok(self.mount_failed(pod, pod_spec, memory, out, &e)),
        };
        let (sandbox_id, sandbox_config) = self.ensure_sandbox(pod, &sandboxes, ready_sandbox, &mut out).await?;
        let pod_ip = self.pod_ip(pod, &sandbox_id).await?;
        let hosts = if spec::host_network(pod) {
            None
        } else {
            Some(self.volumes.write_hosts(uid, &spec::hostname(pod), &pod_ip)?)
        };
        let ctx = ContainerContext {
            pod,
            objects: self.objects.as_ref(),
            volumes: &prepared,
            hosts_file: hosts.as_deref(),
            pod_ip: &pod_ip,
            node_name: &self.settings.node_name,
            node_ip: &self.settings.node_ip,
        };
        let policy = pod_spec.restart_policy.as_deref().unwrap_or("Always");
        let grace = grace_period(pod);
        let start = Start { ctx: &ctx, sandbox_id: &sandbox_id, sandbox: &sandbox_config };

        let history = self.observe(uid).await?;
        let init_specs = pod_spec.init_containers.as_deref().unwrap_or_default();
        let init = self.sync_init_containers(memory, &mut out, &start, init_specs, &history, policy).await;
        let mut acted = init.acted;
        if init.done {
            acted |= self.sync_app_containers(memory, &mut out, &start, &history, policy, grace).await?;
        }

        let mut history = if acted { self.observe(uid).await? } else { history };
        self.prune_exited(&mut history).await;
        let obs = Observed {
            init: init_views(init_specs, &mut history, memory, policy),
            containers: app_views(&pod_spec.containers, &mut history, memory, policy),
            initialized: init.done,
            init_failed: init.failed,
            pod_ip: (!pod_ip.is_empty()).then(|| pod_ip.clone()),
            host_ip: self.settings.node_ip.clone(),
        };
        let new_status = status::build(pod, &obs, &clock::now_rfc3339());
        if matches!(new_status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            self.stop_sandbox(uid, &sandbox_id, grace).await?;
            out.requeue = None;
        }
        out.status = changed(pod, new_status);
        Ok(out)
    }

    /// Kills what an older pod of the same name left behind.
    async fn remove_older_pods(&self, uid: &str, ns: &str, name: &str) -> Result<(), Error> {
        for sb in self.runtime.list_sandboxes(&[(labels::POD_NAMESPACE, ns), (labels::POD_NAME, name)]).await? {
            if let Some(other) = sb.labels.get(labels::POD_UID).filter(|u| u.as_str() != uid) {
                self.kill_pod(other, std::slice::from_ref(&sb), ORPHAN_GRACE).await?;
            }
        }
        Ok(())
    }

    /// The volumes could not be set up: every container waits in
    /// ContainerCreating, with an Event saying why, and the sync retries.
    fn mount_failed(
        &self,
        pod: &Pod,
        pod_spec: &PodSpec,
        memory: &mut PodMemory,
        mut out: Outcome,
        error: &Error,
    ) -> Outcome {
        out.event(true, "FailedMount", format!("MountVolume.SetUp failed: {error}"));
        memory.waiting.clear();
        let views = pod_spec.containers.iter().map(|c| fresh_view(c, "ContainerCreating", "")).collect();
        let obs = Observed {
            init: Vec::new(),
            containers: views,
            initialized: pod_spec.init_containers.as_ref().is_none_or(|i| i.is_empty()),
            init_failed: false,
            pod_ip: None,
            host_ip: self.settings.node_ip.clone(),
        };
        out.status = changed(pod, status::build(pod, &obs, &clock::now_rfc3339()));
        out.requeue_after(RETRY);
        out
    }

    /// The pod's ready sandbox, or a new one: a sandbox that died took its
    /// containers along, so they start again in the new one.
    async fn ensure_sandbox(
        &self,
        pod: &Pod,
        sandboxes: &[proto::PodSandbox],
        ready: Option<&proto::PodSandbox>,
        out: &mut Outcome,
    ) -> Result<(String, proto::PodSandboxConfig), Error> {
        let (log_dir, dns) = (&self.settings.pod_log_dir, &self.settings.dns);
        if let Some(sb) = ready {
            let attempt = sb.metadata.as_ref().map_or(0, |m| m.attempt);
            return Ok((sb.id.clone(), spec::sandbox_config(pod, log_dir, dns, attempt)));
        }
        let attempt = sandboxes.iter().filter_map(|s| s.metadata.as_ref()).map(|m| m.attempt + 1).max();
        let config = spec::sandbox_config(pod, log_dir, dns, attempt.unwrap_or(0));
        let dir = std::path::PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            what: "creating",
            path: dir.display().to_string(),
            source,
        })?;
        match self.runtime.run_sandbox(config.clone()).await {
            Ok(id) => Ok((id, config)),
            Err(e) => {
                out.event(true, "FailedCreatePodSandBox", format!("Failed to create pod sandbox: {e}"));
                Err(e)
            }
        }
    }

    /// The node's address for a host-network pod, else the sandbox's.
    async fn pod_ip(&self, pod: &Pod, sandbox_id: &str) -> Result<String, Error> {
        if spec::host_network(pod) {
            return Ok(self.settings.node_ip.clone());
        }
        Ok(self.runtime.sandbox_ip(sandbox_id).await?.unwrap_or_default())
    }

    /// Init containers, one at a time, each to completion.
    async fn sync_init_containers(
        &self,
        memory: &mut PodMemory,
        out: &mut Outcome,
        start: &Start<'_>,
        init_specs: &[Container],
        history: &History,
        policy: &str,
    ) -> InitProgress {
        let mut progress = InitProgress { done: true, failed: false, acted: false };
        let Some((c, latest)) = init_specs
            .iter()
            .map(|c| (c, history.get(&c.name).and_then(|h| h.first())))
            .find(|(_, l)| !l.is_some_and(|l| is(l, proto::ContainerState::ContainerExited) && l.exit_code == 0))
        else {
            return progress;
        };
        progress.done = false;
        match latest {
            Some(l) if is(l, proto::ContainerState::ContainerRunning) => {}
            Some(l) if is(l, proto::ContainerState::ContainerExited) => {
                if policy == "Never" {
                    progress.failed = true;
                } else {
                    progress.acted = self.restart_after_backoff(memory, out, start, c, l).await;
                }
            }
            Some(l) => {
                progress.acted = true;
                self.start_created(memory, out, c, &l.id).await;
            }
            None => {
                progress.acted = true;
                self.start_new(memory, out, start, c, 0).await;
            }
        }
        progress
    }

    /// The pod's containers: each started, probed, or restarted after its
    /// crash back-off. True if it acted on any.
    async fn sync_app_containers(
        &self,
        memory: &mut PodMemory,
        out: &mut Outcome,
        start: &Start<'_>,
        history: &History,
        policy: &str,
        grace: Duration,
    ) -> Result<bool, Error> {
        let mut acted = false;
        let containers = start.ctx.pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
        for c in containers {
            match history.get(&c.name).and_then(|h| h.first()) {
                Some(l) if is(l, proto::ContainerState::ContainerRunning) => {
                    acted |= self.probe(memory, out, start, c, l, grace).await?;
                }
                Some(l) if is(l, proto::ContainerState::ContainerExited) => {
                    if restarts(policy, l.exit_code) {
                        acted |= self.restart_after_backoff(memory, out, start, c, l).await;
                    }
                }
                Some(l) => {
                    acted = true;
                    self.start_created(memory, out, c, &l.id).await;
                }
                None => {
                    acted = true;
                    self.start_new(memory, out, start, c, 0).await;
                }
            }
        }
        Ok(acted)
    }

    /// Runs the probes of a running container; a failed liveness or
    /// startup probe stops it. True if it stopped the container.
    async fn probe(
        &self,
        memory: &mut PodMemory,
        out: &mut Outcome,
        start: &Start<'_>,
        c: &Container,
        running: &proto::ContainerStatus,
        grace: Duration,
    ) -> Result<bool, Error> {
        let rt = self.runtime.as_ref();
        memory.waiting.remove(&c.name);
        let probes = probe_state(memory, c, &running.id);
        let target = Target { runtime: rt, container_id: &running.id, pod_ip: start.ctx.pod_ip, spec: c };
        let running_for = Duration::from_nanos(u64::try_from(now_nanos() - running.started_at).unwrap_or_default());
        let mut failures = Vec::new();
        let verdict = probes.step(&target, running_for, &mut failures).await;
        for f in failures {
            out.event(true, "Unhealthy", format!("{} probe failed: {}", f.probe, f.message));
        }
        match verdict {
            Verdict::Fine(Some(at)) => out.requeue_after(at.saturating_duration_since(Instant::now())),
            Verdict::Fine(None) => {}
            Verdict::Kill(why) => {
                out.event(false, "Killing", format!("Container {} {why}, will be restarted", c.name));
                rt.stop_container(&running.id, grace).await?;
                memory.probes.remove(&c.name);
                // The exit is handled (restart, back-off) right away.
                out.requeue_after(Duration::from_millis(1));
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Keeps the newest two of each container (the running one and the
    /// last that ended, for lastState and logs); removes older ones.
    async fn prune_exited(&self, history: &mut History) {
        for h in history.values_mut() {
            for old in h.drain(2.min(h.len())..) {
                if is(&old, proto::ContainerState::ContainerExited) {
                    if let Err(e) = self.runtime.remove_container(&old.id).await {
                        tracing::debug!(error = %e, id = %old.id, "removing an old container failed");
                    }
                }
            }
        }
    }

    /// Stops what still runs in a sandbox, then the sandbox.
    async fn stop_sandbox(&self, uid: &str, sandbox_id: &str, grace: Duration) -> Result<(), Error> {
        let containers = self.runtime.list_containers(&[(labels::POD_UID, uid)]).await?;
        for c in containers.iter().filter(|c| c.pod_sandbox_id == sandbox_id) {
            if c.state == proto::ContainerState::ContainerRunning as i32 {
                self.runtime.stop_container(&c.id, grace).await?;
            }
        }
        self.runtime.stop_sandbox(sandbox_id).await
    }

    /// Restarts an exited container once its crash back-off has passed;
    /// until then it waits in CrashLoopBackOff. True if it acted.
    async fn restart_after_backoff(
        &self,
        memory: &mut PodMemory,
        out: &mut Outcome,
        start: &Start<'_>,
        c: &Container,
        exited: &proto::ContainerStatus,
    ) -> bool {
        let entry = memory.crash.entry(c.name.clone()).or_default();
        if entry.seen != exited.finished_at {
            let ran = Duration::from_nanos(u64::try_from(exited.finished_at - exited.started_at).unwrap_or_default());
            entry.delay = if entry.delay.is_zero() || ran >= BACKOFF_RESET {
                self.settings.backoff_initial
            } else {
                entry.delay.saturating_mul(2).min(self.settings.backoff_max)
            };
            entry.seen = exited.finished_at;
        }
        let delay = entry.delay;
        let due = exited.finished_at.saturating_add(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX));
        let now = now_nanos();
        if now < due {
            let (uid, ns, name) = spec::ids(start.ctx.pod);
            let message = format!("back-off {delay:?} restarting failed container={} pod={name}_{ns}({uid})", c.name);
            memory.waiting.insert(c.name.clone(), ("CrashLoopBackOff".into(), message.clone()));
            out.event(true, "BackOff", format!("Back-off restarting failed container {}", c.name));
            out.requeue_after(Duration::from_nanos(u64::try_from(due - now).unwrap_or_default()));
            return false;
        }
        self.start_new(memory, out, start, c, attempt(exited) + 1).await;
        true
    }

    /// Starts a container that was created but not started; a failure
    /// becomes its waiting reason. True when it started.
    async fn start_created(&self, memory: &mut PodMemory, out: &mut Outcome, c: &Container, id: &str) -> bool {
        match self.runtime.start_container(id).await {
            Ok(()) => true,
            Err(e) => {
                failed(memory, out, c, "RunContainerError", cri_message(&e), self.settings.backoff_initial);
                false
            }
        }
    }

    /// Pulls the image as the policy says, then creates and starts attempt
    /// `attempt` of the container. What fails becomes its waiting reason.
    async fn start_new(
        &self,
        memory: &mut PodMemory,
        out: &mut Outcome,
        start: &Start<'_>,
        c: &Container,
        attempt: u32,
    ) {
        let image = match self.ensure_image(memory, out, start.ctx.pod, c).await {
            Ok(image) => image,
            Err((reason, message, retry)) => {
                memory.waiting.insert(c.name.clone(), (reason, message));
                out.requeue_after(retry);
                return;
            }
        };
        let config = match spec::container_config(start.ctx, c, &image, attempt) {
            Ok(config) => config,
            Err(message) => return failed(memory, out, c, "CreateContainerConfigError", message, RETRY),
        };
        let rt = self.runtime.as_ref();
        let id = match rt.create_container(start.sandbox_id, config, start.sandbox.clone()).await {
            Ok(id) => id,
            Err(e) => {
                let retry = self.settings.backoff_initial.max(Duration::from_secs(1));
                return failed(memory, out, c, "CreateContainerError", cri_message(&e), retry);
            }
        };
        memory.probes.remove(&c.name);
        if self.start_created(memory, out, c, &id).await {
            memory.waiting.remove(&c.name);
            tracing::debug!(container = %c.name, %id, attempt, "container started");
        }
    }

    /// The image to run, pulled if the policy says so, with a back-off
    /// after failed pulls: Err((reason, message, retry after)).
    async fn ensure_image(
        &self,
        memory: &mut PodMemory,
        out: &mut Outcome,
        pod: &Pod,
        c: &Container,
    ) -> Result<String, (String, String, Duration)> {
        let image = c.image.clone().unwrap_or_default();
        if image.is_empty() {
            return Err(("InvalidImageName".into(), "the container has no image".into(), RETRY));
        }
        let rt = self.runtime.as_ref();
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| default_pull_policy(&image).into());
        let present =
            || async { rt.image_id(&image).await.map_err(|e| ("ErrImageInspect".to_string(), cri_message(&e), RETRY)) };
        match policy.as_str() {
            "Never" => {
                return present().await?.ok_or_else(|| {
                    let message = format!("Container image {image:?} is not present with pull policy of Never");
                    ("ErrImageNeverPull".to_string(), message, RETRY)
                })
            }
            "IfNotPresent" => {
                if let Some(id) = present().await? {
                    return Ok(id);
                }
            }
            _ => {}
        }
        if let Some(b) = memory.images.get(&image) {
            let now = Instant::now();
            if now < b.until {
                let message = format!("Back-off pulling image {image:?}: {}", b.message);
                return Err(("ImagePullBackOff".into(), message, b.until - now));
            }
        }
        let auth = spec::pull_auth(pod, self.objects.as_ref(), &image);
        match rt.pull_image(&image, auth).await {
            Ok(id) => {
                memory.images.remove(&image);
                Ok(id)
            }
            Err(e) => {
                let message = cri_message(&e);
                let failures = memory.images.get(&image).map_or(0, |b| b.failures) + 1;
                let max = self.settings.backoff_max;
                let delay = self
                    .settings
                    .backoff_initial
                    .checked_mul(2u32.saturating_pow(failures - 1))
                    .map_or(max, |d| d.min(max));
                memory.images.insert(
                    image.clone(),
                    ImageBackoff { failures, until: Instant::now() + delay, message: message.clone() },
                );
                out.event(true, "Failed", format!("Failed to pull image {image:?}: {message}"));
                Err(("ErrImagePull".into(), message, delay))
            }
        }
    }
}

/// Where a new container goes.
struct Start<'a> {
    ctx: &'a ContainerContext<'a>,
    sandbox_id: &'a str,
    sandbox: &'a proto::PodSandboxConfig,
}

/// Kubernetes' default: Always for `:latest` or no tag, else IfNotPresent.
/// Each container's CRI statuses, newest first.
type History = HashMap<String, Vec<proto::ContainerStatus>>;

/// Where the init containers stand after one sync.
#[derive(Debug, Clone, Copy)]
struct InitProgress {
    /// Every init container exited 0: the app containers may run.
    done: bool,
    /// One exited non-zero under restartPolicy Never: the pod has failed.
    failed: bool,
    acted: bool,
}

/// What the status says of each init container.
fn init_views<'a>(
    specs: &'a [Container],
    history: &mut History,
    memory: &mut PodMemory,
    policy: &str,
) -> Vec<ContainerView<'a>> {
    specs
        .iter()
        .map(|c| {
            let h = history.remove(&c.name).unwrap_or_default();
            let exited_bad =
                h.first().is_some_and(|l| is(l, proto::ContainerState::ContainerExited) && l.exit_code != 0);
            let running = h.first().is_some_and(|l| is(l, proto::ContainerState::ContainerRunning));
            let ok = h.first().is_some_and(|l| is(l, proto::ContainerState::ContainerExited) && l.exit_code == 0);
            ContainerView {
                spec: c,
                waiting: memory.waiting.get(&c.name).cloned().filter(|_| !running && !ok),
                restarting: exited_bad && policy != "Never",
                ready: ok,
                started: running,
                history: h,
            }
        })
        .collect()
}

/// What the status says of each app container: readiness from its probes.
fn app_views<'a>(
    specs: &'a [Container],
    history: &mut History,
    memory: &mut PodMemory,
    policy: &str,
) -> Vec<ContainerView<'a>> {
    specs
        .iter()
        .map(|c| {
            let h = history.remove(&c.name).unwrap_or_default();
            let latest = h.first();
            let running = latest.is_some_and(|l| is(l, proto::ContainerState::ContainerRunning));
            let exited = latest.is_some_and(|l| is(l, proto::ContainerState::ContainerExited));
            let restarting = exited && latest.is_some_and(|l| restarts(policy, l.exit_code));
            let (ready, started) = match (running, latest) {
                (true, Some(l)) => {
                    let p = probe_state(memory, c, &l.id);
                    (p.ready && p.started, p.started)
                }
                _ => (false, false),
            };
            ContainerView {
                spec: c,
                waiting: memory.waiting.get(&c.name).cloned().filter(|_| !running && (restarting || !exited)),
                restarting,
                ready,
                started,
                history: h,
            }
        })
        .collect()
}

fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            Some((_, "latest")) | None => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

/// The runtime's own words for a failed call.
/// A container that could not be created or started: a Warning Event, the
/// reason it waits with, and when to try again.
fn failed(memory: &mut PodMemory, out: &mut Outcome, c: &Container, reason: &str, message: String, retry: Duration) {
    out.event(true, "Failed", format!("Error: {message}"));
    memory.waiting.insert(c.name.clone(), (reason.to_string(), message));
    out.requeue_after(retry);
}

fn cri_message(e: &Error) -> String {
    match e {
        Error::Cri { source, .. } => source.message().to_string(),
        other => other.to_string(),
    }
}

/// The probe state of container `c` for runtime container `id` (fresh for
/// a new container).
fn probe_state<'m>(memory: &'m mut PodMemory, c: &Container, id: &str) -> &'m mut ContainerProbes {
    let entry = memory.probes.entry(c.name.clone()).or_insert_with(|| ContainerProbes::new(id, c));
    if entry.container_id != id {
        *entry = ContainerProbes::new(id, c);
    }
    entry
}

/// A container the runtime has nothing of yet.
fn fresh_view<'a>(c: &'a Container, reason: &str, message: &str) -> ContainerView<'a> {
    ContainerView {
        spec: c,
        history: Vec::new(),
        waiting: Some((reason.into(), message.into())),
        restarting: false,
        ready: false,
        started: false,
    }
}

/// `new` if it differs from the pod's stored status.
fn changed(pod: &Pod, new: PodStatus) -> Option<PodStatus> {
    let old = serde_json::to_value(pod.status.clone().unwrap_or_default()).ok();
    (old != serde_json::to_value(&new).ok()).then_some(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::tests::MapObjects;
    use crate::runtime::fake::FakeRuntime;
    use serde_json::json;

    fn syncer(fake: Arc<FakeRuntime>, objects: Arc<MapObjects>, root: &std::path::Path) -> PodSyncer {
        let settings = Settings {
            node_name: "n1".into(),
            node_ip: "192.168.0.2".into(),
            pod_log_dir: root.join("logs"),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_millis(800),
            dns: Default::default(),
        };
        PodSyncer::new(fake, objects, Volumes::new(root), settings)
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "resourceVersion": "3"},
            "spec": spec,
        }))
        .unwrap()
    }

    /// Syncs, then stores the reported status on the pod as the API would.
    async fn step(s: &PodSyncer, p: &mut Pod) -> Outcome {
        let mut out = s.sync(p).await.expect("sync");
        if let Some(status) = out.status.take() {
            p.status = Some(status);
        }
        out
    }

    fn state(p: &Pod, i: usize) -> serde_json::Value {
        serde_json::to_value(&p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[i]).unwrap()
    }

    #[tokio::test]
    async fn starts_a_pod_and_reports_it_running() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_images(&["app:1"]));
        let s = syncer(fake.clone(), Arc::default(), tmp.path());
        let mut p = pod(json!({"containers": [{"name": "c", "image": "app:1"}]}));
        step(&s, &mut p).await;
        let status = p.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(status.host_ip.as_deref(), Some("192.168.0.2"));
        let c = state(&p, 0);
        assert_eq!(c["ready"], true);
        assert_eq!(c["restartCount"], 0);
        assert!(c["state"]["running"].is_object(), "{c}");
        let ready = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(fake.sandbox_count(), 1);
        // Nothing changed: nothing to write, nothing started again.
        let again = s.sync(&p).await.unwrap();
        assert!(again.status.is_none(), "unchanged status is not written");
        assert_eq!(fake.containers().len(), 1);
    }

    #[tokio::test]
    async fn a_crashing_container_restarts_after_a_growing_back_off() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_images(&["app:1"]));
        let s = syncer(fake.clone(), Arc::default(), tmp.path());
        let mut p = pod(json!({"containers": [{"name": "c", "image": "app:1"}]}));
        step(&s, &mut p).await;
        fake.exit("c", 1, "Error");
        let out = step(&s, &mut p).await;
        let c = state(&p, 0);
        assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff", "{c}");
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        let first = out.requeue.expect("requeued for the back-off");
        assert!(first <= Duration::from_millis(200));
        tokio::time::sleep(first).await;
        step(&s, &mut p).await;
        let c = state(&p, 0);
        assert_eq!(c["restartCount"], 1, "{c}");
        assert!(c["state"]["running"].is_object());
        fake.exit("c", 1, "Error");
        let out = step(&s, &mut p).await;
        assert!(out.requeue.unwrap() > Duration::from_millis(200), "the back-off doubled");
    }

    #[tokio::test]
    async fn a_bad_image_waits_in_image_pull_back_off() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::default());
        let s = syncer(fake.clone(), Arc::default(), tmp.path());
        let mut p = pod(json!({"containers": [{"name": "c", "image": "nope:1"}]}));
        let out = step(&s, &mut p).await;
        let c = state(&p, 0);
        assert_eq!(c["state"]["waiting"]["reason"], "ErrImagePull", "{c}");
        assert!(c["state"]["waiting"]["message"].as_str().unwrap().contains("not found"));
        assert!(out.events.iter().any(|e| e.reason == "Failed"));
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
        step(&s, &mut p).await;
        assert_eq!(state(&p, 0)["state"]["waiting"]["reason"], "ImagePullBackOff");
    }

    #[tokio::test]
    async fn a_create_error_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_images(&["app:1"]));
        let s = syncer(fake.clone(), Arc::default(), tmp.path());
        let mut p = pod(json!({"containers": [{"name": "c", "image": "app:1", "command": ["/missing"]}]}));
        step(&s, &mut p).await;
        let c = state(&p, 0);
        assert_eq!(c["state"]["waiting"]["reason"], "CreateContainerError", "{c}");
        assert!(c["state"]["waiting"]["message"].as_str().unwrap().contains("executable file not found"));
    }

    #[tokio::test]
    async fn init_containers_run_first_and_never_restart_means_done() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_images(&["app:1"]));
        let s = syncer(fake.clone(), Arc::default(), tmp.path());
        let mut p = pod(json!({
            "restartPolicy": "Never",
            "initContainers": [{"name": "setup", "image": "app:1"}],
            "containers": [{"name": "c", "image": "app:1"}]
        }));
        step(&s, &mut p).await;
        assert_eq!(fake.containers().iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["setup"]);
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
        fake.exit("setup", 0, "Completed");
        step(&s, &mut p).await;
        assert_eq!(fake.containers().len(), 2, "the main container started after init");
        fake.exit("c", 0, "Completed");
        step(&s, &mut p).await;
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Succeeded"));
        assert_eq!(state(&p, 0)["state"]["terminated"]["reason"], "Completed");
        assert!(fake.calls().iter().any(|c| c.starts_with("StopPodSandbox")), "the finished pod's sandbox stops");
    }

    #[tokio::test]
    async fn deletion_stops_everything_and_asks_for_the_final_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_images(&["app:1"]));
        let s = syncer(fake.clone(), Arc::default(), tmp.path());
        let mut p =
            pod(json!({"containers": [{"name": "c", "image": "app:1"}], "volumes": [{"name": "v", "emptyDir": {}}]}));
        step(&s, &mut p).await;
        assert!(s.volumes.pod_dir("u1").exists());
        p.metadata.deletion_timestamp = serde_json::from_value(json!("2024-01-01T00:00:00Z")).unwrap();
        p.metadata.deletion_grace_period_seconds = Some(5);
        let out = s.sync(&p).await.unwrap();
        assert!(out.delete);
        let calls = fake.calls();
        assert!(calls.iter().any(|c| c.starts_with("StopContainer")), "{calls:?}");
        assert_eq!(fake.sandbox_count(), 0);
        assert!(!s.volumes.pod_dir("u1").exists());
    }

    #[tokio::test]
    async fn a_missing_config_map_holds_the_pod_with_an_event() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_images(&["app:1"]));
        let objects = Arc::new(MapObjects::default());
        let s = syncer(fake.clone(), objects.clone(), tmp.path());
        let mut p = pod(json!({
            "containers": [{"name": "c", "image": "app:1", "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
            "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}]
        }));
        let out = step(&s, &mut p).await;
        let event = out.events.iter().find(|e| e.reason == "FailedMount").expect("FailedMount");
        assert!(event.message.contains("configmap \"settings\" not found"), "{}", event.message);
        assert_eq!(fake.sandbox_count(), 0);
        assert_eq!(state(&p, 0)["state"]["waiting"]["reason"], "ContainerCreating");
        objects.put_config_map("ns", "settings", &[("k", "v")]);
        step(&s, &mut p).await;
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
    }

    #[tokio::test]
    async fn containers_of_a_vanished_pod_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_images(&["app:1"]));
        let s = syncer(fake.clone(), Arc::default(), tmp.path());
        let mut p = pod(json!({"containers": [{"name": "c", "image": "app:1"}]}));
        step(&s, &mut p).await;
        s.remove_pod("ns", "web").await.unwrap();
        assert_eq!(fake.sandbox_count(), 0);
    }

    #[test]
    fn pull_policy_defaults_follow_the_tag() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("127.0.0.1:5000/busybox:latest"), "Always");
        assert_eq!(default_pull_policy("127.0.0.1:5000/busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("127.0.0.1:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("x@sha256:abc"), "IfNotPresent");
    }
}
