//! The request gate: everything a request passes before a handler does work.
//!
//! Order, for every route (the route table in [`super::routes`] says what each route needs):
//! 1. **authentication** — the bearer key, or without one the console's session cookie of a
//!    directory sign-in (401), unless the route is public; a request authenticated by cookie
//!    that is not GET or HEAD must carry the session's `X-CSRF-Token` (403);
//! 2. **scope** — the route's scope, derived from its path parameters (403);
//! 3. **admission** — the key's rate limits (requests and tokens per minute) and its share of
//!    in-flight work (429 with `Retry-After`); nothing is charged when refused;
//! 4. **body** — content type and size limit (400 / 413), read once.
//!
//! Routes whose cost depends on the body (a chat request with `n` choices and a long prompt)
//! are admitted by their handler right after parsing — still before retrieval, templating or
//! the engine — through the same [`Call::admit`]; the gate checks that such a handler did.
//! Scopes named in a body (collections in `knowledge`, in a search) go through [`require`],
//! the one scope check of the API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;

use super::error::ApiError;
use super::routes::{Access, Admit, Params, Route};
use super::App;
use crate::keys::{KeyInfo, Scope};
use crate::util::lock;

/// One request after the gate: who sent it, what it names, its body.
pub struct Call {
    pub app: Arc<App>,
    pub rid: String,
    pub peer: SocketAddr,
    pub head: Parts,
    pub params: Params,
    /// The authenticated key (`None` only on public routes).
    pub key: Option<KeyInfo>,
    /// The directory sign-in session the key stands for, when the request came with the
    /// session cookie instead of a bearer key.
    pub session: Option<CookieSession>,
    /// The body, read and size-checked by the gate (empty when the route takes none or
    /// streams it).
    pub body: Bytes,
    /// The unread body of a streaming route (uploads), else `None`.
    pub stream: Option<Incoming>,
    /// Work admitted for this request; released when the response is complete.
    admission: Option<Admission>,
    /// Set once admitted (shared with the gate, which checks it after the handler).
    admitted_flag: Arc<std::sync::atomic::AtomicBool>,
    /// The call's audit record, filled in as the call learns who and what (the key here;
    /// model, tools and tokens by handlers) and written when its response has been sent.
    pub audit: Arc<Mutex<crate::audit::Event>>,
}

/// The gate's view of whether a handler admitted its request.
pub(super) struct AdmissionProbe(Arc<std::sync::atomic::AtomicBool>);

impl AdmissionProbe {
    fn admitted(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Call {
    pub(super) fn new(
        app: Arc<App>,
        rid: String,
        peer: SocketAddr,
        head: Parts,
        params: Params,
    ) -> Call {
        Call {
            app,
            rid,
            peer,
            head,
            params,
            key: None,
            session: None,
            body: Bytes::new(),
            stream: None,
            admission: None,
            admitted_flag: Arc::default(),
            audit: Arc::default(),
        }
    }

    fn admission_probe(&self) -> AdmissionProbe {
        AdmissionProbe(self.admitted_flag.clone())
    }

    /// The authenticated key. Only public routes have none, and they do not ask.
    /// Add to the call's audit record (what it names: model, collections, tools, tokens).
    pub fn note(&self, f: impl FnOnce(&mut crate::audit::Event)) {
        f(&mut lock(&self.audit));
    }

    /// Keep the request body in the audit record, where `[audit] include_content` asks for
    /// it (by default the log records who and what, never the words).
    pub fn note_content(&self) {
        if self.app.audit.get().is_some_and(|a| a.include_content()) {
            let body = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
            });
            self.note(|e| e.content = Some(body));
        }
    }

    /// The query string's `name=value` pairs, percent-decoded (`+` is a space); a value that
    /// is not UTF-8 is a 400 naming its parameter.
    pub fn query_pairs(&self) -> Result<Vec<(String, String)>, ApiError> {
        let query = self.head.uri.query().unwrap_or("");
        let mut out = Vec::new();
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .map_err(|_| ApiError::invalid_param(k, "not valid percent-encoded UTF-8"))?
                .into_owned();
            out.push((k.to_string(), v));
        }
        Ok(out)
    }

    pub fn key(&self) -> Result<&KeyInfo, ApiError> {
        self.key
            .as_ref()
            .ok_or_else(|| ApiError::internal("route declared public but asked for a key"))
    }

    /// The path parameter `name` (decoded), as declared in the route's pattern.
    pub fn param(&self, name: &str) -> Result<&str, ApiError> {
        self.params
            .get(name)
            .ok_or_else(|| ApiError::internal(format!("route has no `{name}` parameter")))
    }

    /// A request header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Admit `cost` for this request's key: rate limits first, then the key's in-flight
    /// share. Idempotent per request: a second call is refused as a programming error.
    pub fn admit(&mut self, cost: Cost) -> Result<(), ApiError> {
        if self.admission.is_some() {
            return Err(ApiError::internal("request admitted twice"));
        }
        let key = self.key()?.clone();
        self.admission = Some(admit(&self.app, &key, cost)?);
        self.admitted_flag
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The admitted work, to keep alive as long as the response runs (streaming bodies).
    pub fn take_admission(&mut self) -> Option<Admission> {
        self.admission.take()
    }

    /// Tokens charged at admission (the estimate), so the final charge can settle the rest.
    pub fn admitted_tokens(&self) -> u64 {
        self.admission.as_ref().map_or(0, |a| a.tokens)
    }
}

