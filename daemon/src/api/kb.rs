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
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::{authenticate, json_response, read_json_body, App, Body};
use crate::kb::base::{CollectionInfo, DocInfo, KbError, SearchMode, SearchRequest};
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
            IngestError::TooLarge { limit, .. } => {
                ApiError::payload_too_large(usize::try_from(limit).unwrap_or(usize::MAX))
            }
            IngestError::Busy { .. } => {
                let mut a = ApiError::unavailable(e.to_string());
                a.retry_after = Some(5);
                a
            }
            IngestError::Spool(_) => {
                tracing::error!(error = %e, "ingest failed");
                ApiError::internal(e.to_string())
            }
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

fn collection_json(c: &CollectionInfo) -> Value {
    json!({
        "name": c.name,
        "created_at": c.created,
        "documents": c.documents,
        "chunks": c.chunks,
        "vectors_current": c.vectors_current,
    })
}

fn document_json(d: &DocInfo) -> Map<String, Value> {
    let v = json!({
        "id": d.id,
        "collection": d.collection,
        "filename": d.filename,
        "kind": d.kind,
        "title": d.title,
        "bytes": d.size_bytes,
        "sha256": d.sha256,
        "chunks": d.chunks,
        "pages": d.pages,
        "created_at": d.created,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
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
            let data: Vec<Value> = list
                .iter()
                .filter(|c| key.allows(&Scope::KbRead(c.name.clone())))
                .map(collection_json)
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        (KbPath::Collections, _) => {
            let obj = json_object(req, &["name"]).await?;
            let name = obj
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid_param("name", "name is required (a string)"))?
                .to_string();
            need(&key, Scope::KbWrite(name.clone()))?;
            let k = kb.clone();
            let c = blocking(move || Ok(k.base().create_collection(&name)?)).await?;
            Ok(json_response(StatusCode::CREATED, &collection_json(&c)))
        }
        (KbPath::Collection(c), Method::GET) => {
            let k = kb.clone();
            let info = blocking(move || Ok(k.base().collection(&c)?)).await?;
            Ok(json_response(StatusCode::OK, &collection_json(&info)))
        }
        (KbPath::Collection(c), _) => {
            let k = kb.clone();
            let name = c.clone();
            blocking(move || Ok(k.base().delete_collection(&name)?)).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"name": c, "deleted": true}),
            ))
        }
        (KbPath::Documents(c), Method::GET) => {
            let k = kb.clone();
            let docs = blocking(move || Ok(k.base().list_documents(&c)?)).await?;
            let data: Vec<Value> = docs
                .iter()
                .map(|d| Value::Object(document_json(d)))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": data}),
            ))
        }
        (KbPath::Documents(c), _) => upload(kb, c, req).await,
        (KbPath::Document(c, id), Method::GET) => {
            let k = kb.clone();
            let (doc, chunks) = blocking(move || Ok(k.base().document_chunks(&c, &id)?)).await?;
            let mut m = document_json(&doc);
            m.insert(
                "chunks".into(),
                Value::Array(
                    chunks
                        .iter()
                        .map(|ch| {
                            json!({
                                "chunk_id": ch.id,
                                "ordinal": ch.ordinal,
                                "text": ch.text,
                                "page": ch.page,
                                "heading": ch.heading,
                            })
                        })
                        .collect(),
                ),
            );
            Ok(json_response(StatusCode::OK, &Value::Object(m)))
        }
        (KbPath::Document(c, id), _) => {
            let k = kb.clone();
            let i = id.clone();
            blocking(move || Ok(k.base().delete_document(&c, &i)?)).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"id": id, "deleted": true}),
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
    crate::kb::valid_filename(&filename)
        .map_err(|m| ApiError::invalid_param("filename", format!("filename {m}")))?;
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
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        super::drain(req.into_body(), limit.saturating_mul(2)).await;
        return Err(ApiError::payload_too_large(limit));
    }
    // A missing collection is a 404 before the body is read.
    let k = kb.clone();
    let c = collection.clone();
    blocking(move || Ok(k.base().collection(&c)?)).await?;
    // A slot first: it bounds the spool's disk use as well as the ingest work.
    let slot = kb.admit().await.map_err(|e| {
        let mut a = ApiError::unavailable(e.to_string());
        a.retry_after = Some(5);
        a
    })?;
    // The body goes to a spool file on the ingest's own thread, piece by piece; the
    // document is never held in memory here.
    let up = kb.begin(slot, collection, filename, kind)?;
    let mut body = req.into_body();
    let mut seen = 0usize;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > limit {
            // Dropping `up` abandons the ingest and removes its spool file.
            drop(up);
            super::drain(body, limit).await;
            return Err(ApiError::payload_too_large(limit));
        }
        if !up.write(data).await {
            break;
        }
    }
    let (doc, replaced) = up.finish().await?;
    let mut m = document_json(&doc);
    m.insert("replaced".into(), Value::Bool(replaced));
    Ok(json_response(StatusCode::CREATED, &Value::Object(m)))
}

/// A small JSON object body with only the `allowed` keys (400 naming any other).
async fn json_object(
    req: Request<Incoming>,
    allowed: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let body = read_json_body(req, 64 * 1024).await?;
    super::openai::object_body(&body, allowed)
}

/// `POST /v1/kb/search`.
async fn search(
    kb: Arc<Ingestor>,
    key: KeyInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let obj = json_object(req, &["collections", "query", "top_k", "mode"]).await?;
    let knowledge = super::rag::parse_knowledge(&json!({
        "collections": obj.get("collections").cloned().unwrap_or(Value::Null),
        "top_k": obj.get("top_k").cloned().unwrap_or(Value::Null),
    }))
    .map_err(|mut e| {
        // The same rules as chat's `knowledge`, named as this route's parameters.
        e.param = e
            .param
            .map(|p| p.trim_start_matches("knowledge.").to_string());
        e
    })?;
    let query = match obj.get("query") {
        Some(Value::String(q)) if !q.trim().is_empty() => q.clone(),
        _ => {
            return Err(ApiError::invalid_param(
                "query",
                "query must be a non-empty string",
            ))
        }
    };
    let mode = match obj.get("mode") {
        None | Some(Value::Null) => SearchMode::Hybrid,
        Some(m) => serde_json::from_value(m.clone()).map_err(|_| {
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
    let hits = blocking(move || Ok(kb.base().search(&req)?)).await?;
    let results: Vec<Value> = hits
        .iter()
        .map(|h| {
            json!({
                "document_id": h.document_id,
                "filename": h.filename,
                "collection": h.collection,
                "chunk_id": h.chunk_id,
                "text": h.text,
                "score": h.score,
                "page": h.page,
                "heading": h.heading,
                "bm25_rank": h.bm25_rank,
                "dense_rank": h.dense_rank,
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"results": results})))
}

#[cfg(test)]
mod tests {
    use super::*;

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
