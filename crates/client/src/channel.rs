//! The connection to the apiserver, following its client certificate: when
//! the certificate or key file is replaced (a renewal, by the kubelet's own
//! rotation or by whoever manages the files), calls made from then on go
//! over a new connection presenting the new pair. Streams already open
//! (watches) go on over the old connection until they end: TLS checks a
//! certificate at the handshake only, so none of them drops.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tonic::codegen::{http, Service};
use tonic::transport::channel::ResponseFuture;
use tonic::transport::Channel;

use crate::config::ClientConfig;
use crate::Error;

/// How often the certificate's files are looked at, at most.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A lazily connected [`Channel`] to the apiserver that switches to a new
/// connection when the client certificate's files change.
#[derive(Clone)]
pub struct ClientChannel {
    shared: Arc<Shared>,
    current: Channel,
    generation: u64,
}

struct Shared {
    config: ClientConfig,
    state: Mutex<State>,
}

struct State {
    channel: Channel,
    generation: u64,
    files: Option<FilesStamp>,
    checked: Instant,
}

/// What tells a replaced file: modification time and length of the
/// certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FilesStamp([(Option<SystemTime>, u64); 2]);

impl ClientChannel {
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, Error> {
        let channel = config.connect_lazy()?;
        let state = State { channel: channel.clone(), generation: 0, files: stamp(config), checked: Instant::now() };
        Ok(Self {
            shared: Arc::new(Shared { config: config.clone(), state: Mutex::new(state) }),
            current: channel,
            generation: 0,
        })
    }

    /// Takes the newest connection, first making one if the certificate's
    /// files changed since they were last looked at.
    fn refresh(&mut self) {
        // A token or no credentials at all: nothing to follow, no lock.
        if self.shared.config.client_certificate.is_none() {
            return;
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= CHECK_INTERVAL {
            state.checked = Instant::now();
            let files = stamp(&self.shared.config);
            if files != state.files {
                match self.shared.config.renewed_channel() {
                    Ok(channel) => {
                        tracing::info!("client certificate renewed: new calls use a new connection");
                        state.channel = channel;
                        state.generation += 1;
                        state.files = files;
                    }
                    // Mid-write (a new key beside the old certificate) or
                    // broken: keep the connection that works, look again.
                    Err(error) => tracing::debug!(%error, "client certificate files changed but do not load yet"),
                }
            }
        }
        if state.generation != self.generation {
            self.current = state.channel.clone();
            self.generation = state.generation;
        }
    }
}

fn stamp(config: &ClientConfig) -> Option<FilesStamp> {
    let (cert, key) = (config.client_certificate.as_ref()?, config.client_key.as_ref()?);
    let of = |path: &std::path::Path| std::fs::metadata(path).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    Some(FilesStamp([of(cert), of(key)]))
}

impl Service<http::Request<tonic::body::Body>> for ClientChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.refresh();
        Service::poll_ready(&mut self.current, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.current.call(request)
    }
}
