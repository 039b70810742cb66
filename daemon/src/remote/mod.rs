//! Remote model backends: the client side of forwarding chat, completion and embedding
//! requests to a company's OpenAI-compatible inference server (vLLM, SGLang, NIM, llama.cpp's
//! llama-server, or another edgeseek), configured as `[remote.NAME]`.
//!
//! Why it is shaped this way:
//!
//! * **Bounded at every step.** An upstream on the LAN fails in the usual ways: it is down
//!   (connect error), overloaded (slow headers), or wedged mid-generation (a stream that
//!   stops). Each has its own limit (`connect_timeout_s`, `first_byte_timeout_s`,
//!   `idle_timeout_s`), so a client waits at most so long for a backend that will not answer,
//!   and `max_concurrency` refuses rather than queues: the upstream has its own scheduler,
//!   and a second queue in front of it only hides its load.
//! * **Health is learned from traffic and probes.** A connect error, or three 5xx/timeouts
//!   in a row, marks the upstream down; while down, requests are refused at once
//!   ([`RemoteError::Unavailable`]) instead of each waiting out a timeout, and
//!   [`Upstream::watch`] probes with backoff until the upstream serves the model again.
//! * **Nothing about the upstream leaks to clients.** Its URL, host and token are
//!   administrator knowledge: every text that came from the upstream, or from the transport,
//!   is scrubbed before it is stored in an error, and
//!   [`RemoteError::client_message`] names the backend by its edgeseek name only.
//! * **Streams are passed through as parsed events.** [`Stream::next`] yields each `data:`
//!   payload as JSON, so the API layer can re-frame it for its client and the agent loop can
//!   assemble whole turns ([`Assembled`]); dropping the stream closes the connection, which
//!   is how vLLM and the others learn to stop generating.
//!
//! A domain module: it uses [`crate::web::tls`] and [`crate::util`], nothing above them.

mod assemble;
mod client;
mod config;
mod health;
mod sse;

#[cfg(test)]
mod testserver;

pub use assemble::{usage_of, Assembled, Usage};
pub use client::{Reply, Upstream};
pub use config::{validate, RemoteConfig, RemoteConfigError};
pub use health::{backoff, Health};
pub use sse::Stream;

/// The longest upstream-provided text kept in an error, bytes.
const MAX_MESSAGE: usize = 300;

/// Why a request to a remote backend failed. Every text in it has been scrubbed of the
/// upstream's URL, host and token, so its Display may go to the log and
/// [`RemoteError::client_message`] to a client.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The upstream is marked down; why.
    #[error("marked down: {0}")]
    Unavailable(String),
    /// `max_concurrency` requests are already in flight.
    #[error("too many requests in flight")]
    Busy,
    /// The connection could not be opened, or broke before an answer.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// `"connect"`, `"first byte"` or `"idle"`.
    #[error("no answer within the {0} timeout")]
    Timeout(&'static str),
    /// The upstream answered an error: its HTTP status (or the `code` of an error event in a
    /// stream) and its message.
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// An answer that is not what the protocol says (not JSON, not an event stream).
    #[error("malformed answer: {0}")]
    Garbage(String),
    /// The answer or stream ended before it was complete.
    #[error("the answer ended before it was complete")]
    Truncated,
    /// The key file, CA file or tokenizer could not be used (at [`Upstream::new`]).
    #[error("{0}")]
    Config(String),
}

impl RemoteError {
    /// What a client may be told, naming the backend by its edgeseek name: never the upstream
    /// URL, host, port or credentials. Config errors name files on the appliance, so a client
    /// hears only that the backend is not set up.
    pub fn client_message(&self, name: &str) -> String {
        let m = match self {
            RemoteError::Unavailable(why) => {
                format!("remote backend `{name}` is unavailable: {why}")
            }
            RemoteError::Busy => {
                format!("remote backend `{name}` has too many requests in flight; retry later")
            }
            RemoteError::Connect(why) => format!("cannot reach remote backend `{name}`: {why}"),
            RemoteError::Timeout(what) => {
                format!("remote backend `{name}` did not answer in time ({what} timeout)")
            }
            RemoteError::Status {
                status: status @ (401 | 403),
                ..
            } => format!(
                "remote backend `{name}` refused this appliance's credentials (HTTP {status}); \
                 tell the administrator"
            ),
            RemoteError::Status { status, message } => {
                format!("remote backend `{name}` answered HTTP {status}: {message}")
            }
            RemoteError::Garbage(why) => {
                format!("remote backend `{name}` sent a malformed answer: {why}")
            }
            RemoteError::Truncated => {
                format!("remote backend `{name}` ended its answer before it was complete")
            }
            RemoteError::Config(_) => format!(
                "remote backend `{name}` is not set up correctly; the daemon's log says why"
            ),
        };
        // Texts were scrubbed when the error was made; this catches a URL from anywhere else.
        scrub_urls(&m)
    }

