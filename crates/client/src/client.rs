//! CRUD and watch over the generic object API, dynamically (kind name and
//! JSON, as the CLI needs) or typed through [`Api`] (as controllers need).

use std::marker::PhantomData;

use futures::{Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use skiff_api::proto::{self, objects_client::ObjectsClient, watch_event::Type as EventType};

use crate::config::{AuthedChannel, ClientConfig};
use crate::{Error, Result};

/// Lists and watches may filter by labels and fields.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub label_selector: String,
    pub field_selector: String,
    /// Items per page fetched from the server (0: the default, 500). `list`
    /// always returns every item; pages keep each message small.
    pub page_size: i64,
}

impl ListParams {
    pub fn labels(mut self, selector: &str) -> Self {
        self.label_selector = selector.to_string();
        self
    }
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = selector.to_string();
        self
    }
}

#[derive(Debug, Clone)]
pub struct ObjectList<T> {
    pub items: Vec<T>,
    /// Watch from here to see every change after this list.
    pub resource_version: String,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<T> {
    Added(T),
    Modified(T),
    Deleted(T),
    /// No change, only a newer version to resume from.
    Bookmark(String),
}

impl<T> WatchEvent<T> {
    pub fn object(&self) -> Option<&T> {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => Some(o),
            WatchEvent::Bookmark(_) => None,
        }
    }
}

/// Items per List page: large lists arrive as several messages well under
/// the message size limit.
const DEFAULT_PAGE_SIZE: i64 = 500;

/// A cheap-to-clone handle to the apiserver.
#[derive(Clone)]
pub struct Client {
    objects: ObjectsClient<AuthedChannel>,
}

/// The largest message either side accepts: above the 1.5 MiB object limit,
/// so that an oversized object is refused by the apiserver with a message
/// naming the limit rather than by the transport.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

impl Client {
    /// A client for `server` (`http://HOST:PORT`) with no TLS and no
    /// credentials, for a cluster that asks for neither.
    pub fn new(server: &str) -> Result<Self> {
        Self::connect(&ClientConfig::insecure(server))
    }

    /// A client as `config` describes. It connects lazily and reconnects by
    /// itself, so components may start before the apiserver.
    pub fn connect(config: &ClientConfig) -> Result<Self> {
        let objects = ObjectsClient::new(config.channel()?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self { objects })
    }

    /// The generated gRPC client underneath, for calls this API doesn't wrap.
    pub fn objects(&self) -> ObjectsClient<AuthedChannel> {
        self.objects.clone()
    }

    pub fn api<K: k8s_openapi::Resource>(&self, namespace: &str) -> Api<K> {
        Api { client: self.clone(), namespace: namespace.to_string(), _kind: PhantomData }
    }

    pub async fn create(&self, kind: &str, namespace: &str, object: &Value) -> Result<Value> {
        let req = proto::CreateRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            object: encode(kind, object)?,
            ..Default::default()
        };
        decode(kind, &self.objects.clone().create(req).await?.into_inner().object)
    }

    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value> {
        let req = proto::GetRequest { kind: kind.into(), namespace: namespace.into(), name: name.into() };
        decode(kind, &self.objects.clone().get(req).await?.into_inner().object)
    }

    /// Every object of `kind` (in `namespace`, or all namespaces for ""),
    /// fetched page by page from one snapshot.
    pub async fn list(&self, kind: &str, namespace: &str, params: &ListParams) -> Result<ObjectList<Value>> {
        let mut items = Vec::new();
        let mut resource_version = String::new();
        let mut continue_token = String::new();
        loop {
            let req = proto::ListRequest {
                kind: kind.into(),
                namespace: namespace.into(),
                label_selector: params.label_selector.clone(),
                field_selector: params.field_selector.clone(),
                limit: if params.page_size > 0 { params.page_size } else { DEFAULT_PAGE_SIZE },
                continue_token: std::mem::take(&mut continue_token),
                ..Default::default()
            };
            let reply = self.objects.clone().list(req).await?.into_inner();
            for b in &reply.items {
                items.push(decode(kind, b)?);
            }
            if resource_version.is_empty() {
                resource_version = reply.resource_version;
            }
            if reply.continue_token.is_empty() {
                return Ok(ObjectList { items, resource_version });
            }
            continue_token = reply.continue_token;
        }
    }

    /// Changes after `resource_version` ("" for from now on). The stream
    /// ends when the server closes it; an expired version fails with
    /// [`Error::is_expired`].
    pub async fn watch(
        &self,
        kind: &str,
        namespace: &str,
        params: &ListParams,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<Value>>> + Send + 'static + use<>> {
        let req = proto::WatchRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            label_selector: params.label_selector.clone(),
            field_selector: params.field_selector.clone(),
            resource_version: resource_version.into(),
        };
        let stream = self.objects.clone().watch(req).await?.into_inner();
        let kind = kind.to_string();
        Ok(stream.map(move |item| {
            let ev = item?;
            let ty = EventType::try_from(ev.r#type).unwrap_or(EventType::Modified);
            if ty == EventType::Bookmark {
                return Ok(WatchEvent::Bookmark(ev.resource_version));
            }
            let obj = decode(&kind, &ev.object)?;
            Ok(match ty {
                EventType::Added => WatchEvent::Added(obj),
                EventType::Deleted => WatchEvent::Deleted(obj),
                _ => WatchEvent::Modified(obj),
            })
        }))
    }

    pub async fn update(&self, kind: &str, namespace: &str, object: &Value) -> Result<Value> {
        let req = proto::UpdateRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            object: encode(kind, object)?,
            ..Default::default()
        };
        decode(kind, &self.objects.clone().update(req).await?.into_inner().object)
    }

    pub async fn update_status(&self, kind: &str, namespace: &str, object: &Value) -> Result<Value> {
        let req = proto::UpdateRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            object: encode(kind, object)?,
            ..Default::default()
        };
        decode(kind, &self.objects.clone().update_status(req).await?.into_inner().object)
    }

    /// Applies a JSON merge patch (RFC 7386).
    pub async fn patch(&self, kind: &str, namespace: &str, name: &str, patch: &Value) -> Result<Value> {
        let req = proto::PatchRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            patch: encode(kind, patch)?,
            ..Default::default()
        };
        decode(kind, &self.objects.clone().patch(req).await?.into_inner().object)
    }

    /// Deletes an object; returns its last state (with deletionTimestamp set
    /// when finalizers keep it for now).
    pub async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value> {
        self.delete_with_grace(kind, namespace, name, None).await
    }

    /// Deletes an object with a grace period. For a Pod bound to a node,
    /// `None` marks it for its kubelet (deletionTimestamp after the pod's
    /// terminationGracePeriodSeconds) and `Some(0)` deletes it now: the
    /// kubelet's final delete once the containers stopped.
    pub async fn delete_with_grace(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        grace_period_seconds: Option<i64>,
    ) -> Result<Value> {
        let req = proto::DeleteRequest {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            resource_version: String::new(),
            grace_period_seconds,
            ..Default::default()
        };
        decode(kind, &self.objects.clone().delete(req).await?.into_inner().object)
    }
}

