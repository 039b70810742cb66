//! `/v1/kb/…`: collections, documents and search over HTTPS.
//!
//! Every route checks the key's `kb:read:C` / `kb:write:C` scope for the collection it names
//! before looking the collection up, so a key cannot learn which collections exist outside
//! its scopes (a 403 either way). Listing collections shows only the readable ones.
//! Ingestion (parse, chunk, embed, commit) runs on a blocking thread; the 201 is sent after
//! the document's transaction has committed.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use super::wire::chat::KnowledgeParam;
use super::wire::kb::{
    CollectionDeleted, CreateCollection, DocumentDeleted, KbChunk, KbCollection, KbDocument,
    KbDocumentChunks, KbSearchRequest, KbSearchResults, KbUploaded,
};
use super::wire::List;
use super::{authenticate, json_response, read_body, read_json_body, App, Body};
use crate::kb::base::{KbError, SearchMode, SearchRequest};
use crate::kb::ingest::{IngestError, Ingestor};
use crate::kb::DocKind;
use crate::keys::{KeyInfo, Scope};

/// What a `/v1/kb` path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KbPath {
    Collections,
    Collection(String),
    Documents(String),
    Document(String, String),
    Search,
}

impl KbPath {
    /// Parse `path` (still percent-encoded); `None` if it is not a KB route.
    pub fn parse(path: &str) -> Option<KbPath> {
        if path == "/v1/kb/search" {
            return Some(KbPath::Search);
        }
        let rest = path.strip_prefix("/v1/kb/collections")?;
        if rest.is_empty() {
            return Some(KbPath::Collections);
        }
        let segs: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
        let dec = |s: &str| -> Option<String> {
            let d = percent_decode_str(s).decode_utf8().ok()?.into_owned();
            (!d.is_empty()).then_some(d)
        };
        match segs.as_slice() {
            [c] => Some(KbPath::Collection(dec(c)?)),
            [c, "documents"] => Some(KbPath::Documents(dec(c)?)),
            [c, "documents", id] => Some(KbPath::Document(dec(c)?, dec(id)?)),
            _ => None,
        }
    }

    /// The route's pattern (metric label).
    pub fn label(&self) -> &'static str {
        match self {
            KbPath::Collections => "/v1/kb/collections",
            KbPath::Collection(_) => "/v1/kb/collections/{collection}",
            KbPath::Documents(_) => "/v1/kb/collections/{collection}/documents",
            KbPath::Document(..) => "/v1/kb/collections/{collection}/documents/{document}",
            KbPath::Search => "/v1/kb/search",
        }
    }
}

