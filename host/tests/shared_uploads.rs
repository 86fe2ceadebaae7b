//! Upload sessions shared between nodes (S3 + PostgreSQL): two `Uploads`, each with a data
//! directory of its own, on one s3s-fs bucket and one database, take the chunks of one session
//! in turn, refuse a chunk that lost a race, count their sessions together, and expire an
//! abandoned session with its chunks. Needs s3s-fs (tests/install-deps.sh) and
//! `BINARYREPO_TEST_POSTGRES_URL` (`tests/postgres.sh run cargo test`); skipped without them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use binaryrepo::config::UploadLimits;
use binaryrepo::digest::{Algorithm, Digest};
use binaryrepo::storage::backend::s3::S3Backend;
use binaryrepo::storage::postgres::DatabaseUrl;
use binaryrepo::storage::uploads::{UploadError, Uploads};
use binaryrepo::storage::{BlobStore, Layout, MetaStore};

mod support {
    pub mod s3s;
}
use support::s3s::S3sFs;

struct Nodes {
    a: Uploads,
    b: Uploads,
    store: BlobStore,
    s3_root: PathBuf,
    _runtime: tokio::runtime::Runtime,
    _server: S3sFs,
    _dir: tempfile::TempDir,
}

impl Nodes {
    /// The chunk objects in the bucket (s3s-fs keeps each object as a file).
    fn chunks(&self) -> usize {
        let root = self.s3_root.join("bucket/installation/uploads");
        walk(&root)
    }
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
}

fn nodes(limits: UploadLimits) -> Option<Nodes> {
    let Some(url) = std::env::var("BINARYREPO_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("BINARYREPO_TEST_POSTGRES_URL missing: shared upload sessions not tested");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = S3sFs::start(dir.path())?;
    // A database of its own: a sweep ends every expired session it finds.
    let name = format!("t{}", uuid::Uuid::new_v4().simple());
    postgres::Client::connect(&url, postgres::NoTls).unwrap().batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let url = format!("{}/{name}", url.rsplit_once('/').unwrap().0);
    let root = server.root().to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = server.config();
    let node = |name: &str| {
        let backend = S3Backend::new(&config, runtime.handle().clone()).unwrap();
        let store = BlobStore::on(Layout::new(dir.path().join(name)), Arc::new(backend)).unwrap();
        let meta = MetaStore::connect(&DatabaseUrl::new(url.clone()), 2).unwrap();
        let uploads = Uploads::open(dir.path().join(name).join("uploads"), store.clone(), limits.clone()).unwrap().shared_with(&meta);
        assert!(uploads.is_shared());
        (uploads, store)
    };
    let (a, store) = node("a");
    let (b, _) = node("b");
    Some(Nodes { a, b, store, s3_root: root, _runtime: runtime, _server: server, _dir: dir })
}

/// A repository name of this run: the database outlives a test and serves tests running at once.
fn repo() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i as u64).wrapping_mul(2654435761) >> 7) as u8).collect()
}

