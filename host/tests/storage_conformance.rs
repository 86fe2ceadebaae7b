//! One conformance suite for every blob storage backend: the filesystem, and S3 against a
//! real s3s-fs server started on 127.0.0.1 (it checks SigV4 signatures and presigned URLs).
//! s3s-fs comes from tests/install-deps.sh (`$BINARYREPO_E2E_CACHE/s3s-fs/bin/s3s-fs`, default cache /tmp/binaryrepo-e2e-cache, or
//! `BINARYREPO_TEST_S3S_FS`); without it the S3 half is skipped, saying so.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use binaryrepo::digest::{Algorithm, Digest};
use binaryrepo::storage::backend::s3::S3Backend;
use binaryrepo::storage::blobs::{BlobError, Opened};
use binaryrepo::storage::{BlobStore, Layout};
use futures_util::TryStreamExt;

mod support {
    pub mod s3s;
}
use support::s3s::S3sFs;

struct Fixture {
    store: BlobStore,
    runtime: tokio::runtime::Runtime,
    /// The S3 server, where unfinished multipart uploads keep their parts.
    server: Option<S3sFs>,
    _dir: tempfile::TempDir,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn filesystem() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(Layout::new(dir.path().join("data"))).unwrap();
    Fixture { store, runtime: runtime(), server: None, _dir: dir }
}

/// An S3 store on a fresh s3s-fs; None (the test is skipped) when s3s-fs is not installed.
fn s3() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let server = S3sFs::start(dir.path())?;
    let runtime = runtime();
    let backend = S3Backend::new(&server.config(), runtime.handle().clone()).unwrap();
    let store = BlobStore::on(Layout::new(dir.path().join("data")), Arc::new(backend)).unwrap();
    Some(Fixture { store, runtime, server: Some(server), _dir: dir })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i as u64).wrapping_mul(2654435761) >> 7) as u8 ^ seed).collect()
}

fn put(store: &BlobStore, data: &[u8], expected: Option<&Digest>) -> Result<Digest, BlobError> {
    let mut staged = store.stage(Algorithm::Sha256)?;
    for chunk in data.chunks(1 << 20) {
        staged.write_all(chunk).unwrap();
    }
    staged.commit(expected)
}

fn listed(store: &BlobStore) -> Vec<(Digest, u64)> {
    let mut all = Vec::new();
    store.list(&mut |b| all.push((b.digest, b.size))).unwrap();
    all.sort_by_key(|a| a.0.to_string());
    all
}

fn whole(f: &Fixture, digest: &Digest) -> Vec<u8> {
    match f.store.open_for_serving(digest).unwrap() {
        Opened::Small(b) => b.to_vec(),
        Opened::File(file, len) => {
            let mut buf = vec![0; len as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).unwrap();
            buf
        }
        Opened::Object(len) => {
            let chunks: Vec<bytes::Bytes> = f.runtime.block_on(f.store.stream(digest, 0, len).try_collect()).unwrap();
            chunks.concat()
        }
    }
}

/// Write, stat, read whole and in ranges, list, delete.
fn round_trip(f: Fixture) {
    let s = &f.store;
    let small = b"a small document".to_vec();
    let d = put(s, &small, None).unwrap();
    assert_eq!(d, Digest::of(Algorithm::Sha256, &small));
    assert_eq!(s.stat(&d).unwrap(), Some(small.len() as u64));
    assert_eq!(whole(&f, &d), small);
    s.forget_cached();
    assert_eq!(s.read_small(&d, 100).unwrap(), small);
    assert!(matches!(s.read_small(&d, 3), Err(BlobError::TooLarge { .. })));
    s.forget_cached();
    assert_eq!(s.read_range(&d, 2, 5).unwrap(), &small[2..7]);
    assert_eq!(s.read_range(&d, 10, 1000).unwrap(), &small[10..]);
    assert!(s.read_range(&d, 1000, 5).unwrap().is_empty());
    assert_eq!(listed(s), [(d.clone(), small.len() as u64)]);
    assert!(s.remove(&d).unwrap());
    assert!(!s.remove(&d).unwrap(), "a second delete finds nothing");
    assert_eq!(s.stat(&d).unwrap(), None);
    assert!(matches!(s.open_for_serving(&d), Err(BlobError::Unknown(_))));
    assert!(matches!(s.read_range(&d, 0, 1), Err(BlobError::Unknown(_))));
    assert!(listed(s).is_empty());
}

