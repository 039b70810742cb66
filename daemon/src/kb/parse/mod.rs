//! Document bytes → [`ParsedDoc`]: plain text, Markdown, HTML, PDF and DOCX, in English and
//! Chinese.
//!
//! [`parse`] is what the daemon calls. Plain text and Markdown are parsed in the calling
//! process (under `catch_unwind`; both parsers are linear-time). HTML, PDF and DOCX go through
//! a child process (`edgeseek parse-worker`, see [`worker`]) with an address-space and CPU
//! limit, a wall-clock timeout and a cap on its output, because PDF libraries panic or loop on
//! odd files, a DOCX can be a zip bomb and HTML tree building is quadratic on pathological
//! nesting: a parser that crashes, hangs or eats memory costs one upload, never the daemon.
//! [`parse_in_process`] is the parser itself (used by the worker and by tests).
//! [`parse_file`], what ingestion uses, runs every format in the worker, which reads the
//! (spooled) file itself: a runaway parse of any kind is killed at its limits, and the daemon
//! never holds the document's bytes.

mod docx;
mod html;
mod markdown;
mod pdf;
mod text;
pub mod worker;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use super::{Block, BlockKind, DocKind, ParsedDoc};

/// Why a document could not be parsed. Every message is one line, fit for the API's error
/// JSON and the CLI. Serialisable because the worker sends it back to the daemon as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "error", content = "detail", rename_all = "snake_case")]
pub enum ParseError {
    #[error("document too large: {size} > {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("DOCX too large when unpacked: {part} is more than {limit} bytes")]
    UnpackedTooLarge { part: String, limit: u64 },
    /// The document parsed but holds no text.
    #[error("no text found in the {0} document")]
    Empty(DocKind),
    #[error("no text found (scanned PDF? OCR is not supported)")]
    NoPdfText,
    #[error("PDF parse failed: {0}")]
    Pdf(String),
    #[error("PDF is encrypted: remove its password and upload it again")]
    PdfEncrypted,
    #[error("not a DOCX file: {0}")]
    NotDocx(String),
    #[error("DOCX parse failed: {0}")]
    Docx(String),
    /// A parser panicked (a bug or an input it does not handle).
    #[error("{kind} parser failed: {msg}")]
    Panicked { kind: DocKind, msg: String },
    #[error("parser timed out after {0} s")]
    Timeout(u64),
    #[error("parser used more than its {0} s of CPU time")]
    CpuLimit(u64),
    #[error("parser ran out of memory (limit {0} MiB)")]
    OutOfMemory(u64),
    #[error("parser output too large: more than {0} bytes")]
    OutputTooLarge(u64),
    /// The worker process died or answered something unreadable.
    #[error("parser process failed: {0}")]
    Worker(String),
    #[error("cannot start the parser process {exe}: {msg}")]
    Spawn { exe: String, msg: String },
}

/// Limits and the worker executable for [`parse`].
#[derive(Clone, Debug)]
pub struct ParseOptions {
    /// The `edgeseek` binary to run as `edgeseek parse-worker` for PDF and DOCX; `None`: the
    /// current executable (right for the daemon; tests name `CARGO_BIN_EXE_edgeseek`).
    pub worker_exe: Option<PathBuf>,
    /// Wall-clock limit of one worker run; it is killed after this. Default 30 s.
    pub timeout: Duration,
    /// CPU seconds the worker may use (`RLIMIT_CPU`). Default 30.
    pub cpu_seconds: u64,
    /// Address space of the worker (`RLIMIT_AS`), bytes. Default 2 GiB.
    pub max_memory_bytes: u64,
    /// Largest document accepted, bytes. Default 64 MiB.
    pub max_input_bytes: u64,
    /// Largest answer read from the worker (the `ParsedDoc` JSON), bytes. Default 160 MiB:
    /// a 64 MiB text is about as long in JSON, twice that if it is all quotes and
    /// backslashes; more is a document of tiny blocks whose per-block overhead would cost the
    /// daemon far more memory than its text.
    pub max_output_bytes: u64,
    /// Largest unpacked part of a DOCX (`word/document.xml`, styles, …), bytes. Default
    /// 256 MiB: far above real documents, far below what a zip bomb unpacks to.
    pub max_unpacked_bytes: u64,
    /// Charset from the upload's `Content-Type` (`text/plain; charset=gbk`), used for text,
    /// Markdown and HTML that are not valid UTF-8.
    pub charset: Option<String>,
    /// Test hook for the worker (`panic`, `sleep`, `alloc`, `spew`), passed to it as
    /// `EDGESEEK_PARSE_TEST_HOOK`; only the integration tests set it.
    #[doc(hidden)]
    pub test_hook: Option<String>,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            worker_exe: None,
            timeout: Duration::from_secs(30),
            cpu_seconds: 30,
            max_memory_bytes: 2 << 30,
            max_input_bytes: 64 << 20,
            max_output_bytes: 160 << 20,
            max_unpacked_bytes: 256 << 20,
            charset: None,
            test_hook: None,
        }
    }
}

