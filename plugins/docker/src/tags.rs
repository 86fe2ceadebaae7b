//! `GET /v2/<name>/tags/list`: the body, pagination (`n`, `last`) and the `Link` to the next
//! page, addressed the way the client reached us.

use crate::contract::{Request, Response};
use crate::paging::{self, Paging};
use crate::plan;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct TagList {
    pub name: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// The name the client used, which includes the repository segment of the path method.
pub fn client_name(req: &Request, name: &str) -> String {
    match &req.path_repo {
        Some(repo) => format!("{repo}/{name}"),
        None => name.to_owned(),
    }
}

/// `<…/v2/<client name>/tags/list?n=…&last=…>; rel="next"`
pub fn next_link(req: &Request, client_name: &str, next: &Paging) -> String {
    let endpoint = format!(
        "{}/v2/{client_name}/tags/list",
        req.base_url.trim_end_matches('/')
    );
    paging::next_link(&endpoint, next)
}

/// The paging of an upstream's `Link: <…?n=…&last=…>; rel="next"` header.
pub fn paging_from_link(link: &str) -> Option<Paging> {
    if !link.contains("rel=\"next\"") && !link.contains("rel=next") {
        return None;
    }
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?').map(|(_, q)| q);
    Paging::from_query(query).ok().filter(|p| p.last.is_some())
}

pub fn response(
    req: &Request,
    client_name: &str,
    tags: Vec<String>,
    next: Option<&Paging>,
) -> Response {
    let body = serde_json::json!({ "name": client_name, "tags": tags })
        .to_string()
        .into_bytes();
    let mut resp = plan::json(200, body);
    if let Some(next) = next {
        resp.headers
            .push(("Link".to_owned(), next_link(req, client_name, next)));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn req(path_repo: Option<&str>) -> Request {
        Request {
            method: "GET".into(),
            path: "/v2/redis/tags/list".into(),
            query: None,
            headers: vec![],
            base_url: "http://h:8081".into(),
            path_repo: path_repo.map(Into::into),
            repository: None,
            mount: crate::contract::Mount::Port,
            now: 0,
            caller: Default::default(),
        }
    }

    #[test]
    fn links_use_the_client_view() {
        let r = req(Some("docker-remote"));
        let name = client_name(&r, "redis");
        assert_eq!(name, "docker-remote/redis");
        let next = Paging {
            n: Some(2),
            last: Some("b".into()),
        };
        assert_eq!(
            next_link(&r, &name, &next),
            "<http://h:8081/v2/docker-remote/redis/tags/list?n=2&last=b>; rel=\"next\""
        );
    }

    #[test]
    fn upstream_links() {
        assert_eq!(
            paging_from_link("</v2/library/redis/tags/list?last=7&n=2>; rel=\"next\""),
            Some(Paging {
                n: Some(2),
                last: Some("7".into())
            })
        );
        assert_eq!(
            paging_from_link("</v2/x/tags/list?last=7>; rel=\"prev\""),
            None
        );
        assert_eq!(paging_from_link("garbage"), None);
    }

    #[test]
    fn body() {
        let r = response(&req(None), "redis", tags(&["7"]), None);
        assert_eq!(r.body, br#"{"name":"redis","tags":["7"]}"#.to_vec());
        assert!(r.headers.iter().all(|(k, _)| k != "Link"));
    }
}
