//! The audit trail: one structured line per write, delete, configuration change and failed
//! login, at info level under the target `audit` (`RUST_LOG=audit=info` keeps only these).

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused by permissions (403).
    Denied,
    /// Refused credentials (401), or an action that failed.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

/// One audited action.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Who: `Identity::name()`, or for a failed login the name that was tried.
    pub user: &'a str,
    pub client: IpAddr,
    /// The repository acted on, if any.
    pub repository: Option<&'a str>,
    /// What was done: `push`, `delete`, `login`, `repository.update`, `user.create`, `gc` …
    pub action: &'a str,
    pub outcome: Outcome,
    /// Free text: a digest, a tag, why it failed.
    pub detail: Option<&'a str>,
}

/// Writes `event` as one log line. Field values are quoted and escaped by the formatter, so a
/// user name tried by a client cannot forge a line.
pub fn audit(event: &AuditEvent) {
    tracing::info!(
        target: "audit",
        user = event.user,
        client = %event.client,
        repository = event.repository.unwrap_or("-"),
        action = event.action,
        outcome = event.outcome.as_str(),
        detail = event.detail.unwrap_or(""),
        "audit"
    );
}
