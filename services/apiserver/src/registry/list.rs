//! List: from the watch cache once it shows this apiserver's own writes,
//! else (and for later pages of a snapshot the cache no longer holds) from
//! the store at the list's revision.

use std::sync::atomic::Ordering;

use skiff_api::KindInfo;

use super::Registry;
use crate::cache::{CachedObject, Filter, Page};
use crate::Error;

impl Registry {
    /// Serves a list from the watch cache once it holds this apiserver's own
    /// latest write of the kind. With a limit, in pages of one snapshot: a
    /// later page comes from the cache while it still shows that revision,
    /// else from etcd at that revision.
    pub async fn list(
        &self,
        info: &'static KindInfo,
        filter: &Filter,
        limit: usize,
        continue_token: &str,
    ) -> Result<Page, Error> {
        if continue_token.is_empty() {
            let limit = if limit == 0 { usize::MAX } else { limit };
            let cache = self.cache(info);
            if self.shows_own_writes(info).await {
                return Ok(cache
                    .page(filter, &filter.key_prefix, limit, None)
                    .expect("an unpinned page always answers"));
            }
            // The cache is stuck behind (its etcd watch lags or reconnects):
            // rather than answer without the caller's own write, read etcd
            // at that write's revision, as Kubernetes falls back to etcd
            // when its cache is not fresh in time. Later pages follow it there.
            let wanted = self.last_write[info.kind].load(Ordering::Relaxed);
            tracing::warn!(kind = info.kind, wanted, cache = cache.revision(), "watch cache behind: listing from etcd");
            return self.page_from_etcd(info, filter, &filter.key_prefix, limit, wanted).await;
        }
        let (revision, start) = continue_token
            .split_once(':')
            .and_then(|(r, k)| Some((r.parse::<i64>().ok()?, k)))
            .filter(|(_, k)| k.starts_with(&filter.key_prefix))
            .ok_or_else(|| Error::BadRequest(format!("continue: {continue_token:?} is not a token this list gave")))?;
        let limit = if limit == 0 { usize::MAX } else { limit };
        if let Some(page) = self.cache(info).page(filter, start, limit, Some(revision)) {
            return Ok(page);
        }
        self.page_from_etcd(info, filter, start, limit, revision).await
    }

    async fn page_from_etcd(
        &self,
        info: &'static KindInfo,
        filter: &Filter,
        start: &str,
        limit: usize,
        revision: i64,
    ) -> Result<Page, Error> {
        let end = prefix_end(&filter.key_prefix);
        let mut start = start.to_string();
        let mut items = Vec::new();
        loop {
            let batch = limit.saturating_sub(items.len()).clamp(1, 1000) as i64;
            let (kvs, more) = self.storage.list_range(&start, &end, batch, revision).await?;
            for (i, (key, stored)) in kvs.iter().enumerate() {
                let object = CachedObject::decode(info, key.clone(), &stored.value, stored.mod_revision)?;
                if filter.matches(&object) {
                    items.push(object.json);
                }
                if items.len() >= limit {
                    let rest = more || i + 1 < kvs.len();
                    let next = rest.then(|| format!("{key}\0"));
                    return Ok(Page { items, revision, next });
                }
            }
            match kvs.last() {
                Some((key, _)) if more => start = format!("{key}\0"),
                _ => return Ok(Page { items, revision, next: None }),
            }
        }
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            break;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
