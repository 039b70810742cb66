//! `POST /v1/chat/completions` and `POST /v1/completions`: requests, whole responses, stream
//! chunks, usage, logprobs, tool calls and `citations`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::kb::Hit;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    /// At most 16, none empty.
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Add a last chunk with `usage` and empty `choices`.
    pub include_usage: Option<bool>,
}

/// Retrieval-augmented generation: search these knowledge-base collections for the last
/// user message and answer from the top chunks, cited as [n]. The response then carries
/// `citations`. Every collection needs `kb:read` on the key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeParam {
    /// 1 to 16 collection names.
    #[schema(required = true, min_items = 1, max_items = 16)]
    pub collections: Option<Vec<String>>,
    /// Chunks put into the prompt, 1 to 20 (default 5).
    #[schema(minimum = 1, maximum = 20, default = 5)]
    pub top_k: Option<u64>,
}

/// A text part of a message's content (other part types are refused).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Only `text`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A function the model may call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    /// `a-z`, `A-Z`, `0-9`, `_` and `-`, at most 64 characters; unique among the tools.
    #[schema(required = true, pattern = "^[a-zA-Z0-9_-]{1,64}$")]
    pub name: Option<String>,
    pub description: Option<String>,
    /// JSON Schema of the arguments object, shown to the model through its chat template.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// With `tool_choice` `required` or a named function the arguments always follow
    /// `parameters`; with `auto` and `strict: true` a call the model opens follows them.
    pub strict: Option<bool>,
}

/// One entry of `tools`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Only `function`.
    #[serde(rename = "type")]
    #[schema(required = true)]
    pub kind: Option<String>,
    #[schema(required = true)]
    pub function: Option<FunctionDef>,
}

/// The function of an assistant message's tool call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionCallParam {
    #[schema(required = true)]
    pub name: Option<String>,
    /// The arguments as a JSON string, as this server returned them.
    #[schema(required = true)]
    pub arguments: Option<String>,
}