#[test]
fn a_session_takes_chunks_on_both_nodes_and_commits_on_either() {
    let Some(n) = nodes(UploadLimits { per_repository: 10, total: 1_000_000 }) else { return };
    let r = repo();
    let data = pattern(6 * 1024 * 1024 + 3);
    let id = n.a.start(&r).unwrap();
    let cuts = [0, 1, 64, 100_000, 5 * 1024 * 1024 + 1, data.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let node = if i % 2 == 0 { &n.b } else { &n.a };
        let mut app = node.open_append(&r, &id, Some(w[0] as u64)).unwrap();
        assert_eq!(app.offset(), w[0] as u64);
        app.write(&data[w[0]..w[1]]).unwrap();
        assert_eq!(app.finish().unwrap(), w[1] as u64);
        let other = if i % 2 == 0 { &n.a } else { &n.b };
        assert_eq!(other.size(&r, &id).unwrap(), Some(w[1] as u64));
        assert!(matches!(other.open_append(&r, &id, Some(w[0] as u64)), Err(UploadError::OffsetMismatch(s)) if s == w[1] as u64));
    }
    // a range across chunk boundaries
    assert_eq!(n.b.read(&r, &id, 50, 200_000).unwrap(), &data[50..200_050]);
    assert_eq!(n.chunks(), cuts.len() - 1);
    let digest = Digest::of(Algorithm::Sha256, &data);
    assert_eq!(n.b.commit(&r, &id, &digest).unwrap(), data.len() as u64);
    assert_eq!(n.store.stat(&digest).unwrap(), Some(data.len() as u64));
    assert_eq!(n.store.read_range(&digest, 0, data.len() as u64).unwrap(), data);
    assert_eq!(n.chunks(), 0, "the session's chunks go with it");
    assert_eq!(n.a.size(&r, &id).unwrap(), None);

    // one chunk: copied by the store; sha512 is hashed from the chunks
    let id = n.a.start(&r).unwrap();
    assert_eq!(n.b.append(&r, &id, b"hello world").unwrap(), 11);
    let d512 = Digest::of(Algorithm::Sha512, b"hello world");
    assert_eq!(n.a.commit(&r, &id, &d512).unwrap(), 11);
    assert_eq!(n.store.read_range(&d512, 0, 11).unwrap(), b"hello world");

    // a wrong digest stores nothing and ends the session
    let id = n.a.start(&r).unwrap();
    n.b.append(&r, &id, b"abc").unwrap();
    n.a.append(&r, &id, b"def").unwrap();
    let wrong = Digest::of(Algorithm::Sha256, b"nope");
    assert!(matches!(n.b.commit(&r, &id, &wrong), Err(UploadError::DigestMismatch(_))));
    assert_eq!(n.store.stat(&Digest::of(Algorithm::Sha256, b"abcdef")).unwrap(), None);
    assert_eq!(n.a.size(&r, &id).unwrap(), None);
    assert_eq!(n.chunks(), 0);
}

#[test]
fn a_chunk_that_lost_a_race_is_refused_and_removed() {
    let Some(n) = nodes(UploadLimits { per_repository: 10, total: 1_000_000 }) else { return };
    let r = repo();
    let id = n.a.start(&r).unwrap();
    let mut first = n.a.open_append(&r, &id, Some(0)).unwrap();
    let mut second = n.b.open_append(&r, &id, Some(0)).unwrap();
    first.write(b"first").unwrap();
    second.write(b"second").unwrap();
    assert_eq!(first.finish().unwrap(), 5);
    assert!(second.finish().is_err(), "the session moved on under the second chunk");
    assert_eq!(n.chunks(), 1, "the losing chunk's object is removed");
    assert_eq!(n.b.read(&r, &id, 0, 100).unwrap(), b"first");
    assert!(n.b.cancel(&r, &id).unwrap());
    assert_eq!(n.chunks(), 0);
}

#[test]
fn limits_count_both_nodes_and_abandoned_sessions_expire_with_their_chunks() {
    // one repository's limit: the total is shared with tests running at once
    let Some(n) = nodes(UploadLimits { per_repository: 2, total: 1_000_000 }) else { return };
    let r = repo();
    let one = n.a.start(&r).unwrap();
    n.b.start(&r).unwrap();
    assert!(matches!(n.a.start(&r), Err(UploadError::TooMany { open: 2, .. })));
    assert!(matches!(n.b.start(&r), Err(UploadError::TooMany { open: 2, .. })));
    n.b.append(&r, &one, b"abandoned").unwrap();
    assert_eq!(n.chunks(), 1);
    // a recent session outlives a sweep; once untouched for longer than the age, it goes
    assert_eq!(n.a.sweep(Duration::from_secs(3600)), 0);
    assert_eq!(n.a.size(&r, &one).unwrap(), Some(9));
    std::thread::sleep(Duration::from_millis(2100));
    assert!(n.a.sweep(Duration::from_secs(1)) >= 2);
    assert_eq!(n.b.size(&r, &one).unwrap(), None);
    assert_eq!(n.chunks(), 0, "an expired session's chunks are removed");
    n.b.start(&r).unwrap();
}
