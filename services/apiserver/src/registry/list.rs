//! List: from the watch cache once it shows this apiserver's own writes,
//! else (and for later pages of a snapshot the cache no longer holds) from
//! the store at the list's revision. A list may ask for another state, as
//! Kubernetes' `resourceVersion` and `resourceVersionMatch` do ([`ListAt`]).

use std::sync::atomic::Ordering;

use skiff_api::KindInfo;

use super::Registry;
use crate::cache::{CachedObject, Filter, Page};
use crate::Error;

/// Which state of the objects a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListAt {
    /// The latest, with this apiserver's own writes (no resourceVersion).
    Latest,
    /// Whatever the cache holds now (`resourceVersion=0`).
    Any,
    /// At least this new (`resourceVersionMatch=NotOlderThan`, the default
    /// for a version other than 0).
    NotOlderThan(i64),
    /// Exactly this version (`resourceVersionMatch=Exact`), from etcd's
    /// history unless the cache shows it.
    Exact(i64),
}

impl ListAt {
    /// Reads `resourceVersion` and `resourceVersionMatch` as Kubernetes
    /// does; a combination it refuses is a bad request naming the field.
    pub fn parse(version: &str, matching: &str) -> Result<Self, Error> {
        let bad = |why: String| Err(Error::BadRequest(why));
        let number = || {
            version.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                Error::BadRequest(format!("resourceVersion: Invalid value: {version:?}: must be a resource version"))
            })
        };
        match (version, matching) {
            ("", "") => Ok(Self::Latest),
            ("", m) => {
                bad(format!("resourceVersionMatch: Forbidden: {m:?} is forbidden unless resourceVersion is provided"))
            }
            ("0", "" | "NotOlderThan") => Ok(Self::Any),
            (_, "" | "NotOlderThan") => Ok(Self::NotOlderThan(number()?)),
            ("0", "Exact") => {
                bad("resourceVersionMatch: Forbidden: \"Exact\" is forbidden for resourceVersion \"0\"".to_string())
            }
            (_, "Exact") => Ok(Self::Exact(number()?)),
            (_, m) => bad(format!(
                "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\""
            )),
        }
    }
}

impl Registry {
    /// Serves a list from the watch cache once it holds this apiserver's own
    /// latest write of the kind (or the state `at` asks for). With a limit,
    /// in pages of one snapshot: a later page comes from the cache while it
    /// still shows that revision, else from etcd at that revision.
    pub async fn list(
        &self,
        info: &'static KindInfo,
        filter: &Filter,
        limit: usize,
        continue_token: &str,
        at: ListAt,
    ) -> Result<Page, Error> {
        if !continue_token.is_empty() && at != ListAt::Latest {
            return Err(Error::BadRequest(
                "resourceVersion: Forbidden: specifying a resource version is not allowed when using continue".into(),
            ));
        }
        if continue_token.is_empty() {
            let limit = if limit == 0 { usize::MAX } else { limit };
            let cache = self.cache(info);
            let prefix = &filter.key_prefix;
            match at {
                ListAt::Latest => {}
                ListAt::Any => return Ok(cache.page(filter, prefix, limit, None).expect("an unpinned page answers")),
                // The cache's revision moves only with this kind's events,
                // so a version from another kind may lie ahead of it while
                // etcd has it: then etcd, at that version, which is as new
                // as asked.
                ListAt::NotOlderThan(version) if cache.revision() >= version => {
                    return Ok(cache.page(filter, prefix, limit, None).expect("an unpinned page answers"))
                }
                ListAt::NotOlderThan(version) | ListAt::Exact(version) => {
                    if let Some(page) = cache.page(filter, prefix, limit, Some(version)) {
                        return Ok(page);
                    }
                    return self.page_from_etcd(info, filter, prefix, limit, version).await;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_matches_read_as_kubernetes_reads_them() {
        assert_eq!(ListAt::parse("", "").unwrap(), ListAt::Latest);
        assert_eq!(ListAt::parse("0", "").unwrap(), ListAt::Any);
        assert_eq!(ListAt::parse("0", "NotOlderThan").unwrap(), ListAt::Any);
        assert_eq!(ListAt::parse("42", "").unwrap(), ListAt::NotOlderThan(42), "a list's default match");
        assert_eq!(ListAt::parse("42", "Exact").unwrap(), ListAt::Exact(42));
        for (version, matching, named) in [
            ("", "Exact", "resourceVersionMatch"),
            ("0", "Exact", "resourceVersionMatch"),
            ("42", "Latest", "resourceVersionMatch"),
            ("forty", "", "resourceVersion"),
            ("-1", "Exact", "resourceVersion"),
        ] {
            let refused = ListAt::parse(version, matching).unwrap_err().to_string();
            assert!(refused.starts_with(named), "{version:?} {matching:?}: {refused}");
        }
    }
}