/// A tool call of an earlier assistant message, fed back to the chat template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCallParam {
    /// The id the `tool` message with the result refers to.
    pub id: Option<String>,
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[schema(required = true)]
    pub function: Option<FunctionCallParam>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer` (an alias of system), `user`, `assistant` or `tool`.
    #[schema(required = true)]
    pub role: Option<String>,
    /// Required except on an assistant message with `tool_calls`.
    pub content: Option<Content>,
    /// Passed to the chat template as is.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Value>,
    /// Calls an assistant message made (role `assistant` only), passed to the chat template.
    pub tool_calls: Option<Vec<ToolCallParam>>,
    /// Of a `tool` message: the id of the call it answers. Passed to the chat template as is.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    pub tool_call_id: Option<Value>,
    /// Accepted and dropped (earlier reasoning is not fed back).
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    pub reasoning_content: Option<Value>,
    /// Accepted and dropped, as `reasoning_content`.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    pub reasoning: Option<Value>,
    /// Accepted and dropped.
    #[serde(default, deserialize_with = "super::present")]
    #[schema(value_type = Option<String>)]
    pub refusal: Option<Value>,
}

/// The sampling parameters both routes take.
macro_rules! sampling_fields {
    ($(#[$m:meta])* pub struct $name:ident { $($rest:tt)* }) => {
        $(#[$m])*
        pub struct $name {
            #[schema(required = true)]
            pub model: Option<String>,
            /// 0 = greedy. Default follows DeepSeek-R1's recommendation.
            #[schema(minimum = 0, maximum = 2, default = 0.6)]
            pub temperature: Option<f64>,
            #[schema(exclusive_minimum = 0, maximum = 1, default = 0.95)]
            pub top_p: Option<f64>,
            /// 0 = off.
            #[schema(minimum = 0, default = 0)]
            pub top_k: Option<u64>,
            #[schema(minimum = 0, maximum = 1, default = 0)]
            pub min_p: Option<f64>,
            /// Same seed and request give the same output; choice i uses seed + i.
            #[schema(minimum = 0)]
            pub seed: Option<u64>,
            /// Matched across token boundaries; not included in the output.
            pub stop: Option<Stop>,
            /// Default: up to the end of the context (or the KV budget).
            #[schema(minimum = 1)]
            pub max_tokens: Option<u64>,
            #[schema(minimum = -2, maximum = 2, default = 0)]
            pub presence_penalty: Option<f64>,
            #[schema(minimum = -2, maximum = 2, default = 0)]
            pub frequency_penalty: Option<f64>,
            /// Extension (as in vLLM): multiplicative penalty over prompt and output tokens.
            #[schema(exclusive_minimum = 0, maximum = 10, default = 1)]
            pub repetition_penalty: Option<f64>,
            /// Token id (as a string) to bias, -100 to 100.
            pub logit_bias: Option<BTreeMap<String, f64>>,
            #[schema(minimum = 1, maximum = 16, default = 1)]
            pub n: Option<u64>,
            #[schema(default = false)]
            pub stream: Option<bool>,
            /// Only with stream: true. include_usage adds a last chunk with usage and empty
            /// choices.
            pub stream_options: Option<StreamOptions>,
            /// Accepted and ignored.
            pub user: Option<String>,
            /// Extension: after this many reasoning tokens `</think>` is forced and the
            /// answer follows.
            #[schema(minimum = 0)]
            pub max_reasoning_tokens: Option<u64>,
            $($rest)*
        }
    };
}

sampling_fields! {
    #[derive(Debug, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ChatCompletionRequest {
        #[schema(required = true, min_items = 1)]
        pub messages: Option<Vec<ChatMessage>>,
        /// Alias of max_tokens.
        #[schema(minimum = 1)]
        pub max_completion_tokens: Option<u64>,
        #[schema(default = false)]
        pub logprobs: Option<bool>,
        /// Requires logprobs: true.
        #[schema(minimum = 0, maximum = 20)]
        pub top_logprobs: Option<u64>,
        pub knowledge: Option<KnowledgeParam>,
        /// Ground the answer in web results (联网搜索) from the office's SearXNG: `true`, or
        /// `{"top_n": 1-20, "fetch": 0-top_n}` (results in the prompt, best pages fetched
        /// and read). Needs the key's `web` scope and `[web_search]` configured; the
        /// response then carries `citations` with `url` and `title`.
        #[schema(value_type = Option<Object>)]
        pub web_search: Option<Value>,
        /// Functions the model may call (1 to 128). Needs a model whose chat template
        /// renders tools.
        #[schema(min_items = 1, max_items = 128)]
        pub tools: Option<Vec<Tool>>,
        /// `auto` (the default with tools: the model decides), `none` (the tools are shown
        /// to the model but its output is not read as calls), `required` (the answer is one
        /// or more calls) or `{"type": "function", "function": {"name": N}}` (one call of N).
        /// Forced calls are constrained: their arguments follow the function's `parameters`.
        #[schema(value_type = Option<Object>)]
        pub tool_choice: Option<Value>,
        /// false: at most one call per answer (later ones are dropped). Default true.
        pub parallel_tool_calls: Option<bool>,
        /// `{"type": "text"}` (default), `{"type": "json_object"}` (the answer is a JSON
        /// object) or `{"type": "json_schema", "json_schema": {"name", "schema"}}` (JSON
        /// valid under the schema). Enforced by constrained decoding, after the reasoning of
        /// R1 models; a schema that cannot be enforced is a 400.
        pub response_format: Option<ResponseFormat>,
    }
}

/// `response_format` of a chat request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    #[schema(required = true)]
    pub kind: Option<String>,
    /// With `json_schema`.
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    /// `a-z`, `A-Z`, `0-9`, `_` and `-`, at most 64 characters.
    #[schema(required = true)]
    pub name: Option<String>,
    pub description: Option<String>,
    /// The JSON Schema (default: any JSON value). Local `$ref`s only.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Accepted; the schema is always enforced.
    pub strict: Option<bool>,
}

/// `prompt` of a completion.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    /// Exactly one string.
    Texts(Vec<String>),
    /// Token ids of the model's tokenizer.
    Ids(Vec<u64>),
}

sampling_fields! {
    #[derive(Debug, Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CompletionRequest {
        #[schema(required = true)]
        pub prompt: Option<PromptInput>,
        /// Alternatives per token, 0 to 5.
        #[schema(minimum = 0, maximum = 5)]
        pub logprobs: Option<u64>,
        /// Only false is supported.
        pub echo: Option<bool>,
    }
}

/// Reasoning tokens are part of `completion_tokens`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub completion_tokens_details: CompletionTokensDetails,
}

/// One alternative of a token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    /// Natural log; -9999 for impossible.
    pub logprob: f64,
    /// UTF-8 bytes of the token.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat `logprobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
    /// Always null.
    #[schema(required = true)]
    pub refusal: Option<String>,
}

