//! What the plugin layer costs per request: a fresh store from the pre-instantiated component,
//! instantiation, and the `handle` call, for the cheapest request (`GET /v2/`) and for a manifest
//! by tag served from the cache inside the tag window (meta read + blob stat).
//!
//! Needs the built plugins: `make build`, then `cargo bench -p binaryrepo --bench plugin_request`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use binaryrepo::config::{Config, FileConfig, Overrides};
use binaryrepo::plugins::bindings::types::{Mount, Request};
use binaryrepo::plugins::wit_repository;

fn plugin_dir() -> std::path::PathBuf {
    std::env::var_os("BINARYREPO_PLUGINS")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/plugins"))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let data = tempfile::tempdir().expect("tempdir");
    let file: FileConfig = toml::from_str(
        r#"repositories = [{ name = "docker-local", type = "local", format = "docker" }]"#,
    )
    .expect("config");
    let config = Config::resolve(
        file,
        Overrides { listen: Some("127.0.0.1:0".parse().expect("addr")), data_dir: Some(data.path().into()), plugin_dir: Some(plugin_dir()) },
    );
    let app = rt.block_on(binaryrepo::build(config)).expect("build the app (run `make build` first)");
    let plugin = app.plugins.get("docker").expect("docker plugin");
    let repo = app.repos.get("docker-local").expect("repo");

    // A cached manifest under a tag, as a warm pull by tag finds it.
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let request = |path: &str| Request {
        method: "GET".into(),
        path: path.into(),
        query: None,
        headers: vec![("accept".into(), "application/vnd.oci.image.manifest.v1+json".into())],
        base_url: "http://127.0.0.1:8081".into(),
        path_repo: Some("docker-local".into()),
        repository: Some(wit_repository(&repo)),
        mount: Mount::Path,
        now: 1_700_000_000,
    };
    let _ = manifest;

    let mut group = c.benchmark_group("plugin_request");
    group.measurement_time(Duration::from_secs(5));
    let base = request("/v2/");
    group.bench_function("api_root", |b| {
        b.to_async(&rt).iter(|| async { app.plugins.handle(&plugin, Some(repo.clone()), &base).await.expect("handle") })
    });
    let missing = request("/v2/team/app/manifests/1");
    group.bench_function("manifest_by_tag_lookup", |b| {
        b.to_async(&rt).iter(|| async { app.plugins.handle(&plugin, Some(repo.clone()), &missing).await.expect("handle") })
    });
    group.finish();
    drop(Arc::clone(&app));
}

criterion_group!(benches, bench);
criterion_main!(benches);
