//! `POST /v1/embeddings` (OpenAI format), served by the [`Embedder`] of `engine::embed`.
//!
//! Request: `model` (the embedding model's directory name), `input` (a string or an array of
//! up to [`MAX_INPUTS`] strings, none empty), `encoding_format` (`float`, the default, or
//! `base64`: the little-endian f32 bytes), `dimensions` (accepted only when equal to the
//! model's width: these models are not trained to be truncated), `user` (ignored). Token-id
//! inputs (arrays of integers) are refused: they would be ids of OpenAI's tokenizer, which
//! mean nothing to this model. An input longer than the model reads is refused too (400
//! naming its index) rather than silently truncated. Any other parameter is a 400 naming it.
//!
//! Response: `{"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
//! "model", "usage": {"prompt_tokens", "total_tokens"}}`; tokens are what the model read,
//! `[CLS]`/`[SEP]` included. Vectors are unit length.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use hyper::{Response, StatusCode};

use super::error::ApiError;
use super::gate::{self, Call, Cost};
use super::wire::embeddings::{
    Embedding, EmbeddingInput, EmbeddingList, EmbeddingRequest, EmbeddingUsage, InputItem, Vector,
};
use super::{full, Body};
use crate::engine::embed::{EmbedError, EmbedRequest, Embedder, Overflow};

/// Most inputs per request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// A validated request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub model: String,
    pub inputs: Vec<String>,
    /// `input` was one string (errors then name `input`, not `input[0]`).
    pub single: bool,
    pub base64: bool,
    pub dimensions: Option<u64>,
}

impl Parsed {
    /// The parameter name of input `index`.
    pub fn input_param(&self, index: usize) -> String {
        if self.single {
            "input".to_string()
        } else {
            format!("input[{index}]")
        }
    }
}

/// The 400 for a value of the wrong JSON type at `path`.
fn type_error(path: &str) -> ApiError {
    let (param, msg) = match super::wire::top(path) {
        "model" => ("model", "must be a non-empty string"),
        "encoding_format" => (
            "encoding_format",
            "encoding_format must be `float` or `base64`",
        ),
        "dimensions" => ("dimensions", "dimensions must be a positive integer"),
        "user" => ("user", "user must be a string"),
        _ => ("input", "input must be a string or an array of strings"),
    };
    ApiError::invalid_param(param, msg)
}

/// Parse and validate a request body.
pub fn parse(body: &[u8]) -> Result<Parsed, ApiError> {
    let r: EmbeddingRequest = super::wire::parse(body, type_error)?;
    let model = super::wire::model_name(r.model)?;
    let (inputs, single) = inputs(r.input)?;
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                "encoding_format must be `float` or `base64`",
            ))
        }
    };
    let dimensions = match r.dimensions {
        Some(0) => {
            return Err(ApiError::invalid_param(
                "dimensions",
                "dimensions must be a positive integer",
            ))
        }
        d => d,
    };
    Ok(Parsed {
        model,
        inputs,
        single,
        base64,
        dimensions,
    })
}

fn inputs(input: Option<EmbeddingInput>) -> Result<(Vec<String>, bool), ApiError> {
    match input {
        None => Err(ApiError::invalid_param(
            "input",
            "you must provide an input",
        )),
        Some(EmbeddingInput::Text(s)) if s.is_empty() => Err(ApiError::invalid_param(
            "input",
            "input must not be an empty string",
        )),
        Some(EmbeddingInput::Text(s)) => Ok((vec![s], true)),
        Some(EmbeddingInput::Texts(a)) if a.is_empty() => Err(ApiError::invalid_param(
            "input",
            "input must not be an empty array",
        )),
        Some(EmbeddingInput::Texts(a)) if a.len() > MAX_INPUTS => Err(ApiError::invalid_param(
            "input",
            format!("at most {MAX_INPUTS} inputs per request (got {})", a.len()),
        )),
        Some(EmbeddingInput::Texts(a)) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, item) in a.into_iter().enumerate() {
                match item {
                    InputItem::Text(s) if s.is_empty() => {
                        return Err(ApiError::invalid_param(
                            &format!("input[{i}]"),
                            format!("input[{i}] must not be an empty string"),
                        ))
                    }
                    InputItem::Text(s) => out.push(s),
                    InputItem::TokenId(_) | InputItem::TokenIds(_) => {
                        return Err(ApiError::invalid_param(
                            "input",
                            "token-id inputs are not supported (they would be another \
                             tokenizer's ids); send text",
                        ))
                    }
                    InputItem::Other(_) => {
                        return Err(ApiError::invalid_param(
                            &format!("input[{i}]"),
                            format!("input[{i}] must be a string"),
                        ))
                    }
                }
            }
            Ok((out, false))
        }
    }
}

