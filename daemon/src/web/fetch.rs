//! One page from the web, as text, under the address rule of [`super::addr`] (see the module
//! docs of [`super`] for why each rule is there).
//!
//! The HTTP client is reqwest (which the MCP client needs as well, so the daemon carries one
//! HTTP client stack) with two hooks that make the address rule hold at connect time: a DNS
//! resolver of our own that checks every address it returns (reqwest then connects only to
//! those), and a check of IP-literal hosts before each request, since reqwest connects to a
//! literal without asking the resolver. Redirects are off in the client and followed here.
//! A connector of our own on hyper would do the same in more code of our own to get right
//! (TLS, HTTP/1 framing, body limits), for no gain in control.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION};
use reqwest::Url;
use serde::Deserialize;

use super::addr::{Blocked, Cidr, Policy};
use super::{error_chain, InvalidKey, WebError};
use crate::kb::parse::{self, ParseError, ParseOptions};
use crate::kb::{BlockKind, DocKind, ParsedDoc};

/// Largest `max_bytes` accepted: the body is held in memory, and the HTML parser takes at
/// most this much (its own default input limit).
pub const MAX_BYTES_LIMIT: u64 = 64 << 20;
/// Largest `timeout_s` accepted.
pub const MAX_TIMEOUT_S: u64 = 300;
/// Largest `max_redirects` accepted.
pub const MAX_REDIRECTS_LIMIT: u8 = 20;
/// Longest URL taken.
const MAX_URL_LEN: usize = 8192;

/// Content types a page may have; their text is what a model can read.
const TYPES: &[&str] = &[
    "text/html",
    "application/xhtml+xml",
    "text/plain",
    "text/markdown",
    "application/json",
];

/// `[fetch]` of edgeseek.toml: limits of `fetch_url` and of web-search page fetches.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Address blocks (`10.1.0.0/16`, `fd00::/8`, or one address) that may be fetched
    /// although they are private, loopback, link-local or otherwise special.
    pub allow: Vec<String>,
    /// Largest answer body read, bytes; a larger one is refused. Default 2 MiB.
    pub max_bytes: u64,
    /// Time for the whole fetch, redirects and text extraction included, seconds.
    /// Default 10.
    pub timeout_s: u64,
    /// Redirects followed before giving up. Default 5.
    pub max_redirects: u8,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            allow: Vec::new(),
            max_bytes: 2 << 20,
            timeout_s: 10,
            max_redirects: 5,
        }
    }
}

impl FetchConfig {
    /// Check every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        self.policy()?;
        if !(1..=MAX_BYTES_LIMIT).contains(&self.max_bytes) {
            return Err(InvalidKey::new(
                "fetch.max_bytes",
                format!("must be between 1 and {MAX_BYTES_LIMIT}"),
            ));
        }
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(InvalidKey::new(
                "fetch.timeout_s",
                format!("must be between 1 and {MAX_TIMEOUT_S}"),
            ));
        }
        if self.max_redirects > MAX_REDIRECTS_LIMIT {
            return Err(InvalidKey::new(
                "fetch.max_redirects",
                format!("must be at most {MAX_REDIRECTS_LIMIT}"),
            ));
        }
        Ok(())
    }

    fn policy(&self) -> Result<Policy, InvalidKey> {
        let allow = self
            .allow
            .iter()
            .map(|s| {
                Cidr::parse(s)
                    .ok_or_else(|| InvalidKey::new("fetch.allow", format!("{s:?} is not a CIDR")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy { allow })
    }
}

/// A fetched page.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// Where the page was found, after redirects.
    pub url: String,
    /// HTML `<title>` (or the first `<h1>`); `None` for other types.
    pub title: Option<String>,
    /// The text: HTML as structured plain text (headings as `#`, list items as `-`), the
    /// other types as sent, decoded to UTF-8.
    pub text: String,
    /// The media type without parameters (`text/html`).
    pub content_type: String,
    /// Size of the body as received.
    pub bytes: usize,
}

/// How HTML becomes text.
#[derive(Clone, Debug)]
enum HtmlParse {
    /// In the knowledge base's parser process (`edgeseek parse-worker`), with its memory,
    /// CPU and time limits: the HTML is untrusted. `None`: the running executable.
    Worker(Option<std::path::PathBuf>),
    /// In this process: unit tests, whose executable is not `edgeseek`.
    #[cfg(test)]
    InProcess,
}

/// Fetches pages under the address rule. Cheap to clone (the client and rule are shared).
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<Policy>,
    max_bytes: u64,
    timeout: Duration,
    max_redirects: u8,
    html: HtmlParse,
}

