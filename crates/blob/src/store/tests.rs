#![allow(clippy::unwrap_used)]

use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256, Sha512};
use wharf_types::{Digest, DigestAlgorithm, ErrorCode};

use super::FsBlobStore;
use crate::{BlobError, CHUNK_SIZE, CorruptBlob};

const MIB: usize = 1024 * 1024;

/// Deterministic bytes that differ from chunk to chunk.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> Digest {
    Digest::from_sha256_bytes(&Sha256::digest(bytes).into())
}

fn sha512(bytes: &[u8]) -> Digest {
    Digest::from_sha512_bytes(&Sha512::digest(bytes).into())
}

/// Where the store keeps blob `d` under `root`, as the crate docs draw it.
fn blob_file(root: &Path, d: &Digest) -> std::path::PathBuf {
    let hex = d.hex();
    root.join("blobs")
        .join(d.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

/// `bytes` as a request body arriving in pieces of `piece` bytes.
fn body(
    bytes: &[u8],
    piece: usize,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Unpin + Send + use<> {
    let pieces: Vec<_> = bytes
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(pieces)
}

async fn read_all(store: &FsBlobStore, digest: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut reader = store.read(digest, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(piece) = reader.stream.next().await {
        out.extend_from_slice(&piece.unwrap());
    }
    assert_eq!(out.len() as u64, reader.len);
    out
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn open(dir: &Path) -> FsBlobStore {
    FsBlobStore::open(dir, 7).unwrap()
}

#[tokio::test]
async fn ingest_then_read_round_trips_and_lays_files_out_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(5 * MIB + 3, 1);
    let info = store.ingest(body(&bytes, 100_000), None).await.unwrap();

    assert_eq!(info.digest, sha(&bytes));
    assert_eq!(info.size, bytes.len() as u64);
    let mut roots = Sha256::new();
    roots.update(Sha256::digest(&bytes[..4 * MIB]));
    roots.update(Sha256::digest(&bytes[4 * MIB..]));
    assert_eq!(
        info.chunk_root,
        Digest::from_sha256_bytes(&roots.finalize().into())
    );

    let hex = info.digest.hex();
    let blob = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    assert_eq!(std::fs::read(&blob).unwrap(), bytes);
    assert!(blob.with_extension("chunks").is_file());
    assert!(files_under(&dir.path().join("uploads")).is_empty());

    assert_eq!(
        store.stat(&info.digest).await.unwrap(),
        Some(bytes.len() as u64)
    );
    assert_eq!(read_all(&store, &info.digest, None).await, bytes);
    assert_eq!(store.info(&info.digest).await.unwrap(), Some(info.clone()));
    assert_eq!(store.verify(&info.digest).await.unwrap(), info);

    // Same bytes again: content-addressed, so the same answer and still readable.
    let again = store
        .ingest(body(&bytes, MIB), Some(&info.digest))
        .await
        .unwrap();
    assert_eq!(again, info);
    assert_eq!(read_all(&store, &info.digest, None).await, bytes);
}

#[tokio::test]
async fn appends_across_chunk_boundaries_match_a_one_shot_ingest() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (chunked, whole) = (open(a.path()), open(b.path()));
    let bytes = data(9 * MIB, 2);

    let id = chunked.create_upload().await.unwrap();
    for (i, part) in bytes.chunks(3 * MIB).enumerate() {
        let start = (i * 3 * MIB) as u64;
        let size = chunked
            .append(&id, Some(start), body(part, 64 * 1024))
            .await
            .unwrap();
        assert_eq!(size, start + part.len() as u64);
        assert_eq!(chunked.upload_size(&id).await.unwrap(), size);
    }
    let expected = sha(&bytes);
    let info = chunked
        .commit(&id, &expected, Some(bytes.len() as u64))
        .await
        .unwrap();
    let one_shot = whole.ingest(body(&bytes, 9 * MIB), None).await.unwrap();

    assert_eq!(info, one_shot);
    assert_eq!(info.digest, expected);
    let sidecar = |root: &Path| {
        let hex = expected.hex();
        std::fs::read(
            root.join("blobs/sha256")
                .join(&hex[..2])
                .join(format!("{hex}.chunks")),
        )
        .unwrap()
    };
    assert_eq!(sidecar(a.path()), sidecar(b.path()));
    assert!(matches!(
        chunked.upload_size(&id).await,
        Err(BlobError::UnknownSession)
    ));
}

#[tokio::test]
async fn append_at_the_wrong_offset_is_a_range_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store.create_upload().await.unwrap();
    assert_eq!(
        store
            .append(&id, None, body(b"0123456789", 4))
            .await
            .unwrap(),
        10
    );

    for wrong in [0, 5, 11] {
        let err = store
            .append(&id, Some(wrong), body(b"x", 1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BlobError::RangeMismatch { expected: 10 }),
            "{err:?}"
        );
        assert_eq!(err.code(), ErrorCode::BlobUploadInvalid);
    }
    assert_eq!(
        store.append(&id, Some(10), body(b"ab", 1)).await.unwrap(),
        12
    );
    let info = store
        .commit(&id, &sha(b"0123456789ab"), None)
        .await
        .unwrap();
    assert_eq!(info.size, 12);
}

/// A wrong digest, or a right digest with a wrong size, leaves no file behind: for each
/// algorithm a digest can name (sha512 is checked with an extra pass at commit).
#[tokio::test]
async fn digest_or_size_mismatch_leaves_nothing_behind() {
    for (hash, seed) in [(sha as fn(&[u8]) -> Digest, 3u64), (sha512, 12)] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let bytes = data(5 * MIB, seed);
        let wrong = hash(b"something else");

        let err = store
            .ingest(body(&bytes, MIB), Some(&wrong))
            .await
            .unwrap_err();
        match &err {
            BlobError::DigestMismatch { expected, actual } => {
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &hash(&bytes));
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert_eq!(err.code(), ErrorCode::DigestInvalid);

        let id = store.create_upload().await.unwrap();
        store.append(&id, Some(0), body(&bytes, MIB)).await.unwrap();
        let err = store.commit(&id, &hash(&bytes), Some(1)).await.unwrap_err();
        assert!(
            matches!(err, BlobError::SizeMismatch { expected: 1, actual } if actual == bytes.len() as u64)
        );
        assert_eq!(err.code(), ErrorCode::SizeInvalid);
        assert!(matches!(
            store.upload_size(&id).await,
            Err(BlobError::UnknownSession)
        ));

        assert!(files_under(&dir.path().join("blobs")).is_empty());
        assert!(files_under(&dir.path().join("uploads")).is_empty());
        assert_eq!(store.stat(&hash(&bytes)).await.unwrap(), None);
        assert_eq!(store.stat(&wrong).await.unwrap(), None);
    }
}

#[tokio::test]
async fn ranged_reads_span_chunk_boundaries_and_clamp_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(9 * MIB, 4);
    let d = store.ingest(body(&bytes, MIB), None).await.unwrap().digest;
    let size = bytes.len() as u64;
    let four = 4 * MIB as u64;

    let r = store.read(&d, Some((four - 100, four + 99))).await.unwrap();
    assert_eq!((r.size, r.start, r.len), (size, four - 100, 200));
    let mid = read_all(&store, &d, Some((four - 100, four + 99))).await;
    assert_eq!(mid, &bytes[4 * MIB - 100..4 * MIB + 100]);

    // Spans all three chunks.
    let wide = read_all(&store, &d, Some((10, size - 10))).await;
    assert_eq!(wide, &bytes[10..bytes.len() - 9]);

    let tail = read_all(&store, &d, Some((size - 5, u64::MAX))).await;
    assert_eq!(tail, &bytes[bytes.len() - 5..]);
    assert_eq!(read_all(&store, &d, Some((7, 7))).await, &bytes[7..8]);

    for bad in [(size, size), (size + 1, size + 10), (10, 9)] {
        let err = store.read(&d, Some(bad)).await.unwrap_err();
        assert!(
            matches!(err, BlobError::RangeNotSatisfiable { size: s } if s == size),
            "{bad:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_corrupt_chunk_aborts_the_read_after_the_intact_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(9 * MIB, 5);
    let d = store.ingest(body(&bytes, MIB), None).await.unwrap().digest;

    // Flip one byte in the second chunk (bytes 4 MiB .. 8 MiB).
    let hex = d.hex();
    let path = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    let mut on_disk = std::fs::read(&path).unwrap();
    on_disk[5 * MIB] ^= 0x01;
    std::fs::write(&path, &on_disk).unwrap();

    let mut reader = store.read(&d, None).await.unwrap();
    let first = reader.stream.next().await.unwrap().unwrap();
    assert_eq!(
        first,
        &bytes[..4 * MIB],
        "the first chunk is intact and delivered"
    );
    let err = reader.stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let corrupt = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<CorruptBlob>())
        .unwrap();
    assert_eq!((&corrupt.digest, corrupt.chunk), (&d, Some(1)));
    assert!(
        reader.stream.next().await.is_none(),
        "nothing after the error"
    );

    // A range inside the intact first chunk still reads; one touching chunk 1 fails at once.
    assert_eq!(
        read_all(&store, &d, Some((100, 199))).await,
        &bytes[100..200]
    );
    let mut reader = store
        .read(&d, Some((6 * MIB as u64, 6 * MIB as u64 + 10)))
        .await
        .unwrap();
    assert!(reader.stream.next().await.unwrap().is_err());

    let err = store.verify(&d).await.unwrap_err();
    assert!(
        matches!(err, BlobError::Corrupt(CorruptBlob { chunk: Some(1), .. })),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::Internal);

    // Ingesting the good bytes again repairs the copy.
    store.ingest(body(&bytes, MIB), Some(&d)).await.unwrap();
    assert_eq!(read_all(&store, &d, None).await, bytes);
}

#[tokio::test]
async fn a_missing_sidecar_or_changed_length_is_corruption_before_any_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(1000, 6);
    let d = store.ingest(body(&bytes, 100), None).await.unwrap().digest;
    let hex = d.hex();
    let path = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);

    std::fs::write(&path, &bytes[..999]).unwrap();
    assert!(matches!(
        store.read(&d, None).await,
        Err(BlobError::Corrupt(_))
    ));

    std::fs::remove_file(path.with_extension("chunks")).unwrap();
    assert!(matches!(
        store.read(&d, None).await,
        Err(BlobError::Corrupt(_))
    ));
}

