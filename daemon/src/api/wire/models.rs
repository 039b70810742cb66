//! `/v1/models`, `/healthz`, `/readyz`.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds the model was loaded.
    pub created: u64,
    pub owned_by: &'static str,
    /// Agents (`agent:NAME`) only: what the admin wrote about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Chat models only: `ready`, `loading`, `unloaded`, `unloading` or `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// Chat models only: the context length, once loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// Chat models only: the execution provider, once loaded (`tensorrt`, `cuda`, `cpu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
    /// Chat models only: whether `default` names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// `remote` for a model answered by an upstream inference server (`[remote.NAME]`);
    /// absent for local models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
}

impl Model {
    pub fn new(id: &str, loaded_at: u64) -> Model {
        Model {
            id: id.to_string(),
            object: "model",
            created: loaded_at,
            owned_by: "edgeseek",
            description: None,
            state: None,
            context_length: None,
            provider: None,
            default: None,
            backend: None,
        }
    }

    /// A remote model: `ready` while its upstream answers health checks, else `unavailable`.
    pub fn remote(name: &str, up: bool, context_length: Option<usize>) -> Model {
        Model {
            state: Some(if up { "ready" } else { "unavailable" }),
            context_length,
            backend: Some("remote"),
            default: Some(false),
            ..Model::new(name, 0)
        }
    }

    /// An agent, listed as model `agent:NAME`.
    pub fn agent(a: &crate::agents::Agent) -> Model {
        Model {
            description: Some(a.description.clone()),
            ..Model::new(
                &format!("{}{}", crate::agents::MODEL_PREFIX, a.name),
                a.created,
            )
        }
    }
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// `GET /readyz` once the model serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    pub status: &'static str,
    /// The default model.
    pub model: String,
    /// Every chat model and its state.
    pub models: std::collections::BTreeMap<String, String>,
    /// Every remote model: `up` or `down` (a down upstream does not make the daemon unready).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub remotes: std::collections::BTreeMap<String, String>,
}
