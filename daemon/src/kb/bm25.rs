//! Okapi BM25 over one collection's chunks, in memory.
//!
//! Chunks are numbered by *slot* (their position in the collection's in-memory index, assigned
//! in insertion order), so every posting list is sorted by slot without sorting. A removed chunk
//! leaves its postings behind (skipped through the caller's liveness flags) but stops counting
//! in document frequencies and the average length at once, so scores do not drift between
//! compactions.

use std::collections::HashMap;

use super::text::{self, TermKind};
use super::topk::top_k;

/// Term saturation: how quickly repeated occurrences stop adding score.
pub const K1: f32 = 1.2;
/// Length normalisation: 0 ignores chunk length, 1 divides fully by it.
pub const B: f32 = 0.75;

/// Distinct terms of a text with their counts, sorted by term.
pub type TermFreqs = Vec<(String, u32)>;

/// The distinct terms of `text` with their frequencies.
pub fn term_freqs(text: &str) -> TermFreqs {
    let mut counts: HashMap<String, u32> = HashMap::new();
    text::analyze_with(text, |t, _| *counts.entry(t.to_string()).or_insert(0) += 1);
    let mut v: TermFreqs = counts.into_iter().collect();
    v.sort_unstable();
    v
}

/// A query term with its kind and how often the query repeats it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryTerm {
    pub term: String,
    pub kind: TermKind,
    pub count: u32,
}

/// The distinct terms of a query.
pub fn query_terms(query: &str) -> Vec<QueryTerm> {
    let mut out: Vec<QueryTerm> = Vec::new();
    text::analyze_with(query, |t, kind| {
        if let Some(q) = out.iter_mut().find(|q| q.term == t) {
            q.count += 1;
        } else {
            out.push(QueryTerm {
                term: t.to_string(),
                kind,
                count: 1,
            });
        }
    });
    out
}

#[derive(Clone, Copy, Debug)]
struct Posting {
    slot: u32,
    tf: u32,
}

/// Ranked slots with what the fusion needs to judge them.
#[derive(Clone, Debug, Default)]
pub struct Bm25Hits {
    /// (slot, score), best first.
    pub hits: Vec<(u32, f32)>,
    /// Share of the query's idf mass that the best hit contains (0..=1). Query terms this
    /// collection has never seen count as missing: a paraphrase in other words scores low.
    pub top_coverage: f32,
    /// The query has identifier terms (versions, names with digits) and the best hit has
    /// them all.
    pub top_has_idents: bool,
}

#[derive(Default)]
pub struct Bm25 {
    dict: HashMap<Box<str>, u32>,
    postings: Vec<Vec<Posting>>,
    /// Live chunks containing each term.
    df: Vec<u32>,
    /// Terms per slot (dead slots keep theirs; they are never scored).
    len: Vec<u32>,
    live: u32,
    live_len: u64,
}

impl Bm25 {
    pub fn new() -> Bm25 {
        Bm25::default()
    }

    /// Slots added so far (live or not).
    pub fn slots(&self) -> usize {
        self.len.len()
    }

    /// Distinct terms seen.
    pub fn vocabulary(&self) -> usize {
        self.dict.len()
    }

    /// Index the chunk in `slot`, which must be the next slot ([`Bm25::slots`]).
    pub fn add(&mut self, slot: u32, terms: &[(String, u32)]) {
        debug_assert_eq!(slot as usize, self.len.len());
        let mut total = 0u32;
        for (t, tf) in terms {
            let id = match self.dict.get(t.as_str()) {
                Some(&id) => id,
                None => {
                    let id = self.postings.len() as u32;
                    self.dict.insert(t.as_str().into(), id);
                    self.postings.push(Vec::new());
                    self.df.push(0);
                    id
                }
            };
            self.postings[id as usize].push(Posting { slot, tf: *tf });
            self.df[id as usize] += 1;
            total = total.saturating_add(*tf);
        }
        self.len.push(total);
        self.live += 1;
        self.live_len += u64::from(total);
    }

    /// Stop counting the chunk in `slot` (its terms as given to [`Bm25::add`]). The caller
    /// marks the slot dead so its postings are skipped.
    pub fn remove(&mut self, slot: u32, terms: &[(String, u32)]) {
        for (t, _) in terms {
            if let Some(&id) = self.dict.get(t.as_str()) {
                let df = &mut self.df[id as usize];
                *df = df.saturating_sub(1);
            }
        }
        let len = self.len.get(slot as usize).copied().unwrap_or(0);
        self.live = self.live.saturating_sub(1);
        self.live_len = self.live_len.saturating_sub(u64::from(len));
    }

