//! One file per command; each adapts its arguments to client calls and
//! prints what kubectl would.

pub mod apply;
pub mod auth;
pub mod certificate;
pub mod certs;
pub mod cordon;
pub mod create;
pub mod delete;
pub mod describe;
pub mod drain;
pub mod exec;
pub mod get;
pub mod logs;
pub mod rollout;
pub mod sample_images;
pub mod scale;
pub mod token;
pub mod top;
pub mod up;
pub mod version;

pub use skiff_api::parse_duration;
use std::fmt;

use anyhow::{anyhow, bail, Result};
use skiff_api::proto::pod_proxy_client::PodProxyClient;
use skiff_api::{meta, KindInfo};
use skiff_client::config::AuthedChannel;
use skiff_client::Client;

use crate::manifest::Document;
use crate::resource;

/// What skiffctl can do.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create or update objects from manifests.
    Apply(apply::Args),
    /// List objects, or show some by name.
    Get(get::Args),
    /// Show objects in detail, with their events.
    Describe(describe::Args),
    /// Delete objects by name, selector or manifest.
    Delete(delete::Args),
    /// Create an object from arguments.
    Create(create::Args),
    /// Set the replicas of a deployment, replicaset or statefulset.
    Scale(scale::Args),
    /// Follow, list, undo, pause or resume a deployment's rollouts.
    Rollout(rollout::Args),
    /// Mark a node unschedulable.
    Cordon(cordon::Args),
    /// Mark a node schedulable again.
    Uncordon(cordon::Args),
    /// Cordon a node and delete its pods, waiting until they are gone.
    Drain(drain::Args),
    /// Print the logs of a container in a pod.
    Logs(logs::Args),
    /// Run a command in a container of a pod.
    Exec(exec::Args),
    /// Show CPU and memory use of pods.
    Top(top::Args),
    /// Start a local cluster in the background and point skiffctl at it.
    Up(up::UpArgs),
    /// Stop the local cluster `up` started.
    Down(up::DownArgs),
    /// Approve or deny certificate signing requests.
    Certificate(certificate::Args),
    /// Create, list or delete bootstrap tokens, with which nodes join.
    Token(token::Args),
    /// Write a cluster's CA, certificates and client configs into a folder.
    Certs(certs::Args),
    /// Build the sample app's images into a registry storage folder.
    SampleImages(sample_images::Args),
    /// Inspect authorization: `auth can-i VERB KIND[/NAME]`.
    Auth(auth::Args),
    /// Print the client version.
    Version,
}

pub async fn run(globals: &Globals, command: Command) -> Result<()> {
    match command {
        Command::Apply(args) => apply::run(globals, args).await,
        Command::Auth(args) => auth::run(globals, args).await,
        Command::Certs(args) => certs::run(args),
        Command::Certificate(args) => certificate::run(globals, args).await,
        Command::Token(args) => token::run(globals, args).await,
        Command::SampleImages(args) => sample_images::run(args).await,
        Command::Get(args) => get::run(globals, args).await,
        Command::Describe(args) => describe::run(globals, args).await,
        Command::Delete(args) => delete::run(globals, args).await,
        Command::Create(args) => create::run(globals, args).await,
        Command::Scale(args) => scale::run(globals, args).await,
        Command::Rollout(args) => rollout::run(globals, args).await,
        Command::Cordon(args) => cordon::cordon(globals, args).await,
        Command::Uncordon(args) => cordon::uncordon(globals, args).await,
        Command::Drain(args) => drain::run(globals, args).await,
        Command::Logs(args) => logs::run(globals, args).await,
        Command::Exec(args) => exec::run(globals, args).await,
        Command::Top(args) => top::run(globals, args).await,
        Command::Up(args) => up::up(args).await,
        Command::Down(args) => up::down(args).await,
        Command::Version => {
            version::run();
            Ok(())
        }
    }
}

/// The flags every command takes.
#[derive(Debug, Clone)]
pub struct Globals {
    pub api: skiff_client::ApiFlags,
    pub namespace: String,
}

impl Globals {
    pub fn client(&self) -> Result<Client> {
        Ok(self.api.client()?)
    }

    /// The apiserver's PodProxy service (logs, exec, stats), on its own channel:
    /// the object client keeps its channel to itself.
    pub fn pod_proxy(&self) -> Result<PodProxyClient<AuthedChannel>> {
        Ok(self.api.pod_proxy()?)
    }
}

/// A PodProxy failure as one line: the apiserver's (or kubelet's) message,
/// or that the apiserver could not be reached at all.
pub fn proxy_error(status: tonic::Status) -> anyhow::Error {
    // A status made on this side carries the transport error as its source.
    if std::error::Error::source(&status).is_some() {
        return anyhow!("the apiserver is unavailable: {}", status.message());
    }
    anyhow!("{}", status.message())
}

