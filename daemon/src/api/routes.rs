//! The route table: every route the server answers, declared once with what the gate must
//! check before its handler runs and what the API description says about it. Adding a route is
//! one entry here (then `EDGESEEK_BLESS=1 cargo test --lib api::openapi` regenerates
//! `daemon/openapi.json`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use hyper::Response;
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use super::gate::{BodyRule, Call, Limit};
#[allow(clippy::wildcard_imports)]
use super::openapi::*;
use super::wire::{
    admin, auth as auth_wire, chat as chat_wire, embeddings as embeddings_wire, kb as kb_wire,
    models, List,
};
use super::{
    admin_http, agents_http, auth_http, basic, chat, console, embeddings, kb, models_http,
    usage_http, Body,
};
use crate::keys::Scope;
use utoipa::openapi::path::ParameterIn;

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ApiError>> + Send>>;
pub type Handler = fn(Call) -> HandlerFuture;

/// Who may call a route (checked by the gate before the body is read).
#[derive(Clone, Copy)]
pub enum Access {
    /// Anyone (health, the console's static files, the API description).
    Public,
    /// Loopback peers without a key (the appliance's own Prometheus); others need `admin`.
    LoopbackOrAdmin,
    /// Any valid key; what it may see is filtered by the handler (model and collection lists).
    Key,
    /// A key with this scope, computed from the path parameters.
    Scope(fn(&Params) -> Scope),
}

/// When the request is admitted against the key's limits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admit {
    /// Not rate-limited (public routes, model listing).
    No,
    /// One request, by the gate, before the body is read.
    One,
    /// By the handler right after parsing, because the cost depends on the body (`n`, the
    /// prompt); the gate refuses a handler that returns without admitting.
    ByHandler,
}

pub struct Route {
    pub method: &'static str,
    /// `/`-separated; `{name}` matches one non-empty, percent-decoded segment.
    pub path: &'static str,
    pub access: Access,
    pub admit: Admit,
    pub body: BodyRule,
    pub handler: Handler,
    /// What `/openapi.json` says about the route.
    pub doc: OpDoc,
}

/// Decoded path parameters, by the names in the route's pattern.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `handler!(f)`: an `async fn(Call) -> Result<Response<Body>, ApiError>` as a table entry.
macro_rules! handler {
    ($f:path) => {{
        fn h(c: Call) -> HandlerFuture {
            Box::pin($f(c))
        }
        h as Handler
    }};
}

fn chat_scope(_: &Params) -> Scope {
    Scope::Chat
}
fn embeddings_scope(_: &Params) -> Scope {
    Scope::Embeddings
}
fn admin_scope(_: &Params) -> Scope {
    Scope::Admin
}
fn kb_read(p: &Params) -> Scope {
    Scope::KbRead(p.get("collection").unwrap_or_default().to_string())
}
fn kb_write(p: &Params) -> Scope {
    Scope::KbWrite(p.get("collection").unwrap_or_default().to_string())
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    admit: Admit,
    body: BodyRule,
    handler: Handler,
    doc: OpDoc,
) -> Route {
    Route {
        method,
        path,
        access,
        admit,
        body,
        handler,
        doc,
    }
}

use Access::{Key, LoopbackOrAdmin, Public};
use Admit::{ByHandler, No, One};
use BodyRule::{Json, Stream};

/// Every route. Order matters only for readability: patterns never overlap.
pub fn table() -> &'static [Route] {
    TABLE
}

const NO_BODY: BodyRule = BodyRule::None;
const SMALL: BodyRule = Json(Limit::Small);
const INFERENCE: BodyRule = Json(Limit::Inference);

