//! Single-range `Range: bytes=…` requests, shared by every format that serves files.

/// A requested byte range, before it is checked against the blob size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` or `bytes=a-` (end `None`).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Why a `Range` header was not used.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRange;

/// Parses a single-range `Range: bytes=…` header. Multiple ranges are refused.
pub fn parse_range(value: &str) -> Result<ByteRange, BadRange> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(BadRange)?;
    if spec.contains(',') {
        return Err(BadRange);
    }
    let (a, b) = spec.split_once('-').ok_or(BadRange)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| BadRange);
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Ok(ByteRange::Suffix(num(b)?)),
        (false, true) => Ok(ByteRange::From {
            start: num(a)?,
            end: None,
        }),
        (false, false) => {
            let (start, end) = (num(a)?, num(b)?);
            if end < start {
                return Err(BadRange);
            }
            Ok(ByteRange::From {
                start,
                end: Some(end),
            })
        }
        (true, true) => Err(BadRange),
    }
}

/// Resolves a range against a blob of `size` bytes to an inclusive `(start, end)`.
pub fn resolve_range(range: ByteRange, size: u64) -> Option<(u64, u64)> {
    match range {
        ByteRange::From { start, end } if start < size => {
            Some((start, end.unwrap_or(size - 1).min(size - 1)))
        }
        ByteRange::Suffix(n) if n > 0 && size > 0 => Some((size.saturating_sub(n), size - 1)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-99"),
            Ok(ByteRange::From {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(
            parse_range("bytes=5-"),
            Ok(ByteRange::From {
                start: 5,
                end: None
            })
        );
        assert_eq!(parse_range("bytes=-10"), Ok(ByteRange::Suffix(10)));
        for bad in [
            "bytes=9-1",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "bytes=-",
        ] {
            assert_eq!(parse_range(bad), Err(BadRange), "{bad}");
        }
        assert_eq!(
            resolve_range(
                ByteRange::From {
                    start: 0,
                    end: Some(999)
                },
                100
            ),
            Some((0, 99))
        );
        assert_eq!(
            resolve_range(
                ByteRange::From {
                    start: 100,
                    end: None
                },
                100
            ),
            None
        );
        assert_eq!(resolve_range(ByteRange::Suffix(10), 100), Some((90, 99)));
        assert_eq!(resolve_range(ByteRange::Suffix(1000), 100), Some((0, 99)));
    }
}

/// What to answer to a request's `Range` header for a body of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable `Range`: 200 with the whole body. A header that is not one well-formed byte
    /// range (several ranges, other units, garbage) is ignored, as RFC 9110 allows.
    Whole,
    /// 206 with the inclusive `(start, end)`.
    Part(u64, u64),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Decides how to answer `header` (the `Range` value, if any) for a body of `size` bytes.
pub fn answer(header: Option<&str>, size: u64) -> RangeAnswer {
    match header.map(parse_range) {
        None | Some(Err(BadRange)) => RangeAnswer::Whole,
        Some(Ok(range)) => match resolve_range(range, size) {
            Some((start, end)) => RangeAnswer::Part(start, end),
            None => RangeAnswer::Unsatisfiable,
        },
    }
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    #[test]
    fn only_a_wellformed_unsatisfiable_range_is_416() {
        assert_eq!(answer(None, 10), RangeAnswer::Whole);
        assert_eq!(answer(Some("bytes=0-1,4-5"), 10), RangeAnswer::Whole);
        assert_eq!(answer(Some("items=0-1"), 10), RangeAnswer::Whole);
        assert_eq!(answer(Some("bytes=2-3"), 10), RangeAnswer::Part(2, 3));
        assert_eq!(answer(Some("bytes=10-"), 10), RangeAnswer::Unsatisfiable);
    }
}

/// How a stored file is answered before its bytes are read: at once (304 for a matching
/// `If-None-Match`, 416 for an unsatisfiable range), or with a response head (200 or 206, with
/// `ETag`, `Accept-Ranges`, `Content-Type`, `Content-Length` and `Content-Range` set) and the
/// range to read.
pub enum FileAnswer {
    Done(axum::response::Response),
    Read {
        head: http::response::Builder,
        range: Option<(u64, u64)>,
    },
}

/// Decides how to answer a request (`headers`) for a stored file of `size` bytes whose strong
/// tag is `etag` (quoted); `extra` headers go on every answer. Never compressed: package files
/// are served byte for byte.
pub fn file_answer(
    headers: &http::HeaderMap,
    size: u64,
    etag: &str,
    content_type: &str,
    extra: &[(http::header::HeaderName, String)],
) -> FileAnswer {
    use http::{StatusCode, header};
    let base = |status: StatusCode| {
        let mut b = http::Response::builder()
            .status(status)
            .header(header::ETAG, etag)
            .header(header::ACCEPT_RANGES, "bytes");
        for (name, value) in extra {
            b = b.header(name, value);
        }
        b
    };
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*");
    if matches {
        let response = base(StatusCode::NOT_MODIFIED)
            .body(axum::body::Body::empty())
            .unwrap_or_default();
        return FileAnswer::Done(response);
    }
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = match answer(range_header, size) {
        RangeAnswer::Whole => None,
        RangeAnswer::Part(start, end) => Some((start, end)),
        RangeAnswer::Unsatisfiable => {
            let response = base(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(axum::body::Body::empty())
                .unwrap_or_default();
            return FileAnswer::Done(response);
        }
    };
    let head = match range {
        Some((start, end)) => base(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
            .header(header::CONTENT_LENGTH, end - start + 1),
        None => base(StatusCode::OK).header(header::CONTENT_LENGTH, size),
    }
    .header(header::CONTENT_TYPE, content_type);
    FileAnswer::Read { head, range }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod file_answer_tests {
    use http::{HeaderMap, StatusCode, header};

    use super::*;

    fn with(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn files_answer_304_416_206_and_200() {
        let tag = "\"abc\"";
        let extra = [(header::CACHE_CONTROL, "immutable".to_string())];
        let FileAnswer::Done(r) = file_answer(
            &with(&[(header::IF_NONE_MATCH, "W/\"abc\"")]),
            10,
            tag,
            "x",
            &extra,
        ) else {
            panic!("a matching tag is 304")
        };
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "immutable");
        let FileAnswer::Done(r) =
            file_answer(&with(&[(header::RANGE, "bytes=20-")]), 10, tag, "x", &[])
        else {
            panic!("a range past the end is 416")
        };
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let FileAnswer::Read { head, range } =
            file_answer(&with(&[(header::RANGE, "bytes=2-4")]), 10, tag, "x", &[])
        else {
            panic!("a range is read")
        };
        assert_eq!(range, Some((2, 4)));
        let r = head.body(()).unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        let FileAnswer::Read { head, range } = file_answer(&HeaderMap::new(), 10, tag, "x", &[])
        else {
            panic!("a plain GET is read")
        };
        assert_eq!(range, None);
        assert_eq!(
            head.body(()).unwrap().headers()[header::CONTENT_LENGTH],
            "10"
        );
    }
}
