//! The best `k` of a scored list, shared by the rankers (BM25, exact vector scan) and the
//! search that merges their per-collection lists.

/// Keep the `k` highest scores of `v`, best first; ties go to the lower slot so results are
/// deterministic.
pub fn top_k(v: &mut Vec<(u32, f32)>, k: usize) {
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if v.len() > k {
        v.select_nth_unstable_by(k, cmp);
        v.truncate(k);
    }
    v.sort_unstable_by(cmp);
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn keeps_the_best_k_best_first_ties_to_the_lower_slot() {
        let mut v = vec![(0, 0.5), (1, 0.9), (2, 0.5), (3, 0.1), (4, 0.9)];
        top_k(&mut v, 3);
        assert_eq!(v, vec![(1, 0.9), (4, 0.9), (0, 0.5)]);
        let mut short = vec![(7, 0.2), (3, 0.4)];
        top_k(&mut short, 5);
        assert_eq!(short, vec![(3, 0.4), (7, 0.2)]);
    }
}