impl Client {
    /// Binds a pending pod to a node (the scheduler's one write). Fails with
    /// FAILED_PRECONDITION when the pod is already bound or was replaced
    /// (`uid` differs).
    pub async fn bind(&self, namespace: &str, name: &str, node_name: &str, uid: &str) -> Result<Value> {
        let req = proto::BindRequest {
            namespace: namespace.into(),
            name: name.into(),
            node_name: node_name.into(),
            uid: uid.into(),
        };
        decode("Pod", &self.objects.clone().bind(req).await?.into_inner().object)
    }
}

fn encode<T: Serialize>(kind: &str, object: &T) -> Result<bytes::Bytes> {
    serde_json::to_vec(object).map(Into::into).map_err(|source| Error::Encode { kind: kind.into(), source })
}

fn decode<T: DeserializeOwned>(kind: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode { kind: kind.into(), source })
}

/// Typed access to one kind in one namespace ("" for cluster-scoped kinds,
/// or for every namespace in `list` and `watch`).
pub struct Api<K> {
    client: Client,
    namespace: String,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self { client: self.client.clone(), namespace: self.namespace.clone(), _kind: PhantomData }
    }
}

impl<K> Api<K>
where
    K: k8s_openapi::Resource + Serialize + DeserializeOwned + Send + 'static,
{
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub async fn create(&self, object: &K) -> Result<K> {
        self.typed(self.client.create(K::KIND, &self.namespace, &self.value(object)?).await?)
    }

    pub async fn get(&self, name: &str) -> Result<K> {
        self.typed(self.client.get(K::KIND, &self.namespace, name).await?)
    }

    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>> {
        let list = self.client.list(K::KIND, &self.namespace, params).await?;
        let items = list.items.into_iter().map(|v| self.typed(v)).collect::<Result<_>>()?;
        Ok(ObjectList { items, resource_version: list.resource_version })
    }

    pub async fn watch(
        &self,
        params: &ListParams,
        resource_version: &str,
    ) -> Result<impl Stream<Item = Result<WatchEvent<K>>> + Send + 'static + use<K>> {
        let stream = self.client.watch(K::KIND, &self.namespace, params, resource_version).await?;
        Ok(stream.map(|ev| {
            let typed = |v: Value| {
                serde_json::from_value::<K>(v).map_err(|source| Error::Decode { kind: K::KIND.into(), source })
            };
            Ok(match ev? {
                WatchEvent::Added(v) => WatchEvent::Added(typed(v)?),
                WatchEvent::Modified(v) => WatchEvent::Modified(typed(v)?),
                WatchEvent::Deleted(v) => WatchEvent::Deleted(typed(v)?),
                WatchEvent::Bookmark(rv) => WatchEvent::Bookmark(rv),
            })
        }))
    }

    pub async fn update(&self, object: &K) -> Result<K> {
        self.typed(self.client.update(K::KIND, &self.namespace, &self.value(object)?).await?)
    }

    pub async fn update_status(&self, object: &K) -> Result<K> {
        self.typed(self.client.update_status(K::KIND, &self.namespace, &self.value(object)?).await?)
    }

    pub async fn patch(&self, name: &str, patch: &Value) -> Result<K> {
        self.typed(self.client.patch(K::KIND, &self.namespace, name, patch).await?)
    }

    pub async fn delete(&self, name: &str) -> Result<K> {
        self.typed(self.client.delete(K::KIND, &self.namespace, name).await?)
    }

    fn value(&self, object: &K) -> Result<Value> {
        serde_json::to_value(object).map_err(|source| Error::Encode { kind: K::KIND.into(), source })
    }

    fn typed(&self, value: Value) -> Result<K> {
        serde_json::from_value(value).map_err(|source| Error::Decode { kind: K::KIND.into(), source })
    }
}
