//! Local (hosted) repositories: served from the repository's own metadata and store. Push
//! arrives with contract 0.2.0; until then a local repository only has what was put there.

use crate::contract::{Host, Plan, Request};
use crate::error::{ErrorCode, RegistryError};
use crate::meta;
use crate::plan;
use crate::reference::{Digest, Name, Reference};
use crate::store;
use crate::tags::{self, Paging};
use serde_json::json;

pub fn manifest(
    host: &impl Host,
    name: &Name,
    reference: &Reference,
) -> Result<Plan, RegistryError> {
    let unknown = || {
        RegistryError::new(ErrorCode::ManifestUnknown, "manifest unknown")
            .with_detail(json!({ "name": name.as_str(), "reference": reference.as_str() }))
    };
    match reference {
        Reference::Tag(tag) => {
            let link = meta::get_tag(host, name, tag)?.ok_or_else(unknown)?;
            let digest = Digest::parse(&link.digest).map_err(|_| unknown())?;
            if !store::blob_present(host, &digest)? {
                return Err(unknown());
            }
            Ok(plan::serve_manifest(&digest, &link.media_type))
        }
        Reference::Digest(digest) => {
            let media_type = store::stored_manifest(host, digest)?.ok_or_else(unknown)?;
            Ok(plan::serve_manifest(digest, &media_type))
        }
    }
}

pub fn blob(host: &impl Host, digest: &Digest) -> Result<Plan, RegistryError> {
    if store::blob_present(host, digest)? {
        Ok(plan::serve_blob(digest))
    } else {
        Err(
            RegistryError::new(ErrorCode::BlobUnknown, "blob unknown to registry")
                .with_detail(json!({ "digest": digest.as_str() })),
        )
    }
}

pub fn tag_list(
    host: &impl Host,
    req: &Request,
    name: &Name,
    paging: &Paging,
) -> Result<Plan, RegistryError> {
    let all = meta::list_tags(host, name)?;
    if all.is_empty() {
        return Err(RegistryError::new(
            ErrorCode::NameUnknown,
            "repository name not known to registry",
        )
        .with_detail(json!({ "name": name.as_str() })));
    }
    let client_name = tags::client_name(req, name.as_str());
    let (page, next) = tags::paginate(&all, paging);
    Ok(Plan::Respond(tags::response(
        req,
        &client_name,
        page,
        next.as_ref(),
    )))
}
