//! `/v1/kb/…`: collections, documents and search over HTTPS.
//!
//! The gate checks the key's `kb:read:C` / `kb:write:C` scope for the collection a path names,
//! and the handlers check collections named in a body the same way ([`gate::require`]), before
//! the collection is looked up, so a key cannot learn which collections exist outside its
//! scopes (a 403 either way). Listing collections shows only the readable ones.
//! Ingestion (parse, chunk, embed, commit) runs on a blocking thread; the 201 is sent after
//! the document's transaction has committed.

use hyper::header::CONTENT_TYPE;
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::gate::{self, Call};
use super::{json_response, Body};
use crate::kb::base::{CollectionInfo, DocInfo, KbError, SearchMode, SearchRequest};
use crate::kb::ingest::IngestError;
use crate::kb::DocKind;
use crate::keys::Scope;

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

/// `GET /v1/kb/collections`: the collections this key may read.
pub async fn list_collections(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let key = c.key()?;
    let list = blocking(move || Ok(kb.base().list_collections())).await?;
    let data: Vec<Value> = list
        .iter()
        .filter(|col| key.allows(&Scope::KbRead(col.name.clone())))
        .map(collection_json)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

/// `POST /v1/kb/collections` (`kb:write:NAME`, checked before the knowledge base is consulted).
pub async fn create_collection(c: Call) -> Result<Response<Body>, ApiError> {
    let obj = json_object(&c.body, &["name"])?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_param("name", "name is required (a string)"))?
        .to_string();
    gate::require(c.key()?, &Scope::KbWrite(name.clone()))?;
    let kb = c.app.kb()?;
    let col = blocking(move || Ok(kb.base().create_collection(&name)?)).await?;
    Ok(json_response(StatusCode::CREATED, &collection_json(&col)))
}

/// `GET /v1/kb/collections/{collection}`.
pub async fn get_collection(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let info = blocking(move || Ok(kb.base().collection(&name)?)).await?;
    Ok(json_response(StatusCode::OK, &collection_json(&info)))
}

/// `DELETE /v1/kb/collections/{collection}`.
pub async fn delete_collection(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let n = name.clone();
    blocking(move || Ok(kb.base().delete_collection(&n)?)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": name, "deleted": true}),
    ))
}

/// `GET /v1/kb/collections/{collection}/documents`.
pub async fn list_documents(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let docs = blocking(move || Ok(kb.base().list_documents(&name)?)).await?;
    let data: Vec<Value> = docs
        .iter()
        .map(|d| Value::Object(document_json(d)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

/// `GET /v1/kb/collections/{collection}/documents/{document}`: the document with its chunks.
pub async fn get_document(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let id = c.param("document")?.to_string();
    let (doc, chunks) = blocking(move || Ok(kb.base().document_chunks(&name, &id)?)).await?;
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

/// `DELETE /v1/kb/collections/{collection}/documents/{document}`.
pub async fn delete_document(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let id = c.param("document")?.to_string();
    let i = id.clone();
    blocking(move || Ok(kb.base().delete_document(&name, &i)?)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": id, "deleted": true}),
    ))
}

/// `filename` from the query string or the `X-Filename` header (percent-encoded UTF-8).
fn filename_of(head: &Parts) -> Result<String, ApiError> {
    let from_query = head.uri.query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "filename").then(|| v.replace('+', " "))
        })
    });
    let raw = match from_query {
        Some(v) => v,
        None => match head.headers.get("x-filename") {
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

/// `POST /v1/kb/collections/{collection}/documents`: the raw document; 201 once committed.
pub async fn upload(mut c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let collection = c.param("collection")?.to_string();
    let filename = filename_of(&c.head)?;
    let ct = c
        .head
        .headers
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
    let body = c
        .stream
        .take()
        .ok_or_else(|| ApiError::internal("upload route without a body stream"))?;
    let bytes = gate::read_limited(&c.head, body, limit).await?;
    let (doc, replaced) =
        blocking(move || Ok(kb.ingest(&collection, &filename, kind, &bytes)?)).await?;
    let mut m = document_json(&doc);
    m.insert("replaced".into(), Value::Bool(replaced));
    Ok(json_response(StatusCode::CREATED, &Value::Object(m)))
}

/// A small JSON object body with only the `allowed` keys (400 naming any other).
fn json_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    super::openai::object_body(body, allowed)
}

/// `POST /v1/kb/search` (`kb:read:C` for every collection named).
pub async fn search(c: Call) -> Result<Response<Body>, ApiError> {
    let key = c.key()?;
    let obj = json_object(&c.body, &["collections", "query", "top_k", "mode"])?;
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
    for col in &knowledge.collections {
        gate::require(key, &Scope::KbRead(col.clone()))?;
    }
    let kb = c.app.kb()?;
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
