//! `/v1/auth/…`: console sign-in through the company directory.
//!
//! A sign-in answers with the session cookie (`HttpOnly; Secure; SameSite=Strict`: page
//! scripts cannot read it and other sites' pages cannot make the browser send it) and a CSRF
//! token the console sends as `X-CSRF-Token` on every write. Wrong password and unknown user
//! get the same 401, and every attempt is audited (`action: auth.login`, the name in
//! `target`), never the password.

use std::time::Instant;

use hyper::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use hyper::{Response, StatusCode};

use super::error::ApiError;
use super::gate::{Call, SESSION_COOKIE};
use super::wire::auth::{
    AuthMethods, Capabilities, CollectionAccess, Limits, LoggedOut, LoginRequest, Me, QuotaUse,
    SessionInfo,
};
use super::wire::{parse, required};
use super::Body;
use crate::auth::{sessions::random_token, LdapError, Session};
use crate::keys::Scope;

/// Longest account name accepted (AD's userPrincipalName is at most 1024 with the domain;
/// names people type are far shorter).
const MAX_USER_CHARS: usize = 256;
const MAX_PASSWORD_BYTES: usize = 1024;

fn answer(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let mut r = super::full(
        status,
        "application/json",
        super::wire::value(body).to_string(),
    );
    // Session answers carry the CSRF token: never cached.
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn scope_names(s: &Session) -> Vec<String> {
    s.scopes.iter().map(ToString::to_string).collect()
}

/// `GET /v1/auth/methods` (public): what the console's sign-in page offers.
pub async fn methods(c: Call) -> Result<Response<Body>, ApiError> {
    Ok(answer(
        StatusCode::OK,
        &AuthMethods {
            api_key: true,
            directory: c.app.directory().is_some(),
        },
    ))
}

/// `POST /v1/auth/login`.
pub async fn login(c: Call) -> Result<Response<Body>, ApiError> {
    let dir = c.app.directory().ok_or_else(|| {
        ApiError::not_found(
            "directory sign-in is not configured on this server ([auth.ldap]); use an API key",
        )
    })?;
    let invalid = |p: &str| ApiError::invalid_param(p, "must be a string");
    let req: LoginRequest = parse(&c.body, invalid)?;
    let user = required(
        "username",
        req.username.map(|u| u.trim().to_string()),
        String::is_empty,
        "a username",
        "must not be empty",
    )?;
    if user.chars().count() > MAX_USER_CHARS || user.chars().any(char::is_control) {
        return Err(ApiError::invalid_param(
            "username",
            format!("must be at most {MAX_USER_CHARS} characters, without control characters"),
        ));
    }
    c.note(|e| {
        e.action = Some("auth.login".into());
        e.target = Some(user.clone());
    });
    let password = required(
        "password",
        req.password,
        String::is_empty,
        "a password",
        "must not be empty",
    )?;
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid_param(
            "password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    if let Err(wait) = c
        .app
        .login_attempts
        .try_attempt(&user, c.peer.ip(), Instant::now())
    {
        let mut e = ApiError::rate_limited(wait);
        e.message = format!("too many sign-in attempts; try again in {wait} s");
        e.code = Some("too_many_sign_in_attempts");
        return Err(e);
    }
    let account = match dir.sign_in(&user, &password).await {
        Ok(a) => a,
        Err(LdapError::BadCredentials) => {
            return Err(ApiError::unauthorized("Incorrect username or password.")
                .with_code("invalid_credentials"))
        }
        Err(e) => {
            tracing::warn!(request_id = %c.rid, error = %e, "directory sign-in failed");
            return Err(ApiError::unavailable(
                "the directory cannot be reached right now; try again shortly (the server's \
                 log has the cause)",
            ));
        }
    };
    let Some(grant) = dir.grant(&account.groups) else {
        return Err(ApiError::forbidden_because(
            "no_mapped_group",
            "your account is not in a directory group allowed to use this server; ask your \
             administrator",
        ));
    };
    let now = crate::util::unix_now();
    let max_age = dir.cfg.session_hours * 3600;
    let session = Session {
        // Directories match names without regard to case: one principal per person.
        user: user.to_lowercase(),
        dn: account.dn,
        scopes: grant.scopes,
        group: grant.group,
        expires_at: now + max_age,
        checked_at: now,
        csrf: random_token().map_err(ApiError::internal)?,
    };
    let id = c
        .app
        .sessions
        .open(session.clone(), now)
        .map_err(ApiError::internal)?;
    let key = session.key_info();
    c.note(|e| {
        e.key_id = Some(key.id.clone());
        e.key_name = Some(key.name.clone());
        e.group.clone_from(&key.group);
    });
    tracing::info!(user = %session.user, "directory sign-in");
    let mut r = answer(StatusCode::OK, &info(&session));
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age}"
    );
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    Ok(r)
}

