//! Remote model backends: the client side of forwarding chat, completion and embedding
//! requests to a company's OpenAI-compatible inference server (vLLM, SGLang, NIM, llama.cpp's
//! llama-server, or another edgeseek), configured as `[remote.NAME]`.
//!
//! This part: the `[remote.NAME]` configuration and its validation, and the assembly of whole
//! assistant turns from an upstream's chunks.

mod assemble;
mod config;

pub use assemble::{usage_of, Assembled, Usage};
pub use config::{validate, RemoteConfig, RemoteConfigError};
