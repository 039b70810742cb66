//! PDF: pdf-extract interprets each page's content stream and hands us every glyph with its
//! position and size; we rebuild lines, drop running headers and page numbers, join lines
//! into paragraphs (de-hyphenating English, no spaces between Chinese characters), and call
//! a short paragraph set in a larger type than the body a heading (levels by size).
//!
//! pdf-extract panics on several font set-ups. Before extraction, `patch_fonts` rewrites
//! the ones we can make sense of in lopdf's in-memory document: composite fonts with the
//! predefined Unicode CMaps (`UniGB-UCS2-H` and kin, used by reportlab, iText and others for
//! non-embedded Chinese, Japanese and Korean fonts) get an identity `ToUnicode` and their
//! ASCII widths moved to Unicode codes; legacy multi-byte CMaps (`GBK-EUC-H`, …) get their
//! code-space so that a `ToUnicode` map, if present, decodes them. Each page is extracted
//! under `catch_unwind`, so a page that still panics costs that page only.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pdf_extract::{Document, MediaBox, Object, OutputDev, OutputError, Transform};

mod fonts;

use fonts::{patch_fonts, precompute_fonts};

use super::{is_spaceless, list_marker, normalize, panic_message, Blocks, ParseError};
use crate::kb::{BlockKind, ParsedDoc};

pub(super) fn parse(bytes: &[u8]) -> Result<ParsedDoc, ParseError> {
    if !bytes[..bytes.len().min(1024)]
        .windows(5)
        .any(|w| w == b"%PDF-")
    {
        return Err(ParseError::Pdf("not a PDF file (no %PDF header)".into()));
    }
    let mut doc = Document::load_mem(bytes)
        .map_err(|e| ParseError::Pdf(super::one_line(&e.to_string(), 300)))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(ParseError::PdfEncrypted);
    }
    patch_fonts(&mut doc);
    precompute_fonts(&mut doc);
    let title = info_title(&doc);
    let page_numbers: Vec<u32> = doc.get_pages().keys().copied().collect();
    let mut collector = Collector::default();
    let mut first_panic = None;
    let mut failed = 0usize;
    for &n in &page_numbers {
        let result = catch_unwind(AssertUnwindSafe(|| {
            pdf_extract::output_doc_page(&doc, &mut collector, n)
        }));
        let err = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(super::one_line(&e.to_string(), 300)),
            Err(p) => Some(panic_message(p.as_ref())),
        };
        if let Some(e) = err {
            failed += 1;
            tracing::warn!(page = n, error = %e, "PDF page skipped");
            first_panic.get_or_insert(e);
            collector.discard_page();
        }
    }
    if failed == page_numbers.len() && failed > 0 {
        return Err(ParseError::Pdf(first_panic.unwrap_or_default()));
    }
    let blocks = layout(collector.pages);
    Ok(ParsedDoc {
        title,
        blocks,
        pages: Some(page_numbers.len() as u32),
    })
}

// ---------------------------------------------------------------------------------------
// Glyphs → lines → blocks

#[derive(Clone, Debug)]
struct Glyph {
    x: f64,
    y: f64,
    /// Font size in page space (points).
    size: f64,
    /// Advance in page space.
    advance: f64,
    text: String,
}

#[derive(Debug)]
struct Line {
    y: f64,
    x0: f64,
    x1: f64,
    size: f64,
    text: String,
}

struct Page {
    number: u32,
    lines: Vec<Line>,
}

#[derive(Default)]
struct Collector {
    pages: Vec<Page>,
    number: u32,
    glyphs: Vec<Glyph>,
}

impl Collector {
    fn discard_page(&mut self) {
        self.glyphs.clear();
    }
}

impl OutputDev for Collector {
    fn begin_page(
        &mut self,
        n: u32,
        _: &MediaBox,
        _: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        self.number = n;
        self.glyphs.clear();
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), OutputError> {
        let glyphs = std::mem::take(&mut self.glyphs);
        self.pages.push(Page {
            number: self.number,
            lines: lines(glyphs),
        });
        Ok(())
    }

    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        _spacing: f64,
        font_size: f64,
        ch: &str,
    ) -> Result<(), OutputError> {
        if ch.is_empty() {
            return Ok(());
        }
        let scale = (trm.m11 * trm.m22 - trm.m12 * trm.m21).abs().sqrt();
        let size = if scale > 0.0 && scale.is_finite() {
            font_size * scale
        } else {
            font_size
        };
        let advance = width * font_size * trm.m11.hypot(trm.m12);
        let text = match ch {
            "\u{FB00}" => "ff".to_string(),
            "\u{FB01}" => "fi".to_string(),
            "\u{FB02}" => "fl".to_string(),
            "\u{FB03}" => "ffi".to_string(),
            "\u{FB04}" => "ffl".to_string(),
            "\u{FB05}" | "\u{FB06}" => "st".to_string(),
            other => other.to_string(),
        };
        if trm.m31.is_finite() && trm.m32.is_finite() && size.is_finite() {
            self.glyphs.push(Glyph {
                x: trm.m31,
                y: trm.m32,
                size: size.abs(),
                advance: if advance.is_finite() { advance } else { 0.0 },
                text,
            });
        }
        Ok(())
    }

    fn begin_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
    fn end_word(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
    fn end_line(&mut self) -> Result<(), OutputError> {
        Ok(())
    }
}

