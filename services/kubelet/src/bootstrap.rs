//! TLS bootstrap, as Kubernetes' kubelet does it: a node that has only a
//! bootstrap token (`--bootstrap-kubeconfig`) makes its own key, asks for
//! a client certificate as `system:node:NAME` through a
//! CertificateSigningRequest, waits for the controller-manager to approve
//! and sign it, and writes the client config `--kubeconfig` names; from
//! then on it is that node. With that identity it asks the same way for
//! its API's serving certificate (for its address and name), unless
//! `--tls-cert-file` gives one. Keys never leave the node. The files live
//! in `--cert-dir`; a node restarted with them skips the requests.
//!
//! Both certificates are renewed the same way before they expire
//! ([`rotate`]), as the kubelet's certificate manager does: the files are
//! replaced, and the client connection and the API's server take the new
//! pairs up without a restart. A node that starts with a certificate that
//! has already ended (it was off for longer than the certificate's life)
//! asks again with the bootstrap token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde_json::json;
use skiff_api::well_known::{KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, NODES_GROUP, NODE_USER_PREFIX};
use skiff_client::{Client, ClientConfig};
use skiff_pki::serve::TlsFlags;

use skiff_telemetry::Stop;

use crate::{Config, Error};

/// How long a request may wait for approval and signing.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_millis(500);

/// Flags of the TLS bootstrap.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapFlags {
    /// A client config holding a bootstrap token (`skiffctl token create`),
    /// the server and the cluster CA: used to ask for this node's
    /// certificates when the `--kubeconfig` file does not exist yet.
    #[arg(long, requires = "kubeconfig")]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Where bootstrapped keys and certificates are kept (default
    /// `ROOT_DIR/pki`).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
}

fn cert_dir(config: &Config) -> PathBuf {
    config.bootstrap.cert_dir.clone().unwrap_or_else(|| config.root_dir.join("pki"))
}

fn flag(flag: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidFlag { flag, reason: reason.into() }
}

/// Makes sure `--kubeconfig` exists, bootstrapping it with the token of
/// `--bootstrap-kubeconfig` if it does not. Nothing to do without one.
pub async fn ensure_client_config(config: &Config, node: &str) -> Result<(), Error> {
    let Some(bootstrap_path) = &config.bootstrap.bootstrap_kubeconfig else { return Ok(()) };
    let kubeconfig = config.api.kubeconfig.as_ref().ok_or_else(|| flag("kubeconfig", "required with a bootstrap"))?;
    if kubeconfig.exists() {
        // A node off for longer than its certificate's life joins again
        // with the bootstrap token, as Kubernetes' kubelet does.
        match ClientConfig::load_from(kubeconfig)?.and_then(|c| c.client_certificate) {
            Some(cert) => match certificate_ended(&cert) {
                None => return Ok(()),
                Some(why) => tracing::warn!(node, cert = %cert.display(), %why, "bootstrapping again"),
            },
            // Credentials of another kind (a token) are not the bootstrap's to renew.
            None => return Ok(()),
        }
    }
    let bootstrap = ClientConfig::load_from(bootstrap_path)?
        .ok_or_else(|| flag("bootstrap-kubeconfig", format!("{}: no such file", bootstrap_path.display())))?;
    let client = Client::connect(&bootstrap)?;
    tracing::info!(node, "asking for this node's client certificate with the bootstrap token");
    let (cert, key) = obtain(&client, &cert_dir(config), "kubelet-client", KUBELET_CLIENT_SIGNER, node, &[]).await?;
    let own = ClientConfig {
        server: bootstrap.server.clone(),
        certificate_authority: bootstrap.certificate_authority.clone(),
        client_certificate: Some(cert),
        client_key: Some(key),
        token: None,
    };
    own.save_to(kubeconfig)?;
    tracing::info!(node, kubeconfig = %kubeconfig.display(), "bootstrapped: now acting as the node");
    Ok(())
}

