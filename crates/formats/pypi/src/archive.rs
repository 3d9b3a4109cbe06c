//! Reads an uploaded distribution file all the way through (blocking: run it on a blocking
//! thread): a wheel's every zip entry is inflated and CRC-checked, an sdist's gzip stream and tar
//! entries are read to the end; along the way the core metadata file is taken out
//! (`<name>-<version>.dist-info/METADATA` in a wheel, `<name>-<version>/PKG-INFO` in an sdist).
//! A corrupt archive is refused before anything is bound.

use std::io::{self, Read, Seek};

use crate::names::{DistKind, normalize_name};

/// A core metadata file larger than this is refused.
pub const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;
/// The uncompressed bytes of one archive may not exceed this (a zip bomb costs CPU only, since
/// nothing is kept, but it should not cost much of it).
pub const MAX_UNPACKED_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadArchive {
    #[error("the wheel is not a valid zip file: {0}")]
    Zip(String),
    #[error("the sdist is not a valid .tar.gz file: {0}")]
    TarGz(String),
    #[error("{0} has no core metadata ({1})")]
    NoMetadata(&'static str, &'static str),
    #[error("the core metadata file is larger than {MAX_METADATA_BYTES} bytes")]
    MetadataTooLarge,
    #[error("the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")]
    TooLarge,
}

/// Reads the whole archive and returns the bytes of its core metadata file. `project` is the
/// project name the upload claims (its `.dist-info` directory must carry that name).
pub fn core_metadata<R: Read + Seek>(
    reader: R,
    kind: DistKind,
    project: &str,
) -> Result<Vec<u8>, BadArchive> {
    match kind {
        DistKind::Wheel => wheel_metadata(reader, project),
        DistKind::Sdist => sdist_metadata(reader),
    }
}

fn wheel_metadata<R: Read + Seek>(reader: R, project: &str) -> Result<Vec<u8>, BadArchive> {
    let zip_err = |e: zip::result::ZipError| BadArchive::Zip(e.to_string());
    let mut archive = zip::ZipArchive::new(reader).map_err(zip_err)?;
    let wanted = normalize_name(project);
    let mut metadata = None;
    let mut unpacked = 0u64;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(zip_err)?;
        let name = entry.name().map_err(zip_err)?.into_owned();
        let is_metadata = name
            .strip_suffix(".dist-info/METADATA")
            .filter(|dir| !dir.contains('/'))
            .and_then(|dir| dir.split_once('-'))
            .is_some_and(|(dist, _)| normalize_name(dist) == wanted);
        if is_metadata && metadata.is_none() {
            let bytes = read_capped(&mut entry, MAX_METADATA_BYTES)
                .map_err(|e| BadArchive::Zip(format!("{name}: {e}")))?
                .ok_or(BadArchive::MetadataTooLarge)?;
            unpacked += bytes.len() as u64;
            metadata = Some(bytes);
        } else {
            // Reading to the end checks the entry's CRC-32.
            unpacked += drain_within(&mut entry, unpacked)
                .map_err(|e| BadArchive::Zip(format!("{name}: {e}")))?;
        }
        if unpacked > MAX_UNPACKED_BYTES {
            return Err(BadArchive::TooLarge);
        }
    }
    metadata.ok_or(BadArchive::NoMetadata(
        "the wheel",
        "no <name>-<version>.dist-info/METADATA for this project",
    ))
}

fn sdist_metadata<R: Read>(reader: R) -> Result<Vec<u8>, BadArchive> {
    let tar_err = |e: io::Error| BadArchive::TarGz(e.to_string());
    let gz = flate2::read::GzDecoder::new(io::BufReader::with_capacity(1 << 20, reader));
    let mut archive = tar::Archive::new(gz);
    let mut metadata = None;
    let mut unpacked = 0u64;
    let mut entries = 0usize;
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        entries += 1;
        let path = entry.path().map_err(tar_err)?.into_owned();
        let parts: Vec<_> = path.components().collect();
        let is_pkg_info = parts.len() == 2
            && matches!(parts.first(), Some(std::path::Component::Normal(_)))
            && parts.get(1).is_some_and(|p| p.as_os_str() == "PKG-INFO");
        if is_pkg_info && metadata.is_none() {
            let bytes = read_capped(&mut entry, MAX_METADATA_BYTES)
                .map_err(tar_err)?
                .ok_or(BadArchive::MetadataTooLarge)?;
            unpacked += bytes.len() as u64;
            metadata = Some(bytes);
        } else {
            unpacked += drain_within(&mut entry, unpacked).map_err(tar_err)?;
        }
        if unpacked > MAX_UNPACKED_BYTES {
            return Err(BadArchive::TooLarge);
        }
    }
    if entries == 0 {
        return Err(BadArchive::TarGz("the archive has no entries".into()));
    }
    // The rest of the gzip stream: reading it to the end checks its CRC and length.
    unpacked += drain_within(&mut archive.into_inner(), unpacked).map_err(tar_err)?;
    if unpacked > MAX_UNPACKED_BYTES {
        return Err(BadArchive::TooLarge);
    }
    metadata.ok_or(BadArchive::NoMetadata(
        "the sdist",
        "no <name>-<version>/PKG-INFO",
    ))
}

