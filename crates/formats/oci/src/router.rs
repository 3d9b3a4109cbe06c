//! Turns a request path under `/v2/` into an [`Endpoint`] before any handler runs.
//!
//! OCI names contain slashes, so the path is split at the *last* `/blobs/`, `/manifests/`,
//! `/tags/list` or `/referrers/` marker: everything before it is the name.

/// A parsed `/v2/` route. Names and references are still unvalidated text: handlers validate
/// them so that the error is in the OCI shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<session>`
    Upload { name: String, session: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: String, digest: String },
}

impl Endpoint {
    /// Parses a path (without query) that starts with `/v2`. `None` means no such route.
    pub fn parse(path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Endpoint::Base);
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Endpoint::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Endpoint::Tags {
                name: name.to_string(),
            });
        }
        if let Some(name) = rest
            .strip_suffix("/blobs/uploads/")
            .or_else(|| rest.strip_suffix("/blobs/uploads"))
        {
            return Some(Endpoint::UploadStart {
                name: name.to_string(),
            });
        }
        if let Some((name, session)) = rest.rsplit_once("/blobs/uploads/")
            && !session.contains('/')
        {
            return Some(Endpoint::Upload {
                name: name.to_string(),
                session: session.to_string(),
            });
        }
        let split = |marker: &str| {
            rest.rsplit_once(marker)
                .filter(|(name, last)| !name.is_empty() && !last.is_empty() && !last.contains('/'))
                .map(|(n, l)| (n.to_string(), l.to_string()))
        };
        if let Some((name, reference)) = split("/manifests/") {
            return Some(Endpoint::Manifest { name, reference });
        }
        if let Some((name, digest)) = split("/blobs/") {
            return Some(Endpoint::Blob { name, digest });
        }
        if let Some((name, digest)) = split("/referrers/") {
            return Some(Endpoint::Referrers { name, digest });
        }
        None
    }

    /// The endpoint family, used as the request span's name.
    pub fn family(&self) -> &'static str {
        match self {
            Endpoint::Base => "oci.base",
            Endpoint::Catalog => "oci.catalog",
            Endpoint::Tags { .. } => "oci.tags",
            Endpoint::Manifest { .. } => "oci.manifest",
            Endpoint::Blob { .. } => "oci.blob",
            Endpoint::UploadStart { .. } | Endpoint::Upload { .. } => "oci.upload",
            Endpoint::Referrers { .. } => "oci.referrers",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint::{self, *};

    fn p(path: &str) -> Option<Endpoint> {
        Endpoint::parse(path)
    }

    #[test]
    fn parses_every_route() {
        assert_eq!(p("/v2/"), Some(Base));
        assert_eq!(p("/v2"), Some(Base));
        assert_eq!(p("/v2/_catalog"), Some(Catalog));
        assert_eq!(p("/v2/a/b/tags/list"), Some(Tags { name: "a/b".into() }));
        assert_eq!(
            p("/v2/a/b/manifests/v1"),
            Some(Manifest {
                name: "a/b".into(),
                reference: "v1".into()
            })
        );
        assert_eq!(
            p("/v2/a/blobs/x/blobs/sha256:00"),
            Some(Blob {
                name: "a/blobs/x".into(),
                digest: "sha256:00".into()
            })
        );
        assert_eq!(
            p("/v2/a/b/blobs/uploads/"),
            Some(UploadStart { name: "a/b".into() })
        );
        assert_eq!(
            p("/v2/a/b/blobs/uploads/1-abc"),
            Some(Upload {
                name: "a/b".into(),
                session: "1-abc".into()
            })
        );
        assert_eq!(
            p("/v2/a/b/referrers/sha256:00"),
            Some(Referrers {
                name: "a/b".into(),
                digest: "sha256:00".into()
            })
        );
        assert_eq!(p("/v2/a/b/other"), None);
        assert_eq!(p("/v3/"), None);
    }
}