/// Parse a document of `kind`. HTML, PDF and DOCX run in a child process (see the module
/// docs); text and Markdown in this process. Blocking: call it from a blocking thread, not the reactor.
pub fn parse(bytes: &[u8], kind: DocKind, opts: &ParseOptions) -> Result<ParsedDoc, ParseError> {
    check_size(bytes, opts)?;
    match kind {
        DocKind::Html | DocKind::Pdf | DocKind::Docx => {
            worker::run(worker::Input::Bytes(bytes), kind, opts)
        }
        DocKind::Text | DocKind::Markdown => parse_in_process(bytes, kind, opts),
    }
}

/// Parse the document in `path`, of any kind, in a worker process that reads the file
/// itself. Blocking.
pub fn parse_file(
    path: &std::path::Path,
    kind: DocKind,
    opts: &ParseOptions,
) -> Result<ParsedDoc, ParseError> {
    let size = std::fs::metadata(path)
        .map_err(|e| ParseError::Worker(format!("reading the document: {e}")))?
        .len();
    if size > opts.max_input_bytes {
        return Err(ParseError::TooLarge {
            size,
            limit: opts.max_input_bytes,
        });
    }
    worker::run(worker::Input::File(path), kind, opts)
}

/// Parse in this process, with panics turned into [`ParseError::Panicked`]. No resource
/// limits beyond `max_input_bytes` and `max_unpacked_bytes`: use [`parse`] for untrusted
/// HTML, PDF and DOCX.
pub fn parse_in_process(
    bytes: &[u8],
    kind: DocKind,
    opts: &ParseOptions,
) -> Result<ParsedDoc, ParseError> {
    check_size(bytes, opts)?;
    let result = catch_unwind(AssertUnwindSafe(|| match kind {
        DocKind::Text => Ok(text::parse(&decode_text(bytes, opts.charset.as_deref()))),
        DocKind::Markdown => Ok(markdown::parse(&decode_text(
            bytes,
            opts.charset.as_deref(),
        ))),
        DocKind::Html => {
            let meta = html::meta_charset(bytes);
            let hint = opts.charset.as_deref().or(meta.as_deref());
            Ok(html::parse(&decode_text(bytes, hint)))
        }
        DocKind::Pdf => pdf::parse(bytes),
        DocKind::Docx => docx::parse(bytes, opts.max_unpacked_bytes),
    }));
    let doc = match result {
        Ok(r) => r?,
        Err(panic) => {
            return Err(ParseError::Panicked {
                kind,
                msg: panic_message(panic.as_ref()),
            })
        }
    };
    finish(doc, kind)
}

fn check_size(bytes: &[u8], opts: &ParseOptions) -> Result<(), ParseError> {
    let size = bytes.len() as u64;
    if size > opts.max_input_bytes {
        return Err(ParseError::TooLarge {
            size,
            limit: opts.max_input_bytes,
        });
    }
    Ok(())
}