/// A blob larger than one multipart part (S3) or the small cache: streamed back whole and in
/// ranges, its end included.
fn large_blob(f: Fixture) {
    let data = pattern(21 * 1024 * 1024 + 123, 7);
    let d = put(&f.store, &data, Some(&Digest::of(Algorithm::Sha256, &data))).unwrap();
    assert_eq!(f.store.stat(&d).unwrap(), Some(data.len() as u64));
    assert!(whole(&f, &d) == data, "the blob reads back whole");
    let end = data.len() as u64;
    assert_eq!(f.store.read_range(&d, end - 10, 100).unwrap(), &data[data.len() - 10..]);
    if let Opened::Object(_) = f.store.open_for_serving(&d).unwrap() {
        let part: Vec<bytes::Bytes> = f.runtime.block_on(f.store.stream(&d, 9 * 1024 * 1024, 5).try_collect()).unwrap();
        assert_eq!(part.concat(), &data[9 * 1024 * 1024..9 * 1024 * 1024 + 5]);
    }
    assert_eq!(listed(&f.store), [(d, data.len() as u64)]);
}

/// Content that does not hash to the expected digest is not stored under any name; a commit
/// whose staged file is gone stores nothing either.
fn failed_writes_store_nothing(f: Fixture) {
    let wrong = Digest::of(Algorithm::Sha256, b"something else");
    let data = pattern(9 * 1024 * 1024, 3);
    assert!(matches!(put(&f.store, &data, Some(&wrong)), Err(BlobError::DigestMismatch { .. })));
    assert_eq!(f.store.stat(&wrong).unwrap(), None);
    assert_eq!(f.store.stat(&Digest::of(Algorithm::Sha256, &data)).unwrap(), None);
    let gone = f.store.layout().staged();
    let d = Digest::of(Algorithm::Sha256, b"never staged");
    assert!(f.store.commit_verified(&gone, &d).is_err());
    assert_eq!(f.store.stat(&d).unwrap(), None);
    assert!(listed(&f.store).is_empty());
    assert_eq!(std::fs::read_dir(f.store.layout().staging()).unwrap().count(), 0, "no staged file left");
}

/// Every stored blob hashes to its name, sha512 ones too.
fn everything_hashes_to_its_name(f: Fixture) {
    let mut digests = Vec::new();
    for (i, len) in [0usize, 1, 4096, 3 * 1024 * 1024].into_iter().enumerate() {
        digests.push(put(&f.store, &pattern(len, i as u8), None).unwrap());
    }
    let d512 = Digest::of(Algorithm::Sha512, b"sha512 content");
    assert_eq!(put_512(&f.store, b"sha512 content", &d512), d512);
    digests.push(d512);
    let all = listed(&f.store);
    assert_eq!(all.len(), digests.len());
    f.store.forget_cached();
    for (d, size) in all {
        let bytes = whole(&f, &d);
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(Digest::of(d.algorithm(), &bytes), d);
    }
}

fn put_512(store: &BlobStore, data: &[u8], d: &Digest) -> Digest {
    store.write_small(data, Some(d)).unwrap()
}

/// Presigned URLs: the object store serves the blob to a plain HTTP client for their lifetime
/// and refuses them after; the filesystem has none.
fn presigned(f: Fixture) {
    let data = pattern(64 * 1024, 9);
    let d = put(&f.store, &data, None).unwrap();
    let url = f.store.presign(&d, Duration::from_secs(60)).unwrap();
    let Some(url) = url else {
        assert_eq!(f.store.backend().kind(), "filesystem", "only the filesystem has no presigned URLs");
        return;
    };
    let client = reqwest::blocking::Client::new();
    let resp = client.get(&url).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().unwrap() == data[..]);
    let tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=61");
    assert_eq!(client.get(&tampered).send().unwrap().status(), 403, "a changed URL is refused");
    let short = f.store.presign(&d, Duration::from_secs(1)).unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(client.get(&short).send().unwrap().status(), 403, "an expired URL is refused");
}

