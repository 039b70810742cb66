//! `[remote.NAME]`: one OpenAI-compatible upstream, and the checks a configuration must pass
//! before the daemon starts (or reloads) with it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The longest a remote name may be (the same rule as MCP server names).
const MAX_NAME: usize = 64;

fn default_connect_timeout_s() -> u64 {
    5
}
fn default_first_byte_timeout_s() -> u64 {
    120
}
fn default_idle_timeout_s() -> u64 {
    60
}
fn default_max_concurrency() -> usize {
    32
}
fn default_health_interval_s() -> u64 {
    15
}

/// `[remote.NAME]`: a company inference server (vLLM, SGLang, NIM, llama-server, another
/// edgeseek) whose model edgeseek serves under NAME.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Base URL of the OpenAI-compatible API, with its /v1: `https://vllm.hq.corp:8000/v1`.
    pub url: String,
    /// The model name the upstream serves (sent as `model`); default: the entry's name.
    #[serde(default)]
    pub model: Option<String>,
    /// File holding the bearer token (one line, trimmed). Must not be readable by group or
    /// others (mode & 0o077 == 0), else refused when loading: the token is a credential of
    /// the company's inference service, not of this appliance.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// PEM CA bundle the upstream's certificate is checked against (only these roots); unset:
    /// the system trust store ([`crate::web::tls::client_config`]).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds to open the TCP (and TLS) connection.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// Seconds until the response headers arrive. A non-streaming completion is answered only
    /// when it is generated, so this bounds a whole non-streaming generation.
    #[serde(default = "default_first_byte_timeout_s")]
    pub first_byte_timeout_s: u64,
    /// Longest gap, in seconds, between two pieces of the body or stream.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
    /// Requests in flight to this upstream; past it a request is refused with
    /// [`super::RemoteError::Busy`] rather than queued behind the others.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Seconds between health probes (`GET {url}/models`) while the upstream is up.
    #[serde(default = "default_health_interval_s")]
    pub health_interval_s: u64,
    /// Context length to advertise in /v1/models (optional).
    #[serde(default)]
    pub context_length: Option<usize>,
    /// tokenizer.json used to count tokens when the upstream's response has no `usage`.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
}

impl Default for RemoteConfig {
    fn default() -> RemoteConfig {
        RemoteConfig {
            url: String::new(),
            model: None,
            api_key_file: None,
            ca_file: None,
            connect_timeout_s: default_connect_timeout_s(),
            first_byte_timeout_s: default_first_byte_timeout_s(),
            idle_timeout_s: default_idle_timeout_s(),
            max_concurrency: default_max_concurrency(),
            health_interval_s: default_health_interval_s(),
            context_length: None,
            tokenizer: None,
        }
    }
}

/// A bad `[remote.NAME]` setting: the key as written in the file (`remote.hq.url`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct RemoteConfigError {
    pub key: String,
    pub msg: String,
}

/// Checks every `[remote.NAME]` entry; the error names the first bad key.
pub fn validate(remotes: &BTreeMap<String, RemoteConfig>) -> Result<(), RemoteConfigError> {
    remotes
        .iter()
        .try_for_each(|(name, cfg)| validate_one(name, cfg))
}

