//! The route table: every route the server answers, declared once with what the gate must
//! check before its handler runs. Adding a route is one entry here.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use hyper::Response;
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use super::gate::{BodyRule, Call, Limit};
use super::{admin_http, basic, chat, console, embeddings, kb, Body};
use crate::keys::Scope;

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ApiError>> + Send>>;
pub type Handler = fn(Call) -> HandlerFuture;

/// Who may call a route (checked by the gate before the body is read).
#[derive(Clone, Copy)]
pub enum Access {
    /// Anyone (health, the console's static files, the API description).
    Public,
    /// Loopback peers without a key (the appliance's own Prometheus); others need `admin`.
    LoopbackOrAdmin,
    /// Any valid key; what it may see is filtered by the handler (model and collection lists).
    Key,
    /// A key with this scope, computed from the path parameters.
    Scope(fn(&Params) -> Scope),
}

/// When the request is admitted against the key's limits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admit {
    /// Not rate-limited (public routes, model listing).
    No,
    /// One request, by the gate, before the body is read.
    One,
    /// By the handler right after parsing, because the cost depends on the body (`n`, the
    /// prompt); the gate refuses a handler that returns without admitting.
    ByHandler,
}

pub struct Route {
    pub method: &'static str,
    /// `/`-separated; `{name}` matches one non-empty, percent-decoded segment.
    pub path: &'static str,
    pub access: Access,
    pub admit: Admit,
    pub body: BodyRule,
    pub handler: Handler,
}

/// Decoded path parameters, by the names in the route's pattern.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `handler!(f)`: an `async fn(Call) -> Result<Response<Body>, ApiError>` as a table entry.
macro_rules! handler {
    ($f:path) => {{
        fn h(c: Call) -> HandlerFuture {
            Box::pin($f(c))
        }
        h as Handler
    }};
}

fn chat_scope(_: &Params) -> Scope {
    Scope::Chat
}
fn embeddings_scope(_: &Params) -> Scope {
    Scope::Embeddings
}
fn admin_scope(_: &Params) -> Scope {
    Scope::Admin
}
fn kb_read(p: &Params) -> Scope {
    Scope::KbRead(p.get("collection").unwrap_or_default().to_string())
}
fn kb_write(p: &Params) -> Scope {
    Scope::KbWrite(p.get("collection").unwrap_or_default().to_string())
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    admit: Admit,
    body: BodyRule,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        access,
        admit,
        body,
        handler,
    }
}

use Access::{Key, LoopbackOrAdmin, Public};
use Admit::{ByHandler, No, One};
use BodyRule::{Json, Stream};

/// Every route. Order matters only for readability: patterns never overlap.
pub fn table() -> &'static [Route] {
    static TABLE: OnceLock<Vec<Route>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let none = BodyRule::None;
        let small = Json(Limit::Small);
        let inference = Json(Limit::Inference);
        vec![
            route("GET", "/", Public, No, none, handler!(console::index)),
            route(
                "GET",
                "/console/{asset}",
                Public,
                No,
                none,
                handler!(console::asset),
            ),
            route(
                "GET",
                "/healthz",
                Public,
                No,
                none,
                handler!(basic::healthz),
            ),
            route("GET", "/readyz", Public, No, none, handler!(basic::readyz)),
            route(
                "GET",
                "/metrics",
                LoopbackOrAdmin,
                No,
                none,
                handler!(basic::metrics),
            ),
            route(
                "GET",
                "/openapi.json",
                Public,
                No,
                none,
                handler!(basic::openapi),
            ),
            route("GET", "/v1/models", Key, No, none, handler!(basic::models)),
            route(
                "GET",
                "/v1/models/{model}",
                Key,
                No,
                none,
                handler!(basic::model),
            ),
            route(
                "POST",
                "/v1/chat/completions",
                Access::Scope(chat_scope),
                ByHandler,
                inference,
                handler!(chat::chat),
            ),
            route(
                "POST",
                "/v1/completions",
                Access::Scope(chat_scope),
                ByHandler,
                inference,
                handler!(chat::completion),
            ),
            route(
                "POST",
                "/v1/embeddings",
                Access::Scope(embeddings_scope),
                ByHandler,
                inference,
                handler!(embeddings::create),
            ),
            route(
                "GET",
                "/v1/admin/status",
                Access::Scope(admin_scope),
                One,
                none,
                handler!(admin_http::status),
            ),
            route(
                "GET",
                "/v1/admin/keys",
                Access::Scope(admin_scope),
                One,
                none,
                handler!(admin_http::list_keys),
            ),
            route(
                "POST",
                "/v1/admin/keys",
                Access::Scope(admin_scope),
                One,
                small,
                handler!(admin_http::create_key),
            ),
            route(
                "DELETE",
                "/v1/admin/keys/{id}",
                Access::Scope(admin_scope),
                One,
                none,
                handler!(admin_http::revoke),
            ),
            route(
                "GET",
                "/v1/admin/metrics/history",
                Access::Scope(admin_scope),
                One,
                none,
                handler!(admin_http::history),
            ),
            route(
                "GET",
                "/v1/kb/collections",
                Key,
                One,
                none,
                handler!(kb::list_collections),
            ),
            // The collection's name is in the body: the handler checks `kb:write:NAME`.
            route(
                "POST",
                "/v1/kb/collections",
                Key,
                One,
                small,
                handler!(kb::create_collection),
            ),
            route(
                "GET",
                "/v1/kb/collections/{collection}",
                Access::Scope(kb_read),
                One,
                none,
                handler!(kb::get_collection),
            ),
            route(
                "DELETE",
                "/v1/kb/collections/{collection}",
                Access::Scope(kb_write),
                One,
                none,
                handler!(kb::delete_collection),
            ),
            route(
                "GET",
                "/v1/kb/collections/{collection}/documents",
                Access::Scope(kb_read),
                One,
                none,
                handler!(kb::list_documents),
            ),
            route(
                "POST",
                "/v1/kb/collections/{collection}/documents",
                Access::Scope(kb_write),
                One,
                Stream,
                handler!(kb::upload),
            ),
            route(
                "GET",
                "/v1/kb/collections/{collection}/documents/{document}",
                Access::Scope(kb_read),
                One,
                none,
                handler!(kb::get_document),
            ),
            route(
                "DELETE",
                "/v1/kb/collections/{collection}/documents/{document}",
                Access::Scope(kb_write),
                One,
                none,
                handler!(kb::delete_document),
            ),
            // Collections are named in the body: the handler checks `kb:read:C` for each.
            route(
                "POST",
                "/v1/kb/search",
                Key,
                One,
                small,
                handler!(kb::search),
            ),
        ]
    })
}

