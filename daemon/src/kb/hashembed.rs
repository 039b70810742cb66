//! A deterministic stand-in embedder for tests and benchmarks: a hashed bag of words and
//! character trigrams, L2-normalised.
//!
//! Texts that share words (or most letters of a word: typos, inflections) get similar vectors;
//! nothing else is understood. It splits words on anything that is not a letter or digit, so
//! Chinese text without spaces becomes a handful of long "words" that only match verbatim: it
//! says so through [`Embed::covers`], like the real MiniLM model, which is what the fusion
//! needs to see in tests.

use super::{Embed, Script};

#[derive(Clone, Debug)]
pub struct HashEmbed {
    dim: usize,
}

impl HashEmbed {
    pub fn new(dim: usize) -> HashEmbed {
        HashEmbed { dim: dim.max(8) }
    }

    /// The vector of one text.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        let lower = text.to_lowercase();
        let mut any = false;
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            any = true;
            self.add(&mut v, word.as_bytes(), 1.0);
            let chars: Vec<char> = format!("^{word}$").chars().collect();
            for t in chars.windows(3) {
                let tri: String = t.iter().collect();
                self.add(&mut v, tri.as_bytes(), 0.5);
            }
        }
        let mut n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !any || n == 0.0 {
            // Every text gets a unit vector; an empty one (or one whose hashed features
            // cancel out) points along the first axis.
            v.iter_mut().for_each(|x| *x = 0.0);
            v[0] = 1.0;
            n = 1.0;
        }
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    fn add(&self, v: &mut [f32], bytes: &[u8], weight: f32) {
        let h = fnv1a(bytes);
        let i = (h % self.dim as u64) as usize;
        let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
        v[i] += sign * weight;
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Embed for HashEmbed {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn count_tokens(&self, text: &str) -> usize {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .count()
    }
    fn max_tokens(&self) -> usize {
        512
    }
    fn covers(&self, script: Script) -> bool {
        script == Script::Latin
    }
    fn model_id(&self) -> String {
        format!("hash-bow-{}", self.dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::vector::dot;

    #[test]
    fn deterministic_unit_vectors_that_see_shared_words_and_typos() {
        let e = HashEmbed::new(64);
        let a = e.vector("annual leave policy");
        assert_eq!(a, e.vector("Annual LEAVE policy"));
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        let near = dot(&a, &e.vector("anual leave polcy"));
        let far = dot(&a, &e.vector("quarterly revenue report"));
        assert!(near > 0.5 && far < near - 0.3, "{near} {far}");
        assert!(!e.covers(Script::Cjk) && e.covers(Script::Latin));
    }
}