/// The checks of one entry (also run by [`super::Upstream::new`], so an unchecked
/// configuration cannot build a client).
pub(crate) fn validate_one(name: &str, cfg: &RemoteConfig) -> Result<(), RemoteConfigError> {
    let bad = |field: &str, msg: String| RemoteConfigError {
        key: if field.is_empty() {
            format!("remote.{name}")
        } else {
            format!("remote.{name}.{field}")
        },
        msg,
    };
    check_name(name).map_err(|m| bad("", m))?;
    let url = check_url(&cfg.url).map_err(|m| bad("url", m))?;
    if cfg.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
        return Err(bad("model", "must not be empty".into()));
    }
    for (field, path) in [
        ("api_key_file", &cfg.api_key_file),
        ("ca_file", &cfg.ca_file),
        ("tokenizer", &cfg.tokenizer),
    ] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(bad(field, "must name a file".into()));
        }
    }
    if cfg.api_key_file.is_some() && url.scheme() == "http" && !is_loopback(&url) {
        return Err(bad(
            "api_key_file",
            format!(
                "`{}` is plain http to another machine: the key would cross the network in \
                 clear; use https",
                cfg.url
            ),
        ));
    }
    for (field, secs) in [
        ("connect_timeout_s", cfg.connect_timeout_s),
        ("first_byte_timeout_s", cfg.first_byte_timeout_s),
        ("idle_timeout_s", cfg.idle_timeout_s),
        ("health_interval_s", cfg.health_interval_s),
    ] {
        if !(1..=3600).contains(&secs) {
            return Err(bad(field, "must be 1 to 3600 seconds".into()));
        }
    }
    if !(1..=4096).contains(&cfg.max_concurrency) {
        return Err(bad("max_concurrency", "must be 1 to 4096".into()));
    }
    if cfg.context_length == Some(0) {
        return Err(bad("context_length", "must be at least 1".into()));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("the name must be 1 to {MAX_NAME} characters"));
    }
    if name == "default" {
        return Err("`default` is reserved; choose another name".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "`{name}`: {c:?} is not allowed in a name (letters, digits, `-`, `_`, `.`)"
        ));
    }
    Ok(())
}

/// The URL parsed, if it is one an upstream may have: http(s), a host, no credentials (they
/// would end up in logs and error messages; the key belongs in `api_key_file`), no query or
/// fragment (paths are appended to it).
pub(crate) fn check_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not hold a user name or password; put the token in api_key_file".to_string(),
        );
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "`{url}` must not have a query or fragment (request paths are appended to it)"
        ));
    }
    Ok(parsed)
}

