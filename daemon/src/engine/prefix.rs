//! Prefix reuse: keep the KV cache of recent prompts so a new prompt that starts with the same
//! tokens (a long system prompt, the same RAG context) only prefills what differs.
//!
//! Entries are batch-1 caches of whole prompts. A lookup finds the longest common prefix with
//! any entry, rounds it down to a multiple of `block` tokens (short matches are not worth the
//! copy) and leaves at least one prompt token to run, because the first sampled token needs
//! that position's logits. The new sequence gets a *copy* of the prefix — entries are never
//! shared with running sequences, whose caches are moved through ONNX Runtime every step.
//! Prefilling the rest on top of the copied prefix is the same computation as chunked prefill,
//! so the output is identical to a cold prefill.
//!
//! Memory: entries are counted at `tokens × bytes per token` against their own budget
//! (`engine.prefix_cache_mb`), separate from the running batch; least recently used entries
//! are evicted first.

use super::runner::{RunError, Runner, SeqState};

struct Entry {
    ids: Vec<u32>,
    kv: SeqState,
    last_used: u64,
}

/// Tokens of `prompt` that a cached prompt `cached` can supply: the common prefix, leaving
/// one token to run (its logits start generation), rounded down to whole blocks.
pub fn usable_prefix(cached: &[u32], prompt: &[u32], block: usize) -> usize {
    let common = cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let usable = common.min(prompt.len().saturating_sub(1));
    usable - usable % block.max(1)
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: u64,
    bytes_per_token: u64,
    block: usize,
    clock: u64,
    /// Prompt tokens served from the cache (for metrics).
    pub reused_tokens: u64,
}

impl PrefixCache {
    pub fn new(budget_bytes: u64, bytes_per_token: u64, block: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget_bytes,
            bytes_per_token: bytes_per_token.max(1),
            block: block.max(1),
            clock: 0,
            reused_tokens: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget_bytes > 0
    }

    fn used_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.ids.len() as u64 * self.bytes_per_token)
            .sum()
    }

    /// How many leading tokens of `prompt` a cached entry can provide, and which entry.
    fn reusable(&self, prompt: &[u32]) -> (usize, Option<usize>) {
        let mut best = (0, None);
        for (i, e) in self.entries.iter().enumerate() {
            let usable = usable_prefix(&e.ids, prompt, self.block);
            if usable > best.0 {
                best = (usable, Some(i));
            }
        }
        best
    }

    /// A fresh cache for `prompt` holding the longest cached prefix, if one is worth it.
    pub fn lookup(
        &mut self,
        runner: &Runner,
        prompt: &[u32],
    ) -> Result<Option<SeqState>, RunError> {
        if !self.enabled() {
            return Ok(None);
        }
        let (len, idx) = self.reusable(prompt);
        let Some(i) = idx else { return Ok(None) };
        self.clock += 1;
        let e = &mut self.entries[i];
        e.last_used = self.clock;
        let seq = runner.prefix_of(&e.kv, len)?;
        self.reused_tokens += len as u64;
        Ok(Some(seq))
    }

    /// Remember the cache of a fully prefilled `prompt` (copied; `kv` goes on to decode).
    pub fn insert(
        &mut self,
        runner: &Runner,
        prompt: &[u32],
        kv: &SeqState,
    ) -> Result<(), RunError> {
        let bytes = prompt.len() as u64 * self.bytes_per_token;
        if !self.enabled()
            || prompt.len() < self.block
            || bytes > self.budget_bytes
            || kv.past_len < prompt.len()
        {
            return Ok(());
        }
        // An entry that is a prefix of this prompt adds nothing once this one is stored.
        self.entries
            .retain(|e| !(e.ids.len() <= prompt.len() && prompt.starts_with(&e.ids)));
        if self.entries.iter().any(|e| e.ids.starts_with(prompt)) {
            return Ok(());
        }
        while self.used_bytes() + bytes > self.budget_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
        }
        self.clock += 1;
        self.entries.push(Entry {
            ids: prompt.to_vec(),
            kv: runner.prefix_of(kv, prompt.len())?,
            last_used: self.clock,
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::usable_prefix;

    #[test]
    fn common_prefix_rounded_to_blocks() {
        let cached: Vec<u32> = (0..100).collect();
        let mut prompt: Vec<u32> = (0..70).collect();
        prompt.extend([999, 998]);
        assert_eq!(usable_prefix(&cached, &prompt, 16), 64);
        assert_eq!(usable_prefix(&cached, &prompt, 1), 70);
    }

    #[test]
    fn leaves_one_token_to_run() {
        let cached: Vec<u32> = (0..64).collect();
        let prompt: Vec<u32> = (0..64).collect();
        // The whole prompt is cached, but its last position must still be run for logits.
        assert_eq!(usable_prefix(&cached, &prompt, 1), 63);
        assert_eq!(usable_prefix(&cached, &prompt, 16), 48);
    }

    #[test]
    fn no_match() {
        assert_eq!(usable_prefix(&[1, 2, 3], &[4, 5, 6, 7], 1), 0);
        assert_eq!(usable_prefix(&[], &[4, 5], 1), 0);
        assert_eq!(usable_prefix(&[1, 2], &[], 1), 0);
    }
}
