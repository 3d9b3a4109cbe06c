//! Validated names: Wharf repositories, OCI image names and tags.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused; the message tells the client what a valid name looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "repository name {0:?} is invalid: use 1-64 lowercase letters, digits and . _ - (starting with a letter or digit)"
    )]
    Repo(String),
    #[error(
        "image name {0:?} is invalid: path components are lowercase letters and digits separated by . _ __ or -, joined by /, at most 255 characters"
    )]
    Image(String),
    #[error(
        "image name {0:?} has one path segment; Wharf names are <repository>/<image>, e.g. {0}/app"
    )]
    ImageWithoutRepository(String),
    #[error(
        "tag {0:?} is invalid: use 1-128 characters from [A-Za-z0-9_.-], not starting with . or -"
    )]
    Tag(String),
}

/// Maximum length of a full OCI name (repository + image path).
pub const MAX_IMAGE_NAME_LEN: usize = 255;
const MAX_REPO_LEN: usize = 64;

/// A Wharf repository: the unit of format, immutability, consistency and access.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

impl RepoName {
    /// Validates `s` as a repository name.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if is_path_component(s) && s.len() <= MAX_REPO_LEN {
            Ok(RepoName(s.to_string()))
        } else {
            Err(NameError::Repo(s.to_string()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A full OCI name `<repo>/<image...>`; its first segment is the Wharf repository.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

impl ImageName {
    /// Validates `s` against the OCI name grammar and Wharf's `<repo>/<image>` rule.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.len() > MAX_IMAGE_NAME_LEN || s.is_empty() || !s.split('/').all(is_path_component) {
            return Err(NameError::Image(s.to_string()));
        }
        let Some((repo, _)) = s.split_once('/') else {
            return Err(NameError::ImageWithoutRepository(s.to_string()));
        };
        RepoName::new(repo)?;
        Ok(ImageName(s.to_string()))
    }

    /// The Wharf repository this image lives in.
    pub fn repo(&self) -> RepoName {
        let repo = self.0.split('/').next().unwrap_or_default();
        RepoName(repo.to_string())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An OCI tag.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    /// Validates `s` as `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    pub fn new(s: &str) -> Result<Self, NameError> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if first_ok && rest_ok && s.len() <= 128 {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::Tag(s.to_string()))
        }
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let dashes = sep.bytes().all(|b| b == b'-');
        if !(sep == "." || sep == "_" || sep == "__" || dashes) {
            return false;
        }
    }
    true
}

macro_rules! string_newtype {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $t::new(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}
string_newtype!(RepoName);
string_newtype!(ImageName);
string_newtype!(Tag);

/// The package formats a repository can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Oci,
    Generic,
    /// npm packages (since cluster version 5, like the two below).
    Npm,
    /// Python packages (PEP 503/691 simple index, legacy upload API).
    Pypi,
    /// Rust crates (sparse index and the registry web API).
    Cargo,
}

impl Format {
    /// npm, PyPI and Cargo: repositories of named packages with immutable versions.
    pub fn is_package(self) -> bool {
        matches!(self, Format::Npm | Format::Pypi | Format::Cargo)
    }

    /// The lowercase name used in URLs, config and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Oci => "oci",
            Format::Generic => "generic",
            Format::Npm => "npm",
            Format::Pypi => "pypi",
            Format::Cargo => "cargo",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "oci" => Ok(Format::Oci),
            "generic" => Ok(Format::Generic),
            "npm" => Ok(Format::Npm),
            "pypi" => Ok(Format::Pypi),
            "cargo" => Ok(Format::Cargo),
            other => Err(format!(
                "unknown format {other:?}; known: oci, generic, npm, pypi, cargo"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        for ok in ["a/b", "test/tiny", "my-repo/a.b/c__d", "r/x--y"] {
            assert!(ImageName::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            ImageName::new("lib/app").expect("valid").repo().as_str(),
            "lib"
        );
        assert!(matches!(
            ImageName::new("solo"),
            Err(NameError::ImageWithoutRepository(_))
        ));
        for bad in [
            "", "A/b", "a/../b", "a//b", "a/b/", "/a", "a/.b", "a/b-", "a/b___c",
        ] {
            assert!(ImageName::new(bad).is_err(), "{bad}");
        }
        assert!(ImageName::new(&format!("a/{}", "b".repeat(300))).is_err());
    }

    #[test]
    fn tags() {
        assert!(Tag::new("v1.0_rc-1").is_ok());
        assert!(Tag::new("_x").is_ok());
        for bad in ["", ".x", "-x", "a/b", &"x".repeat(129)] {
            assert!(Tag::new(bad).is_err(), "{bad}");
        }
    }
}
