//! Hybrid ranking: weighted reciprocal rank fusion of the keyword (BM25) and dense rankings.
//!
//! RRF scores an item by `Σ w_r / (k + rank_r)` over the rankers that found it. It uses
//! ranks, not raw scores, because BM25 scores and cosines live on unrelated scales. The
//! weights say how far each ranker can be trusted *for this query*:
//!
//! 1. **Dense blind to the query's script → BM25 decides, dense only breaks ties.** The
//!    embedding model (all-MiniLM-L6-v2) was trained on English; for Chinese text its vectors
//!    are close to noise, so an equal-weight fusion would let random neighbours push the right
//!    keyword hits down. The embedder says what it covers ([`Embed::covers`]); for a query
//!    whose [`Script::of`] it does not cover, BM25 order is kept exactly and dense similarity
//!    only orders chunks BM25 scores equal (and those it did not find, after all it did).
//! 2. **BM25 found nothing → dense carries the ranking.** An English paraphrase that shares
//!    no word with the text is exactly what embeddings are for. (For an uncovered script the
//!    dense list is all there is; it is returned rather than nothing.)
//! 3. **Both see the query → both count, BM25 by its confidence.** BM25's weight grows with
//!    the share of the query's idf mass found in its best chunk (`coverage`, 0..1): when the
//!    best keyword hit matched only a common word of a paraphrase, keyword ranks are mostly
//!    luck and dense leads; when it matched every rare term, the two weigh the same. An exact
//!    match of all the query's identifiers (versions, CVE numbers, package names — things
//!    embeddings blur together) adds half again to BM25's weight.
//!
//! Raw cosine values are not thresholded: where "similar" starts depends on the model, and
//! a fixed cut-off tuned for one model would silently misjudge the next.
//!
//! [`Embed::covers`]: super::Embed::covers
//! [`Script::of`]: super::Script::of

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::Hash;

use super::Script;

/// What the fusion knows about a query and the two rankings.
#[derive(Clone, Copy, Debug)]
pub struct Signals {
    pub script: Script,
    /// The embedder's [`covers`](super::Embed::covers) for `script`.
    pub dense_covers: bool,
    /// Dense ranking available (vectors made by the current model).
    pub dense_available: bool,
    /// BM25 found at least one chunk.
    pub bm25_found: bool,
    /// Share of the query's idf mass in the best BM25 chunk.
    pub bm25_coverage: f32,
    /// The query has identifiers and the best BM25 chunk contains them all.
    pub bm25_idents: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    pub bm25: f32,
    pub dense: f32,
    /// Dense similarity orders only what BM25 scores equal (rule 1).
    pub dense_tiebreak: bool,
}

/// The weights for a query (rules in the module docs).
pub fn weights(s: &Signals) -> Weights {
    if !s.dense_available {
        return Weights {
            bm25: 1.0,
            dense: 0.0,
            dense_tiebreak: false,
        };
    }
    if !s.bm25_found {
        return Weights {
            bm25: 0.0,
            dense: 1.0,
            dense_tiebreak: false,
        };
    }
    if !s.dense_covers {
        return Weights {
            bm25: 1.0,
            dense: 0.0,
            dense_tiebreak: true,
        };
    }
    let coverage = s.bm25_coverage.clamp(0.0, 1.0);
    let idents = if s.bm25_idents { 0.5 } else { 0.0 };
    Weights {
        bm25: 0.5 + 0.5 * coverage + idents,
        dense: 1.0,
        dense_tiebreak: false,
    }
}

/// A fused result with what each ranker said about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused<K> {
    pub key: K,
    pub score: f32,
    /// 1-based rank and score in the BM25 list.
    pub bm25: Option<(usize, f32)>,
    /// 1-based rank and cosine in the dense list.
    pub dense: Option<(usize, f32)>,
}

/// 1-based competition ranks ("1224"): equal scores share a rank, so the fusion never
/// invents an order a ranker did not express.
fn ranks<K: Copy + Eq + Hash>(list: &[(K, f32)]) -> HashMap<K, (usize, f32)> {
    let mut out = HashMap::with_capacity(list.len());
    let mut rank = 0;
    let mut prev: Option<f32> = None;
    for (i, &(k, s)) in list.iter().enumerate() {
        if prev != Some(s) {
            rank = i + 1;
            prev = Some(s);
        }
        out.entry(k).or_insert((rank, s));
    }
    out
}