#[tokio::test]
async fn open_removes_leftover_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let uploads = dir.path().join("uploads");
    std::fs::create_dir_all(uploads.join("stray-dir")).unwrap();
    std::fs::write(
        uploads.join("7-00000000000000000000000000000000"),
        b"partial",
    )
    .unwrap();
    std::fs::write(
        uploads.join("7-00000000000000000000000000000000.chunks"),
        b"x",
    )
    .unwrap();

    let before = open(dir.path());
    assert!(files_under(&uploads).is_empty());
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);

    // A session of a previous process does not survive a restart.
    let id = before.create_upload().await.unwrap();
    before.append(&id, None, body(b"half", 2)).await.unwrap();
    let after = open(dir.path());
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    assert!(matches!(
        after.upload_size(&id).await,
        Err(BlobError::UnknownSession)
    ));
}

#[tokio::test]
async fn sweep_drops_only_idle_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let idle = store.create_upload().await.unwrap();
    let active = store.create_upload().await.unwrap();
    store.append(&idle, None, body(b"abc", 1)).await.unwrap();
    assert_eq!(store.sweep_expired_uploads(Duration::from_secs(3600)), 0);

    tokio::time::sleep(Duration::from_millis(400)).await;
    store.append(&active, None, body(b"def", 1)).await.unwrap();
    assert_eq!(store.sweep_expired_uploads(Duration::from_millis(300)), 1);

    assert!(matches!(
        store.upload_size(&idle).await,
        Err(BlobError::UnknownSession)
    ));
    assert!(matches!(
        store.append(&idle, None, body(b"x", 1)).await,
        Err(BlobError::UnknownSession)
    ));
    assert!(!dir.path().join("uploads").join(&idle).exists());
    assert_eq!(store.upload_size(&active).await.unwrap(), 3);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.sweep_expired_uploads(Duration::ZERO), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn a_second_request_on_a_busy_session_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store.create_upload().await.unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, io::Error>>();
    tx.unbounded_send(Ok(Bytes::from_static(b"hello ")))
        .unwrap();

    let mut first = Box::pin(store.append(&id, Some(0), rx));
    assert!(
        futures::poll!(&mut first).is_pending(),
        "waiting for more body"
    );

    let err = store.append(&id, None, body(b"x", 1)).await.unwrap_err();
    assert!(matches!(err, BlobError::SessionBusy));
    assert!(matches!(
        store.commit(&id, &sha(b""), None).await,
        Err(BlobError::SessionBusy)
    ));
    assert!(matches!(
        store.cancel(&id).await,
        Err(BlobError::SessionBusy)
    ));
    assert_eq!(
        store.sweep_expired_uploads(Duration::ZERO),
        0,
        "busy is not idle"
    );

    tx.unbounded_send(Ok(Bytes::from_static(b"world"))).unwrap();
    drop(tx);
    assert_eq!(first.await.unwrap(), 11);
    assert_eq!(
        store
            .commit(&id, &sha(b"hello world"), Some(11))
            .await
            .unwrap()
            .size,
        11
    );
}

