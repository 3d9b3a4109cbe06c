//! Rendered simple pages: a bounded cache keyed by (repository, project,
//! `PackageRecord.revision`, representation) — the revision grows with every change of the
//! project, so an entry is never stale — served by [`wharf_http::document::Rendered`]
//! (`Cache-Control: no-cache`, strong `ETag` per encoding, `Vary`, 304, gzip when accepted).
//!
//! The base URL is not part of the key: simple pages hold relative links only.

use crate::index::Representation;

/// Documents kept at most.
pub const CACHE_ENTRIES: usize = 1024;

/// Rendered project pages.
pub type DocumentCache = wharf_http::document::DocumentCache<(String, String, u64, Representation)>;
