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

use super::error::ApiError;
use super::gate::{self, Call};
use super::wire::chat::KnowledgeParam;
use super::wire::kb::{
    CollectionDeleted, CreateCollection, DocumentDeleted, KbChunk, KbCollection, KbDocument,
    KbDocumentChunks, KbSearchRequest, KbSearchResults, KbUploaded,
};
use super::wire::List;
use super::{json_response, Body};
use crate::kb::base::{KbError, SearchMode, SearchRequest};
use crate::kb::ingest::IngestError;
use crate::kb::DocKind;
use crate::keys::Scope;
use crate::store::StoreError;

impl From<KbError> for ApiError {
    fn from(e: KbError) -> ApiError {
        match &e {
            KbError::NotFound { .. } => ApiError::not_found(e.to_string()),
            KbError::Invalid(_) => ApiError::bad_request(e.to_string()),
            KbError::Conflict(_) => ApiError::conflict(e.to_string()),
            KbError::Store(s @ StoreError::Full(_)) => {
                tracing::warn!(error = %s, "knowledge base: disk full");
                ApiError::store("", s)
            }
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
            IngestError::DiskFull(_) => {
                tracing::warn!(error = %e, "ingest failed");
                ApiError::insufficient_storage(e.to_string())
            }
            IngestError::Spool(_) => {
                tracing::error!(error = %e, "ingest failed");
                ApiError::internal(e.to_string())
            }
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

/// Run blocking knowledge-base work (redb, embedding) off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::util::blocking(f).await
}

/// `GET /v1/kb/collections`: the collections this key may read.
pub async fn list_collections(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let key = c.key()?;
    let list = blocking(move || Ok(kb.base().list_collections())).await?;
    let data: Vec<KbCollection> = list
        .iter()
        .filter(|col| key.allows(&Scope::KbRead(col.name.clone())))
        .map(KbCollection::from)
        .collect();
    Ok(answer(StatusCode::OK, &List::new(data)))
}

/// `POST /v1/kb/collections` (`kb:write:NAME`, checked before the knowledge base is consulted).
pub async fn create_collection(c: Call) -> Result<Response<Body>, ApiError> {
    let body: CreateCollection = super::wire::parse(&c.body, |_| name_required())?;
    let name = body.name.ok_or_else(name_required)?;
    gate::require(c.key()?, &Scope::KbWrite(name.clone()))?;
    let kb = c.app.kb()?;
    let col = blocking(move || Ok(kb.base().create_collection(&name)?)).await?;
    Ok(answer(StatusCode::CREATED, &KbCollection::from(&col)))
}

/// `GET /v1/kb/collections/{collection}`.
pub async fn get_collection(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let info = blocking(move || Ok(kb.base().collection(&name)?)).await?;
    Ok(answer(StatusCode::OK, &KbCollection::from(&info)))
}

/// `DELETE /v1/kb/collections/{collection}`.
pub async fn delete_collection(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let n = name.clone();
    blocking(move || Ok(kb.base().delete_collection(&n)?)).await?;
    Ok(answer(
        StatusCode::OK,
        &CollectionDeleted {
            name,
            deleted: true,
        },
    ))
}

/// `GET /v1/kb/collections/{collection}/documents`.
pub async fn list_documents(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let docs = blocking(move || Ok(kb.base().list_documents(&name)?)).await?;
    let data: Vec<KbDocument> = docs.iter().map(KbDocument::from).collect();
    Ok(answer(StatusCode::OK, &List::new(data)))
}

/// `GET /v1/kb/collections/{collection}/documents/{document}`: the document with its chunks.
pub async fn get_document(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let id = c.param("document")?.to_string();
    let (doc, chunks) = blocking(move || Ok(kb.base().document_chunks(&name, &id)?)).await?;
    Ok(answer(
        StatusCode::OK,
        &KbDocumentChunks {
            doc: (&doc).into(),
            chunks: chunks.iter().map(KbChunk::from).collect(),
        },
    ))
}

/// `DELETE /v1/kb/collections/{collection}/documents/{document}`.
pub async fn delete_document(c: Call) -> Result<Response<Body>, ApiError> {
    let kb = c.app.kb()?;
    let name = c.param("collection")?.to_string();
    let id = c.param("document")?.to_string();
    let i = id.clone();
    blocking(move || Ok(kb.base().delete_document(&name, &i)?)).await?;
    Ok(answer(
        StatusCode::OK,
        &DocumentDeleted { id, deleted: true },
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
    crate::kb::valid_filename(&filename)
        .map_err(|m| ApiError::invalid_param("filename", format!("filename {m}")))?;
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
    let mut body = c
        .stream
        .take()
        .ok_or_else(|| ApiError::internal("upload route without a body stream"))?;
    let declared = c
        .head
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        gate::drain(body, limit.saturating_mul(2)).await;
        return Err(ApiError::payload_too_large(limit));
    }
    // A missing collection is a 404 before the body is read.
    let k = kb.clone();
    let col = collection.clone();
    blocking(move || Ok(k.base().collection(&col)?)).await?;
    // A slot first: it bounds the spool's disk use as well as the ingest work.
    let slot = kb.admit().await.map_err(|e| {
        let mut a = ApiError::unavailable(e.to_string());
        a.retry_after = Some(5);
        a
    })?;
    // The body goes to a spool file on the ingest's own thread, piece by piece; the
    // document is never held in memory here.
    let up = kb.begin(slot, collection, filename, kind)?;
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
            gate::drain(body, limit).await;
            return Err(ApiError::payload_too_large(limit));
        }
        if !up.write(data).await {
            break;
        }
    }
    let (doc, replaced) = up.finish().await?;
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

/// `POST /v1/kb/search` (`kb:read:C` for every collection named).
pub async fn search(c: Call) -> Result<Response<Body>, ApiError> {
    let key = c.key()?;
    let body: KbSearchRequest = super::wire::parse(&c.body, search_type_error)?;
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
}