/// Run the gate for `route`, then its handler.
pub(super) async fn pass(
    route: &'static Route,
    mut call: Call,
    body: Incoming,
) -> Result<hyper::Response<super::Body>, ApiError> {
    let app = call.app.clone();
    // Authenticated keys go into the audit record before their scope is checked, so a
    // refused call is recorded with the key that tried.
    let identified = |key: KeyInfo| {
        let mut ev = lock(&call.audit);
        ev.key_id = Some(key.id.clone());
        ev.key_name = Some(key.name.clone());
        ev.group.clone_from(&key.group);
        key
    };
    let needed = match route.access {
        Access::Public => None,
        Access::LoopbackOrAdmin if is_loopback(&call.peer) => None,
        Access::LoopbackOrAdmin => Some(Some(Scope::Admin)),
        Access::Key => Some(None),
        Access::Scope(scope_of) => Some(Some(scope_of(&call.params))),
    };
    if let Some(scope) = needed {
        let (key, session) = identify(&app, &call.head).await?;
        let key = identified(key);
        if let Some(scope) = &scope {
            require(&key, scope)?;
        }
        call.key = Some(key);
        call.session = session;
    }
    {
        let mut ev = lock(&call.audit);
        let p = &call.params;
        if let Some(c) = p.get("collection") {
            ev.collections = vec![c.to_string()];
        }
        ev.target = ["document", "id", "name", "model"]
            .iter()
            .find_map(|n| p.get(n))
            .map(str::to_string);
    }
    if route.admit == Admit::One {
        call.admit(Cost::ONE)?;
    }
    match route.body {
        BodyRule::None => drop(body),
        BodyRule::Json(limit) => call.body = read_json(&call.head, body, limit.bytes(&app)).await?,
        BodyRule::Stream => call.stream = Some(body),
    }
    if route.admit != Admit::ByHandler {
        return (route.handler)(call).await;
    }
    // The handler admits after parsing; hold it to that.
    let check = call.admission_probe();
    let resp = (route.handler)(call).await?;
    if !check.admitted() {
        tracing::error!(
            route = route.path,
            "handler answered without admitting the request"
        );
        return Err(ApiError::internal("request was not admitted"));
    }
    Ok(resp)
}

/// What a request costs against its key's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Requests (a chat request with `n` choices costs `n`: each is a sequence in the engine).
    pub requests: u32,
    /// Tokens known or estimated before any work (the prompt, times `n`).
    pub tokens: u64,
    /// Units of in-flight work this request holds while it runs (`n` sequences for
    /// inference, 1 otherwise).
    pub inflight: usize,
}

impl Cost {
    pub const ONE: Cost = Cost {
        requests: 1,
        tokens: 0,
        inflight: 1,
    };
}

/// Rough token count of `text` before tokenizing it: the gate admits on it, the exact count is
/// charged once known. Four bytes a token is the usual BPE average for English; CJK text is
/// about three bytes a character and one to two characters a token, so it is not undercounted
/// by much either.
pub fn estimate_tokens(text_bytes: usize) -> u64 {
    text_bytes.div_ceil(4) as u64
}

/// The session cookie's name (`HttpOnly`: page scripts never see it).
pub const SESSION_COOKIE: &str = "edgeseek_session";

/// A request authenticated by the session cookie: the cookie's value and the session.
#[derive(Debug, Clone)]
pub struct CookieSession {
    pub id: String,
    pub session: crate::auth::Session,
}

