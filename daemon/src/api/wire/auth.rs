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

/// `GET /v1/me`: what the calling key (or signed-in user) may do, so a client shows exactly
/// that: the console's tabs, controls and collection lists come from here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The key's id (as `edgeseek keys list` shows it), or `user:NAME` for a directory sign-in.
    pub id: String,
    /// The key's name, or the signed-in user.
    pub name: String,
    /// `api_key` or `session`.
    pub method: &'static str,
    pub scopes: Vec<String>,
    /// The usage group the calls are counted in (null: none).
    pub group: Option<String>,
    pub can: Capabilities,
    /// Agents the key may chat with: names, or `*` for every agent.
    pub agents: Vec<String>,
    /// Whether the knowledge base is available (false: off, or still loading).
    pub knowledge: bool,
    /// The existing collections the key may read, with whether it may also write them.
    pub collections: Vec<CollectionAccess>,
    pub limits: Limits,
}

/// What the scopes allow, as yes or no.
#[derive(Debug, Serialize, ToSchema)]
pub struct Capabilities {
    pub chat: bool,
    pub embeddings: bool,
    pub web_search: bool,
    pub admin: bool,
    /// Any knowledge-base scope (`kb:read:…` or `kb:write:…`), or admin.
    pub knowledge: bool,
    /// May create collections: some `kb:write:…` scope, or admin.
    pub create_collections: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionAccess {
    pub name: String,
    pub read: bool,
    pub write: bool,
}

/// The key's limits (null: no limit of that kind).
#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// Requests of this key running at once (the server's `max_inflight_per_key`).
    pub max_inflight: usize,
    /// The token quotas of the key and of its group, with what is used so far.
    pub quotas: Vec<QuotaUse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaUse {
    /// `key` or `group`.
    pub applies_to: &'static str,
    /// `day` or `month` (UTC).
    pub period: &'static str,
    pub used: u64,
    pub limit: u64,
    /// Unix seconds when the period ends.
    pub resets_at: u64,
}
