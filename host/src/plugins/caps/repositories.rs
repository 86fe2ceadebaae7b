//! `repositories`: the repositories of the calling plugin's format (catalogs, mounts).

use super::Scope;
use crate::plugins::bindings::types::Repository;
use crate::plugins::wit_repository;

pub fn list(state: &Scope) -> Vec<Repository> {
    let Ok(format) = state.format() else { return Vec::new() };
    state.caps.repos.list().iter().filter(|r| r.format == format && state.readable.may_read(r)).map(|r| wit_repository(r)).collect()
}
