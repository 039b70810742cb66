//! Logits → next token.
//!
//! The sampler turns one row of model logits into the next token id. It is
//! called once per generated token at vocabularies of ~152k entries, so the
//! hot paths are written to be linear, allocation-free after warm-up, and to
//! avoid sorting the whole vocabulary.
//!
//! # Processing order
//!
//! 1. `logit_bias` is added to the raw logits (OpenAI semantics).
//! 2. Penalties, applied only to ids that were actually seen:
//!    * `repetition_penalty` (HF / onnxruntime-genai): every distinct id of
//!      `prompt ∪ generated` gets `logit > 0 ? logit / p : logit * p`, once;
//!    * `presence_penalty` (OpenAI): every distinct id of `generated` gets `-= p`;
//!    * `frequency_penalty` (OpenAI): every id of `generated` gets `-= f * count`.
//! 3. If `temperature == 0`: argmax (ties resolve to the lowest id). Done.
//! 4. Otherwise: divide by `temperature` → `top_k` → softmax → `top_p` →
//!    `min_p` (relative to the most likely token) → renormalise → draw with a
//!    ChaCha8 RNG seeded from `seed` (or OS entropy when `seed` is `None`).
//!
//! # Performance notes
//!
//! * The processed logits live in one reusable `Vec<f32>` owned by the
//!   [`Sampler`]; a second reusable `(id, weight)` buffer holds candidates
//!   for top-k / top-p. Neither is reallocated once it reached vocab size.
//! * Greedy decoding without bias/penalties touches only the input row: one
//!   argmax pass, plus the log-sum-exp pass that [`Sampled::logprob`] needs.
//!   Softmax sums use a branch-free polynomial `exp` (f32 precision) so the
//!   loops auto-vectorise; libm `expf` per entry dominated the cost.
//! * Penalties need no count map at all: the repetition penalty and the
//!   presence penalty are applied idempotently (each touched id is *recomputed*
//!   from its biased raw logit, so seeing an id twice has no extra effect), and
//!   the frequency penalty is additive per occurrence. Cost is
//!   `O(prompt + generated)` with no hashing and no allocation.
//! * `top_k` uses `select_nth_unstable_by` (O(V)), then sorts only k entries.
//! * `top_p` without `top_k` avoids a 152k sort by collecting only the
//!   candidates whose probability is at least a threshold τ and sorting those.
//!   Every excluded token is less likely than every collected one, so if the
//!   collected mass already reaches `top_p` the nucleus lies entirely inside
//!   the collected set and the result is exact. Otherwise τ is lowered
//!   (÷64) and the collection repeated; τ = 0 is the exact full fallback.
//!   Peaked rows (the normal case) collect a few hundred candidates; only a
//!   nearly flat row at high temperature degrades to sorting most of V.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A [`SamplingParams`] value was rejected. `param` names the offending
/// request parameter so the HTTP layer can report it verbatim (OpenAI's
/// `error.param`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{param}`: {reason}")]
pub struct SamplerError {
    /// Request parameter name, e.g. `"temperature"` or `"logit_bias"`.
    pub param: &'static str,
    /// What is wrong with it.
    pub reason: InvalidReason,
}

/// Why a sampling parameter was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidReason {
    /// A numeric value is outside its accepted range (or is NaN).
    #[error("must be {expected}, got {value}")]
    OutOfRange {
        /// The rejected value.
        value: f32,
        /// Human-readable accepted range.
        expected: &'static str,
    },
    /// A `logit_bias` entry refers to a token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab_size} tokens")]
    UnknownToken {
        /// The offending token id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
}

