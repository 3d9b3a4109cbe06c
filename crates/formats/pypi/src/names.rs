//! Names, versions and filenames: PEP 503 project-name normalisation, PEP 440 version parsing
//! (normal form and ordering), and the distribution filenames twine uploads (wheels: PEP 427 /
//! binary distribution format; sdists: `{name}-{version}.tar.gz`). Pure functions, no I/O.

use std::cmp::Ordering;
use std::fmt;

/// Longest project name or version accepted (the package layer's keys allow 256 bytes).
const MAX_LEN: usize = 200;
/// Longest filename accepted.
const MAX_FILENAME: usize = 255;

/// PEP 503 normal form: lowercase, every run of `-`, `_` and `.` becomes one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

/// Whether `name` is a valid project name (PEP 508: ASCII letters and digits, with `.`, `_`
/// and `-` inside only).
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    !name.is_empty()
        && name.len() <= MAX_LEN
        && edge(bytes.first())
        && edge(bytes.last())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A pre-release kind, in PEP 440 order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pre {
    Alpha,
    Beta,
    Rc,
}

/// One part of a local version label: numbers sort after strings (PEP 440).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LocalPart {
    Text(String),
    Number(u64),
}

/// A parsed PEP 440 version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub epoch: u64,
    pub release: Vec<u64>,
    pub pre: Option<(Pre, u64)>,
    pub post: Option<u64>,
    pub dev: Option<u64>,
    pub local: Vec<LocalPart>,
}

/// Why a version string is not PEP 440.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid PEP 440 version")]
pub struct BadVersion(pub String);

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn number(&mut self) -> Option<u64> {
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        (self.i > start).then_some(n)
    }

    fn separator(&mut self) -> bool {
        if matches!(self.peek(), Some(b'-' | b'_' | b'.')) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Consumes the longest of `words` found here.
    fn word(&mut self, words: &[&str]) -> Option<usize> {
        let rest = self.s.get(self.i..)?;
        let (index, len) = words
            .iter()
            .enumerate()
            .filter(|(_, w)| rest.starts_with(w.as_bytes()))
            .map(|(index, w)| (index, w.len()))
            .max_by_key(|(_, len)| *len)?;
        self.i += len;
        Some(index)
    }

    /// Runs `f` and rewinds when it returns `None`.
    fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let at = self.i;
        let r = f(self);
        if r.is_none() {
            self.i = at;
        }
        r
    }
}

