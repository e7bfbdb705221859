//! [`Storage`] on etcd: compare-and-swap as a transaction comparing the
//! key's mod_revision, watches with the previous value of each key.

use std::time::Instant;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchOptions};
use skiff_telemetry::prometheus::HistogramVec;
use tracing::Instrument as _;

use super::{Change, Storage, Stored, Swap, WatchStream, Watched};
use crate::Error;

/// An etcd cluster, with each call's latency observed by operation.
#[derive(Clone)]
pub struct Etcd {
    client: etcd_client::Client,
    latency: HistogramVec,
}

/// How the apiserver proves itself to etcd and checks etcd's certificate
/// (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
pub struct EtcdTls(etcd_client::TlsOptions);

impl EtcdTls {
    /// The TLS settings the three flags give, if any: all or none.
    pub fn from_flags(
        ca: &Option<std::path::PathBuf>,
        cert: &Option<std::path::PathBuf>,
        key: &Option<std::path::PathBuf>,
    ) -> Result<Option<Self>, Error> {
        let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else { return Ok(None) };
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::BadRequest(format!("--{flag} {}: {e}", path.display())))
        };
        let options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("etcd-cafile", ca)?))
            .identity(etcd_client::Identity::from_pem(read("etcd-certfile", cert)?, read("etcd-keyfile", key)?));
        Ok(Some(Self(options)))
    }
}

impl Etcd {
    pub async fn connect(endpoints: &[String], tls: Option<EtcdTls>, latency: HistogramVec) -> Result<Self, Error> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_keep_alive(std::time::Duration::from_secs(10), std::time::Duration::from_secs(5));
        if let Some(EtcdTls(tls)) = tls {
            options = options.with_tls(tls);
        }
        let client = etcd_client::Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| Error::Etcd { op: "connect", source })?;
        Ok(Self { client, latency })
    }

    fn timer(&self, op: &str) -> impl Drop + use<> {
        struct Timer(skiff_telemetry::prometheus::Histogram, Instant);
        impl Drop for Timer {
            fn drop(&mut self) {
                self.0.observe(self.1.elapsed().as_secs_f64());
            }
        }
        Timer(self.latency.with_label_values(&[op]), Instant::now())
    }
}

/// One etcd round trip in the trace of the request that needed it.
fn etcd_span(op: &'static str, key: &str) -> tracing::Span {
    tracing::info_span!("etcd", op, key)
}

fn stored(kv: &KeyValue) -> Stored {
    Stored { value: Bytes::copy_from_slice(kv.value()), mod_revision: kv.mod_revision() }
}

fn keyed(kv: &KeyValue) -> (String, Stored) {
    (String::from_utf8_lossy(kv.key()).into_owned(), stored(kv))
}

/// An etcd event as a [`Change`]; None for one without its key-value.
fn change(ev: &etcd_client::Event) -> Option<Change> {
    let kv = ev.kv()?;
    let put = ev.event_type() == etcd_client::EventType::Put;
    Some(Change {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        revision: kv.mod_revision(),
        value: put.then(|| Bytes::copy_from_slice(kv.value())),
        created: put && kv.create_revision() == kv.mod_revision(),
        prev: ev.prev_kv().map(stored),
    })
}

#[async_trait::async_trait]
impl Storage for Etcd {
    async fn get(&self, key: &str) -> Result<Option<Stored>, Error> {
        let _t = self.timer("get");
        let resp = self
            .client
            .kv_client()
            .get(key, None)
            .instrument(etcd_span("get", key))
            .await
            .map_err(|source| Error::Etcd { op: "get", source })?;
        Ok(resp.kvs().first().map(stored))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<(String, Stored)>, i64), Error> {
        let _t = self.timer("list");
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .instrument(etcd_span("list", prefix))
            .await
            .map_err(|source| Error::Etcd { op: "list", source })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok((resp.kvs().iter().map(keyed).collect(), revision))
    }

    async fn list_range(
        &self,
        start: &str,
        end: &str,
        limit: i64,
        revision: i64,
    ) -> Result<(Vec<(String, Stored)>, bool), Error> {
        let _t = self.timer("list");
        let options = GetOptions::new().with_range(end).with_limit(limit).with_revision(revision);
        let resp = match self.client.kv_client().get(start, Some(options)).instrument(etcd_span("list", start)).await {
            Ok(resp) => resp,
            // etcd answers OUT_OF_RANGE both for a compacted revision and
            // for one it has not reached; only its message tells which.
            Err(etcd_client::Error::GRpcStatus(s))
                if s.code() == tonic::Code::OutOfRange && s.message().contains("future revision") =>
            {
                return Err(Error::TooNew { requested: revision })
            }
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::OutOfRange => {
                return Err(Error::Expired { requested: revision, compacted: 0 })
            }
            Err(source) => return Err(Error::Etcd { op: "list", source }),
        };
        Ok((resp.kvs().iter().map(keyed).collect(), resp.more()))
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Swap, Error> {
        let _t = self.timer(if expected == 0 { "create" } else { "update" });
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .instrument(etcd_span("put", key))
            .await
            .map_err(|source| Error::Etcd { op: "put", source })?;
        if !resp.succeeded() {
            return Ok(Swap::Lost);
        }
        let revision = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Put(p) => p.header().map(|h| h.revision()),
                _ => None,
            })
            .or_else(|| resp.header().map(|h| h.revision()))
            .unwrap_or(0);
        Ok(Swap::Done { revision })
    }

    async fn delete_if(&self, key: &str, expected: i64) -> Result<Swap, Error> {
        let _t = self.timer("delete");
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .instrument(etcd_span("delete", key))
            .await
            .map_err(|source| Error::Etcd { op: "delete", source })?;
        if !resp.succeeded() {
            return Ok(Swap::Lost);
        }
        Ok(Swap::Done { revision: resp.header().map_or(0, |h| h.revision()) })
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, Error> {
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start_revision);
        let stream = self
            .client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(|source| Error::Etcd { op: "watch", source })?;
        // After a failure the stream yields nothing more: the caller re-watches.
        Ok(Box::pin(futures::stream::unfold(Some(stream), |stream| async move {
            let mut stream = stream?;
            let item = match stream.message().await {
                Ok(Some(resp)) if resp.compact_revision() > 0 => {
                    Ok(Watched::Compacted { revision: resp.compact_revision() })
                }
                Ok(Some(resp)) if resp.canceled() => Err(Error::WatchClosed),
                Ok(Some(resp)) => Ok(Watched::Changes(resp.events().iter().filter_map(change).collect())),
                Ok(None) => return None,
                Err(source) => Err(Error::Etcd { op: "watch", source }),
            };
            let rest = item.as_ref().is_ok_and(|w| matches!(w, Watched::Changes(_))).then_some(stream);
            Some((item, rest))
        })))
    }
}