/// Glyphs in content-stream order → lines. A glyph starts a new line when it leaves the
/// baseline by half its size or jumps back to the left; a gap wider than a fifth of the
/// size inside a line is a word break (between Chinese characters, a whole character).
fn lines(glyphs: Vec<Glyph>) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut cur: Option<(Line, f64, HashMap<i64, usize>)> = None;
    let finish = |out: &mut Vec<Line>, l: Option<(Line, f64, HashMap<i64, usize>)>| {
        if let Some((mut line, _, sizes)) = l {
            // The line's size is the size most of its characters have.
            if let Some((&s, _)) = sizes.iter().max_by_key(|(s, n)| (**n, **s)) {
                line.size = s as f64 / 10.0;
            }
            line.text = line.text.trim().to_string();
            if !line.text.is_empty() {
                out.push(line);
            }
        }
    };
    for g in glyphs {
        let is_space = g.text.trim().is_empty();
        let new_line = match &cur {
            None => true,
            Some((line, end, _)) => {
                let tol = 0.5 * g.size.max(line.size).max(1.0);
                (g.y - line.y).abs() > tol || g.x < end - 2.0 * g.size.max(1.0)
            }
        };
        if new_line {
            if is_space {
                continue;
            }
            finish(&mut out, cur.take());
            cur = Some((
                Line {
                    y: g.y,
                    x0: g.x,
                    x1: g.x + g.advance,
                    size: g.size,
                    text: String::new(),
                },
                g.x,
                HashMap::new(),
            ));
        }
        let Some((line, end, sizes)) = cur.as_mut() else {
            continue;
        };
        if is_space {
            if !line.text.ends_with(' ') {
                line.text.push(' ');
            }
            *end = g.x + g.advance;
            continue;
        }
        // Between two Chinese characters only a gap of a full character is a space:
        // justified CJK text spreads its characters.
        let cjk_pair = line.text.chars().last().is_some_and(is_spaceless)
            && g.text.chars().next().is_some_and(is_spaceless);
        let gap = if cjk_pair { 1.0 } else { 0.2 } * g.size;
        if !new_line && g.x - *end > gap && !line.text.ends_with(' ') {
            line.text.push(' ');
        }
        line.text.push_str(&g.text);
        line.size = line.size.max(g.size);
        *sizes.entry((g.size * 10.0).round() as i64).or_default() += g.text.chars().count();
        *end = g.x + g.advance;
        line.x1 = line.x1.max(*end);
        line.x0 = line.x0.min(g.x);
    }
    finish(&mut out, cur);
    out
}

/// Lines of all pages → blocks with page numbers.
fn layout(mut pages: Vec<Page>) -> Vec<crate::kb::Block> {
    drop_running_lines(&mut pages);
    let body = body_size(&pages);
    // Heading sizes, largest first: their rank is the heading level.
    let mut heading_sizes: Vec<i64> = Vec::new();
    let mut paras: Vec<(u32, Para)> = Vec::new();
    for page in &pages {
        let right = page
            .lines
            .iter()
            .filter(|l| (l.size - body).abs() < 0.15 * body)
            .map(|l| l.x1)
            .fold(f64::MIN, f64::max);
        for p in paragraphs(&page.lines, right) {
            if is_heading(&p, body) {
                let key = (p.size * 2.0).round() as i64;
                if !heading_sizes.contains(&key) {
                    heading_sizes.push(key);
                }
            }
            paras.push((page.number, p));
        }
    }
    heading_sizes.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Blocks::default();
    for (page, p) in paras {
        let text = collapse_leaders(&p.text);
        let kind = if is_heading(&p, body) {
            let key = (p.size * 2.0).round() as i64;
            let rank = heading_sizes.iter().position(|&s| s == key).unwrap_or(0);
            BlockKind::Heading {
                level: (rank + 1).min(6) as u8,
            }
        } else if p.list {
            BlockKind::ListItem
        } else {
            BlockKind::Paragraph
        };
        out.push(kind, &text, Some(page));
    }
    out.blocks
}

