//! The knowledge base's redb tables, record formats and schema migration.
//!
//! | table | key | value |
//! |---|---|---|
//! | `kb_meta` | name | text: `analyzer` = [`ANALYZER_VERSION`](super::text::ANALYZER_VERSION) the postings were made with |
//! | `kb_collections` | collection name | JSON [`CollectionRecord`] (created, embedding model id, dim) |
//! | `kb_documents` | document id | JSON [`DocRecord`] |
//! | `kb_doc_names` | (collection, filename) | document id (a filename is unique in its collection) |
//! | `kb_chunks` | chunk id | JSON [`ChunkRecord`] (text, ordinal, page, heading) |
//! | `kb_vectors` | chunk id | the chunk's unit vector, `dim` × f32 little-endian |
//! | `kb_terms` | chunk id | the chunk's keyword terms with counts ([`encode_terms`]) |
//!
//! Ids: a document is `d_` + 16 hex digits (random, new for every ingest, so a replaced
//! document's old chunk ids stop resolving instead of pointing at different text); a chunk is
//! `<document id>_<ordinal>`. Both are URL-safe. The chunks, vectors and terms of a document
//! are the key range `<document id>_` … `<document id>` + `` ` `` (the byte after `_`).
//!
//! Everything of a document is written in one write transaction; the in-memory indexes are
//! rebuilt from these tables at open, so there is nothing outside redb that could disagree.

