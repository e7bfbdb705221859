//! The listeners: plain HTTP through pingora's own listening service, and
//! TLS through rustls in front of the same pingora HTTP application.
//!
//! pingora's rustls listener serves one certificate from files, with no
//! SNI callback; an ingress needs a certificate per host that changes when
//! its Secret does. So TLS connections are accepted here, handshaken with
//! [`tls::SniResolver`](crate::tls::SniResolver), and then handed to
//! pingora as any other stream ([`TlsConn`] gives pingora the digests and
//! ALPN it asks every stream for).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerOptions, ServerApp};
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest, UniqueID,
    UniqueIDType, ALPN,
};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Fds, ListenFds};
use pingora_core::services::Service as _;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::proxy::IngressProxy;
use crate::Error;

/// A client gets this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` here, where a failure can name it.
pub fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind(addr).map_err(|source| Error::Bind { what, addr, source })?;
    listener.set_nonblocking(true).map_err(|source| Error::Bind { what, addr, source })?;
    Ok(listener)
}

/// Serves plain HTTP (HTTP/1.1, and h2c for clients that know) on
/// `listener` until `stop` turns true.
pub async fn serve_http(proxy: IngressProxy, listener: TcpListener, stop: watch::Receiver<bool>) {
    let conf = Arc::new(ServerConf::default());
    let mut service = pingora_proxy::http_proxy_service_with_name(&conf, proxy, "skiff-ingress http");
    if let Some(app) = service.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    let name = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    service.add_tcp(&name);
    // pingora binds what it finds in the fd table instead of binding again.
    let mut fds = Fds::new();
    fds.add(name, listener.into_raw_fd());
    let fds: ListenFds = Arc::new(parking_lot::Mutex::new(fds));
    service.start_service(Some(fds), stop, 1).await;
}

/// Serves HTTPS on `listener` until `stop` turns true; connections already
/// open finish their current request (pingora watches `stop` too).
pub async fn serve_tls(
    proxy: IngressProxy,
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    mut stop: watch::Receiver<bool>,
) {
    let app = Arc::new(pingora_proxy::http_proxy(&Arc::new(ServerConf::default()), proxy));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        match accepted {
            Ok((tcp, _)) => {
                tokio::spawn(serve_tls_conn(app.clone(), tcp, acceptor.clone(), stop.clone()));
            }
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!(error = %e, "accepting a TLS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_tls_conn(
    app: Arc<HttpProxy<IngressProxy>>,
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let mut l4 = L4Stream::from(tcp);
    l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(l4)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let alpn = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => ALPN::H2,
        _ => ALPN::H1,
    };
    let mut next = Some(Box::new(TlsConn { tls, alpn }) as pingora_core::protocols::Stream);
    while let Some(stream) = next {
        next = app.process_new(stream, &stop).await;
    }
}

/// A TLS connection as pingora sees a stream.
#[derive(Debug)]
pub struct TlsConn {
    tls: TlsStream<L4Stream>,
    alpn: ALPN,
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        // The peer may be gone already; there is nothing to do about it.
        let _ = AsyncWriteExt::shutdown(&mut self.tls).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.tls.get_ref().0.id()
    }
}

impl Ssl for TlsConn {
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        Some(self.alpn.clone())
    }
}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tls.get_ref().0.get_timing_digest()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tls.get_ref().0.get_socket_digest()
    }
}

#[async_trait]
impl Peek for TlsConn {}
