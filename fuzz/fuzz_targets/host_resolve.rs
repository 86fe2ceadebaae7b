//! Request paths and `Host` headers through the host's routing (`host/src/server/resolve.rs`),
//! compiled unchanged against a fixed table of repositories and plugins (the stubs below stand
//! for the server's registries and answer as they do). Checked on every input: a repository
//! reached is one of the table's and its own plugin serves it; the path a plugin sees is absolute
//! and is what the request named after the repository's mount; the path method takes only names
//! with `-`, `_` or `.`; only a trusted proxy moves the base URL.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

mod plugins {
    use std::sync::Arc;

    pub mod bindings {
        pub mod types {
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub enum Mount {
                Port,
                Host,
                Prefix,
                Path,
                Root,
            }
        }
    }

    pub struct Meta {
        pub format: String,
        pub roots: Vec<String>,
    }

    pub struct LoadedPlugin {
        pub meta: Meta,
    }

    pub struct Plugins(pub Vec<Arc<LoadedPlugin>>);

    impl Plugins {
        pub fn get(&self, format: &str) -> Option<Arc<LoadedPlugin>> {
            self.0.iter().find(|p| p.meta.format == format).cloned()
        }

        /// As `host/src/plugins/registry.rs`: the longest root the path starts with, and its
        /// length when the path goes on under it.
        pub fn by_root(&self, path: &str) -> Option<(Arc<LoadedPlugin>, Option<usize>)> {
            let mut best: Option<(&Arc<LoadedPlugin>, &String)> = None;
            for p in &self.0 {
                for root in &p.meta.roots {
                    let matches = path.starts_with(root.as_str()) || path == root.trim_end_matches('/');
                    if matches && best.is_none_or(|(_, r)| root.len() > r.len()) {
                        best = Some((p, root));
                    }
                }
            }
            best.map(|(p, r)| (p.clone(), path.starts_with(r.as_str()).then_some(r.len())))
        }
    }
}

mod repos {
    use std::sync::Arc;

    pub struct Repository {
        pub name: String,
        pub format: String,
        pub port: Option<u16>,
        pub hostname: Option<&'static str>,
        pub default: bool,
    }

    pub struct Repos(pub Vec<Arc<Repository>>);

    impl Repos {
        pub fn get(&self, name: &str) -> Option<Arc<Repository>> {
            self.0.iter().find(|r| r.name == name).cloned()
        }
        pub fn by_port(&self, port: u16) -> Option<Arc<Repository>> {
            self.0.iter().find(|r| r.port == Some(port)).cloned()
        }
        pub fn by_hostname(&self, host: &str) -> Option<Arc<Repository>> {
            // as `host/src/repos.rs`: host names match without case
            self.0.iter().find(|r| r.hostname.is_some_and(|h| h.eq_ignore_ascii_case(host))).cloned()
        }
        pub fn default_repository(&self) -> Option<Arc<Repository>> {
            self.0.iter().find(|r| r.default).cloned()
        }
    }
}

// At the root (a `#[path]` inside an inline module would name a directory that does not exist):
// `super::forwarded` in resolve.rs is this one.
#[path = "../../host/src/server/forwarded.rs"]
#[allow(dead_code, unused_imports)]
pub mod forwarded;
#[path = "../../host/src/server/resolve.rs"]
#[allow(dead_code, unused_imports)]
pub mod resolve;

pub struct App {
    pub tls: Option<()>,
    pub plugins: plugins::Plugins,
    pub repos: repos::Repos,
}

use plugins::bindings::types::Mount;
use resolve::{ResolveError, resolve};

fn app() -> App {
    let plugin = |format: &str, root: &str| {
        Arc::new(plugins::LoadedPlugin { meta: plugins::Meta { format: format.into(), roots: vec![root.into()] } })
    };
    let repo = |name: &str, format: &str, port, hostname, default| {
        Arc::new(repos::Repository { name: name.into(), format: format.into(), port, hostname, default })
    };
    App {
        tls: None,
        plugins: plugins::Plugins(vec![plugin("docker", "/v2/"), plugin("helm", "/helm/"), plugin("go", "/go/")]),
        repos: repos::Repos(vec![
            repo("docker-remote", "docker", None, None, true),
            repo("docker-local", "docker", Some(5001), None, false),
            repo("docker", "docker", None, None, false),
            repo("team", "docker", None, None, false),
            repo("helm-local", "helm", None, Some("charts.example.com"), false),
            repo("go.local", "go", Some(5002), None, false),
            repo("orphan-x", "maven", None, None, false),
        ]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let mut parts = text.splitn(3, '\n');
    let (target, host, fwd_host) = (parts.next().unwrap_or(""), parts.next(), parts.next());
    let Ok(uri) = target.parse::<http::Uri>() else { return };
    let mut headers = http::HeaderMap::new();
    for (name, value) in [("host", host), ("x-forwarded-host", fwd_host)] {
        if let Some(v) = value.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    let (main_listener, forwarded) = (flags & 1 == 0, flags & 2 != 0);
    let port = [8081, 5001, 5002, 6000][usize::from(flags >> 2 & 3)];
    let app = app();
    let path = uri.path();
    match resolve(&app, main_listener, port, forwarded, (&uri, &headers)) {
        Ok(r) => {
            // `*`: the asterisk form of `OPTIONS *`, passed on as it came
            assert!(r.path.starts_with('/') || r.path == "*", "{target:?} -> {:?}", r.path);
            assert!(r.base_url.starts_with("http://"), "{:?}", r.base_url);
            if let Some(repo) = &r.repo {
                assert!(app.repos.get(&repo.name).is_some_and(|known| Arc::ptr_eq(&known, repo)));
                assert_eq!(repo.format, r.plugin.meta.format, "{target:?}: {} served by the wrong plugin", repo.name);
            }
            match r.mount {
                Mount::Port | Mount::Host | Mount::Root => {
                    assert!(r.path == path || (path.is_empty() && r.path == "/"), "{target:?} -> {:?}", r.path);
                }
                Mount::Prefix => {
                    let repo = r.repo.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
                    let mount = format!("/repo/{repo}");
                    assert!(path.starts_with(&mount), "{target:?}");
                    assert!(path[mount.len()..].trim_start_matches('/') == r.path.trim_start_matches('/'), "{target:?} -> {:?}", r.path);
                    assert!(r.base_url.ends_with(&mount) || forwarded, "{:?}", r.base_url);
                }
                Mount::Path => {
                    let name = r.path_repo.as_deref().unwrap_or_default();
                    assert!(name.contains(['-', '_', '.']), "{target:?} took {name:?} by the path method");
                    assert!(path.contains(&format!("/{name}/")), "{target:?}");
                    assert_eq!(path.replacen(&format!("{name}/"), "", 1), r.path, "{target:?}");
                }
            }
            if !forwarded {
                let seen = headers.get("host").and_then(|v| v.to_str().ok()).or(uri.authority().map(|a| a.as_str())).unwrap_or("localhost");
                assert!(r.base_url.starts_with(&format!("http://{seen}")), "{target:?}: base URL {:?} from an untrusted peer", r.base_url);
            }
        }
        Err(ResolveError::UnknownRepository(name)) => assert!(path.starts_with("/repo/") && app.repos.get(&name).is_none()),
        Err(ResolveError::NoRoute(_)) => assert!(!path.starts_with("/v2/") && !path.starts_with("/repo/")),
        Err(ResolveError::NoPlugin { repo, .. }) => assert_eq!(repo, "orphan-x"),
    }
});
