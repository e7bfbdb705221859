//! Who may use the kubelet API. Reaching port 10250 must not be enough to
//! run commands in a node's containers: callers prove who they are with a
//! client certificate the cluster CA signed, and the kubelet asks the
//! apiserver whether that user may (`ReviewAccess`, Kubernetes' webhook
//! authorization), remembering answers for a while so a log stream or an
//! exec costs one review, not one per call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skiff_api::proto::AccessReviewRequest;
use skiff_client::Client;
use skiff_pki::serve::PeerInfo;
use skiff_pki::Subject;
use tonic::{Request, Status};

/// How long an answer is trusted, as the kubelet's webhook cache defaults:
/// allowed 5 minutes, denied 30 seconds.
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
/// Answers kept before the oldest are dropped.
const CACHE_LIMIT: usize = 1024;

/// What the kubelet API's flags ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthorizationMode {
    /// Ask the apiserver about each caller.
    #[value(name = "Webhook")]
    Webhook,
    /// Let every caller do everything (a kubelet not reachable from outside).
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

/// What a call asks of the node, in RBAC's words: container logs and exec
/// are `nodes/proxy`, stats `nodes/stats`, as the kubelet's own API paths.
pub struct NodeAccess {
    pub verb: &'static str,
    pub subresource: &'static str,
}

pub struct KubeletAuth {
    node: String,
    anonymous: bool,
    mode: AuthorizationMode,
    client: Client,
    answers: Mutex<HashMap<Key, Answer>>,
}

/// The apiserver's answer (Err: why not) and when it was given.
type Answer = (Instant, Result<(), String>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    groups: Vec<String>,
    verb: &'static str,
    subresource: &'static str,
}

impl KubeletAuth {
    pub fn new(node: String, anonymous: bool, mode: AuthorizationMode, client: Client) -> Self {
        Self { node, anonymous, mode, client, answers: Mutex::default() }
    }

    /// Ok when the caller of `request` may do `access` on this node:
    /// UNAUTHENTICATED without a certificate (unless anonymous calls are
    /// allowed), PERMISSION_DENIED naming the user and what it asked.
    pub async fn check<T>(&self, request: &Request<T>, access: NodeAccess) -> Result<(), Status> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let peer = request.extensions().get::<PeerInfo>();
        let subject = peer.map(|p| p.subject(now)).transpose().map_err(Status::unauthenticated)?.flatten().cloned();
        let subject = match subject {
            Some(subject) => subject,
            None if self.anonymous => {
                Subject { user: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] }
            }
            None => {
                return Err(Status::unauthenticated(
                    "the kubelet API needs a client certificate signed by the cluster CA",
                ))
            }
        };
        if self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(());
        }
        let key =
            Key { user: subject.user, groups: subject.groups, verb: access.verb, subresource: access.subresource };
        let answer = match self.remembered(&key) {
            Some(answer) => answer,
            None => {
                let answer = self.review(&key).await?;
                self.remember(key, answer.clone());
                answer
            }
        };
        answer.map_err(Status::permission_denied)
    }

    fn remembered(&self, key: &Key) -> Option<Result<(), String>> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let (at, answer) = answers.get(key)?;
        let ttl = if answer.is_ok() { ALLOWED_TTL } else { DENIED_TTL };
        (at.elapsed() < ttl).then(|| answer.clone())
    }

    fn remember(&self, key: Key, answer: Result<(), String>) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        if answers.len() >= CACHE_LIMIT {
            answers.retain(|_, (at, _)| at.elapsed() < DENIED_TTL);
            if answers.len() >= CACHE_LIMIT {
                answers.clear();
            }
        }
        answers.insert(key, (Instant::now(), answer));
    }

    /// The apiserver's answer; if it can't be asked, the call fails as
    /// UNAVAILABLE rather than being let through.
    async fn review(&self, key: &Key) -> Result<Result<(), String>, Status> {
        let request = AccessReviewRequest {
            verb: key.verb.into(),
            kind: "Node".into(),
            subresource: key.subresource.into(),
            namespace: String::new(),
            name: self.node.clone(),
            user: key.user.clone(),
            groups: key.groups.clone(),
        };
        let reply = self.client.objects().review_access(request).await.map_err(|e| {
            Status::unavailable(format!(
                "asking the apiserver whether {:?} may use this kubelet: {}",
                key.user,
                e.message()
            ))
        })?;
        let reply = reply.into_inner();
        Ok(if reply.allowed { Ok(()) } else { Err(reply.reason) })
    }
}