impl Version {
    /// Parses a version as PEP 440 allows it to be spelled (case, separators, `v` prefix,
    /// surrounding whitespace).
    pub fn parse(text: &str) -> Result<Version, BadVersion> {
        let bad = || BadVersion(text.to_string());
        let lower = text.trim().to_ascii_lowercase();
        if lower.len() > MAX_LEN {
            return Err(bad());
        }
        let mut c = Cursor {
            s: lower.as_bytes(),
            i: 0,
        };
        if c.peek() == Some(b'v') {
            c.i += 1;
        }
        let first = c.number().ok_or_else(bad)?;
        let (epoch, mut release) = if c.peek() == Some(b'!') {
            c.i += 1;
            (first, vec![c.number().ok_or_else(bad)?])
        } else {
            (0, vec![first])
        };
        while let Some(n) = c.attempt(|c| {
            (c.peek() == Some(b'.')).then_some(())?;
            c.i += 1;
            c.number()
        }) {
            release.push(n);
        }
        let pre = c.attempt(|c| {
            c.separator();
            let kind = match c.word(&["a", "b", "c", "rc", "alpha", "beta", "pre", "preview"])? {
                0 | 4 => Pre::Alpha,
                1 | 5 => Pre::Beta,
                _ => Pre::Rc,
            };
            let n = c.attempt(|c| {
                c.separator();
                c.number()
            });
            Some((kind, n.unwrap_or(0)))
        });
        let post = c
            .attempt(|c| {
                (c.peek() == Some(b'-')).then_some(())?;
                c.i += 1;
                c.number()
            })
            .or_else(|| {
                c.attempt(|c| {
                    c.separator();
                    c.word(&["post", "rev", "r"])?;
                    let n = c.attempt(|c| {
                        c.separator();
                        c.number()
                    });
                    Some(n.unwrap_or(0))
                })
            });
        let dev = c.attempt(|c| {
            c.separator();
            c.word(&["dev"])?;
            let n = c.attempt(|c| {
                c.separator();
                c.number()
            });
            Some(n.unwrap_or(0))
        });
        let mut local = Vec::new();
        if c.peek() == Some(b'+') {
            let label = lower.get(c.i + 1..).ok_or_else(bad)?;
            for part in label.split(['.', '-', '_']) {
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(bad());
                }
                local.push(match part.parse::<u64>() {
                    Ok(n) if part.bytes().all(|b| b.is_ascii_digit()) => LocalPart::Number(n),
                    _ => LocalPart::Text(part.to_string()),
                });
            }
            c.i = lower.len();
        }
        if c.i != lower.len() {
            return Err(bad());
        }
        Ok(Version {
            epoch,
            release,
            pre,
            post,
            dev,
            local,
        })
    }

    /// The release's key: the normal form without trailing zeros in the release segment
    /// (`1.0`, `1.0.0` and `1` are one release to pip, so they are one release here).
    pub fn release_key(&self) -> String {
        let mut key = self.clone();
        while key.release.len() > 1 && key.release.last() == Some(&0) {
            key.release.pop();
        }
        key.to_string()
    }

    /// The sort key of PEP 440 (packaging's `_cmpkey`): trailing zeros of the release do not
    /// count; a dev release without pre or post sorts before every pre-release.
    fn key(&self) -> impl Ord + '_ {
        let mut release: &[u64] = &self.release;
        while let [rest @ .., 0] = release {
            release = rest;
        }
        // (rank, kind, number): rank 0 = before all pre-releases, 1 = a pre-release, 2 = final.
        let pre = match (self.pre, self.post, self.dev) {
            (None, None, Some(_)) => (0, None),
            (Some(p), _, _) => (1, Some(p)),
            (None, _, _) => (2, None),
        };
        let post = self.post.map_or((0, 0), |n| (1, n));
        let dev = self.dev.map_or((1, 0), |n| (0, n));
        (self.epoch, release, pre, post, dev, &self.local)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The normal form (PEP 440 "Normalization"): the version's key in the package layer.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch != 0 {
            write!(f, "{}!", self.epoch)?;
        }
        let release: Vec<String> = self.release.iter().map(u64::to_string).collect();
        f.write_str(&release.join("."))?;
        if let Some((kind, n)) = self.pre {
            let kind = match kind {
                Pre::Alpha => "a",
                Pre::Beta => "b",
                Pre::Rc => "rc",
            };
            write!(f, "{kind}{n}")?;
        }
        if let Some(n) = self.post {
            write!(f, ".post{n}")?;
        }
        if let Some(n) = self.dev {
            write!(f, ".dev{n}")?;
        }
        if !self.local.is_empty() {
            let parts: Vec<String> = self
                .local
                .iter()
                .map(|p| match p {
                    LocalPart::Text(t) => t.clone(),
                    LocalPart::Number(n) => n.to_string(),
                })
                .collect();
            write!(f, "+{}", parts.join("."))?;
        }
        Ok(())
    }
}

/// The kind of a distribution file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistKind {
    /// `.whl`
    Wheel,
    /// `.tar.gz`
    Sdist,
}

impl DistKind {
    /// The `filetype` form field twine sends for it.
    pub fn filetype(self) -> &'static str {
        match self {
            DistKind::Wheel => "bdist_wheel",
            DistKind::Sdist => "sdist",
        }
    }
}

/// A distribution filename, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistFilename {
    /// The project name as the filename spells it.
    pub name: String,
    /// The version as the filename spells it.
    pub version: String,
    pub kind: DistKind,
}

