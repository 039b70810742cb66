//! `edgeseek bench`: decode speed, time to first token and batched throughput of the
//! scheduler, with the keys of `scripts/bench_genai.py` so the two compare directly.
//!
//! Everything goes through [`Scheduler`], the path the API serves. Prompts are random ids
//! in `[1000, 20000)` (clipped to the vocabulary, fixed seed), decoding is greedy and
//! `min_tokens = max_tokens`, so EOS never ends a stream early. The scheduler streams text,
//! not token timestamps, so decode-only rates are taken by difference: a run of `N` tokens
//! minus a run of 1 token with the same prompts, over `N - 1` tokens per stream.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::engine::{GenerateRequest, Prompt, Scheduler, SchedulerError};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Submit(#[from] SchedulerError),
    #[error("generation failed: {0}")]
    Generate(String),
    #[error("--decode-tokens must be at least 2 and --streams must name at least one count")]
    Args,
}

pub struct BenchArgs {
    pub decode_tokens: usize,
    pub prompt_len: usize,
    pub streams: Vec<usize>,
    pub seed: u64,
}

#[derive(Serialize)]
pub struct Detail {
    pub wall_s: f64,
    pub first_token_wall_s: f64,
    pub steps: usize,
}

#[derive(Serialize)]
pub struct BenchReport {
    pub decode_tokens: usize,
    pub prompt_len: usize,
    pub single_decode_tok_s: f64,
    pub ttft_s: f64,
    pub ttft_runs_s: Vec<f64>,
    /// TTFT for a long prompt whose first 7/8 were seen before (prefix cache warm).
    pub ttft_s_shared_prefix: f64,
    pub prefix_reused_tokens: u64,
    pub aggregate_tok_s: BTreeMap<String, f64>,
    pub aggregate_tok_s_incl_prefill: BTreeMap<String, f64>,
    pub aggregate_detail: BTreeMap<String, Detail>,
    pub early_stop_streams: usize,
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Random prompt ids, as `bench_genai.py` draws them.
fn prompt_ids(rng: &mut ChaCha8Rng, len: usize, vocab: usize) -> Vec<u32> {
    let (mut lo, mut hi) = (1000usize, 20000usize);
    if hi > vocab {
        lo = lo.min(vocab / 4);
        hi = vocab;
    }
    (0..len).map(|_| rng.random_range(lo..hi) as u32).collect()
}

fn request(ids: Vec<u32>, tokens: usize) -> GenerateRequest {
    GenerateRequest::greedy_exact(Prompt::Ids(ids), tokens)
}

/// Submit one request per prompt at once; wall seconds until the last finished, and the
/// number of streams that ended before `tokens`.
fn run_streams(
    sched: &Scheduler,
    prompts: &[Vec<u32>],
    tokens: usize,
) -> Result<(f64, usize), BenchError> {
    let t = Instant::now();
    let handles = prompts
        .iter()
        .map(|p| sched.submit(request(p.clone(), tokens)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut early = 0;
    for h in handles {
        let out = h.wait().map_err(BenchError::Generate)?;
        if out.completion_tokens < tokens {
            early += 1;
        }
    }
    Ok((t.elapsed().as_secs_f64(), early))
}

pub fn run(sched: &Scheduler, args: &BenchArgs) -> Result<BenchReport, BenchError> {
    if args.decode_tokens < 2 || args.streams.is_empty() {
        return Err(BenchError::Args);
    }
    let spec = sched.spec();
    let vocab = spec.vocab_size;
    let ctx = spec.context_length;
    let n = args.decode_tokens.min(ctx.saturating_sub(17)).max(2);
    let prompt_len = args.prompt_len.min(ctx.saturating_sub(2)).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut early_total = 0;

    // Warm-up: first runs allocate and prepack weights.
    let warm = vec![prompt_ids(&mut rng, 16, vocab)];
    run_streams(sched, &warm, n.min(16))?;

    let single = vec![prompt_ids(&mut rng, 16, vocab)];
    let (one, _) = run_streams(sched, &single, 1)?;
    let (full, early) = run_streams(sched, &single, n)?;
    early_total += early;
    let single_tok_s = (n - 1) as f64 / (full - one).max(1e-9);
    tracing::info!(tok_s = single_tok_s, "single stream");

    let mut ttfts = Vec::new();
    for _ in 0..3 {
        let p = vec![prompt_ids(&mut rng, prompt_len, vocab)];
        ttfts.push(run_streams(sched, &p, 1)?.0);
    }
    let mut sorted = ttfts.clone();
    sorted.sort_by(f64::total_cmp);
    let ttft = sorted[sorted.len() / 2];

    // Same length, but 7/8 of the prompt repeats an earlier one (a long system prompt or RAG
    // context): with the prefix cache only the new tail is prefilled.
    let base = prompt_ids(&mut rng, prompt_len, vocab);
    run_streams(sched, std::slice::from_ref(&base), 1)?;
    let shared = prompt_len - prompt_len / 8;
    let reused_before = sched.stats().prefix_reused_tokens;
    let mut warm_ttfts = Vec::new();
    for _ in 0..3 {
        let mut p = base[..shared].to_vec();
        p.extend(prompt_ids(&mut rng, prompt_len - shared, vocab));
        warm_ttfts.push(run_streams(sched, &[p], 1)?.0);
    }
    warm_ttfts.sort_by(f64::total_cmp);
    let ttft_shared = warm_ttfts[warm_ttfts.len() / 2];
    let reused = sched.stats().prefix_reused_tokens - reused_before;

    let mut agg = BTreeMap::new();
    let mut incl = BTreeMap::new();
    let mut detail = BTreeMap::new();
    for &s in &args.streams {
        let prompts: Vec<Vec<u32>> = (0..s).map(|_| prompt_ids(&mut rng, 16, vocab)).collect();
        let (first, _) = run_streams(sched, &prompts, 1)?;
        let (wall, early) = run_streams(sched, &prompts, n)?;
        early_total += early;
        let decode = (s * (n - 1)) as f64 / (wall - first).max(1e-9);
        tracing::info!(streams = s, tok_s = decode, wall_s = wall, "aggregate");
        agg.insert(s.to_string(), round(decode, 3));
        incl.insert(s.to_string(), round((s * n) as f64 / wall, 3));
        detail.insert(
            s.to_string(),
            Detail {
                wall_s: round(wall, 4),
                first_token_wall_s: round(first, 4),
                steps: n,
            },
        );
    }
    Ok(BenchReport {
        decode_tokens: n,
        prompt_len,
        single_decode_tok_s: round(single_tok_s, 3),
        ttft_s: round(ttft, 4),
        ttft_runs_s: ttfts.iter().map(|&x| round(x, 4)).collect(),
        ttft_s_shared_prefix: round(ttft_shared, 4),
        prefix_reused_tokens: reused,
        aggregate_tok_s: agg,
        aggregate_tok_s_incl_prefill: incl,
        aggregate_detail: detail,
        early_stop_streams: early_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_ids_are_clipped_to_small_vocabularies() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let ids = prompt_ids(&mut rng, 500, 1552);
        assert!(ids.iter().all(|&i| (388..1552).contains(&i)), "{ids:?}");
        let big = prompt_ids(&mut rng, 500, 151_936);
        assert!(big.iter().all(|&i| (1000..20000).contains(&i)));
        let again = prompt_ids(&mut ChaCha8Rng::seed_from_u64(0), 500, 1552);
        assert_eq!(ids, again);
    }
}