static TABLE: &[Route] = &[
            route(
                "GET",
                "/",
                Public,
                No,
                NO_BODY,
                handler!(console::index),
                OpDoc {
                operation_id: Some("console"),
                description: Some("The web console (chat, knowledge, admin), embedded in the binary. gzip when the client accepts it; ETag with `Cache-Control: no-cache` (304 on a match); a strict Content-Security-Policy."),
                auth: Auth::Open,
                ok: ("200", "index.html", &[("text/html", TEXT)]),
                other: &[("304", "Not modified (If-None-Match)")],
                ..OpDoc::new("Browser console")
            },
            ),
            route(
                "GET",
                "/console/{asset}",
                Public,
                No,
                NO_BODY,
                handler!(console::asset),
                OpDoc {
                operation_id: Some("consoleAsset"),
                description: Some("A file of the console (ES modules, CSS, icon), with the same caching and compression as `/`."),
                auth: Auth::Open,
                params: &[path_param("asset", Some("File name, e.g. `app.js`"))],
                ok: ("200", "The file", &[("text/javascript", TEXT), ("text/css", TEXT), ("image/svg+xml", TEXT)]),
                other: &[("304", "Not modified (If-None-Match)")],
                errors: &["404"],
                ..OpDoc::new("Console asset")
            },
            ),
            route(
                "GET",
                "/healthz",
                Public,
                No,
                NO_BODY,
                handler!(basic::healthz),
                OpDoc {
                operation_id: Some("healthz"),
                auth: Auth::Open,
                ok: ("200", "The process is alive", &[(JSON, named::<models::Health>())]),
                ..OpDoc::new("Liveness")
            },
            ),
            route(
                "GET",
                "/readyz",
                Public,
                No,
                NO_BODY,
                handler!(basic::readyz),
                OpDoc {
                operation_id: Some("readyz"),
                auth: Auth::Open,
                ok: ("200", "Serving", &[(JSON, named::<models::Ready>())]),
                errors: &["503"],
                ..OpDoc::new("Readiness: the model is loaded")
            },
            ),
            route(
                "GET",
                "/metrics",
                LoopbackOrAdmin,
                No,
                NO_BODY,
                handler!(basic::metrics),
                OpDoc {
                operation_id: Some("metrics"),
                description: Some("Without a key from loopback; from elsewhere an admin-scoped key is required."),
                auth: Auth::LoopbackOrBearer,
                ok: ("200", "Prometheus text format 0.0.4", &[("text/plain", TEXT)]),
                errors: &["401", "403"],
                ..OpDoc::new("Prometheus metrics")
            },
            ),
            route(
                "GET",
                "/openapi.json",
                Public,
                No,
                NO_BODY,
                handler!(basic::openapi),
                OpDoc {
                operation_id: Some("openapi"),
                auth: Auth::Open,
                ok: ("200", "OpenAPI 3.1", &[(JSON, OBJECT)]),
                ..OpDoc::new("This document")
            },
            ),
            route(
                "GET",
                "/v1/auth/methods",
                Public,
                No,
                NO_BODY,
                handler!(auth_http::methods),
                OpDoc {
                operation_id: Some("authMethods"),
                description: Some("For the console's sign-in page: whether directory sign-in (`[auth.ldap]`) is configured besides API keys."),
                auth: Auth::Open,
                ok: ("200", "The sign-in methods", &[(JSON, named::<auth_wire::AuthMethods>())]),
                ..OpDoc::new("Sign-in methods")
            },
            ),
            // Public, and limited by its own attempt counter (per account and per source)
            // rather than by a key's rate limits.
            route(
                "POST",
                "/v1/auth/login",
                Public,
                No,
                SMALL,
                handler!(auth_http::login),
                OpDoc {
                operation_id: Some("authLogin"),
                description: Some("Directory sign-in (LDAP / Active Directory). The answer sets the session cookie `edgeseek_session` (`HttpOnly; Secure; SameSite=Strict`) and carries `csrf_token`: requests authenticated by the cookie that are not GET or HEAD must send it as `X-CSRF-Token`. Scopes and usage group come from the user's directory groups (`[auth.ldap.groups]`). Wrong password and unknown user are the same 401; 403 when no group of the user is mapped; 429 (with Retry-After) after 5 attempts a minute for one account or 20 from one address; 404 when directory sign-in is not configured. Sessions live in memory: a restart signs everyone out."),
                auth: Auth::Open,
                request: &[(JSON, named::<auth_wire::LoginRequest>())],
                ok: ("200", "Signed in", &[(JSON, named::<auth_wire::SessionInfo>())]),
                errors: &["400", "401", "403", "404", "413", "429", "503"],
                ..OpDoc::new("Sign in with a directory account")
            },
            ),
            route(
                "GET",
                "/v1/auth/session",
                Key,
                No,
                NO_BODY,
                handler!(auth_http::session),
                OpDoc {
                operation_id: Some("authSession"),
                description: Some("The signed-in user, scopes, usage group, expiry and CSRF token of the session cookie; with a bearer key, the key's name and scopes (`method: api_key`)."),
                ok: ("200", "Who is signed in", &[(JSON, named::<auth_wire::SessionInfo>())]),
                errors: &["401"],
                ..OpDoc::new("The current session")
            },
            ),
            route(
                "POST",
                "/v1/auth/logout",
                Key,
                No,
                NO_BODY,
                handler!(auth_http::logout),
                OpDoc {
                operation_id: Some("authLogout"),
                description: Some("Closes the session of the cookie (which needs `X-CSRF-Token`) and clears the cookie; with a bearer key there is nothing to close."),
                ok: ("200", "Signed out", &[(JSON, named::<auth_wire::LoggedOut>())]),
                errors: &["401", "403"],
                ..OpDoc::new("Sign out")
            },
            ),
            route(
                "GET",
                "/v1/me",
                Key,
                No,
                NO_BODY,
                handler!(auth_http::me),
                OpDoc {
                operation_id: Some("me"),
                description: Some("What the calling key (or signed-in user) may do: its scopes as capabilities (chat, embeddings, web search, admin, knowledge, creating collections), the agents it may use, the existing collections it may read (and whether it may write each; listed only for keys with a knowledge scope), and its limits: requests and tokens per minute, requests at once, and each token quota of the key and its group with the tokens used so far. The console shows exactly this."),
                ok: ("200", "The caller's permissions and limits", &[(JSON, named::<auth_wire::Me>())]),
                errors: &["401"],
                ..OpDoc::new("The calling key")
            },
            ),
            route(
                "GET",
                "/v1/models",
                Key,
                No,
                NO_BODY,
                handler!(basic::models),
                OpDoc {
                operation_id: Some("listModels"),
                ok: ("200", "Models loaded and serving (empty while loading)", &[(JSON, inline::<List<models::Model>>())]),
                errors: &["401"],
                ..OpDoc::new("Loaded models")
            },
            ),
            route(
                "GET",
                "/v1/models/{model}",
                Key,
                No,
                NO_BODY,
                handler!(basic::model),
                OpDoc {
                operation_id: Some("retrieveModel"),
                params: &[path_param("model", None)],
                ok: ("200", "The model", &[(JSON, named::<models::Model>())]),
                errors: &["401", "404"],
                ..OpDoc::new("One loaded model")
            },
            ),
            route(
                "POST",
                "/v1/chat/completions",
                // `chat`, or `agent:NAME` for model `agent:NAME`: the handler checks, before
                // it reads the body when the key has neither.
                Key,
                ByHandler,
                INFERENCE,
                handler!(chat::chat),
                OpDoc {
                operation_id: Some("createChatCompletion"),
                scope: Some("chat (agent:NAME for model agent:NAME)"),
                description: Some("R1 models return the reasoning in `reasoning_content` (alias `reasoning`) and the answer in `content`, in messages and stream deltas. With stream: true each event is a `StreamChunk` of `ChatChunkChoice`s. Model `agent:NAME` runs that agent's tool loop in the server: the answer streams as `content`, each tool step as a chunk with an empty delta and an `agent_step` object, and the response (the last chunk when streamed) carries `agent` and `citations`."),
                request: &[(JSON, named::<chat_wire::ChatCompletionRequest>())],
                ok: ("200", "A chat.completion object, or with stream: true a text/event-stream of chat.completion.chunk objects ending with `data: [DONE]`", &[(JSON, inline_of::<chat_wire::Response<chat_wire::ChatChoice>, chat_wire::ChatChoice>()), ("text/event-stream", inline_of::<chat_wire::StreamChunk<chat_wire::ChatChunkChoice>, chat_wire::ChatChunkChoice>())]),
                errors: INFERENCE_ERRORS,
                ..OpDoc::new("Chat completion (JSON or server-sent events)")
            },
            ),
            route(
                "POST",
                "/v1/completions",
                Access::Scope(chat_scope),
                ByHandler,
                INFERENCE,
                handler!(chat::completion),
                OpDoc {
                operation_id: Some("createCompletion"),
                scope: Some("chat"),
                description: Some("The prompt is tokenized as is (no chat template). With stream: true each event is a `StreamChunk` of `CompletionChunkChoice`s."),
                request: &[(JSON, named::<chat_wire::CompletionRequest>())],
                ok: ("200", "A text_completion object, or with stream: true a text/event-stream ending with `data: [DONE]`", &[(JSON, inline_of::<chat_wire::Response<chat_wire::CompletionChoice>, chat_wire::CompletionChoice>()), ("text/event-stream", inline_of::<chat_wire::StreamChunk<chat_wire::CompletionChunkChoice>, chat_wire::CompletionChunkChoice>())]),
                errors: INFERENCE_ERRORS,
                ..OpDoc::new("Text completion (JSON or server-sent events)")
            },
            ),
            route(
                "POST",
                "/v1/embeddings",
                Access::Scope(embeddings_scope),
                ByHandler,
                INFERENCE,
                handler!(embeddings::create),
                OpDoc {
                operation_id: Some("createEmbedding"),
                scope: Some("embeddings"),
                description: Some("The model is the embedding model's directory name (default `all-minilm-l6-v2`, English only). An input over the model's token limit is refused (400, `param` names it, e.g. `input[3]`), never truncated. Token-id inputs are refused: they would be another tokenizer's ids. 503 when no embedding model is loaded (the message says why)."),
                request: &[(JSON, named::<embeddings_wire::EmbeddingRequest>())],
                ok: ("200", "A list of embedding objects", &[(JSON, named::<embeddings_wire::EmbeddingList>())]),
                errors: INFERENCE_ERRORS,
                ..OpDoc::new("Embeddings (unit-length vectors of the embedding model)")
            },
            ),
            route(
                "GET",
                "/v1/admin/status",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(admin_http::status),
                OpDoc {
                operation_id: Some("adminStatus"),
                scope: Some("admin"),
                description: Some("The object `edgeseek status` prints, plus `recent_tokens_per_s` (the latest sample of the history) and `sample_interval_s`."),
                ok: ("200", "Status", &[(JSON, named::<admin::AdminStatusAnswer>())]),
                errors: &["401", "403"],
                ..OpDoc::new("Daemon status")
            },
            ),
            route(
                "GET",
                "/v1/admin/keys",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(admin_http::list_keys),
                OpDoc {
                operation_id: Some("adminListKeys"),
                scope: Some("admin"),
                description: Some("Every key, revoked ones included, oldest first; never a secret or its hash."),
                ok: ("200", "Keys", &[(JSON, inline::<List<admin::ApiKey>>())]),
                errors: &["401", "403"],
                ..OpDoc::new("List API keys")
            },
            ),
            route(
                "POST",
                "/v1/admin/keys",
                Access::Scope(admin_scope),
                One,
                SMALL,
                handler!(admin_http::create_key),
                OpDoc {
                operation_id: Some("adminCreateKey"),
                scope: Some("admin"),
                description: Some("The answer carries the secret, this once (`Cache-Control: no-store`); only its SHA-256 is stored."),
                request: &[(JSON, named::<admin::ApiKeyCreate>())],
                ok: ("201", "The key and its secret", &[(JSON, named::<admin::ApiKeyCreated>())]),
                errors: &["400", "401", "403", "409", "413"],
                ..OpDoc::new("Create an API key")
            },
            ),
            route(
                "DELETE",
                "/v1/admin/keys/{id}",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(admin_http::revoke),
                OpDoc {
                operation_id: Some("adminRevokeKey"),
                scope: Some("admin"),
                description: Some("Takes effect at once. `id` is the key id (or a name that one active key has)."),
                params: &[path_param("id", None)],
                ok: ("200", "The revoked key", &[(JSON, named::<admin::ApiKey>())]),
                errors: &["401", "403", "404", "409"],
                ..OpDoc::new("Revoke an API key")
            },
            ),
            route(
                "GET",
                "/v1/admin/models",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(models_http::list),
                OpDoc {
                operation_id: Some("adminListModels"),
                scope: Some("admin"),
                description: Some("Every chat model this daemon knows (configured, or loaded since the start): state, whether `default` names it, pinned, provider, context length, memory charged against `engine.memory_budget_mb`, running and queued requests."),
                ok: ("200", "The chat models", &[(JSON, named::<super::registry::ModelList>())]),
                errors: &["401", "403"],
                ..OpDoc::new("Chat models and the memory budget")
            },
            ),
            route(
                "POST",
                "/v1/admin/models",
                Access::Scope(admin_scope),
                One,
                SMALL,
                handler!(models_http::load),
                OpDoc {
                operation_id: Some("adminLoadModel"),
                scope: Some("admin"),
                description: Some("Load a model and answer once it serves (seconds). A load that would exceed the memory budget is refused (409 `over_budget`, naming the budget); one already loaded is left as it is."),
                request: &[(JSON, named::<models_http::LoadReq>())],
                ok: ("200", "The model, ready", &[(JSON, named::<super::registry::ModelInfo>())]),
                errors: &["400", "401", "403", "404", "409", "413", "503"],
                ..OpDoc::new("Load a chat model")
            },
            ),
            route(
                "DELETE",
                "/v1/admin/models/{model}",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(models_http::unload),
                OpDoc {
                operation_id: Some("adminUnloadModel"),
                scope: Some("admin"),
                description: Some("New requests for the model get 404 at once; running ones finish (up to 60 s), then its engine stops and its memory is given back. A pinned model is refused (409)."),
                params: &[path_param("model", None)],
                ok: ("200", "The model, unloaded", &[(JSON, named::<super::registry::ModelInfo>())]),
                errors: &["401", "403", "404", "409"],
                ..OpDoc::new("Unload a chat model")
            },
            ),
            route(
                "PATCH",
                "/v1/admin/models/{model}",
                Access::Scope(admin_scope),
                One,
                SMALL,
                handler!(models_http::pin),
                OpDoc {
                operation_id: Some("adminPinModel"),
                scope: Some("admin"),
                description: Some("`{\"pinned\": true}` keeps the model loaded (an unload is refused) until it is unpinned."),
                params: &[path_param("model", None)],
                request: &[(JSON, named::<models_http::PinReq>())],
                ok: ("200", "The model", &[(JSON, named::<super::registry::ModelInfo>())]),
                errors: &["400", "401", "403", "404", "413"],
                ..OpDoc::new("Pin or unpin a chat model")
            },
            ),
            route(
                "GET",
                "/v1/admin/agents",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(agents_http::list),
                OpDoc {
                operation_id: Some("adminListAgents"),
                scope: Some("admin"),
                description: Some("Every agent, by name. Keys with scope `agent:NAME` (or `agent:*`) chat with one as model `agent:NAME`."),
                ok: ("200", "Agents", &[(JSON, inline::<List<crate::agents::Agent>>())]),
                errors: &["401", "403"],
                ..OpDoc::new("List agents")
            },
            ),
            route(
                "POST",
                "/v1/admin/agents",
                Access::Scope(admin_scope),
                One,
                SMALL,
                handler!(agents_http::create),
                OpDoc {
                operation_id: Some("adminCreateAgent"),
                scope: Some("admin"),
                description: Some("`name` and any other field of the agent (absent ones get their defaults; `created` and `updated` are set by the server, so a shown agent can be posted again under a new name)."),
                request: &[(JSON, named::<crate::agents::Agent>())],
                ok: ("201", "The agent", &[(JSON, named::<crate::agents::Agent>())]),
                errors: &["400", "401", "403", "409", "413"],
                ..OpDoc::new("Create an agent")
            },
            ),
            route(
                "GET",
                "/v1/admin/agents/{name}",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(agents_http::show),
                OpDoc {
                operation_id: Some("adminShowAgent"),
                scope: Some("admin"),
                params: &[path_param("name", None)],
                ok: ("200", "The agent", &[(JSON, named::<crate::agents::Agent>())]),
                errors: &["401", "403", "404"],
                ..OpDoc::new("One agent")
            },
            ),
            route(
                "PATCH",
                "/v1/admin/agents/{name}",
                Access::Scope(admin_scope),
                One,
                SMALL,
                handler!(agents_http::update),
                OpDoc {
                operation_id: Some("adminUpdateAgent"),
                scope: Some("admin"),
                description: Some("The fields to change; `null` clears `model`, `reasoning_budget` and `temperature`. The name cannot change."),
                params: &[path_param("name", None)],
                request: &[(JSON, named::<crate::agents::AgentPatch>())],
                ok: ("200", "The changed agent", &[(JSON, named::<crate::agents::Agent>())]),
                errors: &["400", "401", "403", "404", "413"],
                ..OpDoc::new("Change an agent")
            },
            ),
            route(
                "DELETE",
                "/v1/admin/agents/{name}",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(agents_http::delete),
                OpDoc {
                operation_id: Some("adminDeleteAgent"),
                scope: Some("admin"),
                params: &[path_param("name", None)],
                ok: ("200", "`{\"name\", \"deleted\": true}`", &[(JSON, OBJECT)]),
                errors: &["401", "403", "404"],
                ..OpDoc::new("Delete an agent")
            },
            ),
            route(
                "GET",
                "/v1/admin/tools",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(agents_http::tools),
                OpDoc {
                operation_id: Some("adminListTools"),
                scope: Some("admin"),
                description: Some("`data`: the built-in tools (with `available` and, when not, a `reason`) and the tools every `[[mcp.servers]]` entry lists now (`mcp:SERVER/TOOL`); `servers`: each MCP server with `ok` and `error`. Asks the MCP servers (their lists are cached for a minute)."),
                ok: ("200", "Tools", &[(JSON, OBJECT)]),
                errors: &["401", "403"],
                ..OpDoc::new("Tools an agent may use")
            },
            ),
            route(
                "GET",
                "/v1/admin/audit",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(admin_http::audit),
                OpDoc {
                operation_id: Some("adminAudit"),
                scope: Some("admin"),
                description: Some("Audit records, oldest first (`data`, as stored: `seq`, `time_ms`, `prev`, the event's fields, `hash`). `edgeseek audit verify` checks their chain."),
                params: &[
                    ParamDoc { name: "since", location: ParameterIn::Query, description: Some("Unix seconds: records from then on") },
                    ParamDoc { name: "key", location: ParameterIn::Query, description: Some("only this key id") },
                    ParamDoc { name: "group", location: ParameterIn::Query, description: Some("only this usage group") },
                    ParamDoc { name: "kind", location: ParameterIn::Query, description: Some("api, auth_failure or admin") },
                    ParamDoc { name: "limit", location: ParameterIn::Query, description: Some("the newest N (default 1000, at most 10000)") },
                ],
                ok: ("200", "Records", &[(JSON, OBJECT)]),
                errors: &["400", "401", "403"],
                ..OpDoc::new("The audit log")
            },
            ),
            route(
                "GET",
                "/v1/admin/usage",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(usage_http::usage),
                OpDoc {
                operation_id: Some("adminUsage"),
                scope: Some("admin"),
                description: Some("Requests and tokens per UTC day and key (`data`), totals per group (`groups`) and per key (`keys`) over the range, each with its quotas and what is used of them today and this month. Counts are stored every second."),
                params: &[
                    ParamDoc { name: "from", location: ParameterIn::Query, description: Some("first day, YYYY-MM-DD (default: the first of this month)") },
                    ParamDoc { name: "to", location: ParameterIn::Query, description: Some("last day, YYYY-MM-DD (default: today); at most 400 days after `from`") },
                    ParamDoc { name: "group", location: ParameterIn::Query, description: Some("only this usage group") },
                    ParamDoc { name: "key", location: ParameterIn::Query, description: Some("only this key id") },
                ],
                ok: ("200", "Usage", &[(JSON, OBJECT)]),
                errors: &["400", "401", "403"],
                ..OpDoc::new("Usage per day, group and key")
            },
            ),
            route(
                "GET",
                "/v1/admin/metrics/history",
                Access::Scope(admin_scope),
                One,
                NO_BODY,
                handler!(admin_http::history),
                OpDoc {
                operation_id: Some("adminMetricsHistory"),
                scope: Some("admin"),
                description: Some("Tokens generated per second, sampled every `interval_s` seconds (5), the last `capacity` samples (15 minutes), oldest first."),
                ok: ("200", "Samples", &[(JSON, named::<admin::History>())]),
                errors: &["401", "403"],
                ..OpDoc::new("Tokens/s history")
            },
            ),
            route(
                "GET",
                "/v1/kb/collections",
                Key,
                One,
                NO_BODY,
                handler!(kb::list_collections),
                OpDoc {
                operation_id: Some("kbListCollections"),
                description: Some("Only the collections the key may read (`kb:read:C`)."),
                ok: ("200", "collections", &[(JSON, inline::<List<kb_wire::KbCollection>>())]),
                errors: KB_ERRORS,
                ..OpDoc::new("Collections the key may read (kb:read)")
            },
            ),
            // The collection's name is in the body: the handler checks `kb:write:NAME`.
            route(
                "POST",
                "/v1/kb/collections",
                Key,
                One,
                SMALL,
                handler!(kb::create_collection),
                OpDoc {
                operation_id: Some("kbCreateCollection"),
                scope: Some("kb:write:{name}"),
                request: &[(JSON, named::<kb_wire::CreateCollection>())],
                ok: ("201", "created", &[(JSON, named::<kb_wire::KbCollection>())]),
                errors: &["400", "401", "403", "404", "409", "503"],
                ..OpDoc::new("Create a collection (kb:write:NAME)")
            },
            ),
            route(
                "GET",
                "/v1/kb/collections/{collection}",
                Access::Scope(kb_read),
                One,
                NO_BODY,
                handler!(kb::get_collection),
                OpDoc {
                operation_id: Some("kbGetCollection"),
                scope: Some("kb:read:{collection}"),
                params: &[COLLECTION],
                ok: ("200", "the collection", &[(JSON, named::<kb_wire::KbCollection>())]),
                errors: KB_ERRORS,
                ..OpDoc::new("One collection (kb:read)")
            },
            ),
            route(
                "DELETE",
                "/v1/kb/collections/{collection}",
                Access::Scope(kb_write),
                One,
                NO_BODY,
                handler!(kb::delete_collection),
                OpDoc {
                operation_id: Some("kbDeleteCollection"),
                scope: Some("kb:write:{collection}"),
                params: &[COLLECTION],
                ok: ("200", "deleted", &[(JSON, named::<kb_wire::CollectionDeleted>())]),
                errors: KB_ERRORS,
                ..OpDoc::new("Delete a collection and all its documents (kb:write)")
            },
            ),
            route(
                "GET",
                "/v1/kb/collections/{collection}/documents",
                Access::Scope(kb_read),
                One,
                NO_BODY,
                handler!(kb::list_documents),
                OpDoc {
                operation_id: Some("kbListDocuments"),
                scope: Some("kb:read:{collection}"),
                params: &[COLLECTION],
                ok: ("200", "documents", &[(JSON, inline::<List<kb_wire::KbDocument>>())]),
                errors: KB_ERRORS,
                ..OpDoc::new("Documents of a collection (kb:read)")
            },
            ),
            route(
                "POST",
                "/v1/kb/collections/{collection}/documents",
                Access::Scope(kb_write),
                One,
                Stream,
                handler!(kb::upload),
                OpDoc {
                operation_id: Some("kbUploadDocument"),
                scope: Some("kb:write:{collection}"),
                description: Some("Parsed, chunked, embedded and committed before the answer; the same filename replaces the stored version atomically."),
                params: &[
                    COLLECTION,
                    ParamDoc {
                        name: "filename",
                        location: ParameterIn::Query,
                        description: Some("the document's file name (or the X-Filename header, percent-encoded UTF-8)"),
                    },
                    ParamDoc {
                        name: "X-Filename",
                        location: ParameterIn::Header,
                        description: None,
                    },
                ],
                request: &[
                    ("text/plain", BINARY),
                    ("text/markdown", BINARY),
                    ("text/html", BINARY),
                    ("application/pdf", BINARY),
                    (crate::kb::DOCX_MIME, BINARY),
                ],
                ok: ("201", "stored", &[(JSON, named::<kb_wire::KbUploaded>())]),
                errors: &["400", "401", "403", "404", "413", "415", "503"],
                ..OpDoc::new("Upload a document (kb:write)")
            },
            ),
            route(
                "GET",
                "/v1/kb/collections/{collection}/documents/{document}",
                Access::Scope(kb_read),
                One,
                NO_BODY,
                handler!(kb::get_document),
                OpDoc {
                operation_id: Some("kbGetDocument"),
                scope: Some("kb:read:{collection}"),
                params: &[COLLECTION, DOCUMENT],
                ok: ("200", "the document", &[(JSON, named::<kb_wire::KbDocumentChunks>())]),
                errors: KB_ERRORS,
                ..OpDoc::new("A document with its chunks (kb:read)")
            },
            ),
            route(
                "DELETE",
                "/v1/kb/collections/{collection}/documents/{document}",
                Access::Scope(kb_write),
                One,
                NO_BODY,
                handler!(kb::delete_document),
                OpDoc {
                operation_id: Some("kbDeleteDocument"),
                scope: Some("kb:write:{collection}"),
                params: &[COLLECTION, DOCUMENT],
                ok: ("200", "deleted", &[(JSON, named::<kb_wire::DocumentDeleted>())]),
                errors: KB_ERRORS,
                ..OpDoc::new("Delete a document (kb:write)")
            },
            ),
            // Collections are named in the body: the handler checks `kb:read:C` for each.
            route(
                "POST",
                "/v1/kb/search",
                Key,
                One,
                SMALL,
                handler!(kb::search),
                OpDoc {
                operation_id: Some("kbSearch"),
                description: Some("Needs `kb:read` on every collection searched."),
                request: &[(JSON, named::<kb_wire::KbSearchRequest>())],
                ok: ("200", "results", &[(JSON, named::<kb_wire::KbSearchResults>())]),
                errors: KB_ERRORS,
                ..OpDoc::new("Hybrid search (BM25 with jieba for Chinese + embeddings, fused)")
            },
            ),
];

