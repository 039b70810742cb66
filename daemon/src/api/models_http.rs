//! `/v1/admin/models`: list, load, unload and pin the chat models (the registry does the work;
//! the admin socket's `models.*` commands run the same [`ModelOp`]s).

use hyper::{Response, StatusCode};
use serde::Deserialize;

use super::error::ApiError;
use super::gate::Call;
use super::registry::ModelOp;
use super::{json_response, wire, Body};

/// `GET /v1/admin/models`.
pub async fn list(c: Call) -> Result<Response<Body>, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &wire::value(&c.app.models.model_list()),
    ))
}

/// `POST /v1/admin/models` `{"model": NAME_OR_DIR, "pin": false}`: load and wait until it
/// serves.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadReq {
    /// A known model's name, a directory name under `<state_dir>/models`, or a directory.
    pub model: String,
    /// Keep it loaded until unpinned (an unload is refused).
    #[serde(default)]
    pub pin: bool,
}

pub async fn load(c: Call) -> Result<Response<Body>, ApiError> {
    let r: LoadReq = wire::parse(&c.body, |p| match wire::top(p) {
        "model" => ApiError::invalid_param(
            "model",
            "`model` must be a string: a model name or directory",
        ),
        "pin" => ApiError::invalid_param("pin", "`pin` must be true or false"),
        p => ApiError::invalid_param(p, "invalid value"),
    })?;
    c.note(|e| e.target = Some(r.model.clone()));
    run(
        &c,
        ModelOp::Load {
            model: r.model,
            pin: r.pin,
        },
    )
    .await
}

/// `DELETE /v1/admin/models/{model}`: stop serving it once its running requests are done.
pub async fn unload(c: Call) -> Result<Response<Body>, ApiError> {
    let m = c.param("model")?.to_string();
    run(&c, ModelOp::Unload(m)).await
}

/// `PATCH /v1/admin/models/{model}` `{"pinned": bool}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinReq {
    pub pinned: bool,
}

pub async fn pin(c: Call) -> Result<Response<Body>, ApiError> {
    let m = c.param("model")?.to_string();
    let r: PinReq = wire::parse(&c.body, |_| {
        ApiError::invalid_param("pinned", "`pinned` must be true or false")
    })?;
    run(&c, ModelOp::Pin(m, r.pinned)).await
}

async fn run(c: &Call, op: ModelOp) -> Result<Response<Body>, ApiError> {
    let app = c.app.clone();
    let what = op.action();
    let info = crate::util::blocking(move || app.models.apply(&op).map_err(ApiError::from)).await?;
    tracing::info!(op = what, model = %info.id, state = info.state, "model changed over HTTPS");
    Ok(json_response(StatusCode::OK, &wire::value(&info)))
}