/// Who sent the request: the bearer key when there is an `Authorization` header, else the
/// directory session of the cookie (re-checked against the directory when due, CSRF token
/// required on writes), else 401.
async fn identify(app: &App, head: &Parts) -> Result<(KeyInfo, Option<CookieSession>), ApiError> {
    if head.headers.contains_key(AUTHORIZATION) {
        return Ok((authenticate(app, head)?, None));
    }
    let id = head
        .headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| crate::auth::sessions::cookie(h, SESSION_COOKIE));
    let Some(id) = id else {
        // The bearer path's own 401.
        return Err(authenticate(app, head)
            .err()
            .unwrap_or_else(|| ApiError::unauthorized("You didn't provide an API key.")));
    };
    let session = live_session(app, id).await?;
    if !matches!(head.method.as_str(), "GET" | "HEAD") {
        let sent = head
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !crate::auth::sessions::same_secret(sent, &session.csrf) {
            return Err(ApiError::forbidden_because(
                "csrf_token_invalid",
                "a request signed in by the session cookie must send the session's \
                 `X-CSRF-Token` header (from the sign-in answer or GET /v1/auth/session)",
            ));
        }
    }
    let key = session.key_info();
    Ok((
        key,
        Some(CookieSession {
            id: id.to_string(),
            session,
        }),
    ))
}

/// The session of cookie value `id`, re-checked against the directory when its last check
/// is `recheck_seconds` old: an account the directory no longer finds, or that is in no
/// mapped group any more, is signed out (401). A directory that cannot be reached keeps the
/// session (until its expiry at the latest) and is asked again after the next interval, so an
/// outage of the directory does not sign everyone out.
async fn live_session(app: &App, id: &str) -> Result<crate::auth::Session, ApiError> {
    let signed_out = |why: &str| ApiError::unauthorized(why).with_code("session_expired");
    let now = crate::util::unix_now();
    let mut s = app.sessions.get(id, now).ok_or_else(|| {
        signed_out("Your session has ended (expired or signed out); sign in again.")
    })?;
    let Some(dir) = app.directory() else {
        app.sessions.close(id);
        return Err(signed_out(
            "directory sign-in is no longer configured on this server; use an API key",
        ));
    };
    if now < s.checked_at.saturating_add(dir.cfg.recheck_seconds) {
        return Ok(s);
    }
    match dir.recheck(&s.user).await {
        Ok(Some(account)) => match dir.grant(&account.groups) {
            Some(g) => {
                app.sessions
                    .refresh(id, g.scopes.clone(), g.group.clone(), now);
                s.scopes = g.scopes;
                s.group = g.group;
                s.checked_at = now;
                Ok(s)
            }
            None => {
                app.sessions.close(id);
                tracing::info!(user = %s.user, "session closed: no mapped directory group any more");
                Err(signed_out(
                    "Your directory account is no longer in a group allowed to use this server.",
                ))
            }
        },
        Ok(None) => {
            app.sessions.close(id);
            tracing::info!(user = %s.user, "session closed: the directory no longer finds the account");
            Err(signed_out(
                "Your directory account is no longer active; sign in again.",
            ))
        }
        Err(e) => {
            tracing::warn!(user = %s.user, error = %e, "session re-check failed; kept until the next one");
            app.sessions.postpone(id, now);
            Ok(s)
        }
    }
}

