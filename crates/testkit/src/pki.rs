//! The cluster's CA and its components' identities, as kubeadm lays them
//! out: `pki/ca.{crt,key}`, the apiserver's serving pair, and per identity
//! a certificate, its key and a client config (`pki/NAME.yaml`) that the
//! component is started with (`--kubeconfig`).

use std::path::{Path, PathBuf};

use skiff_client::ClientConfig;
use skiff_pki::serve::TlsFiles;
use skiff_pki::{Ca, Usage, LEAF_VALIDITY};

use crate::{Error, Result};

/// Who a component is to the apiserver: a user and its groups.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub user: &'a str,
    pub groups: &'a [&'a str],
}

/// The cluster administrator (Kubernetes' `kubernetes-admin`): RBAC allows
/// `system:masters` everything.
pub const ADMIN: Identity<'static> = Identity { user: "skiff-admin", groups: &["system:masters"] };

/// The group of kubelets, which RBAC's `system:node` role is bound to.
pub use skiff_api::well_known::NODES_GROUP;
use skiff_api::well_known::NODE_USER_PREFIX;

/// The apiserver when it calls etcd.
const ETCD_CLIENT: Identity<'static> = Identity { user: "kube-apiserver-etcd-client", groups: &[] };

/// etcd's TLS files: it serves clients with `server_*` and takes only
/// clients with a certificate from `ca`; the apiserver is one, with `client_*`.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// etcd's flags for serving clients over TLS.
    pub fn etcd_args(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server_cert.display()),
            format!("--key-file={}", self.server_key.display()),
            format!("--trusted-ca-file={}", self.ca.display()),
            "--client-cert-auth".to_string(),
        ]
    }

    /// The apiserver's flags for calling etcd, as kube-apiserver's.
    pub fn apiserver_args(&self) -> Vec<String> {
        vec![
            format!("--etcd-cafile={}", self.ca.display()),
            format!("--etcd-certfile={}", self.client_cert.display()),
            format!("--etcd-keyfile={}", self.client_key.display()),
        ]
    }

    /// An etcd client's TLS settings with the apiserver's certificate.
    pub fn client_options(&self) -> Result<etcd_client::ConnectOptions> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| io("reading", p, e));
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(read(&self.client_cert)?, read(&self.client_key)?));
        Ok(etcd_client::ConnectOptions::new().with_tls(tls))
    }
}

/// The apiserver when it calls kubelets.
const KUBELET_CLIENT: Identity<'static> = Identity { user: "kube-apiserver-kubelet-client", groups: &[] };

/// The identity each skiff binary runs as; binaries not listed (tools,
/// tests' helpers) run as the administrator.
pub fn identity_of(binary: &str) -> Identity<'static> {
    match binary {
        "skiff-scheduler" => Identity { user: "system:kube-scheduler", groups: &[] },
        "skiff-controller-manager" => Identity { user: "system:kube-controller-manager", groups: &[] },
        // Kubelets started for one node are `system:node:NAME` (see
        // `Cluster::kubeconfig_for_node`); hollow nodes act for many.
        "skiff-kubelet" => Identity { user: "system:hollow-nodes", groups: &[NODES_GROUP] },
        "skiff-overlay" => Identity { user: "system:skiff-overlay", groups: &[] },
        "skiff-dns" => Identity { user: "system:skiff-dns", groups: &[] },
        "skiff-ingress" => Identity { user: "system:skiff-ingress", groups: &[] },
        _ => ADMIN,
    }
}

pub struct ClusterPki {
    dir: PathBuf,
    ca: Ca,
    server: String,
    /// What the serving certificate is valid for.
    names: Vec<String>,
}

