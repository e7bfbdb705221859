//! An in-memory stand-in for the apiserver's `Objects` service, for unit
//! tests of the informer and leader election run loops, and (with the
//! `testkit` feature) of other crates' controllers: versioned objects,
//! compare-and-swap updates, merge patches, watches that replay history from
//! a version, and knobs to cut watches and compact history as a restart or
//! etcd would. No validation, defaulting, finalizers or grace periods: a
//! delete removes the object at once. Integration tests use the real
//! apiserver instead.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use serde_json::Value;
use skiff_api::proto::{self, objects_server, watch_event::Type};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::{Client, Informer, ListParams, Object, Store};

type Key = (String, String, String);
type WatchTx = mpsc::UnboundedSender<Result<proto::WatchEvent, Status>>;

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    revision: u64,
    /// Every change after `compacted`, for watches that resume.
    history: Vec<(u64, Type, Key, Value)>,
    compacted: u64,
    watchers: Vec<(String, String, WatchTx)>,
    /// Every call fails as UNAVAILABLE, as when the apiserver is down.
    unavailable: bool,
}

#[derive(Clone, Default)]
pub struct FakeApiserver {
    state: Arc<Mutex<State>>,
}

/// Stops the server, and the informers started on it, when dropped.
pub struct Running {
    pub fake: FakeApiserver,
    pub client: Client,
    server: tokio::task::JoinHandle<()>,
    informers: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
        for informer in self.informers.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            informer.abort();
        }
    }
}

impl Running {
    /// The synced cache of an informer on every `K` the fake holds (in
    /// `namespace`, or all with ""), kept current while `self` lives.
    pub async fn store<K: Object>(&self, namespace: &str) -> Store<K> {
        let informer = Informer::new(self.client.api::<K>(namespace), ListParams::default());
        let store = informer.store();
        let task = tokio::spawn(informer.run(std::future::pending()));
        self.informers.lock().unwrap_or_else(|e| e.into_inner()).push(task.abort_handle());
        store.wait_synced().await.expect("an informer on the fake apiserver syncs");
        store
    }
}