#[tokio::test]
async fn a_failing_body_keeps_what_arrived_so_the_client_can_resume() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(3 * MIB, 7);
    let (head, tail) = bytes.split_at(2 * MIB + 17);
    let id = store.create_upload().await.unwrap();

    let mut items: Vec<Result<Bytes, io::Error>> = head
        .chunks(100_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    items.push(Err(io::Error::new(
        io::ErrorKind::ConnectionReset,
        "peer reset",
    )));
    let err = store
        .append(&id, Some(0), futures::stream::iter(items))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BlobError::Body(msg) if msg.contains("peer reset")),
        "{err:?}"
    );

    let resume_at = store.upload_size(&id).await.unwrap();
    assert_eq!(resume_at, head.len() as u64);
    store
        .append(&id, Some(resume_at), body(tail, 50_000))
        .await
        .unwrap();
    let info = store.commit(&id, &sha(&bytes), None).await.unwrap();
    assert_eq!(read_all(&store, &info.digest, None).await, bytes);
}

#[tokio::test]
async fn cancel_and_delete_remove_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store.create_upload().await.unwrap();
    store.append(&id, None, body(b"abc", 1)).await.unwrap();
    store.cancel(&id).await.unwrap();
    assert!(matches!(
        store.cancel(&id).await,
        Err(BlobError::UnknownSession)
    ));
    assert!(matches!(
        store.commit(&id, &sha(b"abc"), None).await,
        Err(BlobError::UnknownSession)
    ));
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );

    let d = store
        .ingest(body(b"to delete", 3), None)
        .await
        .unwrap()
        .digest;
    store.delete(&d).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert_eq!(store.info(&d).await.unwrap(), None);
    let err = store.read(&d, None).await.unwrap_err();
    assert!(matches!(err, BlobError::NotFound));
    assert_eq!(err.code(), ErrorCode::BlobUnknown);
    store.delete(&d).await.unwrap();
    assert!(files_under(&dir.path().join("blobs")).is_empty());
}