/// `path` against `pattern`: the decoded parameters, or `None` when it does not match.
fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(Params(params)),
            (Some(p), Some(s)) => {
                if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    let v = percent_decode_str(s).decode_utf8().ok()?;
                    if v.is_empty() {
                        return None;
                    }
                    params.push((name, v.into_owned()));
                } else if p != s {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// What the table says about a request line.
pub enum Found {
    Route(&'static Route, Params),
    /// The path exists, the method does not: the `Allow` list and the pattern.
    WrongMethod(&'static str, &'static str),
    NotFound,
}

pub fn find(method: &str, path: &str) -> Found {
    let mut wrong = None;
    for r in table() {
        if let Some(params) = matches(r.path, path) {
            if r.method == method {
                return Found::Route(r, params);
            }
            wrong = Some(r.path);
        }
    }
    match wrong {
        Some(p) => Found::WrongMethod(allow(p), p),
        None => Found::NotFound,
    }
}

/// The `Allow` header of a pattern: its methods in table order (built once).
fn allow(pattern: &'static str) -> &'static str {
    static ALLOW: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    let m = ALLOW.get_or_init(|| {
        let mut m: HashMap<&'static str, String> = HashMap::new();
        for r in table() {
            let e = m.entry(r.path).or_default();
            if !e.is_empty() {
                e.push_str(", ");
            }
            e.push_str(r.method);
        }
        m
    });
    m.get(pattern).map_or("GET", String::as_str)
}

/// `(method, pattern)` of every route (the OpenAPI document must list exactly these).
pub fn list() -> Vec<(&'static str, &'static str)> {
    table().iter().map(|r| (r.method, r.path)).collect()
}

/// `(method, pattern, documentation)` of every route, for the OpenAPI document.
pub fn docs() -> impl Iterator<Item = (&'static str, &'static str, &'static OpDoc)> {
    table().iter().map(|r| (r.method, r.path, &r.doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concrete(pattern: &str) -> String {
        pattern
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x-1" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_route_is_found_by_its_own_method_and_path() {
        for r in table() {
            match find(r.method, &concrete(r.path)) {
                Found::Route(got, _) => {
                    assert_eq!((got.method, got.path), (r.method, r.path))
                }
                _ => panic!("{} {} not found", r.method, r.path),
            }
        }
    }

    #[test]
    fn no_two_routes_share_method_and_pattern_shape() {
        let mut seen = std::collections::HashSet::new();
        for r in table() {
            assert!(
                seen.insert((r.method, concrete(r.path))),
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn wrong_method_lists_allowed_ones() {
        match find("PUT", "/v1/kb/collections/hr") {
            Found::WrongMethod(allow, p) => {
                assert_eq!(allow, "GET, DELETE");
                assert_eq!(p, "/v1/kb/collections/{collection}");
            }
            _ => panic!("expected 405"),
        }
        match find("GET", "/v1/chat/completions") {
            Found::WrongMethod(allow, _) => assert_eq!(allow, "POST"),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn parameters_are_decoded_and_never_empty() {
        match find("GET", "/v1/kb/collections/%E4%BA%BA%E4%BA%8B/documents") {
            Found::Route(_, p) => assert_eq!(p.get("collection"), Some("人事")),
            _ => panic!("not found"),
        }
        match find("GET", "/v1/kb/collections/h%20r/documents/d%2F1") {
            Found::Route(r, p) => {
                assert_eq!(
                    r.path,
                    "/v1/kb/collections/{collection}/documents/{document}"
                );
                assert_eq!(p.get("collection"), Some("h r"));
                assert_eq!(p.get("document"), Some("d/1"));
            }
            _ => panic!("not found"),
        }
        for path in [
            "/v1/models/",
            "/v1/embeddings/x",
            "/v1/admin/keys/",
            "/console/",
            "/index.html",
            "/v1/kb/collections/%FF",
            "/v1/kb/collections//documents",
            "/v1/kb",
            "/v1/kb/collections/",
            "/v1/kb/collections/hr/documents/x/y",
            "/v1/kb/collections/hr/other",
            "/v1/kb/collectionsx",
        ] {
            assert!(matches!(find("GET", path), Found::NotFound), "{path}");
        }
    }

    #[test]
    fn path_scopes_name_the_collection() {
        let Found::Route(r, p) = find("DELETE", "/v1/kb/collections/hr") else {
            panic!("not found")
        };
        let Access::Scope(f) = r.access else {
            panic!("scoped route")
        };
        assert_eq!(f(&p), Scope::KbWrite("hr".into()));
    }
}