/// Whether the URL's host is this machine: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, cfg: RemoteConfig) -> Result<(), RemoteConfigError> {
        validate(&BTreeMap::from([(name.to_string(), cfg)]))
    }

    fn with_url(url: &str) -> RemoteConfig {
        RemoteConfig {
            url: url.into(),
            ..RemoteConfig::default()
        }
    }

    #[track_caller]
    fn refused(name: &str, cfg: RemoteConfig, key: &str, needle: &str) {
        let e = one(name, cfg).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.msg.contains(needle), "`{needle}` not in: {e}");
        assert_eq!(e.to_string(), format!("{}: {}", e.key, e.msg));
    }

    #[test]
    fn toml_defaults_and_unknown_keys() {
        let c: RemoteConfig = toml::from_str("url = \"https://vllm.hq.corp:8000/v1\"").unwrap();
        assert_eq!(
            c,
            RemoteConfig {
                url: "https://vllm.hq.corp:8000/v1".into(),
                ..RemoteConfig::default()
            }
        );
        assert_eq!(
            (
                c.connect_timeout_s,
                c.first_byte_timeout_s,
                c.idle_timeout_s,
                c.max_concurrency,
                c.health_interval_s
            ),
            (5, 120, 60, 32, 15)
        );
        let e = toml::from_str::<RemoteConfig>("url = \"http://a/v1\"\napi_key = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api_key"), "{e}");
        assert_eq!(one("hq", c), Ok(()));
    }

    #[test]
    fn names() {
        assert_eq!(one("qwen-72b_v2.5", with_url("http://a/v1")), Ok(()));
        refused("", with_url("http://a/v1"), "remote.", "1 to 64");
        refused(
            &"x".repeat(65),
            with_url("http://a/v1"),
            &format!("remote.{}", "x".repeat(65)),
            "1 to 64",
        );
        refused(
            "default",
            with_url("http://a/v1"),
            "remote.default",
            "reserved",
        );
        refused("hq:1", with_url("http://a/v1"), "remote.hq:1", "':'");
        refused("h q", with_url("http://a/v1"), "remote.h q", "' '");
    }

    #[test]
    fn urls() {
        for ok in [
            "http://10.0.0.7:8000/v1",
            "https://vllm.hq.corp/v1/",
            "http://[fd00::1]:8080/v1",
        ] {
            assert_eq!(one("hq", with_url(ok)), Ok(()), "{ok}");
        }
        refused("hq", with_url(""), "remote.hq.url", "not a URL");
        refused(
            "hq",
            with_url("vllm:8000/v1"),
            "remote.hq.url",
            "http:// or https://",
        );
        refused(
            "hq",
            with_url("ftp://a/v1"),
            "remote.hq.url",
            "http:// or https://",
        );
        refused(
            "hq",
            with_url("https://u:p@a/v1"),
            "remote.hq.url",
            "password",
        );
        refused(
            "hq",
            with_url("https://u@a/v1"),
            "remote.hq.url",
            "user name",
        );
        refused("hq", with_url("https://a/v1?x=1"), "remote.hq.url", "query");
        refused(
            "hq",
            with_url("https://a/v1#f"),
            "remote.hq.url",
            "fragment",
        );
    }

    #[test]
    fn a_key_never_goes_out_in_clear() {
        let keyed = |url: &str| RemoteConfig {
            api_key_file: Some("/etc/edgeseek/hq.key".into()),
            ..with_url(url)
        };
        refused(
            "hq",
            keyed("http://10.0.0.7:8000/v1"),
            "remote.hq.api_key_file",
            "use https",
        );
        refused(
            "hq",
            keyed("http://vllm.lan/v1"),
            "remote.hq.api_key_file",
            "in clear",
        );
        for ok in [
            "https://10.0.0.7:8000/v1",
            "http://127.0.0.1:8000/v1",
            "http://127.1.2.3/v1",
            "http://[::1]:8000/v1",
            "http://LOCALHOST:8000/v1",
        ] {
            assert_eq!(one("hq", keyed(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn limits_and_paths() {
        let base = with_url("https://a/v1");
        for (field, cfg) in [
            (
                "connect_timeout_s",
                RemoteConfig {
                    connect_timeout_s: 0,
                    ..base.clone()
                },
            ),
            (
                "first_byte_timeout_s",
                RemoteConfig {
                    first_byte_timeout_s: 3601,
                    ..base.clone()
                },
            ),
            (
                "idle_timeout_s",
                RemoteConfig {
                    idle_timeout_s: 0,
                    ..base.clone()
                },
            ),
            (
                "health_interval_s",
                RemoteConfig {
                    health_interval_s: 0,
                    ..base.clone()
                },
            ),
        ] {
            refused("hq", cfg, &format!("remote.hq.{field}"), "1 to 3600");
        }
        refused(
            "hq",
            RemoteConfig {
                max_concurrency: 0,
                ..base.clone()
            },
            "remote.hq.max_concurrency",
            "1 to 4096",
        );
        refused(
            "hq",
            RemoteConfig {
                max_concurrency: 4097,
                ..base.clone()
            },
            "remote.hq.max_concurrency",
            "1 to 4096",
        );
        assert_eq!(
            one(
                "hq",
                RemoteConfig {
                    max_concurrency: 4096,
                    connect_timeout_s: 3600,
                    ..base.clone()
                }
            ),
            Ok(())
        );
        refused(
            "hq",
            RemoteConfig {
                api_key_file: Some("".into()),
                ..base.clone()
            },
            "remote.hq.api_key_file",
            "must name a file",
        );
        refused(
            "hq",
            RemoteConfig {
                ca_file: Some("".into()),
                ..base.clone()
            },
            "remote.hq.ca_file",
            "must name a file",
        );
        refused(
            "hq",
            RemoteConfig {
                tokenizer: Some("".into()),
                ..base.clone()
            },
            "remote.hq.tokenizer",
            "must name a file",
        );
        refused(
            "hq",
            RemoteConfig {
                model: Some(" ".into()),
                ..base.clone()
            },
            "remote.hq.model",
            "empty",
        );
        refused(
            "hq",
            RemoteConfig {
                context_length: Some(0),
                ..base.clone()
            },
            "remote.hq.context_length",
            "at least 1",
        );
    }

    #[test]
    fn the_first_bad_entry_is_named() {
        let remotes = BTreeMap::from([
            ("a".to_string(), with_url("https://a/v1")),
            ("b".to_string(), with_url("gopher://b")),
            ("c".to_string(), with_url("nope")),
        ]);
        assert_eq!(validate(&remotes).unwrap_err().key, "remote.b.url");
    }
}
