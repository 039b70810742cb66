//! The enterprise knowledge base: documents → parsed blocks → chunks → (embeddings, keyword
//! postings) in one redb transaction → hybrid search → citations.
//!
//! This file holds the types every stage agrees on; each stage lives in its own module:
//! `parse` (bytes → [`ParsedDoc`]), `chunk` ([`ParsedDoc`] → [`Chunk`]s), and the index,
//! storage and search modules (chunks + vectors → redb and in-memory indexes → hits).

pub mod chunk;
pub mod parse;

use std::fmt;

pub mod base;
pub mod bench;
pub mod bm25;
pub mod fuse;
pub mod hashembed;
pub mod hnsw;
pub mod ingest;
pub mod spool;
pub mod store;
pub mod text;
pub mod topk;
pub mod vector;

pub use base::{
    ChunkInfo, CollectionInfo, DocInfo, Hit, IndexConfig, KbError, KnowledgeBase, NewDocument,
    SearchMode, SearchRequest, SearchTuning,
};
pub use hashembed::HashEmbed;

/// Whether `c` may not appear in a document's file name: control characters (C0, DEL, C1),
/// bidirectional controls (which make `invoice\u{202E}fdp.exe` display as `invoiceexe.pdf`),
/// and other invisible format characters (zero-width spaces and joiners, word joiners, BOM,
/// soft hyphen, line/paragraph separators, tag characters).
fn forbidden_in_filename(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// The rule for a document's file name, shared by the HTTP API and `edgeseek kb ingest`:
/// not blank, and no character from [`forbidden_in_filename`]. `Err` completes the sentence
/// "filename …".
pub fn valid_filename(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("is empty".into());
    }
    if let Some((i, c)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| forbidden_in_filename(*c))
    {
        return Err(format!(
            "must not contain control, bidirectional or invisible characters \
             (U+{:04X} at character {})",
            c as u32,
            i + 1
        ));
    }
    Ok(())
}

/// The document formats the knowledge base accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    Text,
    Markdown,
    Html,
    Pdf,
    Docx,
}

pub const DOCX_MIME: &str =
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

/// The media type of an HTTP `Content-Type` without its parameters, lower-cased
/// (`Text/HTML; charset=utf-8` → `text/html`).
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl DocKind {
    /// From an HTTP `Content-Type` (parameters such as `; charset=utf-8` are ignored).
    pub fn from_content_type(ct: &str) -> Option<DocKind> {
        Some(match media_type(ct).as_str() {
            "text/plain" => DocKind::Text,
            "text/markdown" | "text/x-markdown" => DocKind::Markdown,
            "text/html" | "application/xhtml+xml" => DocKind::Html,
            "application/pdf" => DocKind::Pdf,
            DOCX_MIME => DocKind::Docx,
            _ => return None,
        })
    }

    /// From a file name's extension (used by `edgeseek kb ingest` for local files).
    pub fn from_filename(name: &str) -> Option<DocKind> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" => DocKind::Text,
            "md" | "markdown" => DocKind::Markdown,
            "html" | "htm" | "xhtml" => DocKind::Html,
            "pdf" => DocKind::Pdf,
            "docx" => DocKind::Docx,
            _ => return None,
        })
    }

    pub fn mime(self) -> &'static str {
        match self {
            DocKind::Text => "text/plain",
            DocKind::Markdown => "text/markdown",
            DocKind::Html => "text/html",
            DocKind::Pdf => "application/pdf",
            DocKind::Docx => DOCX_MIME,
        }
    }
}

impl fmt::Display for DocKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocKind::Text => "text",
            DocKind::Markdown => "markdown",
            DocKind::Html => "html",
            DocKind::Pdf => "pdf",
            DocKind::Docx => "docx",
        })
    }
}

/// A collection name: 1-64 letters, digits, `-`, `_`, `.`. API key scopes (`kb:read:C`,
/// `kb:write:C`) name collections by the same rule.
pub fn valid_collection(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|ch| ch.is_alphanumeric() || matches!(ch, '-' | '_' | '.'))
}

/// What a structural block is; the chunker keeps headings as a path and avoids splitting
/// list items and code.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockKind {
    /// A heading; level 1 is the outermost.
    Heading {
        level: u8,
    },
    Paragraph,
    ListItem,
    Code,
    /// A table row or a whole table rendered as text (cells separated by " | ").
    Table,
}

/// One structural unit of a parsed document, in reading order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Block {
    pub kind: BlockKind,
    pub text: String,
    /// 1-based page number (PDF only).
    pub page: Option<u32>,
}

/// A document after parsing: plain text blocks with their structure.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParsedDoc {
    /// The document's own title (HTML `<title>`, PDF/DOCX metadata, first `#` heading), if any.
    pub title: Option<String>,
    pub blocks: Vec<Block>,
    /// Number of pages (PDF only).
    pub pages: Option<u32>,
}