    fn idf(&self, df: u32) -> f32 {
        // Lucene's variant: always positive, so a term in most chunks still counts a little.
        let n = self.live as f32;
        let df = df as f32;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// The `depth` best live slots for `query`. `alive[slot]` says whether a slot counts.
    pub fn search(&self, query: &[QueryTerm], alive: &[bool], depth: usize) -> Bm25Hits {
        if self.live == 0 || query.is_empty() || depth == 0 {
            return Bm25Hits::default();
        }
        let avg = (self.live_len as f32 / self.live as f32).max(1.0);
        let mut scores = vec![0f32; self.len.len()];
        let mut touched: Vec<u32> = Vec::new();
        // (term id, idf) of the query terms the collection knows.
        let mut known: Vec<(Option<u32>, f32)> = Vec::with_capacity(query.len());
        for q in query {
            let id = self.dict.get(q.term.as_str()).copied();
            let df = id.map(|i| self.df[i as usize]).unwrap_or(0);
            let idf = self.idf(df);
            known.push((id.filter(|_| df > 0), idf));
            let Some(id) = id.filter(|_| df > 0) else {
                continue;
            };
            let w = idf * q.count as f32;
            for p in &self.postings[id as usize] {
                let s = p.slot as usize;
                if !alive.get(s).copied().unwrap_or(false) {
                    continue;
                }
                let tf = p.tf as f32;
                let norm = K1 * (1.0 - B + B * self.len[s] as f32 / avg);
                if scores[s] == 0.0 {
                    touched.push(p.slot);
                }
                scores[s] += w * tf * (K1 + 1.0) / (tf + norm);
            }
        }
        let mut hits: Vec<(u32, f32)> = touched.iter().map(|&s| (s, scores[s as usize])).collect();
        top_k(&mut hits, depth);
        let Some(&(best, _)) = hits.first() else {
            return Bm25Hits::default();
        };
        let total: f32 = known.iter().map(|k| k.1).sum();
        let mut covered = 0f32;
        let mut idents = 0usize;
        let mut idents_found = 0usize;
        for (q, (id, idf)) in query.iter().zip(&known) {
            let has = id.is_some_and(|id| {
                self.postings[id as usize]
                    .binary_search_by_key(&best, |p| p.slot)
                    .is_ok()
            });
            if has {
                covered += idf;
            }
            if q.kind == TermKind::Ident {
                idents += 1;
                idents_found += usize::from(has);
            }
        }
        Bm25Hits {
            hits,
            top_coverage: if total > 0.0 { covered / total } else { 0.0 },
            top_has_idents: idents > 0 && idents_found == idents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(texts: &[&str]) -> (Bm25, Vec<bool>) {
        let mut b = Bm25::new();
        for (i, t) in texts.iter().enumerate() {
            b.add(i as u32, &term_freqs(t));
        }
        (b, vec![true; texts.len()])
    }

    fn ranked(b: &Bm25, alive: &[bool], q: &str) -> Vec<u32> {
        b.search(&query_terms(q), alive, 10)
            .hits
            .iter()
            .map(|h| h.0)
            .collect()
    }

    #[test]
    fn english_ranking_prefers_rare_terms_and_short_chunks() {
        let (b, alive) = index(&[
            "The office is open from nine to five on weekdays.",
            "Employees accrue annual leave at two days per month of service.",
            "Annual leave requests go to your manager; unused leave expires in March.",
            "The cafeteria serves lunch from noon. The office kitchen has coffee.",
        ]);
        let r = ranked(&b, &alive, "how do I request annual leave?");
        assert_eq!(r[..2], [2, 1], "{r:?}");
        assert!(!r.contains(&0) && !r.contains(&3), "{r:?}");
        // Inflections meet through the stemmer.
        assert_eq!(ranked(&b, &alive, "employee accruing")[0], 1);
        assert!(ranked(&b, &alive, "submarine").is_empty());
    }

    #[test]
    fn chinese_ranking_uses_jieba_words() {
        let (b, alive) = index(&[
            "员工每年享有十五天带薪年假，年假需提前两周申请。",
            "报销差旅费用需要提交发票和审批单。",
            "公司的VPN密码每九十天必须重置一次。",
            "新员工入职培训安排在第一周。",
        ]);
        assert_eq!(ranked(&b, &alive, "年假有多少天？")[0], 0);
        assert_eq!(ranked(&b, &alive, "怎么重置VPN密码")[0], 2);
        assert_eq!(ranked(&b, &alive, "差旅报销需要什么")[0], 1);
        // A stopword-only query finds nothing rather than everything.
        assert!(ranked(&b, &alive, "的了吗").is_empty());
    }

    #[test]
    fn removed_chunks_vanish_and_stop_counting() {
        let texts = ["alpha beta", "alpha gamma", "delta"];
        let (mut b, mut alive) = index(&texts);
        let before = b.search(&query_terms("alpha"), &alive, 10);
        assert_eq!(before.hits.len(), 2);
        b.remove(0, &term_freqs(texts[0]));
        alive[0] = false;
        let after = b.search(&query_terms("alpha"), &alive, 10);
        assert_eq!(after.hits.iter().map(|h| h.0).collect::<Vec<_>>(), [1]);
        // df(alpha) went 2 → 1 of N 3 → 2: the idf changes with it.
        assert!(after.hits[0].1 != before.hits[1].1);
    }

    #[test]
    fn coverage_and_identifiers_of_the_top_hit() {
        let (b, alive) = index(&[
            "libtasn1 4.19 fixes CVE-2021-46848 in ASN.1 parsing",
            "parsing configuration files",
        ]);
        let h = b.search(&query_terms("CVE-2021-46848 libtasn1"), &alive, 10);
        assert_eq!(h.hits[0].0, 0);
        assert!(h.top_has_idents);
        assert!((h.top_coverage - 1.0).abs() < 1e-6, "{}", h.top_coverage);
        // One known word out of three: low coverage.
        let h = b.search(&query_terms("parsing wombat kangaroo"), &alive, 10);
        assert!(h.top_coverage < 0.5, "{}", h.top_coverage);
        assert!(!h.top_has_idents);
    }
}
