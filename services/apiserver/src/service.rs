//! The gRPC `Objects` service: decodes requests, authorizes the caller the
//! interceptor authenticated, calls the registry, and records metrics.
//! Errors become statuses through `From<Error> for Status`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use skiff_api::proto::{
    objects_server::Objects, AccessReviewReply, AccessReviewRequest, BindRequest, CreateRequest, DeleteRequest,
    GetRequest, ListReply, ListRequest, ObjectReply, PatchRequest, PatchType, TokenReply, TokenRequest, UpdateRequest,
    WatchEvent, WatchRequest,
};
use skiff_api::{FieldSelector, KindInfo, LabelSelector};
use skiff_telemetry::prometheus::IntGauge;
use skiff_telemetry::{grpc_code_label, GrpcMetrics};
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::audit::{AuditLog, Record};
use crate::auth::escalation::{self, Target, Written};
use crate::auth::{rbac::Attributes, Access, Authorizer, PeerInfo, UserInfo, AUTHENTICATED};
use crate::cache::Filter;
use crate::registry::{DeleteOptions, ListAt, Registry};
use crate::watch::{self, WatchParams};
use crate::Error;

pub struct ObjectsService {
    pub registry: Arc<Registry>,
    pub authorizer: Arc<Authorizer>,
    /// Signs ServiceAccount tokens; None without `--service-account-key-file`.
    pub token_signer: Option<Arc<crate::auth::serviceaccount::TokenSigner>>,
    pub metrics: GrpcMetrics,
    pub watchers: IntGauge,
    pub shutdown: signal::Receiver<bool>,
    pub bookmark_interval: Duration,
    pub audit: Option<AuditLog>,
}

/// Who made a request, and from where.
pub struct Caller {
    pub user: UserInfo,
    source: Option<SocketAddr>,
    user_agent: String,
}

impl Caller {
    pub fn of<T>(req: &Request<T>) -> Result<Self, Status> {
        Ok(Self {
            user: crate::auth::caller(req)?,
            source: req.extensions().get::<PeerInfo>().and_then(|p| p.remote_addr),
            user_agent: req.metadata().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
        })
    }
}

/// `metadata.name` of a request's object, read without decoding the rest.
fn object_name(object: &[u8]) -> String {
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        name: String,
    }
    #[derive(serde::Deserialize)]
    struct Named {
        #[serde(default)]
        metadata: Meta,
    }
    serde_json::from_slice::<Named>(object).map(|n| n.metadata.name).unwrap_or_default()
}

/// The one object a list or watch selects by `metadata.name`, which it is
/// authorized as (so a node may watch the one Secret its pod uses); empty
/// for any other selector, a bad one included (the call refuses that).
fn selected_name(kind: &str, field_selector: &str) -> String {
    let selector = FieldSelector::parse(kind, field_selector).ok();
    selector.as_ref().and_then(FieldSelector::exact_name).unwrap_or_default().to_string()
}

/// Events buffered per watcher before the sender waits for the client.
const WATCH_BUFFER: usize = 256;

fn filter(info: &KindInfo, namespace: &str, labels: &str, fields: &str) -> Result<Filter, Error> {
    Ok(Filter {
        key_prefix: info.key_prefix(Some(namespace)),
        labels: LabelSelector::parse(labels)?,
        fields: FieldSelector::parse(info.kind, fields)?,
    })
}

impl ObjectsService {
    /// Runs one call inside a span, once the caller is allowed `access`,
    /// counting it by method, kind and code (refusals included).
    async fn call<T>(
        &self,
        method: &'static str,
        access: &Access<'_>,
        user: &UserInfo,
        metadata: &tonic::metadata::MetadataMap,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let kind = access.kind;
        let span = tracing::info_span!("rpc", method, kind);
        skiff_telemetry::set_remote_parent(&span, metadata);
        let started = Instant::now();
        let result = match self.authorizer.authorize(user, access) {
            Ok(()) => match crate::auth::node_restriction::admit(&self.registry, user, access).await {
                Ok(()) => fut.instrument(span).await,
                Err(refused) => Err(refused),
            },
            Err(denied) => Err(Error::Denied(denied)),
        };
        let code = result.as_ref().map_or_else(|e| e.code(), |_| tonic::Code::Ok);
        self.metrics.observe(method, kind, grpc_code_label(code), started.elapsed());
        match result {
            Ok(v) => Ok(Response::new(v)),
            Err(e) => {
                if code == tonic::Code::Unavailable || code == tonic::Code::Internal {
                    tracing::warn!(method, kind, error = %e, "request failed");
                }
                Err(e.into())
            }
        }
    }

