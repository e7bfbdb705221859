//! Where the apiserver is and how to prove who we are: `--server`, else
//! `SKIFF_SERVER`, else the config file `skiffctl up` writes, which also
//! names the cluster CA and this client's certificate or token (the fields
//! of a kubeconfig's cluster and user). Every skiff binary resolves it the
//! same way, so a component gets its identity from `SKIFF_CONFIG`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use skiff_api::proto::pod_proxy_client::PodProxyClient;

use crate::channel::ClientChannel;
use crate::Error;

/// The client config file: `$SKIFF_CONFIG`, else
/// `$XDG_CONFIG_HOME/skiff/config.yaml`, else `~/.config/skiff/config.yaml`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("skiff").join("config.yaml")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientConfig {
    /// `https://HOST:PORT` (or `http://` for a cluster without TLS).
    pub server: String,
    /// PEM file of the CA that signed the apiserver's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<PathBuf>,
    /// PEM files of this client's certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// A bearer token, sent with every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ClientConfig {
    /// A config naming only the server: no TLS, no credentials.
    pub fn insecure(server: impl Into<String>) -> Self {
        Self { server: server.into(), ..Self::default() }
    }

    pub fn load() -> Result<Option<Self>, Error> {
        Self::load_from(&config_path())
    }

    pub fn load_from(path: &Path) -> Result<Option<Self>, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(config_error(path, e)),
        };
        serde_yaml_ng::from_str(&text).map(Some).map_err(|e| config_error(path, e))
    }

    /// Writes the config to `config_path()`, readable only by its owner (it
    /// names a private key and may hold a token).
    pub fn save(&self) -> Result<PathBuf, Error> {
        let path = config_path();
        self.save_to(&path)?;
        Ok(path)
    }

    pub fn save_to(&self, path: &Path) -> Result<(), Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| config_error(path, e))?;
        }
        let text = serde_yaml_ng::to_string(self).map_err(|e| config_error(path, e))?;
        write_private(path, text.as_bytes()).map_err(|e| config_error(path, e))
    }

    /// The config the flags, `SKIFF_SERVER` and the config file describe
    /// together: `--server` (else `SKIFF_SERVER`) chooses the server, the
    /// file (`--kubeconfig`, else [`config_path`]) gives the credentials.
    pub fn resolve(flags: &ApiFlags) -> Result<Self, Error> {
        let path = flags.kubeconfig.clone().unwrap_or_else(config_path);
        let mut config = match &flags.kubeconfig {
            // A file named on the command line must be there.
            Some(p) => Self::load_from(p)?.ok_or_else(|| config_error(p, "no such file"))?,
            None => Self::load_from(&path)?.unwrap_or_default(),
        };
        let chosen = flags
            .server
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("SKIFF_SERVER").ok().filter(|s| !s.is_empty()));
        if let Some(server) = chosen {
            config.server = server;
        }
        if config.server.is_empty() {
            return Err(Error::NoServer { path: path.display().to_string() });
        }
        Ok(config)
    }

    /// A lazily connected channel to the server, with TLS when the server
    /// is `https://`, and the interceptor that adds the bearer token. It
    /// follows renewals of the client certificate's files.
    pub fn channel(&self) -> Result<AuthedChannel, Error> {
        let credentials = Credentials::bearer(self.token.as_deref())?;
        Ok(InterceptedService::new(ClientChannel::new(self)?, credentials))
    }

    pub(crate) fn connect_lazy(&self) -> Result<Channel, Error> {
        let invalid = |source| Error::InvalidServer { server: self.server.clone(), source };
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(invalid)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if self.server.starts_with("https://") {
            endpoint = endpoint.tls_config(self.tls()?).map_err(invalid)?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// A new channel for a client certificate whose files changed, once
    /// they hold a certificate and the key that matches it.
    pub(crate) fn renewed_channel(&self) -> Result<Channel, Error> {
        if let (Some(cert), Some(key)) = (&self.client_certificate, &self.client_key) {
            skiff_pki::certified_key(&read(cert)?, &read(key)?).map_err(|reason| config_error(cert, reason))?;
        }
        self.connect_lazy()
    }

    fn tls(&self) -> Result<ClientTlsConfig, Error> {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.certificate_authority {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.client_certificate, &self.client_key) {
            (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?)),
            (None, None) => {}
            _ => {
                return Err(Error::Config {
                    path: config_path().display().to_string(),
                    reason: "client-certificate and client-key go together: give both or neither".into(),
                })
            }
        }
        Ok(tls)
    }
}

impl ClientConfig {
    /// Adds this config to the kubeconfig at `path` (creating it) as
    /// cluster, user and context `name`, with `rest_server` (the
    /// apiserver's Kubernetes REST API) as the server, and makes it the
    /// current context, as `kind` and `k3d` do: `kubectl` then works with
    /// no flags. Other clusters, users and contexts are kept.
    pub fn merge_into_kubeconfig(&self, path: &Path, name: &str, rest_server: &str) -> Result<(), Error> {
        use serde_json::{json, Value};
        let mut kubeconfig: Value = match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => serde_yaml_ng::from_str(&text).map_err(|e| config_error(path, e))?,
            Ok(_) => Value::Null,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(config_error(path, e)),
        };
        if !kubeconfig.is_object() {
            kubeconfig = json!({"apiVersion": "v1", "kind": "Config", "preferences": {}});
        }
        let file = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let mut cluster = json!({"server": rest_server});
        if let Some(ca) = file(&self.certificate_authority) {
            cluster["certificate-authority"] = ca.into();
        }
        let mut user = json!({});
        if let Some(cert) = file(&self.client_certificate) {
            user["client-certificate"] = cert.into();
        }
        if let Some(key) = file(&self.client_key) {
            user["client-key"] = key.into();
        }
        if let Some(token) = &self.token {
            user["token"] = token.as_str().into();
        }
        let entries = [
            ("clusters", json!({"name": name, "cluster": cluster})),
            ("users", json!({"name": name, "user": user})),
            ("contexts", json!({"name": name, "context": {"cluster": name, "user": name}})),
        ];
        for (list, entry) in entries {
            let slot = &mut kubeconfig[list];
            if !slot.is_array() {
                *slot = json!([]);
            }
            let items = slot.as_array_mut().expect("made a list above");
            items.retain(|item| item["name"] != name);
            items.push(entry);
        }
        kubeconfig["current-context"] = name.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| config_error(path, e))?;
        }
        let text = serde_yaml_ng::to_string(&kubeconfig).map_err(|e| config_error(path, e))?;
        write_private(path, text.as_bytes()).map_err(|e| config_error(path, e))
    }
}