/// The key of the request's bearer token, or 401.
pub(super) fn authenticate(app: &App, head: &Parts) -> Result<KeyInfo, ApiError> {
    let header = head.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
        )
    })?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <key>`"))?;
    match app.keys().authenticate(secret) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(ApiError::unauthorized(
            "Incorrect API key provided (unknown or revoked).",
        )),
        Err(e) => Err(ApiError::internal(format!("key store: {e}"))),
    }
}

/// The one scope check: 403 naming the scope unless `key` carries it.
pub fn require(key: &KeyInfo, scope: &Scope) -> Result<(), ApiError> {
    if key.allows(scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&scope.to_string()))
    }
}

/// Work a key has in flight, per key id. A request's [`Admission`] holds its units and gives
/// them back when dropped (response finished, client gone, or error).
#[derive(Default)]
pub struct InFlight {
    by_key: Mutex<HashMap<String, usize>>,
}

impl InFlight {
    fn try_take(self: &Arc<Self>, key_id: &str, units: usize, cap: usize) -> Result<(), usize> {
        let mut m = lock(&self.by_key);
        let held = m.get(key_id).copied().unwrap_or(0);
        // A request larger than the whole share still runs when the key has nothing else in
        // flight, so a cap below `n` cannot make a request impossible.
        if held > 0 && held + units > cap {
            return Err(held);
        }
        *m.entry(key_id.to_string()).or_insert(0) += units;
        Ok(())
    }

    fn give_back(&self, key_id: &str, units: usize) {
        let mut m = lock(&self.by_key);
        if let Some(n) = m.get_mut(key_id) {
            *n = n.saturating_sub(units);
            if *n == 0 {
                m.remove(key_id);
            }
        }
    }

    /// Units `key_id` holds now.
    pub fn held(&self, key_id: &str) -> usize {
        let m = lock(&self.by_key);
        m.get(key_id).copied().unwrap_or(0)
    }
}

/// Admitted work of one request; dropping it returns the key's in-flight units.
pub struct Admission {
    inflight: Arc<InFlight>,
    key_id: String,
    units: usize,
    tokens: u64,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.inflight.give_back(&self.key_id, self.units);
    }
}

/// The key's usage group with that group's quota (`[usage.groups.NAME]`; none: unlimited).
pub fn group_quota<'k>(app: &App, key: &'k KeyInfo) -> Option<(&'k str, crate::usage::Quota)> {
    let cfg = app.config();
    key.group
        .as_deref()
        .map(|g| (g, cfg.group_quotas.get(g).copied().unwrap_or_default()))
}

/// Rate limits, then the in-flight share; nothing is charged or held when refused.
fn admit(app: &App, key: &KeyInfo, cost: Cost) -> Result<Admission, ApiError> {
    let cfg = app.config();
    // Quotas first: a key or group that has used its day or month gets nothing more.
    if let Some(usage) = app.usage.get() {
        let group = group_quota(app, key);
        usage
            .check(
                (&key.id, &key.name),
                key.quota,
                group,
                crate::util::unix_now(),
            )
            .map_err(|q| ApiError::quota_exceeded(&q, crate::util::unix_now()))?;
    }
    let cap = cfg.max_inflight_per_key;
    let inflight = app.inflight.clone();
    if let Err(held) = inflight.try_take(&key.id, cost.inflight, cap) {
        let mut e = ApiError::rate_limited(1);
        e.message = format!(
            "this API key already has {held} requests in flight (its share of the server is \
             {cap}; limits.key_queue_share); retry when one finishes"
        );
        e.code = Some("too_many_requests_in_flight");
        return Err(e);
    }
    let admission = Admission {
        inflight,
        key_id: key.id.clone(),
        units: cost.inflight,
        tokens: cost.tokens,
    };
    // Refused by the rate limit: `admission` drops here and gives the units back.
    app.keys()
        .check_cost(key, cost.requests, cost.tokens)
        .map_err(|r| ApiError::rate_limited(r.retry_after_s))?;
    Ok(admission)
}

/// How a route takes its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// None (GET, DELETE): anything sent is ignored.
    None,
    /// JSON (`Content-Type: application/json`) up to a limit.
    Json(Limit),
    /// Streamed by the handler (uploads): it applies its own limit.
    Stream,
}

/// Body size limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `server.max_body_bytes` (inference, embeddings).
    Inference,
    /// Small control bodies (KB, admin): 64 KiB.
    Small,
}

impl Limit {
    pub(super) fn bytes(self, app: &App) -> usize {
        match self {
            Limit::Inference => app.config().max_body_bytes,
            Limit::Small => 64 * 1024,
        }
    }
}

/// The body as the route's rule says: JSON content type checked, at most `limit` bytes.
pub(super) async fn read_json(
    head: &Parts,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let ct = head
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::bad_request(format!(
            "Content-Type must be application/json (got `{ct}`)"
        )));
    }
    read_limited(head, body, limit).await
}

/// The body, whatever its type, at most `limit` bytes (413 beyond).
pub async fn read_limited(head: &Parts, body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body, limit.saturating_mul(2)).await;
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Read and discard up to `cap` bytes so a client that sent a moderately oversized body
/// before reading the answer still gets the 413 (instead of a reset connection); past `cap`
/// the connection is closed.
pub(super) async fn drain(mut body: Incoming, cap: usize) {
    use hyper::body::Body as _;
    let mut seen = 0usize;
    while seen < cap {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
            _ => return,
        }
    }
}

/// The 401/403 for `/metrics` from the network; loopback (including IPv4-mapped loopback,
/// as a dual-stack listener reports it) scrapes without a key.
pub(super) fn is_loopback(peer: &SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_share_is_held_and_given_back() {
        let f = Arc::new(InFlight::default());
        f.try_take("k", 3, 4).unwrap();
        assert_eq!(f.try_take("k", 2, 4), Err(3));
        f.try_take("other", 4, 4).unwrap();
        f.give_back("k", 3);
        assert_eq!(f.held("k"), 0);
        // A request larger than the share runs alone.
        f.try_take("k", 9, 4).unwrap();
        assert_eq!(f.try_take("k", 1, 4), Err(9));
        f.give_back("k", 9);
        assert!(f.by_key.lock().unwrap().get("k").is_none());
    }

    #[test]
    fn mapped_loopback_counts_as_loopback() {
        for (addr, want) in [
            ("127.0.0.1:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("[::ffff:10.0.0.1]:1", false),
            ("10.0.0.1:1", false),
        ] {
            assert_eq!(is_loopback(&addr.parse().unwrap()), want, "{addr}");
        }
    }

    #[test]
    fn token_estimate_rounds_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(8), 2);
    }
}
