//! Web search through a SearXNG instance's JSON API (`GET /search?q=…&format=json`), with
//! the text of the best few result pages fetched through a [`Fetcher`].
//!
//! The instance is the administrator's (`[web_search] searxng_url`), usually on the LAN or
//! on loopback, so it is not held to the fetcher's address rule; instead every request goes
//! to exactly that configured origin and no redirect is followed away from it. The result
//! pages are ordinary web pages and go through the fetcher and its rule.

use std::collections::HashSet;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::header::{ACCEPT, LOCATION};
use reqwest::Url;
use serde::Deserialize;

use super::{error_chain, Fetcher, InvalidKey, WebError};
use crate::kb::parse::one_line;

/// Largest `top_n` accepted (results put into a prompt).
pub const MAX_TOP_N: usize = 20;
/// Largest SearXNG answer read; a page of results is a few tens of KiB.
const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// Longest snippet kept, bytes.
const MAX_SNIPPET: usize = 1000;

/// `[web_search]` of edgeseek.toml.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebSearchConfig {
    /// Base URL of the SearXNG instance (`http://10.0.0.5:8888`, or with a path prefix);
    /// web search is off while this is unset.
    pub searxng_url: Option<String>,
    /// Results returned by default. Default 5.
    pub top_n: usize,
    /// Of those, how many of the best have their page fetched and its text extracted by
    /// default. Default 0 (snippets only).
    pub fetch: usize,
    /// Time for the SearXNG request, seconds (page fetches have `[fetch] timeout_s`).
    /// Default 10.
    pub timeout_s: u64,
}

impl Default for WebSearchConfig {
    fn default() -> Self {
        WebSearchConfig {
            searxng_url: None,
            top_n: 5,
            fetch: 0,
            timeout_s: 10,
        }
    }
}

impl WebSearchConfig {
    /// Check every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        if let Some(u) = &self.searxng_url {
            base_url(u)?;
        }
        if !(1..=MAX_TOP_N).contains(&self.top_n) {
            return Err(InvalidKey::new(
                "web_search.top_n",
                format!("must be between 1 and {MAX_TOP_N}"),
            ));
        }
        if self.fetch > self.top_n {
            return Err(InvalidKey::new(
                "web_search.fetch",
                format!("must not be more than top_n ({})", self.top_n),
            ));
        }
        if !(1..=super::fetch::MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(InvalidKey::new(
                "web_search.timeout_s",
                format!("must be between 1 and {}", super::fetch::MAX_TIMEOUT_S),
            ));
        }
        Ok(())
    }
}

/// `searxng_url` checked: http(s), a host, no credentials, query or fragment.
fn base_url(u: &str) -> Result<Url, InvalidKey> {
    let bad = |why: &str| InvalidKey::new("web_search.searxng_url", format!("{u:?} {why}"));
    let url = Url::parse(u).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(bad("is not an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not hold credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "must not have a query or fragment (give the instance's base URL)",
        ));
    }
    Ok(url)
}

/// One search result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WebResult {
    pub title: String,
    pub url: String,
    /// SearXNG's `content`: the engine's snippet (may be empty).
    pub snippet: String,
    /// The page's extracted text, for the best `fetch` results whose fetch succeeded.
    pub text: Option<String>,
}

/// A SearXNG client plus the fetcher for result pages. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WebSearch {
    base: Url,
    client: reqwest::Client,
    fetcher: Fetcher,
    timeout: Duration,
    config: WebSearchConfig,
}

