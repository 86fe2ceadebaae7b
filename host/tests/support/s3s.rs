//! A real s3s-fs server on 127.0.0.1 for the storage tests (it checks SigV4 signatures and
//! presigned URLs). s3s-fs comes from tests/install-deps.sh (`$BINARYREPO_E2E_CACHE/s3s-fs/bin/s3s-fs`,
//! default cache /tmp/binaryrepo-e2e-cache, or `BINARYREPO_TEST_S3S_FS`); a test without it is
//! skipped, saying so.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use binaryrepo::storage::backend::{BackendKind, Secret, StorageConfig};

const ACCESS_KEY: &str = "storage-test-access";
const SECRET_KEY: &str = "storage-test-secret-key";

/// A running s3s-fs with one bucket `bucket`, stopped on drop.
pub struct S3sFs {
    child: Child,
    port: u16,
    root: PathBuf,
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("BINARYREPO_TEST_S3S_FS").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("BINARYREPO_E2E_CACHE").unwrap_or_else(|| "/tmp/binaryrepo-e2e-cache".into());
        PathBuf::from(cache).join("s3s-fs/bin/s3s-fs")
    });
    path.is_file().then_some(path)
}

impl S3sFs {
    /// Starts a server keeping its objects under `dir/s3`; None when s3s-fs is not installed.
    pub fn start(dir: &Path) -> Option<S3sFs> {
        let Some(bin) = binary() else {
            eprintln!("s3s-fs not installed (tests/install-deps.sh): S3 tests skipped");
            return None;
        };
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join("bucket")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = S3sFs { child, port, root };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// The server's directory: s3s-fs keeps each object as a file, and unfinished multipart
    /// uploads' parts beside them.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Storage settings for the bucket under the prefix `installation`.
    pub fn config(&self) -> StorageConfig {
        StorageConfig {
            backend: BackendKind::S3,
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            region: Some("us-east-1".into()),
            bucket: Some("bucket".into()),
            prefix: Some("installation".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(Secret(SECRET_KEY.into())),
            ..StorageConfig::default()
        }
    }
}