    /// The HTTP status the API answers with. An upstream 400/404/413/422 is about the
    /// client's request and passes through; 401/403 is about our credentials (an admin
    /// problem, so a gateway error); everything else the upstream did wrong is a 502.
    pub fn http_status(&self) -> u16 {
        match self {
            RemoteError::Unavailable(_) | RemoteError::Config(_) => 503,
            RemoteError::Busy => 429,
            RemoteError::Timeout(_) => 504,
            RemoteError::Status { status, .. } => match status {
                400 | 404 | 413 | 422 | 429 => *status,
                _ => 502,
            },
            RemoteError::Connect(_) | RemoteError::Garbage(_) | RemoteError::Truncated => 502,
        }
    }
}

/// What identifies the upstream in a text: its bearer token, base URL, host:port and host,
/// each replaced by `<upstream>`. No Debug: it holds the token.
#[derive(Clone)]
pub(crate) struct Scrub {
    token: Option<String>,
    /// Longest first, so host:port does not leave a `:port` behind its host.
    needles: Vec<String>,
}

const REDACTED: &str = "<upstream>";

impl Scrub {
    pub(crate) fn new(url: &reqwest::Url, token: Option<&str>) -> Scrub {
        let mut needles = vec![url.as_str().trim_end_matches('/').to_string()];
        if let Some(host) = url.host_str() {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Some(port) = url.port_or_known_default() {
                needles.push(format!("{host}:{port}"));
            }
            needles.push(host.to_string());
            needles.push(bare.to_string());
        }
        needles.retain(|n| !n.is_empty());
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Scrub {
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            needles,
        }
    }

    /// `text` on one line, without the upstream's identifiers or any URL, at most
    /// [`MAX_MESSAGE`] bytes. The token goes first (it may hold anything, the host included),
    /// then whole URLs (with their paths), then the host wherever it stands alone.
    pub(crate) fn text(&self, text: &str) -> String {
        let mut s = match &self.token {
            Some(t) => replace_ignore_ascii_case(text, t),
            None => text.to_string(),
        };
        s = scrub_urls(&s);
        for n in &self.needles {
            s = replace_ignore_ascii_case(&s, n);
        }
        cut(&s, MAX_MESSAGE)
    }
}

/// `s` with every case-insensitive occurrence of `needle` replaced by [`REDACTED`] (hosts
/// appear in any case in messages; a token matched case-insensitively is only safer).
fn replace_ignore_ascii_case(s: &str, needle: &str) -> String {
    let hay = s.to_ascii_lowercase();
    let low = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut from = 0;
    while let Some(i) = hay[from..].find(&low) {
        let at = from + i;
        out.push_str(&s[last..at]);
        out.push_str(REDACTED);
        last = at + low.len();
        from = last;
    }
    out.push_str(&s[last..]);
    out
}