/// The TLS flags the kubelet API serves with: `--tls-cert-file` when
/// given; after a bootstrap, a serving certificate requested for `names`
/// (the node's address and name), trusting the cluster CA's clients.
pub async fn serving_tls(config: &Config, client: &Client, node: &str, names: &[String]) -> Result<TlsFlags, Error> {
    if config.tls.tls_cert_file.is_some() || config.bootstrap.bootstrap_kubeconfig.is_none() {
        return Ok(config.tls.clone());
    }
    let client_config = ClientConfig::resolve(&config.api)?;
    let client_ca = config.tls.client_ca_file.clone().or(client_config.certificate_authority);
    let dir = cert_dir(config);
    let (cert, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    let (cert, key) = if key.exists() && certificate_ended(&cert).is_none() {
        (cert, key)
    } else {
        tracing::info!(node, ?names, "asking for this node's serving certificate");
        obtain(client, &dir, "kubelet", KUBELET_SERVING_SIGNER, node, names).await?
    };
    Ok(TlsFlags { tls_cert_file: Some(cert), tls_private_key_file: Some(key), client_ca_file: client_ca })
}

/// Renews the bootstrapped certificates in `--cert-dir` until `stop`: each
/// at a random point between 70% and 90% of its lifetime (so a fleet's
/// nodes don't all ask at once), asked for as the node with a new key, while
/// the old certificate still works. A failed request is tried again after a
/// back-off; the old files stay until a new pair is signed.
pub async fn rotate(config: &Config, client: Client, node: String, names: Vec<String>, stop: Stop) {
    if config.bootstrap.bootstrap_kubeconfig.is_none() {
        return;
    }
    let dir = cert_dir(config);
    let mut set = tokio::task::JoinSet::new();
    let serving = config.tls.tls_cert_file.is_none().then_some(("kubelet", KUBELET_SERVING_SIGNER, names));
    for (file, signer, names) in [("kubelet-client", KUBELET_CLIENT_SIGNER, Vec::new())].into_iter().chain(serving) {
        let (client, dir, node, stop) = (client.clone(), dir.clone(), node.clone(), stop.clone());
        set.spawn(async move {
            tokio::select! {
                _ = stop.raised() => {}
                _ = keep_renewed(&client, &dir, file, signer, &node, &names) => {}
            }
        });
    }
    while set.join_next().await.is_some() {}
}

async fn keep_renewed(client: &Client, dir: &Path, file: &str, signer: &str, node: &str, names: &[String]) {
    let mut failures = 0u32;
    loop {
        let cert = dir.join(format!("{file}.crt"));
        let wait = match renewal_due(&cert) {
            Ok(due) => due.duration_since(std::time::SystemTime::now()).unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, cert = %cert.display(), "cannot read the certificate to renew it");
                RENEW_RETRY_MAX
            }
        };
        tokio::time::sleep(wait).await;
        match obtain(client, dir, file, signer, node, names).await {
            Ok(_) => {
                failures = 0;
                tracing::info!(node, certificate = file, "renewed");
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let backoff = (RENEW_RETRY_MIN * 2u32.saturating_pow(failures.min(8))).min(RENEW_RETRY_MAX);
                tracing::warn!(node, certificate = file, %error, ?backoff, "renewal failed; retrying");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

const RENEW_RETRY_MIN: Duration = Duration::from_secs(1);
const RENEW_RETRY_MAX: Duration = Duration::from_secs(300);

/// When the certificate in `path` should be renewed: a random point between
/// 70% and 90% of its lifetime.
fn renewal_due(path: &Path) -> Result<std::time::SystemTime, String> {
    let (not_before, not_after) = validity(path)?;
    Ok(due_between(not_before, not_after, 0.7 + 0.2 * rand::random::<f64>()))
}

/// Why the certificate in `path` can no longer be used (it ended, or
/// cannot be read); None while it can.
fn certificate_ended(path: &Path) -> Option<String> {
    match validity(path) {
        Ok((_, not_after)) if not_after <= chrono::Utc::now().timestamp() => {
            let at = chrono::DateTime::from_timestamp(not_after, 0)
                .map_or_else(|| not_after.to_string(), |t| t.to_rfc3339());
            Some(format!("the certificate ended at {at}"))
        }
        Ok(_) => None,
        Err(why) => Some(format!("the certificate cannot be read: {why}")),
    }
}

/// The leaf certificate's notBefore and notAfter, in seconds since the epoch.
fn validity(path: &Path) -> Result<(i64, i64), String> {
    let pem = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let der = skiff_pki::pem_certificates(&pem).map_err(|e| e.to_string())?;
    let leaf = der.first().ok_or("no certificate in it")?;
    skiff_pki::validity(leaf).map_err(|e| e.to_string())
}

/// `fraction` of the way from `not_before` to `not_after` (seconds since the epoch).
fn due_between(not_before: i64, not_after: i64, fraction: f64) -> std::time::SystemTime {
    let lifetime = not_after.saturating_sub(not_before).max(0) as f64;
    let at = not_before.saturating_add((lifetime * fraction) as i64).max(0);
    std::time::UNIX_EPOCH + Duration::from_secs(at as u64)
}

/// Makes a key, sends a CSR for `node` (`system:node:NODE` in
/// `system:nodes`, with `names`) to `signer`, waits for the certificate,
/// and writes `DIR/FILE.crt` and `DIR/FILE.key`, each replaced whole.
async fn obtain(
    client: &Client,
    dir: &Path,
    file: &str,
    signer: &str,
    node: &str,
    names: &[String],
) -> Result<(PathBuf, PathBuf), Error> {
    let made = skiff_pki::csr::request(&format!("{NODE_USER_PREFIX}{node}"), &[NODES_GROUP], names)
        .map_err(|e| flag("node-name", format!("making a certificate request: {e}")))?;
    let name = format!("node-csr-{}-{:08x}", file, rand::random::<u32>());
    let usages = match signer {
        KUBELET_SERVING_SIGNER => json!(["digital signature", "key encipherment", "server auth"]),
        _ => json!(["digital signature", "key encipherment", "client auth"]),
    };
    let request = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&made.cert_pem),
                 "signerName": signer, "usages": usages},
    });
    client.create("CertificateSigningRequest", "", &request).await?;
    let certificate = wait_signed(client, &name).await?;
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let (cert, key) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
    // Each file replaced in one rename, so no reader sees half of one; the
    // readers check that key and certificate match before using them.
    let (cert_new, key_new) = (dir.join(format!("{file}.crt.new")), dir.join(format!("{file}.key.new")));
    skiff_client::config::write_private(&key_new, made.key_pem.as_bytes()).map_err(|e| io("writing", &key_new, e))?;
    std::fs::write(&cert_new, certificate).map_err(|e| io("writing", &cert_new, e))?;
    std::fs::rename(&key_new, &key).map_err(|e| io("replacing", &key, e))?;
    std::fs::rename(&cert_new, &cert).map_err(|e| io("replacing", &cert, e))?;
    Ok((cert, key))
}