/// Waits until `done` holds, e.g. until a cache shows a write; panics
/// naming `what` if that takes more than ten seconds.
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl FakeApiserver {
    pub async fn start() -> Running {
        let fake = FakeApiserver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        let service = objects_server::ObjectsServer::new(fake.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        let client = Client::new(&format!("http://{addr}")).expect("client");
        Running { fake, client, server, informers: Mutex::new(Vec::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unless the server plays dead.
    fn serve(&self) -> Result<MutexGuard<'_, State>, Status> {
        let st = self.lock();
        if st.unavailable {
            return Err(Status::unavailable("fake apiserver is down"));
        }
        Ok(st)
    }

    /// Ends every open watch stream, as an apiserver restart does.
    pub fn disconnect_watches(&self) {
        self.lock().watchers.clear();
    }

    /// Deletes an object without any watcher or history seeing it: only a
    /// relist can notice.
    pub fn delete_unseen(&self, kind: &str, namespace: &str, name: &str) {
        let mut st = self.lock();
        st.watchers.clear();
        st.objects.remove(&(kind.into(), namespace.into(), name.into()));
        st.revision += 1;
        st.compacted = st.revision;
        st.history.clear();
    }

    /// Makes every call fail (and ends watches) until set back to false.
    pub fn set_unavailable(&self, unavailable: bool) {
        let mut st = self.lock();
        st.unavailable = unavailable;
        st.watchers.clear();
    }

    /// Objects of `kind` as the server holds them.
    pub fn names(&self, kind: &str) -> Vec<String> {
        self.lock().objects.keys().filter(|k| k.0 == kind).map(|k| k.2.clone()).collect()
    }
}

impl State {
    fn record(&mut self, ty: Type, key: Key, mut obj: Value) -> Value {
        self.revision += 1;
        let rv = self.revision;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.history.push((rv, ty, key.clone(), obj.clone()));
        let event = proto::WatchEvent {
            r#type: ty as i32,
            object: serde_json::to_vec(&obj).unwrap_or_default().into(),
            resource_version: rv.to_string(),
        };
        self.watchers.retain(|(kind, ns, tx)| !matches(kind, ns, &key) || tx.send(Ok(event.clone())).is_ok());
        obj
    }
}

fn matches(kind: &str, ns: &str, key: &Key) -> bool {
    key.0 == kind && (ns.is_empty() || key.1 == ns)
}

/// RFC 7386: objects merge key by key, null removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(target) = target else { return };
    for (key, value) in fields {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn parse(bytes: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply(obj: &Value) -> Response<proto::ObjectReply> {
    Response::new(proto::ObjectReply { object: serde_json::to_vec(obj).unwrap_or_default().into() })
}

fn key_of(kind: &str, ns: &str, obj: &Value) -> Key {
    (kind.into(), ns.into(), skiff_api::meta::name(obj).to_string())
}

#[tonic::async_trait]
impl objects_server::Objects for FakeApiserver {
    async fn create(&self, req: Request<proto::CreateRequest>) -> Result<Response<proto::ObjectReply>, Status> {
        let req = req.into_inner();
        let obj = parse(&req.object)?;
        let key = key_of(&req.kind, &req.namespace, &obj);
        let mut st = self.serve()?;
        if st.objects.contains_key(&key) {
            return Err(Status::already_exists(format!("{} exists", key.2)));
        }
        let obj = st.record(Type::Added, key.clone(), obj);
        st.objects.insert(key, obj.clone());
        Ok(reply(&obj))
    }

    async fn get(&self, req: Request<proto::GetRequest>) -> Result<Response<proto::ObjectReply>, Status> {
        let req = req.into_inner();
        let st = self.serve()?;
        match st.objects.get(&(req.kind, req.namespace, req.name.clone())) {
            Some(obj) => Ok(reply(obj)),
            None => Err(Status::not_found(format!("{} not found", req.name))),
        }
    }

    async fn list(&self, req: Request<proto::ListRequest>) -> Result<Response<proto::ListReply>, Status> {
        let req = req.into_inner();
        let st = self.serve()?;
        let items = st
            .objects
            .iter()
            .filter(|(k, _)| matches(&req.kind, &req.namespace, k))
            .map(|(_, v)| serde_json::to_vec(v).unwrap_or_default().into())
            .collect();
        Ok(Response::new(proto::ListReply { items, resource_version: st.revision.to_string(), ..Default::default() }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send + 'static>>;

    async fn watch(&self, req: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let mut st = self.serve()?;
        let from = if req.resource_version.is_empty() {
            st.revision
        } else {
            req.resource_version.parse::<u64>().map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        if from < st.compacted {
            return Err(Status::out_of_range(format!("version {from} is compacted")));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        for (rv, ty, key, obj) in &st.history {
            if *rv > from && matches(&req.kind, &req.namespace, key) {
                let event = proto::WatchEvent {
                    r#type: *ty as i32,
                    object: serde_json::to_vec(obj).unwrap_or_default().into(),
                    resource_version: rv.to_string(),
                };
                let _ = tx.send(Ok(event));
            }
        }
        st.watchers.push((req.kind, req.namespace, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }

    async fn update(&self, req: Request<proto::UpdateRequest>) -> Result<Response<proto::ObjectReply>, Status> {
        let req = req.into_inner();
        let obj = parse(&req.object)?;
        let key = key_of(&req.kind, &req.namespace, &obj);
        let mut st = self.serve()?;
        let Some(stored) = st.objects.get(&key) else {
            return Err(Status::not_found(format!("{} not found", key.2)));
        };
        let want = skiff_api::meta::resource_version(&obj);
        if !want.is_empty() && want != skiff_api::meta::resource_version(stored) {
            return Err(Status::aborted(format!("{} was modified", key.2)));
        }
        let obj = st.record(Type::Modified, key.clone(), obj);
        st.objects.insert(key, obj.clone());
        Ok(reply(&obj))
    }

    async fn update_status(&self, req: Request<proto::UpdateRequest>) -> Result<Response<proto::ObjectReply>, Status> {
        self.update(req).await
    }

    async fn patch(&self, req: Request<proto::PatchRequest>) -> Result<Response<proto::ObjectReply>, Status> {
        let req = req.into_inner();
        let patch = parse(&req.patch)?;
        let key = (req.kind, req.namespace, req.name.clone());
        let mut st = self.serve()?;
        let Some(stored) = st.objects.get(&key) else {
            return Err(Status::not_found(format!("{} not found", req.name)));
        };
        let pinned = skiff_api::meta::resource_version(&patch);
        if !pinned.is_empty() && pinned != skiff_api::meta::resource_version(stored) {
            return Err(Status::aborted(format!("{} was modified", key.2)));
        }
        let mut obj = stored.clone();
        merge_patch(&mut obj, &patch);
        let obj = st.record(Type::Modified, key.clone(), obj);
        st.objects.insert(key, obj.clone());
        Ok(reply(&obj))
    }

    async fn delete(&self, req: Request<proto::DeleteRequest>) -> Result<Response<proto::ObjectReply>, Status> {
        let req = req.into_inner();
        let key = (req.kind, req.namespace, req.name.clone());
        let mut st = self.serve()?;
        let Some(obj) = st.objects.remove(&key) else {
            return Err(Status::not_found(format!("{} not found", req.name)));
        };
        let obj = st.record(Type::Deleted, key, obj);
        Ok(reply(&obj))
    }

    async fn bind(&self, _: Request<proto::BindRequest>) -> Result<Response<proto::ObjectReply>, Status> {
        Err(Status::unimplemented("the fake apiserver does not bind pods"))
    }

    async fn review_access(
        &self,
        _: Request<proto::AccessReviewRequest>,
    ) -> Result<Response<proto::AccessReviewReply>, Status> {
        Err(Status::unimplemented("the fake apiserver authorizes nothing"))
    }

    async fn create_token(&self, _: Request<proto::TokenRequest>) -> Result<Response<proto::TokenReply>, Status> {
        Err(Status::unimplemented("the fake apiserver issues no tokens"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_merge_patch_merges_objects_removes_nulls_and_replaces_the_rest() {
        let mut obj = json!({"metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}, "spec": {"ports": [1, 2]}});
        merge_patch(&mut obj, &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"ports": [3]}}));
        assert_eq!(obj, json!({"metadata": {"name": "n", "labels": {"b": "2", "c": "3"}}, "spec": {"ports": [3]}}));
    }
}