    /// [`call`](Self::call) for a request that changes state, written to
    /// the audit log (when there is one) once it has its outcome.
    async fn mutate<T>(
        &self,
        method: &'static str,
        access: Access<'_>,
        caller: Caller,
        metadata: &tonic::metadata::MetadataMap,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let received = SystemTime::now();
        let started = Instant::now();
        let result = self.call(method, &access, &caller.user, metadata, fut).await;
        if let Some(audit) = &self.audit {
            audit.record(&Record {
                user: &caller.user,
                verb: access.verb,
                kind: access.kind,
                namespace: access.namespace,
                name: access.name,
                source: caller.source,
                user_agent: &caller.user_agent,
                code: result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
                received,
                latency: started.elapsed(),
            });
        }
        result
    }
}

#[tonic::async_trait]
impl Objects for ObjectsService {
    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<ObjectReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let name = object_name(&r.object);
        let access = Access { verb: "create", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &name };
        let target = Target { kind: &r.kind, namespace: &r.namespace, name: &name };
        let user = caller.user.clone();
        let traced = skiff_telemetry::carries_trace_context(&meta);
        self.mutate("Create", access, caller, &meta, async {
            // This request's own span, a child of the caller's: what the
            // object's controllers continue.
            let trace_context = if traced { skiff_telemetry::current_traceparent() } else { None };
            let object = self.create_object(&user, &target, &r.object, trace_context.as_deref(), r.dry_run).await?;
            Ok(ObjectReply { object })
        })
        .await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<ObjectReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let access = Access { verb: "get", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &r.name };
        self.call("Get", &access, &caller.user, &meta, async {
            Ok(ObjectReply { object: self.registry.get(&r.kind, &r.namespace, &r.name).await? })
        })
        .await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let name = selected_name(&r.kind, &r.field_selector);
        let access = Access { verb: "list", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &name };
        self.call("List", &access, &caller.user, &meta, async {
            let info = KindInfo::by_kind(&r.kind)?;
            let filter = filter(info, &r.namespace, &r.label_selector, &r.field_selector)?;
            let limit = usize::try_from(r.limit.max(0)).unwrap_or(usize::MAX);
            let at = ListAt::parse(&r.resource_version, &r.resource_version_match)?;
            let page = self.registry.list(info, &filter, limit, &r.continue_token, at).await?;
            let continue_token = page.next.map(|k| format!("{}:{k}", page.revision)).unwrap_or_default();
            Ok(ListReply { items: page.items, resource_version: page.revision.to_string(), continue_token })
        })
        .await
    }

    type WatchStream = ReceiverStream<Result<WatchEvent, Status>>;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let name = selected_name(&r.kind, &r.field_selector);
        let access = Access { verb: "watch", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &name };
        self.call("Watch", &access, &caller.user, &meta, async {
            let info = KindInfo::by_kind(&r.kind)?;
            let filter = filter(info, &r.namespace, &r.label_selector, &r.field_selector)?;
            let cache = self.registry.cache(info).clone();
            let from = match r.resource_version.as_str() {
                "" | "0" => cache.revision(),
                rv => rv
                    .parse::<i64>()
                    .map_err(|_| Error::BadRequest(format!("resourceVersion: {rv:?} is not a resource version")))?,
            };
            let (tx, rx) = mpsc::channel(WATCH_BUFFER);
            let params = WatchParams {
                filter,
                watchers: self.watchers.clone(),
                from,
                bookmark_interval: self.bookmark_interval,
            };
            watch::spawn(cache, self.registry.storage.clone(), params, tx, self.shutdown.clone());
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Result<Response<ObjectReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let name = object_name(&r.object);
        let access = Access { verb: "update", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &name };
        let target = Target { kind: &r.kind, namespace: &r.namespace, name: &name };
        let user = caller.user.clone();
        self.mutate("Update", access, caller, &meta, async {
            escalation::admit(&self.authorizer, &self.registry, &user, &target, Written::Object(&r.object)).await?;
            Ok(ObjectReply { object: self.registry.update(&r.kind, &r.namespace, &r.object, false, r.dry_run).await? })
        })
        .await
    }

    async fn update_status(&self, req: Request<UpdateRequest>) -> Result<Response<ObjectReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let name = object_name(&r.object);
        let access =
            Access { verb: "update", kind: &r.kind, subresource: "status", namespace: &r.namespace, name: &name };
        self.mutate("UpdateStatus", access, caller, &meta, async {
            Ok(ObjectReply { object: self.registry.update(&r.kind, &r.namespace, &r.object, true, r.dry_run).await? })
        })
        .await
    }

    async fn patch(&self, req: Request<PatchRequest>) -> Result<Response<ObjectReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let access = Access { verb: "patch", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &r.name };
        let target = Target { kind: &r.kind, namespace: &r.namespace, name: &r.name };
        let user = caller.user.clone();
        self.mutate("Patch", access, caller, &meta, async {
            if r.patch_type() == PatchType::Json && escalation::guards(&r.kind) {
                // The escalation check reads the roles a write grants; from
                // a list of operations it cannot tell them in advance.
                return Err(Error::BadRequest(format!(
                    "{} may be patched with a merge or strategic merge patch only",
                    r.kind
                )));
            }
            escalation::admit(&self.authorizer, &self.registry, &user, &target, Written::Patch(&r.patch)).await?;
            if r.patch_type() == PatchType::Apply {
                return self.apply(&user, &target, &r).await.map(|object| ObjectReply { object });
            }
            Ok(ObjectReply {
                object: self
                    .registry
                    .patch(&r.kind, &r.namespace, &r.name, &r.patch, r.patch_type(), r.dry_run)
                    .await?,
            })
        })
        .await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<ObjectReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let access = Access { verb: "delete", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &r.name };
        self.mutate("Delete", access, caller, &meta, async {
            let options = DeleteOptions {
                precondition: &r.resource_version,
                grace: r.grace_period_seconds,
                propagation: &r.propagation_policy,
                dry_run: r.dry_run,
            };
            let object = self.registry.delete(&r.kind, &r.namespace, &r.name, &options).await?;
            Ok(ObjectReply { object })
        })
        .await
    }

    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<ObjectReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let access =
            Access { verb: "create", kind: "Pod", subresource: "binding", namespace: &r.namespace, name: &r.name };
        self.mutate("Bind", access, caller, &meta, async {
            Ok(ObjectReply { object: self.registry.bind(&r.namespace, &r.name, &r.node_name, &r.uid).await? })
        })
        .await
    }

    async fn review_access(&self, req: Request<AccessReviewRequest>) -> Result<Response<AccessReviewReply>, Status> {
        let started = Instant::now();
        let caller = Caller::of(&req)?;
        let r = req.into_inner();
        let result = self.review(caller.user, &r);
        let kind = result.as_ref().map_or("", |(kind, _)| kind);
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.observe("ReviewAccess", kind, grpc_code_label(code), started.elapsed());
        let (_, decision) = result?;
        Ok(Response::new(AccessReviewReply { allowed: decision.is_ok(), reason: decision.err().unwrap_or_default() }))
    }

    async fn create_token(&self, req: Request<TokenRequest>) -> Result<Response<TokenReply>, Status> {
        let caller = Caller::of(&req)?;
        let (meta, _, r) = req.into_parts();
        let access = Access {
            verb: "create",
            kind: "ServiceAccount",
            subresource: "token",
            namespace: &r.namespace,
            name: &r.service_account,
        };
        self.call("CreateToken", &access, &caller.user, &meta, self.issue_token(&r)).await
    }
}

