//! The wire types of the HTTP API and the admin socket: one serde struct per request and
//! response body, by family. The same types generate the OpenAPI document (`api::openapi`),
//! so what is documented is what is parsed and sent.
//!
//! Requests deny unknown fields: a parameter this server does not implement is a 400 that
//! names it (`param`, e.g. `messages[2].foo`), instead of being silently ignored. Fields a
//! route validates beyond their JSON type are `Option`s so that a missing value gets the
//! route's own message rather than serde's.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod embeddings;
pub mod error;
pub mod kb;
pub mod models;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::ApiError;

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<T>,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>) -> Self {
        List {
            object: "list",
            data,
        }
    }
}

/// A body as a JSON value, for callers that still add to it (and the `AdminBackend` trait).
/// The wire types have string keys and no fallible `Serialize`, so this does not fail; if it
/// ever did, `null` is sent rather than a panic.
pub fn value<T: Serialize>(body: &T) -> Value {
    serde_json::to_value(body).unwrap_or(Value::Null)
}

/// A request body that must be a JSON object (400 saying what is wrong with it otherwise).
pub fn object(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(value)
}

/// Parse a request body into `T`. An unknown field is a 400 naming it; any other type error
/// becomes `invalid(param)`, the route's message for the parameter at that path.
pub fn parse<T: DeserializeOwned>(
    body: &[u8],
    invalid: impl Fn(&str) -> ApiError,
) -> Result<T, ApiError> {
    from_value(object(body)?, "", invalid)
}

/// [`parse`] of an already parsed value; `prefix` is the parameter the value sits under
/// (`knowledge`), so errors name the full path.
pub fn from_value<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    invalid: impl Fn(&str) -> ApiError,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = match (prefix, path.as_str()) {
            (p, ".") => p.to_string(),
            ("", s) => s.to_string(),
            (p, s) if s.starts_with('[') => format!("{p}{s}"),
            (p, s) => format!("{p}.{s}"),
        };
        // serde's wording for `deny_unknown_fields`; the path already ends in the field.
        if e.inner().to_string().starts_with("unknown field") {
            ApiError::unknown_param(&path)
        } else {
            invalid(&path)
        }
    })
}

/// A required, non-empty parameter: absent is "you must provide `what`", empty is `empty`.
pub fn required<T>(
    param: &str,
    value: Option<T>,
    is_empty: impl Fn(&T) -> bool,
    what: &str,
    empty: &str,
) -> Result<T, ApiError> {
    match value {
        Some(v) if !is_empty(&v) => Ok(v),
        Some(_) => Err(ApiError::invalid_param(param, empty)),
        None => Err(ApiError::invalid_param(
            param,
            format!("you must provide {what}"),
        )),
    }
}

/// The required `model` parameter of an inference request: a non-empty string.
pub fn model_name(model: Option<String>) -> Result<String, ApiError> {
    let empty = "must be a non-empty string";
    required("model", model, String::is_empty, "a model parameter", empty)
}

/// The top-level parameter of an error path: `messages` of `messages[0].role`.
pub fn top(path: &str) -> &str {
    path.split(['.', '[']).next().unwrap_or(path)
}

/// Serde `default` for passthrough fields: keep a present `null` as `Some(Null)`.
pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The fields serde accepts for `T`, read from its unknown-field error: what the parser
    /// really takes, for comparing with the documented schema.
    pub fn accepted_fields<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
        let e = serde_json::from_str::<T>(r#"{"\u0001":0}"#).unwrap_err();
        let msg = e.to_string();
        // "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
        let list = msg
            .split_once(", expected ")
            .map(|(_, l)| l)
            .unwrap_or_else(|| panic!("{msg}"));
        let mut out: Vec<String> = list
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.sort();
        out
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: Option<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        list: Option<Vec<Inner>>,
        one: Option<Inner>,
    }

    #[test]
    fn errors_name_the_path() {
        let bad = |json: &str| {
            parse::<Outer>(json.as_bytes(), |p| ApiError::invalid_param(p, "bad")).unwrap_err()
        };
        let e = bad(r#"{"x":1}"#);
        assert_eq!(e.param.as_deref(), Some("x"));
        assert_eq!(e.code, Some("unknown_parameter"));
        let e = bad(r#"{"list":[{"a":1},{"b":1}]}"#);
        assert_eq!(e.param.as_deref(), Some("list[1].b"));
        assert_eq!(e.code, Some("unknown_parameter"));
        let e = bad(r#"{"one":{"a":"x"}}"#);
        assert_eq!(e.param.as_deref(), Some("one.a"));
        assert_eq!(e.code, Some("invalid_value"));
        let e = from_value::<Inner>(serde_json::json!({"z": 1}), "k", |p| {
            ApiError::invalid_param(p, "bad")
        })
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("k.z"));
        assert!(bad("[]").message.contains("object"));
        assert_eq!(top("messages[0].role"), "messages");
        assert_eq!(accepted_fields::<Outer>(), vec!["list", "one"]);
    }
}
