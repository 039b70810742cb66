//! The error body of every route: `{"error": {"message", "type", "param", "code"}}` (OpenAI's
//! shape; `param` and `code` are `null` when they do not apply).

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The parameter the error is about (`messages[0].role`, `input[3]`).
    #[schema(required = true)]
    pub param: Option<&'a str>,
    /// e.g. `invalid_value`, `unknown_parameter`, `model_not_found`, `insufficient_scope`.
    #[schema(required = true)]
    pub code: Option<&'a str>,
}
