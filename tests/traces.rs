//! One `skiffctl apply` of a Deployment is one trace, exported over OTLP by
//! every process it touches: skiffctl → apiserver → etcd, then the
//! controller-manager's Deployment and ReplicaSet work, each pod's
//! scheduling and its start by the kubelet, joined through the trace context
//! the apiserver keeps on every object a traced request creates.
//!
//! Runs real etcd, containerd and skiff services against the testkit's OTLP
//! receiver. Needs the binaries: `cargo build --workspace --bins`.

use std::collections::HashMap;

use serde_json::Value;
use skiff_api::well_known::TRACE_CONTEXT_ANNOTATION;
use skiff_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use skiff_testkit::runtime::{RuntimeOptions, BUSYBOX_IMAGE};
use skiff_testkit::{eventually, Cluster, ClusterOptions};

const NS: &str = "default";
const NODE: &str = "traced-node";
const REPLICAS: usize = 2;

fn manifest(image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: traced
spec:
  replicas: {REPLICAS}
  selector:
    matchLabels: {{app: traced}}
  template:
    metadata:
      labels: {{app: traced}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: {image}
        command: [sleep, '3600']
"
    )
}

/// The trace id of a `traceparent` (`00-TRACE-SPAN-FLAGS`).
fn trace_id_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

/// A span looked for: its service, its name and some of its attributes.
type SpanShape = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// One trace's spans, with lookups by id and by parent.
struct Trace {
    spans: Vec<ReceivedSpan>,
    by_id: HashMap<String, usize>,
}

impl Trace {
    fn of(all: Vec<ReceivedSpan>, trace_id: &str) -> Self {
        let spans: Vec<ReceivedSpan> = all.into_iter().filter(|s| s.trace_id == trace_id).collect();
        let by_id = spans.iter().enumerate().map(|(i, s)| (s.span_id.clone(), i)).collect();
        Self { spans, by_id }
    }

    fn parent(&self, span: &ReceivedSpan) -> Option<&ReceivedSpan> {
        self.by_id.get(&span.parent_span_id).map(|&i| &self.spans[i])
    }