/// Per-request sampling configuration (OpenAI-style names and ranges).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// `0` => greedy (argmax; ties -> lowest id).
    pub temperature: f32,
    /// `0` => off.
    pub top_k: usize,
    /// `1.0` => off.
    pub top_p: f32,
    /// `0.0` => off; relative to the probability of the most likely token.
    pub min_p: f32,
    /// `1.0` => off; HF/onnxruntime-genai semantics over prompt+generated ids
    /// (`logit > 0 ? logit / p : logit * p`), each distinct id once.
    pub repetition_penalty: f32,
    /// OpenAI semantics over generated ids: `-= p` if the id occurred.
    pub presence_penalty: f32,
    /// OpenAI semantics over generated ids: `-= f * count`.
    pub frequency_penalty: f32,
    /// Added to logits (OpenAI: -100..=100). Duplicate ids add up.
    pub logit_bias: Vec<(u32, f32)>,
    /// Same seed + same request => same output; `None` => OS entropy.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// The DeepSeek-R1 recommended settings; see [`SamplingParams::r1_defaults`].
    fn default() -> Self {
        Self::r1_defaults()
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding with every other knob off.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }

    /// DeepSeek's recommendation for R1 models (temperature 0.6, top_p 0.95):
    /// greedy decoding makes R1 reasoning loop endlessly.
    pub fn r1_defaults() -> Self {
        Self {
            temperature: 0.6,
            top_p: 0.95,
            ..Self::greedy()
        }
    }

    /// Checks ranges as the OpenAI API does, so bad requests fail with a 400
    /// naming the parameter instead of producing silent garbage.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SamplerError> {
        fn check(
            param: &'static str,
            value: f32,
            ok: bool,
            expected: &'static str,
        ) -> Result<(), SamplerError> {
            // NaN fails every comparison, so it never reaches `ok == true`.
            if ok {
                Ok(())
            } else {
                Err(SamplerError {
                    param,
                    reason: InvalidReason::OutOfRange { value, expected },
                })
            }
        }
        let t = self.temperature;
        check("temperature", t, (0.0..=2.0).contains(&t), "in [0, 2]")?;
        let p = self.top_p;
        check("top_p", p, p > 0.0 && p <= 1.0, "in (0, 1]")?;
        let m = self.min_p;
        check("min_p", m, (0.0..=1.0).contains(&m), "in [0, 1]")?;
        let r = self.repetition_penalty;
        check(
            "repetition_penalty",
            r,
            r > 0.0 && r.is_finite(),
            "a finite number > 0",
        )?;
        for (param, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            check(param, v, (-2.0..=2.0).contains(&v), "in [-2, 2]")?;
        }
        for &(token, bias) in &self.logit_bias {
            if token as usize >= vocab_size {
                return Err(SamplerError {
                    param: "logit_bias",
                    reason: InvalidReason::UnknownToken { token, vocab_size },
                });
            }
            check(
                "logit_bias",
                bias,
                (-100.0..=100.0).contains(&bias),
                "in [-100, 100]",
            )?;
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        // NaN (unvalidated input) is routed to the safe greedy path.
        self.temperature.is_nan() || self.temperature <= 0.0
    }
}

/// The chosen token and its log-probability under the *raw* model
/// distribution (what OpenAI's `logprobs` reports).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    /// Chosen token id.
    pub token: u32,
    /// log-softmax of the raw (unprocessed) logits at `token`.
    pub logprob: f32,
}

/// Stateful sampler for one generation request (owns the RNG stream and the
/// reusable scratch buffers).
pub struct Sampler {
    params: SamplingParams,
    /// Biases sorted by id with duplicates summed, for binary search.
    bias: Vec<(u32, f32)>,
    rng: ChaCha8Rng,
    /// Processed logits, then weights; reused across calls.
    scratch: Vec<f32>,
    /// (id, value) candidates for top-k / top-p; reused across calls.
    cands: Vec<(u32, f32)>,
}

/// Initial nucleus threshold (probability) for the top-p candidate search;
/// at most `1 / TAU` tokens can clear it.
const TOP_P_INITIAL_TAU: f64 = 1e-4;
/// Factor by which the threshold shrinks when the collected mass is short.
const TOP_P_TAU_SHRINK: f64 = 64.0;
/// Below this the threshold is dropped to zero (exact fallback).
const TOP_P_MIN_TAU: f64 = 1e-12;