/// Drop blocks left empty by normalisation, take the title from the first heading when the
/// format had none, and refuse documents without text.
fn finish(mut doc: ParsedDoc, kind: DocKind) -> Result<ParsedDoc, ParseError> {
    doc.blocks.retain(|b| !b.text.trim().is_empty());
    if let Some(t) = &doc.title {
        let t = normalize(t);
        doc.title = (!t.is_empty()).then_some(t);
    }
    if !doc
        .blocks
        .iter()
        .any(|b| b.text.chars().any(char::is_alphanumeric))
    {
        return Err(match kind {
            DocKind::Pdf => ParseError::NoPdfText,
            other => ParseError::Empty(other),
        });
    }
    if doc.title.is_none() {
        doc.title = doc
            .blocks
            .iter()
            .find(|b| b.kind == BlockKind::Heading { level: 1 })
            .map(|b| b.text.clone());
    }
    Ok(doc)
}

/// The message of a caught panic (`panic!` payloads are `&str` or `String`).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let msg = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    };
    one_line(&msg, 300)
}

/// `s` on one line, cut to about `max` bytes.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Bytes of a text format → `String`. A BOM wins; then valid UTF-8; then the declared
/// charset (`hint`: HTTP or `<meta>`); then GB18030 (a superset of GBK and GB2312, the usual
/// encoding of Chinese files that are not UTF-8) if it decodes without errors; then
/// windows-1252, which decodes anything.
pub(crate) fn decode_text(bytes: &[u8], hint: Option<&str>) -> String {
    if let Some((enc, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        return enc
            .decode_without_bom_handling(&bytes[bom_len..])
            .0
            .into_owned();
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_string();
    }
    if let Some(enc) = hint.and_then(|h| encoding_rs::Encoding::for_label(h.trim().as_bytes())) {
        // A label of "utf-8" on bytes that are not UTF-8 says nothing; fall through.
        if enc != encoding_rs::UTF_8 {
            return enc.decode_without_bom_handling(bytes).0.into_owned();
        }
    }
    let (text, had_errors) = encoding_rs::GB18030.decode_without_bom_handling(bytes);
    if !had_errors {
        return text.into_owned();
    }
    encoding_rs::WINDOWS_1252
        .decode_without_bom_handling(bytes)
        .0
        .into_owned()
}

/// Characters of scripts written without spaces between words (Han, kana) and CJK
/// punctuation and full-width forms: whitespace between two of them is a line-wrap
/// artefact, not a word break. Hangul is left out: Korean separates words with spaces.
pub(crate) fn is_spaceless(c: char) -> bool {
    matches!(c as u32,
        0x2E80..=0x2FDF     // CJK radicals, Kangxi radicals
        | 0x3000..=0x303F   // CJK symbols and punctuation (。、「」…)
        | 0x3040..=0x30FF   // hiragana, katakana
        | 0x3100..=0x312F   // bopomofo
        | 0x31F0..=0x31FF   // katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0xFE30..=0xFE4F   // CJK compatibility forms
        | 0xFF00..=0xFF60   // full-width ASCII and punctuation (，！？（）)
        | 0xFFE0..=0xFFE6   // full-width signs
        | 0x20000..=0x2FA1F // extensions B–F
    )
}

/// One-line, whitespace-normalised text: runs of whitespace (including NBSP and the
/// ideographic space) become one space; a run with a line break between two spaceless (CJK)
/// characters becomes nothing, since it is where a line was wrapped. Control characters,
/// soft hyphens and zero-width characters are dropped; the ends are trimmed.
pub(crate) fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    let mut pending_break = false;
    let mut last: Option<char> = None;
    for c in s.chars() {
        if c.is_whitespace() {
            pending_space = true;
            pending_break |= matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}' | '\u{85}');
            continue;
        }
        if c.is_control() || matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200D}' | '\u{FEFF}') {
            continue;
        }
        if pending_space {
            if let Some(l) = last {
                if !(pending_break && is_spaceless(l) && is_spaceless(c)) {
                    out.push(' ');
                }
            }
            pending_space = false;
            pending_break = false;
        }
        out.push(c);
        last = Some(c);
    }
    out
}

