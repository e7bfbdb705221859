//! The apiserver's access to etcd: reads, compare-and-swap writes keyed on
//! mod_revision, and watches. Nothing else in skiff talks to etcd.

use std::time::Instant;

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream};
use skiff_telemetry::prometheus::HistogramVec;

use crate::Error;

/// One stored object: its JSON and the revision that last wrote it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Bytes,
    pub mod_revision: i64,
}

/// The outcome of a compare-and-swap.
pub enum Swap {
    Done {
        revision: i64,
    },
    /// The key's mod_revision (0: absent) was not what the caller read.
    Lost,
}

#[derive(Clone)]
pub struct Storage {
    client: etcd_client::Client,
    latency: HistogramVec,
}

impl Storage {
    pub async fn connect(endpoints: &[String], latency: HistogramVec) -> Result<Self, Error> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_keep_alive(std::time::Duration::from_secs(10), std::time::Duration::from_secs(5));
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

    pub async fn get(&self, key: &str) -> Result<Option<Stored>, Error> {
        let _t = self.timer("get");
        let resp = self.client.kv_client().get(key, None).await.map_err(|source| Error::Etcd { op: "get", source })?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| Stored { value: Bytes::copy_from_slice(kv.value()), mod_revision: kv.mod_revision() }))
    }

    /// Every key under `prefix`, and the revision the list was read at.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<(String, Stored)>, i64), Error> {
        let _t = self.timer("list");
        let resp = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|source| Error::Etcd { op: "list", source })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let items = resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (key, Stored { value: Bytes::copy_from_slice(kv.value()), mod_revision: kv.mod_revision() })
            })
            .collect();
        Ok((items, revision))
    }

    /// Keys in `[start, end)` as they were at `revision`, at most `limit`
    /// of them, and whether more follow. Fails as expired once etcd has
    /// compacted `revision`.
    pub async fn list_range(
        &self,
        start: &str,
        end: &str,
        limit: i64,
        revision: i64,
    ) -> Result<(Vec<(String, Stored)>, bool), Error> {
        let _t = self.timer("list");
        let options = GetOptions::new().with_range(end).with_limit(limit).with_revision(revision);
        let resp = match self.client.kv_client().get(start, Some(options)).await {
            Ok(resp) => resp,
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::OutOfRange => {
                return Err(Error::Expired { requested: revision, compacted: 0 })
            }
            Err(source) => return Err(Error::Etcd { op: "list", source }),
        };
        let items = resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (key, Stored { value: Bytes::copy_from_slice(kv.value()), mod_revision: kv.mod_revision() })
            })
            .collect();
        Ok((items, resp.more()))
    }

    /// Writes `value` at `key` if the key's mod_revision is still
    /// `expected` (0 = the key must not exist).
    pub async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Swap, Error> {
        let _t = self.timer(if expected == 0 { "create" } else { "update" });
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(|source| Error::Etcd { op: "put", source })?;
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

    /// Deletes `key` if its mod_revision is still `expected`.
    pub async fn delete_if(&self, key: &str, expected: i64) -> Result<Swap, Error> {
        let _t = self.timer("delete");
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.client.kv_client().txn(txn).await.map_err(|source| Error::Etcd { op: "delete", source })?;
        if !resp.succeeded() {
            return Ok(Swap::Lost);
        }
        Ok(Swap::Done { revision: resp.header().map_or(0, |h| h.revision()) })
    }

    /// Watches every key under `prefix` from `start_revision` on, with the
    /// previous value of each changed key.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, Error> {
        let options = WatchOptions::new().with_prefix().with_prev_key().with_start_revision(start_revision);
        self.client
            .watch_client()
            .watch(prefix, Some(options))
            .await
            .map_err(|source| Error::Etcd { op: "watch", source })
    }
}
