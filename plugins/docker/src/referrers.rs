//! `GET /v2/<name>/referrers/<digest>[?artifactType=…]`: the manifests of an image that name
//! the digest as their subject, as an OCI image index. Always 200: an unknown subject simply
//! has no referrers (they may be pushed before it).

use crate::contract::{Host, Plan, Request, Response};
use crate::error::RegistryError;
use crate::media_type::OCI_INDEX;
use crate::meta::{self, Referrer};
use crate::plan::FILTERS_APPLIED_HEADER;
use crate::reference::{Digest, Name};
use crate::url;
use serde_json::json;

/// The `artifactType` filter of the request, if any.
pub fn artifact_type_filter(req: &Request) -> Option<String> {
    url::query_param(req.query.as_deref(), "artifactType").filter(|t| !t.is_empty())
}

pub fn local(
    host: &impl Host,
    req: &Request,
    name: &Name,
    subject: &Digest,
) -> Result<Plan, RegistryError> {
    let filter = artifact_type_filter(req);
    let referrers: Vec<Referrer> = meta::list_referrers(host, name, subject)?
        .into_iter()
        .filter(|r| {
            filter
                .as_deref()
                .is_none_or(|f| r.artifact_type.as_deref() == Some(f))
        })
        .collect();
    Ok(Plan::Respond(index(&referrers, filter.is_some())))
}

/// An image index of `manifests`; `filtered` says the artifactType filter was applied.
pub fn index(manifests: &[Referrer], filtered: bool) -> Response {
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut headers = vec![("Content-Type".to_owned(), OCI_INDEX.to_owned())];
    if filtered {
        headers.push((FILTERS_APPLIED_HEADER.to_owned(), "artifactType".to_owned()));
    }
    Response {
        status: 200,
        headers,
        body: body.to_string().into_bytes(),
    }
}
