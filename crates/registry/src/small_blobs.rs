//! A bounded in-memory cache of small, already verified documents (manifests): reading one
//! from disk costs a blocking-thread hop and a chunk hash per request, and tags are read far more
//! often than written.
//!
//! Safe without invalidation: content is addressed by digest, so the bytes cached for a digest
//! can never become wrong; whether a name may see that digest is still decided by metadata on
//! every request before the cache is consulted.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use wharf_types::Digest;

/// Documents larger than this are never cached.
pub const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Total bytes the cache holds at most.
pub const MAX_TOTAL_BYTES: usize = 32 * 1024 * 1024;

/// First-in, first-out cache bounded by total size.
#[derive(Default)]
pub struct SmallBlobCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Digest, Bytes>,
    order: VecDeque<Digest>,
    total: usize,
}

impl SmallBlobCache {
    /// The cached bytes of `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.lock().entries.get(digest).cloned()
    }

    /// Remembers verified `bytes` of `digest` (ignored when too large), evicting the oldest
    /// entries to stay within [`MAX_TOTAL_BYTES`].
    pub fn insert(&self, digest: Digest, bytes: Bytes) {
        if bytes.len() > MAX_ENTRY_BYTES {
            return;
        }
        let mut inner = self.lock();
        if inner.entries.contains_key(&digest) {
            return;
        }
        while inner.total + bytes.len() > MAX_TOTAL_BYTES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(evicted) = inner.entries.remove(&oldest) {
                inner.total -= evicted.len();
            }
        }
        inner.total += bytes.len();
        inner.order.push_back(digest.clone());
        inner.entries.insert(digest, bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_bound_and_evicts_the_oldest() {
        let cache = SmallBlobCache::default();
        let entry = Bytes::from(vec![0u8; MAX_ENTRY_BYTES]);
        let n = MAX_TOTAL_BYTES / MAX_ENTRY_BYTES;
        for i in 0..=n {
            cache.insert(Digest::from_sha256_bytes(&[i as u8; 32]), entry.clone());
        }
        assert!(
            cache.get(&Digest::from_sha256_bytes(&[0; 32])).is_none(),
            "oldest evicted"
        );
        assert!(
            cache
                .get(&Digest::from_sha256_bytes(&[n as u8; 32]))
                .is_some()
        );
        assert!(cache.lock().total <= MAX_TOTAL_BYTES);
        cache.insert(
            Digest::from_sha256_bytes(&[250; 32]),
            Bytes::from(vec![0u8; MAX_ENTRY_BYTES + 1]),
        );
        assert!(
            cache.get(&Digest::from_sha256_bytes(&[250; 32])).is_none(),
            "too large to cache"
        );
    }
}
