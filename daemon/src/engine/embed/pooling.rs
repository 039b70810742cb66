//! Pooling of token vectors into one sentence vector, and L2 normalisation.

/// How token vectors become one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Average over the tokens the attention mask covers.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over the covered tokens.
    Max,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }
}

/// Pool token vectors (`hidden` is `[batch, seq, dim]`, row-major) into one vector per row.
/// Row `r` covers positions `0..lens[r]` (inputs are right-padded).
pub fn pool(
    hidden: &[f32],
    seq: usize,
    dim: usize,
    lens: &[usize],
    mode: Pooling,
) -> Vec<Vec<f32>> {
    lens.iter()
        .enumerate()
        .map(|(r, &len)| {
            let len = len.min(seq);
            let row = &hidden[r * seq * dim..(r + 1) * seq * dim];
            let mut v = vec![0f32; dim];
            match mode {
                Pooling::Cls => {
                    if len > 0 {
                        v.copy_from_slice(&row[..dim]);
                    }
                }
                Pooling::Mean => {
                    for tok in row[..len * dim].chunks_exact(dim) {
                        for (a, x) in v.iter_mut().zip(tok) {
                            *a += x;
                        }
                    }
                    // sentence-transformers clamps the count at 1e-9: an empty row stays 0.
                    let n = (len as f32).max(1e-9);
                    v.iter_mut().for_each(|a| *a /= n);
                }
                Pooling::Max => {
                    if len > 0 {
                        v.fill(f32::NEG_INFINITY);
                        for tok in row[..len * dim].chunks_exact(dim) {
                            for (a, x) in v.iter_mut().zip(tok) {
                                *a = a.max(*x);
                            }
                        }
                    }
                }
            }
            v
        })
        .collect()
}

/// Scale `v` to unit length (torch's `F.normalize`: a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn mean_pooling_ignores_padding() {
        // Two rows, seq 3, dim 2; row 1 has one valid token, then padding full of junk.
        let hidden = [
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0, // row 0: three tokens
            7.0, 8.0, 100.0, 100.0, -50.0, 9.0, // row 1: one token + padding
        ];
        let out = pool(&hidden, 3, 2, &[3, 1], Pooling::Mean);
        assert!(close(&out[0], &[3.0, 4.0]), "{:?}", out[0]);
        assert!(close(&out[1], &[7.0, 8.0]), "{:?}", out[1]);
    }

    #[test]
    fn cls_and_max_pooling() {
        let hidden = [1.0, -2.0, 3.0, -4.0, 99.0, 99.0];
        assert!(close(
            &pool(&hidden, 3, 2, &[2], Pooling::Cls)[0],
            &[1.0, -2.0]
        ));
        // The padded third token (99) must not win the max.
        assert!(close(
            &pool(&hidden, 3, 2, &[2], Pooling::Max)[0],
            &[3.0, -2.0]
        ));
    }

    #[test]
    fn empty_row_pools_to_zero() {
        let hidden = [5.0, 5.0];
        for mode in [Pooling::Mean, Pooling::Cls, Pooling::Max] {
            assert_eq!(pool(&hidden, 1, 2, &[0], mode)[0], vec![0.0, 0.0]);
        }
    }

    #[test]
    fn normalisation() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!(close(&v, &[0.6, 0.8]));
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }
}