/// Text of code: line structure kept, trailing spaces and blank edges trimmed, tabs and
/// control characters cleaned.
pub(crate) fn normalize_code(s: &str) -> String {
    let lines: Vec<String> = s
        .lines()
        .map(|l| {
            l.chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect();
    let start = lines
        .iter()
        .position(|l| !l.is_empty())
        .unwrap_or(lines.len());
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(start, |e| e + 1);
    lines[start..end].join("\n")
}

/// Builds blocks, normalising text and dropping empty ones.
#[derive(Default)]
pub(crate) struct Blocks {
    pub blocks: Vec<Block>,
}

impl Blocks {
    pub fn push(&mut self, kind: BlockKind, text: &str, page: Option<u32>) {
        let text = if kind == BlockKind::Code {
            normalize_code(text)
        } else {
            normalize(text)
        };
        if !text.is_empty() {
            self.blocks.push(Block { kind, text, page });
        }
    }
}

/// A list marker at the start of a line: bullets (`-`, `*`, `•`, …), `1.` `1)` `(1)` `a)`,
/// and the Chinese `一、` `（一）` `1、`. Returns the text after the marker and whether the
/// marker was a bullet (dropped) rather than a number (kept as part of the item).
pub(crate) fn list_marker(line: &str) -> Option<(&str, bool)> {
    let t = line.trim_start();
    let mut chars = t.char_indices();
    let (_, first) = chars.next()?;
    if matches!(
        first,
        '-' | '*' | '+' | '•' | '·' | '▪' | '◦' | '●' | '○' | '■' | '□' | '–'
    ) {
        let rest = &t[first.len_utf8()..];
        if rest.starts_with(char::is_whitespace) {
            return Some((rest.trim_start(), true));
        }
        return None;
    }
    // Numbered: digits / one latin letter / Chinese numerals, then `.` `)` `、` or
    // wrapped in parentheses.
    let (inner_end, wrapped) = if first == '(' || first == '（' {
        let close = t.find([')', '）'])?;
        (close, true)
    } else {
        let end = t
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || is_cn_numeral(*c) || c.is_ascii_alphabetic()))
            .map(|(i, _)| i)?;
        (end, false)
    };
    let inner = if wrapped {
        &t[first.len_utf8()..inner_end]
    } else {
        &t[..inner_end]
    };
    let valid_inner = !inner.is_empty()
        && inner.chars().count() <= 3
        && (inner.chars().all(|c| c.is_ascii_digit())
            || inner.chars().all(is_cn_numeral)
            || (inner.chars().count() == 1 && inner.chars().all(|c| c.is_ascii_lowercase())));
    if !valid_inner {
        return None;
    }
    let after = &t[inner_end..];
    let rest = if wrapped {
        let close = after.chars().next()?;
        &after[close.len_utf8()..]
    } else {
        let sep = after.chars().next()?;
        match sep {
            '.' | ')' => {
                let r = &after[1..];
                // "1.5 litres" or "3.Next" are not list items; a marker is followed by a space.
                if !r.starts_with(char::is_whitespace) {
                    return None;
                }
                r
            }
            '、' => &after['、'.len_utf8()..],
            _ => return None,
        }
    };
    if rest.trim().is_empty() {
        return None;
    }
    Some((t, false))
}

fn is_cn_numeral(c: char) -> bool {
    matches!(
        c,
        '一' | '二' | '三' | '四' | '五' | '六' | '七' | '八' | '九' | '十'
    )
}

