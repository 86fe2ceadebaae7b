//! What can go wrong, and whose fault it is.

use http::StatusCode;

use super::files::FileError;
use super::names::{NameError, UserName};
use super::password::{HashError, HasherGone, PasswordError};
use super::users::FixedUserError;

/// The auth data could not be opened: the operator's configuration or the data directory.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth data: {0}")]
    File(#[from] FileError),
    #[error(transparent)]
    FixedUser(#[from] FixedUserError),
    #[error("user {0} is defined twice in the configuration file")]
    DuplicateConfigUser(UserName),
    #[error("BINARYREPO_ADMIN_PASSWORD: {0}")]
    AdminPassword(PasswordError),
    #[error("creating the first admin: {0}")]
    Hash(#[from] HasherGone),
}

/// Why a request's credentials were refused. All but `Unavailable` are the client's doing and
/// answer 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("incorrect user name or password")]
    BadCredentials,
    #[error("token is not valid")]
    InvalidToken,
    #[error("token has expired")]
    ExpiredToken,
    /// The server could not check the credentials (shutting down): 503, not counted as a failure.
    #[error("credentials could not be checked: {0}")]
    Unavailable(String),
}

impl AuthFailure {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthFailure::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl From<HasherGone> for AuthFailure {
    fn from(e: HasherGone) -> AuthFailure {
        AuthFailure::Unavailable(e.to_string())
    }
}

/// A user or token management request refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("user {0} already exists")]
    Exists(UserName),
    #[error("user {name} is defined in the {defined_in} file; change it there")]
    ReadOnly { name: UserName, defined_in: &'static str },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("password_hash: {0}")]
    Hash(#[from] HashError),
    #[error("give a password or a password_hash, not both")]
    PasswordAndHash,
    #[error("a new user needs a password or a password_hash")]
    NoPassword,
    #[error("{0} is the last admin; make another user admin first")]
    LastAdmin(UserName),
    #[error("no token {0:?}")]
    NoSuchToken(String),
    #[error("token name must be 1 to {max} characters, no control characters", max = super::api_tokens::MAX_NAME_CHARS)]
    TokenName,
    #[error("expires_in_seconds must be at least 1")]
    TokenExpiry,
    #[error("user {0} already has {max} tokens; revoke one first", max = super::api_tokens::MAX_PER_USER)]
    TooManyTokens(UserName),
    /// The server's fault: the change was not saved (and not made).
    #[error("saving auth data failed: {}", .0.reason())]
    Persist(#[from] FileError),
    #[error(transparent)]
    Unavailable(#[from] HasherGone),
}

impl UserError {
    /// The status a management API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            UserError::NoSuchUser(_) | UserError::NoSuchToken(_) => StatusCode::NOT_FOUND,
            UserError::Exists(_) | UserError::ReadOnly { .. } | UserError::LastAdmin(_) | UserError::TooManyTokens(_) => {
                StatusCode::CONFLICT
            }
            UserError::Persist(e) if e.is_out_of_space() => StatusCode::SERVICE_UNAVAILABLE,
            UserError::Persist(e) if e.is_conflict() => StatusCode::CONFLICT,
            UserError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
            UserError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}
