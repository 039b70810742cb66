//! Hybrid search: BM25 and dense candidates from every named collection under their read
//! locks, fused (see `kb::fuse`), then the chunk texts read while the locks are still held.

use std::sync::{Arc, RwLockReadGuard};

use super::index::CollIndex;
use super::{
    check_collection_name, decode_json, kbstore, not_found, Coll, Hit, KbError, KnowledgeBase,
    SearchMode, SearchRequest, SearchTuning, MAX_QUERY_BYTES,
};
use crate::kb::bm25;
use crate::kb::fuse::{self, Fused, Signals};
use crate::kb::store::{ChunkRecord, CHUNKS};
use crate::kb::Script;
use crate::util::read;

/// A candidate: (collection position in the request, slot) with its ranker's score.
type Scored = ((u32, u32), f32);

/// What the rankers found across the searched collections, before fusion.
#[derive(Default)]
struct Candidates {
    bm25: Vec<Scored>,
    dense: Vec<Scored>,
    /// The best BM25 hit over all collections: (score, query coverage, has every identifier).
    best_bm25: Option<(f32, f32, bool)>,
    /// Some searched collection has vectors from the current model.
    dense_available: bool,
}

impl KnowledgeBase {
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
        let (query, colls) = self.check_request(req)?;
        let want_bm25 = req.mode != SearchMode::Vector;
        let q_terms = if want_bm25 {
            bm25::query_terms(query)
        } else {
            Vec::new()
        };
        // Embed the query before taking any lock (the model may take milliseconds).
        let qvec = if req.mode != SearchMode::Bm25 {
            Some(self.embed_query(query)?)
        } else {
            None
        };
        let depth = tuning.candidates.unwrap_or(cfg.candidates).max(req.top_k);

        // Read locks in name order (see module docs); held until the texts are read.
        let guards: Vec<RwLockReadGuard<'_, CollIndex>> =
            colls.iter().map(|c| read(&c.idx)).collect();
        let mut found = Candidates::default();
        for (ci, g) in guards.iter().enumerate() {
            if g.deleted {
                return Err(not_found(format!("collection `{}`", colls[ci].name)));
            }
            let ci = ci as u32;
            if want_bm25 {
                let h = g.bm25.search(&q_terms, &g.alive, depth);
                if let Some(&(_, top)) = h.hits.first() {
                    if found.best_bm25.is_none_or(|b| top > b.0) {
                        found.best_bm25 = Some((top, h.top_coverage, h.top_has_idents));
                    }
                }
                found
                    .bm25
                    .extend(h.hits.into_iter().map(|(s, sc)| ((ci, s), sc)));
            }
            if let Some(q) = &qvec {
                if g.vectors_current {
                    found.dense_available = true;
                    let ef = tuning.ef_search.unwrap_or(cfg.ann_ef_search);
                    let d = g.dense(q, depth, ef, tuning.exact);
                    found
                        .dense
                        .extend(d.into_iter().map(|(s, sc)| ((ci, s), sc)));
                }
            }
        }
        if req.mode == SearchMode::Vector && !found.dense_available {
            return Err(KbError::Conflict(
                "no collection searched has vectors from the current embedding model \
                 (re-embed it, or search in bm25 or hybrid mode)"
                    .into(),
            ));
        }
        let by_score = |a: &Scored, b: &Scored| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        found.bm25.sort_unstable_by(by_score);
        found.bm25.truncate(depth);
        found.dense.sort_unstable_by(by_score);
        found.dense.truncate(depth);

        let w = self.weights(req.mode, query, &found);
        let fused = fuse::fuse(&found.bm25, &found.dense, w, cfg.rrf_k, req.top_k);
        self.hits(req.mode, fused, &colls, &guards)
    }

    /// The trimmed query and the named collections (each once, in name order), or why the
    /// request cannot be searched.
    fn check_request<'q>(
        &self,
        req: &'q SearchRequest,
    ) -> Result<(&'q str, Vec<Arc<Coll>>), KbError> {
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
        let colls = names
            .iter()
            .map(|n| self.coll(n))
            .collect::<Result<_, _>>()?;
        Ok((query, colls))
    }

    /// How much each ranker counts: one of them alone in the single-ranker modes, by the
    /// query and what was found in hybrid mode (see `kb::fuse`).
    fn weights(&self, mode: SearchMode, query: &str, found: &Candidates) -> fuse::Weights {
        let only = |bm25: f32, dense: f32| fuse::Weights {
            bm25,
            dense,
            dense_tiebreak: false,
        };
        match mode {
            SearchMode::Bm25 => only(1.0, 0.0),
            SearchMode::Vector => only(0.0, 1.0),
            SearchMode::Hybrid => {
                let script = Script::of(query);
                fuse::weights(&Signals {
                    script,
                    dense_covers: self.inner.embed.covers(script),
                    dense_available: found.dense_available,
                    bm25_found: !found.bm25.is_empty(),
                    bm25_coverage: found.best_bm25.map_or(0.0, |b| b.1),
                    bm25_idents: found.best_bm25.is_some_and(|b| b.2),
                })
            }
        }
    }

    /// The fused candidates as hits, with their chunk texts read from the file while the
    /// read locks in `guards` are still held.
    fn hits(
        &self,
        mode: SearchMode,
        fused: Vec<Fused<(u32, u32)>>,
        colls: &[Arc<Coll>],
        guards: &[RwLockReadGuard<'_, CollIndex>],
    ) -> Result<Vec<Hit>, KbError> {
        let tx = self.inner.store.begin_read()?;
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
            let score = match mode {
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
}
