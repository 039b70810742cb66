//! Dense vectors: a contiguous row-major `f32` matrix, the dot product, and the exact scan.
//!
//! Vectors are L2-normalised, so the dot product is the cosine similarity and "nearest" means
//! "largest dot product". The dot product is plain Rust written so the compiler vectorises it
//! (16 independent accumulators, no bounds checks in the loop); on x86-64 a second copy is
//! compiled for AVX2 + FMA and picked at run time when the CPU has them. No nightly features.

use std::sync::OnceLock;

/// Rows of `dim` floats, one per slot.
#[derive(Clone, Debug, Default)]
pub struct Matrix {
    dim: usize,
    data: Vec<f32>,
}

impl Matrix {
    pub fn new(dim: usize) -> Matrix {
        Matrix {
            dim,
            data: Vec::new(),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rows(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Append a row (`v.len()` must be `dim`).
    pub fn push(&mut self, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        self.data.extend_from_slice(v);
    }

    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Memory held by the rows.
    pub fn bytes(&self) -> usize {
        self.data.capacity() * 4
    }
}

/// L2-normalise in place. Returns false (leaving `v` alone) for a zero or non-finite vector.
pub fn normalize(v: &mut [f32]) -> bool {
    let n2: f32 = v.iter().map(|x| x * x).sum();
    if !n2.is_finite() || n2 <= 0.0 {
        return false;
    }
    let inv = 1.0 / n2.sqrt();
    v.iter_mut().for_each(|x| *x *= inv);
    true
}

const LANES: usize = 16;

// One body, two instantiations: plain (multiply then add) for any CPU, and fused multiply-add
// for the AVX2 + FMA copy (`mul_add` without hardware FMA would be a slow libm call).
macro_rules! dot_body {
    ($a:expr, $b:expr, $madd:expr) => {{
        let (a, b) = ($a, $b);
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; LANES];
        let mut ca = a.chunks_exact(LANES);
        let mut cb = b.chunks_exact(LANES);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..LANES {
                acc[i] = $madd(x[i], y[i], acc[i]);
            }
        }
        let mut tail = 0f32;
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            tail += x * y;
        }
        // Pairwise reduction keeps the lanes independent until the end.
        let mut w = LANES;
        while w > 1 {
            w /= 2;
            for i in 0..w {
                acc[i] += acc[i + w];
            }
        }
        acc[0] + tail
    }};
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_body!(a, b, |x: f32, y: f32, acc: f32| acc + x * y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_body!(a, b, |x: f32, y: f32, acc: f32| x.mul_add(y, acc))
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2_entry(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: this entry point is only installed in `DOT` after `is_x86_feature_detected!`
    // confirmed AVX2 and FMA on this CPU; the function itself is safe slice code.
    unsafe { dot_avx2_fma(a, b) }
}

type DotFn = fn(&[f32], &[f32]) -> f32;

fn dot_impl() -> DotFn {
    static DOT: OnceLock<DotFn> = OnceLock::new();
    *DOT.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return dot_avx2_entry as DotFn;
        }
        dot_portable as DotFn
    })
}

/// The dot product of two vectors (of equal length; extra elements of the longer are ignored).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_impl()(a, b)
}

/// A function pointer to the dot product, for hot loops (saves the `OnceLock` check per call).
#[inline]
pub fn dot_fn() -> DotFn {
    dot_impl()
}

/// The `k` rows with the largest dot product with `q` among rows `from..` for which
/// `alive(row)` holds, best first.
pub fn exact_top(m: &Matrix, q: &[f32], from: usize, alive: &[bool], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let dot = dot_fn();
    let mut all: Vec<(u32, f32)> = Vec::with_capacity(m.rows().saturating_sub(from));
    for i in from..m.rows() {
        if alive.get(i).copied().unwrap_or(false) {
            all.push((i as u32, dot(m.row(i), q)));
        }
    }
    super::topk::top_k(&mut all, k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn dot_matches_naive_for_all_lengths_and_both_paths() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for n in [0, 1, 5, 15, 16, 17, 31, 64, 383, 384, 385] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let want = naive(&a, &b);
            for (name, got) in [
                ("dispatch", dot(&a, &b)),
                ("portable", dot_portable(&a, &b)),
            ] {
                assert!(
                    (f64::from(got) - want).abs() < 1e-4,
                    "{name} n={n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn exact_top_skips_dead_rows_and_orders_best_first() {
        let mut m = Matrix::new(2);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        for v in [[1.0, 0.0], [0.0, 1.0], [h, h], [-1.0, 0.0]] {
            m.push(&v);
        }
        let alive = [true, false, true, true];
        let top = exact_top(&m, &[0.0, 1.0], 0, &alive, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 0]);
        let tail = exact_top(&m, &[1.0, 0.0], 2, &alive, 5);
        assert_eq!(tail.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn normalize_refuses_zero_and_nan() {
        let mut v = [3.0, 4.0];
        assert!(normalize(&mut v));
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(!normalize(&mut [0.0, 0.0]));
        assert!(!normalize(&mut [f32::NAN, 1.0]));
    }
}
