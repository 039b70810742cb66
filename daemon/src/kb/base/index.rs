//! The in-memory index of one collection (slots, vectors, BM25, ANN graph) and its
//! (re)building from the tables.

use std::collections::HashMap;

use redb::{ReadTransaction, ReadableTable};

use super::{corrupt, decode_json, kbstore, CollectionInfo, IndexConfig, KbError};
use crate::kb::bm25::{Bm25, TermFreqs};
use crate::kb::hnsw::Hnsw;
use crate::kb::store::{CollectionRecord, DocRecord, DOCUMENTS, DOC_NAMES, TERMS, VECTORS};
use crate::kb::topk::top_k;
use crate::kb::vector::{self, Matrix};
use crate::kb::Embed;

pub(super) struct DocEntry {
    pub(super) id: String,
    pub(super) filename: String,
    live: bool,
    first_slot: u32,
}

/// One collection's in-memory index.
pub(super) struct CollIndex {
    /// Set (under the write lock) when the collection is deleted.
    pub(super) deleted: bool,
    pub(super) record: CollectionRecord,
    pub(super) vectors_current: bool,
    pub(super) docs: Vec<DocEntry>,
    pub(super) doc_index: HashMap<String, u32>,
    pub(super) slot_doc: Vec<u32>,
    pub(super) alive: Vec<bool>,
    pub(super) live_docs: usize,
    pub(super) live_slots: usize,
    pub(super) dead_slots: usize,
    pub(super) vectors: Matrix,
    pub(super) bm25: Bm25,
    /// Covers slots `0..ann.len()`; later slots are scanned exactly.
    pub(super) ann: Option<Hnsw>,
}

impl CollIndex {
    pub(super) fn new(record: CollectionRecord, vectors_current: bool) -> CollIndex {
        let dim = record.dim;
        CollIndex {
            deleted: false,
            record,
            vectors_current,
            docs: Vec::new(),
            doc_index: HashMap::new(),
            slot_doc: Vec::new(),
            alive: Vec::new(),
            live_docs: 0,
            live_slots: 0,
            dead_slots: 0,
            vectors: Matrix::new(dim),
            bm25: Bm25::new(),
            ann: None,
        }
    }

    /// Append a document's chunks (vectors may be empty when they are not current).
    pub(super) fn add_doc(
        &mut self,
        id: &str,
        filename: &str,
        vectors: &[Vec<f32>],
        terms: &[TermFreqs],
    ) {
        let di = self.docs.len() as u32;
        let first = self.alive.len() as u32;
        self.docs.push(DocEntry {
            id: id.to_string(),
            filename: filename.to_string(),
            live: true,
            first_slot: first,
        });
        self.doc_index.insert(id.to_string(), di);
        for (i, t) in terms.iter().enumerate() {
            let slot = first + i as u32;
            self.bm25.add(slot, t);
            if let Some(v) = vectors.get(i) {
                self.vectors.push(v);
            }
            self.slot_doc.push(di);
            self.alive.push(true);
        }
        self.live_docs += 1;
        self.live_slots += terms.len();
    }

    /// Tombstone a document's chunks (`terms` as stored, in ordinal order).
    pub(super) fn remove_doc(&mut self, id: &str, terms: &[TermFreqs]) {
        let Some(di) = self.doc_index.remove(id) else {
            return;
        };
        let doc = &mut self.docs[di as usize];
        doc.live = false;
        let first = doc.first_slot;
        for (i, t) in terms.iter().enumerate() {
            let slot = first + i as u32;
            if self.alive.get(slot as usize).copied().unwrap_or(false) {
                self.alive[slot as usize] = false;
                self.bm25.remove(slot, t);
                self.live_slots -= 1;
                self.dead_slots += 1;
            }
        }
        self.live_docs = self.live_docs.saturating_sub(1);
    }

    pub(super) fn chunk_ref(&self, slot: u32) -> (&DocEntry, u32) {
        let doc = &self.docs[self.slot_doc[slot as usize] as usize];
        (doc, slot - doc.first_slot)
    }

    pub(super) fn needs_compaction(&self, cfg: &IndexConfig) -> bool {
        let slots = self.alive.len();
        self.dead_slots >= cfg.compact_min_dead
            && self.dead_slots as f32 >= cfg.compact_dead_fraction * slots as f32
    }

