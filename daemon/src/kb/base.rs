//! [`KnowledgeBase`]: collections, documents, chunks and hybrid search over the daemon's
//! redb file, with in-memory indexes rebuilt from it at open.
//!
//! ## Consistency
//! redb is the only durable state. Each collection keeps in memory: the live chunks by *slot*
//! (insertion order), their vectors (one contiguous matrix), a BM25 index and, past
//! [`IndexConfig::ann_threshold`] chunks, an HNSW graph. A write (ingest, replace, delete)
//! prepares everything it can (analysis, embedding) without locks, then builds one redb write
//! transaction, and commits it while holding the collection's index write lock, applying the
//! same change to memory before releasing it. A search holds the read locks of its
//! collections while it ranks and reads chunk texts, so it sees a document's old version or
//! its new one, never neither or both. Writers of one collection are serialised by its
//! `gate`, which they take before the redb transaction.
//!
//! ## Background maintenance
//! One worker thread keeps the ANN graphs up to date and compacts collections with many
//! deleted chunks. Chunks not yet in the graph (the "tail") are scanned exactly by every
//! search, so results never depend on how far the worker has got; at open a large
//! collection is searched exactly until its graph is built. The worker extends a graph in
//! steps of [`IndexConfig::ann_step`] rows on a copy, holding the collection's gate (so writes
//! wait a step, searches do not) and swaps the copy in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::bm25::{self, Bm25, TermFreqs};
use super::fuse::{self, Signals};
use super::hnsw::{Hnsw, HnswParams};
use super::store::{
    self as kbstore, ChunkRecord, CollectionRecord, DocRecord, CHUNKS, COLLECTIONS, DOCUMENTS,
    DOC_NAMES, KB_META, TERMS, VECTORS,
};
use super::text::ANALYZER_VERSION;
use super::vector::{self, Matrix};
use super::{Chunk, DocKind, Embed, Script};
use crate::store::{Store, StoreError};

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 8192;
/// Most chunks one document may have.
pub const MAX_CHUNKS_PER_DOCUMENT: usize = 100_000;
const MAX_FILENAME_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum KbError {
    /// A collection, document or chunk that does not exist (HTTP 404).
    #[error("{what} not found")]
    NotFound { what: String },
    /// Bad input (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (HTTP 409): a duplicate collection, or
    /// vectors made by another embedding model.
    #[error("{0}")]
    Conflict(String),
    /// The embedding model failed (HTTP 500); nothing was stored.
    #[error("embedding failed: {0}")]
    Embed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record does not decode (HTTP 500).
    #[error("knowledge base record {key} is unreadable: {msg}")]
    Corrupt { key: String, msg: String },
}

crate::store::redb_errors_into!(KbError, KbError::Store);

fn not_found(what: impl std::fmt::Display) -> KbError {
    KbError::NotFound {
        what: what.to_string(),
    }
}

fn corrupt(key: &str, msg: impl std::fmt::Display) -> KbError {
    KbError::Corrupt {
        key: key.to_string(),
        msg: msg.to_string(),
    }
}

/// Index and search settings (config section `[kb]`; every key optional).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    /// A collection with at least this many live chunks gets an HNSW graph; smaller ones are
    /// scanned exactly (20k × 384 floats scan in a few milliseconds).
    pub ann_threshold: usize,
    /// HNSW links per node (layer 0 keeps twice as many).
    pub ann_m: usize,
    /// HNSW candidates examined per insert.
    pub ann_ef_construction: usize,
    /// HNSW candidates examined per search (at least the candidate depth).
    pub ann_ef_search: usize,
    /// Rows the worker adds to a graph per step before letting writers in.
    pub ann_step: usize,
    /// How deep each ranker's list goes before fusion.
    pub candidates: usize,
    /// Reciprocal rank fusion constant.
    pub rrf_k: f32,
    /// Largest `top_k` a search may ask for.
    pub max_top_k: usize,
    /// Texts per call to the embedder.
    pub embed_batch: usize,
    /// Rebuild a collection's index when this share of its slots is deleted…
    pub compact_dead_fraction: f32,
    /// …and at least this many.
    pub compact_min_dead: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            ann_threshold: 20_000,
            ann_m: 16,
            ann_ef_construction: 100,
            ann_ef_search: 128,
            ann_step: 4096,
            candidates: 100,
            rrf_k: 60.0,
            max_top_k: 100,
            embed_batch: 32,
            compact_dead_fraction: 0.25,
            compact_min_dead: 1000,
        }
    }
}