/// Every `http://…` or `https://…` URL in `s` replaced by [`REDACTED`]: an upstream's error
/// may name other internal addresses (a model store, a proxy).
pub(crate) fn scrub_urls(s: &str) -> String {
    let low = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &low[i..];
        let scheme = if rest.starts_with("http://") {
            7
        } else if rest.starts_with("https://") {
            8
        } else {
            0
        };
        if scheme > 0 {
            let end = s[i + scheme..]
                .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
                .map_or(s.len(), |j| i + scheme + j);
            // A URL at the end of a sentence or clause keeps its punctuation or bracket.
            let url = s[i..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}']);
            out.push_str(REDACTED);
            i += url.len();
            continue;
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// `s` on one line (whitespace runs become one space), cut to at most `max` bytes on a
/// character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut out = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > max {
        let mut at = max;
        while !out.is_char_boundary(at) {
            at -= 1;
        }
        out.truncate(at);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_url_host_port_token_and_other_urls() {
        let url = reqwest::Url::parse("https://VLLM.hq.corp:8443/v1").unwrap();
        let s = Scrub::new(&url, Some("sk-secret-123"));
        let out = s.text(
            "model x not found at https://vllm.hq.corp:8443/v1/models (vllm.hq.corp:8443, \
             host VLLM.HQ.CORP) token sk-secret-123 see http://wiki.corp/x?y=1.",
        );
        for gone in ["vllm", "hq.corp", "8443", "sk-secret", "wiki", "http"] {
            assert!(
                !out.to_ascii_lowercase().contains(gone),
                "`{gone}` in: {out}"
            );
        }
        assert_eq!(
            out,
            "model x not found at <upstream> (<upstream>, host <upstream>) token <upstream> \
             see <upstream>."
        );
    }

    #[test]
    fn scrub_handles_ipv6_hosts_and_default_ports() {
        let url = reqwest::Url::parse("http://[fd00::7]/v1").unwrap();
        let s = Scrub::new(&url, None);
        assert_eq!(
            s.text("[fd00::7]:80 and fd00::7 down"),
            "<upstream> and <upstream> down"
        );
    }

    #[test]
    fn scrubbed_text_is_one_line_of_at_most_300_bytes() {
        let url = reqwest::Url::parse("http://a.lan/v1").unwrap();
        let out = Scrub::new(&url, None).text(&format!("x\n\ty {}", "中".repeat(200)));
        assert!(out.len() <= 300 && out.len() > 290, "{}", out.len());
        assert!(out.starts_with("x y 中"));
    }

    #[test]
    fn client_messages_name_the_backend_and_statuses_map() {
        let cases: Vec<(RemoteError, u16, &str)> = vec![
            (
                RemoteError::Unavailable("HTTP 503".into()),
                503,
                "unavailable: HTTP 503",
            ),
            (RemoteError::Busy, 429, "too many requests"),
            (
                RemoteError::Connect("connection refused".into()),
                502,
                "connection refused",
            ),
            (
                RemoteError::Timeout("first byte"),
                504,
                "first byte timeout",
            ),
            (
                RemoteError::Status {
                    status: 400,
                    message: "too long".into(),
                },
                400,
                "HTTP 400: too long",
            ),
            (
                RemoteError::Status {
                    status: 404,
                    message: "m".into(),
                },
                404,
                "HTTP 404",
            ),
            (
                RemoteError::Status {
                    status: 413,
                    message: "m".into(),
                },
                413,
                "HTTP 413",
            ),
            (
                RemoteError::Status {
                    status: 422,
                    message: "m".into(),
                },
                422,
                "HTTP 422",
            ),
            (
                RemoteError::Status {
                    status: 401,
                    message: "bad key".into(),
                },
                502,
                "credentials",
            ),
            (
                RemoteError::Status {
                    status: 403,
                    message: "m".into(),
                },
                502,
                "HTTP 403",
            ),
            (
                RemoteError::Status {
                    status: 429,
                    message: "slow down".into(),
                },
                429,
                "HTTP 429",
            ),
            (
                RemoteError::Status {
                    status: 500,
                    message: "m".into(),
                },
                502,
                "HTTP 500",
            ),
            (
                RemoteError::Status {
                    status: 302,
                    message: "m".into(),
                },
                502,
                "HTTP 302",
            ),
            (RemoteError::Garbage("not JSON".into()), 502, "malformed"),
            (RemoteError::Truncated, 502, "before it was complete"),
            (
                RemoteError::Config("/etc/edgeseek/hq.key: mode 0644".into()),
                503,
                "not set up",
            ),
        ];
        for (e, status, needle) in cases {
            assert_eq!(e.http_status(), status, "{e:?}");
            let m = e.client_message("hq");
            assert!(
                m.contains("`hq`") && m.contains(needle),
                "`{needle}` not in: {m}"
            );
        }
        let m = RemoteError::Config("/etc/edgeseek/hq.key".into()).client_message("hq");
        assert!(!m.contains("/etc"), "{m}");
        let m = RemoteError::Status {
            status: 401,
            message: "key sk-1 bad".into(),
        }
        .client_message("hq");
        assert!(!m.contains("sk-1"), "{m}");
        let m = RemoteError::Connect("see https://x.corp/y".into()).client_message("hq");
        assert!(!m.contains("x.corp"), "{m}");
    }
}