    pub(super) fn needs_ann(&self, cfg: &IndexConfig) -> bool {
        if !self.vectors_current {
            return false;
        }
        match &self.ann {
            Some(a) => a.len() < self.vectors.rows(),
            None => self.live_slots >= cfg.ann_threshold,
        }
    }

    /// The `depth` nearest live slots: the graph for the rows it covers, an exact scan for
    /// the rest.
    pub(super) fn dense(&self, q: &[f32], depth: usize, ef: usize, exact: bool) -> Vec<(u32, f32)> {
        if !self.vectors_current || self.vectors.rows() == 0 {
            return Vec::new();
        }
        match (&self.ann, exact) {
            (Some(ann), false) => {
                let mut v = ann.search(&self.vectors, q, depth, ef.max(depth), &self.alive);
                v.extend(vector::exact_top(
                    &self.vectors,
                    q,
                    ann.len(),
                    &self.alive,
                    depth,
                ));
                top_k(&mut v, depth);
                v
            }
            _ => vector::exact_top(&self.vectors, q, 0, &self.alive, depth),
        }
    }
}

/// The rows of one document read back for (re)building an index.
pub(super) struct LoadedDoc {
    pub(super) record: DocRecord,
    vectors: Vec<Vec<f32>>,
    terms: Vec<TermFreqs>,
}

/// Ids of a collection's documents in filename order (the `kb_doc_names` key order).
pub(super) fn doc_ids(
    names: &impl ReadableTable<(&'static str, &'static str), &'static str>,
    collection: &str,
) -> Result<Vec<String>, KbError> {
    let mut ids = Vec::new();
    for row in names.range::<(&str, &str)>((collection, "")..)? {
        let (k, v) = row?;
        if k.value().0 != collection {
            break;
        }
        ids.push(v.value().to_string());
    }
    Ok(ids)
}

/// Read a collection's documents from `tx` in filename order; vectors only when `dim` is
/// given (they are not read when they came from another model).
pub(super) fn load_docs(
    tx: &ReadTransaction,
    collection: &str,
    dim: Option<usize>,
) -> Result<Vec<LoadedDoc>, KbError> {
    let docs = tx.open_table(DOCUMENTS)?;
    let vectors = tx.open_table(VECTORS)?;
    let terms = tx.open_table(TERMS)?;
    let mut out = Vec::new();
    for id in doc_ids(&tx.open_table(DOC_NAMES)?, collection)? {
        let rec: DocRecord = match docs.get(id.as_str())? {
            Some(b) => decode_json(&id, b.value())?,
            None => return Err(corrupt(&id, "named in kb_doc_names but has no record")),
        };
        let n = rec.chunks as usize;
        let mut tv = Vec::with_capacity(n);
        let mut vv = Vec::with_capacity(if dim.is_some() { n } else { 0 });
        for ord in 0..rec.chunks {
            let cid = kbstore::chunk_id(&id, ord);
            let t = terms
                .get(cid.as_str())?
                .and_then(|b| kbstore::decode_terms(b.value()))
                .ok_or_else(|| corrupt(&cid, "keyword terms missing or malformed"))?;
            tv.push(t);
            if let Some(dim) = dim {
                let v = vectors
                    .get(cid.as_str())?
                    .and_then(|b| kbstore::decode_vector(b.value(), dim))
                    .ok_or_else(|| corrupt(&cid, format!("vector missing or not {dim} floats")))?;
                vv.push(v);
            }
        }
        out.push(LoadedDoc {
            record: rec,
            vectors: vv,
            terms: tv,
        });
    }
    Ok(out)
}

pub(super) fn build_index(
    tx: &ReadTransaction,
    name: &str,
    record: CollectionRecord,
    embed: &dyn Embed,
) -> Result<CollIndex, KbError> {
    let current = record.model_id == embed.model_id() && record.dim == embed.dim();
    let dim = current.then_some(record.dim);
    let mut idx = CollIndex::new(record, current);
    for d in load_docs(tx, name, dim)? {
        idx.add_doc(&d.record.id, &d.record.doc.filename, &d.vectors, &d.terms);
    }
    Ok(idx)
}

pub(super) fn info_of(name: &str, idx: &CollIndex) -> CollectionInfo {
    CollectionInfo {
        name: name.to_string(),
        created: idx.record.created,
        documents: idx.live_docs,
        chunks: idx.live_slots,
        model_id: idx.record.model_id.clone(),
        vectors_current: idx.vectors_current,
        ann_rows: idx.ann.as_ref().map_or(0, Hnsw::len),
    }
}
