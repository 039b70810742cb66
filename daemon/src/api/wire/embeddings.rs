//! `POST /v1/embeddings`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Text or texts to embed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    /// Up to 2048 texts.
    Texts(Vec<InputItem>),
}

/// One element of an `input` array. Anything is taken here so that the route can name the
/// element that is wrong (`input[3]`), and refuse token ids (another tokenizer's) by name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum InputItem {
    Text(String),
    TokenId(serde_json::Number),
    TokenIds(Vec<serde_json::Value>),
    Other(serde_json::Value),
}

/// Documented as what is accepted: a non-empty string.
impl utoipa::PartialSchema for InputItem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .into()
    }
}

impl ToSchema for InputItem {}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    /// The embedding model's served name (its directory name).
    #[schema(required = true)]
    pub model: Option<String>,
    /// Text or up to 2048 texts, each within the model's token limit (all-minilm-l6-v2: 256
    /// tokens including [CLS] and [SEP]).
    #[schema(required = true)]
    pub input: Option<EmbeddingInput>,
    /// `float` (default) or `base64`: the little-endian float32 bytes of each vector,
    /// base64-encoded.
    pub encoding_format: Option<String>,
    /// Accepted only when equal to the model's width (384 for all-minilm-l6-v2).
    #[schema(minimum = 1)]
    pub dimensions: Option<u64>,
    /// Accepted and ignored.
    pub user: Option<String>,
}

/// A vector: floats, or base64 of their little-endian bytes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Embedding<'a> {
    /// Always `embedding`.
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector<'a>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens the model read, special tokens included.
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList<'a> {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Embedding<'a>>,
    pub model: &'a str,
    pub usage: EmbeddingUsage,
}
