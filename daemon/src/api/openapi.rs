//! The OpenAPI 3.1 document of the API, generated from the wire types (`api::wire`) and a
//! route table (`api::routes`, each route with its [`OpDoc`]): what is documented is what the
//! server routes, parses and sends.
//!
//! `daemon/openapi.json` is this document, committed so that it can be read without building
//! and served as is by `GET /openapi.json`. A unit test fails when it differs from what
//! [`document`] generates; `EDGESEEK_BLESS=1 cargo test --lib api::openapi` rewrites it.

use serde_json::Value;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, KnownFormat, OpenApiBuilder, PathItem, PathsBuilder, Ref, RefOr,
    Required, ResponseBuilder, ServerBuilder,
};
use utoipa::ToSchema;

use super::wire;

type Schemas = Vec<(String, RefOr<Schema>)>;

/// A body's schema and the named schemas it refers to.
#[derive(Clone, Copy)]
pub struct BodyDoc {
    schema: fn() -> RefOr<Schema>,
    refs: fn(&mut Schemas),
}

/// A body of the wire type `T`, referenced by name (`#/components/schemas/T`).
pub const fn named<T: ToSchema>() -> BodyDoc {
    BodyDoc {
        schema: ref_to::<T>,
        refs: named_refs::<T>,
    }
}

/// A body of the wire type `T`, written out in place (generic types such as `List<T>`).
pub const fn inline<T: ToSchema>() -> BodyDoc {
    BodyDoc {
        schema: T::schema,
        refs: T::schemas,
    }
}

/// A body of the generic wire type `T` written out in place, with its type argument `A`
/// referenced by name (utoipa does not collect a generic argument's schema).
pub const fn inline_of<T: ToSchema, A: ToSchema>() -> BodyDoc {
    BodyDoc {
        schema: T::schema,
        refs: inline_of_refs::<T, A>,
    }
}

fn inline_of_refs<T: ToSchema, A: ToSchema>(out: &mut Schemas) {
    T::schemas(out);
    named_refs::<A>(out);
}

/// Text (server-sent events, Prometheus, HTML, ...).
pub const TEXT: BodyDoc = BodyDoc {
    schema: text,
    refs: no_refs,
};

/// Raw bytes (uploaded documents).
pub const BINARY: BodyDoc = BodyDoc {
    schema: binary,
    refs: no_refs,
};

/// Any JSON object (this document).
pub const OBJECT: BodyDoc = BodyDoc {
    schema: object,
    refs: no_refs,
};

fn ref_to<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

fn named_refs<T: ToSchema>(out: &mut Schemas) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

fn no_refs(_: &mut Schemas) {}

fn text() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn binary() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
        .into()
}

fn object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No key.
    Open,
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// No key from loopback, a key from elsewhere.
    LoopbackOrBearer,
}

/// A path, query or header parameter.
pub struct ParamDoc {
    pub name: &'static str,
    pub location: ParameterIn,
    pub description: Option<&'static str>,
}

pub const fn path_param(name: &'static str, description: Option<&'static str>) -> ParamDoc {
    ParamDoc {
        name,
        location: ParameterIn::Path,
        description,
    }
}

/// What the document says about one operation (method and path are given with it).
pub struct OpDoc {
    pub operation_id: Option<&'static str>,
    pub summary: &'static str,
    pub description: Option<&'static str>,
    /// The scope the key needs (`chat`, `kb:read:{collection}`), said first in the
    /// description.
    pub scope: Option<&'static str>,
    pub auth: Auth,
    pub params: &'static [ParamDoc],
    /// The request body by media type.
    pub request: &'static [(&'static str, BodyDoc)],
    /// The success status, its description and its bodies by media type.
    pub ok: (
        &'static str,
        &'static str,
        &'static [(&'static str, BodyDoc)],
    ),
    /// Other answers without a body (304).
    pub other: &'static [(&'static str, &'static str)],
    /// Statuses answered with the error body.
    pub errors: &'static [&'static str],
}

/// The JSON media type.
pub const JSON: &str = "application/json";
/// Error statuses of the knowledge-base routes.
pub const KB_ERRORS: &[&str] = &["400", "401", "403", "404", "503"];
/// Error statuses of the inference routes.
pub const INFERENCE_ERRORS: &[&str] = &["400", "401", "403", "404", "413", "429", "500", "503"];
/// The `{collection}` path parameter.
pub const COLLECTION: ParamDoc = path_param(
    "collection",
    Some("collection name (percent-encoded UTF-8)"),
);
/// The `{document}` path parameter.
pub const DOCUMENT: ParamDoc = path_param("document", None);

impl OpDoc {
    /// An operation for keys (`Authorization: Bearer`) with only a summary; the other fields
    /// are given with `..OpDoc::new(summary)`.
    pub const fn new(summary: &'static str) -> OpDoc {
        OpDoc {
            operation_id: None,
            summary,
            description: None,
            scope: None,
            auth: Auth::Bearer,
            params: &[],
            request: &[],
            ok: ("200", "", &[]),
            other: &[],
            errors: &[],
        }
    }
}

fn method(m: &str) -> HttpMethod {
    match m {
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "DELETE" => HttpMethod::Delete,
        "PATCH" => HttpMethod::Patch,
        "HEAD" => HttpMethod::Head,
        "OPTIONS" => HttpMethod::Options,
        _ => HttpMethod::Get,
    }
}

