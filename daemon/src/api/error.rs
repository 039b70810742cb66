//! Every error the API returns, in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status (and
//! `Retry-After` / `Allow` where HTTP wants them). Engine and key-store errors are mapped here,
//! in one place, so status codes stay consistent across routes.

use hyper::StatusCode;

use super::wire::error::{ErrorBody, ErrorDetail};
use crate::engine::{EmbedError, GenerateError, SchedulerError};

/// An API error: what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
    /// Methods for `Allow` (405).
    pub allow: Option<&'static str>,
}

const INVALID: &str = "invalid_request_error";

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            allow: None,
        }
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400 about the request as a whole (malformed JSON, wrong content type).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID, message)
    }

    /// 400 about one parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message)
            .with_param(param)
            .with_code("invalid_value")
    }

    /// 400 for a parameter this server does not know or does not implement.
    pub fn unknown_param(param: &str) -> Self {
        Self::bad_request(format!("Unrecognized request argument supplied: {param}"))
            .with_param(param)
            .with_code("unknown_parameter")
    }

    pub fn context_length(message: impl Into<String>) -> Self {
        Self::bad_request(message)
            .with_param("messages")
            .with_code("context_length_exceeded")
    }

    /// 400 for an input over a model's token limit, naming it (`input[3]`).
    pub fn input_too_long(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message)
            .with_param(param)
            .with_code("context_length_exceeded")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID,
            format!("request body is larger than {limit} bytes"),
        )
        .with_code("request_too_large")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, INVALID, message).with_code("not_found")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID,
            format!("The model `{model}` does not exist"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID,
            format!("method not allowed; use {allow}"),
        )
        .with_code("method_not_allowed");
        e.allow = Some(allow);
        e
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
            .with_code("invalid_api_key")
    }

    pub fn forbidden(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            format!("this API key lacks the `{scope}` scope"),
        )
        .with_code("insufficient_scope")
    }

    /// 403 for a reason other than a missing scope (`code` says which).
    pub fn forbidden_because(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message).with_code(code)
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("rate limit of this API key exceeded; retry after {retry_after} s"),
        )
        .with_code("rate_limit_exceeded");
        e.retry_after = Some(retry_after);
        e
    }

    /// 429 `quota_exceeded`: the key's or its group's token quota for the day or month is
    /// used; `Retry-After` is the time to the period's end.
    pub fn quota_exceeded(q: &crate::usage::OverQuota, now: u64) -> Self {
        let (y, m, d) = crate::util::civil_from_days((q.resets_at / 86_400) as i64);
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "the {} has used {} of its {} tokens per {}; the quota resets at \
                 {y:04}-{m:02}-{d:02}T00:00:00Z",
                q.who, q.used, q.limit, q.period
            ),
        )
        .with_code("quota_exceeded");
        e.retry_after = Some(q.resets_at.saturating_sub(now).max(1));
        e
    }

    pub fn queue_full(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            .with_code("queue_full");
        e.retry_after = Some(1);
        e
    }

    pub fn loading() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model is still loading; retry shortly",
        )
        .with_code("model_loading");
        e.retry_after = Some(5);
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code("unavailable")
    }

    /// 507: the state directory's disk is full; nothing of the request was stored.
    pub fn insufficient_storage(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INSUFFICIENT_STORAGE, "server_error", message)
            .with_code("insufficient_storage")
    }

    /// A store error: 507 for a full disk, else 500 (logged by the caller's context).
    pub fn store(context: &str, e: &crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Full(_) => Self::insufficient_storage(e.to_string()),
            _ => Self::internal(format!("{context}{e}")),
        }
    }

    /// 409: the request conflicts with stored state (e.g. a collection that exists).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, INVALID, message).with_code("conflict")
    }

    /// 415: a body in a format this route does not take.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID, message)
            .with_code("unsupported_media_type")
    }

    /// A remote model's failure as the client may see it, `status` from
    /// [`crate::remote::RemoteError::http_status`]: the upstream refused the request (4xx, the
    /// client's to fix), is busy (429), down (503), too slow (504) or broken (502). The
    /// message names the model, never the upstream's address or credentials.
    pub fn upstream(status: u16, message: impl Into<String>) -> Self {
        let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let (kind, code) = match status {
            429 => ("rate_limit_error", "upstream_busy"),
            400..=499 => (INVALID, "upstream_rejected"),
            503 => ("server_error", "upstream_unavailable"),
            504 => ("server_error", "upstream_timeout"),
            _ => ("server_error", "upstream_error"),
        };
        let mut e = Self::new(s, kind, message).with_code(code);
        if matches!(status, 429 | 503) {
            e.retry_after = Some(5);
        }
        e
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        super::wire::value(&ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::QueueFull { .. } => ApiError::queue_full(e.to_string()),
            SchedulerError::TooLarge { .. } => ApiError::context_length(e.to_string()),
            SchedulerError::Invalid(g) => g.into(),
            SchedulerError::ShutDown => ApiError::unavailable("the server is shutting down"),
            SchedulerError::Config(_) | SchedulerError::Thread(_) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<GenerateError> for ApiError {
    fn from(e: GenerateError) -> Self {
        match &e {
            GenerateError::ContextTooLong { .. } => ApiError::context_length(e.to_string()),
            GenerateError::EmptyPrompt => ApiError::invalid_param("messages", e.to_string()),
            GenerateError::InvalidParam { param, message } => {
                ApiError::invalid_param(param, message.clone())
            }
            GenerateError::Template(_) => ApiError::invalid_param("messages", e.to_string()),
            GenerateError::Tokenizer(_) | GenerateError::Constraint(_) | GenerateError::Run(_) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        match &e {
            EmbedError::TooLong { index, .. } => {
                ApiError::input_too_long(&format!("input[{index}]"), e.to_string())
            }
            EmbedError::EmptyInput { index } => {
                ApiError::invalid_param(&format!("input[{index}]"), e.to_string())
            }
            EmbedError::QueueFull(_) => ApiError::queue_full(e.to_string()),
            EmbedError::ShutDown => ApiError::unavailable("the server is shutting down"),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<crate::util::TaskFailed> for ApiError {
    fn from(e: crate::util::TaskFailed) -> ApiError {
        ApiError::internal(format!("background task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape_with_nulls() {
        let b = ApiError::bad_request("We could not parse the JSON body").body();
        let e = &b["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert!(e["param"].is_null() && e["code"].is_null());
        assert_eq!(b.as_object().unwrap().len(), 1);
        assert_eq!(e.as_object().unwrap().len(), 4);
    }

    #[test]
    fn unknown_param_names_it() {
        let e = ApiError::unknown_param("tools");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["param"], "tools");
        assert!(e.message.contains("tools"));
    }

    #[test]
    fn scheduler_errors_map_to_statuses() {
        let full: ApiError = SchedulerError::QueueFull {
            queued: 1,
            max_queue: 1,
        }
        .into();
        assert_eq!(
            (full.status, full.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(1))
        );
        let big: ApiError = SchedulerError::TooLarge {
            tokens: 10,
            needed_bytes: 10,
            budget_bytes: 1,
        }
        .into();
        assert_eq!(big.status, StatusCode::BAD_REQUEST);
        assert_eq!(big.code, Some("context_length_exceeded"));
        let ctx: ApiError = GenerateError::ContextTooLong {
            prompt: 1,
            max_tokens: 1,
            context: 1,
        }
        .into();
        assert_eq!(ctx.code, Some("context_length_exceeded"));
        let bad: ApiError = GenerateError::InvalidParam {
            param: "top_p".into(),
            message: "out of range".into(),
        }
        .into();
        assert_eq!(bad.param.as_deref(), Some("top_p"));
    }
}