fn info(s: &Session) -> SessionInfo {
    SessionInfo {
        user: s.user.clone(),
        method: "session",
        scopes: scope_names(s),
        group: s.group.clone(),
        expires_at: Some(s.expires_at),
        csrf_token: Some(s.csrf.clone()),
    }
}

/// `GET /v1/auth/session`: who is signed in (the console asks after a page reload, and so
/// gets the CSRF token again without keeping it in storage).
pub async fn session(c: Call) -> Result<Response<Body>, ApiError> {
    if let Some(cs) = &c.session {
        return Ok(answer(StatusCode::OK, &info(&cs.session)));
    }
    let key = c.key()?;
    Ok(answer(
        StatusCode::OK,
        &SessionInfo {
            user: key.name.clone(),
            method: "api_key",
            scopes: key.scopes.iter().map(ToString::to_string).collect(),
            group: key.group.clone(),
            expires_at: None,
            csrf_token: None,
        },
    ))
}

/// `POST /v1/auth/logout`: close the session and clear the cookie.
pub async fn logout(c: Call) -> Result<Response<Body>, ApiError> {
    let closed = c
        .session
        .as_ref()
        .is_some_and(|cs| c.app.sessions.close(&cs.id));
    let mut r = answer(StatusCode::OK, &LoggedOut { closed });
    if c.session.is_some() {
        let clear =
            format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0");
        r.headers_mut().insert(
            SET_COOKIE,
            HeaderValue::from_str(&clear).map_err(|e| ApiError::internal(e.to_string()))?,
        );
    }
    Ok(r)
}

/// `GET /v1/me`: the caller's scopes spelled out (what it may do, which existing collections
/// it may read or write) and its limits with the quota used so far.
pub async fn me(c: Call) -> Result<Response<Body>, ApiError> {
    let key = c.key()?.clone();
    let method = if c.session.is_some() {
        "session"
    } else {
        "api_key"
    };
    let has = |s: &Scope| key.allows(s);
    let admin = has(&Scope::Admin);
    let any_kb = admin
        || key
            .scopes
            .iter()
            .any(|s| matches!(s, Scope::KbRead(_) | Scope::KbWrite(_)));
    let can = Capabilities {
        chat: has(&Scope::Chat),
        embeddings: has(&Scope::Embeddings),
        web_search: has(&Scope::Web),
        admin,
        knowledge: any_kb,
        create_collections: admin || key.scopes.iter().any(|s| matches!(s, Scope::KbWrite(_))),
    };
    let agents = if admin {
        vec!["*".to_string()]
    } else {
        key.scopes
            .iter()
            .filter_map(|s| match s {
                Scope::Agent(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    };
    // Only a key with some knowledge scope learns which collections exist.
    let kb = if any_kb { c.app.kb().ok() } else { None };
    let knowledge = kb.is_some() || (!any_kb && c.app.kb().is_ok());
    let collections = match kb {
        Some(kb) => {
            let list =
                crate::util::blocking(move || Ok::<_, ApiError>(kb.base().list_collections()))
                    .await?;
            list.into_iter()
                .filter(|col| has(&Scope::KbRead(col.name.clone())))
                .map(|col| CollectionAccess {
                    write: has(&Scope::KbWrite(col.name.clone())),
                    read: true,
                    name: col.name,
                })
                .collect()
        }
        None => Vec::new(),
    };
    let quotas = match c.app.usage.get() {
        Some(usage) => usage
            .standing(
                (&key.id, &key.name),
                key.quota,
                super::gate::group_quota(&c.app, &key),
                crate::util::unix_now(),
            )
            .into_iter()
            .map(|q| QuotaUse {
                applies_to: q.applies_to,
                period: q.period,
                used: q.used,
                limit: q.limit,
                resets_at: q.resets_at,
            })
            .collect(),
        None => Vec::new(),
    };
    let me = Me {
        id: key.id.clone(),
        name: key.name.clone(),
        method,
        scopes: key.scopes.iter().map(ToString::to_string).collect(),
        group: key.group.clone(),
        can,
        agents,
        knowledge,
        collections,
        limits: Limits {
            requests_per_minute: key.rpm,
            tokens_per_minute: key.tpm,
            max_inflight: c.app.config().max_inflight_per_key,
            quotas,
        },
    };
    Ok(answer(StatusCode::OK, &me))
}