struct Para {
    text: String,
    size: f64,
    lines: usize,
    list: bool,
}

fn is_heading(p: &Para, body: f64) -> bool {
    p.size >= body * 1.15
        && p.lines <= 3
        && p.text.chars().count() <= 200
        && p.text.chars().any(char::is_alphabetic)
}

/// Bullets a PDF list item starts with (dropped from the text).
fn strip_bullet(s: &str) -> Option<&str> {
    match list_marker(s) {
        Some((rest, true)) => Some(rest),
        Some((_, false)) => Some(s),
        None => None,
    }
}

/// Lines of one page → paragraphs. A new paragraph starts at a change of type size, a
/// vertical gap of more than about one and a half lines, a list marker, or after a line
/// that ends a sentence short of the right margin or before an indented line.
fn paragraphs(lines: &[Line], right: f64) -> Vec<Para> {
    let mut out: Vec<Para> = Vec::new();
    let mut prev: Option<&Line> = None;
    let mut left = f64::MAX;
    for line in lines {
        let bullet = strip_bullet(&line.text);
        let start = match prev {
            None => true,
            Some(p) => {
                let size = p.size.max(line.size);
                let gap = p.y - line.y;
                let ends_sentence = p
                    .text
                    .ends_with(['.', ':', '!', '?', '。', '！', '？', '：', '；']);
                (line.size - p.size).abs() > 0.1 * size
                    || gap > 1.55 * size
                    || gap < -0.5 * size
                    || bullet.is_some()
                    || (ends_sentence && p.x1 < right - 4.0 * size)
                    || (ends_sentence && line.x0 > left + 0.9 * size)
            }
        };
        if start {
            left = line.x0;
            out.push(Para {
                text: bullet.unwrap_or(&line.text).to_string(),
                size: line.size,
                lines: 1,
                list: bullet.is_some(),
            });
        } else if let Some(p) = out.last_mut() {
            join_line(&mut p.text, &line.text);
            p.lines += 1;
            left = left.min(line.x0);
        }
        prev = Some(line);
    }
    out
}

/// Append a wrapped line: "docu-" + "ment" → "document"; otherwise a line break, which
/// `normalize` turns into a space (or nothing between Chinese characters).
fn join_line(text: &mut String, next: &str) {
    let mut tail = text.chars().rev();
    let hyphenated = tail.next() == Some('-') && tail.next().is_some_and(char::is_alphabetic);
    if hyphenated && next.chars().next().is_some_and(char::is_lowercase) {
        text.pop();
        text.push_str(next);
    } else {
        text.push('\n');
        text.push_str(next);
    }
}

/// The type size most characters are set in.
fn body_size(pages: &[Page]) -> f64 {
    let mut by_size: HashMap<i64, usize> = HashMap::new();
    for l in pages.iter().flat_map(|p| &p.lines) {
        *by_size.entry((l.size * 2.0).round() as i64).or_default() += l.text.chars().count();
    }
    by_size
        .into_iter()
        .max_by_key(|(s, n)| (*n, -*s))
        .map_or(10.0, |(s, _)| s as f64 / 2.0)
}

/// Drop running headers and footers: a top or bottom line whose text (digits removed) recurs
/// at about the same height on at least half the pages (three at least); and lone page
/// numbers at the top or bottom.
fn drop_running_lines(pages: &mut [Page]) {
    fn key(l: &Line) -> (String, i64) {
        let t: String = l
            .text
            .chars()
            .filter(|c| !c.is_ascii_digit() && !c.is_whitespace())
            .collect();
        (t.to_lowercase(), (l.y / 6.0).round() as i64)
    }
    fn edge_indices(lines: &[Line]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..lines.len()).collect();
        idx.sort_by(|&a, &b| lines[b].y.total_cmp(&lines[a].y));
        let mut edges: Vec<usize> = idx.iter().take(2).copied().collect();
        edges.extend(idx.iter().rev().take(2).copied());
        edges.sort_unstable();
        edges.dedup();
        edges
    }
    let mut counts: HashMap<(String, i64), usize> = HashMap::new();
    for p in pages.iter() {
        let mut seen: Vec<(String, i64)> = edge_indices(&p.lines)
            .into_iter()
            .map(|i| key(&p.lines[i]))
            .collect();
        seen.sort();
        seen.dedup();
        for k in seen {
            *counts.entry(k).or_default() += 1;
        }
    }
    let threshold = (pages.len() / 2).max(3);
    for p in pages.iter_mut() {
        let edges = edge_indices(&p.lines);
        let drop: Vec<usize> = edges
            .into_iter()
            .filter(|&i| {
                let l = &p.lines[i];
                counts.get(&key(l)).is_some_and(|&n| n >= threshold) || is_page_number(&l.text)
            })
            .collect();
        let mut i = 0;
        p.lines.retain(|_| {
            let keep = !drop.contains(&i);
            i += 1;
            keep
        });
    }
}

