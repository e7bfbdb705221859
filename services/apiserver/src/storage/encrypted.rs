//! A [`Storage`] that encrypts the values of the configured resources on
//! the way into the store and decrypts them on the way out, so that
//! everything above it (registry, watch caches, client watches) sees
//! plaintext and etcd never does.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::{Change, Storage, Stored, Swap, WatchStream, Watched};
use crate::encryption::{Encryption, Transformer};
use crate::Error;

pub struct Encrypted {
    inner: Arc<dyn Storage>,
    /// `/registry/<resource>/` and how its values are transformed.
    rules: Arc<Vec<(String, Transformer)>>,
}

impl Encrypted {
    pub fn new(inner: Arc<dyn Storage>, encryption: Encryption) -> Self {
        let rules =
            encryption.resources.into_iter().map(|(resource, t)| (format!("/registry/{resource}/"), t)).collect();
        Self { inner, rules: Arc::new(rules) }
    }

    /// Rewrites every stored value of the encrypted resources that was not
    /// written with the current write key (after a rotation, or when
    /// encryption was switched on): decrypt with whichever key wrote it,
    /// encrypt with the first. A value changed meanwhile is skipped: its
    /// writer already used the current key. Returns how many were rewritten.
    pub async fn reencrypt(&self) -> Result<usize, Error> {
        let mut rewritten = 0;
        for (prefix, transformer) in self.rules.iter() {
            let (stored, _) = self.inner.list(prefix).await?;
            for (key, value) in stored {
                if !transformer.is_stale(&value.value) {
                    continue;
                }
                let plain = transformer.decrypt(&key, &value.value).map_err(|why| undecryptable(&key, why))?;
                let sealed = transformer.encrypt(&key, &plain).map_err(|why| undecryptable(&key, why))?;
                if let Swap::Done { .. } = self.inner.put_if(&key, sealed, value.mod_revision).await? {
                    rewritten += 1;
                }
            }
        }
        Ok(rewritten)
    }
}

fn transformer_for<'a>(rules: &'a [(String, Transformer)], key: &str) -> Option<&'a Transformer> {
    rules.iter().find(|(prefix, _)| key.starts_with(prefix.as_str())).map(|(_, t)| t)
}

fn undecryptable(key: &str, why: String) -> Error {
    Error::Encryption { key: key.to_string(), reason: why }
}

fn open(rules: &[(String, Transformer)], key: &str, value: Bytes) -> Result<Bytes, Error> {
    match transformer_for(rules, key) {
        Some(t) => t.decrypt(key, &value).map(Bytes::from).map_err(|why| undecryptable(key, why)),
        None => Ok(value),
    }
}

fn open_stored(rules: &[(String, Transformer)], key: &str, stored: Stored) -> Result<Stored, Error> {
    Ok(Stored { value: open(rules, key, stored.value)?, mod_revision: stored.mod_revision })
}

fn open_change(rules: &[(String, Transformer)], change: Change) -> Result<Change, Error> {
    let Change { key, revision, value, created, prev } = change;
    let value = value.map(|v| open(rules, &key, v)).transpose()?;
    let prev = prev.map(|p| open_stored(rules, &key, p)).transpose()?;
    Ok(Change { key, revision, value, created, prev })
}

#[async_trait::async_trait]
impl Storage for Encrypted {
    async fn get(&self, key: &str) -> Result<Option<Stored>, Error> {
        self.inner.get(key).await?.map(|s| open_stored(&self.rules, key, s)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<(String, Stored)>, i64), Error> {
        let (items, revision) = self.inner.list(prefix).await?;
        let items = items
            .into_iter()
            .map(|(k, s)| open_stored(&self.rules, &k, s).map(|s| (k, s)))
            .collect::<Result<_, _>>()?;
        Ok((items, revision))
    }

    async fn list_range(
        &self,
        start: &str,
        end: &str,
        limit: i64,
        revision: i64,
    ) -> Result<(Vec<(String, Stored)>, bool), Error> {
        let (items, more) = self.inner.list_range(start, end, limit, revision).await?;
        let items = items
            .into_iter()
            .map(|(k, s)| open_stored(&self.rules, &k, s).map(|s| (k, s)))
            .collect::<Result<_, _>>()?;
        Ok((items, more))
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Swap, Error> {
        let value = match transformer_for(&self.rules, key) {
            Some(t) => t.encrypt(key, &value).map_err(|why| undecryptable(key, why))?,
            None => value,
        };
        self.inner.put_if(key, value, expected).await
    }

    async fn delete_if(&self, key: &str, expected: i64) -> Result<Swap, Error> {
        self.inner.delete_if(key, expected).await
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<WatchStream, Error> {
        let rules = self.rules.clone();
        let stream = self.inner.watch(prefix, start_revision).await?;
        Ok(stream
            .map(move |item| match item? {
                Watched::Changes(changes) => {
                    Ok(Watched::Changes(changes.into_iter().map(|c| open_change(&rules, c)).collect::<Result<_, _>>()?))
                }
                compacted @ Watched::Compacted { .. } => Ok(compacted),
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fake::FakeStorage;

    const CONFIG: &str = "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - name: k1\n        secret: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n";

    #[tokio::test]
    async fn secrets_are_sealed_below_and_plain_above_other_kinds_untouched() {
        let raw: Arc<dyn Storage> = Arc::new(FakeStorage::default());
        let store = Encrypted::new(raw.clone(), Encryption::parse(CONFIG).unwrap());
        let secret = br#"{"data":{"password":"aHVudGVyMg=="}}"#.to_vec();
        store.put_if("/registry/secrets/demo/db", secret.clone(), 0).await.unwrap();
        store.put_if("/registry/configmaps/demo/c", b"{}".to_vec(), 0).await.unwrap();

        let below = raw.get("/registry/secrets/demo/db").await.unwrap().unwrap().value;
        assert!(below.starts_with(b"k8s:enc:aesgcm:v1:k1:"));
        assert!(!below.windows(8).any(|w| w == b"password"));
        assert_eq!(raw.get("/registry/configmaps/demo/c").await.unwrap().unwrap().value.as_ref(), b"{}");

        assert_eq!(store.get("/registry/secrets/demo/db").await.unwrap().unwrap().value.as_ref(), secret.as_slice());
        let (listed, _) = store.list("/registry/secrets/").await.unwrap();
        assert_eq!(listed[0].1.value.as_ref(), secret.as_slice());
    }
}
