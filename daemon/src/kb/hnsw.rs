//! Approximate nearest neighbours: a hierarchical navigable small world graph (Malkov &
//! Yashunin 2016) over the rows of a [`Matrix`], by dot product (cosine for unit vectors).
//!
//! Written here rather than taken from a crate because the index must grow one row at a time
//! while it serves (the maintained Rust crates either build once, or insert but cannot skip
//! deleted rows), and because node ids must be our slots: the graph stores only links and
//! reads vectors from the collection's matrix, so it adds ~140 bytes per node on top of them.
//!
//! Deletion is by tombstone: a dead row stays in the graph as a waypoint and is left out of
//! results; the collection rebuilds its index when too many rows are dead.
//!
//! Node levels come from a seeded generator, so the same inserts build the same graph.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::vector::{dot_fn, Matrix};

const MAX_LEVEL: usize = 15;

/// Graph shape and build effort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on the upper layers; layer 0 keeps twice as many.
    pub m: usize,
    /// Candidates examined when linking a new node (recall of the graph vs build time).
    pub ef_construction: usize,
    /// Seed of the level generator.
    pub seed: u64,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 100,
            seed: 0x6b62_686e_7377,
        }
    }
}

/// A candidate: similarity first, then the lower id, so heaps order deterministically.
#[derive(Clone, Copy, Debug)]
struct Near {
    sim: f32,
    id: u32,
}

impl PartialEq for Near {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Near {
    fn cmp(&self, o: &Self) -> Ordering {
        self.sim.total_cmp(&o.sim).then(o.id.cmp(&self.id))
    }
}

/// Visited marks by generation, so clearing is O(1) per search.
#[derive(Default)]
struct Visited {
    marks: Vec<u32>,
    gen: u32,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.gen = 1;
        }
    }
    /// Marks `i`; true if it was not marked yet.
    #[inline]
    fn visit(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        if *m == self.gen {
            false
        } else {
            *m = self.gen;
            true
        }
    }
}

pub struct Hnsw {
    params: HnswParams,
    m0: usize,
    ml: f64,
    levels: Vec<u8>,
    /// Layer-0 links: `m0` slots per node, `len0` of them used.
    links0: Vec<u32>,
    len0: Vec<u8>,
    /// Links on layers 1..=level, per node (empty for the ~94 % of nodes on layer 0 only).
    upper: Vec<Vec<Vec<u32>>>,
    entry: u32,
    max_level: usize,
    rng: ChaCha8Rng,
    build_visited: Visited,
    /// Visited lists for concurrent searches (`&self`).
    pool: Mutex<Vec<Visited>>,
}

