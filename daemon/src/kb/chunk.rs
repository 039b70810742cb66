//! [`ParsedDoc`] → [`Chunk`]s small enough to embed, following the document's structure.
//!
//! - A heading closes the running chunk and updates the heading path (a level-2 heading
//!   replaces the previous level-2 and everything below it). Headings are not chunk text:
//!   they travel in [`Chunk::heading`], so a heading with nothing under it makes no chunk.
//! - Paragraphs, list items, table rows and code blocks of one section are packed into a
//!   chunk up to `max_tokens`; blocks are joined with a newline and never split unless one
//!   alone is too long.
//! - A block too long for a chunk is cut at sentence ends (`. ! ?` followed by a space;
//!   `。！？；` anywhere), code at line ends; a piece still too long at spaces, and a run
//!   without spaces (Chinese) at characters.
//! - When a section continues in a new chunk, the new chunk starts with the previous
//!   chunk's last sentences, up to `overlap_tokens`, so no passage is cut off from its
//!   context.
//! - A section's short last chunk (under `min_tokens` of new text) takes sentences from the
//!   end of the chunk before it, so a split never leaves a scrap at the end.
//!
//! `count_tokens(chunk.text) <= max_tokens` holds for every chunk: packing adds up the
//! pieces' counts, and a chunk whose joined text still counts more (a tokenizer that is not
//! additive over whitespace) is cut again at characters. Output is deterministic.
//!
//! The work is linear in the document's size, whatever its shape: a block is first cut into
//! segments of at most [`SEGMENT_BYTES`] (at a sentence end, else after whitespace, else at
//! a character), so the tokenizer never sees more than a segment at once, and every later
//! count is of a piece of one segment or of one chunk. A run without any break
//! (`a,a,a,…`) is cut at characters by a search that never looks further ahead than about
//! twice the previous piece.

use std::time::Instant;

use super::{BlockKind, Chunk, ParsedDoc};

/// Largest part of a block tokenized at once, bytes. Far above a chunk (200 tokens of
/// English are about 1 KB), so ordinary paragraphs are not cut by it; it only bounds the
/// work and memory of a count on a block that is megabytes long.
pub const SEGMENT_BYTES: usize = 16 * 1024;

/// Chunking ran past its deadline (see [`chunk_until`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("chunking took too long")]
pub struct DeadlinePassed;

/// Checked between segments and chunks, each a bounded amount of work.
struct Deadline(Option<Instant>);

impl Deadline {
    fn check(&self) -> Result<(), DeadlinePassed> {
        match self.0 {
            Some(t) if Instant::now() >= t => Err(DeadlinePassed),
            _ => Ok(()),
        }
    }
}

/// Chunk budgets, in the embedding model's tokens (without its special tokens).
#[derive(Clone, Debug)]
pub struct ChunkOptions {
    /// Most tokens in one chunk's text. Default 200: all-MiniLM-L6-v2 embeds 256 word-pieces
    /// including [CLS] and [SEP], which leaves room for a heading line in front of the text.
    pub max_tokens: usize,
    /// Tokens of the previous chunk repeated at the start of the next one when a section is
    /// split. Default 30.
    pub overlap_tokens: usize,
    /// A section's last chunk with fewer new tokens than this takes pieces from the end of
    /// the chunk before it. Default 24.
    pub min_tokens: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            max_tokens: 200,
            overlap_tokens: 30,
            min_tokens: 24,
        }
    }
}

/// One piece of chunk text: a whole block or a part of a long one.
#[derive(Clone, Debug)]
struct Piece {
    text: String,
    tokens: usize,
    page: Option<u32>,
    /// Index of the block it comes from (parts of one block are joined without a newline).
    block: usize,
    /// From a code block (its overlap is whole lines).
    code: bool,
}

/// A chunk being built.
#[derive(Default)]
struct Draft {
    pieces: Vec<Piece>,
    tokens: usize,
    /// Tokens of the overlap carried in from the previous chunk (the first piece).
    carried: usize,
}

impl Draft {
    fn push(&mut self, p: Piece) {
        self.tokens += p.tokens;
        self.pieces.push(p);
    }

    /// The pieces joined: a newline between blocks, parts of one block as they were.
    fn raw_text(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.pieces.iter().enumerate() {
            if i > 0 && p.block != self.pieces[i - 1].block {
                s.truncate(s.trim_end().len());
                s.push('\n');
            }
            s.push_str(&p.text);
        }
        s
    }

    fn own_tokens(&self) -> usize {
        self.tokens - self.carried
    }