impl Sampler {
    /// Creates a sampler. Parameters are expected to be validated with
    /// [`SamplingParams::validate`]; out-of-range values never panic here, they
    /// are treated as "off" (penalties) or as greedy (non-positive temperature).
    pub fn new(params: SamplingParams) -> Self {
        let mut bias: Vec<(u32, f32)> = Vec::with_capacity(params.logit_bias.len());
        let mut sorted = params.logit_bias.clone();
        sorted.sort_by_key(|&(id, _)| id);
        for (id, b) in sorted {
            if !b.is_finite() {
                continue;
            }
            match bias.last_mut() {
                Some(last) if last.0 == id => last.1 += b,
                _ => bias.push((id, b)),
            }
        }
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => entropy_rng(),
        };
        Self {
            params,
            bias,
            rng,
            scratch: Vec::new(),
            cands: Vec::new(),
        }
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token.
    ///
    /// `logits` is one row (vocab). `prompt` and `generated` are the ids so far.
    /// Ids outside the row are ignored. NaN logits are treated as `-inf` and
    /// `+inf` as the largest finite value, so a broken row still yields a
    /// token instead of a panic. An empty row yields token 0 with logprob
    /// `-inf` (callers should never pass one).
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> Sampled {
        if logits.is_empty() {
            return Sampled {
                token: 0,
                logprob: f32::NEG_INFINITY,
            };
        }
        let rep = self.params.repetition_penalty;
        let rep_on = rep.is_finite() && rep > 0.0 && rep != 1.0;
        let presence = finite_or_zero(self.params.presence_penalty);
        let frequency = finite_or_zero(self.params.frequency_penalty);
        let has_edits = !self.bias.is_empty() || rep_on || presence != 0.0 || frequency != 0.0;

        if self.params.is_greedy() && !has_edits {
            // Fast path: one pass gives the argmax and the log-sum-exp.
            let (best, lse) = argmax_and_lse(logits);
            return Sampled {
                token: best as u32,
                logprob: sanitize(logits[best]) - lse,
            };
        }

        // 1. copy (sanitised) + bias.
        self.scratch.clear();
        self.scratch.extend(logits.iter().map(|&x| sanitize(x)));
        for &(id, b) in &self.bias {
            if let Some(v) = self.scratch.get_mut(id as usize) {
                *v += b;
            }
        }
        // 2. penalties (idempotent recomputation; see module docs).
        if rep_on {
            for &id in prompt.iter().chain(generated) {
                if let Some(base) = self.biased(logits, id) {
                    self.scratch[id as usize] = repetition(base, rep);
                }
            }
        }
        if presence != 0.0 || frequency != 0.0 {
            for &id in generated {
                if let Some(base) = self.biased(logits, id) {
                    let base = if rep_on { repetition(base, rep) } else { base };
                    self.scratch[id as usize] = base - presence;
                }
            }
            if frequency != 0.0 {
                for &id in generated {
                    if let Some(v) = self.scratch.get_mut(id as usize) {
                        *v -= frequency;
                    }
                }
            }
        }

        let token = if self.params.is_greedy() {
            argmax(&self.scratch)
        } else {
            self.draw()
        };
        let lse = log_sum_exp(logits);
        Sampled {
            token: token as u32,
            logprob: sanitize(logits[token]) - lse,
        }
    }

    /// Raw logit of `id` plus its bias, or `None` if `id` is out of range.
    fn biased(&self, logits: &[f32], id: u32) -> Option<f32> {
        let raw = sanitize(*logits.get(id as usize)?);
        let b = match self.bias.binary_search_by_key(&id, |&(i, _)| i) {
            Ok(i) => self.bias[i].1,
            Err(_) => 0.0,
        };
        Some(raw + b)
    }

    /// Stochastic path over `self.scratch` (processed logits). Returns an index.
    fn draw(&mut self) -> usize {
        let inv_t = 1.0 / self.params.temperature;
        let vocab = self.scratch.len();
        let mut max = f32::NEG_INFINITY;
        for v in self.scratch.iter_mut() {
            *v *= inv_t;
            if *v > max {
                max = *v;
            }
        }
        if max == f32::NEG_INFINITY {
            // Everything is banned/-inf: nothing to sample from; be deterministic.
            return 0;
        }
        // Clamp again: a tiny temperature can overflow finite logits to inf.
        if max.is_infinite() {
            for v in self.scratch.iter_mut() {
                *v = sanitize(*v);
            }
            max = f32::MAX;
        }

        let top_k = self.params.top_k;
        let top_p = self.params.top_p;
        let top_p_on = top_p > 0.0 && top_p < 1.0;
        let min_p = self.params.min_p;
        let min_p_on = min_p > 0.0 && min_p <= 1.0;

        // Candidate list mode (top-k and/or top-p) vs dense mode over scratch.
        let mut listed = false;
        if top_k > 0 && top_k < vocab {
            self.cands.clear();
            self.cands
                .extend(self.scratch.iter().enumerate().map(|(i, &v)| (i as u32, v)));
            self.cands
                .select_nth_unstable_by(top_k - 1, |a, b| by_value_desc(*a, *b));
            self.cands.truncate(top_k);
            listed = true;
        }

        // softmax numerators (the max token has weight exactly 1).
        let mut sum = 0.0f64;
        let weight = |z: f32| fast_exp(z - max);
        if listed {
            for c in self.cands.iter_mut() {
                c.1 = weight(c.1);
                sum += f64::from(c.1);
            }
        } else {
            for v in self.scratch.iter_mut() {
                *v = weight(*v);
                sum += f64::from(*v);
            }
        }

        if top_p_on {
            if listed {
                self.cands.sort_unstable_by(|a, b| by_value_desc(*a, *b));
                truncate_to_nucleus(&mut self.cands, f64::from(top_p) * sum);
            } else {
                self.collect_nucleus(f64::from(top_p), sum);
            }
            listed = true;
        }

        // min_p relative to the max probability; the max weight is 1.0.
        let floor = if min_p_on { min_p } else { 0.0 };
        if listed {
            draw_from(
                &mut self.rng,
                self.cands.iter().map(|&(i, w)| (i as usize, w)),
                floor,
            )
        } else {
            draw_from(
                &mut self.rng,
                self.scratch.iter().copied().enumerate(),
                floor,
            )
        }
    }