impl WebSearch {
    /// A client for `cfg`; an error when `searxng_url` is unset or a value is bad.
    pub fn new(cfg: &WebSearchConfig, fetcher: Fetcher) -> Result<WebSearch, WebError> {
        let Some(u) = &cfg.searxng_url else {
            return Err(WebError::Setup(
                "web_search is not configured ([web_search] searxng_url is not set)".into(),
            ));
        };
        cfg.validate().map_err(|e| WebError::Setup(e.to_string()))?;
        let base = base_url(u).map_err(|e| WebError::Setup(e.to_string()))?;
        let client = super::client_builder()?
            .build()
            .map_err(|e| WebError::Setup(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(WebSearch {
            base,
            client,
            fetcher,
            timeout: Duration::from_secs(cfg.timeout_s),
            config: cfg.clone(),
        })
    }

    /// The configuration it was made from (for the default `top_n` and `fetch`).
    pub fn config(&self) -> &WebSearchConfig {
        &self.config
    }

    /// The first `top_n` distinct http(s) results for `query`, in SearXNG's order, with the
    /// page text of the first `fetch` of them (fetched concurrently; a page that cannot be
    /// fetched keeps only its snippet).
    pub async fn search(
        &self,
        query: &str,
        top_n: usize,
        fetch: usize,
    ) -> Result<Vec<WebResult>, WebError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(WebError::Search("the search query is empty".into()));
        }
        let body = match tokio::time::timeout(self.timeout, self.query(query)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(WebError::Search(format!(
                    "SearXNG at {} did not answer within {} s",
                    self.base,
                    self.timeout.as_secs()
                )))
            }
        };
        let mut results = parse_results(&body, top_n).ok_or_else(|| {
            WebError::Search(format!(
                "SearXNG at {} answered, but not with JSON search results: is the json \
                 format enabled in its settings.yml (search.formats)?",
                self.base
            ))
        })?;
        self.fetch_pages(&mut results, fetch).await;
        Ok(results)
    }

    /// `{base}/search?q=…&format=json`, keeping a path prefix of the base.
    fn search_url(&self, query: &str) -> String {
        format!(
            "{}/search?q={}&format=json",
            self.base.as_str().trim_end_matches('/'),
            utf8_percent_encode(query, NON_ALPHANUMERIC)
        )
    }

    /// The raw answer of a 200, or the error that explains another one.
    async fn query(&self, query: &str) -> Result<Vec<u8>, WebError> {
        let base = &self.base;
        let mut resp = self
            .client
            .get(self.search_url(query))
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                WebError::Search(format!(
                    "SearXNG at {base} cannot be reached: {}",
                    error_chain(&e.without_url())
                ))
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let msg = match status {
                403 => format!(
                    "SearXNG at {base} answered 403: is the json format enabled in its \
                     settings.yml (search.formats)?"
                ),
                429 => format!(
                    "SearXNG at {base} answered 429: its limiter turns the daemon away \
                     (set server.limiter: false in its settings.yml, or exempt this host)"
                ),
                300..=399 => {
                    let to = resp
                        .headers()
                        .get(LOCATION)
                        .map(|l| one_line(&String::from_utf8_lossy(l.as_bytes()), 200))
                        .unwrap_or_else(|| "(no Location)".into());
                    format!(
                        "SearXNG at {base} answered {status}, a redirect to {to}: redirects \
                         are not followed, set [web_search] searxng_url to the address it \
                         redirects to"
                    )
                }
                _ => format!("SearXNG at {base} answered {status}"),
            };
            return Err(WebError::Search(msg));
        }
        if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES) {
            return Err(too_large(base));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            WebError::Search(format!(
                "SearXNG at {base}: reading the answer: {}",
                error_chain(&e.without_url())
            ))
        })? {
            if (body.len() + chunk.len()) as u64 > MAX_ANSWER_BYTES {
                return Err(too_large(base));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn fetch_pages(&self, results: &mut [WebResult], fetch: usize) {
        let mut set = tokio::task::JoinSet::new();
        for (i, r) in results.iter().enumerate().take(fetch) {
            let fetcher = self.fetcher.clone();
            let url = r.url.clone();
            set.spawn(async move { (i, fetcher.fetch(&url).await) });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, Ok(page))) => results[i].text = Some(page.text),
                Ok((_, Err(e))) => tracing::debug!(error = %e, "web search page fetch failed"),
                Err(e) => tracing::debug!(error = %e, "web search page fetch task failed"),
            }
        }
    }
}

fn too_large(base: &Url) -> WebError {
    WebError::Search(format!(
        "SearXNG at {base} answered more than {MAX_ANSWER_BYTES} bytes"
    ))
}

