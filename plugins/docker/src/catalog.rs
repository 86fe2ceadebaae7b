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
    let (last, want) = (paging.last.as_deref(), paging.n);
    let (page, next) = match (&req.mount, &req.repository) {
        (Mount::Root, _) => paging::page_from(
            every_repository(host, last, want).map(Ok::<_, HostError>),
            &paging,
        )?,
        (_, Some(repo)) if repo.repo_type == RepoType::Virtual => (Vec::new(), None),
        (_, Some(_)) => {
            paging::page_from(meta::image_names_after(host, None, last, want), &paging)?
        }
        (_, None) => {
            return Err(RegistryError::new(
                ErrorCode::NameUnknown,
                "no repository for this request",
            ));
        }
    };
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

/// `<repository>/<image>` for every image of every repository after `last`, in lexical order,
/// read a page at a time. Repository names hold no '/', so the order is by `<repository>/`, then
/// by image. A repository whose metadata cannot be read is left out (and logged) rather than
/// failing the whole listing.
fn every_repository<'h, H: Host>(
    host: &'h H,
    last: Option<&'h str>,
    want: Option<usize>,
) -> impl Iterator<Item = String> + 'h {
    let mut repos: Vec<String> = host
        .repositories()
        .into_iter()
        .filter(|r| r.repo_type != RepoType::Virtual)
        .map(|r| format!("{}/", r.name))
        .collect();
    repos.sort();
    repos.dedup();
    repos.into_iter().flat_map(move |prefix| {
        // Where this repository's names start: after the part of `last` inside it; from its
        // first when it sorts after `last`; nowhere when all of it sorts before.
        let from = match last {
            None => Some(None),
            Some(l) => match l.strip_prefix(prefix.as_str()) {
                Some(rest) => Some(Some(rest)),
                None if prefix.as_str() > l => Some(None),
                None => None,
            },
        };
        let repo = prefix.trim_end_matches('/').to_owned();
        from.into_iter().flat_map(move |from| {
            let (repo, prefix) = (repo.clone(), prefix.clone());
            meta::image_names_after(host, Some(&repo), from, want)
                .map_while(move |name| match name {
                    Ok(name) => Some(name),
                    Err(e) => {
                        log_unreadable(host, &repo, &e);
                        None
                    }
                })
                .map(move |name| format!("{prefix}{name}"))
        })
    })
}

fn log_unreadable(host: &impl Host, repo: &str, e: &HostError) {
    host.log(
        Level::Warn,
        &format!("catalog: repository {repo} left out: {e}"),
    );
}