    fn find(&self, service: &str, name: &str, attrs: &[(&str, &str)]) -> Vec<&ReceivedSpan> {
        self.spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .filter(|s| attrs.iter().all(|(k, v)| s.attributes.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    fn children<'a>(&'a self, of: &'a ReceivedSpan) -> impl Iterator<Item = &'a ReceivedSpan> + 'a {
        self.spans.iter().filter(move |s| s.parent_span_id == of.span_id)
    }

    /// Whether `span` descends from `ancestor` through spans of this trace.
    fn descends_from(&self, span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
        let mut at = span;
        for _ in 0..self.spans.len() {
            match self.parent(at) {
                Some(p) if p.span_id == ancestor.span_id => return true,
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    }

    /// What is still missing from the whole trace, or None once every
    /// link this test expects is there.
    fn missing(&self) -> Option<String> {
        let roots: Vec<&ReceivedSpan> = self.spans.iter().filter(|s| s.parent_span_id.is_empty()).collect();
        let [root] = roots.as_slice() else { return Some(format!("one root span, found {}", roots.len())) };
        if (root.service.as_str(), root.name.as_str()) != ("skiffctl", "skiffctl apply") {
            return Some(format!("the root to be skiffctl's apply, not {root:?}"));
        }
        if let Some(orphan) = self.spans.iter().find(|s| !s.parent_span_id.is_empty() && self.parent(s).is_none()) {
            return Some(format!("the parent of {orphan:?}"));
        }
        let create = self.find("skiff-apiserver", "rpc", &[("method", "Create"), ("kind", "Deployment")]);
        let [create] = create.as_slice() else { return Some("the apiserver's Create of the Deployment".into()) };
        if create.parent_span_id != root.span_id {
            return Some("the Deployment's Create as a child of skiffctl's span".into());
        }
        if !self.children(create).any(|s| s.name == "etcd" && s.attributes.get("op").map(String::as_str) == Some("put"))
        {
            return Some("an etcd put under the Deployment's Create".into());
        }
        let expected: [SpanShape; 5] = [
            ("skiff-controller-manager", "reconcile", &[("controller", "deployment")]),
            ("skiff-apiserver", "rpc", &[("method", "Create"), ("kind", "ReplicaSet")]),
            ("skiff-controller-manager", "reconcile", &[("controller", "replicaset")]),
            ("skiff-apiserver", "rpc", &[("method", "Create"), ("kind", "Pod")]),
            ("skiff-kubelet", "reconcile", &[("controller", "pod")]),
        ];
        for (service, name, attrs) in expected {
            let found = self.find(service, name, attrs);
            if found.is_empty() {
                return Some(format!("{service}'s {name} {attrs:?}"));
            }
            if let Some(detached) = found.iter().find(|s| !self.descends_from(s, root)) {
                return Some(format!("{detached:?} to descend from skiffctl's span"));
            }
        }
        let pod_creates = self.find("skiff-apiserver", "rpc", &[("method", "Create"), ("kind", "Pod")]).len();
        if pod_creates != REPLICAS {
            return Some(format!("{REPLICAS} pod creates, found {pod_creates}"));
        }
        let schedules = self.find("skiff-scheduler", "schedule", &[]);
        if schedules.len() != REPLICAS {
            return Some(format!("{REPLICAS} scheduling decisions, found {}", schedules.len()));
        }
        for schedule in schedules {
            let binds =
                self.children(schedule).filter(|s| s.attributes.get("method").map(String::as_str) == Some("Bind"));
            if binds.count() != 1 {
                return Some(format!("one Bind under {schedule:?}"));
            }
        }
        None
    }
}

#[tokio::test]
async fn one_apply_of_a_deployment_is_one_trace_down_to_its_pods_start() {
    let receiver = OtlpReceiver::start().expect("start the OTLP receiver");
    let options =
        ClusterOptions { runtime: Some(RuntimeOptions::default()), env: receiver.env(), ..Default::default() };
    let mut cluster = Cluster::start_with(options).await.expect("start a cluster with a runtime");
    cluster.start_workers(NODE, &[]).await.unwrap();
    let client = cluster.client();
    let image = cluster.runtime().unwrap().registry().image(BUSYBOX_IMAGE);

    let applied = cluster.skiffctl(&["apply", "-f", "-"], Some(&manifest(&image))).unwrap();
    assert!(applied.status.success(), "apply: {}", String::from_utf8_lossy(&applied.stderr));

    let pods = eventually("both pods running", || async {
        let pods = client.list("Pod", NS, &Default::default()).await.ok()?.items;
        let running = pods.iter().filter(|p| p["status"]["phase"] == "Running").count();
        (running == REPLICAS).then_some(pods)
    })
    .await;

    // The apiserver kept each creating request's context on the objects.
    let deployment = client.get("Deployment", NS, "traced").await.unwrap();
    let traceparent = annotation(&deployment, TRACE_CONTEXT_ANNOTATION).expect("the Deployment's trace context");
    let trace_id = trace_id_of(traceparent).to_string();
    assert_eq!(trace_id.len(), 32, "{traceparent}");
    for pod in &pods {
        let carried = annotation(pod, TRACE_CONTEXT_ANNOTATION).expect("each pod's trace context");
        assert_eq!(trace_id_of(carried), trace_id, "pod {} is in another trace", pod["metadata"]["name"]);
    }

    // Spans arrive in batches, from five processes: wait for the whole shape.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let trace = Trace::of(receiver.spans(), &trace_id);
        let Some(missing) = trace.missing() else { break };
        assert!(
            std::time::Instant::now() < deadline,
            "trace {trace_id} lacks {missing}; it has {:#?}",
            trace.spans.iter().map(|s| (&s.service, &s.name, &s.attributes)).collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }

    // Work nobody traced stays out of it: the node's heartbeats are not in
    // the apply's trace.
    let trace = Trace::of(receiver.spans(), &trace_id);
    assert!(trace.find("skiff-apiserver", "rpc", &[("kind", "Lease")]).is_empty());
}
