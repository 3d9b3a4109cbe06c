//! Crate names and versions: validation, the canonical keys the package records are stored
//! under, and the sparse index's file path for a name.
//!
//! A crate is keyed by its name lower-cased with `_` replaced by `-` (Cargo treats `Foo_bar` and
//! `foo-bar` as the same crate); the spelling first published is kept for display and the
//! index (`exact_name`). A version is keyed by its semver without build metadata: `1.0.0+a` and
//! `1.0.0+b` are the same version.

/// Longest crate name accepted (the limit Cargo's own registry applies).
pub const MAX_NAME_LEN: usize = 64;

/// Why a crate name is refused, if it is.
pub fn invalid_name(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Some("the crate name is empty".into());
    };
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "crate name {name:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    if !first.is_ascii_alphabetic() {
        return Some(format!(
            "crate name {name:?} must start with an ASCII letter"
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some(format!(
            "crate name {name:?} may only contain ASCII letters, digits, - and _"
        ));
    }
    None
}

/// The key a crate is stored under: lower-cased, `_` → `-`.
pub fn crate_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// A parsed version and the key it is stored under (the version without build metadata).
pub fn version_key(version: &str) -> Result<(semver::Version, String), String> {
    let parsed = semver::Version::parse(version)
        .map_err(|e| format!("version {version:?} is not a semantic version: {e}"))?;
    let mut key = parsed.clone();
    key.build = semver::BuildMetadata::EMPTY;
    Ok((parsed, key.to_string()))
}

/// The sparse index path of a crate (lower-cased): `1/a`, `2/ab`, `3/a/abc`, `ab/cd/abcd…`.
pub fn index_path(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.len() {
        0 => String::new(),
        1 => format!("1/{lower}"),
        2 => format!("2/{lower}"),
        3 => format!("3/{}/{lower}", &lower[..1]),
        _ => format!("{}/{}/{lower}", &lower[..2], &lower[2..4]),
    }
}

/// The crate name an index path names, if the path is exactly where that name's file lives.
pub fn name_of_index_path(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    if invalid_name(name).is_some() || index_path(name) != path.to_ascii_lowercase() {
        return None;
    }
    Some(name)
}

/// The file name a version's `.crate` is stored under.
pub fn crate_filename(name: &str, version: &str) -> String {
    format!("{name}-{version}.crate")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_keys_and_paths() {
        assert_eq!(crate_key("Foo_Bar"), "foo-bar");
        assert_eq!(crate_key("foo-bar"), "foo-bar");
        assert!(invalid_name("foo_bar-9").is_none());
        assert!(invalid_name("9foo").is_some());
        assert!(invalid_name("").is_some());
        assert!(invalid_name("a/b").is_some());
        assert!(invalid_name("ä").is_some());
        assert!(invalid_name(&"a".repeat(65)).is_some());
        assert_eq!(index_path("a"), "1/a");
        assert_eq!(index_path("ab"), "2/ab");
        assert_eq!(index_path("abc"), "3/a/abc");
        assert_eq!(index_path("Serde_Json"), "se/rd/serde_json");
        assert_eq!(name_of_index_path("3/a/abc"), Some("abc"));
        assert_eq!(name_of_index_path("se/rd/serde_json"), Some("serde_json"));
        assert_eq!(name_of_index_path("se/rd/Serde_json"), Some("Serde_json"));
        assert_eq!(name_of_index_path("xx/rd/serde_json"), None);
        assert_eq!(name_of_index_path("3/b/abc"), None);
        assert_eq!(name_of_index_path("2/abc"), None);
        assert_eq!(name_of_index_path("../../x"), None);
    }

    #[test]
    fn versions_are_keyed_without_build_metadata() {
        assert_eq!(version_key("1.0.0+a").unwrap().1, "1.0.0");
        assert_eq!(version_key("1.0.0-rc.1+b").unwrap().1, "1.0.0-rc.1");
        assert!(version_key("1.0").is_err());
        assert!(version_key("v1.0.0").is_err());
    }
}
