//! Documents: ingest (replace by filename), list, read back, delete; chunks by id.

use redb::{ReadableTable, WriteTransaction};

use super::index::doc_ids;

use super::{
    decode_json, encode_json, kbstore, new_doc_id, not_found, unix_now, ChunkInfo, DocInfo,
    KbError, KnowledgeBase, NewDocument, MAX_CHUNKS_PER_DOCUMENT, MAX_FILENAME_BYTES,
};
use crate::kb::bm25::{self, TermFreqs};
use crate::kb::store::{ChunkRecord, DocRecord, CHUNKS, DOCUMENTS, DOC_NAMES, TERMS, VECTORS};
use crate::kb::Chunk;
use crate::util::{read, write};

impl KnowledgeBase {
    /// Store a document: embed its chunks, then in one write transaction store the
    /// document record, chunks, vectors and keyword terms, replacing any document of the
    /// same filename in the collection. Returns after the commit.
    pub fn ingest_chunks(
        &self,
        collection: &str,
        doc: NewDocument,
        chunks: Vec<Chunk>,
    ) -> Result<DocInfo, KbError> {
        let doc = validate_new_document(doc, &chunks)?;
        let coll = self.coll(collection)?;
        self.check_vectors_current(&coll)?;
        // The expensive part, outside every lock and transaction.
        let terms: Vec<TermFreqs> = chunks.iter().map(|c| bm25::term_freqs(&c.text)).collect();
        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        let vectors = self.embed_all(&texts)?;

        let _gate = self.gate(&coll)?;
        let tx = self.inner.store.begin_write()?;
        let crec = self.collection_record(&tx, collection)?;
        if crec.model_id != self.inner.embed.model_id() || crec.dim != self.inner.embed.dim() {
            return Err(self.stale_error(collection, &crec));
        }
        let old_id = tx
            .open_table(DOC_NAMES)?
            .get((collection, doc.filename.as_str()))?
            .map(|v| v.value().to_string());
        let removed = match &old_id {
            Some(id) => delete_doc_rows(&tx, id)?,
            None => None,
        };
        let id = loop {
            let id = new_doc_id()?;
            if tx.open_table(DOCUMENTS)?.get(id.as_str())?.is_none() {
                break id;
            }
        };
        let record = DocRecord {
            id: id.clone(),
            collection: collection.to_string(),
            doc,
            chunks: chunks.len() as u32,
            created: unix_now(),
        };
        {
            tx.open_table(DOCUMENTS)?
                .insert(id.as_str(), encode_json(&id, &record)?.as_slice())?;
            tx.open_table(DOC_NAMES)?
                .insert((collection, record.doc.filename.as_str()), id.as_str())?;
            let mut ct = tx.open_table(CHUNKS)?;
            let mut vt = tx.open_table(VECTORS)?;
            let mut tt = tx.open_table(TERMS)?;
            for ((c, v), t) in chunks.into_iter().zip(&vectors).zip(&terms) {
                let cid = kbstore::chunk_id(&id, c.ordinal);
                let rec = ChunkRecord {
                    document_id: id.clone(),
                    ordinal: c.ordinal,
                    page: c.page,
                    heading: c.heading,
                    text: c.text,
                };
                ct.insert(cid.as_str(), encode_json(&cid, &rec)?.as_slice())?;
                vt.insert(cid.as_str(), kbstore::encode_vector(v).as_slice())?;
                tt.insert(cid.as_str(), kbstore::encode_terms(t).as_slice())?;
            }
        }
        {
            let mut idx = write(&coll.idx);
            tx.commit()?;
            if let Some((old, old_terms)) = &removed {
                idx.remove_doc(&old.id, old_terms);
            }
            idx.add_doc(&id, &record.doc.filename, &vectors, &terms);
        }
        drop(_gate);
        self.inner.schedule_if_needed(collection);
        Ok(record)
    }

    /// Documents of a collection, by filename.
    pub fn list_documents(&self, collection: &str) -> Result<Vec<DocInfo>, KbError> {
        let coll = self.coll(collection)?;
        // Under the read lock the list matches what searches see.
        let _idx = read(&coll.idx);
        let tx = self.inner.store.begin_read()?;
        let docs = tx.open_table(DOCUMENTS)?;
        let mut out = Vec::new();
        for id in doc_ids(&tx.open_table(DOC_NAMES)?, collection)? {
            if let Some(b) = docs.get(id.as_str())? {
                out.push(decode_json::<DocRecord>(&id, b.value())?);
            }
        }
        Ok(out)
    }

    pub fn document(&self, collection: &str, id: &str) -> Result<DocInfo, KbError> {
        let tx = self.inner.store.begin_read()?;
        self.doc_record(&tx, collection, id)
    }

    /// The record of document `id` if it exists in `collection` (404 otherwise, also for a
    /// malformed id or a document of another collection).
    fn doc_record(
        &self,
        tx: &redb::ReadTransaction,
        collection: &str,
        id: &str,
    ) -> Result<DocRecord, KbError> {
        self.coll(collection)?;
        let missing = || not_found(format!("document `{id}` in collection `{collection}`"));
        if !kbstore::valid_doc_id(id) {
            return Err(missing());
        }
        let rec: DocRecord = match tx.open_table(DOCUMENTS)?.get(id)? {
            Some(b) => decode_json(id, b.value())?,
            None => return Err(missing()),
        };
        if rec.collection != collection {
            return Err(missing());
        }
        Ok(rec)
    }