#[tokio::test]
async fn the_empty_blob_has_no_chunks_and_no_satisfiable_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let info = store.ingest(body(b"", 1), None).await.unwrap();
    assert_eq!(info.digest, sha(b""));
    assert_eq!(info.size, 0);
    assert_eq!(info.chunk_root, sha(b""));
    assert!(read_all(&store, &info.digest, None).await.is_empty());
    assert!(matches!(
        store.read(&info.digest, Some((0, 0))).await,
        Err(BlobError::RangeNotSatisfiable { size: 0 })
    ));
}

#[tokio::test]
async fn session_ids_name_their_node_and_are_unguessable() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path(), 42).unwrap();
    let a = store.create_upload().await.unwrap();
    let b = store.create_upload().await.unwrap();
    assert_ne!(a, b);
    assert_eq!(FsBlobStore::session_node(&a), Some(42));
    assert_eq!(a.len(), "42-".len() + 32);
    for bad in [
        "",
        "42",
        "42-",
        "-0123456789abcdef0123456789abcdef",
        "+4-0123456789abcdef0123456789abcdef",
        "42-0123456789ABCDEF0123456789ABCDEF",
        "42-0123456789abcdef0123456789abcde",
        "42-0123456789abcdef0123456789abcdef0",
        "99999999999999999999999-0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(FsBlobStore::session_node(bad), None, "{bad}");
    }
    assert!(matches!(
        store.upload_size("42-nope").await,
        Err(BlobError::UnknownSession)
    ));
    assert_eq!(
        BlobError::UnknownSession.code(),
        ErrorCode::BlobUploadUnknown
    );
    // CHUNK_SIZE is part of the stored format: changing it needs a new sidecar reader path.
    assert_eq!(CHUNK_SIZE, 4 * 1024 * 1024);
}