fn operation(doc: &OpDoc, schemas: &mut Schemas) -> utoipa::openapi::path::Operation {
    let description = match (doc.scope, doc.description) {
        (Some(s), Some(d)) => Some(format!("Needs the `{s}` scope. {d}")),
        (Some(s), None) => Some(format!("Needs the `{s}` scope.")),
        (None, d) => d.map(str::to_string),
    };
    let mut b = OperationBuilder::new()
        .summary(Some(doc.summary))
        .description(description)
        .operation_id(doc.operation_id);
    b = match doc.auth {
        Auth::Open => b.securities(Some(Vec::new())),
        // The console's session cookie of a directory sign-in works wherever a key does.
        Auth::Bearer => b.securities(Some([
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ])),
        Auth::LoopbackOrBearer => b.securities(Some([
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ])),
    };
    for p in doc.params {
        let required = if p.location == ParameterIn::Path {
            Required::True
        } else {
            Required::False
        };
        b = b.parameter(
            ParameterBuilder::new()
                .name(p.name)
                .parameter_in(p.location.clone())
                .required(required)
                .description(p.description)
                .schema(Some(text())),
        );
    }
    if !doc.request.is_empty() {
        let mut r = RequestBodyBuilder::new().required(Some(Required::True));
        for (media, body) in doc.request {
            (body.refs)(schemas);
            r = r.content(
                *media,
                ContentBuilder::new().schema(Some((body.schema)())).build(),
            );
        }
        b = b.request_body(Some(r.build()));
    }
    let (status, what, bodies) = doc.ok;
    let mut ok = ResponseBuilder::new().description(what);
    for (media, body) in bodies {
        (body.refs)(schemas);
        ok = ok.content(
            *media,
            ContentBuilder::new().schema(Some((body.schema)())).build(),
        );
    }
    b = b.response(status, ok.build());
    for (status, what) in doc.other {
        b = b.response(*status, ResponseBuilder::new().description(*what).build());
    }
    for status in doc.errors {
        b = b.response(*status, RefOr::Ref(Ref::from_response_name("Error")));
    }
    b.build()
}

/// The OpenAPI document of `ops` (`(method, path, doc)`, the route table's entries).
pub fn document<'a>(ops: impl IntoIterator<Item = (&'a str, &'a str, &'a OpDoc)>) -> Value {
    let mut schemas: Schemas = Vec::new();
    let mut paths = PathsBuilder::new().build();
    for (m, path, doc) in ops {
        let item = PathItem::new(method(m), operation(doc, &mut schemas));
        paths
            .paths
            .entry(path.to_string())
            .or_default()
            .merge_operations(item);
    }
    (named::<wire::error::ErrorBody<'static>>().refs)(&mut schemas);
    let bearer = {
        let mut h = Http::new(HttpAuthScheme::Bearer);
        h.description = Some("An API key from `edgeseek keys create`.".into());
        SecurityScheme::Http(h)
    };
    let session = {
        let mut k = ApiKeyValue::new(crate::api::gate::SESSION_COOKIE);
        k.description = Some(
            "The session of a directory sign-in (`POST /v1/auth/login`); requests that are \
             not GET or HEAD also need its `X-CSRF-Token` header."
                .into(),
        );
        SecurityScheme::ApiKey(ApiKey::Cookie(k))
    };
    let error = ResponseBuilder::new()
        .description("An error (429 and 503 carry Retry-After; 405 carries Allow)")
        .content(
            JSON,
            ContentBuilder::new()
                .schema(Some((named::<wire::error::ErrorBody<'static>>().schema)()))
                .build(),
        )
        .build();
    let components = ComponentsBuilder::new()
        .security_scheme("bearer", bearer)
        .security_scheme("session", session)
        .response("Error", error)
        .schemas_from_iter(schemas)
        .build();
    let info = InfoBuilder::new()
        .title("edgeseek API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "OpenAI-compatible HTTPS API of an edgeseek appliance. Every route under /v1 needs \
             `Authorization: Bearer <key>` (or, from the console, the session cookie of a \
             directory sign-in), except `/v1/auth/methods` and `/v1/auth/login`. Errors are `{\"error\": {\"message\", \"type\", \
             \"param\", \"code\"}}`. Unknown request parameters are rejected with 400 naming \
             the parameter.",
        ))
        .build();
    let doc = OpenApiBuilder::new()
        .info(info)
        .servers(Some([ServerBuilder::new()
            .url("https://127.0.0.1:8443")
            .description(Some("edgeseek serve --dev"))
            .build()]))
        .paths(paths)
        .components(Some(components))
        .build();
    let mut v = serde_json::to_value(&doc).unwrap_or(Value::Null);
    unwrap_descriptions(&mut v);
    v
}

/// Doc comments become descriptions with their line breaks; a description is one paragraph.
fn unwrap_descriptions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match x {
                    Value::String(s) if k == "description" => *s = s.replace('\n', " "),
                    x => unwrap_descriptions(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&o[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The document as committed in `daemon/openapi.json`: keys sorted (stable diffs, whatever
/// order the generator inserts them in), pretty-printed, one final newline.
pub fn pretty(doc: &Value) -> String {
    let mut s = serde_json::to_string_pretty(&sorted(doc)).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generated() -> String {
        pretty(&document(crate::api::routes::docs()))
    }

    /// The committed document is the generated one. After changing a wire type or a route's documentation:
    /// `EDGESEEK_BLESS=1 cargo test --lib api::openapi` rewrites `daemon/openapi.json`.
    #[test]
    fn committed_document_is_generated() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let want = generated();
        if std::env::var_os("EDGESEEK_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap();
        assert!(
            have == want,
            "daemon/openapi.json is stale; run EDGESEEK_BLESS=1 cargo test --lib api::openapi"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document(crate::api::routes::docs());
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        assert!(schemas.contains_key("Error") && schemas.contains_key("KbHit"));
    }
}
