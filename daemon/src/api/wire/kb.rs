//! `/v1/kb/…` and the admin socket's `kb.*` commands: collections, documents, search.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kb::base::{ChunkInfo, CollectionInfo, DocInfo};
use crate::kb::Hit;

#[derive(Debug, Serialize, ToSchema)]
pub struct KbCollection {
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    pub documents: usize,
    pub chunks: usize,
    /// false when the collection's vectors came from another embedding model (keyword
    /// search only until re-embedded)
    pub vectors_current: bool,
}

impl From<&CollectionInfo> for KbCollection {
    fn from(c: &CollectionInfo) -> Self {
        KbCollection {
            name: c.name.clone(),
            created_at: c.created,
            documents: c.documents,
            chunks: c.chunks,
            vectors_current: c.vectors_current,
        }
    }
}

/// The fields every document answer has.
#[derive(Debug, Serialize, ToSchema)]
pub struct KbDocumentFields {
    pub id: String,
    pub collection: String,
    pub filename: String,
    /// `text`, `markdown`, `html`, `pdf` or `docx`.
    #[schema(value_type = String)]
    pub kind: crate::kb::DocKind,
    pub title: Option<String>,
    pub bytes: u64,
    pub sha256: String,
    pub pages: Option<u32>,
    /// Unix seconds.
    pub created_at: u64,
}

impl From<&DocInfo> for KbDocumentFields {
    fn from(d: &DocInfo) -> Self {
        KbDocumentFields {
            id: d.id.clone(),
            collection: d.collection.clone(),
            filename: d.doc.filename.clone(),
            kind: d.doc.kind,
            title: d.doc.title.clone(),
            bytes: d.doc.size_bytes,
            sha256: d.doc.sha256.clone(),
            pages: d.doc.pages,
            created_at: d.created,
        }
    }
}

/// A document in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct KbDocument {
    #[serde(flatten)]
    pub doc: KbDocumentFields,
    /// Number of chunks.
    pub chunks: u32,
}

impl From<&DocInfo> for KbDocument {
    fn from(d: &DocInfo) -> Self {
        KbDocument {
            doc: d.into(),
            chunks: d.chunks,
        }
    }
}

/// The answer to an upload (HTTP or `edgeseek kb ingest`).
#[derive(Debug, Serialize, ToSchema)]
pub struct KbUploaded {
    #[serde(flatten)]
    pub doc: KbDocument,
    /// An earlier document of the same filename was replaced.
    pub replaced: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KbChunk {
    pub chunk_id: String,
    pub ordinal: u32,
    pub text: String,
    pub page: Option<u32>,
    pub heading: Option<String>,
}

impl From<&ChunkInfo> for KbChunk {
    fn from(c: &ChunkInfo) -> Self {
        KbChunk {
            chunk_id: c.id.clone(),
            ordinal: c.ordinal,
            text: c.text.clone(),
            page: c.page,
            heading: c.heading.clone(),
        }
    }
}

/// A document with its chunks, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct KbDocumentChunks {
    #[serde(flatten)]
    pub doc: KbDocumentFields,
    pub chunks: Vec<KbChunk>,
}

/// The answer to deleting a collection.
#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionDeleted {
    pub name: String,
    /// Always true.
    pub deleted: bool,
}

/// The answer to deleting a document.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentDeleted {
    pub id: String,
    /// Always true.
    pub deleted: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    /// 1-64 letters, digits, -, _, .
    #[schema(required = true)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KbSearchRequest {
    /// 1 to 16 collections, each readable by the key.
    #[schema(required = true, min_items = 1, max_items = 16)]
    pub collections: Option<Vec<String>>,
    #[schema(required = true)]
    pub query: Option<String>,
    #[schema(minimum = 1, maximum = 20, default = 5)]
    pub top_k: Option<u64>,
    /// `hybrid` (default), `bm25` or `vector`.
    pub mode: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KbSearchResults {
    pub results: Vec<Hit>,
}

/// The admin socket's `kb.collections`.
#[derive(Debug, Serialize)]
pub struct CollectionList {
    pub data: Vec<KbCollection>,
}
