//! `GET /v2/_catalog?n=&last=`: the image names clients can use, sorted and paginated.
//!
//! Through a mount that names one repository (port, host, prefix, path) the names are that
//! repository's images, as the client addresses them under that mount. At the root, where
//! the path method is how clients name repositories, every image of every repository of
//! this format, as `<repository>/<image>`. Virtual repositories have no images of their own
//! (their members' are listed); remote ones list the images they hold tags for.

use crate::contract::{Host, HostError, Level, Mount, Plan, RepoType, Request};
use crate::error::{ErrorCode, RegistryError};
use crate::meta;
use crate::paging::{self, Paging};
use crate::plan;
use crate::url;

pub fn list(host: &impl Host, req: &Request) -> Result<Plan, RegistryError> {
    let paging = Paging::from_query(req.query.as_deref())?;
    let all = match (&req.mount, &req.repository) {
        (Mount::Root, _) => every_repository(host),
        (_, Some(repo)) if repo.repo_type == RepoType::Virtual => Vec::new(),
        (_, Some(_)) => meta::image_names(|prefix| host.meta_list(prefix))?,
        (_, None) => {
            return Err(RegistryError::new(
                ErrorCode::NameUnknown,
                "no repository for this request",
            ));
        }
    };
    let (page, next) = paging::paginate(&all, &paging);
    let body = serde_json::json!({ "repositories": page })
        .to_string()
        .into_bytes();
    let mut resp = plan::json(200, body);
    if let Some(next) = next {
        let endpoint = url::client_url(req, "_catalog");
        resp.headers
            .push(("Link".to_owned(), paging::next_link(&endpoint, &next)));
    }
    Ok(Plan::Respond(resp))
}

/// `<repository>/<image>` for every image of every repository. A repository whose metadata
/// cannot be read is left out (and logged) rather than failing the whole listing.
fn every_repository(host: &impl Host) -> Vec<String> {
    let mut all = Vec::new();
    for repo in host.repositories() {
        if repo.repo_type == RepoType::Virtual {
            continue;
        }
        let names = meta::image_names(|prefix| host.meta_list_in(&repo.name, prefix));
        match names {
            Ok(names) => all.extend(names.into_iter().map(|n| format!("{}/{n}", repo.name))),
            Err(e) => log_unreadable(host, &repo.name, &e),
        }
    }
    all.sort();
    all.dedup();
    all
}

fn log_unreadable(host: &impl Host, repo: &str, e: &HostError) {
    host.log(
        Level::Warn,
        &format!("catalog: repository {repo} left out: {e}"),
    );
}