use redb::{TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::DocKind;
use crate::store::{Migration, StoreError, KEYS_V1};

pub const KB_META: TableDefinition<&str, &str> = TableDefinition::new("kb_meta");
pub const COLLECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("kb_collections");
pub const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("kb_documents");
pub const DOC_NAMES: TableDefinition<(&str, &str), &str> = TableDefinition::new("kb_doc_names");
pub const CHUNKS: TableDefinition<&str, &[u8]> = TableDefinition::new("kb_chunks");
pub const VECTORS: TableDefinition<&str, &[u8]> = TableDefinition::new("kb_vectors");
pub const TERMS: TableDefinition<&str, &[u8]> = TableDefinition::new("kb_terms");

pub const META_ANALYZER: &str = "analyzer";

/// The schema steps up to the knowledge base's: the store's own (API keys), then this module's.
/// The daemon opens its file with the whole list, [`crate::schema::MIGRATIONS`]; the knowledge
/// base's own tests and benchmarks need only this prefix.
pub const MIGRATIONS: &[Migration] = &[KEYS_V1, KB_V2];

/// Schema step 2: the knowledge-base tables.
pub const KB_V2: Migration = Migration::new(2, "knowledge base", migrate_v2);

fn migrate_v2(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(COLLECTIONS)?;
    tx.open_table(DOCUMENTS)?;
    tx.open_table(DOC_NAMES)?;
    tx.open_table(CHUNKS)?;
    tx.open_table(VECTORS)?;
    tx.open_table(TERMS)?;
    let mut meta = tx.open_table(KB_META)?;
    meta.insert(META_ANALYZER, super::text::ANALYZER_VERSION)?;
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionRecord {
    /// Unix seconds.
    pub created: u64,
    /// [`Embed::model_id`](super::Embed::model_id) of the model that made the stored vectors.
    pub model_id: String,
    pub dim: usize,
}

/// What describes a document: given at ingest, kept unchanged in its [`DocRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocMeta {
    /// Unique within the collection: ingesting the same name again replaces the document.
    pub filename: String,
    pub kind: DocKind,
    pub title: Option<String>,
    /// Hex SHA-256 of the source bytes.
    pub sha256: String,
    pub size_bytes: u64,
    pub pages: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocRecord {
    pub id: String,
    pub collection: String,
    /// Flattened: the stored JSON keeps one flat object, as before the split.
    #[serde(flatten)]
    pub doc: DocMeta,
    pub chunks: u32,
    /// Unix seconds.
    pub created: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub document_id: String,
    pub ordinal: u32,
    pub page: Option<u32>,
    #[serde(default)]
    pub heading: Vec<String>,
    pub text: String,
}

pub fn chunk_id(doc_id: &str, ordinal: u32) -> String {
    format!("{doc_id}_{ordinal}")
}

/// The document id and ordinal of a chunk id, if it has the right shape.
pub fn split_chunk_id(chunk_id: &str) -> Option<(&str, u32)> {
    let (doc, ord) = chunk_id.rsplit_once('_')?;
    if !valid_doc_id(doc)
        || ord.is_empty()
        || ord.len() > 10
        || (ord.len() > 1 && ord.starts_with('0'))
    {
        return None;
    }
    Some((doc, ord.parse().ok()?))
}

pub fn valid_doc_id(id: &str) -> bool {
    id.len() == 18
        && id.starts_with("d_")
        && id[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The key range holding every chunk row of a document.
pub fn doc_chunk_range(doc_id: &str) -> (String, String) {
    (format!("{doc_id}_"), format!("{doc_id}`"))
}

pub fn encode_vector(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

pub fn decode_vector(b: &[u8], dim: usize) -> Option<Vec<f32>> {
    if b.len() != dim * 4 {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Terms with counts: a sequence of (u16 LE byte length, UTF-8 term, u32 LE count).
pub fn encode_terms(terms: &[(String, u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(terms.iter().map(|t| t.0.len() + 6).sum());
    for (t, n) in terms {
        // Terms come from the analyzer, which never makes one near 64 KiB; cut defensively
        // at a character boundary rather than write a length that does not fit.
        let mut end = t.len().min(u16::MAX as usize);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        out.extend_from_slice(&(end as u16).to_le_bytes());
        out.extend_from_slice(&t.as_bytes()[..end]);
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

pub fn decode_terms(mut b: &[u8]) -> Option<Vec<(String, u32)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = usize::from(u16::from_le_bytes([*b.first()?, *b.get(1)?]));
        let term = std::str::from_utf8(b.get(2..2 + len)?).ok()?.to_string();
        let n = b.get(2 + len..6 + len)?;
        out.push((term, u32::from_le_bytes([n[0], n[1], n[2], n[3]])));
        b = &b[6 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_shapes() {
        let d = "d_0123456789abcdef";
        assert!(valid_doc_id(d));
        let c = chunk_id(d, 12);
        assert_eq!(split_chunk_id(&c), Some((d, 12)));
        for bad in [
            "d_0123456789abcdef",
            "d_0123456789abcdef_",
            "d_0123456789abcdef_01",
            "d_0123456789ABCDEF_1",
            "x_0123456789abcdef_1",
            "d_0123_1",
            "d_0123456789abcdef_1x",
            "../etc/passwd",
        ] {
            assert_eq!(split_chunk_id(bad), None, "{bad}");
        }
        let (lo, hi) = doc_chunk_range(d);
        assert!(lo.as_str() <= c.as_str() && c.as_str() < hi.as_str());
        assert!(chunk_id("d_0123456789abcdf0", 0).as_str() >= hi.as_str());
    }

    #[test]
    fn a_document_record_is_stored_as_one_flat_object() {
        // Records written before `DocMeta` was split out must still read back.
        let stored = r#"{"id":"d_0123456789abcdef","collection":"hr","filename":"a.md","kind":"markdown","title":null,"sha256":"ab","size_bytes":7,"pages":2,"chunks":3,"created":9}"#;
        let rec: DocRecord = serde_json::from_str(stored).unwrap();
        assert_eq!(rec.doc.filename, "a.md");
        assert_eq!(rec.doc.kind, DocKind::Markdown);
        assert_eq!(
            (rec.doc.size_bytes, rec.doc.pages, rec.chunks),
            (7, Some(2), 3)
        );
        assert_eq!(serde_json::to_string(&rec).unwrap(), stored);
    }

    #[test]
    fn vectors_and_terms_round_trip() {
        let v = [0.5f32, -1.25, 3.0e-7];
        assert_eq!(decode_vector(&encode_vector(&v), 3).unwrap(), v);
        assert_eq!(decode_vector(&encode_vector(&v), 4), None);
        let t = vec![("年假".to_string(), 2), ("asn.1".to_string(), 1)];
        assert_eq!(decode_terms(&encode_terms(&t)).unwrap(), t);
        assert_eq!(decode_terms(&[3, 0, b'a']), None);
    }
}