#[tokio::test]
async fn sha512_ingest_then_read_round_trips_under_its_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(5 * MIB + 3, 11);
    let d = sha512(&bytes);
    let info = store.ingest(body(&bytes, 100_000), Some(&d)).await.unwrap();

    assert_eq!(info.digest, d);
    assert_eq!(info.size, bytes.len() as u64);
    // The chunk root stays sha256 whatever the blob is named by.
    let plain = tempfile::tempdir().unwrap();
    let as_sha256 = open(plain.path())
        .ingest(body(&bytes, MIB), None)
        .await
        .unwrap();
    assert_eq!(info.chunk_root, as_sha256.chunk_root);
    assert_eq!(info.chunk_root.algorithm(), DigestAlgorithm::Sha256);

    let blob = blob_file(dir.path(), &d);
    assert!(blob.starts_with(dir.path().join("blobs/sha512")));
    assert_eq!(std::fs::read(&blob).unwrap(), bytes);
    assert!(blob.with_extension("chunks").is_file());
    assert!(files_under(&dir.path().join("blobs/sha256")).is_empty());
    assert!(files_under(&dir.path().join("uploads")).is_empty());

    assert_eq!(store.stat(&d).await.unwrap(), Some(bytes.len() as u64));
    assert_eq!(store.stat(&sha(&bytes)).await.unwrap(), None);
    assert_eq!(read_all(&store, &d, None).await, bytes);
    let four = 4 * MIB as u64;
    assert_eq!(
        read_all(&store, &d, Some((four - 10, four + 9))).await,
        &bytes[4 * MIB - 10..4 * MIB + 10]
    );
    assert_eq!(store.info(&d).await.unwrap(), Some(info.clone()));
    assert_eq!(store.verify(&d).await.unwrap(), info);

    // The same bytes under sha256 are another blob, side by side.
    let info256 = store.ingest(body(&bytes, MIB), None).await.unwrap();
    assert_eq!(info256.digest, sha(&bytes));
    assert_eq!(read_all(&store, &info256.digest, None).await, bytes);

    store.delete(&d).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), None);
    assert!(!blob.exists() && !blob.with_extension("chunks").exists());
    assert_eq!(read_all(&store, &info256.digest, None).await, bytes);
}

#[tokio::test]
async fn a_sha512_upload_through_chunked_appends_matches_a_one_shot_ingest() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (chunked, whole) = (open(a.path()), open(b.path()));
    let bytes = data(9 * MIB + 5, 13);
    let expected = sha512(&bytes);

    let id = chunked.create_upload().await.unwrap();
    let mut start = 0u64;
    for part in bytes.chunks(3 * MIB + 1) {
        start = chunked
            .append(&id, Some(start), body(part, 64 * 1024))
            .await
            .unwrap();
    }
    assert_eq!(start, bytes.len() as u64);
    let info = chunked
        .commit(&id, &expected, Some(bytes.len() as u64))
        .await
        .unwrap();
    let one_shot = whole
        .ingest(body(&bytes, 9 * MIB), Some(&expected))
        .await
        .unwrap();

    assert_eq!(info, one_shot);
    assert_eq!(info.digest, expected);
    let sidecar =
        |root: &Path| std::fs::read(blob_file(root, &expected).with_extension("chunks")).unwrap();
    assert_eq!(sidecar(a.path()), sidecar(b.path()));
    assert_eq!(read_all(&chunked, &expected, None).await, bytes);
    assert_eq!(chunked.verify(&expected).await.unwrap(), info);
}

