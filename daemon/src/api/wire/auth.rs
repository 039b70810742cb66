//! Console sign-in through the directory: `/v1/auth/…`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The directory account name (what `user_filter`'s `{user}` is replaced by).
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The signed-in user (login, `GET /v1/auth/session`). With an API key instead of a session,
/// `user` is the key's name and `expires_at` / `csrf_token` are absent.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    pub user: String,
    /// `session` (directory sign-in, cookie) or `api_key`.
    pub method: &'static str,
    pub scopes: Vec<String>,
    /// The usage group the calls are counted in (null: none).
    #[serialize_always]
    pub group: Option<String>,
    /// Unix seconds when the session ends.
    pub expires_at: Option<u64>,
    /// Send as `X-CSRF-Token` with every request that is not GET or HEAD.
    pub csrf_token: Option<String>,
}

/// `GET /v1/auth/methods`: how the console may sign in.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthMethods {
    /// Always true: an API key.
    pub api_key: bool,
    /// Whether `[auth.ldap]` is configured (username and password).
    pub directory: bool,
}

/// `POST /v1/auth/logout`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoggedOut {
    /// Whether a session was open (false for an API key: there is nothing to close).
    pub closed: bool,
}
