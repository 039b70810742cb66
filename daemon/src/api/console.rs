//! The browser console: plain ES modules from `daemon/console/`, embedded in the binary with
//! `include_bytes!` (no Node at build time, no CDN at run time), served at `/` and
//! `/console/{asset}`.
//!
//! Each asset is gzip-compressed once (the first time any asset is asked for, or at startup
//! through [`prepare`]) and sent compressed to clients that accept gzip. Assets are revalidated
//! on every load (`Cache-Control: no-cache`) against a content hash ETag, so an upgraded daemon
//! never serves a stale mix of modules while a revisit costs a round of 304s.
//!
//! Security headers: console documents get a strict Content-Security-Policy (no inline script or
//! style, `connect-src 'self'`, no framing); [`harden`] gives every other response the same
//! basic headers with a deny-all policy, since API JSON is never meant to render as a page.

use std::io::Write;
use std::sync::OnceLock;

use flate2::write::GzEncoder;
use flate2::Compression;
use hyper::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_ENCODING, ETAG, IF_NONE_MATCH, VARY,
};
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::gate::Call;
use super::{full, Body};

/// Policy of console pages: everything from this origin only, no inline code, no plugins,
/// no framing, no form posts elsewhere.
pub const CONSOLE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";
/// Policy of every other response (JSON, metrics): nothing may load or frame it as a page.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// `(file name, content type, bytes)` of every console file.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/dom.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/i18n.js"),
    ),
    (
        "markdown.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/markdown.js"),
    ),
    (
        "store.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/store.js"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/chat.js"),
    ),
    (
        "kb.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/kb.js"),
    ),
    (
        "agents.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/agents.js"),
    ),
    (
        "models.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/models.js"),
    ),
    (
        "usage.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/usage.js"),
    ),
    (
        "audit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/audit.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/admin.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/chart.js"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../console/icon.svg"),
    ),
];

/// The page served at `/`; not also under `/console/`, so there is one URL for it.
const INDEX: &str = "index.html";

/// One file, ready to send.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    raw: &'static [u8],
    /// gzip of `raw`, when that is smaller.
    gzip: Option<Vec<u8>>,
    /// Strong ETag of the identity body (quoted hex of its SHA-256); the gzip body's tag has a
    /// `-gz` suffix inside the quotes, since the two bodies differ byte for byte.
    etag: String,
}

impl Asset {
    fn etag(&self, gz: bool) -> String {
        if gz {
            format!("{}-gz\"", self.etag.trim_end_matches('"'))
        } else {
            self.etag.clone()
        }
    }
}

static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();

fn gzip(raw: &[u8]) -> Option<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(raw.len() / 3), Compression::best());
    enc.write_all(raw).ok()?;
    let out = enc.finish().ok()?;
    (out.len() < raw.len()).then_some(out)
}

fn assets() -> &'static [Asset] {
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|&(name, content_type, raw)| {
                let digest = Sha256::digest(raw);
                let hex = crate::util::hex(&digest[..12]);
                Asset {
                    name,
                    content_type,
                    raw,
                    gzip: gzip(raw),
                    etag: format!("\"{hex}\""),
                }
            })
            .collect()
    })
}

/// Compress the assets now (startup, off the reactor) rather than on the first page load.
pub fn prepare() {
    let _ = assets();
}

/// Total bytes of every console file as sent to a gzip-accepting browser on a first visit.
pub fn first_load_bytes() -> usize {
    assets()
        .iter()
        .map(|a| a.gzip.as_ref().map_or(a.raw.len(), Vec::len))
        .sum()
}

/// `GET /`.
pub async fn index(c: Call) -> Result<Response<Body>, ApiError> {
    Ok(match assets().iter().find(|a| a.name == INDEX) {
        Some(a) => send(a, &c.head.headers),
        None => full(StatusCode::NOT_FOUND, "text/plain", "console missing"),
    })
}

/// `GET /console/{asset}`: only the embedded files; anything else is a 404.
pub async fn asset(c: Call) -> Result<Response<Body>, ApiError> {
    let name = c.param("asset")?;
    assets()
        .iter()
        .find(|a| a.name == name && a.name != INDEX)
        .map(|a| send(a, &c.head.headers))
        .ok_or_else(|| ApiError::not_found(format!("no console file `{name}`")))
}

