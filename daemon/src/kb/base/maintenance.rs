//! Maintenance: re-embedding after a model change, re-deriving keyword terms after an
//! analyzer change, and the background worker that compacts collections and extends their
//! ANN graphs.

use std::sync::atomic::Ordering;

use redb::ReadableTable;

use super::index::{build_index, load_docs};
use super::{corrupt, decode_json, encode_json, kbstore, Inner, KbError, KnowledgeBase};
use crate::kb::bm25;
use crate::kb::hnsw::{Hnsw, HnswParams};
use crate::kb::store::{ChunkRecord, CHUNKS, COLLECTIONS, KB_META, TERMS, VECTORS};
use crate::kb::text::ANALYZER_VERSION;
use crate::store::Store;
use crate::util::{lock, read, wait, write};

impl KnowledgeBase {
    /// Re-embed every chunk of a collection with the current model (after a model change),
    /// in one transaction; returns the number of chunks. Searches keep using keyword ranking
    /// meanwhile; writes to the collection wait.
    pub fn reembed(&self, collection: &str) -> Result<usize, KbError> {
        let coll = self.coll(collection)?;
        let _gate = self.gate(&coll)?;
        let mut ids = Vec::new();
        let mut texts = Vec::new();
        {
            let tx = self.inner.store.begin_read()?;
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
        let tx = self.inner.store.begin_write()?;
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
        let rtx = self.inner.store.begin_read()?;
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
            jobs = wait(&self.inner.jobs_cv, jobs);
        }
    }
}

/// When the analyzer changed since the postings were stored, re-derive every chunk's terms
/// from its text (one transaction) so queries and stored terms agree.
pub(super) fn rederive_terms_if_stale(store: &Store) -> Result<(), KbError> {
    {
        let tx = store.begin_read()?;
        let meta = tx.open_table(KB_META)?;
        if meta
            .get(kbstore::META_ANALYZER)?
            .is_some_and(|v| v.value() == ANALYZER_VERSION)
        {
            return Ok(());
        }
    }
    let tx = store.begin_write()?;
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
    pub(super) fn schedule_if_needed(&self, name: &str) {
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

    pub(super) fn work(&self) {
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
                    jobs = wait(&self.jobs_cv, jobs);
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
                let tx = self.store.begin_read()?;
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
