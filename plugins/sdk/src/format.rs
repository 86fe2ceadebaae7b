//! What a format implements: the `format` export of the contract, against `contract` types.
//! `export_format!` binds an implementation to the component's exports.

use crate::contract::*;

pub trait Format {
    /// format name, roots and merged suffixes
    const INFO: PluginInfo;

    /// Decide what to do with a request (the host has already checked the caller's access).
    fn handle(host: &impl Host, req: &Request) -> Plan;

    /// Decide with the request body in hand (after a `ReadBody` plan).
    fn handle_body(host: &impl Host, req: &Request, body: &[u8]) -> Plan {
        let _ = (host, body);
        Self::handle(host, req)
    }

    /// The response after a `ReceiveUpload` plan.
    fn upload_complete(
        host: &impl Host,
        req: &Request,
        id: &str,
        outcome: &UploadOutcome,
    ) -> Response;

    /// A merged read of a virtual repository: every member's answer, in member order.
    fn merge(host: &impl Host, req: &Request, answers: &[MemberAnswer]) -> Plan {
        let _ = answers;
        Self::handle(host, req)
    }

    /// After a `FetchFile` plan stored its file: record `key` -> digest.
    fn file_fetched(
        host: &impl Host,
        req: &Request,
        key: &str,
        file: &FetchedFile,
    ) -> Result<(), HostError> {
        let _ = (host, req, key, file);
        Ok(())
    }

    /// The client-facing response for a failure the host met or a request it refused.
    fn render_failure(req: &Request, failure: &Failure) -> Response;

    /// Garbage collection: one page of the blobs the repository still needs, from `cursor`
    /// (none: the first page). `crate::live::page` cuts a walk of metadata keys into pages.
    /// An error collects nothing.
    fn live_blobs_page(
        host: &impl Host,
        repo: &Repository,
        cursor: Option<&str>,
    ) -> Result<LivePage, HostError>;

    /// Every page of `live_blobs_page` at once, sorted, each digest once: for tests, never for
    /// the host (which takes the pages one at a time).
    fn live_blobs(host: &impl Host, repo: &Repository) -> Result<Vec<String>, HostError> {
        let (mut all, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let page = Self::live_blobs_page(host, repo, cursor.as_deref())?;
            all.extend(page.digests);
            match page.next {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                Some(next) => {
                    return Err(HostError::Internal(format!(
                        "live-blobs-page stuck at {next:?}"
                    )));
                }
                None => {
                    all.sort();
                    all.dedup();
                    return Ok(all);
                }
            }
        }
    }

    /// Garbage collection, before `live_blobs`: remove what a local repository's cleanup rules
    /// select from the format's metadata. A format that has no notion of tags answers that it
    /// cannot (the host logs it and leaves the repository as it was).
    fn cleanup(
        host: &impl Host,
        repo: &Repository,
        rules: &CleanupRules,
        now: u64,
    ) -> Result<CleanupReport, String> {
        let _ = (host, repo, rules, now);
        Err(format!(
            "the {} format does not support cleanup rules",
            Self::INFO.format
        ))
    }
}