/// Reads `r` to its end, but never more than one byte past what [`MAX_UNPACKED_BYTES`] leaves
/// after `so_far`: an entry whose declared size lies inflates no further than the limit.
fn drain_within(r: &mut impl Read, so_far: u64) -> io::Result<u64> {
    let left = MAX_UNPACKED_BYTES.saturating_sub(so_far);
    io::copy(&mut r.take(left + 1), &mut io::sink())
}

/// Reads all of `r`, or `None` past `cap` bytes.
fn read_capped(r: &mut impl Read, cap: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    r.take(cap + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= cap).then_some(buf))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    pub(crate) const METADATA: &[u8] =
        b"Metadata-Version: 2.4\nName: tiny_pkg\nVersion: 0.1.0\nRequires-Python: >=3.8\n";

    pub(crate) fn wheel(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in files {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    pub(crate) fn sdist(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_wheel_gives_its_metadata_and_a_corrupt_one_is_refused() {
        let good = wheel(&[
            ("tiny_pkg/__init__.py", b"x = 1\n".repeat(1000).as_slice()),
            ("tiny_pkg-0.1.0.dist-info/METADATA", METADATA),
            ("tiny_pkg-0.1.0.dist-info/RECORD", b""),
        ]);
        let got = core_metadata(Cursor::new(&good), DistKind::Wheel, "Tiny.Pkg").unwrap();
        assert_eq!(got, METADATA);
        // Another project's metadata does not count.
        assert!(matches!(
            core_metadata(Cursor::new(&good), DistKind::Wheel, "other"),
            Err(BadArchive::NoMetadata(..))
        ));
        // A flipped byte inside the deflated data fails the entry's CRC (or its inflation).
        let mut bad = good.clone();
        bad[60] ^= 0xff;
        assert!(core_metadata(Cursor::new(&bad), DistKind::Wheel, "tiny_pkg").is_err());
        // Not a zip at all; truncated.
        assert!(matches!(
            core_metadata(Cursor::new(b"not a zip"), DistKind::Wheel, "tiny_pkg"),
            Err(BadArchive::Zip(_))
        ));
        let cut = &good[..good.len() - 10];
        assert!(core_metadata(Cursor::new(cut), DistKind::Wheel, "tiny_pkg").is_err());
    }

    #[test]
    fn an_sdist_gives_its_pkg_info_and_a_corrupt_one_is_refused() {
        let good = sdist(&[
            ("tiny_pkg-0.1.0/PKG-INFO", METADATA),
            (
                "tiny_pkg-0.1.0/tiny_pkg.egg-info/PKG-INFO",
                b"Name: wrong\n",
            ),
            ("tiny_pkg-0.1.0/setup.py", b"pass\n".repeat(500).as_slice()),
        ]);
        let got = core_metadata(Cursor::new(&good), DistKind::Sdist, "tiny_pkg").unwrap();
        assert_eq!(got, METADATA);
        let mut bad = good.clone();
        let at = bad.len() - 6;
        bad[at] ^= 0xff; // inside the gzip trailer's CRC
        assert!(matches!(
            core_metadata(Cursor::new(&bad), DistKind::Sdist, "tiny_pkg"),
            Err(BadArchive::TarGz(_))
        ));
        let cut = &good[..good.len() / 2];
        assert!(core_metadata(Cursor::new(cut), DistKind::Sdist, "tiny_pkg").is_err());
        let none = sdist(&[("tiny_pkg-0.1.0/setup.py", b"pass\n")]);
        assert!(matches!(
            core_metadata(Cursor::new(&none), DistKind::Sdist, "tiny_pkg"),
            Err(BadArchive::NoMetadata(..))
        ));
    }
}
