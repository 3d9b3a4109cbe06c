//! Index documents as every format serves them (DESIGN.md §4 "Publish"): generated per
//! request or per revision, with a strong `ETag` per representation, 304 on `If-None-Match`
//! (weak comparison), `Cache-Control: no-cache`, `Vary: Accept, Accept-Encoding`, and gzip
//! when the client accepts it (never for package files, which are not documents).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use sha2::{Digest as _, Sha256};

/// A rendered document, with its gzip form made on first need.
pub struct Rendered {
    body: Bytes,
    /// The strong tag of the identity form (the gzip form's is derived from it).
    pub etag: String,
    gzip: OnceLock<Option<Bytes>>,
}

impl Rendered {
    /// A document and its strong `ETag` (the sha256 of the body).
    pub fn new(body: impl Into<Bytes>) -> Rendered {
        let body = body.into();
        let etag = format!("\"{}\"", hex::encode(Sha256::digest(&body)));
        Rendered {
            body,
            etag,
            gzip: OnceLock::new(),
        }
    }

    fn gzip(&self) -> Option<&Bytes> {
        self.gzip
            .get_or_init(|| {
                use std::io::Write;
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(&self.body).ok()?;
                encoder.finish().ok().map(Bytes::from)
            })
            .as_ref()
    }

    /// The response for a request with `headers`: 304 when `If-None-Match` names this
    /// document, else the body (gzip'd if the client accepts it and it helps).
    pub fn respond(&self, headers: &HeaderMap, content_type: &'static str, head: bool) -> Response {
        // Each representation has its own strong tag; either one means "you have this document".
        let gz_etag = format!("{}-gzip\"", self.etag.trim_end_matches('"'));
        let builder = |status: StatusCode, etag: &str| {
            Response::builder()
                .status(status)
                .header(header::CACHE_CONTROL, "no-cache")
                .header(header::VARY, "Accept, Accept-Encoding")
                .header(header::ETAG, etag)
        };
        // Weak comparison (RFC 9110 §13.1.2): `W/` prefixes are ignored.
        let matches = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == self.etag || t == gz_etag);
        if matches {
            return builder(StatusCode::NOT_MODIFIED, &self.etag)
                .body(Body::empty())
                .unwrap_or_default();
        }
        let gzip = accepts_gzip(headers).then(|| self.gzip()).flatten();
        let (body, etag) = match gzip {
            Some(gz) if gz.len() < self.body.len() => (gz.clone(), gz_etag.as_str()),
            _ => (self.body.clone(), self.etag.as_str()),
        };
        let mut response = builder(StatusCode::OK, etag)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len());
        if etag != self.etag {
            response = response.header(header::CONTENT_ENCODING, "gzip");
        }
        response
            .body(if head {
                Body::empty()
            } else {
                Body::from(body)
            })
            .unwrap_or_default()
    }
}

/// Whether `Accept-Encoding` allows gzip (present with a non-zero q).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

/// Rendered documents by key, bounded: the oldest entry goes first. Formats key documents by
/// the package revision they were rendered from (it grows with every change), so an entry is
/// never stale, only unused.
pub struct DocumentCache<K> {
    capacity: usize,
    inner: Mutex<Entries<K>>,
}

/// The documents and their insertion order (oldest first).
type Entries<K> = (HashMap<K, Arc<Rendered>>, VecDeque<K>);

impl<K: Eq + Hash + Clone> DocumentCache<K> {
    /// A cache of at most `capacity` documents.
    pub fn new(capacity: usize) -> Self {
        DocumentCache {
            capacity,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// The cached document, if any.
    pub fn get(&self, key: &K) -> Option<Arc<Rendered>> {
        self.inner.lock().ok()?.0.get(key).cloned()
    }

    /// Keeps a document, dropping the oldest beyond the capacity.
    pub fn insert(&self, key: K, doc: Arc<Rendered>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let (map, order) = &mut *inner;
        if map.insert(key.clone(), doc).is_none() {
            order.push_back(key);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// The cached document, or `render`'s, kept.
    pub fn get_or_render<E>(
        &self,
        key: K,
        render: impl FnOnce() -> Result<Rendered, E>,
    ) -> Result<Arc<Rendered>, E> {
        if let Some(found) = self.get(&key) {
            return Ok(found);
        }
        let rendered = Arc::new(render()?);
        self.insert(key, rendered.clone());
        Ok(rendered)
    }

    /// How many documents are kept.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.0.len()).unwrap_or(0)
    }

    /// Whether no document is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest() {
        let cache = DocumentCache::new(3);
        let doc = Arc::new(Rendered::new("x"));
        for i in 0..5u64 {
            cache.insert(i, doc.clone());
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&0).is_none() && cache.get(&1).is_none());
        assert!(cache.get(&4).is_some());
        let again = cache
            .get_or_render::<()>(4, || panic!("a cached document is not rendered again"))
            .unwrap();
        assert!(Arc::ptr_eq(&again, &doc));
    }

    #[test]
    fn documents_revalidate_and_compress() {
        let doc = Rendered::new("x".repeat(1000));
        let mut headers = HeaderMap::new();
        let r = doc.respond(&headers, "text/plain", false);
        assert_eq!(r.status(), StatusCode::OK);
        let etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(r.headers()[header::VARY], "Accept, Accept-Encoding");
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        headers.insert(header::IF_NONE_MATCH, etag.parse().unwrap());
        assert_eq!(
            doc.respond(&headers, "text/plain", false).status(),
            StatusCode::NOT_MODIFIED
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("deflate, gzip"),
        );
        let r = doc.respond(&headers, "text/plain", false);
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        let gz_etag = r.headers()[header::ETAG].to_str().unwrap().to_string();
        assert_ne!(gz_etag, etag, "each representation has its own strong tag");
        headers.insert(header::IF_NONE_MATCH, gz_etag.parse().unwrap());
        assert_eq!(
            doc.respond(&headers, "text/plain", false).status(),
            StatusCode::NOT_MODIFIED
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        let r = doc.respond(&headers, "text/plain", false);
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        // a different document has another tag
        assert_ne!(Rendered::new("y").etag, doc.etag);
    }
}
