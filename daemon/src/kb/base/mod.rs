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
//!
//! ## Layout
//! This file holds the public types and the [`KnowledgeBase`] handle (open, locks, embedding);
//! `index` the in-memory index of one collection and its (re)building from the tables;
//! `collections` and `documents` the writes and reads; `search` the hybrid search;
//! `maintenance` re-embedding and the background worker.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use self::index::{build_index, CollIndex};
use self::maintenance::rederive_terms_if_stale;
use super::store::{self as kbstore, CollectionRecord, COLLECTIONS};
use super::vector;
use super::Embed;
use crate::store::{Store, StoreError};
use crate::util::{hex, lock, read, unix_now};

mod collections;
mod documents;
mod index;
mod maintenance;
mod search;

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

/// What describes a document being ingested (its chunks come separately); stored as it is in
/// the document's record.
pub use super::store::DocMeta as NewDocument;

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
        {
            // Raised under the jobs lock: the worker checks the flag and starts waiting while
            // it holds that lock, so the notification cannot fall between the two (a lost
            // wake-up there left the worker asleep and this join hanging forever).
            let _jobs = lock(&self.inner.jobs);
            self.inner.shutdown.store(true, Ordering::SeqCst);
            self.inner.jobs_cv.notify_all();
        }
        if let Some(t) = lock(&self.worker).take() {
            let _ = t.join();
        }
    }
}

fn new_doc_id() -> Result<String, KbError> {
    use rand::TryRngCore;
    let mut b = [0u8; 8];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| KbError::Store(StoreError::Db(format!("no randomness for an id: {e}"))))?;
    Ok(format!("d_{}", hex(&b)))
}

fn decode_json<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, KbError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

fn encode_json<T: Serialize>(key: &str, v: &T) -> Result<Vec<u8>, KbError> {
    serde_json::to_vec(v).map_err(|e| corrupt(key, e))
}

fn check_collection_name(name: &str) -> Result<(), KbError> {
    if super::valid_collection(name) {
        Ok(())
    } else {
        Err(KbError::Invalid(format!(
            "invalid collection name `{name}`: use 1-64 letters, digits, `-`, `_`, `.`"
        )))
    }
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
            let tx = store.begin_read()?;
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

#[cfg(test)]
mod tests;