/// Legacy completions `logprobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    pub top_logprobs: Vec<BTreeMap<String, f64>>,
    /// Byte offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// A source the answer cites as `[index]`: a knowledge-base hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct Citation {
    /// The `[n]` the answer uses, from 1.
    pub index: usize,
    #[serde(flatten)]
    pub hit: Hit,
}

/// The function a tool call invokes.
#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments, a JSON object as a string (as the model wrote it).
    pub arguments: String,
}

/// A call the model made.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCall {
    /// `call_` and 24 random characters.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// Part of a streamed function call.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct FunctionDelta {
    /// In the first delta of a call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the arguments (empty in the first delta).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// Part of a streamed tool call: the first delta of a call has `id`, `type` and
/// `function.name`; the following ones add to `function.arguments`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ToolCallDelta {
    /// The call's position in `tool_calls`.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, in the first delta of a call.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

/// The answer of one choice.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// null when the answer is only tool calls.
    #[schema(required = true)]
    pub content: Option<String>,
    /// The calls the model made (with `tools` and `tool_choice: auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The reasoning (R1 models), without the `<think>` tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Alias of `reasoning_content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    #[schema(required = true)]
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, `tool_calls` or `cancelled`.
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    /// Reasoning (if the prompt opened it) followed by the answer, as generated.
    pub text: String,
    #[schema(required = true)]
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: &'static str,
}

/// A whole response: with [`ChatChoice`]s a `chat.completion`, with [`CompletionChoice`]s a
/// `text_completion`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Response<C> {
    pub id: String,
    /// `chat.completion` or `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    pub usage: Usage,
    /// Chat with `knowledge`: the sources of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub citations: Option<Vec<Citation>>,
}

/// What one stream chunk adds to a chat choice.
#[serde_with::skip_serializing_none]
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk of each choice.
    pub role: Option<&'static str>,
    pub content: Option<String>,
    pub reasoning_content: Option<String>,
    pub reasoning: Option<String>,
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    #[schema(required = true)]
    pub logprobs: Option<ChatLogprobs>,
    #[schema(required = true)]
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChunkChoice {
    pub index: usize,
    pub text: String,
    #[schema(required = true)]
    pub logprobs: Option<CompletionLogprobs>,
    #[schema(required = true)]
    pub finish_reason: Option<&'static str>,
}

/// One `data:` event of a stream: with [`ChatChunkChoice`]s a `chat.completion.chunk`, with
/// [`CompletionChunkChoice`]s a `text_completion`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamChunk<C> {
    pub id: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    /// With `stream_options.include_usage`: null on every chunk but the last, which has
    /// empty `choices`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
    /// Chat with `knowledge`: the sources, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub citations: Option<Vec<Citation>>,
}