/// Fuse two rankings (each best first) into the `top` best by `w`, with RRF constant `k`.
pub fn fuse<K: Copy + Eq + Hash + Ord>(
    bm25: &[(K, f32)],
    dense: &[(K, f32)],
    w: Weights,
    k: f32,
    top: usize,
) -> Vec<Fused<K>> {
    let rb = ranks(bm25);
    let rd = ranks(dense);
    let mut keys: Vec<K> = bm25.iter().chain(dense).map(|e| e.0).collect();
    keys.sort_unstable();
    keys.dedup();
    let rrf = |weight: f32, r: Option<&(usize, f32)>| r.map_or(0.0, |r| weight / (k + r.0 as f32));
    let mut out: Vec<Fused<K>> = keys
        .into_iter()
        .map(|key| {
            let b = rb.get(&key).copied();
            let d = rd.get(&key).copied();
            let score = rrf(w.bm25, b.as_ref()) + rrf(w.dense, d.as_ref());
            Fused {
                key,
                score,
                bm25: b,
                dense: d,
            }
        })
        .filter(|f| f.score > 0.0 || w.dense_tiebreak)
        .collect();
    let cos = |f: &Fused<K>| f.dense.map_or(f32::NEG_INFINITY, |d| d.1);
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| {
                if w.dense_tiebreak {
                    cos(b).total_cmp(&cos(a))
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| a.key.cmp(&b.key))
    });
    out.truncate(top);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(script: Script) -> Signals {
        Signals {
            script,
            // The stand-in for MiniLM: English yes, Chinese no.
            dense_covers: script == Script::Latin,
            dense_available: true,
            bm25_found: true,
            bm25_coverage: 1.0,
            bm25_idents: false,
        }
    }

    // The same two rankings: BM25 puts A first; dense is sure about C and puts A last.
    const BM25: [(char, f32); 3] = [('A', 9.0), ('B', 4.0), ('C', 3.9)];
    const DENSE: [(char, f32); 4] = [('C', 0.9), ('D', 0.8), ('B', 0.5), ('A', 0.1)];

    fn order(f: &[Fused<char>]) -> String {
        f.iter().map(|x| x.key).collect()
    }

    #[test]
    fn cjk_query_keeps_bm25_order_dense_only_fills_in() {
        let w = weights(&signals(Script::Cjk));
        assert_eq!(w.dense, 0.0);
        let f = fuse(&BM25, &DENSE, w, 60.0, 10);
        assert_eq!(order(&f), "ABCD");
        assert_eq!(f[3].bm25, None);
        assert_eq!(f[3].dense, Some((2, 0.8)));
    }

    #[test]
    fn english_query_lets_confident_dense_promote() {
        let w = weights(&signals(Script::Latin));
        assert!(w.dense > 0.0 && w.bm25 > 0.0);
        let f = fuse(&BM25, &DENSE, w, 60.0, 10);
        // C, first for dense and found by BM25, overtakes A; D (dense only) stays last.
        assert_eq!(order(&f), "CABD");
        assert_eq!(f[0].bm25, Some((3, 3.9)));
        assert_eq!(f[0].dense, Some((1, 0.9)));
    }

    #[test]
    fn bm25_confidence_moves_the_balance() {
        let mut s = signals(Script::Latin);
        s.bm25_coverage = 0.1;
        let weak = weights(&s);
        s.bm25_coverage = 1.0;
        let strong = weights(&s);
        s.bm25_idents = true;
        let ident = weights(&s);
        assert!(weak.bm25 < strong.bm25 && strong.bm25 < ident.bm25);
        // Two lists that disagree completely: weak BM25 loses the top spot, an exact
        // identifier match wins it.
        let b = [('X', 5.0), ('Y', 1.0)];
        let d = [('Y', 0.9), ('X', 0.2)];
        assert_eq!(fuse(&b, &d, weak, 60.0, 1)[0].key, 'Y');
        assert_eq!(fuse(&b, &d, ident, 60.0, 1)[0].key, 'X');
    }

    #[test]
    fn nothing_from_bm25_means_dense_decides_even_for_cjk() {
        let mut s = signals(Script::Cjk);
        s.bm25_found = false;
        let w = weights(&s);
        assert_eq!(order(&fuse(&[], &DENSE, w, 60.0, 10)), "CDBA");
        let mut s = signals(Script::Latin);
        s.dense_available = false;
        assert_eq!(order(&fuse(&BM25, &[], weights(&s), 60.0, 10)), "ABC");
    }

    #[test]
    fn equal_scores_share_a_rank_and_dense_breaks_the_tie() {
        let b = [('P', 2.0), ('Q', 2.0), ('R', 1.0)];
        let d = [('Q', 0.7), ('P', 0.3)];
        let w = weights(&signals(Script::Cjk));
        let f = fuse(&b, &d, w, 60.0, 10);
        assert_eq!(order(&f), "QPR");
        assert_eq!(f[0].bm25, Some((1, 2.0)));
        assert_eq!(f[1].bm25, Some((1, 2.0)));
        assert_eq!(f[2].bm25, Some((3, 1.0)));
    }
}
