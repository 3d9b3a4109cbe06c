//! Parses the raw path under `/npm/<repo>/` into an [`Endpoint`] before any handler runs.
//!
//! A scoped name arrives as `@scope%2fname` (npm escapes the slash, lower or upper case) or as
//! `@scope/name`; both name the same package.

use wharf_types::RepoName;

/// A parsed npm route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/<name>`: the packument (GET), a publish or metadata change (PUT).
    Package { name: String },
    /// `/<name>/-rev/<rev>`: npm's unpublish writes (PUT the document without a version,
    /// DELETE the whole package).
    PackageRev { name: String, rev: String },
    /// `/<name>/<version or dist-tag>`: one version's document.
    Version { name: String, spec: String },
    /// `/<name>/-/<file>.tgz`
    Tarball { name: String, file: String },
    /// `/<name>/-/<file>.tgz/-rev/<rev>`: npm deletes the tarball after an unpublish.
    TarballRev { name: String, file: String },
    /// `/-/package/<name>/dist-tags`
    DistTags { name: String },
    /// `/-/package/<name>/dist-tags/<tag>`
    DistTag { name: String, tag: String },
    /// `/-/whoami`
    Whoami,
    /// Any other `/-/…` endpoint of the public registry (login, audit, search): not served.
    Unsupported { what: String },
}

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    NotNpm,
    BadRepo(String),
    BadName(String),
    NoSuchEndpoint(String),
}

/// Parses a raw (still percent-encoded) request path.
pub fn parse(raw_path: &str) -> Result<(RepoName, Endpoint), RouteError> {
    let rest = raw_path.strip_prefix("/npm/").ok_or(RouteError::NotNpm)?;
    let (repo, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let repo = RepoName::new(&decode(repo)).map_err(|e| RouteError::BadRepo(e.to_string()))?;
    let segments: Vec<String> = rest
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let endpoint = match segments.first().map(String::as_str) {
        None => return Err(RouteError::NoSuchEndpoint("no package name".into())),
        Some("-") => registry_endpoint(&segments[1..])?,
        Some(_) => package_endpoint(&segments)?,
    };
    Ok((repo, endpoint))
}

/// `/-/…` endpoints.
fn registry_endpoint(segments: &[String]) -> Result<Endpoint, RouteError> {
    let strs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["whoami"] => Ok(Endpoint::Whoami),
        ["package", rest @ ..] => {
            let (name, used) = name_from(rest)?;
            match &rest[used..] {
                ["dist-tags"] => Ok(Endpoint::DistTags { name }),
                ["dist-tags", tag] => Ok(Endpoint::DistTag {
                    name,
                    tag: (*tag).to_string(),
                }),
                _ => Err(RouteError::NoSuchEndpoint(format!(
                    "/-/package/{name}/{}",
                    rest[used..].join("/")
                ))),
            }
        }
        _ => Ok(Endpoint::Unsupported {
            what: format!("/-/{}", strs.join("/")),
        }),
    }
}

/// `/<name>…` endpoints.
fn package_endpoint(segments: &[String]) -> Result<Endpoint, RouteError> {
    let strs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (name, used) = name_from(&strs)?;
    let s = |x: &str| x.to_string();
    match &strs[used..] {
        [] => Ok(Endpoint::Package { name }),
        ["-rev", rev] => Ok(Endpoint::PackageRev { name, rev: s(rev) }),
        ["-", file] => Ok(Endpoint::Tarball {
            name,
            file: s(file),
        }),
        // npm writes a scoped tarball path with the scope again (`/@s/n/-/@s/n-1.0.0.tgz`).
        ["-", scope, file] if scope.starts_with('@') => Ok(Endpoint::Tarball {
            name,
            file: s(file),
        }),
        ["-", file, "-rev", _] => Ok(Endpoint::TarballRev {
            name,
            file: s(file),
        }),
        [spec] => Ok(Endpoint::Version {
            name,
            spec: s(spec),
        }),
        other => Err(RouteError::NoSuchEndpoint(format!(
            "/{name}/{}",
            other.join("/")
        ))),
    }
}

/// The package name at the start of `segments` (one segment, or two for `@scope/name`) and
/// how many segments it took.
fn name_from(segments: &[&str]) -> Result<(String, usize), RouteError> {
    let Some(first) = segments.first() else {
        return Err(RouteError::BadName("no package name".into()));
    };
    let (name, used) = if first.starts_with('@') && !first.contains('/') {
        let Some(second) = segments.get(1) else {
            return Err(RouteError::BadName(format!(
                "{first} is a scope without a package name"
            )));
        };
        (format!("{first}/{second}"), 2)
    } else {
        ((*first).to_string(), 1)
    };
    check_name(&name).map_err(RouteError::BadName)?;
    Ok((name, used))
}

