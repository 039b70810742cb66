//! edgeseek: the OS layer around a local DeepSeek-R1-Distill model.
//!
//! One daemon (`edgeseek serve`) plus admin subcommands; the modules below each own one
//! concern (see README "Architecture").

pub mod admin;
pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod conn;
pub mod doctor;
pub mod engine;
pub mod kb;
pub mod keys;
pub mod mcp;
pub mod remote;
pub mod schema;
pub mod serve;
pub mod service;
pub mod store;
pub mod tls;
pub mod usage;
pub mod util;
pub mod web;