impl ClusterPki {
    /// The CA under `dir` (made on first use, kept after: a restarted
    /// cluster's clients still trust it) and a fresh serving certificate for
    /// `server` (`https://HOST:PORT`) valid for `names`.
    pub fn open(dir: &Path, server: &str, names: &[String]) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = match (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
            (Ok(c), Ok(k)) => Ca::load(&c, &k).map_err(|e| pki_error(&crt, e))?,
            _ => {
                let ca = Ca::generate("skiff-ca").map_err(|e| pki_error(&crt, e))?;
                write(&crt, ca.cert_pem().as_bytes())?;
                write(&key, ca.key_pem().as_bytes())?;
                ca
            }
        };
        let sa_key = dir.join("sa.key");
        if !sa_key.exists() {
            let key = skiff_pki::signing_key_pem().map_err(|e| pki_error(&sa_key, e))?;
            write(&sa_key, key.as_bytes())?;
        }
        let pki = Self { dir: dir.to_path_buf(), ca, server: server.to_string(), names: names.to_vec() };
        pki.renew_serving()?;
        pki.write_pair("apiserver-kubelet-client", &pki.issue(KUBELET_CLIENT)?)?;
        Ok(pki)
    }

    /// Writes a new serving certificate and key for the apiserver, each
    /// file replaced in one rename so the apiserver never reads half of one.
    /// Returns the new certificate (PEM).
    pub fn renew_serving(&self) -> Result<String> {
        let serving =
            self.ca.issue(&Usage::Server { names: &self.names }, LEAF_VALIDITY).map_err(|e| pki_error(&self.dir, e))?;
        for (file, contents) in [("apiserver.key", &serving.key_pem), ("apiserver.crt", &serving.cert_pem)] {
            let (path, staged) = (self.dir.join(file), self.dir.join(format!(".{file}.new")));
            write(&staged, contents.as_bytes())?;
            std::fs::rename(&staged, &path).map_err(|e| io("renaming", &path, e))?;
        }
        Ok(serving.cert_pem)
    }

    /// The apiserver's TLS and authentication flags, and how it calls
    /// kubelets.
    pub fn apiserver_args(&self) -> Vec<String> {
        let path = |f: &str| self.dir.join(f).display().to_string();
        vec![
            format!("--tls-cert-file={}", path("apiserver.crt")),
            format!("--tls-private-key-file={}", path("apiserver.key")),
            format!("--client-ca-file={}", path("ca.crt")),
            format!("--kubelet-certificate-authority={}", path("ca.crt")),
            format!("--kubelet-client-certificate={}", path("apiserver-kubelet-client.crt")),
            format!("--kubelet-client-key={}", path("apiserver-kubelet-client.key")),
            format!("--service-account-key-file={}", path("sa.key")),
        ]
    }

    /// etcd's serving pair, valid for loopback and `names`, and the
    /// apiserver's client certificate for it (`etcd-server.*`,
    /// `apiserver-etcd-client.*`), as kubeadm lays them out.
    pub fn etcd_tls(&self, names: &[String]) -> Result<EtcdTls> {
        let mut all = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        all.extend(names.iter().cloned());
        // Also the members' certificate towards each other (compose's three).
        let serving =
            self.ca.issue(&Usage::Peer { names: &all }, LEAF_VALIDITY).map_err(|e| pki_error(&self.dir, e))?;
        let (server_cert, server_key) = self.write_pair("etcd-server", &serving)?;
        let (client_cert, client_key) = self.write_pair("apiserver-etcd-client", &self.issue(ETCD_CLIENT)?)?;
        Ok(EtcdTls { ca: self.ca_file(), server_cert, server_key, client_cert, client_key })
    }

    /// A kubelet API's TLS files: a serving certificate for `ip` (as
    /// `pki/FILE.crt`) and the CA its callers' certificates must come from.
    pub fn kubelet_tls(&self, file: &str, ip: std::net::IpAddr) -> Result<TlsFiles> {
        let names = [ip.to_string(), "127.0.0.1".into(), "localhost".into()];
        let serving =
            self.ca.issue(&Usage::Server { names: &names }, LEAF_VALIDITY).map_err(|e| pki_error(&self.dir, e))?;
        let (cert, key) = self.write_pair(file, &serving)?;
        Ok(TlsFiles { cert, key, client_ca: Some(self.ca_file()) })
    }

    /// [`kubelet_tls`](Self::kubelet_tls) as the kubelet's flags.
    pub fn kubelet_args(&self, file: &str, ip: std::net::IpAddr) -> Result<Vec<String>> {
        let tls = self.kubelet_tls(file, ip)?;
        Ok(vec![
            format!("--tls-cert-file={}", tls.cert.display()),
            format!("--tls-private-key-file={}", tls.key.display()),
            format!("--client-ca-file={}", self.ca_file().display()),
        ])
    }

    /// Writes `pki/FILE.crt` and `pki/FILE.key`.
    fn write_pair(&self, file: &str, issued: &skiff_pki::Issued) -> Result<(PathBuf, PathBuf)> {
        let (crt, key) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        write(&crt, issued.cert_pem.as_bytes())?;
        write(&key, issued.key_pem.as_bytes())?;
        Ok((crt, key))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA's private key: the controller-manager's signing key.
    pub fn ca_key_file(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The client config of `identity`, written as `pki/FILE.yaml` with its
    /// certificate and key beside it.
    pub fn client_config(&self, file: &str, identity: Identity<'_>) -> Result<(PathBuf, ClientConfig)> {
        let (crt, key) = self.write_pair(file, &self.issue(identity)?)?;
        let config = ClientConfig {
            server: self.server.clone(),
            certificate_authority: Some(self.ca_file()),
            client_certificate: Some(crt),
            client_key: Some(key),
            token: None,
        };
        let path = self.dir.join(format!("{file}.yaml"));
        config.save_to(&path)?;
        Ok((path, config))
    }

    /// The client config of node `name`'s kubelet (`pki/node-NAME.yaml`):
    /// the user `system:node:NAME` in `system:nodes`, as Kubernetes' node
    /// identities, which NodeRestriction holds to its own Node and pods.
    pub fn node_client_config(&self, name: &str) -> Result<(PathBuf, ClientConfig)> {
        let user = format!("{NODE_USER_PREFIX}{name}");
        self.client_config(&format!("node-{name}"), Identity { user: &user, groups: &[NODES_GROUP] })
    }

    /// A certificate and key for `identity`, signed by the cluster CA, for
    /// tests that present them by hand.
    pub fn issue(&self, identity: Identity<'_>) -> Result<skiff_pki::Issued> {
        let usage = Usage::Client { user: identity.user, groups: identity.groups };
        self.ca.issue(&usage, LEAF_VALIDITY).map_err(|e| pki_error(&self.dir, e))
    }
}

fn write(path: &Path, contents: &[u8]) -> Result<()> {
    skiff_client::config::write_private(path, contents).map_err(|e| io("writing", path, e))
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { what, path: path.display().to_string(), source }
}

fn pki_error(path: &Path, e: skiff_pki::Error) -> Error {
    Error::Pki { path: path.display().to_string(), reason: e.to_string() }
}