impl Fetcher {
    /// A fetcher for `cfg` (which should have passed [`FetchConfig::validate`]; a bad
    /// `allow` entry is an error here too).
    pub fn new(cfg: &FetchConfig) -> Result<Fetcher, WebError> {
        let policy = Arc::new(cfg.policy().map_err(|e| WebError::Setup(e.to_string()))?);
        let client = super::client_builder()?
            .dns_resolver(CheckedResolver {
                policy: policy.clone(),
            })
            .build()
            .map_err(|e| WebError::Setup(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Fetcher {
            client,
            policy,
            max_bytes: cfg.max_bytes,
            timeout: Duration::from_secs(cfg.timeout_s),
            max_redirects: cfg.max_redirects,
            html: HtmlParse::Worker(None),
        })
    }

    /// This fetcher running `exe` as the HTML parser worker (`exe parse-worker`) instead of
    /// the running executable, which is right for the daemon; integration tests name the
    /// built `edgeseek` binary.
    pub fn with_parse_worker(mut self, exe: std::path::PathBuf) -> Fetcher {
        self.html = HtmlParse::Worker(Some(exe));
        self
    }

    /// This fetcher parsing HTML in-process (unit tests run in a binary that is not
    /// `edgeseek`, so there is no parser worker to start).
    #[cfg(test)]
    pub(crate) fn parse_in_process(mut self) -> Fetcher {
        self.html = HtmlParse::InProcess;
        self
    }

    /// The longest a [`Fetcher::fetch`] takes before it gives up.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fetch `url` (http or https), following redirects, and return its text. The whole
    /// call, text extraction included, is bounded by `timeout_s`.
    pub async fn fetch(&self, url: &str) -> Result<Page, WebError> {
        let start = self.parse_url(url)?;
        match tokio::time::timeout(self.timeout, self.fetch_from(start)).await {
            Ok(r) => r,
            Err(_) => Err(WebError::Timeout {
                url: url.to_string(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    fn parse_url(&self, url: &str) -> Result<Url, WebError> {
        let bad = |why: &str| WebError::BadUrl {
            url: crate::kb::parse::one_line(url, 300),
            why: why.to_string(),
        };
        if url.len() > MAX_URL_LEN {
            return Err(bad(&format!("longer than {MAX_URL_LEN} bytes")));
        }
        let parsed = Url::parse(url.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
        check_shape(&parsed).map_err(bad)?;
        Ok(parsed)
    }

    /// Refuse an IP-literal host outside the rule. (Names are checked by the resolver; a
    /// literal never reaches it.) Mirrors how the connector tells the two apart: the URL's
    /// host string, brackets removed, parsed as an address.
    fn check_literal(&self, url: &Url) -> Result<(), WebError> {
        let host = url.host_str().unwrap_or("");
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.policy.check(host, ip).map_err(|b| WebError::Refused {
                url: url.to_string(),
                why: b.to_string(),
            })?;
        }
        Ok(())
    }

    async fn fetch_from(&self, mut url: Url) -> Result<Page, WebError> {
        let mut redirects = 0u8;
        let resp = loop {
            self.check_literal(&url)?;
            let resp = self
                .client
                .get(url.clone())
                .header(
                    ACCEPT,
                    "text/html,application/xhtml+xml,text/plain;q=0.9,text/markdown;q=0.9,\
                     application/json;q=0.8",
                )
                .send()
                .await
                .map_err(|e| net_error(&url, e))?;
            let status = resp.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                break resp;
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| WebError::Net {
                    url: url.to_string(),
                    msg: format!("redirect ({status}) without a usable Location header"),
                })?;
            let next = url.join(next).map_err(|e| WebError::BadUrl {
                url: url.to_string(),
                why: format!("redirects to {next:?}, which is not a URL ({e})"),
            })?;
            check_shape(&next).map_err(|why| WebError::BadUrl {
                url: next.to_string(),
                why: format!("redirect target from {url}: {why}"),
            })?;
            if redirects == self.max_redirects {
                return Err(WebError::TooManyRedirects {
                    url: url.to_string(),
                    max: self.max_redirects,
                });
            }
            redirects += 1;
            url = next;
        };
        let url = resp.url().to_string();
        let status = resp.status();
        if !status.is_success() {
            return Err(WebError::Status {
                url,
                status: status.as_u16(),
            });
        }
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let essence = crate::kb::media_type(&ct);
        if !TYPES.contains(&essence.as_str()) {
            return Err(WebError::ContentType {
                url,
                content_type: if essence.is_empty() {
                    "(none given)".to_string()
                } else {
                    crate::kb::parse::one_line(&essence, 100)
                },
            });
        }
        let body = self.read_body(resp, &url).await?;
        let charset = charset_param(&ct);
        let bytes = body.len();
        let (title, text) = if matches!(essence.as_str(), "text/html" | "application/xhtml+xml") {
            self.html_text(body, charset, &url).await?
        } else {
            let text = parse::decode_text(&body, charset.as_deref());
            (None, text.trim().to_string())
        };
        if text.is_empty() {
            return Err(WebError::NoText { url });
        }
        Ok(Page {
            url,
            title,
            text,
            content_type: essence,
            bytes,
        })
    }

    async fn read_body(&self, mut resp: reqwest::Response, url: &str) -> Result<Vec<u8>, WebError> {
        let too_large = || WebError::TooLarge {
            url: url.to_string(),
            limit: self.max_bytes,
        };
        if resp.content_length().is_some_and(|n| n > self.max_bytes) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| WebError::Net {
            url: url.to_string(),
            msg: format!("reading the answer: {}", error_chain(&e.without_url())),
        })? {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// HTML → (title, text) through the knowledge base's parser, off the reactor.
    async fn html_text(
        &self,
        body: Vec<u8>,
        charset: Option<String>,
        url: &str,
    ) -> Result<(Option<String>, String), WebError> {
        let worker_exe = match &self.html {
            HtmlParse::Worker(exe) => exe.clone(),
            #[cfg(test)]
            HtmlParse::InProcess => None,
        };
        let opts = ParseOptions {
            worker_exe,
            charset,
            timeout: self.timeout,
            max_input_bytes: self.max_bytes,
            ..ParseOptions::default()
        };
        let html = self.html.clone();
        let parsed = tokio::task::spawn_blocking(move || match html {
            HtmlParse::Worker(_) => parse::parse(&body, DocKind::Html, &opts),
            #[cfg(test)]
            HtmlParse::InProcess => parse::parse_in_process(&body, DocKind::Html, &opts),
        })
        .await
        .map_err(|e| WebError::Parse {
            url: url.to_string(),
            msg: format!("HTML parser task failed: {e}"),
        })?;
        match parsed {
            Ok(doc) => Ok((doc.title.clone(), render(&doc))),
            Err(ParseError::Empty(_)) => Err(WebError::NoText {
                url: url.to_string(),
            }),
            Err(e) => Err(WebError::Parse {
                url: url.to_string(),
                msg: e.to_string(),
            }),
        }
    }
}

/// Scheme, credentials and host of a URL to fetch: `Err` says what is wrong.
fn check_shape(url: &Url) -> Result<(), &'static str> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err("only http and https URLs can be fetched");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with credentials (user@host) are not fetched");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host");
    }
    Ok(())
}

/// `charset` of a Content-Type (`text/html; charset="gbk"` → `gbk`).
fn charset_param(ct: &str) -> Option<String> {
    ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    })
}

/// Parsed HTML as plain text a model reads well: blocks separated by blank lines (list
/// items and table rows by single line breaks), headings marked `#`, list items `-`, code
/// fenced.
fn render(doc: &ParsedDoc) -> String {
    let mut out = String::new();
    let mut prev: Option<&BlockKind> = None;
    for b in &doc.blocks {
        if prev.is_some() {
            let tight = matches!(
                (prev, &b.kind),
                (Some(BlockKind::ListItem), BlockKind::ListItem)
                    | (Some(BlockKind::Table), BlockKind::Table)
            );
            out.push_str(if tight { "\n" } else { "\n\n" });
        }
        match b.kind {
            BlockKind::Heading { level } => {
                out.push_str(&"#".repeat(usize::from(level.clamp(1, 6))));
                out.push(' ');
                out.push_str(&b.text);
            }
            BlockKind::ListItem => {
                out.push_str("- ");
                out.push_str(&b.text);
            }
            BlockKind::Code => {
                out.push_str("```\n");
                out.push_str(&b.text);
                out.push_str("\n```");
            }
            BlockKind::Paragraph | BlockKind::Table => out.push_str(&b.text),
        }
        prev = Some(&b.kind);
    }
    out
}

/// A resolution failure, kept apart from reqwest's wording so the message names the host.
#[derive(Debug)]
struct ResolveFailed {
    host: String,
    msg: String,
}

impl std::fmt::Display for ResolveFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot resolve {}: {}", self.host, self.msg)
    }
}