/// The signed certificate of request `name`, or why there is none.
async fn wait_signed(client: &Client, name: &str) -> Result<Vec<u8>, Error> {
    let deadline = Instant::now() + SIGNING_TIMEOUT;
    let api = client.api::<CertificateSigningRequest>("");
    loop {
        let csr = api.get(name).await?;
        let status = csr.status.unwrap_or_default();
        if let Some(certificate) = status.certificate.filter(|c| !c.0.is_empty()) {
            return Ok(certificate.0);
        }
        let refused =
            status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Denied" || c.type_ == "Failed");
        if let Some(c) = refused {
            let why = c.message.unwrap_or_default();
            return Err(flag("bootstrap-kubeconfig", format!("certificate request {name} {}: {why}", c.type_)));
        }
        if Instant::now() > deadline {
            return Err(flag(
                "bootstrap-kubeconfig",
                format!("certificate request {name} not signed after {SIGNING_TIMEOUT:?}: is the controller-manager running with --cluster-signing-key-file, or approve it with skiffctl certificate approve {name}"),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { what, path: path.display().to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_within_the_lifetime() {
        let at = |fraction| due_between(1000, 2000, fraction).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(at(0.7), 1700);
        assert_eq!(at(0.9), 1900);
        // A certificate that ends before it starts is due at once, not never.
        assert_eq!(due_between(2000, 1000, 0.8).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 2000);
    }

    #[test]
    fn a_missing_or_garbled_certificate_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(renewal_due(&dir.path().join("absent.crt")).is_err());
        std::fs::write(dir.path().join("junk.crt"), "junk").unwrap();
        assert!(renewal_due(&dir.path().join("junk.crt")).is_err());
    }
}
