//! What the plugin layer costs per request, as the server runs it: an idle instance of the
//! plugin taken from the warm pool (or a fresh one), the `handle` call, the instance handed back,
//! for the cheapest request (`GET /v2/`) and for a manifest lookup by tag (a meta read), with
//! the server's default `plugin_instance_reuse`.
//! `*_fresh` runs the same with `plugin_instance_reuse = 1`: a fresh store and instance from the
//! pre-instantiated component for every request.
//!
//! Needs the built plugins: `make build`, then `cargo bench -p binaryrepo-benches --bench plugin_request`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use binaryrepo::config::{Config, FileConfig, Overrides};
use binaryrepo::plugins::bindings::types::{Caller, Mount, Request};
use binaryrepo::plugins::caps::Readable;
use binaryrepo::plugins::wit_repository;

fn plugin_dir() -> std::path::PathBuf {
    std::env::var_os("BINARYREPO_PLUGINS")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/plugins"))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let data = tempfile::tempdir().expect("tempdir");
    // `reuse`: None runs the server's default.
    let app_with = |reuse: Option<u32>, dir: &str| {
        let reuse = reuse.map(|n| format!("plugin_instance_reuse = {n}")).unwrap_or_default();
        let file: FileConfig = toml::from_str(&format!(
            r#"{reuse}
            repositories = [{{ name = "docker-local", type = "local", format = "docker" }}]"#
        ))
        .expect("config");
        let config = Config::resolve(
            file,
            Overrides {
                listen: Some("127.0.0.1:0".parse().expect("addr")),
                data_dir: Some(data.path().join(dir)),
                plugin_dir: Some(plugin_dir()),
            },
        );
        rt.block_on(binaryrepo::build(config)).expect("build the app (run `make build` first)")
    };
    let app = app_with(None, "reuse");
    let fresh = app_with(Some(1), "fresh");
    let plugin = app.plugins.get("docker").expect("docker plugin");
    let repo = app.repos.get("docker-local").expect("repo");
    let fresh_plugin = fresh.plugins.get("docker").expect("docker plugin");
    let fresh_repo = fresh.repos.get("docker-local").expect("repo");

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
        caller: Caller { user: None, token_service: None },
    };

    let mut group = c.benchmark_group("plugin_request");
    group.measurement_time(Duration::from_secs(5));
    let base = request("/v2/");
    group.bench_function("api_root", |b| {
        b.to_async(&rt).iter(|| async { app.plugins.handle(&plugin, Some(repo.clone()), Readable::all(), &base).await.expect("handle") })
    });
    let missing = request("/v2/team/app/manifests/1");
    group.bench_function("manifest_by_tag_lookup", |b| {
        b.to_async(&rt).iter(|| async { app.plugins.handle(&plugin, Some(repo.clone()), Readable::all(), &missing).await.expect("handle") })
    });
    group.bench_function("api_root_fresh", |b| {
        b.to_async(&rt)
            .iter(|| async { fresh.plugins.handle(&fresh_plugin, Some(fresh_repo.clone()), Readable::all(), &base).await.expect("handle") })
    });
    group.bench_function("manifest_by_tag_lookup_fresh", |b| {
        b.to_async(&rt).iter(|| async {
            fresh.plugins.handle(&fresh_plugin, Some(fresh_repo.clone()), Readable::all(), &missing).await.expect("handle")
        })
    });
    group.finish();
    drop(Arc::clone(&app));
    drop(Arc::clone(&fresh));
}

criterion_group!(benches, bench);
criterion_main!(benches);