    /// Fills `self.cands` with the exact top-p nucleus taken from the dense
    /// weights in `self.scratch` (total mass `sum`), sorted by weight desc.
    fn collect_nucleus(&mut self, top_p: f64, sum: f64) {
        let target = top_p * sum;
        let mut tau = TOP_P_INITIAL_TAU;
        loop {
            let cutoff = (tau * sum) as f32;
            self.cands.clear();
            let mut mass = 0.0f64;
            for (i, &w) in self.scratch.iter().enumerate() {
                if w >= cutoff && w > 0.0 {
                    self.cands.push((i as u32, w));
                    mass += f64::from(w);
                }
            }
            if mass >= target || tau == 0.0 {
                self.cands.sort_unstable_by(|a, b| by_value_desc(*a, *b));
                truncate_to_nucleus(&mut self.cands, target);
                return;
            }
            tau /= TOP_P_TAU_SHRINK;
            if tau < TOP_P_MIN_TAU {
                tau = 0.0;
            }
        }
    }
}

/// Top-k alternatives by raw log-softmax (for OpenAI `top_logprobs`), sorted
/// descending; equal logits are ordered by ascending id.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let lse = log_sum_exp(logits);
    let mut top: Vec<(u32, f32)> = if k <= 64 {
        // Insertion into a small sorted buffer: O(V) comparisons against the
        // current k-th value, no V-sized allocation.
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (i, &x) in logits.iter().enumerate() {
            let x = sanitize(x);
            if top.len() == k && top.last().is_some_and(|&(_, m)| x <= m) {
                continue;
            }
            let pos = top.partition_point(|&(_, v)| v >= x);
            top.insert(pos, (i as u32, x));
            top.truncate(k);
        }
        top
    } else {
        let mut all: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, sanitize(x)))
            .collect();
        all.select_nth_unstable_by(k - 1, |a, b| by_value_desc(*a, *b));
        all.truncate(k);
        all.sort_unstable_by(|a, b| by_value_desc(*a, *b));
        all
    };
    for e in top.iter_mut() {
        e.1 -= lse;
    }
    top
}

/// Seeds from OS entropy; if the OS refuses (should not happen on Linux),
/// falls back to clock + address entropy rather than panicking mid-request.
fn entropy_rng() -> ChaCha8Rng {
    match ChaCha8Rng::try_from_os_rng() {
        Ok(rng) => rng,
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let local = 0u8;
            let addr = &local as *const u8 as u64;
            ChaCha8Rng::seed_from_u64(nanos ^ addr.rotate_left(32))
        }
    }
}

/// NaN → -inf (never chosen), +inf → f32::MAX (keeps softmax finite).
#[inline]
fn sanitize(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::MAX
    } else {
        x
    }
}

