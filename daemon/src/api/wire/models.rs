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
}

impl Model {
    pub fn new(id: &str, loaded_at: u64) -> Model {
        Model {
            id: id.to_string(),
            object: "model",
            created: loaded_at,
            owned_by: "edgeseek",
            description: None,
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
    pub model: String,
}
