//! Each repository's share of the plugin instances. A plugin call can wait on an upstream inside
//! a host call (a slow token realm, a remote that dribbles a manifest), holding its instance the
//! while; without a share, one slow remote with many clients would take every instance and
//! stall every other repository, local ones included.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use crate::repos::Repository;

pub struct Shares {
    per_repository: usize,
    /// By repository name; one entry per repository ever called (admins create repositories).
    by_name: RwLock<HashMap<String, Arc<Semaphore>>>,
}

impl Shares {
    pub fn new(per_repository: u32) -> Shares {
        Shares { per_repository: per_repository.max(1) as usize, by_name: RwLock::new(HashMap::new()) }
    }

    /// The semaphore `repo`'s calls take a permit of; None for a request with no repository,
    /// which only needs a slot.
    pub fn of(&self, repo: Option<&Repository>) -> Option<Arc<Semaphore>> {
        let name = repo?.name.as_str();
        if let Some(s) = self.by_name.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Some(s.clone());
        }
        let mut by_name = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        Some(by_name.entry(name.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_repository))).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str) -> Repository {
        let input = crate::repos::RepositoryInput {
            name: Some(name.into()),
            repo_type: Some("local".into()),
            format: Some("docker".into()),
            ..Default::default()
        };
        input.validate(None, &["docker".to_string()]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn one_share_per_repository_and_none_without_one() {
        let shares = Shares::new(2);
        let (a, b) = (repo("a"), repo("b"));
        let sa = shares.of(Some(&a)).unwrap_or_else(|| unreachable!());
        assert!(Arc::ptr_eq(&sa, &shares.of(Some(&a)).unwrap_or_else(|| unreachable!())));
        let _held = (sa.try_acquire(), sa.try_acquire());
        assert!(sa.try_acquire().is_err(), "a repository holds at most its share");
        let sb = shares.of(Some(&b)).unwrap_or_else(|| unreachable!());
        assert!(sb.try_acquire().is_ok(), "another repository's share is its own");
        assert!(shares.of(None).is_none());
    }
}
