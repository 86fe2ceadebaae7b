//! One plugin component, whichever contract world it implements: the pre-instantiated component
//! and its instances, with every export called in the current contract's types (`compat`
//! adapts plugins of an older world).

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::bindings::{PluginInfo, World, types, v0_2, v0_3};
use super::compat;
use super::state::CallState;

pub enum Pre {
    V0_3(v0_3::PluginPre<CallState>),
    V0_2(v0_2::PluginPre<CallState>),
}

pub enum Instance {
    V0_3(v0_3::Plugin),
    V0_2(v0_2::Plugin),
}

/// What an old world's plugin cannot render: the host's own plain answer is used instead.
pub enum Rendered {
    Plugin(types::Response),
    Unrenderable,
}

impl Pre {
    /// Links `component` against the newest world whose exports it has.
    pub fn new(linker: &Linker<CallState>, component: &Component) -> Result<Pre, String> {
        let pre = linker.instantiate_pre(component).map_err(|e| format!("{e:#}"))?;
        match v0_3::PluginPre::new(pre.clone()) {
            Ok(p) => Ok(Pre::V0_3(p)),
            Err(now) => v0_2::PluginPre::new(pre)
                .map(Pre::V0_2)
                .map_err(|old| format!("implements neither binaryrepo:plugin@0.3 ({now:#}) nor binaryrepo:plugin@0.2 ({old:#})")),
        }
    }

    pub fn world(&self) -> World {
        match self {
            Pre::V0_3(_) => World::V0_3,
            Pre::V0_2(_) => World::V0_2,
        }
    }

    pub async fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Instance> {
        Ok(match self {
            Pre::V0_3(p) => Instance::V0_3(p.instantiate_async(store).await?),
            Pre::V0_2(p) => Instance::V0_2(p.instantiate_async(store).await?),
        })
    }
}

impl Instance {
    pub async fn info(&self, store: &mut Store<CallState>) -> wasmtime::Result<PluginInfo> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_info(store).await,
            Instance::V0_2(i) => i.binaryrepo_plugin_format().call_info(store).await.map(compat::info),
        }
    }

    pub async fn handle(&self, store: &mut Store<CallState>, req: &types::Request) -> wasmtime::Result<types::Plan> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_handle(store, req).await,
            Instance::V0_2(i) => i.binaryrepo_plugin_format().call_handle(store, &compat::request(req)).await.map(compat::plan),
        }
    }

    pub async fn handle_body(&self, store: &mut Store<CallState>, req: &types::Request, body: &[u8]) -> wasmtime::Result<types::Plan> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_handle_body(store, req, body).await,
            Instance::V0_2(i) => i.binaryrepo_plugin_format().call_handle_body(store, &compat::request(req), body).await.map(compat::plan),
        }
    }

    pub async fn upload_complete(
        &self,
        store: &mut Store<CallState>,
        req: &types::Request,
        id: &str,
        outcome: &types::UploadOutcome,
    ) -> wasmtime::Result<types::Response> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_upload_complete(store, req, id, outcome).await,
            Instance::V0_2(i) => i
                .binaryrepo_plugin_format()
                .call_upload_complete(store, &compat::request(req), id, &compat::upload_outcome(outcome))
                .await
                .map(compat::response),
        }
    }

    pub async fn file_fetched(
        &self,
        store: &mut Store<CallState>,
        req: &types::Request,
        key: &str,
        file: &types::FetchedFile,
    ) -> wasmtime::Result<Result<(), types::HostError>> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_file_fetched(store, req, key, file).await,
            // 0.2 has no fetch-file plan, so nothing of it is ever fetched
            Instance::V0_2(_) => Ok(Ok(())),
        }
    }

    pub async fn merge(
        &self,
        store: &mut Store<CallState>,
        req: &types::Request,
        answers: &[types::MemberAnswer],
    ) -> wasmtime::Result<types::Plan> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_merge(store, req, answers).await,
            // 0.2 declares no merged paths, so the host never asks
            Instance::V0_2(_) => Err(wasmtime::Error::msg("a 0.2 plugin cannot merge")),
        }
    }

    pub async fn render_failure(
        &self,
        store: &mut Store<CallState>,
        req: &types::Request,
        failure: &types::Failure,
    ) -> wasmtime::Result<Rendered> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_render_failure(store, req, failure).await.map(Rendered::Plugin),
            Instance::V0_2(i) => match compat::failure(failure) {
                Some(f) => i
                    .binaryrepo_plugin_format()
                    .call_render_failure(store, &compat::request(req), &f)
                    .await
                    .map(|r| Rendered::Plugin(compat::response(r))),
                None => Ok(Rendered::Unrenderable),
            },
        }
    }

    /// Applies a local repository's cleanup rules. A 0.2 plugin has no such export: it cleans
    /// nothing, and its repository keeps everything (the safe reading of "no rules applied").
    pub async fn cleanup(
        &self,
        store: &mut Store<CallState>,
        repo: &types::Repository,
        rules: &types::CleanupRules,
        now: u64,
    ) -> wasmtime::Result<Result<types::CleanupReport, String>> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_cleanup(store, repo, rules, now).await,
            Instance::V0_2(_) => Ok(Ok(types::CleanupReport { tags_removed: 0, manifests_removed: 0 })),
        }
    }

    /// One page of the live set. A 0.2 plugin answers its whole list at once: one page.
    pub async fn live_blobs_page(
        &self,
        store: &mut Store<CallState>,
        repo: &types::Repository,
        cursor: Option<&str>,
    ) -> wasmtime::Result<Result<types::LivePage, types::HostError>> {
        match self {
            Instance::V0_3(i) => i.binaryrepo_plugin_format().call_live_blobs_page(store, repo, cursor).await,
            Instance::V0_2(_) if cursor.is_some() => Ok(Ok(types::LivePage { digests: Vec::new(), next: None })),
            Instance::V0_2(i) => i
                .binaryrepo_plugin_format()
                .call_live_blobs(store, &compat::repository(repo))
                .await
                .map(|r| r.map(|digests| types::LivePage { digests, next: None }).map_err(compat::host_error_back)),
        }
    }
}