    /// The draft that continues `prev` in the same section: it starts with `prev`'s last
    /// sentences (or words, or characters) within `overlap` tokens.
    fn continuing(prev: &Draft, overlap: usize, count_tokens: &dyn Fn(&str) -> usize) -> Draft {
        let mut next = Draft::default();
        let Some(last) = prev.pieces.last() else {
            return next;
        };
        if overlap == 0 {
            return next;
        }
        let raw = prev.raw_text();
        let raw = raw.trim_end();
        let mut parts = if last.code {
            raw.split_inclusive('\n').collect()
        } else {
            sentences(raw)
        };
        let mut tail = String::new();
        while let Some(s) = parts.pop() {
            let candidate = format!("{s}{tail}");
            if count_tokens(candidate.trim()) > overlap {
                if tail.is_empty() && !last.code {
                    // One long sentence: take its last words (or characters).
                    tail = tail_within(s, overlap, count_tokens).to_string();
                }
                break;
            }
            tail = candidate;
        }
        let text = tail.trim().to_string();
        if text.is_empty() {
            return next;
        }
        // The tail ends where `prev` ended: keep the separator that followed it.
        let sep = if last.text.ends_with(char::is_whitespace) {
            " "
        } else {
            ""
        };
        let tokens = count_tokens(&text);
        next.carried = tokens;
        next.push(Piece {
            text: format!("{text}{sep}"),
            tokens,
            page: last.page,
            block: last.block,
            code: last.code,
        });
        next
    }
}

/// Split `doc` into chunks (see the module docs).
pub fn chunk(
    doc: &ParsedDoc,
    count_tokens: &dyn Fn(&str) -> usize,
    opts: &ChunkOptions,
) -> Vec<Chunk> {
    // Without a deadline there is nothing to pass: this is always `Ok`.
    chunk_inner(doc, count_tokens, opts, &Deadline(None)).unwrap_or_default()
}

/// [`chunk`], giving up at `deadline`.
pub fn chunk_until(
    doc: &ParsedDoc,
    count_tokens: &dyn Fn(&str) -> usize,
    opts: &ChunkOptions,
    deadline: Instant,
) -> Result<Vec<Chunk>, DeadlinePassed> {
    chunk_inner(doc, count_tokens, opts, &Deadline(Some(deadline)))
}

fn chunk_inner(
    doc: &ParsedDoc,
    count_tokens: &dyn Fn(&str) -> usize,
    opts: &ChunkOptions,
    deadline: &Deadline,
) -> Result<Vec<Chunk>, DeadlinePassed> {
    let max = opts.max_tokens.max(1);
    // The overlap must leave room for new text in every chunk.
    let overlap = opts.overlap_tokens.min(max / 2);
    let pack = Packer {
        count_tokens,
        max,
        overlap,
        min_tokens: opts.min_tokens,
        deadline,
    };
    let mut out: Vec<Chunk> = Vec::new();
    let mut path: Vec<(u8, String)> = Vec::new();
    let mut section: Vec<Piece> = Vec::new();

    for (i, block) in doc.blocks.iter().enumerate() {
        if let BlockKind::Heading { level } = block.kind {
            pack.emit_section(&mut out, &section, &path)?;
            section.clear();
            path.retain(|(l, _)| *l < level);
            path.push((level, block.text.clone()));
            continue;
        }
        let code = block.kind == BlockKind::Code;
        for seg in segments(&block.text, SEGMENT_BYTES, code) {
            deadline.check()?;
            let tokens = count_tokens(seg);
            let units = if tokens <= max - overlap {
                vec![seg.to_string()]
            } else {
                split_units(seg, max - overlap, code, count_tokens)
            };
            let whole = units.len() == 1;
            for text in units {
                section.push(Piece {
                    tokens: if whole {
                        tokens
                    } else {
                        count_tokens(text.trim())
                    },
                    text,
                    page: block.page,
                    block: i,
                    code,
                });
            }
        }
    }
    pack.emit_section(&mut out, &section, &path)?;
    for (i, c) in out.iter_mut().enumerate() {
        c.ordinal = i as u32;
    }
    Ok(out)
}

/// How one document's sections are packed into chunks: the token counter, the budget and
/// overlap, the smallest tail worth its own chunk, and the deadline.
#[derive(Clone, Copy)]
struct Packer<'a> {
    count_tokens: &'a dyn Fn(&str) -> usize,
    max: usize,
    overlap: usize,
    min_tokens: usize,
    deadline: &'a Deadline,
}