/// A piece of a document small enough to embed, with where it came from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// 0-based position of the chunk within its document.
    pub ordinal: u32,
    pub text: String,
    /// 1-based page where the chunk starts (PDF only).
    pub page: Option<u32>,
    /// Enclosing headings, outermost first.
    pub heading: Vec<String>,
}

impl Chunk {
    /// The heading path as one line ("Leave > Annual leave"), as shown in citations.
    pub fn heading_line(&self) -> Option<String> {
        (!self.heading.is_empty()).then(|| self.heading.join(" > "))
    }
}

/// Turns text into vectors. Implemented by `engine::embed` for real models; tests may use
/// a deterministic stand-in. Vectors are L2-normalised, so a dot product is the cosine.
pub trait Embed: Send + Sync {
    /// One vector per input, in order.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String>;
    /// Vector width.
    fn dim(&self) -> usize;
    /// Tokens `text` takes in the embedding model (for chunk budgets), without special tokens.
    fn count_tokens(&self, text: &str) -> usize;
    /// Longest input the model embeds whole, in tokens, including its special tokens.
    fn max_tokens(&self) -> usize;
    /// Whether the model's training covers text in `script`: the fusion uses this to avoid
    /// trusting a ranker that is blind to the query's language.
    fn covers(&self, script: Script) -> bool;
    /// A name for the model (stored with the vectors so a model change is detected).
    fn model_id(&self) -> String;
}

/// The writing system a query or chunk is mostly in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Script {
    /// Latin letters (English and other Western languages).
    Latin,
    /// Han characters, kana, hangul.
    Cjk,
    /// Anything else (or no letters at all).
    Other,
}

impl Script {
    /// The dominant script of `text`, by letter count. Mixed text counts as CJK when at
    /// least a third of its letters are CJK, since one Han character carries about as much
    /// as a short English word.
    pub fn of(text: &str) -> Script {
        let (mut cjk, mut latin, mut other) = (0usize, 0usize, 0usize);
        for c in text.chars() {
            if is_cjk(c) {
                cjk += 1;
            } else if c.is_ascii_alphabetic() || ('\u{00C0}'..='\u{024F}').contains(&c) {
                latin += 1;
            } else if c.is_alphabetic() {
                other += 1;
            }
        }
        let total = cjk + latin + other;
        if total == 0 {
            Script::Other
        } else if cjk * 3 >= total {
            Script::Cjk
        } else if latin >= other {
            Script::Latin
        } else {
            Script::Other
        }
    }
}

/// Han ideographs (incl. extension A and compatibility), kana, hangul and CJK punctuation.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // hiragana, katakana
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x2FA1F  // extensions B–F, compatibility supplement
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_content_type_and_name() {
        assert_eq!(
            DocKind::from_content_type("text/plain; charset=utf-8"),
            Some(DocKind::Text)
        );
        assert_eq!(DocKind::from_content_type(DOCX_MIME), Some(DocKind::Docx));
        assert_eq!(DocKind::from_content_type("image/png"), None);
        assert_eq!(DocKind::from_filename("a/b/Report.PDF"), Some(DocKind::Pdf));
        assert_eq!(DocKind::from_filename("README"), None);
        for k in [
            DocKind::Text,
            DocKind::Markdown,
            DocKind::Html,
            DocKind::Pdf,
            DocKind::Docx,
        ] {
            assert_eq!(DocKind::from_content_type(k.mime()), Some(k));
        }
    }

    #[test]
    fn script_detection() {
        assert_eq!(Script::of("How many days of annual leave?"), Script::Latin);
        assert_eq!(Script::of("年假有多少天？"), Script::Cjk);
        assert_eq!(Script::of("VPN 密码怎么重置"), Script::Cjk);
        assert_eq!(Script::of("Reset the VPN password (重置)"), Script::Latin);
        assert_eq!(Script::of("12345 !?"), Script::Other);
    }

    #[test]
    fn filenames_with_invisible_or_bidi_characters_are_refused() {
        for ok in [
            "report.pdf",
            "年假制度.docx",
            "a b (2).md",
            "naïve—café.txt",
            "😀.txt",
        ] {
            assert_eq!(valid_filename(ok), Ok(()), "{ok}");
        }
        for bad in [
            "invoice\u{202E}fdp.exe",
            "a\u{202A}b.txt",
            "a\u{2066}b.txt",
            "a\u{2069}b.txt",
            "a\u{200E}.txt",
            "a\u{200F}.txt",
            "a\u{061C}.txt",
            "a\u{200B}.txt",
            "a\u{FEFF}.txt",
            "a\nb.txt",
            "a\u{7}.txt",
            "a\u{9B}.txt",
            "a\u{E0041}.txt",
        ] {
            let e = valid_filename(bad).unwrap_err();
            assert!(e.contains("U+"), "{bad:?}: {e}");
        }
        assert_eq!(
            valid_filename("ab\u{202E}c").unwrap_err(),
            "must not contain control, bidirectional or invisible characters (U+202E at \
             character 3)"
        );
        assert_eq!(valid_filename("  "), Err("is empty".into()));
    }
}
