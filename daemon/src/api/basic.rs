//! Health, readiness, metrics, the API description and the model list.

use super::error::ApiError;
use super::gate::Call;
use super::wire::{self, models::Model};
use super::{full, json_response, Body, ModelState, OPENAPI};
use crate::keys::Scope;
use hyper::{Response, StatusCode};

/// `GET /healthz`: the process answers.
pub async fn healthz(_: Call) -> Result<Response<Body>, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &wire::value(&wire::models::Health { status: "ok" }),
    ))
}

/// `GET /readyz`: the model serves. Anonymous, so a failed load says only that it failed; the
/// cause (paths, library messages) is for admins: `edgeseek status`, `/v1/admin/status`, the
/// service log.
pub async fn readyz(c: Call) -> Result<Response<Body>, ApiError> {
    match c.app.model_state() {
        ModelState::Ready(_) => Ok(json_response(
            StatusCode::OK,
            &wire::value(&wire::models::Ready {
                status: "ready",
                model: c.app.model_name.clone(),
            }),
        )),
        ModelState::Loading => Err(ApiError::loading()),
        ModelState::Failed(_) => Err(ApiError::unavailable(
            "the model failed to load; the cause is in `edgeseek status` and the service log",
        )),
    }
}

/// `GET /metrics`: Prometheus text (the gate admits loopback, or an admin key).
pub async fn metrics(c: Call) -> Result<Response<Body>, ApiError> {
    let served = c.app.served();
    let stats = served.as_ref().map(|s| s.scheduler.stats());
    Ok(full(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        c.app.metrics.render(stats.as_ref(), served.is_some()),
    ))
}

/// `GET /openapi.json`.
pub async fn openapi(_: Call) -> Result<Response<Body>, ApiError> {
    Ok(full(StatusCode::OK, "application/json", OPENAPI))
}

/// `GET /v1/models`: the chat model and the embedding model, once loaded.
pub async fn models(c: Call) -> Result<Response<Body>, ApiError> {
    let app = &c.app;
    let mut data: Vec<Model> = app
        .served()
        .map(|s| Model::new(&app.model_name, s.loaded_at))
        .into_iter()
        .collect();
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
    match (app.served(), app.embedder_loaded()) {
        (Some(s), _) if id == app.model_name => Ok(json_response(
            StatusCode::OK,
            &wire::value(&Model::new(&app.model_name, s.loaded_at)),
        )),
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