/// SearXNG's `results[]` → the first `top_n` distinct http(s) results; `None` when the
/// answer is not a JSON object with a `results` array. Items without a usable URL are
/// skipped, not errors: engines differ in what they fill in.
fn parse_results(body: &[u8], top_n: usize) -> Option<Vec<WebResult>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let items = v.get("results")?.as_array()?;
    let text = |item: &serde_json::Value, key: &str, max: usize| {
        item.get(key)
            .and_then(serde_json::Value::as_str)
            .map(|s| one_line(s, max))
            .unwrap_or_default()
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in items {
        if out.len() >= top_n {
            break;
        }
        let Some(raw) = item.get("url").and_then(serde_json::Value::as_str) else {
            continue;
        };
        let Ok(mut url) = Url::parse(raw.trim()) else {
            continue;
        };
        if !matches!(url.scheme(), "http" | "https") {
            continue;
        }
        // The same page under another anchor is the same page.
        url.set_fragment(None);
        if !seen.insert(url.to_string()) {
            continue;
        }
        let title = text(item, "title", 300);
        out.push(WebResult {
            title: if title.is_empty() {
                url.to_string()
            } else {
                title
            },
            url: url.to_string(),
            snippet: text(item, "content", MAX_SNIPPET),
            text: None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::testserver::{answer, redirect, serve};
    use crate::web::FetchConfig;

    fn fetcher(allow: &[&str]) -> Fetcher {
        let cfg = FetchConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..FetchConfig::default()
        };
        Fetcher::new(&cfg).unwrap().parse_in_process()
    }

    fn client(url: &str, allow: &[&str]) -> WebSearch {
        let cfg = WebSearchConfig {
            searxng_url: Some(url.to_string()),
            ..WebSearchConfig::default()
        };
        WebSearch::new(&cfg, fetcher(allow)).unwrap()
    }

    #[test]
    fn config_defaults_and_validation() {
        let d: WebSearchConfig = toml::from_str("").unwrap();
        assert_eq!(d, WebSearchConfig::default());
        assert_eq!(
            (d.searxng_url, d.top_n, d.fetch, d.timeout_s),
            (None, 5, 0, 10)
        );
        let ok: WebSearchConfig =
            toml::from_str("searxng_url = \"http://10.0.0.5:8888\"\nfetch = 2").unwrap();
        ok.validate().unwrap();

        let err = |t: &str| {
            toml::from_str::<WebSearchConfig>(t)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("searxng_url = \"ftp://x\""),
            "web_search.searxng_url: \"ftp://x\" is not an http(s) URL"
        );
        assert!(err("searxng_url = \"searx.lan\"").contains("is not a URL"));
        assert!(err("searxng_url = \"http://h/?q=1\"").contains("query or fragment"));
        assert!(err("searxng_url = \"http://u:p@h/\"").contains("credentials"));
        assert!(err("top_n = 0").starts_with("web_search.top_n: "));
        assert!(err("top_n = 21").starts_with("web_search.top_n: "));
        assert_eq!(
            err("top_n = 2\nfetch = 3"),
            "web_search.fetch: must not be more than top_n (2)"
        );
        assert!(err("timeout_s = 0").starts_with("web_search.timeout_s: "));
        assert!(toml::from_str::<WebSearchConfig>("url = \"http://x\"").is_err());

        let e = WebSearch::new(&WebSearchConfig::default(), fetcher(&[])).unwrap_err();
        assert!(e.to_string().contains("not configured"), "{e}");
    }

    #[tokio::test]
    async fn results_are_parsed_deduplicated_and_cut() {
        let json = serde_json::json!({
            "query": "x",
            "results": [
                {"title": "  First \n page ", "url": "https://one.example/a", "content": "snippet one"},
                {"title": "Dup", "url": "https://one.example/a#section", "content": "again"},
                {"title": "Script", "url": "javascript:alert(1)", "content": "bad"},
                {"title": "FTP", "url": "ftp://files.example/x"},
                {"title": "No URL"},
                {"title": null, "url": "http://two.example/", "content": null},
                {"title": "Third", "url": "https://three.example/c", "content": "three"},
                {"title": "Fourth", "url": "https://four.example/d", "content": "four"}
            ]
        })
        .to_string();
        // A path prefix in the base URL is kept; SearXNG is reachable on loopback although
        // the fetcher allows nothing private.
        let srv = serve("127.0.0.1", move |path| {
            if path.starts_with("/searx/search?") {
                answer("200 OK", Some("application/json"), json.as_bytes())
            } else {
                answer("404 Not Found", Some("text/plain"), b"no")
            }
        })
        .await;
        let ws = client(&srv.url("/searx/"), &[]);
        let r = ws.search("café & more", 3, 0).await.unwrap();
        assert_eq!(
            srv.seen(),
            ["/searx/search?q=caf%C3%A9%20%26%20more&format=json"]
        );
        let urls: Vec<&str> = r.iter().map(|r| r.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://one.example/a",
                "http://two.example/",
                "https://three.example/c"
            ]
        );
        assert_eq!(r[0].title, "First page");
        assert_eq!(r[0].snippet, "snippet one");
        // No title: the URL stands in; no content: an empty snippet.
        assert_eq!(
            (r[1].title.as_str(), r[1].snippet.as_str()),
            ("http://two.example/", "")
        );
        assert!(r.iter().all(|r| r.text.is_none()));

        let all = ws.search("x", 20, 0).await.unwrap();
        assert_eq!(all.len(), 4);
        let e = ws.search("  ", 5, 0).await.unwrap_err();
        assert_eq!(e.to_string(), "the search query is empty");
    }

    #[tokio::test]
    async fn best_pages_are_fetched_through_the_fetcher() {
        // SearXNG on 127.0.0.1, the result pages on 127.0.0.2.
        let pages = serve("127.0.0.2", |path| match path {
            "/p1" => answer(
                "200 OK",
                Some("text/html"),
                b"<title>P1</title><p>Text of page one.</p>",
            ),
            "/p3" => answer("200 OK", Some("text/plain"), b"page three"),
            _ => answer("404 Not Found", Some("text/plain"), b"no"),
        })
        .await;
        let json = serde_json::json!({"results": [
            {"title": "one", "url": pages.url("/p1"), "content": "s1"},
            {"title": "two", "url": pages.url("/missing"), "content": "s2"},
            {"title": "three", "url": pages.url("/p3"), "content": "s3"},
        ]})
        .to_string();
        let srv = serve("127.0.0.1", move |_| {
            answer("200 OK", Some("application/json"), json.as_bytes())
        })
        .await;

        let ws = client(&srv.url(""), &["127.0.0.2/32"]);
        let r = ws.search("q", 5, 2).await.unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].text.as_deref(), Some("Text of page one."));
        // A failed fetch keeps the snippet only.
        assert_eq!((r[1].text.as_deref(), r[1].snippet.as_str()), (None, "s2"));
        // Beyond the best two: not fetched.
        assert_eq!(r[2].text, None);
        let mut seen = pages.seen();
        seen.sort();
        assert_eq!(seen, ["/missing", "/p1"]);

        // Without the allow entry the pages are refused (and never requested); the search
        // itself still answers.
        let before = pages.seen().len();
        let ws = client(&srv.url(""), &[]);
        let r = ws.search("q", 5, 3).await.unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|r| r.text.is_none()));
        assert_eq!(pages.seen().len(), before);
    }

    #[tokio::test]
    async fn searxng_errors_say_what_to_check() {
        let srv = serve("127.0.0.1", |path| {
            let q = path.split("q=").nth(1).unwrap_or("");
            match q.split('&').next().unwrap_or("") {
                "forbidden" => answer("403 Forbidden", Some("text/html"), b"<h1>403</h1>"),
                "broken" => answer("500 Internal Server Error", Some("text/plain"), b"oops"),
                "html" => answer("200 OK", Some("text/html"), b"<html>search page</html>"),
                "noresults" => answer("200 OK", Some("application/json"), br#"{"query":"x"}"#),
                "moved" => redirect("302 Found", "http://127.0.0.1:1/elsewhere"),
                _ => answer("200 OK", Some("application/json"), br#"{"results":[]}"#),
            }
        })
        .await;
        let base = srv.url("");
        let ws = client(&base, &[]);
        let err = |q: &'static str| {
            let ws = ws.clone();
            async move { ws.search(q, 5, 0).await.unwrap_err().to_string() }
        };
        let shown = Url::parse(&base).unwrap();
        assert_eq!(
            err("forbidden").await,
            format!(
                "SearXNG at {shown} answered 403: is the json format enabled in its \
                 settings.yml (search.formats)?"
            )
        );
        assert_eq!(
            err("broken").await,
            format!("SearXNG at {shown} answered 500")
        );
        for q in ["html", "noresults"] {
            let e = err(q).await;
            assert!(e.contains("not with JSON search results"), "{q}: {e}");
        }
        let e = err("moved").await;
        assert!(
            e.contains("answered 302, a redirect to http://127.0.0.1:1/elsewhere"),
            "{e}"
        );
        assert!(srv.seen().iter().all(|p| !p.contains("elsewhere")));
        assert!(ws.search("fine", 5, 0).await.unwrap().is_empty());

        // Nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gone = client(&format!("http://127.0.0.1:{port}"), &[]);
        let e = gone.search("x", 5, 0).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "SearXNG at http://127.0.0.1:{port}/ cannot be reached: "
            )),
            "{e}"
        );
    }
}