/// Test helper: a parsed document as (kind, text) pairs, to compare with an expected outline.
#[cfg(test)]
fn outline(doc: &ParsedDoc) -> Vec<(BlockKind, &str)> {
    doc.blocks
        .iter()
        .map(|b| (b.kind.clone(), b.text.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_whitespace_and_cjk() {
        assert_eq!(normalize("  a \t b\n\nc  "), "a b c");
        assert_eq!(
            normalize("员工每年享有\n十五天带薪年假。\n年假"),
            "员工每年享有十五天带薪年假。年假"
        );
        assert_eq!(normalize("VPN\u{3000}账户\n密码"), "VPN 账户密码");
        assert_eq!(
            normalize("第一章 总则\u{3000}\u{3000}第一条"),
            "第一章 总则 第一条"
        );
        assert_eq!(normalize("使用 VPN 连接"), "使用 VPN 连接");
        assert_eq!(
            normalize("soft\u{00AD}hyphen zero\u{200B}width\u{0007}"),
            "softhyphen zerowidth"
        );
        assert_eq!(normalize("a\u{00A0}b"), "a b");
        assert_eq!(normalize("안녕 하세요"), "안녕 하세요");
    }

    #[test]
    fn decode_utf8_gb18030_bom_and_hint() {
        let zh = "员工手册：年假十五天";
        assert_eq!(decode_text(zh.as_bytes(), None), zh);
        let (gbk, _, _) = encoding_rs::GBK.encode(zh);
        assert!(std::str::from_utf8(&gbk).is_err());
        assert_eq!(decode_text(&gbk, None), zh, "fallback to GB18030");
        assert_eq!(decode_text(&gbk, Some("gbk")), zh);
        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend_from_slice(zh.as_bytes());
        assert_eq!(decode_text(&bom, Some("gbk")), zh);
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(zh.encode_utf16().flat_map(|u| u.to_le_bytes()))
            .collect();
        assert_eq!(decode_text(&utf16, None), zh);
        // Latin-1 text is not valid GB18030 ("é " is no GB18030 sequence) → windows-1252.
        assert_eq!(decode_text(b"caf\xe9 au lait", None), "café au lait");
        let (big5, _, _) = encoding_rs::BIG5.encode("繁體中文");
        assert_eq!(decode_text(&big5, Some("big5")), "繁體中文");
    }

    #[test]
    fn list_markers() {
        assert_eq!(list_marker("- item"), Some(("item", true)));
        assert_eq!(list_marker("• 项目"), Some(("项目", true)));
        assert_eq!(list_marker("1. First"), Some(("1. First", false)));
        assert_eq!(list_marker("(2) Second"), Some(("(2) Second", false)));
        assert_eq!(list_marker("一、总则"), Some(("一、总则", false)));
        assert_eq!(list_marker("（三）报销"), Some(("（三）报销", false)));
        assert_eq!(list_marker("a) option"), Some(("a) option", false)));
        assert_eq!(list_marker("1.5 litres of water"), None);
        assert_eq!(list_marker("-5 degrees"), None);
        assert_eq!(list_marker("Hello. World"), None);
        assert_eq!(list_marker("2024 was a year"), None);
    }

    #[test]
    fn empty_documents_are_errors() {
        let o = ParseOptions::default();
        assert_eq!(
            parse_in_process(b" \n\n \t", DocKind::Text, &o),
            Err(ParseError::Empty(DocKind::Text))
        );
        assert_eq!(
            parse_in_process(b"<html><script>x()</script></html>", DocKind::Html, &o),
            Err(ParseError::Empty(DocKind::Html))
        );
        assert_eq!(
            parse_in_process(b"", DocKind::Markdown, &o),
            Err(ParseError::Empty(DocKind::Markdown))
        );
    }

    #[test]
    fn size_limit() {
        let o = ParseOptions {
            max_input_bytes: 10,
            ..ParseOptions::default()
        };
        let e = parse(b"hello world, this is long", DocKind::Text, &o).unwrap_err();
        assert_eq!(e.to_string(), "document too large: 25 > 10 bytes");
    }

    #[test]
    fn errors_round_trip_as_json() {
        for e in [
            ParseError::NoPdfText,
            ParseError::Timeout(30),
            ParseError::NotDocx("missing word/document.xml".into()),
            ParseError::Empty(DocKind::Docx),
        ] {
            let j = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<ParseError>(&j).unwrap(), e);
        }
    }
}