/// How a fill writes a blob whose digest and length it knows: to its staging file, in chunks as
/// they come off the network, telling the backend's upload how far the file is written where it
/// has one (S3), the staged file committed after verification otherwise. `cut_at` ends the body
/// early (the upstream went away); `verified` is the fill's verdict on the digest. The blob is
/// stored only when both went well.
fn fill(f: &Fixture, data: &[u8], digest: &Digest, cut_at: Option<usize>, verified: bool) -> Result<(), BlobError> {
    let body = &data[..cut_at.unwrap_or(data.len())];
    let whole = cut_at.is_none() && verified;
    let refused = || Err(BlobError::DigestMismatch { expected: digest.clone(), actual: digest.clone() });
    let path = f.store.layout().staged();
    let mut staged = std::fs::File::create(&path).unwrap();
    match f.store.begin_upload(digest, &path, data.len() as u64) {
        Some(mut upload) => {
            let mut written = 0u64;
            for chunk in body.chunks(256 * 1024) {
                staged.write_all(chunk).unwrap();
                written += chunk.len() as u64;
                upload.staged(written).unwrap();
            }
            if !whole {
                drop(upload); // a fill that failed drops its upload: aborted
                let _ = std::fs::remove_file(&path);
                return refused();
            }
            f.store.complete_upload(upload, &path, digest, body.len() as u64)
        }
        None => {
            staged.write_all(body).unwrap();
            drop(staged);
            if !whole {
                let _ = std::fs::remove_file(&path);
                return refused();
            }
            f.store.commit_verified(&path, digest)
        }
    }
}

/// A fill's staging file holding `data`, whole.
fn staged_file(f: &Fixture, data: &[u8]) -> std::path::PathBuf {
    let path = f.store.layout().staged();
    std::fs::write(&path, data).unwrap();
    path
}

/// No object under any key and, on S3, no multipart upload left holding parts (the abort runs
/// in the background: waited for).
fn assert_nothing_stored(f: &Fixture, digest: &Digest) {
    assert_eq!(f.store.stat(digest).unwrap(), None, "no object under the final key");
    assert!(listed(&f.store).is_empty());
    if let Some(root) = f.server.as_ref().map(S3sFs::root) {
        let pending = || {
            std::fs::read_dir(root)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(".upload"))
                .count()
        };
        let started = Instant::now();
        while pending() > 0 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pending(), 0, "an aborted multipart upload left parts in the bucket");
    }
}

/// A fill whose upstream stops mid-body, past the first multipart part, stores nothing.
fn fill_cut_mid_body_stores_nothing(f: Fixture) {
    let data = pattern(17 * 1024 * 1024 + 5, 11);
    let d = Digest::of(Algorithm::Sha256, &data);
    assert!(fill(&f, &data, &d, Some(12 * 1024 * 1024), true).is_err());
    assert_nothing_stored(&f, &d);
}

/// A fill whose bytes do not hash to the digest stores nothing, the whole body sent or not.
fn fill_with_wrong_digest_stores_nothing(f: Fixture) {
    let data = pattern(13 * 1024 * 1024, 12);
    let wrong = Digest::of(Algorithm::Sha256, b"what the upstream promised");
    assert!(fill(&f, &data, &wrong, None, false).is_err());
    assert_nothing_stored(&f, &wrong);
    // An upload told the wrong length at completion refuses it.
    let d = Digest::of(Algorithm::Sha256, &data);
    let path = staged_file(&f, &data);
    if let Some(mut u) = f.store.begin_upload(&d, &path, data.len() as u64) {
        u.staged(data.len() as u64).unwrap();
        assert!(f.store.complete_upload(u, &path, &d, data.len() as u64 + 1).is_err());
        assert_nothing_stored(&f, &d);
    }
    let _ = std::fs::remove_file(&path);
}

/// A large blob filled as it streams (several parts, the last one short) and a small one (one
/// PUT) read back whole.
fn fill_round_trips(f: Fixture) {
    let large = pattern(23 * 1024 * 1024 + 77, 13);
    let small = pattern(3 * 1024, 14);
    for data in [&large, &small] {
        let d = Digest::of(Algorithm::Sha256, data);
        fill(&f, data, &d, None, true).unwrap();
        assert_eq!(f.store.stat(&d).unwrap(), Some(data.len() as u64));
        f.store.forget_cached();
        assert!(whole(&f, &d) == *data, "the filled blob reads back whole");
    }
    assert_eq!(listed(&f.store).len(), 2);
    assert_eq!(std::fs::read_dir(f.store.layout().staging()).unwrap().count(), 0, "no staged file left");
}

macro_rules! conformance {
    ($($name:ident),*) => {
        mod filesystem {
            $( #[test] fn $name() { super::$name(super::filesystem()) } )*
        }
        mod s3 {
            $( #[test] fn $name() { if let Some(f) = super::s3() { super::$name(f) } } )*
        }
    };
}

conformance!(
    round_trip,
    large_blob,
    failed_writes_store_nothing,
    everything_hashes_to_its_name,
    presigned,
    fill_cut_mid_body_stores_nothing,
    fill_with_wrong_digest_stores_nothing,
    fill_round_trips
);