fn send(a: &Asset, headers: &HeaderMap) -> Response<Body> {
    let gz = a.gzip.is_some() && accepts_gzip(headers);
    let etag = a.etag(gz);
    let mut r = if if_none_match(headers, &etag) {
        let mut r = full(StatusCode::NOT_MODIFIED, "text/plain", "");
        r.headers_mut().remove(hyper::header::CONTENT_TYPE);
        r
    } else {
        let body = match (&a.gzip, gz) {
            (Some(z), true) => bytes::Bytes::copy_from_slice(z),
            _ => bytes::Bytes::from_static(a.raw),
        };
        let mut r = full(StatusCode::OK, a.content_type, body);
        if gz {
            r.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        r
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    page_headers(h);
    r
}

/// Headers of console documents and scripts.
fn page_headers(h: &mut HeaderMap) {
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(CONSOLE_CSP),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// Basic security headers on every response; a policy set by the route (console pages) is kept.
pub fn harden(h: &mut HeaderMap) {
    h.entry("content-security-policy")
        .or_insert(HeaderValue::from_static(API_CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

/// Whether `Accept-Encoding` allows gzip (`gzip` or `*` with a non-zero q).
fn accepts_gzip(h: &HeaderMap) -> bool {
    h.get_all(hyper::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q_zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

/// `If-None-Match` lists `etag` (weak comparison, as RFC 9110 asks for this header) or `*`.
fn if_none_match(h: &HeaderMap, etag: &str) -> bool {
    h.get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::CONTENT_SECURITY_POLICY;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "gzip, deflate, br, zstd"
        )])));
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "br;q=1, *;q=0.1"
        )])));
        assert!(!accepts_gzip(&headers(&[(
            "accept-encoding",
            "gzip;q=0, br"
        )])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn etags_match_weakly_and_in_lists() {
        let h = headers(&[("if-none-match", "\"a\", W/\"abc\"")]);
        assert!(if_none_match(&h, "\"abc\""));
        assert!(!if_none_match(&h, "\"ab\""));
        assert!(if_none_match(&headers(&[("if-none-match", "*")]), "\"x\""));
        assert!(!if_none_match(&HeaderMap::new(), "\"x\""));
    }

    #[test]
    fn every_asset_is_served_compressed_and_has_a_distinct_tag() {
        let all = assets();
        assert_eq!(all.len(), FILES.len());
        for a in all {
            assert!(!a.raw.is_empty(), "{}", a.name);
            assert_ne!(a.etag(true), a.etag(false));
            if a.name.ends_with(".js") || a.name.ends_with(".css") {
                let z = a.gzip.as_ref().expect("text compresses");
                let mut back = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&z[..]), &mut back)
                    .expect("valid gzip");
                assert_eq!(back, a.raw, "{}", a.name);
            }
        }
        // The whole console on a first visit, compressed, stays well under the 300 KB goal.
        assert!(first_load_bytes() < 300 * 1024, "{}", first_load_bytes());
    }

    #[test]
    fn index_loads_only_same_origin_modules() {
        let html = std::str::from_utf8(FILES[0].2).expect("utf-8");
        assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
        // The CSP forbids inline code: no inline script bodies, handlers or style attributes.
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        assert!(
            !has_inline_handler(html),
            "inline event handler in index.html"
        );
        assert!(!html.contains("http://") && !html.contains("https://"));
        for (name, _, bytes) in FILES {
            let text = String::from_utf8_lossy(bytes);
            // No third-party request of any kind: nothing refers to another origin.
            for bad in [
                "http://",
                "https://",
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "new Function",
            ] {
                let allowed = *name == "icon.svg" && bad == "http://"; // the SVG namespace URI
                assert!(allowed || !text.contains(bad), "{name} contains {bad}");
            }
        }
    }

    /// An ` onsomething=` attribute.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].trim_start().starts_with('=')
        })
    }

    #[test]
    fn inline_handler_check_works() {
        assert!(has_inline_handler(r#"<img src=x onerror=alert(1)>"#));
        assert!(has_inline_handler(r#"<body onload = "x()">"#));
        assert!(!has_inline_handler("<p>click on the button</p>"));
    }

    #[test]
    fn harden_keeps_a_route_policy() {
        let mut h = HeaderMap::new();
        page_headers(&mut h);
        harden(&mut h);
        assert_eq!(h[CONTENT_SECURITY_POLICY], CONSOLE_CSP);
        assert_eq!(h["x-frame-options"], "DENY");
        let mut api = HeaderMap::new();
        harden(&mut api);
        assert_eq!(api[CONTENT_SECURITY_POLICY], API_CSP);
        assert_eq!(api["x-content-type-options"], "nosniff");
        assert_eq!(api["referrer-policy"], "no-referrer");
    }
}
