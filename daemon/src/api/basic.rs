//! Health, readiness, metrics, the API description and the model list.

use super::error::ApiError;
use super::gate::Call;
use super::registry::Phase;
use super::wire::{self, models::Model};
use super::{full, json_response, Body, OPENAPI};
use crate::keys::Scope;
use hyper::{Response, StatusCode};

/// `GET /healthz`: the process answers.
pub async fn healthz(_: Call) -> Result<Response<Body>, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &wire::value(&wire::models::Health { status: "ok" }),
    ))
}

/// `GET /readyz`: the default model serves; `models` says where each chat model is
/// (`ready`, `loading`, `unloaded`, `unloading`, `failed`). Anonymous, so a failed load says only
/// that it failed; the cause (paths, library messages) is for admins: `edgeseek status`,
/// `/v1/admin/status`, the service log.
pub async fn readyz(c: Call) -> Result<Response<Body>, ApiError> {
    let reg = &c.app.models;
    let default = reg.default_name();
    let models = reg
        .list()
        .into_iter()
        .map(|m| (m.id, m.state.to_string()))
        .collect();
    match reg.phase(&default) {
        Some(Phase::Ready(_)) => Ok(json_response(
            StatusCode::OK,
            &wire::value(&wire::models::Ready {
                status: "ready",
                model: default,
                models,
                remotes: c.app.remotes().states(),
            }),
        )),
        Some(Phase::Loading) | None => Err(ApiError::loading()),
        Some(Phase::Failed(_)) => Err(ApiError::unavailable(format!(
            "the model `{default}` failed to load; the cause is in `edgeseek status` and the \
             service log"
        ))),
        Some(Phase::Unloaded | Phase::Unloading(_)) => Err(ApiError::unavailable(format!(
            "the default model `{default}` is not loaded (edgeseek models load {default})"
        ))),
    }
}

/// `GET /metrics`: Prometheus text (the gate admits loopback, or an admin key).
pub async fn metrics(c: Call) -> Result<Response<Body>, ApiError> {
    let served = c.app.served();
    let stats = served.as_ref().map(|s| s.scheduler.stats());
    Ok(full(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        c.app.metrics.render(stats.as_ref(), served.is_some())
            + &c.app.metrics.render_remotes(&remote_health(&c.app)),
    ))
}

/// Each remote model and whether its upstream is up.
fn remote_health(app: &super::App) -> Vec<(String, bool)> {
    app.remotes()
        .all()
        .map(|(n, u)| (n.clone(), u.health().up))
        .collect()
}

/// `GET /openapi.json`.
pub async fn openapi(_: Call) -> Result<Response<Body>, ApiError> {
    Ok(full(StatusCode::OK, "application/json", OPENAPI))
}

/// `GET /v1/models`: the chat models this daemon knows (with their state, context length and
/// provider), the embedding model once loaded, and the agents the key may use.
pub async fn models(c: Call) -> Result<Response<Body>, ApiError> {
    let app = &c.app;
    let mut data: Vec<Model> = app.models.list().iter().map(chat_model).collect();
    data.extend(remote_models(app));
    if let Some((e, loaded_at)) = app.embedder_loaded() {
        data.push(Model::new(e.name(), loaded_at));
    }
    let key = c.key()?;
    data.extend(
        app.agents
            .list()
            .iter()
            .filter(|a| key.allows(&Scope::Agent(a.name.clone())))
            .map(|a| Model::agent(a)),
    );
    Ok(json_response(
        StatusCode::OK,
        &wire::value(&wire::List::new(data)),
    ))
}

/// `GET /v1/models/{model}`.
pub async fn model(c: Call) -> Result<Response<Body>, ApiError> {
    let app = &c.app;
    let id = c.param("model")?;
    let chat = app.models.list().into_iter().find(|m| m.id == id);
    if let Some(m) = remote_models(app).into_iter().find(|m| m.id == id) {
        return Ok(json_response(StatusCode::OK, &wire::value(&m)));
    }
    match (chat, app.embedder_loaded()) {
        (Some(m), _) => Ok(json_response(StatusCode::OK, &wire::value(&chat_model(&m)))),
        (_, Some((e, loaded_at))) if id == e.name() => Ok(json_response(
            StatusCode::OK,
            &wire::value(&Model::new(e.name(), loaded_at)),
        )),
        _ => match id.strip_prefix(crate::agents::MODEL_PREFIX) {
            Some(name) if c.key()?.allows(&Scope::Agent(name.to_string())) => {
                let a = app
                    .agents
                    .get(name)
                    .ok_or_else(|| ApiError::model_not_found(id))?;
                Ok(json_response(
                    StatusCode::OK,
                    &wire::value(&Model::agent(&a)),
                ))
            }
            _ => Err(ApiError::model_not_found(id)),
        },
    }
}

/// The remote models as `/v1/models` lists them.
fn remote_models(app: &super::App) -> Vec<Model> {
    app.remotes()
        .all()
        .map(|(n, u)| Model::remote(n, u.health().up, u.config().context_length))
        .collect()
}

/// A chat model of the registry as `/v1/models` lists it.
fn chat_model(m: &super::registry::ModelInfo) -> Model {
    Model {
        state: Some(m.state),
        context_length: m.context_length,
        provider: m.provider,
        default: Some(m.default),
        ..Model::new(&m.id, m.loaded_at.unwrap_or(0))
    }
}