    pub fn delete_document(&self, collection: &str, id: &str) -> Result<(), KbError> {
        let coll = self.coll(collection)?;
        let missing = || not_found(format!("document `{id}` in collection `{collection}`"));
        if !kbstore::valid_doc_id(id) {
            return Err(missing());
        }
        let _gate = self.gate(&coll)?;
        let tx = self.inner.store.begin_write()?;
        let belongs = match tx.open_table(DOCUMENTS)?.get(id)? {
            Some(b) => decode_json::<DocRecord>(id, b.value())?.collection == collection,
            None => false,
        };
        if !belongs {
            return Err(missing());
        }
        let removed = delete_doc_rows(&tx, id)?;
        {
            let mut idx = write(&coll.idx);
            tx.commit()?;
            if let Some((rec, terms)) = &removed {
                idx.remove_doc(&rec.id, terms);
            }
        }
        drop(_gate);
        self.inner.schedule_if_needed(collection);
        Ok(())
    }

    /// A document and all its chunks in order, read in one transaction (so they agree).
    pub fn document_chunks(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<(DocInfo, Vec<ChunkInfo>), KbError> {
        let tx = self.inner.store.begin_read()?;
        let rec = self.doc_record(&tx, collection, id)?;
        let (lo, hi) = kbstore::doc_chunk_range(id);
        let mut chunks = Vec::new();
        for row in tx.open_table(CHUNKS)?.range(lo.as_str()..hi.as_str())? {
            let (k, v) = row?;
            let c: ChunkRecord = decode_json(k.value(), v.value())?;
            chunks.push(ChunkInfo {
                id: k.value().to_string(),
                document_id: rec.id.clone(),
                collection: rec.collection.clone(),
                filename: rec.doc.filename.clone(),
                ordinal: c.ordinal,
                page: c.page,
                heading: (!c.heading.is_empty()).then(|| c.heading.join(" > ")),
                text: c.text,
            });
        }
        chunks.sort_by_key(|c| c.ordinal);
        Ok((rec, chunks))
    }

    /// A chunk by id, for citations.
    pub fn chunk(&self, chunk_id: &str) -> Result<ChunkInfo, KbError> {
        let missing = || not_found(format!("chunk `{chunk_id}`"));
        let (doc_id, _) = kbstore::split_chunk_id(chunk_id).ok_or_else(missing)?;
        let tx = self.inner.store.begin_read()?;
        let rec: ChunkRecord = match tx.open_table(CHUNKS)?.get(chunk_id)? {
            Some(b) => decode_json(chunk_id, b.value())?,
            None => return Err(missing()),
        };
        let doc: DocRecord = match tx.open_table(DOCUMENTS)?.get(doc_id)? {
            Some(b) => decode_json(doc_id, b.value())?,
            None => return Err(missing()),
        };
        Ok(ChunkInfo {
            id: chunk_id.to_string(),
            document_id: doc.id,
            collection: doc.collection,
            filename: doc.doc.filename,
            ordinal: rec.ordinal,
            page: rec.page,
            heading: (!rec.heading.is_empty()).then(|| rec.heading.join(" > ")),
            text: rec.text,
        })
    }
}

/// Remove every row of document `id`. Returns its record and stored terms (for the
/// in-memory BM25), or None if there is no such document.
pub(super) fn delete_doc_rows(
    tx: &WriteTransaction,
    id: &str,
) -> Result<Option<(DocRecord, Vec<TermFreqs>)>, KbError> {
    let mut docs = tx.open_table(DOCUMENTS)?;
    let rec: DocRecord = match docs.remove(id)? {
        Some(b) => decode_json(id, b.value())?,
        None => return Ok(None),
    };
    let mut names = tx.open_table(DOC_NAMES)?;
    let points_here = names
        .get((rec.collection.as_str(), rec.doc.filename.as_str()))?
        .is_some_and(|v| v.value() == id);
    if points_here {
        names.remove((rec.collection.as_str(), rec.doc.filename.as_str()))?;
    }
    let mut chunks = tx.open_table(CHUNKS)?;
    let mut vectors = tx.open_table(VECTORS)?;
    let mut terms = tx.open_table(TERMS)?;
    let mut old_terms = Vec::with_capacity(rec.chunks as usize);
    for ord in 0..rec.chunks {
        let cid = kbstore::chunk_id(id, ord);
        chunks.remove(cid.as_str())?;
        vectors.remove(cid.as_str())?;
        let t = terms
            .remove(cid.as_str())?
            .and_then(|b| kbstore::decode_terms(b.value()))
            .unwrap_or_default();
        old_terms.push(t);
    }
    Ok(Some((rec, old_terms)))
}

fn validate_new_document(mut doc: NewDocument, chunks: &[Chunk]) -> Result<NewDocument, KbError> {
    let bad = |m: String| Err(KbError::Invalid(m));
    if doc.filename.trim().is_empty() {
        return bad("filename is empty".into());
    }
    if doc.filename.len() > MAX_FILENAME_BYTES || doc.filename.chars().any(char::is_control) {
        return bad(format!(
            "filename must be at most {MAX_FILENAME_BYTES} bytes without control characters"
        ));
    }
    doc.sha256 = doc.sha256.to_ascii_lowercase();
    if doc.sha256.len() != 64 || !doc.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad("sha256 must be 64 hex digits".into());
    }
    if chunks.is_empty() {
        return bad(format!("`{}` has no text to index", doc.filename));
    }
    if chunks.len() > MAX_CHUNKS_PER_DOCUMENT {
        return bad(format!(
            "`{}` has {} chunks; the limit is {MAX_CHUNKS_PER_DOCUMENT}",
            doc.filename,
            chunks.len()
        ));
    }
    for (i, c) in chunks.iter().enumerate() {
        if c.ordinal as usize != i {
            return bad(format!(
                "chunk ordinals must be 0, 1, 2, … in order (chunk {i} has {})",
                c.ordinal
            ));
        }
        if c.text.trim().is_empty() {
            return bad(format!("chunk {i} has no text"));
        }
    }
    Ok(doc)
}
