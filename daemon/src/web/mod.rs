//! The daemon's outbound web access: fetching a page for a model ([`fetch`], the
//! `fetch_url` tool and web-search page extracts) and querying a SearXNG instance
//! ([`searxng`], the `web_search` tool and chat extension).
//!
//! A URL to fetch comes from a model, and through it from whatever text the model read, so
//! it is hostile input: left alone, it would let anyone who can put a link in front of the
//! model read the appliance's LAN, its loopback services or a cloud metadata endpoint
//! (server-side request forgery). [`fetch::Fetcher`] therefore connects only to public
//! unicast addresses ([`addr`] lists what is not), plus the blocks an administrator opens
//! with `[fetch] allow`, and checks at the moment of connecting:
//!
//! * names are resolved by the fetcher itself and EVERY address of the answer is checked;
//!   the connection then goes to those checked addresses, never through a second lookup, so
//!   a name that answers a public address to the check and a private one to the connect
//!   (DNS rebinding) gains nothing;
//! * an IP-literal host skips resolution altogether, so it is checked before each request;
//! * redirects are followed by hand, each target checked by the same rules as the first
//!   URL; only http and https, no credentials in URLs, no proxy from the environment;
//! * time, size and content type are bounded, so a hostile page costs at most
//!   `timeout_s` and `max_bytes`; HTML goes to the knowledge base's parser, in its
//!   resource-limited worker process.
//!
//! SearXNG itself is configured by the administrator and usually runs on the LAN or on
//! loopback, so [`searxng::WebSearch`] talks to that one origin without the address rule,
//! and follows no redirects away from it.
//!
//! [`tls`] is the TLS configuration of every outbound client, the MCP client's too.

pub mod addr;
pub mod fetch;
pub mod searxng;
pub mod tls;

#[cfg(test)]
mod testserver;

pub use fetch::{FetchConfig, Fetcher, Page};
pub use searxng::{WebResult, WebSearch, WebSearchConfig};

/// A configuration value that is not acceptable: `key` is its dotted path
/// (`fetch.allow`), `msg` what is wrong with it. The config loader adds the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {msg}")]
pub struct InvalidKey {
    pub key: String,
    pub msg: String,
}

impl InvalidKey {
    fn new(key: &str, msg: impl Into<String>) -> InvalidKey {
        InvalidKey {
            key: key.to_string(),
            msg: msg.into(),
        }
    }
}

/// Why a fetch or a search failed. Every message is one line that names the URL and says
/// what to do where there is something to do; [`WebError::kind`] is the short status of a
/// tool step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebError {
    /// The address rule refused the URL's host (`why` names the address and its range).
    #[error("{url}: {why}")]
    Refused { url: String, why: String },
    /// Not a URL, or one the fetcher does not take (scheme, credentials).
    #[error("{url}: {why}")]
    BadUrl { url: String, why: String },
    /// No complete answer within the time limit.
    #[error("{url}: no complete answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: the answer is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "{url}: content type {content_type} is not supported (text/html, \
         application/xhtml+xml, text/plain, text/markdown, application/json)"
    )]
    ContentType { url: String, content_type: String },
    /// A final answer other than 2xx (redirects are followed before this).
    #[error("{url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: more than {max} redirects")]
    TooManyRedirects { url: String, max: u8 },
    /// The page was fetched but holds no text (a page built by JavaScript, say).
    #[error("{url}: the page has no text")]
    NoText { url: String },
    /// The page's HTML could not be turned into text.
    #[error("{url}: {msg}")]
    Parse { url: String, msg: String },
    /// Connection, TLS or protocol failure.
    #[error("{url}: {msg}")]
    Net { url: String, msg: String },
    /// SearXNG answered something other than search results.
    #[error("{0}")]
    Search(String),
    /// The fetcher or search client could not be set up.
    #[error("{0}")]
    Setup(String),
}

impl WebError {
    /// `"refused"`, `"timeout"` or `"error"`: the status of an agent step that failed so.
    pub fn kind(&self) -> &'static str {
        match self {
            WebError::Refused { .. } => "refused",
            WebError::Timeout { .. } => "timeout",
            _ => "error",
        }
    }
}

/// An error and its causes on one line (`a: b: c`), each cause once: reqwest's errors keep
/// the useful part (connection refused, certificate unknown) in their sources.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    crate::kb::parse::one_line(&out, 400)
}

/// A reqwest client builder with what every outbound client here shares: our TLS
/// configuration, HTTP/1.1, no environment proxy, no automatic redirects, no pooled idle
/// connections (fetches are one-offs, mostly to a different host each time), our user agent.
fn client_builder() -> Result<reqwest::ClientBuilder, WebError> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(crate::web::tls::client_config().map_err(WebError::Setup)?)
        .http1_only()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .pool_max_idle_per_host(0)
        .user_agent(concat!("edgeseek/", env!("CARGO_PKG_VERSION"))))
}