impl Packer<'_> {
    /// Pack one section (the pieces under one heading path) into chunks.
    fn emit_section(
        &self,
        out: &mut Vec<Chunk>,
        pieces: &[Piece],
        path: &[(u8, String)],
    ) -> Result<(), DeadlinePassed> {
        let Packer {
            count_tokens,
            max,
            overlap,
            min_tokens,
            deadline,
        } = *self;
        if pieces.is_empty() {
            return Ok(());
        }
        let mut drafts: Vec<Draft> = Vec::new();
        let mut cur = Draft::default();
        for p in pieces {
            if cur.own_tokens() > 0 && cur.tokens + p.tokens > max {
                deadline.check()?;
                let next = Draft::continuing(&cur, overlap, count_tokens);
                drafts.push(std::mem::replace(&mut cur, next));
            }
            cur.push(p.clone());
        }
        if cur.own_tokens() > 0 {
            drafts.push(cur);
        }
        balance_tail(&mut drafts, count_tokens, max, overlap, min_tokens);
        let heading: Vec<String> = path.iter().map(|(_, t)| t.clone()).collect();
        for d in drafts {
            deadline.check()?;
            let page = d.pieces.first().and_then(|p| p.page);
            let text = d.raw_text().trim().to_string();
            if text.is_empty() {
                continue;
            }
            // Guarantee the budget with the real count, whatever the tokenizer does at joins.
            let texts = if count_tokens(&text) > max {
                split_to_fit(&text, max, count_tokens)
            } else {
                vec![text]
            };
            for text in texts {
                out.push(Chunk {
                    ordinal: 0,
                    text,
                    page,
                    heading: heading.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A section's last chunk with little new text takes pieces from the end of the one before
/// (without making that one shorter than itself), then rebuilds its overlap.
fn balance_tail(
    drafts: &mut Vec<Draft>,
    count_tokens: &dyn Fn(&str) -> usize,
    max: usize,
    overlap: usize,
    min_tokens: usize,
) {
    if drafts.len() < 2 || drafts[drafts.len() - 1].own_tokens() >= min_tokens {
        return;
    }
    let (Some(last), Some(mut prev)) = (drafts.pop(), drafts.pop()) else {
        return;
    };
    let mut own: Vec<Piece> = last
        .pieces
        .into_iter()
        .skip(usize::from(last.carried > 0))
        .collect();
    // (Packing is greedy, so the tail never fits into `prev` whole.)
    let mut own_tokens: usize = own.iter().map(|p| p.tokens).sum();
    let first_own = usize::from(prev.carried > 0);
    while own_tokens < min_tokens && prev.pieces.len() > first_own + 1 {
        let Some(t) = prev.pieces.last().map(|p| p.tokens) else {
            break;
        };
        if own_tokens + t + overlap > max || prev.tokens - t < own_tokens + t {
            break;
        }
        if let Some(p) = prev.pieces.pop() {
            prev.tokens -= p.tokens;
            own_tokens += p.tokens;
            own.insert(0, p);
        }
    }
    let mut next = Draft::continuing(&prev, overlap, count_tokens);
    for p in own {
        next.push(p);
    }
    drafts.push(prev);
    drafts.push(next);
}

/// `text` cut into sentences; each keeps its terminator and the whitespace after it, so
/// concatenating them gives `text` back.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end_here = match c {
            '。' | '！' | '？' | '；' => true,
            '.' | '!' | '?' => chars.peek().is_none_or(|(_, n)| n.is_whitespace()),
            _ => false,
        };
        if !end_here {
            continue;
        }
        let mut end = i + c.len_utf8();
        // Closing quotes and brackets belong to the sentence, and so does the space after.
        while let Some(&(j, n)) = chars.peek() {
            if matches!(n, '"' | '\'' | '”' | '’' | '」' | '』' | ')' | '）') || n.is_whitespace()
            {
                end = j + n.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        out.push(&text[start..end]);
        start = end;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Units of `text`, each within `max` tokens: sentences (lines for code); what is still too
/// long is cut at spaces, then at characters. Concatenated, they give `text` back.
fn split_units(
    text: &str,
    max: usize,
    code: bool,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Vec<String> {
    let units: Vec<&str> = if code {
        text.split_inclusive('\n').collect()
    } else {
        sentences(text)
    };
    let mut small: Vec<String> = Vec::new();
    for u in units {
        if count_tokens(u.trim()) <= max {
            small.push(u.to_string());
            continue;
        }
        for w in words(u) {
            if count_tokens(w.trim()) <= max {
                small.push(w.to_string());
            } else {
                small.extend(split_chars(w, max, count_tokens));
            }
        }
    }
    small
}

/// Prose `text` in pieces within `max` tokens: [`split_units`] packed greedily, trimmed.
fn split_to_fit(text: &str, max: usize, count_tokens: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for u in split_units(text, max, false, count_tokens) {
        let candidate = format!("{cur}{u}");
        if !cur.is_empty() && count_tokens(candidate.trim()) > max {
            out.push(cur.trim().to_string());
            cur = u;
        } else {
            cur = candidate;
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

/// `text` cut after each run of whitespace (the whitespace stays with the word before).
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_ws = false;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if prev_ws && !ws {
            out.push(&text[start..i]);
            start = i;
        }
        prev_ws = ws;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The last resort: prefixes within `max` tokens, cut at characters. The count of a window
/// (about twice the previous piece, doubled while it still fits) gives the characters per
/// token; the cut is guessed from it and corrected proportionally until it fits, then moved
/// once towards the limit. So a long run costs a few counts per piece, each of about a piece,
/// never a search over the whole rest.
fn split_chars(text: &str, max: usize, count_tokens: &dyn Fn(&str) -> usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    // Characters in the first window: a token is rarely more than a few characters.
    let mut window = (max.saturating_mul(4)).clamp(16, 4096);
    while !rest.trim().is_empty() {
        // End offsets of the first `window` characters; grow while all of them fit.
        let (bounds, tokens) = loop {
            let bounds: Vec<usize> = rest
                .char_indices()
                .take(window)
                .map(|(i, c)| i + c.len_utf8())
                .collect();
            let end = bounds.last().copied().unwrap_or(rest.len());
            let tokens = count_tokens(rest[..end].trim());
            if end == rest.len() || tokens > max {
                break (bounds, tokens);
            }
            window = window.saturating_mul(2);
        };
        let n = bounds.len();
        let fits = |k: usize| count_tokens(rest[..bounds[k - 1]].trim());
        // `k` characters; at least one per piece, even if a single character counts more
        // than `max` (only possible with max = 0, which `chunk` rules out).
        let (k, _) = most_within(n, tokens, max, fits);
        let cut = bounds.get(k - 1).copied().unwrap_or(rest.len());
        // The next piece is probably about as long: look at twice that.
        window = k.saturating_mul(2).max(16);
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out
}

/// The longest end of `s` within `max` tokens: whole words if the last word fits, else the
/// last characters (by binary search over a bounded end of the last word).
fn tail_within<'a>(s: &'a str, max: usize, count_tokens: &dyn Fn(&str) -> usize) -> &'a str {
    let s = s.trim_end();
    let ws = words(s);
    let mut start = s.len();
    for w in ws.iter().rev() {
        let cand = start - w.len();
        if count_tokens(s[cand..].trim()) > max {
            break;
        }
        start = cand;
    }
    if start < s.len() {
        return s[start..].trim_start();
    }
    // Not even the last word fits: its last characters. Only a bounded end of it is
    // searched, so a word of megabytes costs no more than a short one.
    let last = ws.last().copied().unwrap_or(s).trim();
    let base = s.len() - last.len();
    let starts: Vec<usize> = last
        .char_indices()
        .rev()
        .take(max.saturating_mul(8).clamp(16, 4096))
        .map(|(i, _)| base + i)
        .collect();
    // starts[k - 1]: where the suffix of k characters begins; k as in `split_chars`.
    let n = starts.len();
    if n == 0 {
        return "";
    }
    let suffix = |k: usize| count_tokens(&s[starts[k - 1]..]);
    let (k, c) = most_within(n, suffix(n), max, suffix);
    if c > max {
        return "";
    }
    &s[starts[k - 1]..]
}

/// The most of `n` characters within `max` tokens, where `count(k)` counts `k` of them and
/// `total = count(n)`: guessed from the tokens per character of the whole, corrected
/// proportionally until it fits, then moved once towards the limit when the guess fell
/// short. Returns `k` (at least 1) and the count before that last step, which is over `max`
/// only when a single character is.
fn most_within(
    n: usize,
    total: usize,
    max: usize,
    count: impl Fn(usize) -> usize,
) -> (usize, usize) {
    let mut k = if total <= max {
        n
    } else {
        (n * max / total.max(1)).clamp(1, n)
    };
    let mut c = if k == n { total } else { count(k) };
    while c > max && k > 1 {
        k = (k * max / c.max(1)).clamp(1, k - 1);
        c = count(k);
    }
    if c < max && k < n && c > 0 {
        let up = (k * max / c).min(n);
        if up > k && count(up) <= max {
            k = up;
        }
    }
    (k, c)
}

/// `text` in consecutive parts of at most `limit` bytes (except a single character longer
/// than that), cut after the last sentence end in the window (line end for code), else after
/// the last whitespace, else at a character boundary. Concatenated, they give `text` back.
fn segments(text: &str, limit: usize, code: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > limit {
        let mut end = limit;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let window = &rest[..end];
        let at_break = if code {
            window.rfind('\n').map(|i| i + 1)
        } else {
            let s = sentences(window);
            (s.len() > 1).then(|| window.len() - s[s.len() - 1].len())
        };
        let cut = at_break
            .or_else(|| {
                window
                    .char_indices()
                    .rev()
                    .find(|(_, c)| c.is_whitespace())
                    .map(|(i, c)| i + c.len_utf8())
            })
            .filter(|&c| c > 0)
            .unwrap_or(if end > 0 {
                end
            } else {
                rest.chars().next().map_or(rest.len(), char::len_utf8)
            });
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::{is_cjk, Block};

    /// A deterministic stand-in for a word-piece tokenizer: one token per run of ASCII
    /// letters or digits, per CJK character, and per other non-space character.
    pub(crate) fn count(text: &str) -> usize {
        let mut n = 0;
        let mut in_word = false;
        for c in text.chars() {
            if c.is_ascii_alphanumeric() {
                if !in_word {
                    n += 1;
                }
                in_word = true;
            } else {
                in_word = false;
                if !c.is_whitespace() {
                    n += 1;
                }
            }
        }
        n
    }

    fn block(kind: BlockKind, text: &str, page: Option<u32>) -> Block {
        Block {
            kind,
            text: text.to_string(),
            page,
        }
    }

    fn h(level: u8, text: &str) -> Block {
        block(BlockKind::Heading { level }, text, None)
    }

    fn p(text: &str) -> Block {
        block(BlockKind::Paragraph, text, None)
    }

    fn doc(blocks: Vec<Block>) -> ParsedDoc {
        ParsedDoc {
            title: None,
            blocks,
            pages: None,
        }
    }

    fn opts(max: usize, overlap: usize) -> ChunkOptions {
        ChunkOptions {
            max_tokens: max,
            overlap_tokens: overlap,
            min_tokens: 3,
        }
    }

    #[test]
    fn heading_paths_and_no_empty_chunks() {
        let d = doc(vec![
            p("Preamble before any heading."),
            h(1, "Leave"),
            h(2, "Annual leave"),
            p("Fifteen days a year."),
            p("Ask two weeks ahead."),
            h(2, "Sick leave"),
            p("Tell your manager by ten."),
            h(1, "Expenses"),
            h(3, "Deep"),
            p("Receipts are required."),
            h(1, "Empty section"),
        ]);
        let c = chunk(&d, &count, &ChunkOptions::default());
        let got: Vec<(u32, Vec<&str>, &str)> = c
            .iter()
            .map(|c| {
                (
                    c.ordinal,
                    c.heading.iter().map(String::as_str).collect(),
                    c.text.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, vec![], "Preamble before any heading."),
                (
                    1,
                    vec!["Leave", "Annual leave"],
                    "Fifteen days a year.\nAsk two weeks ahead."
                ),
                (2, vec!["Leave", "Sick leave"], "Tell your manager by ten."),
                (3, vec!["Expenses", "Deep"], "Receipts are required."),
            ]
        );
        assert_eq!(c[1].heading_line().as_deref(), Some("Leave > Annual leave"));
    }

    #[test]
    fn packing_respects_the_limit_and_overlaps() {
        let all: Vec<String> = (0..40)
            .map(|i| format!("Sentence number {i} talks about topic {i}."))
            .collect();
        // Seven tokens per sentence ("Sentence number 12 talks about topic 12 ." = 8).
        let d = doc(vec![h(1, "Policy"), p(&all.join(" "))]);
        let o = opts(50, 10);
        let c = chunk(&d, &count, &o);
        assert!(c.len() >= 7, "{}", c.len());
        for ch in &c {
            assert!(
                count(&ch.text) <= 50,
                "{} tokens: {}",
                count(&ch.text),
                ch.text
            );
            assert_eq!(ch.heading, vec!["Policy".to_string()]);
        }
        // Every later chunk starts with whole sentences that end the one before, within
        // the overlap budget.
        for w in c.windows(2) {
            let parts = sentences(&w[1].text);
            let carried = (1..parts.len())
                .map(|k| parts[..k].concat().trim().to_string())
                .find(|prefix| w[0].text.ends_with(prefix.as_str()));
            let carried =
                carried.unwrap_or_else(|| panic!("no overlap:\n{}\n---\n{}", w[0].text, w[1].text));
            assert!(count(&carried) <= 10, "{carried}");
        }
        // Nothing is lost: every sentence appears in some chunk.
        for s in &all {
            assert!(c.iter().any(|ch| ch.text.contains(s.as_str())), "{s}");
        }
    }

    #[test]
    fn chinese_splits_at_sentence_ends() {
        let s = "员工每年享有十五天带薪年假。";
        let text = s.repeat(20);
        let d = doc(vec![h(1, "年假"), p(&text)]);
        // Each sentence is 15 tokens: the overlap carries one whole sentence.
        let c = chunk(&d, &count, &opts(40, 16));
        assert!(c.len() > 1);
        for ch in &c {
            assert!(count(&ch.text) <= 40);
            assert!(ch.text.ends_with('。'), "{}", ch.text);
            assert!(ch.text.starts_with('员'), "{}", ch.text);
            assert!(!ch.text.contains(' '));
        }
        assert_eq!(c[1].heading, vec!["年假".to_string()]);
    }

    #[test]
    fn oversize_runs_split_at_words_then_characters() {
        let long_word = "x".repeat(30);
        let no_spaces: String = "汉".repeat(100);
        let d = doc(vec![
            p(&format!("{} {long_word} tail", "word ".repeat(60))),
            p(&no_spaces),
        ]);
        // `count` gives a run of letters one token: use a counter that charges per letter
        // to force character-level cuts in the long word too.
        let per_char = |t: &str| t.chars().filter(|c| !c.is_whitespace()).count();
        let c = chunk(&d, &per_char, &opts(20, 0));
        for ch in &c {
            assert!(per_char(&ch.text) <= 20, "{}", ch.text);
        }
        let han: usize = c
            .iter()
            .map(|ch| ch.text.chars().filter(|&c| is_cjk(c)).count())
            .sum();
        assert_eq!(han, 100);
        let c = chunk(&d, &count, &opts(20, 0));
        for ch in &c {
            assert!(count(&ch.text) <= 20);
        }
    }

    #[test]
    fn pages_follow_blocks_and_blocks_join_with_newlines() {
        let d = doc(vec![
            block(BlockKind::Paragraph, &"alpha ".repeat(18), Some(1)),
            block(BlockKind::ListItem, "beta gamma", Some(2)),
            block(BlockKind::Paragraph, &"delta ".repeat(15), Some(2)),
            block(BlockKind::Paragraph, "end", Some(3)),
        ]);
        let o = ChunkOptions {
            max_tokens: 20,
            overlap_tokens: 0,
            min_tokens: 3,
        };
        let c = chunk(&d, &count, &o);
        let got: Vec<(Option<u32>, usize)> = c.iter().map(|c| (c.page, count(&c.text))).collect();
        // Greedy packing gives 18+2 | 15+1; no tail is short.
        assert_eq!(got, vec![(Some(1), 20), (Some(2), 16)]);
        assert!(c[1].text.ends_with("\nend"));
    }

    #[test]
    fn short_tail_takes_sentences_from_the_chunk_before() {
        // Six sentences of four tokens in one paragraph, 20 tokens a chunk: greedy packing
        // would leave 20 | 4; the tail takes one sentence more: 16 | 8.
        let text = "Alpha beta gamma. ".repeat(6);
        let d = doc(vec![p(text.trim())]);
        let o = ChunkOptions {
            max_tokens: 20,
            overlap_tokens: 0,
            min_tokens: 5,
        };
        let c = chunk(&d, &count, &o);
        let got: Vec<usize> = c.iter().map(|c| count(&c.text)).collect();
        assert_eq!(got, vec![16, 8]);
        assert_eq!(c[1].text, "Alpha beta gamma. Alpha beta gamma.");
    }

    #[test]
    fn code_splits_at_lines_and_limit_holds_with_a_real_style_counter() {
        let code: String = (0..60)
            .map(|i| format!("let x{i} = compute({i});\n"))
            .collect();
        let d = doc(vec![block(BlockKind::Code, code.trim_end(), None)]);
        let c = chunk(&d, &count, &opts(60, 10));
        assert!(c.len() > 1);
        for ch in &c {
            assert!(count(&ch.text) <= 60);
            for line in ch.text.lines() {
                assert!(
                    line.starts_with("let x") && line.ends_with(");"),
                    "cut line: {line}"
                );
            }
        }
    }

    #[test]
    fn deterministic() {
        let text = "One. Two three! 四五六。七？ ".repeat(50);
        let d = doc(vec![h(1, "A"), p(&text), h(2, "B"), p(&text)]);
        let a = chunk(&d, &count, &opts(30, 6));
        let b = chunk(&d, &count, &opts(30, 6));
        assert_eq!(a, b);
        assert!(a.iter().all(|c| count(&c.text) <= 30));
    }

    #[test]
    fn sentence_splitting() {
        assert_eq!(
            sentences("Hi there. Version 1.5 is out! 好的。再见？“引号。”End"),
            vec![
                "Hi there. ",
                "Version 1.5 is out! ",
                "好的。",
                "再见？",
                "“引号。”",
                "End"
            ]
        );
    }

    /// `count`, also adding up the calls and the characters it was given.
    fn metered(doc: &ParsedDoc, o: &ChunkOptions) -> (Vec<Chunk>, usize, usize) {
        let calls = std::cell::Cell::new(0usize);
        let chars = std::cell::Cell::new(0usize);
        let metered = |t: &str| {
            calls.set(calls.get() + 1);
            chars.set(chars.get() + t.len());
            count(t)
        };
        let c = chunk(doc, &metered, o);
        (c, calls.get(), chars.get())
    }

    fn prose(bytes: usize) -> String {
        let words = [
            "the", "annual", "leave", "policy", "gives", "staff", "fifteen", "days",
        ];
        let mut s = String::new();
        let mut i = 0usize;
        while s.len() < bytes {
            s.push_str(words[i % words.len()]);
            i += 1;
            s.push_str(if i.is_multiple_of(13) { ". " } else { " " });
        }
        s
    }

    fn comma_run(bytes: usize) -> String {
        "a,".repeat(bytes / 2)
    }

    #[test]
    fn work_is_linear_in_the_document_size() {
        let o = ChunkOptions::default();
        for (name, make) in [
            ("a,a,a,…", comma_run as fn(usize) -> String),
            ("prose", prose),
        ] {
            let n = 40_000;
            let small = doc(vec![p(&make(n))]);
            let large = doc(vec![p(&make(4 * n))]);
            let (cs, calls_s, chars_s) = metered(&small, &o);
            let (cl, calls_l, chars_l) = metered(&large, &o);
            let (rc, rx) = (
                calls_l as f64 / calls_s as f64,
                chars_l as f64 / chars_s as f64,
            );
            eprintln!(
                "{name}: {n} → {} bytes: count calls {calls_s} → {calls_l} ({rc:.2}×), \
                 characters counted {chars_s} → {chars_l} ({rx:.2}×)",
                4 * n
            );
            assert!(
                rc <= 5.0 && rx <= 5.0,
                "{name}: 4× the text took {rc:.1}× the calls ({calls_s} → {calls_l}) and \
                 {rx:.1}× the characters ({chars_s} → {chars_l})"
            );
            // Each character is counted a small, fixed number of times.
            assert!(
                chars_l <= 40 * 4 * n,
                "{name}: {chars_l} characters counted"
            );
            for c in cs.iter().chain(&cl) {
                assert!(count(&c.text) <= o.max_tokens, "{name}");
            }
            // Nothing lost: the chunks' new text covers the document.
            let letters = |cs: &[Chunk]| -> usize {
                cs.iter()
                    .map(|c| c.text.chars().filter(char::is_ascii_alphabetic).count())
                    .sum()
            };
            let doc_letters = make(4 * n)
                .chars()
                .filter(char::is_ascii_alphabetic)
                .count();
            assert!(letters(&cl) >= doc_letters, "{name}");
        }
    }

    #[test]
    fn a_passed_deadline_stops_chunking() {
        let d = doc(vec![p(&comma_run(10_000))]);
        let past = Instant::now();
        assert_eq!(
            chunk_until(&d, &count, &ChunkOptions::default(), past),
            Err(DeadlinePassed)
        );
        let later = Instant::now() + std::time::Duration::from_secs(600);
        let c = chunk_until(&d, &count, &ChunkOptions::default(), later).unwrap();
        assert_eq!(c, chunk(&d, &count, &ChunkOptions::default()));
    }

    #[test]
    fn segments_are_bounded_and_cut_at_breaks() {
        let text = prose(100_000);
        let segs = segments(&text, 1000, false);
        assert_eq!(segs.concat(), text);
        for s in &segs[..segs.len() - 1] {
            assert!(s.len() <= 1000 && s.len() > 500, "{}", s.len());
            assert!(s.ends_with(". "), "{s:?}");
        }
        let words = "word ".repeat(1000);
        let segs = segments(&words, 998, false);
        assert_eq!(segs.concat(), words);
        assert!(segs.iter().all(|s| s.len() <= 998 && s.ends_with(' ')));
        let han = "汉".repeat(1000);
        let segs = segments(&han, 1000, false);
        assert_eq!(segs.concat(), han);
        assert!(segs.iter().all(|s| s.len() <= 1000 && !s.is_empty()));
        let code = "let x = 1;\n".repeat(200);
        let segs = segments(&code, 100, true);
        assert_eq!(segs.concat(), code);
        assert!(segs.iter().all(|s| s.ends_with(";\n")));
        assert_eq!(segments("", 10, false), vec![""]);
    }

    #[test]
    fn long_blocks_keep_the_overlap_and_the_limit() {
        // A paragraph larger than a segment: chunks still overlap across segment cuts.
        let text = prose(3 * SEGMENT_BYTES);
        let d = doc(vec![p(&text)]);
        let c = chunk(&d, &count, &opts(60, 10));
        assert!(c.len() > 10);
        for w in c.windows(2) {
            assert!(count(&w[1].text) <= 60 && count(&w[0].text) <= 60);
            let first = w[1].text.split(". ").next().unwrap_or("");
            assert!(
                w[0].text.contains(first),
                "no overlap:\n{}\n---\n{}",
                w[0].text,
                w[1].text
            );
        }
        // A run without breaks carries its last characters into the next chunk.
        let per_char = |t: &str| t.chars().filter(|c| !c.is_whitespace()).count();
        let d = doc(vec![p(&comma_run(2000))]);
        let c = chunk(&d, &per_char, &opts(50, 10));
        for w in c.windows(2) {
            assert!(per_char(&w[1].text) <= 50);
            let carried: String = w[1].text.chars().take(10).collect();
            assert!(
                w[0].text.ends_with(&carried),
                "{} | {}",
                w[0].text,
                w[1].text
            );
        }
    }

    /// Chunking throughput on 1, 4 and 16 MiB of the worst case and of prose, with the real
    /// tokenizer when `EDGESEEK_BENCH_TOKENIZER` names a tokenizer.json (else the test
    /// counter): `cargo test --release --lib kb::chunk::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench() {
        let tok = std::env::var("EDGESEEK_BENCH_TOKENIZER").ok().map(|f| {
            let mut t = tokenizers::Tokenizer::from_file(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
            // As the daemon counts: the file's truncation and padding would cap the counts.
            t.with_truncation(None)
                .unwrap_or_else(|e| panic!("{f}: {e}"))
                .with_padding(None);
            t
        });
        let sizes: Vec<usize> = std::env::var("EDGESEEK_BENCH_MIB")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 4, 16]);
        let cpu = || {
            use nix::sys::resource::{getrusage, UsageWho};
            getrusage(UsageWho::RUSAGE_THREAD).map_or(0.0, |u| {
                let t = u.user_time() + u.system_time();
                t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
            })
        };
        let real = |t: &str| -> usize {
            tok.as_ref()
                .and_then(|k| k.encode_fast(t, false).ok())
                .map_or(0, |e| e.len())
        };
        let counter: &dyn Fn(&str) -> usize = if tok.is_some() { &real } else { &count };
        for mib in sizes {
            for (name, make) in [
                ("a,a,a,…", comma_run as fn(usize) -> String),
                ("prose", prose),
            ] {
                let d = doc(vec![p(&make(mib << 20))]);
                let (t, c0) = (Instant::now(), cpu());
                let c = chunk(&d, counter, &ChunkOptions::default());
                let (s, cs) = (t.elapsed().as_secs_f64(), cpu() - c0);
                let mb = (mib << 20) as f64 / 1e6;
                eprintln!(
                    "{mib:>2} MiB {name:<8} {:>8} chunks  wall {s:>7.2} s {:>6.2} MB/s  \
                     cpu {cs:>7.2} s {:>6.2} MB/s",
                    c.len(),
                    mb / s,
                    mb / cs
                );
            }
        }
    }
}