/// Why a filename was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFilename {
    #[error(
        "invalid filename {0:?}: a filename is one path segment (no /, \\, .. or control characters) of at most 255 bytes"
    )]
    Unsafe(String),
    #[error("invalid distribution file extension on {0:?}: only .whl and .tar.gz are accepted")]
    Extension(String),
    #[error("invalid filename {0:?}: expected {1}")]
    Shape(String, &'static str),
}

/// Parses a distribution filename after checking that it is one safe path segment.
pub fn parse_filename(filename: &str) -> Result<DistFilename, BadFilename> {
    let unsafe_name = filename.is_empty()
        || filename.len() > MAX_FILENAME
        || filename.starts_with('.')
        || filename.contains("..")
        || filename
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | '"' | '<' | '>' | '&' | '\''));
    if unsafe_name {
        return Err(BadFilename::Unsafe(filename.to_string()));
    }
    if let Some(stem) = filename.strip_suffix(".whl") {
        let parts: Vec<&str> = stem.split('-').collect();
        // Tags (and a build tag) in their normal form: lower-case letters, digits, `_` and `.`.
        let tag_ok = |t: &&str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.'))
        };
        let (name, version) = match parts.as_slice() {
            [name, version, tags @ ..]
                if matches!(tags.len(), 3 | 4) && tags.iter().all(tag_ok) =>
            {
                (*name, *version)
            }
            _ => {
                return Err(BadFilename::Shape(
                    filename.to_string(),
                    "{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl",
                ));
            }
        };
        return Ok(DistFilename {
            name: name.to_string(),
            version: version.to_string(),
            kind: DistKind::Wheel,
        });
    }
    if let Some(stem) = filename.strip_suffix(".tar.gz") {
        let (name, version) = stem
            .rsplit_once('-')
            .ok_or_else(|| BadFilename::Shape(filename.to_string(), "{name}-{version}.tar.gz"))?;
        return Ok(DistFilename {
            name: name.to_string(),
            version: version.to_string(),
            kind: DistKind::Sdist,
        });
    }
    Err(BadFilename::Extension(filename.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn norm(v: &str) -> String {
        Version::parse(v).unwrap().to_string()
    }

    #[test]
    fn a_release_has_one_key_whatever_its_trailing_zeros() {
        let key = |v: &str| Version::parse(v).unwrap().release_key();
        assert_eq!(key("1.0"), "1");
        assert_eq!(key("1.0.0"), "1");
        assert_eq!(key("1"), "1");
        assert_eq!(key("1.0.1"), "1.0.1");
        assert_eq!(key("2.0.0rc1"), "2rc1");
        assert_ne!(key("1.0.post1"), key("1.0"));
    }

    #[test]
    fn wheel_tags_must_be_in_their_normal_form() {
        for bad in [
            "tiny-1.0-py3-none-ANY.whl",
            "tiny-1.0---.whl",
            "tiny-1.0-py3-none-any#x.whl",
            "tiny-1.0-py3-none-any%41.whl",
            "tiny-1.0-py3 -none-any.whl",
        ] {
            assert!(parse_filename(bad).is_err(), "{bad}");
        }
        assert!(parse_filename("tiny-1.0-1b-py3-none-manylinux_2_17_x86_64.whl").is_ok());
    }

    #[test]
    fn names_normalize_as_pep_503_says() {
        assert_eq!(normalize_name("Friendly-Bard"), "friendly-bard");
        assert_eq!(normalize_name("FRIENDLY-BARD"), "friendly-bard");
        assert_eq!(normalize_name("friendly.bard"), "friendly-bard");
        assert_eq!(normalize_name("friendly_bard"), "friendly-bard");
        assert_eq!(normalize_name("friendly--bard"), "friendly-bard");
        assert_eq!(normalize_name("FrIeNdLy-._.-bArD"), "friendly-bard");
        assert!(valid_name("tiny_pkg"));
        assert!(valid_name("A.b-c_9"));
        assert!(!valid_name("-tiny"));
        assert!(!valid_name("tiny-"));
        assert!(!valid_name("ti ny"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
    }

    #[test]
    fn versions_normalize_as_pep_440_says() {
        assert_eq!(norm("1.0"), "1.0");
        assert_eq!(norm("v1.0"), "1.0");
        assert_eq!(norm(" 1.0 "), "1.0");
        assert_eq!(norm("01.002"), "1.2");
        assert_eq!(norm("1.0.0-ALPHA.1"), "1.0.0a1");
        assert_eq!(norm("1.0a"), "1.0a0");
        assert_eq!(norm("1.0-beta2"), "1.0b2");
        assert_eq!(norm("1.0c1"), "1.0rc1");
        assert_eq!(norm("1.0.preview_3"), "1.0rc3");
        assert_eq!(norm("1.0-1"), "1.0.post1");
        assert_eq!(norm("1.0-rev4"), "1.0.post4");
        assert_eq!(norm("1.0.post"), "1.0.post0");
        assert_eq!(norm("1.0dev"), "1.0.dev0");
        assert_eq!(norm("1.0-dev-2"), "1.0.dev2");
        assert_eq!(
            norm("2!1.0rc1.post2.dev3+Ubuntu-1_b"),
            "2!1.0rc1.post2.dev3+ubuntu.1.b"
        );
        for bad in [
            "", "1.", "a1", "1.0+", "1.0+a..b", "1..0", "1.0-", "1.0 2", "1.0/x",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Version::parse("99999999999999999999999").is_err());
    }

    #[test]
    fn versions_order_as_pep_440_says() {
        let ordered = [
            "1.0.dev0",
            "1.0a1.dev1",
            "1.0a1",
            "1.0a2",
            "1.0b1",
            "1.0rc1",
            "1.0",
            "1.0+local",
            "1.0.post1.dev0",
            "1.0.post1",
            "1.1",
            "2!0.1",
        ];
        for pair in ordered.windows(2) {
            let (a, b) = (
                Version::parse(pair[0]).unwrap(),
                Version::parse(pair[1]).unwrap(),
            );
            assert!(a < b, "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(
            Version::parse("1.0")
                .unwrap()
                .cmp(&Version::parse("1.0.0").unwrap()),
            Ordering::Equal
        );
    }

    #[test]
    fn filenames_parse_and_unsafe_ones_are_refused() {
        let wheel = parse_filename("tiny_pkg-0.1.0-py3-none-any.whl").unwrap();
        assert_eq!(
            (wheel.name.as_str(), wheel.version.as_str()),
            ("tiny_pkg", "0.1.0")
        );
        assert_eq!(wheel.kind, DistKind::Wheel);
        let built = parse_filename("tiny_pkg-0.1.0-1-cp311-cp311-linux_x86_64.whl").unwrap();
        assert_eq!(built.version, "0.1.0");
        let sdist = parse_filename("Tiny-Pkg-0.1.0.tar.gz").unwrap();
        assert_eq!(
            (sdist.name.as_str(), sdist.version.as_str()),
            ("Tiny-Pkg", "0.1.0")
        );
        assert_eq!(sdist.kind, DistKind::Sdist);
        for bad in [
            "../tiny-0.1.0.tar.gz",
            "a/tiny-0.1.0.tar.gz",
            "a\\tiny-0.1.0.tar.gz",
            ".tiny-0.1.0.tar.gz",
            "tiny-0.1.0.tar.gz\n",
            "",
        ] {
            assert!(
                matches!(parse_filename(bad), Err(BadFilename::Unsafe(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_filename("tiny-0.1.0.zip"),
            Err(BadFilename::Extension(_))
        ));
        assert!(matches!(
            parse_filename("tiny-0.1.0.whl"),
            Err(BadFilename::Shape(..))
        ));
        assert!(matches!(
            parse_filename("tiny.tar.gz"),
            Err(BadFilename::Shape(..))
        ));
    }
}