/// "12", "- 12 -", "Page 3", "3 / 10", "第 3 页", "iv".
fn is_page_number(t: &str) -> bool {
    let t = t
        .trim()
        .trim_matches(|c: char| c == '-' || c == '–' || c.is_whitespace());
    let lower = t.to_lowercase();
    let core = lower
        .strip_prefix("page")
        .or_else(|| lower.strip_prefix('第'))
        .unwrap_or(&lower)
        .trim()
        .trim_end_matches('页')
        .trim();
    let digits_only = !core.is_empty()
        && core
            .chars()
            .all(|c| c.is_ascii_digit() || c == '/' || c == ' ' || c == '|')
        && core.chars().any(|c| c.is_ascii_digit());
    let roman = !core.is_empty() && core.len() <= 6 && core.chars().all(|c| "ivxlc".contains(c));
    digits_only || roman
}

/// Table-of-contents dot leaders (". . . . ." or ".......") → " … ".
fn collapse_leaders(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '.' {
            let mut j = i;
            let mut dots = 0;
            while j < chars.len() && (chars[j] == '.' || chars[j] == ' ') {
                if chars[j] == '.' {
                    dots += 1;
                }
                j += 1;
            }
            if dots >= 4 {
                out.push_str(" … ");
                i = j;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    normalize(&out)
}

// ---------------------------------------------------------------------------------------
// Metadata

/// The document information dictionary's `/Title` (UTF-16 with BOM, UTF-8 with BOM, or
/// PDFDocEncoding, read as Latin-1).
fn info_title(doc: &Document) -> Option<String> {
    let info = match doc.trailer.get(b"Info").ok()? {
        Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        Object::Dictionary(d) => d,
        _ => return None,
    };
    let bytes = match info.get(b"Title").ok()? {
        Object::String(b, _) => b.clone(),
        Object::Reference(id) => match doc.get_object(*id).ok()? {
            Object::String(b, _) => b.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let text = if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        encoding_rs::UTF_16BE
            .decode_without_bom_handling(rest)
            .0
            .into_owned()
    } else if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        encoding_rs::UTF_16LE
            .decode_without_bom_handling(rest)
            .0
            .into_owned()
    } else if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        bytes.iter().map(|&b| b as char).collect()
    };
    let t = normalize(&text);
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::fonts::{compact_to_unicode, parse_widths, width_array};
    use super::*;
    use crate::kb::parse::{parse_in_process, ParseOptions};
    use crate::kb::DocKind;

    fn fixture(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/kb/");
        std::fs::read(format!("{path}{name}")).unwrap()
    }

    /// Parses a fixture and checks its title, page count and blocks (kind, text, page).
    fn assert_fixture(
        name: &str,
        title: &str,
        pages: u32,
        blocks: Vec<(BlockKind, &str, Option<u32>)>,
    ) {
        let doc = parse_in_process(&fixture(name), DocKind::Pdf, &ParseOptions::default()).unwrap();
        assert_eq!(doc.title.as_deref(), Some(title));
        assert_eq!(doc.pages, Some(pages));
        assert_eq!(texts(&doc), blocks);
    }

    fn texts(doc: &ParsedDoc) -> Vec<(BlockKind, &str, Option<u32>)> {
        doc.blocks
            .iter()
            .map(|b| (b.kind.clone(), b.text.as_str(), b.page))
            .collect()
    }

    #[test]
    fn english_fixture_structure() {
        use BlockKind::*;
        assert_fixture(
            "en.pdf",
            "Expense Policy",
            3,
            vec![
                (Heading { level: 1 }, "1 Travel expenses", Some(1)),
                (
                    Paragraph,
                    "Employees submit travel expenses within thirty days after the trip ends. Every \
                     claim needs the original receipts and the itinerary; claims without receipts are \
                     reimbursed only up to fifty euros per day, and the approval process takes about \
                     one week.",
                    Some(1)
                ),
                (
                    Paragraph,
                    "Hotel costs are covered up to the city rate published by the finance team.",
                    Some(1)
                ),
                (Heading { level: 2 }, "1.1 Meals", Some(1)),
                (
                    Paragraph,
                    "Meals are reimbursed at the actual cost, including tips of up to ten percent.",
                    Some(1)
                ),
                (Heading { level: 1 }, "2 Equipment", Some(2)),
                (
                    Paragraph,
                    "Laptops are replaced every four years. Broken equipment is reported through the \
                     service desk, which arranges a loan device within one working day.",
                    Some(2)
                ),
                (ListItem, "Monitors: one per employee.", Some(2)),
                (ListItem, "Headsets: on request.", Some(2)),
                (Heading { level: 1 }, "3 Approvals", Some(3)),
                (
                    Paragraph,
                    "Claims above five hundred euros need the approval of a director.",
                    Some(3)
                ),
            ]
        );
    }

    #[test]
    fn chinese_fixture_with_predefined_cmap() {
        use BlockKind::*;
        assert_fixture(
            "zh.pdf",
            "员工手册",
            2,
            vec![
                (Heading { level: 1 }, "第一章 年假制度", Some(1)),
                (
                    Paragraph,
                    "员工每年享有十五天带薪年假。年假须提前两周向直属主管申请，经批准后方可休假。\
                     未使用的年假可以顺延至次年第一季度，逾期作废。",
                    Some(1)
                ),
                (Heading { level: 2 }, "1.1 病假", Some(1)),
                (
                    Paragraph,
                    "员工因病不能上班时，须在当天上午十点前通知主管。连续病假超过三天的，须提供医院证明。",
                    Some(1)
                ),
                (Heading { level: 1 }, "第二章 信息安全", Some(2)),
                (
                    Paragraph,
                    "VPN 账户密码每九十天必须更换一次。密码长度不少于十二位，并且须包含字母和数字。",
                    Some(2)
                ),
                (
                    Paragraph,
                    "发现可疑邮件时，请立即转发给信息安全部门，不要点击其中的链接。",
                    Some(2)
                ),
            ]
        );
    }

    #[test]
    fn not_a_pdf_and_truncated_pdf() {
        let o = ParseOptions::default();
        let e = parse_in_process(b"hello", DocKind::Pdf, &o).unwrap_err();
        assert!(e.to_string().starts_with("PDF parse failed: "), "{e}");
        let mut cut = fixture("en.pdf");
        cut.truncate(cut.len() / 2);
        let e = parse_in_process(&cut, DocKind::Pdf, &o);
        // Either a clean error or whatever text survived; never a panic.
        if let Err(e) = e {
            assert!(
                matches!(e, ParseError::Pdf(_) | ParseError::NoPdfText),
                "{e}"
            );
        }
    }

    #[test]
    fn compact_to_unicode_keeps_the_map() {
        let cmap = b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n\
            1 begincodespacerange <00> <FF> endcodespacerange\n\
            6 beginbfchar <41> <0041> <42> <0042> <43> <0043> <45> <0045> <46> <FB01> <47> <00660066>\n\
            endbfchar\n2 beginbfrange <0100> <0102> <4E00> <0103> <0103> <4E03> endbfrange endcmap";
        let before = adobe_cmap_parser::get_unicode_map(cmap).unwrap();
        let compact = compact_to_unicode(cmap).unwrap();
        let after = adobe_cmap_parser::get_unicode_map(&compact).unwrap();
        assert_eq!(before, after);
        let text = String::from_utf8(compact).unwrap();
        // 41-43 and 0100-0103 become one range each; 47 (two characters) stays a bfchar.
        assert!(text.contains("<0041> <0043> <0041>"), "{text}");
        assert!(text.contains("<0100> <0103> <4E00>"), "{text}");
        assert!(text.contains("<0047> <00660066>"), "{text}");
    }

    #[test]
    fn helpers() {
        let mut s = "docu-".to_string();
        join_line(&mut s, "ment is");
        assert_eq!(s, "document is");
        let mut s = "Jean-".to_string();
        join_line(&mut s, "Paul");
        assert_eq!(s, "Jean-\nPaul");
        assert_eq!(
            collapse_leaders("1 Introduction . . . . . . . . 1"),
            "1 Introduction … 1"
        );
        assert!(is_page_number("- 12 -"));
        assert!(is_page_number("Page 3"));
        assert!(is_page_number("第 3 页"));
        assert!(is_page_number("iv"));
        assert!(!is_page_number("1 Introduction"));
        let w = vec![
            Object::Integer(1),
            Object::Array(vec![Object::Integer(500), Object::Integer(600)]),
            Object::Integer(10),
            Object::Integer(12),
            Object::Integer(1000),
        ];
        let parsed = parse_widths(&Document::new(), &w);
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[&2], 600.0);
        assert_eq!(parsed[&12], 1000.0);
        assert_eq!(width_array(&parsed).len(), 4);
    }
}
