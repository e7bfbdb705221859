//! Recording Events about objects, as `kubectl describe` shows them. A
//! repeat of the same reason and message for the same object bumps the
//! existing Event's count instead of creating another.

use std::hash::{Hash, Hasher};

use serde_json::json;

use crate::{Client, Result};

/// The object an Event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ObjectRef {
    pub fn of<K: crate::Object>(obj: &K) -> Self {
        let meta = obj.metadata();
        Self {
            api_version: K::API_VERSION.to_string(),
            kind: K::KIND.to_string(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Writes Events on behalf of one component (`default-scheduler`,
/// `deployment-controller`).
#[derive(Clone)]
pub struct EventRecorder {
    client: Client,
    component: String,
}

impl EventRecorder {
    pub fn new(client: Client, component: &str) -> Self {
        Self { client, component: component.to_string() }
    }

    /// Records an Event about `about`. A failure is logged, not returned:
    /// an Event is a report, not state, so losing one never fails the work
    /// it reports.
    pub async fn report<K: crate::Object>(&self, about: &K, type_: EventType, reason: &str, message: &str) {
        self.report_ref(&ObjectRef::of(about), type_, reason, message).await;
    }

    /// [`report`](Self::report) about an object known by reference.
    pub async fn report_ref(&self, about: &ObjectRef, type_: EventType, reason: &str, message: &str) {
        if let Err(error) = self.record(about, type_, reason, message).await {
            tracing::debug!(kind = %about.kind, name = %about.name, reason, %error, "recording an Event failed");
        }
    }

    /// Records an Event, returning a failure to callers that act on it
    /// (most want [`report`](Self::report)).
    pub async fn record(&self, about: &ObjectRef, type_: EventType, reason: &str, message: &str) -> Result<()> {
        let namespace = if about.namespace.is_empty() { "default" } else { about.namespace.as_str() };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&about.uid, &about.kind, reason, message, &self.component).hash(&mut hasher);
        let name = format!("{}.{:016x}", about.name, hasher.finish());
        let now = skiff_api::clock::now_rfc3339();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": about.api_version, "kind": about.kind, "namespace": about.namespace,
                "name": about.name, "uid": about.uid,
            },
            "reason": reason, "message": message, "type": type_.as_str(),
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        match self.client.create("Event", namespace, &event).await {
            Err(e) if e.is_already_exists() => {
                let current = self.client.get("Event", namespace, &name).await?;
                let count = current["count"].as_i64().unwrap_or(1) + 1;
                self.client.patch("Event", namespace, &name, &json!({"count": count, "lastTimestamp": now})).await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }
}