impl From<KbError> for ApiError {
    fn from(e: KbError) -> ApiError {
        match &e {
            KbError::NotFound { .. } => ApiError::not_found(e.to_string()),
            KbError::Invalid(_) => ApiError::bad_request(e.to_string()),
            KbError::Conflict(_) => ApiError::conflict(e.to_string()),
            _ => {
                tracing::error!(error = %e, "knowledge base error");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        match e {
            IngestError::Kb(k) => k.into(),
            IngestError::TooLarge { limit, .. } => ApiError::payload_too_large(limit),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

fn need(key: &KeyInfo, scope: Scope) -> Result<(), ApiError> {
    if key.allows(&scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&scope.to_string()))
    }
}

/// Run blocking knowledge-base work (redb, embedding) off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("knowledge base task failed: {e}")))?
}

pub async fn handle(
    app: &Arc<App>,
    path: KbPath,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    // The router has checked the method against the route's `Allow` list.
    let method = req.method().clone();
    let key = authenticate(app, &req)?;
    // Scope checks come before the knowledge base is consulted (and before it is ready).
    if let KbPath::Collection(c) | KbPath::Documents(c) | KbPath::Document(c, _) = &path {
        let write = method == Method::POST || method == Method::DELETE;
        need(
            &key,
            if write {
                Scope::KbWrite(c.clone())
            } else {
                Scope::KbRead(c.clone())
            },
        )?;
    }
    let kb = app.kb()?;
    match (path, method) {
        (KbPath::Collections, Method::GET) => {
            let k = kb.clone();
            let list = blocking(move || Ok(k.base().list_collections())).await?;
            let data: Vec<KbCollection> = list
                .iter()
                .filter(|c| key.allows(&Scope::KbRead(c.name.clone())))
                .map(KbCollection::from)
                .collect();
            Ok(answer(StatusCode::OK, &List::new(data)))
        }
        (KbPath::Collections, _) => {
            let body: CreateCollection = json_body(req, |_| name_required()).await?;
            let name = body.name.ok_or_else(name_required)?;
            need(&key, Scope::KbWrite(name.clone()))?;
            let k = kb.clone();
            let c = blocking(move || Ok(k.base().create_collection(&name)?)).await?;
            Ok(answer(StatusCode::CREATED, &KbCollection::from(&c)))
        }
        (KbPath::Collection(c), Method::GET) => {
            let k = kb.clone();
            let info = blocking(move || Ok(k.base().collection(&c)?)).await?;
            Ok(answer(StatusCode::OK, &KbCollection::from(&info)))
        }
        (KbPath::Collection(c), _) => {
            let k = kb.clone();
            let name = c.clone();
            blocking(move || Ok(k.base().delete_collection(&name)?)).await?;
            Ok(answer(
                StatusCode::OK,
                &CollectionDeleted {
                    name: c,
                    deleted: true,
                },
            ))
        }
        (KbPath::Documents(c), Method::GET) => {
            let k = kb.clone();
            let docs = blocking(move || Ok(k.base().list_documents(&c)?)).await?;
            let data: Vec<KbDocument> = docs.iter().map(KbDocument::from).collect();
            Ok(answer(StatusCode::OK, &List::new(data)))
        }
        (KbPath::Documents(c), _) => upload(kb, c, req).await,
        (KbPath::Document(c, id), Method::GET) => {
            let k = kb.clone();
            let (doc, chunks) = blocking(move || Ok(k.base().document_chunks(&c, &id)?)).await?;
            Ok(answer(
                StatusCode::OK,
                &KbDocumentChunks {
                    doc: (&doc).into(),
                    chunks: chunks.iter().map(KbChunk::from).collect(),
                },
            ))
        }
        (KbPath::Document(c, id), _) => {
            let k = kb.clone();
            let i = id.clone();
            blocking(move || Ok(k.base().delete_document(&c, &i)?)).await?;
            Ok(answer(
                StatusCode::OK,
                &DocumentDeleted { id, deleted: true },
            ))
        }
        (KbPath::Search, _) => search(kb, key, req).await,
    }
}

/// `filename` from the query string or the `X-Filename` header (percent-encoded UTF-8).
fn filename_of(req: &Request<Incoming>) -> Result<String, ApiError> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "filename").then(|| v.replace('+', " "))
        })
    });
    let raw = match from_query {
        Some(v) => v,
        None => match req.headers().get("x-filename") {
            Some(h) => h
                .to_str()
                .map_err(|_| {
                    ApiError::invalid_param(
                        "filename",
                        "X-Filename must be ASCII; percent-encode other characters",
                    )
                })?
                .to_string(),
            None => {
                return Err(ApiError::invalid_param(
                    "filename",
                    "give the document's file name as ?filename=NAME or an X-Filename header",
                ))
            }
        },
    };
    let name = percent_decode_str(&raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid_param("filename", "filename is not valid UTF-8"))?
        .trim()
        .to_string();
    if name.is_empty() {
        return Err(ApiError::invalid_param("filename", "filename is empty"));
    }
    Ok(name)
}

async fn upload(
    kb: Arc<Ingestor>,
    collection: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let filename = filename_of(&req)?;
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let kind = DocKind::from_content_type(&ct).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "unsupported Content-Type `{ct}`; send text/plain, text/markdown, text/html, \
             application/pdf or {}",
            crate::kb::DOCX_MIME
        ))
    })?;
    let limit = kb.max_document_bytes();
    let bytes = read_body(req, limit).await?;
    let (doc, replaced) =
        blocking(move || Ok(kb.ingest(&collection, &filename, kind, &bytes)?)).await?;
    Ok(answer(
        StatusCode::CREATED,
        &KbUploaded {
            doc: (&doc).into(),
            replaced,
        },
    ))
}