impl ObjectsService {
    /// A create after authorization: escalation check, admission, the
    /// registry, and a new Namespace's default ServiceAccount.
    async fn create_object(
        &self,
        user: &UserInfo,
        target: &Target<'_>,
        object: &[u8],
        trace_context: Option<&str>,
        dry_run: bool,
    ) -> Result<bytes::Bytes, Error> {
        escalation::admit(&self.authorizer, &self.registry, user, target, Written::Object(object)).await?;
        let admitted =
            crate::admission::admit_create(&self.registry, user, target.kind, target.namespace, object, dry_run)
                .await?;
        let body = admitted.as_deref().unwrap_or(object);
        let object = self.registry.create(target.kind, target.namespace, body, trace_context, dry_run).await?;
        if target.kind == "Namespace" && !dry_run {
            self.registry.ensure_default_service_account(&object_name(&object)).await?;
        }
        Ok(object)
    }

    /// Server-side apply: onto the stored object, or, when there is none, a
    /// create of what the apply makes (which takes the create permission
    /// and goes through admission like any create).
    async fn apply(&self, user: &UserInfo, target: &Target<'_>, r: &PatchRequest) -> Result<bytes::Bytes, Error> {
        let config: serde_json::Value = serde_json::from_slice(&r.patch)
            .map_err(|source| Error::BadJson { what: "the applied configuration", source })?;
        let now = skiff_api::clock::now_rfc3339();
        let applier = crate::registry::applier(&r.field_manager, r.force, &config, &now)?;
        for _ in 0..2 {
            match self.registry.apply(&r.kind, &r.namespace, &r.name, &config, &applier, r.dry_run).await {
                Err(Error::NotFound { .. }) => {}
                other => return other,
            }
            let access =
                Access { verb: "create", kind: &r.kind, subresource: "", namespace: &r.namespace, name: &r.name };
            self.authorizer.authorize(user, &access).map_err(Error::Denied)?;
            let object = skiff_api::apply::apply(None, &config, &applier).map_err(crate::error::from_apply)?;
            let body =
                serde_json::to_vec(&object).map_err(|source| Error::BadJson { what: "the applied object", source })?;
            match self.create_object(user, target, &body, None, r.dry_run).await {
                // Created meanwhile by someone else: apply onto theirs.
                Err(Error::AlreadyExists { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::Conflict { resource: r.kind.clone(), name: r.name.clone() })
    }

    /// The kind asked about, and whether the review's subject may do it.
    fn review(&self, caller: UserInfo, r: &AccessReviewRequest) -> Result<(&'static str, Result<(), String>), Status> {
        let subject = if r.user.is_empty() {
            caller
        } else {
            // Asking about someone else is itself a request to authorize.
            let review = Attributes {
                verb: "create",
                api_group: "authorization.k8s.io",
                resource: "subjectaccessreviews",
                ..Attributes::default()
            };
            self.authorizer
                .authorize_attributes(&caller, &review)
                .map_err(|denied| Status::from(Error::Denied(denied)))?;
            let mut groups = r.groups.clone();
            groups.push(AUTHENTICATED.to_string());
            UserInfo { name: r.user.clone(), uid: String::new(), groups }
        };
        let info = KindInfo::lookup(r.kind.split('.').next().unwrap_or_default()).ok_or_else(|| {
            Status::from(Error::BadRequest(format!("kind: {:?} is not a kind this server has", r.kind)))
        })?;
        let access = Access {
            verb: &r.verb,
            kind: info.kind,
            subresource: &r.subresource,
            namespace: &r.namespace,
            name: &r.name,
        };
        Ok((info.kind, self.authorizer.authorize(&subject, &access)))
    }
}

/// Kubernetes' bounds on a requested token's life: at least ten minutes,
/// an hour unless asked, at most two days.
const TOKEN_MIN_SECONDS: i64 = 600;
const TOKEN_DEFAULT_SECONDS: i64 = 3600;
const TOKEN_MAX_SECONDS: i64 = 2 * 24 * 3600;

impl ObjectsService {
    /// A token for the request's ServiceAccount (and pod), once both are
    /// found to exist and belong together.
    async fn issue_token(&self, r: &TokenRequest) -> Result<TokenReply, Error> {
        use crate::auth::serviceaccount::{now, Bound, Claims, Ref, USER_PREFIX};
        let signer = self.token_signer.as_ref().ok_or_else(|| {
            Error::Forbidden("this apiserver issues no ServiceAccount tokens (no --service-account-key-file)".into())
        })?;
        let expiration = match r.expiration_seconds {
            0 => TOKEN_DEFAULT_SECONDS,
            s if s < TOKEN_MIN_SECONDS => {
                return Err(Error::BadRequest(format!(
                    "expirationSeconds: may not be less than {TOKEN_MIN_SECONDS} (10 minutes), is {s}"
                )))
            }
            s => s.min(TOKEN_MAX_SECONDS),
        };
        let account = self.registry.get_value("ServiceAccount", &r.namespace, &r.service_account).await?;
        let pod = if r.pod_name.is_empty() {
            None
        } else {
            let pod = self.registry.get_value("Pod", &r.namespace, &r.pod_name).await?;
            let uid = pod.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or_default();
            if !r.pod_uid.is_empty() && r.pod_uid != uid {
                return Err(Error::Conflict { resource: "pods".into(), name: r.pod_name.clone() });
            }
            let runs_as = pod.pointer("/spec/serviceAccountName").and_then(|s| s.as_str()).unwrap_or("default");
            if runs_as != r.service_account {
                return Err(Error::BadRequest(format!(
                    "pod {:?} runs as ServiceAccount {runs_as:?}, not {:?}",
                    r.pod_name, r.service_account
                )));
            }
            Some(Ref { name: r.pod_name.clone(), uid: uid.to_string() })
        };
        let issued = now();
        let claims = Claims {
            iss: signer.issuer.clone(),
            sub: format!("{USER_PREFIX}{}:{}", r.namespace, r.service_account),
            aud: if r.audiences.is_empty() { signer.audiences.clone() } else { r.audiences.clone() },
            exp: issued + expiration,
            iat: issued,
            nbf: issued,
            kubernetes: Bound {
                namespace: r.namespace.clone(),
                serviceaccount: Ref {
                    name: r.service_account.clone(),
                    uid: account.pointer("/metadata/uid").and_then(|u| u.as_str()).unwrap_or_default().to_string(),
                },
                pod,
            },
        };
        let token = signer.sign(&claims).map_err(|e| Error::BadRequest(format!("signing the token: {e}")))?;
        Ok(TokenReply { token, expiration_timestamp: claims.exp })
    }
}