/// The command ran and wants skiffctl to exit with this status (exec
/// passes on the remote command's), having printed all it had to.
#[derive(Debug)]
pub struct ExitStatus(pub u8);

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command exited with status {}", self.0)
    }
}

impl std::error::Error for ExitStatus {}

/// The command failed and has already said why on stderr (for example one
/// line per failed document): exit non-zero without printing more.
#[derive(Debug)]
pub struct AlreadyReported;

impl fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("errors were reported above")
    }
}

impl std::error::Error for AlreadyReported {}

/// An error as one line for stderr: the chain of what failed, where the
/// apiserver's own message ends it (the gRPC status behind it says the same
/// again), and a server that can't be reached is said so plainly.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in err.chain() {
        if cause.is::<tonic::Status>() {
            continue;
        }
        let Some(client) = cause.downcast_ref::<skiff_client::Error>() else {
            parts.push(cause.to_string());
            continue;
        };
        if client.code() == Some(tonic::Code::Unavailable) {
            let root = err.chain().filter(|c| !c.is::<tonic::Status>()).last().map_or(String::new(), |c| c.to_string());
            parts.push(format!("the apiserver is unavailable: {root}"));
            break;
        }
        parts.push(client.to_string());
        if client.code().is_some() {
            break;
        }
    }
    parts.join(": ")
}

/// The object a manifest document stands for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub info: &'static KindInfo,
    /// "" for cluster-scoped kinds.
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> Target<'a> {
    /// Checks a document's kind, apiVersion and name; its namespace is its
    /// own, else `default_namespace`.
    pub fn of(doc: &'a Document, default_namespace: &'a str) -> Result<Self> {
        let obj = &doc.object;
        let kind = meta::kind(obj);
        if kind.is_empty() {
            bail!("kind is not set");
        }
        let info = KindInfo::lookup(kind).ok_or_else(|| anyhow!("unknown kind {kind:?}"))?;
        let api_version = meta::api_version(obj);
        if api_version != info.api_version {
            bail!("apiVersion {api_version:?} is not served for {}: use {:?}", info.kind, info.api_version);
        }
        let name = meta::name(obj);
        if name.is_empty() {
            bail!("metadata.name is not set");
        }
        let namespace = match meta::namespace(obj) {
            "" => default_namespace,
            ns => ns,
        };
        Ok(Self { info, namespace: resource::scope(info, namespace), name })
    }
}

/// How a document is named in an error: `document 2 (Deployment web)`,
/// prefixed by its file when the documents came from several.
pub fn doc_label(doc: &Document, several_sources: bool) -> String {
    if several_sources {
        format!("{}: {doc}", doc.source)
    } else {
        doc.to_string()
    }
}

pub fn several_sources(docs: &[Document]) -> bool {
    docs.windows(2).any(|w| w[0].source != w[1].source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn doc(object: serde_json::Value) -> Document {
        Document { source: "app.yaml".into(), index: 2, item: None, object }
    }

    #[test]
    fn targets_take_the_document_namespace_else_the_default() {
        let d = doc(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "demo"}}),
        );
        let t = Target::of(&d, "default").unwrap();
        assert_eq!((t.info.kind, t.namespace, t.name), ("Deployment", "demo", "web"));
        let d = doc(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}));
        assert_eq!(Target::of(&d, "other").unwrap().namespace, "other");
        let d = doc(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "namespace": "x"}}));
        assert_eq!(Target::of(&d, "default").unwrap().namespace, "");
    }

    #[test]
    fn targets_refuse_unknown_kinds_wrong_versions_and_missing_names() {
        let err = |o| Target::of(&doc(o), "default").unwrap_err().to_string();
        assert_eq!(
            err(json!({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}})),
            "unknown kind \"Widget\""
        );
        assert_eq!(
            err(json!({"apiVersion": "extensions/v1beta1", "kind": "Deployment", "metadata": {"name": "w"}})),
            "apiVersion \"extensions/v1beta1\" is not served for Deployment: use \"apps/v1\""
        );
        assert_eq!(err(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}})), "metadata.name is not set");
        assert_eq!(err(json!({"metadata": {"name": "x"}})), "kind is not set");
    }

    #[test]
    fn error_messages_end_with_the_server_message() {
        let status = tonic::Status::not_found("configmaps \"x\" not found");
        let err = anyhow::Error::from(skiff_client::Error::from(status)).context("reading the live object");
        assert_eq!(error_message(&err), "reading the live object: configmaps \"x\" not found");
        let err = anyhow::Error::from(skiff_client::Error::from(tonic::Status::unavailable("etcd is down")));
        assert_eq!(error_message(&err), "the apiserver is unavailable: etcd is down");
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&err), "outer: inner");
    }

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn labels_name_the_file_only_when_there_are_several() {
        let d = doc(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}));
        assert_eq!(doc_label(&d, false), "document 2 (Deployment web)");
        assert_eq!(doc_label(&d, true), "app.yaml: document 2 (Deployment web)");
    }
}