fn name_required() -> ApiError {
    ApiError::invalid_param("name", "name is required (a string)")
}

fn answer(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    json_response(status, &super::wire::value(body))
}

/// A small JSON body of type `T` (400 naming any unknown key; `invalid` words the others).
async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    invalid: impl Fn(&str) -> ApiError,
) -> Result<T, ApiError> {
    let body = read_json_body(req, 64 * 1024).await?;
    super::wire::parse(&body, invalid)
}

/// The 400 for a value of the wrong JSON type in a search request.
fn search_type_error(path: &str) -> ApiError {
    match super::wire::top(path) {
        "query" => ApiError::invalid_param("query", "query must be a non-empty string"),
        "mode" => ApiError::invalid_param("mode", "mode must be `hybrid`, `bm25` or `vector`"),
        // The same rules as chat's `knowledge`, named as this route's parameters.
        _ => unprefixed(super::rag::knowledge_type_error(&format!(
            "knowledge.{path}"
        ))),
    }
}

fn unprefixed(mut e: ApiError) -> ApiError {
    e.param = e
        .param
        .map(|p| p.trim_start_matches("knowledge.").to_string());
    e
}

/// `POST /v1/kb/search`.
async fn search(
    kb: Arc<Ingestor>,
    key: KeyInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let body: KbSearchRequest = json_body(req, search_type_error).await?;
    let knowledge = super::rag::knowledge(KnowledgeParam {
        collections: body.collections,
        top_k: body.top_k,
    })
    .map_err(unprefixed)?;
    let query = match body.query {
        Some(q) if !q.trim().is_empty() => q,
        _ => {
            return Err(ApiError::invalid_param(
                "query",
                "query must be a non-empty string",
            ))
        }
    };
    let mode = match body.mode {
        None => SearchMode::Hybrid,
        Some(m) => serde_json::from_value(serde_json::Value::String(m)).map_err(|_| {
            ApiError::invalid_param("mode", "mode must be `hybrid`, `bm25` or `vector`")
        })?,
    };
    for c in &knowledge.collections {
        need(&key, Scope::KbRead(c.clone()))?;
    }
    let req = SearchRequest {
        collections: knowledge.collections,
        query,
        top_k: knowledge.top_k,
        mode,
    };
    let results = blocking(move || Ok(kb.base().search(&req)?)).await?;
    Ok(answer(StatusCode::OK, &KbSearchResults { results }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_errors_name_this_routes_parameters() {
        let parse = |b: &str| {
            crate::api::wire::parse::<KbSearchRequest>(b.as_bytes(), search_type_error).unwrap_err()
        };
        for (body, param) in [
            (r#"{"collections":"hr","query":"x"}"#, "collections"),
            (r#"{"collections":[1],"query":"x"}"#, "collections"),
            (r#"{"collections":["hr"],"top_k":"5"}"#, "top_k"),
            (r#"{"collections":["hr"],"query":5}"#, "query"),
            (r#"{"collections":["hr"],"mode":1}"#, "mode"),
            (r#"{"collections":["hr"],"bogus":1}"#, "bogus"),
        ] {
            assert_eq!(parse(body).param.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            KbPath::parse("/v1/kb/collections"),
            Some(KbPath::Collections)
        );
        assert_eq!(KbPath::parse("/v1/kb/search"), Some(KbPath::Search));
        assert_eq!(
            KbPath::parse("/v1/kb/collections/hr"),
            Some(KbPath::Collection("hr".into()))
        );
        assert_eq!(
            KbPath::parse("/v1/kb/collections/%E4%BA%BA%E4%BA%8B/documents"),
            Some(KbPath::Documents("人事".into()))
        );
        assert_eq!(
            KbPath::parse("/v1/kb/collections/hr/documents/d_01"),
            Some(KbPath::Document("hr".into(), "d_01".into()))
        );
        for bad in [
            "/v1/kb",
            "/v1/kb/collections/",
            "/v1/kb/collections//documents",
            "/v1/kb/collections/hr/documents/x/y",
            "/v1/kb/collections/hr/other",
            "/v1/kb/collectionsx",
            "/v1/kb/collections/%FF",
        ] {
            assert_eq!(KbPath::parse(bad), None, "{bad}");
        }
    }
}
