//! Rendered index documents: a bounded in-memory cache keyed by (repository, project,
//! `PackageRecord.revision`, representation) — the revision grows with every change of the
//! project, so an entry is never stale — and the response every index document gets:
//! `Content-Type`, `Cache-Control: no-cache`, a strong `ETag` (sha256 of the bytes sent),
//! `Vary: Accept, Accept-Encoding`, 304 on `If-None-Match`, gzip when the client accepts it.
//!
//! The base URL is not part of the key: simple pages hold relative links only.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use sha2::{Digest as _, Sha256};

use crate::index::Representation;

/// Documents kept at most.
pub const CACHE_ENTRIES: usize = 1024;

/// A document rendered once, in both encodings.
#[derive(Debug)]
pub struct Rendered {
    pub rep: Representation,
    pub body: Bytes,
    pub etag: String,
    pub gzip: Bytes,
    pub gzip_etag: String,
}

impl Rendered {
    /// Renders the encodings and their tags.
    pub fn new(rep: Representation, body: String) -> Rendered {
        let body = Bytes::from(body);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        // Writing to a Vec cannot fail; an empty gzip body is never sent (see `respond`).
        let gzip = encoder
            .write_all(&body)
            .and_then(|()| encoder.finish())
            .map(Bytes::from)
            .unwrap_or_default();
        Rendered {
            rep,
            etag: etag(&body),
            gzip_etag: etag(&gzip),
            body,
            gzip,
        }
    }
}

fn etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

type Key = (String, String, u64, Representation);
/// The documents and their insertion order (oldest first).
type Entries = (HashMap<Key, Arc<Rendered>>, VecDeque<Key>);

/// A bounded map of rendered project pages; the oldest entry goes first.
#[derive(Default)]
pub struct DocumentCache {
    inner: Mutex<Entries>,
}

impl DocumentCache {
    /// The cached document, if any.
    pub fn get(&self, key: &Key) -> Option<Arc<Rendered>> {
        let inner = self.inner.lock().ok()?;
        inner.0.get(key).cloned()
    }

    /// Keeps a document, dropping the oldest beyond [`CACHE_ENTRIES`].
    pub fn insert(&self, key: Key, doc: Arc<Rendered>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let (map, order) = &mut *inner;
        if map.insert(key.clone(), doc).is_none() {
            order.push_back(key);
        }
        while order.len() > CACHE_ENTRIES {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
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

/// Whether `Accept-Encoding` admits gzip (a `q=0` refuses it).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
}

/// The response for an index document.
pub fn respond(doc: &Rendered, headers: &HeaderMap, head: bool) -> Response {
    let gzip = accepts_gzip(headers) && !doc.gzip.is_empty();
    let (body, etag) = if gzip {
        (&doc.gzip, &doc.gzip_etag)
    } else {
        (&doc.body, &doc.etag)
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, doc.rep.content_type())
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::VARY, "Accept, Accept-Encoding")
        .header(header::ETAG, etag.as_str());
    if gzip {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
    }
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    if not_modified {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    builder = builder
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, body.len());
    let body = if head {
        Body::empty()
    } else {
        Body::from(body.clone())
    };
    builder.body(body).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn etags_gzip_and_304() {
        let doc = Rendered::new(Representation::Json, "{\"a\":1}".repeat(100));
        let plain = respond(&doc, &headers(&[]), false);
        assert_eq!(plain.status(), StatusCode::OK);
        assert_eq!(plain.headers()[header::ETAG], doc.etag.as_str());
        assert_eq!(plain.headers()[header::VARY], "Accept, Accept-Encoding");
        assert_eq!(plain.headers()[header::CACHE_CONTROL], "no-cache");
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let gz = respond(
            &doc,
            &headers(&[("accept-encoding", "br, gzip;q=0.5")]),
            false,
        );
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_ne!(
            doc.etag, doc.gzip_etag,
            "each encoding has its own strong tag"
        );
        let refused = respond(&doc, &headers(&[("accept-encoding", "gzip;q=0")]), false);
        assert!(refused.headers().get(header::CONTENT_ENCODING).is_none());
        let cached = respond(&doc, &headers(&[("if-none-match", &doc.etag)]), false);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        let other = respond(&doc, &headers(&[("if-none-match", "\"x\"")]), false);
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = DocumentCache::default();
        let doc = Arc::new(Rendered::new(Representation::Html, "x".into()));
        for i in 0..(CACHE_ENTRIES as u64 + 10) {
            cache.insert(
                ("r".into(), "p".into(), i, Representation::Html),
                doc.clone(),
            );
        }
        assert_eq!(cache.len(), CACHE_ENTRIES);
        assert!(
            cache
                .get(&("r".into(), "p".into(), 0, Representation::Html))
                .is_none()
        );
        assert!(
            cache
                .get(&(
                    "r".into(),
                    "p".into(),
                    CACHE_ENTRIES as u64 + 9,
                    Representation::Html
                ))
                .is_some()
        );
    }
}