#[tokio::test]
async fn verify_rehashes_a_sha512_blob_with_sha512() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(1000, 14);
    let d = sha512(&bytes);
    store.ingest(body(&bytes, 100), Some(&d)).await.unwrap();

    // Damage the blob and rewrite a sidecar that matches the damage: only the whole-blob sha512
    // can notice.
    let path = blob_file(dir.path(), &d);
    let mut damaged = bytes.clone();
    damaged[500] ^= 0x01;
    std::fs::write(&path, &damaged).unwrap();
    let mut hasher = crate::chunks::ChunkHasher::new(CHUNK_SIZE);
    hasher.update(&damaged);
    std::fs::write(
        path.with_extension("chunks"),
        crate::chunks::encode_sidecar(&hasher.finish()),
    )
    .unwrap();

    assert_eq!(read_all(&store, &d, None).await, damaged);
    let err = store.verify(&d).await.unwrap_err();
    match &err {
        BlobError::Corrupt(c) => {
            assert_eq!((&c.digest, c.chunk), (&d, None));
            assert!(
                c.reason.contains(&sha512(&damaged).to_string()),
                "{}",
                c.reason
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn uploads_are_refused_below_min_free() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path(), 1).unwrap();
    let free = store.free_bytes().unwrap();
    assert!(free > 0);
    let id = store.create_upload().await.unwrap();
    store.set_min_free(free.saturating_mul(4).max(1 << 40));
    let err = store.create_upload().await.unwrap_err();
    assert!(
        matches!(err, BlobError::InsufficientStorage { .. }),
        "{err:?}"
    );
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]);
    let err = store.append(&id, None, body).await.unwrap_err();
    assert!(
        matches!(err, BlobError::InsufficientStorage { .. }),
        "{err:?}"
    );
    store.set_min_free(0);
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]);
    assert_eq!(store.append(&id, None, body).await.unwrap(), 1);
}

#[tokio::test]
async fn a_small_blob_stored_again_keeps_an_intact_copy_and_repairs_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(2000, 9);
    let d = store.ingest(body(&bytes, 500), None).await.unwrap().digest;
    let hex = d.hex();
    let path = dir.path().join("blobs/sha256").join(&hex[..2]).join(hex);
    let inode =
        |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let first = inode(&path);

    // The same bytes again: the copy in place is kept (same inode), the upload is gone.
    let again = store.ingest(body(&bytes, 700), Some(&d)).await.unwrap();
    assert_eq!(again.digest, d);
    assert_eq!(inode(&path), first);
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );

    // A damaged copy is replaced by the next upload of the same bytes.
    let mut damaged = bytes.clone();
    damaged[10] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    store.ingest(body(&bytes, 700), Some(&d)).await.unwrap();
    assert_ne!(inode(&path), first);
    assert_eq!(read_all(&store, &d, None).await, bytes);
}

/// Bytes in memory: the same small blob stored again is only compared with its copy, never
/// trusted past a delete, a missing or a damaged copy; a wrong digest is refused.
#[tokio::test]
async fn ingest_bytes_reuses_a_durable_copy_only_while_it_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = Bytes::from(data(2_000, 7));
    let digest = sha(&bytes);
    let info = store
        .ingest_bytes(bytes.clone(), Some(&digest))
        .await
        .unwrap();
    assert_eq!(info.digest, digest);
    let blob = blob_file(dir.path(), &digest);
    let placed = std::fs::metadata(&blob).unwrap().modified().unwrap();

    // Again: the same answer, and the file was not written again.
    assert_eq!(store.ingest_bytes(bytes.clone(), None).await.unwrap(), info);
    assert_eq!(
        std::fs::metadata(&blob).unwrap().modified().unwrap(),
        placed
    );

    // A damaged copy of the same size is not trusted: storing the bytes again repairs it.
    let mut damaged = bytes.to_vec();
    damaged[10] ^= 0xff;
    std::fs::write(&blob, &damaged).unwrap();
    assert_eq!(store.ingest_bytes(bytes.clone(), None).await.unwrap(), info);
    assert_eq!(std::fs::read(&blob).unwrap(), bytes);

    // Deleted through the store, or removed behind its back: stored again.
    store.delete(&digest).await.unwrap();
    assert_eq!(store.ingest_bytes(bytes.clone(), None).await.unwrap(), info);
    assert_eq!(std::fs::read(&blob).unwrap(), bytes);
    std::fs::remove_file(&blob).unwrap();
    assert_eq!(store.ingest_bytes(bytes.clone(), None).await.unwrap(), info);
    assert_eq!(read_all(&store, &digest, None).await, bytes.to_vec());

    let wrong = sha(b"something else");
    let err = store.ingest_bytes(bytes, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
    assert!(files_under(&dir.path().join("uploads")).is_empty());
}