/// npm's rules for a package name (validate-npm-package-name, for new packages): at most 214
/// characters, lower case, URL-safe, not starting with `.` or `_`; optionally `@scope/`.
pub fn check_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid package name {name:?}: {why}"));
    if name.is_empty() || name.len() > 214 {
        return bad("it must be 1 to 214 characters");
    }
    let (scope, base) = match name.strip_prefix('@') {
        Some(scoped) => match scoped.split_once('/') {
            Some((scope, base)) => (Some(scope), base),
            None => return bad("a scoped name is @scope/name"),
        },
        None => (None, name),
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('_')
            && p.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_' | '~')
            })
    };
    if scope.is_some_and(|s| !part_ok(s)) || !part_ok(base) {
        return bad(
            "use lower-case letters, digits, '-', '.', '_' and '~', not starting with '.' or '_'",
        );
    }
    Ok(())
}

/// The name without its scope: what tarball file names start with.
pub fn base_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The file name npm gives a version's tarball.
pub fn tarball_name(name: &str, version: &str) -> String {
    format!("{}-{version}.tgz", base_name(name))
}

/// The version a tarball file name names, if it is one of `name`'s.
pub fn version_of_tarball<'a>(name: &str, file: &'a str) -> Option<&'a str> {
    let file = file.rsplit('/').next().unwrap_or(file);
    file.strip_prefix(base_name(name))?
        .strip_prefix('-')?
        .strip_suffix(".tgz")
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn endpoint(path: &str) -> Endpoint {
        parse(path).unwrap().1
    }

    #[test]
    fn scoped_names_in_every_spelling_name_the_same_package() {
        for path in [
            "/npm/js/@acme%2ftiny",
            "/npm/js/@acme%2Ftiny",
            "/npm/js/@acme/tiny",
        ] {
            assert_eq!(
                endpoint(path),
                Endpoint::Package {
                    name: "@acme/tiny".into()
                },
                "{path}"
            );
        }
        assert_eq!(
            endpoint("/npm/js/@acme/tiny/-/tiny-1.0.0.tgz"),
            Endpoint::Tarball {
                name: "@acme/tiny".into(),
                file: "tiny-1.0.0.tgz".into()
            }
        );
        assert_eq!(
            endpoint("/npm/js/@acme%2ftiny/-/@acme/tiny-1.0.0.tgz"),
            Endpoint::Tarball {
                name: "@acme/tiny".into(),
                file: "tiny-1.0.0.tgz".into()
            }
        );
    }

    #[test]
    fn registry_endpoints() {
        assert_eq!(endpoint("/npm/js/-/whoami"), Endpoint::Whoami);
        assert_eq!(
            endpoint("/npm/js/-/package/@acme%2ftiny/dist-tags/next"),
            Endpoint::DistTag {
                name: "@acme/tiny".into(),
                tag: "next".into()
            }
        );
        assert_eq!(
            endpoint("/npm/js/-/package/tiny/dist-tags"),
            Endpoint::DistTags {
                name: "tiny".into()
            }
        );
        assert_eq!(
            endpoint("/npm/js/tiny/-rev/3-abc"),
            Endpoint::PackageRev {
                name: "tiny".into(),
                rev: "3-abc".into()
            }
        );
        assert_eq!(
            endpoint("/npm/js/tiny/-/tiny-1.0.0.tgz/-rev/3-abc"),
            Endpoint::TarballRev {
                name: "tiny".into(),
                file: "tiny-1.0.0.tgz".into()
            }
        );
        assert!(matches!(
            endpoint("/npm/js/-/npm/v1/security/advisories/bulk"),
            Endpoint::Unsupported { .. }
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "/npm/js/Tiny",
            "/npm/js/.hidden",
            "/npm/js/@acme",
            "/npm/js/a%20b",
        ] {
            assert!(matches!(parse(bad), Err(RouteError::BadName(_))), "{bad}");
        }
        assert!(matches!(parse("/npm/Bad/x"), Err(RouteError::BadRepo(_))));
    }

    #[test]
    fn tarball_names() {
        assert_eq!(tarball_name("@acme/tiny", "1.0.0"), "tiny-1.0.0.tgz");
        assert_eq!(
            version_of_tarball("@acme/tiny", "tiny-1.0.0-rc.1.tgz"),
            Some("1.0.0-rc.1")
        );
        assert_eq!(version_of_tarball("tiny", "other-1.0.0.tgz"), None);
    }
}