/// Base64 (standard alphabet, padded) of the little-endian bytes of `v`, as OpenAI sends
/// with `encoding_format: "base64"` (numpy: `np.frombuffer(base64.b64decode(s), "<f4")`).
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The response body. f32 values are written in their shortest exact form.
pub fn response_body(
    model: &str,
    vectors: &[Vec<f32>],
    base64: bool,
    tokens: usize,
) -> Result<Vec<u8>, ApiError> {
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| Embedding {
            object: "embedding",
            index,
            embedding: if base64 {
                Vector::Base64(base64_f32(v))
            } else {
                Vector::Float(v)
            },
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    serde_json::to_vec(&list).map_err(|e| ApiError::internal(format!("response: {e}")))
}

/// Sets the flag when the handler is dropped (client gone), so the worker skips the rest.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The request's errors that need to know how `input` was given.
fn input_error(p: &Parsed, e: EmbedError) -> ApiError {
    match e {
        EmbedError::TooLong { index, tokens, max } => ApiError::input_too_long(
            &p.input_param(index),
            format!(
                "{} has {tokens} tokens; the embedding model reads at most {max} (including its special tokens)",
                p.input_param(index)
            ),
        ),
        EmbedError::EmptyInput { index } => ApiError::invalid_param(
            &p.input_param(index),
            format!("{} must not be an empty string", p.input_param(index)),
        ),
        other => other.into(),
    }
}

pub(super) async fn create(mut c: Call) -> Result<Response<Body>, ApiError> {
    let app = c.app.clone();
    let key = c.key()?.clone();
    let parsed = parse(&c.body)?;
    // Every input is embedded: the body's text counts against the token budget before any
    // work, the exact count is settled after.
    c.admit(Cost {
        requests: 1,
        tokens: gate::estimate_tokens(c.body.len()),
        inflight: 1,
    })?;
    if let Some(up) = app.remotes().get(&parsed.model) {
        return super::upstream::embed(&mut c, up).await;
    }
    let embedder: Embedder = app.embedder_ready()?;
    if parsed.model != embedder.name() {
        let mut e = ApiError::model_not_found(&parsed.model);
        e.message = format!(
            "The model `{}` does not exist or is not an embedding model (this server embeds with `{}`)",
            parsed.model,
            embedder.name()
        );
        return Err(e);
    }
    if let Some(d) = parsed.dimensions {
        if d != embedder.dim() as u64 {
            return Err(ApiError::invalid_param(
                "dimensions",
                format!(
                    "{} produces {}-dimensional vectors and cannot shorten them (dimensions = {d})",
                    embedder.name(),
                    embedder.dim()
                ),
            ));
        }
    }
    tracing::debug!(request_id = %c.rid, key_id = %key.id, inputs = parsed.inputs.len(), "embeddings");

    let cancel = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancel.clone());
    let options = EmbedRequest {
        overflow: Overflow::Reject,
        wait: false,
        cancel: Some(cancel),
    };
    let mut parsed = parsed;
    let inputs = std::mem::take(&mut parsed.inputs);
    let worker = embedder.clone();
    // Tokenizing and waiting for the worker block: off the reactor.
    let result = tokio::task::spawn_blocking(move || worker.embed_with(&inputs, &options))
        .await
        .map_err(|e| ApiError::internal(format!("embedding task failed: {e}")))?;
    drop(guard);
    let out = result.map_err(|e| input_error(&parsed, e))?;
    app.keys.charge_tokens(
        &key,
        (out.tokens as u64).saturating_sub(c.admitted_tokens()),
    );
    let body = response_body(embedder.name(), &out.vectors, parsed.base64, out.tokens)?;
    Ok(full(StatusCode::OK, "application/json", body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn err(body: &str) -> ApiError {
        parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_string_and_array_inputs() {
        let p = parse(br#"{"model": "m", "input": "hi"}"#).unwrap();
        assert_eq!(p.inputs, vec!["hi"]);
        assert!(p.single && !p.base64 && p.dimensions.is_none());
        assert_eq!(p.input_param(0), "input");
        let p = parse(
            br#"{"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 384, "user": "u"}"#,
        )
        .unwrap();
        assert_eq!(p.inputs, vec!["a", "b"]);
        assert!(!p.single && p.base64);
        assert_eq!(p.dimensions, Some(384));
        assert_eq!(p.input_param(1), "input[1]");
    }

    #[test]
    fn rejects_bad_requests_naming_the_parameter() {
        for (body, param) in [
            (r#"{"model": "m", "input": "x", "tools": []}"#, "tools"),
            (r#"{"input": "x"}"#, "model"),
            (r#"{"model": "m"}"#, "input"),
            (r#"{"model": "m", "input": ""}"#, "input"),
            (r#"{"model": "m", "input": []}"#, "input"),
            (r#"{"model": "m", "input": ["a", ""]}"#, "input[1]"),
            (r#"{"model": "m", "input": ["a", 3, "b"]}"#, "input"),
            (r#"{"model": "m", "input": [1, 2, 3]}"#, "input"),
            (r#"{"model": "m", "input": [[1, 2], [3]]}"#, "input"),
            (r#"{"model": "m", "input": ["a", {"t": 1}]}"#, "input[1]"),
            (r#"{"model": "m", "input": 5}"#, "input"),
            (
                r#"{"model": "m", "input": "x", "encoding_format": "hex"}"#,
                "encoding_format",
            ),
            (
                r#"{"model": "m", "input": "x", "dimensions": 0}"#,
                "dimensions",
            ),
            (
                r#"{"model": "m", "input": "x", "dimensions": "384"}"#,
                "dimensions",
            ),
            (r#"{"model": "m", "input": "x", "user": 1}"#, "user"),
        ] {
            let e = err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let e = err(r#"{"model": "m", "input": [1, 2]}"#);
        assert!(e.message.contains("token-id"), "{}", e.message);
        assert!(err("[1]").param.is_none());
        assert!(err("{").message.contains("parse"));
    }

    #[test]
    fn input_count_is_capped() {
        let ok: Vec<&str> = vec!["a"; MAX_INPUTS];
        let body = serde_json::json!({"model": "m", "input": ok}).to_string();
        assert_eq!(parse(body.as_bytes()).unwrap().inputs.len(), MAX_INPUTS);
        let over: Vec<&str> = vec!["a"; MAX_INPUTS + 1];
        let body = serde_json::json!({"model": "m", "input": over}).to_string();
        let e = parse(body.as_bytes()).unwrap_err();
        assert!(e.message.contains("2048"), "{}", e.message);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 0x3f800000 → bytes 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64_f32(&[]), "");
    }

    #[test]
    fn response_shape() {
        let v = vec![vec![0.1f32, -0.5], vec![1.0, 0.0]];
        let body: Value =
            serde_json::from_slice(&response_body("m", &v, false, 7).unwrap()).unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "m");
        assert_eq!(body["usage"]["prompt_tokens"], 7);
        assert_eq!(body["usage"]["total_tokens"], 7);
        assert_eq!(body["data"][1]["index"], 1);
        assert_eq!(body["data"][1]["object"], "embedding");
        // Shortest exact f32 text: 0.1, not 0.10000000149011612.
        let raw = String::from_utf8(response_body("m", &v, false, 7).unwrap()).unwrap();
        assert!(raw.contains("[0.1,-0.5]"), "{raw}");
        let b: Value = serde_json::from_slice(&response_body("m", &v, true, 7).unwrap()).unwrap();
        assert_eq!(b["data"][0]["embedding"], base64_f32(&v[0]));
    }

    #[test]
    fn too_long_names_the_index() {
        let p = parse(br#"{"model": "m", "input": ["a", "b"]}"#).unwrap();
        let e = input_error(
            &p,
            EmbedError::TooLong {
                index: 1,
                tokens: 300,
                max: 256,
            },
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("input[1]"));
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(
            e.message.contains("300") && e.message.contains("256"),
            "{}",
            e.message
        );
    }
}