impl StdError for ResolveFailed {}

/// The resolver of a [`Fetcher`]'s client: the system resolver, then the address rule on
/// every address of the answer. reqwest connects only to the addresses returned here.
struct CheckedResolver {
    policy: Arc<Policy>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            type BoxError = Box<dyn StdError + Send + Sync>;
            let failed = |msg: String| -> BoxError {
                Box::new(ResolveFailed {
                    host: host.clone(),
                    msg,
                })
            };
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| failed(e.to_string()))?
                .collect();
            if addrs.is_empty() {
                return Err(failed("no addresses".to_string()));
            }
            check_all(&policy, &host, &addrs).map_err(|b| Box::new(b) as BoxError)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Every address a name resolved to must pass: one refused address refuses the name, since
/// the connector may pick any of them (and a rebinding name mixes a public one in).
fn check_all(policy: &Policy, host: &str, addrs: &[SocketAddr]) -> Result<(), Blocked> {
    addrs.iter().try_for_each(|a| policy.check(host, a.ip()))
}

/// A reqwest failure as a [`WebError`]: a refusal of the resolver stays a refusal.
fn net_error(url: &Url, e: reqwest::Error) -> WebError {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(c) = cur {
        if let Some(b) = c.downcast_ref::<Blocked>() {
            return WebError::Refused {
                url: url.to_string(),
                why: b.to_string(),
            };
        }
        if let Some(r) = c.downcast_ref::<ResolveFailed>() {
            return WebError::Net {
                url: url.to_string(),
                msg: r.to_string(),
            };
        }
        cur = c.source();
    }
    // A connection (TCP or TLS) failure: reqwest's layers only add "error sending
    // request: client error (Connect)"; the innermost cause is what to act on.
    let msg = if e.is_connect() {
        let mut last: &(dyn StdError + 'static) = &e;
        while let Some(s) = last.source() {
            last = s;
        }
        format!(
            "cannot connect: {}",
            crate::kb::parse::one_line(&last.to_string(), 300)
        )
    } else {
        error_chain(&e.without_url())
    };
    WebError::Net {
        url: url.to_string(),
        msg,
    }
}

#[cfg(test)]
mod tests;