impl Clone for Hnsw {
    fn clone(&self) -> Self {
        Hnsw {
            params: self.params,
            m0: self.m0,
            ml: self.ml,
            levels: self.levels.clone(),
            links0: self.links0.clone(),
            len0: self.len0.clone(),
            upper: self.upper.clone(),
            entry: self.entry,
            max_level: self.max_level,
            rng: self.rng.clone(),
            build_visited: Visited::default(),
            pool: Mutex::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for Hnsw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hnsw")
            .field("nodes", &self.len())
            .field("max_level", &self.max_level)
            .finish()
    }
}

impl Hnsw {
    pub fn new(params: HnswParams) -> Hnsw {
        let m = params.m.clamp(2, 127);
        let params = HnswParams {
            m,
            ef_construction: params.ef_construction.max(m),
            ..params
        };
        Hnsw {
            params,
            m0: 2 * m,
            ml: 1.0 / (m as f64).ln(),
            levels: Vec::new(),
            links0: Vec::new(),
            len0: Vec::new(),
            upper: Vec::new(),
            entry: 0,
            max_level: 0,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            build_visited: Visited::default(),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Rows indexed: the graph covers rows `0..len()` of the matrix.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Memory held by the graph.
    pub fn bytes(&self) -> usize {
        self.links0.capacity() * 4
            + self.len0.capacity()
            + self.levels.capacity()
            + self
                .upper
                .iter()
                .map(|u| 24 + u.iter().map(|l| 24 + l.capacity() * 4).sum::<usize>())
                .sum::<usize>()
    }

    fn links(&self, node: u32, level: usize) -> &[u32] {
        if level == 0 {
            let at = node as usize * self.m0;
            &self.links0[at..at + usize::from(self.len0[node as usize])]
        } else {
            &self.upper[node as usize][level - 1]
        }
    }

    fn set_links(&mut self, node: u32, level: usize, to: &[u32]) {
        if level == 0 {
            let at = node as usize * self.m0;
            let n = to.len().min(self.m0);
            self.links0[at..at + n].copy_from_slice(&to[..n]);
            self.len0[node as usize] = n as u8;
        } else {
            let l = &mut self.upper[node as usize][level - 1];
            l.clear();
            l.extend_from_slice(to);
        }
    }

    fn random_level(&mut self) -> usize {
        // 1 - U lies in (0, 1], so the logarithm is finite.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        ((-u.ln() * self.ml).floor() as usize).min(MAX_LEVEL)
    }

    /// Walk greedily towards `q` on one layer.
    fn greedy(&self, m: &Matrix, q: &[f32], mut cur: Near, level: usize) -> Near {
        let dot = dot_fn();
        loop {
            let mut moved = false;
            for &nb in self.links(cur.id, level) {
                let s = dot(q, m.row(nb as usize));
                let cand = Near { sim: s, id: nb };
                if cand > cur {
                    cur = cand;
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Best-first search of one layer from `ep`; returns up to `ef` nodes (only those with
    /// `alive[id]` when `alive` is given: dead nodes are walked through, not returned),
    /// best first.
    #[allow(clippy::too_many_arguments)] // one private hot routine; a parameter struct adds nothing
    fn search_layer(
        &self,
        m: &Matrix,
        q: &[f32],
        ep: Near,
        ef: usize,
        level: usize,
        alive: Option<&[bool]>,
        visited: &mut Visited,
    ) -> Vec<Near> {
        let dot = dot_fn();
        let counts = |id: u32| alive.is_none_or(|a| a.get(id as usize).copied().unwrap_or(false));
        visited.reset(self.len());
        visited.visit(ep.id);
        let mut cands: BinaryHeap<Near> = BinaryHeap::with_capacity(ef * 2);
        let mut best: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(ef + 1);
        cands.push(ep);
        if counts(ep.id) {
            best.push(Reverse(ep));
        }
        while let Some(c) = cands.pop() {
            if best.len() >= ef {
                if let Some(Reverse(worst)) = best.peek() {
                    if c < *worst {
                        break;
                    }
                }
            }
            for &nb in self.links(c.id, level) {
                if !visited.visit(nb) {
                    continue;
                }
                let n = Near {
                    sim: dot(q, m.row(nb as usize)),
                    id: nb,
                };
                let worse_than_all = best.len() >= ef && best.peek().is_some_and(|w| n < w.0);
                if worse_than_all {
                    continue;
                }
                cands.push(n);
                if counts(nb) {
                    best.push(Reverse(n));
                    if best.len() > ef {
                        best.pop();
                    }
                }
            }
        }
        let mut out: Vec<Near> = best.into_iter().map(|r| r.0).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    /// Malkov's neighbour-selection heuristic: walk the candidates from nearest and keep one
    /// only if it is nearer to the base than to every neighbour kept so far. Keeps links
    /// pointing in different directions, which is what lets searches leave a tight cluster.
    fn select(&self, m: &Matrix, cands: &[Near], k: usize) -> Vec<u32> {
        let dot = dot_fn();
        let mut kept: Vec<u32> = Vec::with_capacity(k);
        for c in cands {
            if kept.len() >= k {
                break;
            }
            let row = m.row(c.id as usize);
            if kept.iter().all(|&r| dot(row, m.row(r as usize)) < c.sim) {
                kept.push(c.id);
            }
        }
        kept
    }

    /// Add row `len()` of `m` to the graph.
    pub fn insert_next(&mut self, m: &Matrix) {
        let node = self.len() as u32;
        debug_assert!((node as usize) < m.rows());
        let level = self.random_level();
        self.levels.push(level as u8);
        self.len0.push(0);
        self.links0.resize(self.links0.len() + self.m0, 0);
        self.upper.push(vec![Vec::new(); level]);
        if node == 0 {
            self.entry = 0;
            self.max_level = level;
            return;
        }
        let dot = dot_fn();
        let q = m.row(node as usize);
        let mut ep = Near {
            sim: dot(q, m.row(self.entry as usize)),
            id: self.entry,
        };
        for l in (level + 1..=self.max_level).rev() {
            ep = self.greedy(m, q, ep, l);
        }
        let mut visited = std::mem::take(&mut self.build_visited);
        for l in (0..=level.min(self.max_level)).rev() {
            let found =
                self.search_layer(m, q, ep, self.params.ef_construction, l, None, &mut visited);
            let chosen = self.select(m, &found, self.params.m);
            self.set_links(node, l, &chosen);
            let cap = if l == 0 { self.m0 } else { self.params.m };
            for &nb in &chosen {
                self.link_back(m, nb, node, l, cap);
            }
            if let Some(&b) = found.first() {
                ep = b;
            }
        }
        self.build_visited = visited;
        if level > self.max_level {
            self.max_level = level;
            self.entry = node;
        }
    }

    /// Add `node` to `nb`'s links on `level`, re-selecting them if `nb` is full.
    fn link_back(&mut self, m: &Matrix, nb: u32, node: u32, level: usize, cap: usize) {
        let cur = self.links(nb, level);
        if cur.len() < cap {
            let mut v = cur.to_vec();
            v.push(node);
            self.set_links(nb, level, &v);
            return;
        }
        let dot = dot_fn();
        let base = m.row(nb as usize);
        let mut cands: Vec<Near> = cur
            .iter()
            .chain(std::iter::once(&node))
            .map(|&id| Near {
                sim: dot(base, m.row(id as usize)),
                id,
            })
            .collect();
        cands.sort_unstable_by(|a, b| b.cmp(a));
        let kept = self.select(m, &cands, cap);
        self.set_links(nb, level, &kept);
    }

    /// Up to `k` live rows nearest to `q`, best first, exploring `ef` (≥ k) candidates.
    pub fn search(
        &self,
        m: &Matrix,
        q: &[f32],
        k: usize,
        ef: usize,
        alive: &[bool],
    ) -> Vec<(u32, f32)> {
        if self.is_empty() || k == 0 {
            return Vec::new();
        }
        let dot = dot_fn();
        let mut ep = Near {
            sim: dot(q, m.row(self.entry as usize)),
            id: self.entry,
        };
        for l in (1..=self.max_level).rev() {
            ep = self.greedy(m, q, ep, l);
        }
        let mut visited = crate::util::lock(&self.pool).pop().unwrap_or_default();
        let found = self.search_layer(m, q, ep, ef.max(k), 0, Some(alive), &mut visited);
        crate::util::lock(&self.pool).push(visited);
        found.into_iter().take(k).map(|n| (n.id, n.sim)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::bench::clustered_vectors;
    use super::super::vector::exact_top;
    use super::*;

    fn recall(h: &Hnsw, m: &Matrix, queries: &Matrix, alive: &[bool], ef: usize) -> f64 {
        let mut hit = 0usize;
        let mut total = 0usize;
        for qi in 0..queries.rows() {
            let q = queries.row(qi);
            let want: Vec<u32> = exact_top(m, q, 0, alive, 10).iter().map(|t| t.0).collect();
            let got = h.search(m, q, 10, ef, alive);
            assert!(got.iter().all(|g| alive[g.0 as usize]), "dead row returned");
            hit += got.iter().filter(|g| want.contains(&g.0)).count();
            total += want.len();
        }
        hit as f64 / total as f64
    }

    #[test]
    fn recall_at_10_vs_exact_on_clustered_vectors_with_and_without_deletions() {
        let (n, dim) = (3000, 64);
        let m = clustered_vectors(n, dim, 24, 1, 1);
        let queries = clustered_vectors(100, dim, 24, 1, 2);
        let mut h = Hnsw::new(HnswParams::default());
        for _ in 0..n {
            h.insert_next(&m);
        }
        assert_eq!(h.len(), n);
        let mut alive = vec![true; n];
        let r = recall(&h, &m, &queries, &alive, 64);
        assert!(r >= 0.95, "recall@10 {r}");
        // A third of the rows deleted (tombstones): still only live rows, still found.
        for (i, a) in alive.iter_mut().enumerate() {
            if i % 3 == 0 {
                *a = false;
            }
        }
        let r = recall(&h, &m, &queries, &alive, 64);
        assert!(r >= 0.95, "recall@10 with tombstones {r}");
    }

    #[test]
    fn same_inserts_build_the_same_graph() {
        let m = clustered_vectors(300, 16, 4, 3, 3);
        let build = || {
            let mut h = Hnsw::new(HnswParams::default());
            for _ in 0..m.rows() {
                h.insert_next(&m);
            }
            h
        };
        let (a, b) = (build(), build());
        assert_eq!(a.links0, b.links0);
        assert_eq!(a.entry, b.entry);
        // A clone continues identically to the original.
        let mut c = a.clone();
        let mut d = a.clone();
        let more = clustered_vectors(310, 16, 4, 3, 3);
        c.insert_next(&more);
        d.insert_next(&more);
        assert_eq!(c.links0, d.links0);
    }
}