fn finite_or_zero(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[inline]
fn repetition(logit: f32, penalty: f32) -> f32 {
    if logit > 0.0 {
        logit / penalty
    } else {
        logit * penalty
    }
}

/// Descending by value, ascending by id on ties (deterministic ordering).
#[inline]
fn by_value_desc(a: (u32, f32), b: (u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// First index of the maximum (ties -> lowest id). `xs` must be non-empty.
fn argmax(xs: &[f32]) -> usize {
    argmax_and_max(xs).0
}

/// `e^x` for `x <= 0`, branch-free so the softmax loops auto-vectorise
/// (libm `expf` is a scalar call and dominated the per-token cost).
/// Range reduction `e^x = 2^n · 2^f`, `f ∈ [-0.5, 0.5]`, with a degree-6
/// Taylor polynomial for `e^(f·ln2)`: relative error ≤ ~1e-5 (from rounding
/// `x·log2 e` for large |x|), far below what logprobs or sampling can notice.
/// Input is clamped to `[-87, 0]`: NaN and -inf give ~0, +inf gives 1.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to integer
                                     // Not `clamp`: it propagates NaN, while `max` maps NaN to -87 (≈ 0).
    #[allow(clippy::manual_clamp)]
    let t = x.max(-87.0).min(0.0) * LOG2E;
    let n = (t + ROUND) - ROUND;
    let f = (t - n) * std::f32::consts::LN_2;
    // e^f for |f| <= ln2/2
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Argmax of the sanitised values (ties -> lowest id) and the maximum.
/// `xs` must be non-empty.
fn argmax_and_max(xs: &[f32]) -> (usize, f32) {
    let mut best = 0;
    let mut m = f32::NEG_INFINITY;
    for (i, &x) in xs.iter().enumerate() {
        // NaN never compares greater, so it is never chosen.
        if x > m {
            m = x;
            best = i;
        }
    }
    (best, sanitize(m))
}

/// Argmax (ties -> lowest id) and log-sum-exp of the sanitised values, in
/// two linear passes.
/// `xs` must be non-empty.
fn argmax_and_lse(xs: &[f32]) -> (usize, f32) {
    let (best, m) = argmax_and_max(xs);
    if m == f32::NEG_INFINITY {
        return (best, f32::NEG_INFINITY);
    }
    // f32 partial sums in independent lanes (vectorisable), combined in f64.
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (acc, &x) in lanes.iter_mut().zip(chunk) {
            // NaN / -inf contribute ~0; +inf (sanitised max) contributes 1.
            *acc += fast_exp(x - m);
        }
    }
    let mut sum: f64 = lanes.iter().map(|&v| f64::from(v)).sum();
    for &x in chunks.remainder() {
        sum += f64::from(fast_exp(x - m));
    }
    (best, m + sum.ln() as f32)
}

fn log_sum_exp(xs: &[f32]) -> f32 {
    argmax_and_lse(xs).1
}

/// Keeps the shortest prefix (of a desc-sorted list) whose mass reaches
/// `target`; the token that crosses the threshold is kept (HF semantics).
fn truncate_to_nucleus(cands: &mut Vec<(u32, f32)>, target: f64) {
    let mut acc = 0.0f64;
    let mut keep = cands.len();
    for (i, &(_, w)) in cands.iter().enumerate() {
        acc += f64::from(w);
        if acc >= target {
            keep = i + 1;
            break;
        }
    }
    cands.truncate(keep.max(1));
}

/// Draws an index proportional to weight among entries with `w >= floor`
/// (and `w > 0`). Falls back to the heaviest entry if nothing qualifies.
fn draw_from<I>(rng: &mut ChaCha8Rng, items: I, floor: f32) -> usize
where
    I: Iterator<Item = (usize, f32)> + Clone,
{
    let keep = |w: f32| w > 0.0 && w >= floor;
    let total: f64 = items
        .clone()
        .filter(|&(_, w)| keep(w))
        .map(|(_, w)| f64::from(w))
        .sum();
    let mut fallback: Option<(usize, f32)> = None;
    if total > 0.0 {
        let mut u = rng.random::<f64>() * total;
        for (i, w) in items.clone() {
            if !keep(w) {
                continue;
            }
            fallback = Some((i, w));
            u -= f64::from(w);
            if u < 0.0 {
                return i;
            }
        }
    }
    // Rounding left `u` marginally >= 0: take the last eligible entry.
    if let Some((i, _)) = fallback {
        return i;
    }
    let mut best: Option<(usize, f32)> = None;
    for (i, w) in items {
        if best.is_none_or(|(_, bw)| w > bw) {
            best = Some((i, w));
        }
    }
    best.map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A greedy sampler with one setting changed.
    fn greedy_with(set: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams::greedy();
        set(&mut p);
        Sampler::new(p)
    }

    fn seeded(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            seed: Some(seed),
            ..SamplingParams::greedy()
        }
    }

    fn run(params: SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        let mut s = Sampler::new(params);
        (0..n).map(|_| s.sample(logits, &[], &[]).token).collect()
    }

    /// Deterministic pseudo-random "model" row of realistic size.
    fn big_row(vocab: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..vocab)
            .map(|_| rng.random::<f32>() * 20.0 - 10.0)
            .collect()
    }

    #[test]
    fn fast_exp_matches_std() {
        let mut x = -90.0f32;
        while x <= 0.0 {
            let (got, want) = (fast_exp(x), x.exp());
            assert!(
                (got - want).abs() <= want * 1e-5 + 1e-37,
                "x={x}: {got} vs {want}"
            );
            x += 0.0137;
        }
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
        assert!(fast_exp(f32::NAN) < 1e-37);
        assert_eq!(fast_exp(f32::INFINITY), 1.0);
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let logits = [0.1, 3.0, -1.0, 3.0, 2.9];
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&logits, &[], &[]).token, 1);
        // Same through the slow path (an inert bias forces it).
        assert_eq!(
            greedy_with(|p| p.logit_bias = vec![(4, 0.0)])
                .sample(&logits, &[], &[])
                .token,
            1
        );
        assert_eq!(
            Sampler::new(SamplingParams::greedy())
                .sample(&[5.0, 5.0, 5.0], &[], &[])
                .token,
            0
        );
    }

    #[test]
    fn logprob_is_raw_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let got = Sampler::new(SamplingParams::greedy()).sample(&logits, &[], &[]);
        assert_eq!(got.token, 2);
        assert!((got.logprob - (3.0 - lse)).abs() < 1e-5);
        // A bias changes the choice but not the reported (raw) logprob.
        let got = greedy_with(|p| p.logit_bias = vec![(0, 100.0)]).sample(&logits, &[], &[]);
        assert_eq!(got.token, 0);
        assert!((got.logprob - (1.0 - lse)).abs() < 1e-5);
    }

    #[test]
    fn non_finite_and_empty_rows_do_not_panic() {
        let logits = [f32::NAN, 1.0, f32::INFINITY, f32::NEG_INFINITY];
        assert_eq!(
            Sampler::new(SamplingParams::greedy())
                .sample(&logits, &[], &[])
                .token,
            2
        );
        assert_eq!(run(seeded(1.0, 1), &logits, 20), vec![2; 20]);
        let empty = Sampler::new(SamplingParams::greedy()).sample(&[], &[], &[]);
        assert_eq!(empty.token, 0);
        let all_banned = [f32::NEG_INFINITY; 4];
        assert_eq!(run(seeded(1.0, 1), &all_banned, 3), vec![0; 3]);
        // Out-of-vocab ids in the history are ignored.
        let mut p = seeded(1.0, 1);
        p.repetition_penalty = 1.5;
        p.frequency_penalty = 1.0;
        let mut s = Sampler::new(p);
        s.sample(&[1.0, 2.0], &[99], &[1_000_000]);
    }

    #[test]
    fn seed_determinism() {
        let logits = big_row(1000, 7);
        let mut p = seeded(1.0, 42);
        p.top_p = 0.9;
        let a = run(p.clone(), &logits, 50);
        let b = run(p.clone(), &logits, 50);
        assert_eq!(a, b);
        p.seed = Some(43);
        let c = run(p, &logits, 50);
        assert_ne!(a, c);
        // The draws are not all the same token, i.e. we really sampled.
        assert!(a.iter().any(|&t| t != a[0]));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = big_row(5000, 3);
        let expected = argmax(&logits) as u32;
        let mut p = seeded(2.0, 9);
        p.top_k = 1;
        assert!(run(p, &logits, 30).iter().all(|&t| t == expected));
    }

    #[test]
    fn top_k_restricts_to_k_best() {
        let logits = [0.0, 5.0, 4.9, 4.8, 0.1];
        let mut p = seeded(2.0, 5);
        p.top_k = 2;
        let draws = run(p, &logits, 300);
        assert!(draws.iter().all(|&t| t == 1 || t == 2));
        assert!(draws.contains(&1) && draws.contains(&2));
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let logits = big_row(151_936, 11);
        let expected = argmax(&logits) as u32;
        let mut p = seeded(1.0, 1);
        p.top_p = 1e-6;
        assert!(run(p.clone(), &logits, 20).iter().all(|&t| t == expected));
        p.top_k = 50; // listed path
        assert!(run(p, &logits, 20).iter().all(|&t| t == expected));
    }

    #[test]
    fn top_p_keeps_exactly_the_nucleus() {
        // probs ~ [0.5, 0.25, 0.125, 0.125] (log2 spaced)
        let l2 = std::f32::consts::LN_2;
        let logits = [3.0 * l2, 2.0 * l2, l2, l2];
        let mut p = seeded(1.0, 77);
        p.top_p = 0.7; // 0.5 < 0.7 <= 0.75 -> tokens {0, 1}
        let draws = run(p.clone(), &logits, 400);
        assert!(draws.iter().all(|&t| t < 2), "{draws:?}");
        assert!(draws.contains(&1));
        p.top_p = 0.5; // exactly reached by token 0
        assert!(run(p, &logits, 100).iter().all(|&t| t == 0));
    }

    #[test]
    fn top_p_threshold_fallback_on_flat_distribution() {
        // A flat 151,936 row: no token clears the initial threshold, so the
        // candidate search must fall back to lower thresholds.
        let logits = vec![0.0f32; 151_936];
        let mut p = seeded(1.0, 3);
        p.top_p = 0.5;
        let draws = run(p, &logits, 40);
        // Nucleus = the lowest half of ids (ties ordered by id).
        assert!(draws.iter().all(|&t| (t as usize) < 75_968 + 1));
        assert!(draws.iter().any(|&t| t > 1000));
    }

    #[test]
    fn min_p_filters_relative_to_max() {
        // probs relative to max: 1.0, 0.5, 0.05
        let logits = [0.0, (0.5f32).ln(), (0.05f32).ln()];
        let mut p = seeded(1.0, 8);
        p.min_p = 0.1;
        let draws = run(p.clone(), &logits, 500);
        assert!(!draws.contains(&2));
        assert!(draws.contains(&0) && draws.contains(&1));
        p.min_p = 0.6;
        assert!(run(p.clone(), &logits, 100).iter().all(|&t| t == 0));
        p.min_p = 0.0; // off: token 2 shows up eventually
        assert!(run(p, &logits, 1000).contains(&2));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        // token 0 (seen, positive) 2.0/4 = 0.5 < token 1 (1.0)
        let logits = [2.0, 1.0, -0.1, -0.2];
        let mut p = SamplingParams::greedy();
        p.repetition_penalty = 4.0;
        let mut s = Sampler::new(p.clone());
        assert_eq!(s.sample(&logits, &[0], &[]).token, 1);
        // Seen in generated counts too, and repeats do not compound.
        assert_eq!(s.sample(&logits, &[], &[0, 0, 0, 0]).token, 1);
        let logits2 = [2.0, 0.6];
        assert_eq!(s.sample(&logits2, &[0, 0, 0], &[0, 0]).token, 1); // 0.5 < 0.6
        let logits3 = [2.0, 0.4];
        assert_eq!(s.sample(&logits3, &[0, 0, 0], &[0, 0]).token, 0); // 0.5 > 0.4 (once)

        // Negative logits are multiplied: -0.1*4 = -0.4 < -0.2.
        let neg = [-0.1, -0.2];
        assert_eq!(s.sample(&neg, &[0], &[]).token, 1);
    }

    #[test]
    fn presence_penalty_applies_once_per_generated_id() {
        let logits = [1.0, 0.5];
        let mut s = greedy_with(|p| p.presence_penalty = 0.6);
        // Only prompt ids: no presence effect.
        assert_eq!(s.sample(&logits, &[0], &[]).token, 0);
        // 1.0 - 0.6 = 0.4 < 0.5
        assert_eq!(s.sample(&logits, &[], &[0]).token, 1);
        // Many occurrences: still only -0.6 (0.4 > 0.3)
        assert_eq!(s.sample(&[1.0, 0.3], &[], &[0, 0, 0, 0]).token, 0);
        // Negative presence penalty encourages repetition.
        assert_eq!(
            greedy_with(|p| p.presence_penalty = -1.0)
                .sample(&[0.0, 0.5], &[], &[0])
                .token,
            0
        );
    }

    #[test]
    fn frequency_penalty_scales_with_count() {
        let logits = [1.0, 0.5];
        let mut s = greedy_with(|p| p.frequency_penalty = 0.2);
        assert_eq!(s.sample(&logits, &[], &[0, 0]).token, 0); // 0.6 > 0.5
        assert_eq!(s.sample(&logits, &[], &[0, 0, 0]).token, 1); // 0.4 < 0.5
        assert_eq!(s.sample(&logits, &[0, 0, 0, 0], &[]).token, 0); // prompt ignored
    }

    #[test]
    fn penalties_compose_in_documented_order() {
        // bias then repetition then presence then frequency:
        // ((1.0 + 1.0) / 2) - 0.5 - 0.25*2 = 0.0 ; competitor 0.05 wins.
        let mut p = SamplingParams::greedy();
        p.logit_bias = vec![(0, 1.0)];
        p.repetition_penalty = 2.0;
        p.presence_penalty = 0.5;
        p.frequency_penalty = 0.25;
        let mut s = Sampler::new(p.clone());
        assert_eq!(s.sample(&[1.0, 0.05], &[], &[0, 0]).token, 1);
        assert_eq!(s.sample(&[1.0, -0.05], &[], &[0, 0]).token, 0);
    }

    #[test]
    fn logit_bias_forces_and_bans() {
        let logits = big_row(2000, 5);
        let best = argmax(&logits) as u32;
        let mut p = seeded(1.0, 4);
        p.logit_bias = vec![(1234, 100.0)];
        assert!(run(p, &logits, 30).iter().all(|&t| t == 1234));
        let got = greedy_with(|p| p.logit_bias = vec![(best, -100.0)])
            .sample(&logits, &[], &[])
            .token;
        assert_ne!(got, best);
        // Banned token never drawn while sampling either.
        let mut p = seeded(1.0, 4);
        p.logit_bias = vec![(0, -100.0)];
        assert!(!run(p, &[0.0, 0.0, 0.0], 500).contains(&0));
    }

    #[test]
    fn sampling_frequencies_match_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        let probs: Vec<f64> = logits.iter().map(|x| f64::from(x.exp() / z)).collect();
        let n = 20_000;
        let draws = run(seeded(1.0, 1234), &logits, n);
        for (id, &p) in probs.iter().enumerate() {
            let freq = draws.iter().filter(|&&t| t as usize == id).count() as f64 / n as f64;
            assert!((freq - p).abs() < 0.02, "token {id}: freq {freq} vs p {p}");
        }
        // Temperature sharpens: at T=0.5 the top token's share grows.
        let draws = run(seeded(0.5, 1234), &logits, n);
        let top = draws.iter().filter(|&&t| t == 2).count() as f64 / n as f64;
        let expected = (6f64).exp() / ((2f64).exp() + (4f64).exp() + (6f64).exp());
        assert!((top - expected).abs() < 0.02, "{top} vs {expected}");
    }

    #[test]
    fn top_logprobs_sorted_and_normalised() {
        let logits = [0.0f32, 3.0, 1.0, 3.0, 2.0];
        let top = top_logprobs(&logits, 3);
        let ids: Vec<u32> = top.iter().map(|e| e.0).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        let lse = logits.iter().map(|x| x.exp()).sum::<f32>().ln();
        assert!((top[0].1 - (3.0 - lse)).abs() < 1e-5);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
        assert_eq!(top_logprobs(&logits, 0), vec![]);
        assert_eq!(top_logprobs(&logits, 10).len(), 5);
        // Large k path agrees with the small-k path.
        let row = big_row(1000, 2);
        let small = top_logprobs(&row, 64);
        let large = top_logprobs(&row, 65);
        assert_eq!(&large[..64], &small[..]);
    }

    #[test]
    fn validate_names_the_param() {
        let ok = SamplingParams::r1_defaults();
        assert_eq!(ok.validate(10), Ok(()));
        assert_eq!(SamplingParams::greedy().validate(10), Ok(()));
        let cases: Vec<(&str, SamplingParams)> = vec![
            (
                "temperature",
                SamplingParams {
                    temperature: 2.5,
                    ..ok.clone()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: f32::NAN,
                    ..ok.clone()
                },
            ),
            (
                "top_p",
                SamplingParams {
                    top_p: 0.0,
                    ..ok.clone()
                },
            ),
            (
                "min_p",
                SamplingParams {
                    min_p: 1.5,
                    ..ok.clone()
                },
            ),
            (
                "repetition_penalty",
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..ok.clone()
                },
            ),
            (
                "presence_penalty",
                SamplingParams {
                    presence_penalty: -2.1,
                    ..ok.clone()
                },
            ),
            (
                "frequency_penalty",
                SamplingParams {
                    frequency_penalty: 3.0,
                    ..ok.clone()
                },
            ),
            (
                "logit_bias",
                SamplingParams {
                    logit_bias: vec![(10, 1.0)],
                    ..ok.clone()
                },
            ),
            (
                "logit_bias",
                SamplingParams {
                    logit_bias: vec![(1, 101.0)],
                    ..ok.clone()
                },
            ),
        ];
        for (param, p) in cases {
            let err = p.validate(10).expect_err(param);
            assert_eq!(err.param, param);
            assert!(err.to_string().contains(param), "{err}");
        }
    }

    #[test]
    fn r1_defaults_values() {
        let p = SamplingParams::r1_defaults();
        assert_eq!((p.temperature, p.top_p, p.top_k), (0.6, 0.95, 0));
        assert_eq!(SamplingParams::default(), p);
    }
}