impl IndexConfig {
    pub fn validate(&self) -> Result<(), KbError> {
        let bad = |m: &str| Err(KbError::Invalid(format!("kb config: {m}")));
        if !(2..=127).contains(&self.ann_m) {
            return bad("ann_m must be 2..=127");
        }
        if self.ann_ef_construction == 0 || self.ann_ef_search == 0 || self.ann_step == 0 {
            return bad("ann_ef_construction, ann_ef_search and ann_step must be positive");
        }
        if self.candidates == 0 || self.max_top_k == 0 || self.embed_batch == 0 {
            return bad("candidates, max_top_k and embed_batch must be positive");
        }
        if !(self.rrf_k.is_finite() && self.rrf_k > 0.0) {
            return bad("rrf_k must be a positive number");
        }
        if !(self.compact_dead_fraction > 0.0 && self.compact_dead_fraction <= 1.0) {
            return bad("compact_dead_fraction must be in (0, 1]");
        }
        Ok(())
    }
}

/// A collection as listed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    pub documents: usize,
    pub chunks: usize,
    /// The embedding model its vectors were made with.
    pub model_id: String,
    /// False when the current embedder is another model: dense search is off for this
    /// collection and ingest refuses until [`KnowledgeBase::reembed`] runs.
    pub vectors_current: bool,
    /// Chunks covered by the ANN graph (0: exact search).
    pub ann_rows: usize,
}

/// A stored document: the stored record itself.
pub use super::store::DocRecord as DocInfo;

/// What describes a document being ingested (its chunks come separately).
#[derive(Clone, Debug, PartialEq)]
pub struct NewDocument {
    /// Unique within the collection: ingesting the same name again replaces the document.
    pub filename: String,
    pub kind: DocKind,
    pub title: Option<String>,
    /// Hex SHA-256 of the source bytes.
    pub sha256: String,
    pub size_bytes: u64,
    pub pages: Option<u32>,
}

/// One chunk, for citations.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChunkInfo {
    pub id: String,
    pub document_id: String,
    pub collection: String,
    pub filename: String,
    pub ordinal: u32,
    pub page: Option<u32>,
    /// Heading path, "Leave > Annual leave".
    pub heading: Option<String>,
    pub text: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// BM25 and dense, fused (see [`super::fuse`]).
    #[default]
    Hybrid,
    /// Keyword ranking only.
    Bm25,
    /// Dense (embedding) ranking only.
    Vector,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SearchRequest {
    /// Collections to search; the caller has checked the key may read each.
    pub collections: Vec<String>,
    pub query: String,
    pub top_k: usize,
    pub mode: SearchMode,
}

/// Knobs for evaluation and benchmarks; [`KnowledgeBase::search`] uses the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SearchTuning {
    /// Scan all vectors instead of using the ANN graph.
    pub exact: bool,
    /// Override [`IndexConfig::ann_ef_search`].
    pub ef_search: Option<usize>,
    /// Override [`IndexConfig::candidates`] (each ranker's depth; at least `top_k`).
    pub candidates: Option<usize>,
}

/// A search result; also the `citations` of a knowledge-grounded chat answer. Serialized as
/// the API returns it (the internal ordinal and per-ranker scores are left out).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = KbHit)]
pub struct Hit {
    pub collection: String,
    pub document_id: String,
    pub filename: String,
    pub chunk_id: String,
    #[serde(skip)]
    pub ordinal: u32,
    pub text: String,
    /// Hybrid: the fused RRF score; BM25: the BM25 score; vector: the cosine.
    pub score: f32,
    pub page: Option<u32>,
    pub heading: Option<String>,
    /// 1-based rank and score in the keyword ranking, if it found the chunk.
    pub bm25_rank: Option<usize>,
    #[serde(skip)]
    pub bm25_score: Option<f32>,
    /// 1-based rank and cosine in the dense ranking, if it found the chunk.
    pub dense_rank: Option<usize>,
    #[serde(skip)]
    pub dense_score: Option<f32>,
}

struct DocEntry {
    id: String,
    filename: String,
    live: bool,
    first_slot: u32,
}

/// One collection's in-memory index.
struct CollIndex {
    /// Set (under the write lock) when the collection is deleted.
    deleted: bool,
    record: CollectionRecord,
    vectors_current: bool,
    docs: Vec<DocEntry>,
    doc_index: HashMap<String, u32>,
    slot_doc: Vec<u32>,
    alive: Vec<bool>,
    live_docs: usize,
    live_slots: usize,
    dead_slots: usize,
    vectors: Matrix,
    bm25: Bm25,
    /// Covers slots `0..ann.len()`; later slots are scanned exactly.
    ann: Option<Hnsw>,
}

