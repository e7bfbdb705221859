//! A gRPC listener for skiff's servers (the apiserver, the kubelet API):
//! plain TCP, or TLS with the serving certificate reloaded when its files
//! change (renewal needs no restart) and client certificates verified
//! against the cluster CA. The handshake happens here, off the accept loop,
//! so tonic sees ready connections that know their caller
//! ([`PeerInfo`] in each request's extensions).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::Subject;

/// A client that hasn't finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the serving certificate's files are checked for a renewal.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The TLS flags every skiff server takes, with Kubernetes' names.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsFlags {
    /// The serving certificate (PEM); with it the server speaks only TLS.
    /// Rewriting the file renews it without a restart.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The serving certificate's private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Callers presenting a certificate this CA (PEM) signed are the user
    /// its CN names, in the groups its O entries name.
    #[arg(long, requires = "tls_cert_file")]
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFlags {
    /// The server's TLS settings; None without a serving certificate.
    pub fn server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_private_key_file) else { return Ok(None) };
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.client_ca_file.clone() };
        server_config(&files).map(Some)
    }
}

/// Serving certificate and key, and the CA client certificates must be
/// signed by (none: no client certificates).
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// What a connection knows of its peer, in each request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Who a verified client certificate names, and until when (seconds
    /// since the epoch) it may: read it through [`PeerInfo::subject`].
    pub certificate: Option<(Subject, i64)>,
}

impl PeerInfo {
    /// Who the client certificate names, if it is still valid at `now`
    /// (seconds since the epoch). rustls checked it at the handshake, but a
    /// connection outlives its certificate, so each request asks again, as
    /// Kubernetes does: a renewed client opens a new connection.
    pub fn subject(&self, now: i64) -> Result<Option<&Subject>, String> {
        match &self.certificate {
            Some((subject, not_after)) if now > *not_after => {
                Err(format!("the client certificate of {} expired", subject.user))
            }
            Some((subject, _)) => Ok(Some(subject)),
            None => Ok(None),
        }
    }
}

/// One accepted connection, TLS or not.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The rustls server settings for `files`: HTTP/2 only (gRPC), client
/// certificates optional (token and anonymous callers have none) but
/// verified when given.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| invalid(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let resolver = ReloadingCert::load(files.cert.clone(), files.key.clone())?;
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts on `listener`; with `tls`, each connection's handshake runs in
/// its own task, and only finished ones are handed on.
pub fn incoming(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                let peer = PeerInfo { remote_addr: Some(remote), certificate: None };
                if tx.send(Ok(Conn { io: Io::Plain(tcp), peer })).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let certificate =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(subject_of);
                        let peer = PeerInfo { remote_addr: Some(remote), certificate };
                        let _ = tx.send(Ok(Conn { io: Io::Tls(Box::new(tls)), peer })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Who a verified client certificate names, and its end of validity; one
/// without a CN names no one.
fn subject_of(cert: &CertificateDer<'_>) -> Option<(Subject, i64)> {
    let subject = crate::subject(cert).ok().filter(|s| !s.user.is_empty())?;
    Some((subject, crate::not_after(cert).ok()?))
}

/// The serving certificate, re-read when its files change.
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    certified: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ReloadingCert {
    fn load(cert: PathBuf, key: PathBuf) -> Result<Self, TlsConfigError> {
        let modified = (mtime(&cert), mtime(&key));
        let certified = certified_key(&cert, &key)?;
        Ok(Self { cert, key, state: Mutex::new(Loaded { certified, modified, checked: Instant::now() }) })
    }

    /// The current pair, reloaded first if a file changed since the last
    /// look (at most once a second). A half-written or broken renewal keeps
    /// the old pair until a good one appears.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let modified = (mtime(&self.cert), mtime(&self.key));
            if modified != state.modified {
                match certified_key(&self.cert, &self.key) {
                    Ok(certified) => {
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        state.certified = certified;
                        state.modified = modified;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewed serving certificate not usable yet; keeping the old one")
                    }
                }
            }
        }
        state.certified.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsConfigError> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|source| TlsConfigError::Read { path: p.display().to_string(), source });
    crate::certified_key(&read(cert)?, &read(key)?)
        .map_err(|reason| TlsConfigError::Invalid { path: cert.display().to_string(), reason })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem =
        std::fs::read(path).map_err(|source| TlsConfigError::Read { path: path.display().to_string(), source })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| invalid(path, e))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no certificate"));
    }
    Ok(certs)
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> TlsConfigError {
    TlsConfigError::Invalid { path: path.display().to_string(), reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_subject_only_until_it_expires() {
        let alice = Subject { user: "alice".into(), groups: vec![] };
        let peer = PeerInfo { remote_addr: None, certificate: Some((alice.clone(), 1000)) };
        assert_eq!(peer.subject(1000), Ok(Some(&alice)));
        let expired = peer.subject(1001).unwrap_err();
        assert!(expired.contains("alice") && expired.contains("expired"), "{expired}");
        let anonymous = PeerInfo { remote_addr: None, certificate: None };
        assert_eq!(anonymous.subject(1001), Ok(None));
    }
}