/// `path` against `pattern`: the decoded parameters, or `None` when it does not match.
fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(Params(params)),
            (Some(p), Some(s)) => {
                if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    let v = percent_decode_str(s).decode_utf8().ok()?;
                    if v.is_empty() {
                        return None;
                    }
                    params.push((name, v.into_owned()));
                } else if p != s {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// What the table says about a request line.
pub enum Found {
    Route(&'static Route, Params),
    /// The path exists, the method does not: the `Allow` list and the pattern.
    WrongMethod(&'static str, &'static str),
    NotFound,
}

pub fn find(method: &str, path: &str) -> Found {
    let mut wrong = None;
    for r in table() {
        if let Some(params) = matches(r.path, path) {
            if r.method == method {
                return Found::Route(r, params);
            }
            wrong = Some(r.path);
        }
    }
    match wrong {
        Some(p) => Found::WrongMethod(allow(p), p),
        None => Found::NotFound,
    }
}

/// The `Allow` header of a pattern: its methods in table order (built once).
fn allow(pattern: &'static str) -> &'static str {
    static ALLOW: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    let m = ALLOW.get_or_init(|| {
        let mut m: HashMap<&'static str, String> = HashMap::new();
        for r in table() {
            let e = m.entry(r.path).or_default();
            if !e.is_empty() {
                e.push_str(", ");
            }
            e.push_str(r.method);
        }
        m
    });
    m.get(pattern).map_or("GET", String::as_str)
}

/// `(method, pattern)` of every route (the OpenAPI document must list exactly these).
pub fn list() -> Vec<(&'static str, &'static str)> {
    table().iter().map(|r| (r.method, r.path)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concrete(pattern: &str) -> String {
        pattern
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x-1" } else { seg })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_route_is_found_by_its_own_method_and_path() {
        for r in table() {
            match find(r.method, &concrete(r.path)) {
                Found::Route(got, _) => {
                    assert_eq!((got.method, got.path), (r.method, r.path))
                }
                _ => panic!("{} {} not found", r.method, r.path),
            }
        }
    }

    #[test]
    fn no_two_routes_share_method_and_pattern_shape() {
        let mut seen = std::collections::HashSet::new();
        for r in table() {
            assert!(
                seen.insert((r.method, concrete(r.path))),
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn wrong_method_lists_allowed_ones() {
        match find("PUT", "/v1/kb/collections/hr") {
            Found::WrongMethod(allow, p) => {
                assert_eq!(allow, "GET, DELETE");
                assert_eq!(p, "/v1/kb/collections/{collection}");
            }
            _ => panic!("expected 405"),
        }
        match find("GET", "/v1/chat/completions") {
            Found::WrongMethod(allow, _) => assert_eq!(allow, "POST"),
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn parameters_are_decoded_and_never_empty() {
        match find("GET", "/v1/kb/collections/h%20r/documents/d%2F1") {
            Found::Route(r, p) => {
                assert_eq!(
                    r.path,
                    "/v1/kb/collections/{collection}/documents/{document}"
                );
                assert_eq!(p.get("collection"), Some("h r"));
                assert_eq!(p.get("document"), Some("d/1"));
            }
            _ => panic!("not found"),
        }
        for path in [
            "/v1/models/",
            "/v1/embeddings/x",
            "/v1/admin/keys/",
            "/console/",
            "/index.html",
            "/v1/kb/collections/%FF",
            "/v1/kb/collections//documents",
        ] {
            assert!(matches!(find("GET", path), Found::NotFound), "{path}");
        }
    }

    #[test]
    fn path_scopes_name_the_collection() {
        let Found::Route(r, p) = find("DELETE", "/v1/kb/collections/hr") else {
            panic!("not found")
        };
        let Access::Scope(f) = r.access else {
            panic!("scoped route")
        };
        assert_eq!(f(&p), Scope::KbWrite("hr".into()));
    }
}