impl CollIndex {
    fn new(record: CollectionRecord, vectors_current: bool) -> CollIndex {
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
    fn add_doc(&mut self, id: &str, filename: &str, vectors: &[Vec<f32>], terms: &[TermFreqs]) {
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
    fn remove_doc(&mut self, id: &str, terms: &[TermFreqs]) {
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

    fn chunk_ref(&self, slot: u32) -> (&DocEntry, u32) {
        let doc = &self.docs[self.slot_doc[slot as usize] as usize];
        (doc, slot - doc.first_slot)
    }

    fn needs_compaction(&self, cfg: &IndexConfig) -> bool {
        let slots = self.alive.len();
        self.dead_slots >= cfg.compact_min_dead
            && self.dead_slots as f32 >= cfg.compact_dead_fraction * slots as f32
    }

    fn needs_ann(&self, cfg: &IndexConfig) -> bool {
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
    fn dense(&self, q: &[f32], depth: usize, ef: usize, exact: bool) -> Vec<(u32, f32)> {
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
                bm25::top_k(&mut v, depth);
                v
            }
            _ => vector::exact_top(&self.vectors, q, 0, &self.alive, depth),
        }
    }
}

struct Coll {
    name: String,
    /// Serialises writers (and the maintenance worker) of this collection.
    gate: Mutex<()>,
    idx: RwLock<CollIndex>,
}

#[derive(Default)]
struct Jobs {
    queue: VecDeque<String>,
    busy: bool,
}

struct Inner {
    store: Store,
    embed: Arc<dyn Embed>,
    cfg: IndexConfig,
    colls: RwLock<BTreeMap<String, Arc<Coll>>>,
    jobs: Mutex<Jobs>,
    jobs_cv: Condvar,
    shutdown: AtomicBool,
}

/// The knowledge base. `Send + Sync`: share it through an `Arc`. Dropping it stops the
/// maintenance worker (an unfinished graph is simply rebuilt at the next open).
pub struct KnowledgeBase {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("store", &self.inner.store)
            .finish()
    }
}

impl Drop for KnowledgeBase {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::SeqCst);
        self.inner.jobs_cv.notify_all();
        if let Some(t) = lock(&self.worker).take() {
            let _ = t.join();
        }
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Every update of an index completes under its lock without panicking paths in between
    // that leave it half-done; a poisoned lock is still consistent enough to use.
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_doc_id() -> Result<String, KbError> {
    use rand::TryRngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| KbError::Store(StoreError::Db(format!("no randomness for an id: {e}"))))?;
    let mut s = String::from("d_");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    Ok(s)
}

fn decode_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, KbError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

fn encode_json<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, KbError> {
    serde_json::to_vec(v).map_err(|e| corrupt(key, e))
}

fn check_collection_name(name: &str) -> Result<(), KbError> {
    if crate::keys::valid_collection(name) {
        Ok(())
    } else {
        Err(KbError::Invalid(format!(
            "invalid collection name `{name}`: use 1-64 letters, digits, `-`, `_`, `.`"
        )))
    }
}

/// The rows of one document read back for (re)building an index.
struct LoadedDoc {
    record: DocRecord,
    vectors: Vec<Vec<f32>>,
    terms: Vec<TermFreqs>,
}