/// The kubeconfig kubectl reads: the first file of `$KUBECONFIG`, else
/// `~/.kube/config`.
pub fn kubeconfig_path() -> PathBuf {
    if let Some(first) = std::env::var_os("KUBECONFIG").and_then(|v| std::env::split_paths(&v).next()) {
        if !first.as_os_str().is_empty() {
            return first;
        }
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".kube").join("config")
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| config_error(path, e))
}

fn config_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config { path: path.display().to_string(), reason: e.to_string() }
}

/// Creates or replaces `path` with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents)
}

/// How every skiff binary is told where the apiserver is and who it is.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiFlags {
    /// The apiserver, `https://HOST:PORT` (else `SKIFF_SERVER`, else the
    /// config file's).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// The client config file with the cluster CA and this component's
    /// credentials (else `SKIFF_CONFIG`, else `~/.config/skiff/config.yaml`).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
}

impl ApiFlags {
    pub fn client(&self) -> Result<crate::Client, Error> {
        crate::Client::connect(&ClientConfig::resolve(self)?)
    }

    /// The apiserver's PodProxy service (logs, exec, stats), on a channel
    /// of its own: the object client keeps its channel to itself.
    pub fn pod_proxy(&self) -> Result<PodProxyClient<AuthedChannel>, Error> {
        Ok(PodProxyClient::new(ClientConfig::resolve(self)?.channel()?))
    }
}

/// A channel whose every call carries the client's bearer token, if any,
/// and the caller's trace context, when it traces.
pub type AuthedChannel = InterceptedService<ClientChannel, Credentials>;

/// Adds `authorization: Bearer TOKEN` and the current span's `traceparent`
/// to each call.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    fn bearer(token: Option<&str>) -> Result<Self, Error> {
        let authorization = match token.filter(|t| !t.is_empty()) {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| Error::Config {
                path: config_path().display().to_string(),
                reason: "token: not a valid header value".into(),
            })?),
            None => None,
        };
        Ok(Self { authorization })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert("authorization", value.clone());
        }
        skiff_telemetry::inject_trace_context(request.metadata_mut());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_gains_a_skiff_context_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kube").join("config");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: https://10.0.0.1}\n\
             contexts:\n- name: other\n  context: {cluster: other, user: other}\ncurrent-context: other\n",
        )
        .unwrap();
        let config = ClientConfig {
            server: "https://127.0.0.1:6443".into(),
            certificate_authority: Some("/pki/ca.crt".into()),
            client_certificate: Some("/pki/admin.crt".into()),
            client_key: Some("/pki/admin.key".into()),
            token: None,
        };
        config.merge_into_kubeconfig(&path, "skiff", "https://127.0.0.1:6445").unwrap();
        config.merge_into_kubeconfig(&path, "skiff", "https://127.0.0.1:6446").unwrap();
        let written: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["current-context"], "skiff");
        let clusters = written["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2, "{written}");
        let skiff = clusters.iter().find(|c| c["name"] == "skiff").unwrap();
        assert_eq!(skiff["cluster"]["server"], "https://127.0.0.1:6446", "rewritten, not added twice");
        assert_eq!(skiff["cluster"]["certificate-authority"], "/pki/ca.crt");
        assert_eq!(written["users"][0]["user"]["client-key"], "/pki/admin.key");
        assert!(written["contexts"].as_array().unwrap().iter().any(|c| c["name"] == "other"));
    }

    #[test]
    fn a_config_with_only_a_server_still_loads() {
        let c: ClientConfig = serde_yaml_ng::from_str("server: http://127.0.0.1:6443\n").unwrap();
        assert_eq!(c, ClientConfig::insecure("http://127.0.0.1:6443"));
    }

    #[test]
    fn credentials_use_kubeconfig_names() {
        let c = ClientConfig {
            server: "https://127.0.0.1:6443".into(),
            certificate_authority: Some("/pki/ca.crt".into()),
            client_certificate: Some("/pki/admin.crt".into()),
            client_key: Some("/pki/admin.key".into()),
            token: None,
        };
        let text = serde_yaml_ng::to_string(&c).unwrap();
        assert!(text.contains("certificate-authority: /pki/ca.crt"), "{text}");
        assert!(text.contains("client-key: /pki/admin.key"), "{text}");
        assert!(!text.contains("token"), "{text}");
        assert_eq!(serde_yaml_ng::from_str::<ClientConfig>(&text).unwrap(), c);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let c = ClientConfig {
            server: "https://127.0.0.1:6443".into(),
            client_certificate: Some("/nonexistent.crt".into()),
            ..ClientConfig::default()
        };
        let Err(err) = c.channel() else { panic!("a lone certificate must be refused") };
        let err = err.to_string();
        assert!(err.contains("give both or neither"), "{err}");
    }
}