/// Read a collection's documents from `tx` in filename order; vectors only when `dim` is
/// given (they are not read when they came from another model).
fn load_docs(
    tx: &ReadTransaction,
    collection: &str,
    dim: Option<usize>,
) -> Result<Vec<LoadedDoc>, KbError> {
    let names = tx.open_table(DOC_NAMES)?;
    let docs = tx.open_table(DOCUMENTS)?;
    let vectors = tx.open_table(VECTORS)?;
    let terms = tx.open_table(TERMS)?;
    let mut out = Vec::new();
    for row in names.range::<(&str, &str)>((collection, "")..)? {
        let (k, v) = row?;
        if k.value().0 != collection {
            break;
        }
        let id = v.value().to_string();
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

fn build_index(
    tx: &ReadTransaction,
    name: &str,
    record: CollectionRecord,
    embed: &dyn Embed,
) -> Result<CollIndex, KbError> {
    let current = record.model_id == embed.model_id() && record.dim == embed.dim();
    let dim = current.then_some(record.dim);
    let mut idx = CollIndex::new(record, current);
    for d in load_docs(tx, name, dim)? {
        idx.add_doc(&d.record.id, &d.record.filename, &d.vectors, &d.terms);
    }
    Ok(idx)
}

/// Remove every row of document `id`. Returns its record and stored terms (for the
/// in-memory BM25), or None if there is no such document.
fn delete_doc_rows(
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
        .get((rec.collection.as_str(), rec.filename.as_str()))?
        .is_some_and(|v| v.value() == id);
    if points_here {
        names.remove((rec.collection.as_str(), rec.filename.as_str()))?;
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

impl KnowledgeBase {
    /// Load every collection of `store` into memory and start the maintenance worker.
    /// Collections whose vectors came from another model than `embed` stay searchable by
    /// keyword (see [`CollectionInfo::vectors_current`]).
    pub fn open(
        store: Store,
        embed: Arc<dyn Embed>,
        cfg: IndexConfig,
    ) -> Result<KnowledgeBase, KbError> {
        cfg.validate()?;
        rederive_terms_if_stale(&store)?;
        let mut colls = BTreeMap::new();
        let mut stale = Vec::new();
        {
            let tx = store.db().begin_read()?;
            let table = tx.open_table(COLLECTIONS)?;
            for row in table.iter()? {
                let (k, v) = row?;
                let name = k.value().to_string();
                let rec: CollectionRecord = decode_json(&name, v.value())?;
                let idx = build_index(&tx, &name, rec, embed.as_ref())?;
                if !idx.vectors_current {
                    stale.push((name.clone(), idx.record.model_id.clone(), idx.record.dim));
                }
                colls.insert(
                    name.clone(),
                    Arc::new(Coll {
                        name,
                        gate: Mutex::new(()),
                        idx: RwLock::new(idx),
                    }),
                );
            }
        }
        for (name, model, dim) in &stale {
            tracing::warn!(
                collection = %name,
                stored_model = %model,
                stored_dim = dim,
                current_model = %embed.model_id(),
                current_dim = embed.dim(),
                "knowledge base collection was embedded with another model: keyword search \
                 only until it is re-embedded"
            );
        }
        let inner = Arc::new(Inner {
            store,
            embed,
            cfg,
            colls: RwLock::new(colls),
            jobs: Mutex::new(Jobs::default()),
            jobs_cv: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let worker_inner = Arc::clone(&inner);
        let worker = std::thread::Builder::new()
            .name("edgeseek-kb".into())
            .spawn(move || worker_inner.work())
            .map_err(|e| KbError::Store(StoreError::Db(format!("starting kb worker: {e}"))))?;
        let kb = KnowledgeBase {
            inner,
            worker: Mutex::new(Some(worker)),
        };
        let names: Vec<String> = read(&kb.inner.colls).keys().cloned().collect();
        for n in names {
            kb.inner.schedule_if_needed(&n);
        }
        Ok(kb)
    }

    pub fn config(&self) -> &IndexConfig {
        &self.inner.cfg
    }

    /// The embedding model in use.
    pub fn embedder(&self) -> &Arc<dyn Embed> {
        &self.inner.embed
    }

    /// Take a collection's writer gate. A collection deleted meanwhile (perhaps re-created
    /// under the same name, as a new `Coll`) is not found: writing through the old handle
    /// would put rows in the file that the new index never sees.
    fn gate<'a>(&self, coll: &'a Coll) -> Result<MutexGuard<'a, ()>, KbError> {
        let g = lock(&coll.gate);
        if read(&coll.idx).deleted {
            return Err(not_found(format!("collection `{}`", coll.name)));
        }
        Ok(g)
    }

    fn coll(&self, name: &str) -> Result<Arc<Coll>, KbError> {
        read(&self.inner.colls)
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(format!("collection `{name}`")))
    }

    pub fn create_collection(&self, name: &str) -> Result<CollectionInfo, KbError> {
        check_collection_name(name)?;
        let mut colls = write(&self.inner.colls);
        let tx = self.inner.store.db().begin_write()?;
        let record = CollectionRecord {
            created: now_secs(),
            model_id: self.inner.embed.model_id(),
            dim: self.inner.embed.dim(),
        };
        {
            let mut t = tx.open_table(COLLECTIONS)?;
            if t.get(name)?.is_some() {
                return Err(KbError::Conflict(format!(
                    "collection `{name}` already exists"
                )));
            }
            t.insert(name, encode_json(name, &record)?.as_slice())?;
        }
        tx.commit()?;
        let idx = CollIndex::new(record, true);
        let info = info_of(name, &idx);
        colls.insert(
            name.to_string(),
            Arc::new(Coll {
                name: name.to_string(),
                gate: Mutex::new(()),
                idx: RwLock::new(idx),
            }),
        );
        Ok(info)
    }

    /// Every collection, by name.
    pub fn list_collections(&self) -> Vec<CollectionInfo> {
        let colls: Vec<Arc<Coll>> = read(&self.inner.colls).values().cloned().collect();
        colls
            .iter()
            .map(|c| info_of(&c.name, &read(&c.idx)))
            .collect()
    }

    pub fn collection(&self, name: &str) -> Result<CollectionInfo, KbError> {
        let c = self.coll(name)?;
        let idx = read(&c.idx);
        Ok(info_of(name, &idx))
    }

    /// Delete a collection and everything in it, in one transaction.
    pub fn delete_collection(&self, name: &str) -> Result<(), KbError> {
        let coll = self.coll(name)?;
        let _gate = self.gate(&coll)?;
        let tx = self.inner.store.db().begin_write()?;
        {
            let mut t = tx.open_table(COLLECTIONS)?;
            if t.remove(name)?.is_none() {
                return Err(not_found(format!("collection `{name}`")));
            }
        }
        let ids: Vec<String> = {
            let names = tx.open_table(DOC_NAMES)?;
            let mut ids = Vec::new();
            for row in names.range::<(&str, &str)>((name, "")..)? {
                let (k, v) = row?;
                if k.value().0 != name {
                    break;
                }
                ids.push(v.value().to_string());
            }
            ids
        };
        for id in &ids {
            delete_doc_rows(&tx, id)?;
        }
        {
            let mut idx = write(&coll.idx);
            tx.commit()?;
            idx.deleted = true;
            // Free the memory now; searches holding the Arc see `deleted`.
            *idx = CollIndex {
                deleted: true,
                ..CollIndex::new(idx.record.clone(), false)
            };
        }
        let mut colls = write(&self.inner.colls);
        // Only this collection: the name may already belong to a new one.
        if colls.get(name).is_some_and(|c| Arc::ptr_eq(c, &coll)) {
            colls.remove(name);
        }
        Ok(())
    }

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
        let tx = self.inner.store.db().begin_write()?;
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
            filename: doc.filename,
            kind: doc.kind,
            title: doc.title,
            sha256: doc.sha256,
            size_bytes: doc.size_bytes,
            pages: doc.pages,
            chunks: chunks.len() as u32,
            created: now_secs(),
        };
        {
            tx.open_table(DOCUMENTS)?
                .insert(id.as_str(), encode_json(&id, &record)?.as_slice())?;
            tx.open_table(DOC_NAMES)?
                .insert((collection, record.filename.as_str()), id.as_str())?;
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
            idx.add_doc(&id, &record.filename, &vectors, &terms);
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
        let tx = self.inner.store.db().begin_read()?;
        let names = tx.open_table(DOC_NAMES)?;
        let docs = tx.open_table(DOCUMENTS)?;
        let mut out = Vec::new();
        for row in names.range::<(&str, &str)>((collection, "")..)? {
            let (k, v) = row?;
            if k.value().0 != collection {
                break;
            }
            let id = v.value();
            if let Some(b) = docs.get(id)? {
                out.push(decode_json::<DocRecord>(id, b.value())?);
            }
        }
        Ok(out)
    }

    pub fn document(&self, collection: &str, id: &str) -> Result<DocInfo, KbError> {
        let tx = self.inner.store.db().begin_read()?;
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
        let tx = self.inner.store.db().begin_write()?;
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
        let tx = self.inner.store.db().begin_read()?;
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
                filename: rec.filename.clone(),
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
        let tx = self.inner.store.db().begin_read()?;
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
            filename: doc.filename,
            ordinal: rec.ordinal,
            page: rec.page,
            heading: (!rec.heading.is_empty()).then(|| rec.heading.join(" > ")),
            text: rec.text,
        })
    }

    pub fn search(&self, req: &SearchRequest) -> Result<Vec<Hit>, KbError> {
        self.search_tuned(req, &SearchTuning::default())
    }

    /// [`KnowledgeBase::search`] with evaluation knobs (exact dense scan, ef).
    pub fn search_tuned(
        &self,
        req: &SearchRequest,
        tuning: &SearchTuning,
    ) -> Result<Vec<Hit>, KbError> {
        let cfg = &self.inner.cfg;
        let query = req.query.trim();
        if query.is_empty() {
            return Err(KbError::Invalid("query is empty".into()));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(KbError::Invalid(format!(
                "query is longer than {MAX_QUERY_BYTES} bytes"
            )));
        }
        if req.top_k == 0 || req.top_k > cfg.max_top_k {
            return Err(KbError::Invalid(format!(
                "top_k must be 1..={}",
                cfg.max_top_k
            )));
        }
        if req.collections.is_empty() {
            return Err(KbError::Invalid("name at least one collection".into()));
        }
        let mut names: Vec<&str> = req.collections.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        for n in &names {
            check_collection_name(n)?;
        }
        let colls: Vec<Arc<Coll>> = names
            .iter()
            .map(|n| self.coll(n))
            .collect::<Result<_, _>>()?;

        let want_bm25 = req.mode != SearchMode::Vector;
        let want_dense = req.mode != SearchMode::Bm25;
        let q_terms = if want_bm25 {
            bm25::query_terms(query)
        } else {
            Vec::new()
        };
        // Embed the query before taking any lock (the model may take milliseconds).
        let qvec = if want_dense {
            Some(self.embed_query(query)?)
        } else {
            None
        };
        let depth = tuning.candidates.unwrap_or(cfg.candidates).max(req.top_k);
        let ef = tuning.ef_search.unwrap_or(cfg.ann_ef_search);

        // Read locks in name order (see module docs); held until the texts are read.
        let guards: Vec<RwLockReadGuard<'_, CollIndex>> =
            colls.iter().map(|c| read(&c.idx)).collect();
        let mut bm25_list: Vec<((u32, u32), f32)> = Vec::new();
        let mut dense_list: Vec<((u32, u32), f32)> = Vec::new();
        let mut best_bm25: Option<(f32, f32, bool)> = None;
        let mut dense_available = false;
        for (ci, g) in guards.iter().enumerate() {
            if g.deleted {
                return Err(not_found(format!("collection `{}`", colls[ci].name)));
            }
            let ci = ci as u32;
            if want_bm25 {
                let h = g.bm25.search(&q_terms, &g.alive, depth);
                if let Some(&(_, top)) = h.hits.first() {
                    if best_bm25.is_none_or(|b| top > b.0) {
                        best_bm25 = Some((top, h.top_coverage, h.top_has_idents));
                    }
                }
                bm25_list.extend(h.hits.into_iter().map(|(s, sc)| ((ci, s), sc)));
            }
            if let Some(q) = &qvec {
                if g.vectors_current {
                    dense_available = true;
                    let d = g.dense(q, depth, ef, tuning.exact);
                    dense_list.extend(d.into_iter().map(|(s, sc)| ((ci, s), sc)));
                }
            }
        }
        if req.mode == SearchMode::Vector && !dense_available {
            return Err(KbError::Conflict(
                "no collection searched has vectors from the current embedding model \
                 (re-embed it, or search in bm25 or hybrid mode)"
                    .into(),
            ));
        }
        let by_score =
            |a: &((u32, u32), f32), b: &((u32, u32), f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        bm25_list.sort_unstable_by(by_score);
        bm25_list.truncate(depth);
        dense_list.sort_unstable_by(by_score);
        dense_list.truncate(depth);

        let script = Script::of(query);
        let w = match req.mode {
            SearchMode::Bm25 => fuse::Weights {
                bm25: 1.0,
                dense: 0.0,
                dense_tiebreak: false,
            },
            SearchMode::Vector => fuse::Weights {
                bm25: 0.0,
                dense: 1.0,
                dense_tiebreak: false,
            },
            SearchMode::Hybrid => fuse::weights(&Signals {
                script,
                dense_covers: self.inner.embed.covers(script),
                dense_available,
                bm25_found: !bm25_list.is_empty(),
                bm25_coverage: best_bm25.map_or(0.0, |b| b.1),
                bm25_idents: best_bm25.is_some_and(|b| b.2),
            }),
        };
        let fused = fuse::fuse(&bm25_list, &dense_list, w, cfg.rrf_k, req.top_k);

        let tx = self.inner.store.db().begin_read()?;
        let chunks = tx.open_table(CHUNKS)?;
        let mut hits = Vec::with_capacity(fused.len());
        for f in fused {
            let (ci, slot) = f.key;
            let g = &guards[ci as usize];
            let (doc, ordinal) = g.chunk_ref(slot);
            let cid = kbstore::chunk_id(&doc.id, ordinal);
            let Some(b) = chunks.get(cid.as_str())? else {
                // Cannot happen while the read lock is held; never fail a search over it.
                tracing::warn!(chunk = %cid, "indexed chunk has no stored record");
                continue;
            };
            let rec: ChunkRecord = decode_json(&cid, b.value())?;
            let score = match req.mode {
                SearchMode::Hybrid => f.score,
                SearchMode::Bm25 => f.bm25.map_or(0.0, |b| b.1),
                SearchMode::Vector => f.dense.map_or(0.0, |d| d.1),
            };
            hits.push(Hit {
                collection: colls[ci as usize].name.clone(),
                document_id: doc.id.clone(),
                filename: doc.filename.clone(),
                chunk_id: cid,
                ordinal,
                text: rec.text,
                score,
                page: rec.page,
                heading: (!rec.heading.is_empty()).then(|| rec.heading.join(" > ")),
                bm25_rank: f.bm25.map(|b| b.0),
                bm25_score: f.bm25.map(|b| b.1),
                dense_rank: f.dense.map(|d| d.0),
                dense_score: f.dense.map(|d| d.1),
            });
        }
        Ok(hits)
    }

    /// Re-embed every chunk of a collection with the current model (after a model change),
    /// in one transaction; returns the number of chunks. Searches keep using keyword ranking
    /// meanwhile; writes to the collection wait.
    pub fn reembed(&self, collection: &str) -> Result<usize, KbError> {
        let coll = self.coll(collection)?;
        let _gate = self.gate(&coll)?;
        let mut ids = Vec::new();
        let mut texts = Vec::new();
        {
            let tx = self.inner.store.db().begin_read()?;
            let chunks = tx.open_table(CHUNKS)?;
            for d in load_docs(&tx, collection, None)? {
                for ord in 0..d.record.chunks {
                    let cid = kbstore::chunk_id(&d.record.id, ord);
                    let rec: ChunkRecord = match chunks.get(cid.as_str())? {
                        Some(b) => decode_json(&cid, b.value())?,
                        None => return Err(corrupt(&cid, "chunk record missing")),
                    };
                    ids.push(cid);
                    texts.push(rec.text);
                }
            }
        }
        let vectors = self.embed_all(&texts)?;
        let tx = self.inner.store.db().begin_write()?;
        let mut crec = self.collection_record(&tx, collection)?;
        crec.model_id = self.inner.embed.model_id();
        crec.dim = self.inner.embed.dim();
        {
            let mut vt = tx.open_table(VECTORS)?;
            for (cid, v) in ids.iter().zip(&vectors) {
                vt.insert(cid.as_str(), kbstore::encode_vector(v).as_slice())?;
            }
            tx.open_table(COLLECTIONS)?
                .insert(collection, encode_json(collection, &crec)?.as_slice())?;
        }
        let mut idx = write(&coll.idx);
        tx.commit()?;
        let rtx = self.inner.store.db().begin_read()?;
        *idx = build_index(&rtx, collection, crec, self.inner.embed.as_ref())?;
        drop(idx);
        drop(_gate);
        self.inner.schedule_if_needed(collection);
        Ok(ids.len())
    }

    /// Block until the maintenance worker has nothing left to do (tests, benchmarks).
    pub fn wait_idle(&self) {
        let mut jobs = lock(&self.inner.jobs);
        while !jobs.queue.is_empty() || jobs.busy {
            jobs = self
                .inner
                .jobs_cv
                .wait(jobs)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn collection_record(
        &self,
        tx: &WriteTransaction,
        collection: &str,
    ) -> Result<CollectionRecord, KbError> {
        match tx.open_table(COLLECTIONS)?.get(collection)? {
            Some(b) => decode_json(collection, b.value()),
            None => Err(not_found(format!("collection `{collection}`"))),
        }
    }

    fn stale_error(&self, collection: &str, rec: &CollectionRecord) -> KbError {
        KbError::Conflict(format!(
            "collection `{collection}` holds vectors of model `{}` ({} dims) but the embedder \
             is `{}` ({} dims): re-embed the collection first",
            rec.model_id,
            rec.dim,
            self.inner.embed.model_id(),
            self.inner.embed.dim()
        ))
    }

    fn check_vectors_current(&self, coll: &Coll) -> Result<(), KbError> {
        let idx = read(&coll.idx);
        if idx.deleted {
            return Err(not_found(format!("collection `{}`", coll.name)));
        }
        if !idx.vectors_current {
            return Err(self.stale_error(&coll.name, &idx.record));
        }
        Ok(())
    }

    /// Embed in batches; every vector is checked and L2-normalised.
    fn embed_all(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, KbError> {
        let e = &self.inner.embed;
        let dim = e.dim();
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.inner.cfg.embed_batch) {
            let vs = e.embed(batch).map_err(KbError::Embed)?;
            if vs.len() != batch.len() {
                return Err(KbError::Embed(format!(
                    "{} vectors for {} texts",
                    vs.len(),
                    batch.len()
                )));
            }
            for mut v in vs {
                if v.len() != dim {
                    return Err(KbError::Embed(format!(
                        "vector of {} dims, model says {dim}",
                        v.len()
                    )));
                }
                if !vector::normalize(&mut v) {
                    return Err(KbError::Embed("zero or non-finite vector".into()));
                }
                out.push(v);
            }
        }
        Ok(out)
    }

    fn embed_query(&self, query: &str) -> Result<Vec<f32>, KbError> {
        self.embed_all(&[query.to_string()])?
            .pop()
            .ok_or_else(|| KbError::Embed("no vector for the query".into()))
    }
}

fn info_of(name: &str, idx: &CollIndex) -> CollectionInfo {
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

/// When the analyzer changed since the postings were stored, re-derive every chunk's terms
/// from its text (one transaction) so queries and stored terms agree.
fn rederive_terms_if_stale(store: &Store) -> Result<(), KbError> {
    {
        let tx = store.db().begin_read()?;
        let meta = tx.open_table(KB_META)?;
        if meta
            .get(kbstore::META_ANALYZER)?
            .is_some_and(|v| v.value() == ANALYZER_VERSION)
        {
            return Ok(());
        }
    }
    let tx = store.db().begin_write()?;
    let mut n = 0usize;
    {
        let chunks = tx.open_table(CHUNKS)?;
        let mut terms = tx.open_table(TERMS)?;
        for row in chunks.iter()? {
            let (k, v) = row?;
            let rec: ChunkRecord = decode_json(k.value(), v.value())?;
            let t = bm25::term_freqs(&rec.text);
            terms.insert(k.value(), kbstore::encode_terms(&t).as_slice())?;
            n += 1;
        }
        tx.open_table(KB_META)?
            .insert(kbstore::META_ANALYZER, ANALYZER_VERSION)?;
    }
    tx.commit()?;
    tracing::info!(
        chunks = n,
        analyzer = ANALYZER_VERSION,
        "knowledge base keyword terms re-derived"
    );
    Ok(())
}

impl Inner {
    fn schedule_if_needed(&self, name: &str) {
        let Some(coll) = read(&self.colls).get(name).cloned() else {
            return;
        };
        let needed = {
            let idx = read(&coll.idx);
            idx.needs_ann(&self.cfg) || idx.needs_compaction(&self.cfg)
        };
        if needed {
            let mut jobs = lock(&self.jobs);
            if !jobs.queue.iter().any(|q| q == name) {
                jobs.queue.push_back(name.to_string());
            }
            self.jobs_cv.notify_all();
        }
    }

    fn work(&self) {
        loop {
            let name = {
                let mut jobs = lock(&self.jobs);
                loop {
                    if self.shutdown.load(Ordering::SeqCst) {
                        jobs.busy = false;
                        self.jobs_cv.notify_all();
                        return;
                    }
                    if let Some(n) = jobs.queue.pop_front() {
                        jobs.busy = true;
                        break n;
                    }
                    jobs.busy = false;
                    self.jobs_cv.notify_all();
                    jobs = self.jobs_cv.wait(jobs).unwrap_or_else(|e| e.into_inner());
                }
            };
            if let Err(e) = self.maintain(&name) {
                tracing::error!(collection = %name, error = %e, "knowledge base maintenance failed");
            }
        }
    }

    /// Compact and/or extend the ANN graph of one collection, a step at a time.
    fn maintain(&self, name: &str) -> Result<(), KbError> {
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some(coll) = read(&self.colls).get(name).cloned() else {
                return Ok(());
            };
            let _gate = lock(&coll.gate);
            let (compact, ann) = {
                let idx = read(&coll.idx);
                if idx.deleted {
                    return Ok(());
                }
                (idx.needs_compaction(&self.cfg), idx.needs_ann(&self.cfg))
            };
            if compact {
                // Writers are held off by the gate, so the file and memory agree and a fresh
                // index read now replaces the old one exactly, without the dead slots.
                let tx = self.store.db().begin_read()?;
                let record = read(&coll.idx).record.clone();
                let fresh = build_index(&tx, name, record, self.embed.as_ref())?;
                tracing::info!(collection = %name, chunks = fresh.live_slots, "knowledge base index compacted");
                *write(&coll.idx) = fresh;
                continue;
            }
            if !ann {
                return Ok(());
            }
            let next = {
                let idx = read(&coll.idx);
                let mut g = idx.ann.clone().unwrap_or_else(|| {
                    Hnsw::new(HnswParams {
                        m: self.cfg.ann_m,
                        ef_construction: self.cfg.ann_ef_construction,
                        ..HnswParams::default()
                    })
                });
                let end = idx.vectors.rows().min(g.len() + self.cfg.ann_step);
                while g.len() < end {
                    if self.shutdown.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    g.insert_next(&idx.vectors);
                }
                g
            };
            write(&coll.idx).ann = Some(next);
        }
    }
}

#[cfg(test)]
mod tests;
