//! DOCX: the zip's main document part (found through `_rels/.rels`, usually
//! `word/document.xml`) streamed with quick-xml. Paragraph styles are resolved through
//! `word/styles.xml` by style *name* and outline level, not by style id: Word writes localised
//! ids (a Chinese Word's "heading 1" has the id `1`). Headings: `Title`, `heading 1..9` or an
//! outline level; list items: paragraph numbering (`w:numPr`) or a list style; tables: one
//! block per row. The title comes from `docProps/core.xml`. Every part is read with a size cap,
//! so a zip bomb stops at `max_unpacked` bytes.

use std::collections::HashMap;
use std::io::{Cursor, Read};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{Blocks, ParseError};
use crate::kb::{BlockKind, ParsedDoc};

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

pub(super) fn parse(bytes: &[u8], max_unpacked: u64) -> Result<ParsedDoc, ParseError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ParseError::NotDocx(format!("not a zip archive ({e})")))?;
    let main = read_part(&mut zip, "_rels/.rels", max_unpacked)?
        .and_then(|rels| main_part(&rels))
        .unwrap_or_else(|| "word/document.xml".to_string());
    let document = read_part(&mut zip, &main, max_unpacked)?.ok_or_else(|| {
        ParseError::NotDocx(format!(
            "no {main} in the archive (a .doc, .xlsx or other file renamed to .docx?)"
        ))
    })?;
    let styles = match read_part(&mut zip, "word/styles.xml", max_unpacked)? {
        Some(xml) => Styles::parse(&xml).map_err(ParseError::Docx)?,
        None => Styles::default(),
    };
    let title = match read_part(&mut zip, "docProps/core.xml", max_unpacked)? {
        Some(xml) => core_title(&xml),
        None => None,
    };
    let blocks = body(&document, &styles).map_err(ParseError::Docx)?;
    Ok(ParsedDoc {
        title,
        blocks,
        pages: None,
    })
}

/// A part's text, or `None` if the archive has no such part.
fn read_part(zip: &mut Archive<'_>, name: &str, limit: u64) -> Result<Option<String>, ParseError> {
    let file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(ParseError::NotDocx(format!("{name}: {e}"))),
    };
    let too_large = || ParseError::UnpackedTooLarge {
        part: name.to_string(),
        limit,
    };
    // The declared size is only a hint (it can lie); the `take` below is the real cap.
    if file.size() > limit {
        return Err(too_large());
    }
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ParseError::NotDocx(format!("{name}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(too_large());
    }
    // XML parts are UTF-8, or UTF-16 with a BOM.
    Ok(Some(match encoding_rs::Encoding::for_bom(&buf) {
        Some((enc, n)) => enc.decode_without_bom_handling(&buf[n..]).0.into_owned(),
        None => String::from_utf8_lossy(&buf).into_owned(),
    }))
}

fn xml_reader(xml: &str) -> Reader<&[u8]> {
    let mut r = Reader::from_str(xml);
    let c = r.config_mut();
    c.trim_text(false);
    c.check_end_names = false;
    r
}

fn local(e: &BytesStart<'_>) -> String {
    e.local_name().as_ref().to_string()
}

/// The value of the attribute whose local name is `name` (`w:val` → `val`).
fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes().with_checks(false).flatten().find_map(|a| {
        let key = a.key.0;
        let local = key.rsplit(':').next().unwrap_or(key);
        (local == name).then(|| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map(|v| v.into_owned())
                .unwrap_or_else(|_| a.value.into_owned())
        })
    })
}

/// The target of the `officeDocument` relationship in `_rels/.rels`.
fn main_part(rels: &str) -> Option<String> {
    let mut r = xml_reader(rels);
    loop {
        match r.read_event() {
            Ok(Event::Start(e) | Event::Empty(e))
                if local(&e) == "Relationship"
                    && attr(&e, "Type").is_some_and(|t| t.ends_with("/officeDocument")) =>
            {
                let target = attr(&e, "Target")?;
                return Some(target.trim_start_matches('/').to_string());
            }
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// `dc:title` from `docProps/core.xml`.
fn core_title(xml: &str) -> Option<String> {
    let mut r = xml_reader(xml);
    let mut in_title = false;
    let mut title = String::new();
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) if local(&e) == "title" => in_title = true,
            Ok(Event::End(e)) if e.local_name().as_ref() == "title" => break,
            Ok(Event::Text(t)) if in_title => title.push_str(&t.xml10_content()),
            Ok(Event::GeneralRef(r)) if in_title => push_entity(&mut title, &r),
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    let t = super::normalize(&title);
    (!t.is_empty()).then_some(t)
}

fn push_entity(out: &mut String, r: &quick_xml::events::BytesRef<'_>) {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        out.push(c);
        return;
    }
    out.push_str(match r.as_ref() {
        "lt" => "<",
        "gt" => ">",
        "amp" => "&",
        "apos" => "'",
        "quot" => "\"",
        _ => "",
    });
}

/// What a paragraph style means for structure.
#[derive(Default, Clone)]
struct Style {
    name: String,
    based_on: Option<String>,
    outline: Option<u8>,
    numbered: bool,
}

#[derive(Default)]
struct Styles {
    by_id: HashMap<String, Style>,
}

impl Styles {
    fn parse(xml: &str) -> Result<Styles, String> {
        let mut r = xml_reader(xml);
        let mut by_id = HashMap::new();
        let mut current: Option<(String, Style)> = None;
        loop {
            match r
                .read_event()
                .map_err(|e| format!("word/styles.xml: {e}"))?
            {
                Event::Start(e) | Event::Empty(e) => match local(&e).as_str() {
                    "style" => {
                        if let Some((id, s)) = current.take() {
                            by_id.insert(id, s);
                        }
                        current = attr(&e, "styleId").map(|id| (id, Style::default()));
                    }
                    "name" => {
                        if let (Some((_, s)), Some(v)) = (current.as_mut(), attr(&e, "val")) {
                            s.name = v;
                        }
                    }
                    "basedOn" => {
                        if let Some((_, s)) = current.as_mut() {
                            s.based_on = attr(&e, "val");
                        }
                    }
                    "outlineLvl" => {
                        if let Some((_, s)) = current.as_mut() {
                            s.outline = attr(&e, "val").and_then(|v| v.parse().ok());
                        }
                    }
                    "numId" => {
                        if let Some((_, s)) = current.as_mut() {
                            s.numbered = attr(&e, "val").is_some_and(|v| v != "0");
                        }
                    }
                    _ => {}
                },
                Event::End(e) if e.local_name().as_ref() == "style" => {
                    if let Some((id, s)) = current.take() {
                        by_id.insert(id, s);
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        Ok(Styles { by_id })
    }

    /// The style and the styles it is based on, nearest first (cycles cut).
    fn chain(&self, id: &str) -> Vec<&Style> {
        let mut out = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(id) = next {
            if out.len() >= 16 {
                break;
            }
            let Some(s) = self.by_id.get(&id) else { break };
            out.push(s);
            next = s.based_on.clone();
        }
        out
    }

    /// Heading level of a paragraph style: `Title` → 1, `heading N` → N, else an outline
    /// level (0-based in the XML) anywhere in its chain.
    fn heading_level(&self, id: &str) -> Option<u8> {
        let chain = self.chain(id);
        for s in &chain {
            let name = s.name.to_ascii_lowercase();
            if name == "title" {
                return Some(1);
            }
            if let Some(n) = name
                .strip_prefix("heading ")
                .and_then(|n| n.trim().parse::<u8>().ok())
            {
                return Some(n.clamp(1, 9));
            }
        }
        chain
            .iter()
            .find_map(|s| s.outline)
            .filter(|&o| o < 9)
            .map(|o| o + 1)
    }

    /// Whether a paragraph style makes list items (numbering in the style, or a list style
    /// such as `List Bullet` or `List Paragraph`).
    fn is_list(&self, id: &str) -> bool {
        self.chain(id)
            .iter()
            .any(|s| s.numbered || s.name.to_ascii_lowercase().starts_with("list"))
    }
}

#[derive(Default)]
struct Para {
    text: String,
    style: Option<String>,
    numbered: Option<bool>,
    outline: Option<u8>,
}

/// The body's blocks, in order.
fn body(xml: &str, styles: &Styles) -> Result<Vec<crate::kb::Block>, String> {
    let mut r = xml_reader(xml);
    let mut out = Blocks::default();
    // Paragraphs nest when a text box sits inside a paragraph.
    let mut paras: Vec<Para> = Vec::new();
    // Tables nest; only the outermost one's rows become blocks, inner tables are cell text.
    let mut table_depth = 0usize;
    let mut row: Option<Vec<String>> = None;
    let mut in_text = false;
    let mut in_run = 0usize;
    // `mc:Fallback` repeats the `mc:Choice` content for old readers: skip it.
    let mut skip_depth = 0usize;

    loop {
        let event = r.read_event().map_err(|e| format!("document XML: {e}"))?;
        if skip_depth > 0 {
            match event {
                Event::Start(_) => skip_depth += 1,
                Event::End(_) => skip_depth -= 1,
                Event::Eof => break,
                _ => {}
            }
            continue;
        }
        match event {
            Event::Start(e) => match local(&e).as_str() {
                "Fallback" => skip_depth = 1,
                "p" => paras.push(Para::default()),
                "r" => in_run += 1,
                "t" => in_text = true,
                "tbl" => table_depth += 1,
                "tr" if table_depth == 1 => row = Some(Vec::new()),
                "tc" if table_depth == 1 => {
                    if let Some(r) = row.as_mut() {
                        r.push(String::new());
                    }
                }
                other => paragraph_property(other, &e, &mut paras),
            },
            Event::Empty(e) => {
                let name = local(&e);
                match name.as_str() {
                    "tab" if in_run > 0 => push_text(&mut paras, " "),
                    "br" | "cr" if in_run > 0 => push_text(&mut paras, "\n"),
                    "noBreakHyphen" => push_text(&mut paras, "-"),
                    "tc" if table_depth == 1 => {
                        if let Some(r) = row.as_mut() {
                            r.push(String::new());
                        }
                    }
                    other => paragraph_property(other, &e, &mut paras),
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "r" => in_run = in_run.saturating_sub(1),
                "p" => {
                    let Some(p) = paras.pop() else { continue };
                    if table_depth > 0 {
                        if let Some(cell) = row.as_mut().and_then(|r| r.last_mut()) {
                            cell.push(' ');
                            cell.push_str(&p.text);
                            continue;
                        }
                    }
                    out.push(paragraph_kind(&p, styles), &p.text, None);
                }
                "tr" if table_depth == 1 => {
                    if let Some(cells) = row.take() {
                        let cells: Vec<String> =
                            cells.iter().map(|c| super::normalize(c)).collect();
                        if cells.iter().any(|c| !c.is_empty()) {
                            out.push(BlockKind::Table, &cells.join(" | "), None);
                        }
                    }
                }
                "tbl" => table_depth = table_depth.saturating_sub(1),
                _ => {}
            },
            Event::Text(t) if in_text => push_text(&mut paras, &t.xml10_content()),
            Event::GeneralRef(g) if in_text => {
                let mut s = String::new();
                push_entity(&mut s, &g);
                push_text(&mut paras, &s);
            }
            Event::CData(c) if in_text => {
                push_text(&mut paras, &c.into_inner());
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out.blocks)
}

fn push_text(paras: &mut [Para], s: &str) {
    if let Some(p) = paras.last_mut() {
        p.text.push_str(s);
    }
}

/// `w:pStyle`, `w:numId`, `w:outlineLvl` of the innermost paragraph.
fn paragraph_property(name: &str, e: &BytesStart<'_>, paras: &mut [Para]) {
    let Some(p) = paras.last_mut() else { return };
    match name {
        "pStyle" => p.style = attr(e, "val"),
        "numId" => p.numbered = Some(attr(e, "val").is_some_and(|v| v != "0")),
        "outlineLvl" => p.outline = attr(e, "val").and_then(|v| v.parse().ok()),
        _ => {}
    }
}

fn paragraph_kind(p: &Para, styles: &Styles) -> BlockKind {
    let style = p.style.as_deref().unwrap_or("");
    if let Some(level) = styles
        .heading_level(style)
        .or_else(|| p.outline.filter(|&o| o < 9).map(|o| o + 1))
    {
        return BlockKind::Heading { level };
    }
    // Explicit numbering on the paragraph wins (numId 0 switches a list style's numbering
    // off); otherwise the style decides.
    let list = p.numbered.unwrap_or_else(|| styles.is_list(style));
    if list {
        BlockKind::ListItem
    } else {
        BlockKind::Paragraph
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use crate::kb::parse::{parse_in_process, ParseError, ParseOptions};
    use crate::kb::{BlockKind, DocKind};

    /// A DOCX with the given `word/document.xml` body and optional styles and core title.
    pub(crate) fn docx(body: &str, styles: Option<&str>, title: Option<&str>) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let w = "xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\"";
        let mut part = |name: &str, text: &str| {
            zip.start_file(name, opts).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        };
        part(
            "[Content_Types].xml",
            "<?xml version=\"1.0\"?><Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\"/>",
        );
        part(
            "_rels/.rels",
            "<?xml version=\"1.0\"?><Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">\
             <Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" Target=\"word/document.xml\"/>\
             </Relationships>",
        );
        part(
            "word/document.xml",
            &format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><w:document {w}><w:body>{body}</w:body></w:document>"),
        );
        if let Some(s) = styles {
            part(
                "word/styles.xml",
                &format!("<?xml version=\"1.0\"?><w:styles {w}>{s}</w:styles>"),
            );
        }
        if let Some(t) = title {
            part(
                "docProps/core.xml",
                &format!("<?xml version=\"1.0\"?><cp:coreProperties xmlns:cp=\"http://schemas.openxmlformats.org/package/2006/metadata/core-properties\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\"><dc:title>{t}</dc:title></cp:coreProperties>"),
            );
        }
        zip.finish().unwrap().into_inner()
    }

    fn p(style: Option<&str>, extra_ppr: &str, text: &str) -> String {
        let style = style
            .map(|s| format!("<w:pStyle w:val=\"{s}\"/>"))
            .unwrap_or_default();
        format!("<w:p><w:pPr>{style}{extra_ppr}</w:pPr><w:r><w:t xml:space=\"preserve\">{text}</w:t></w:r></w:p>")
    }

    /// Styles as a Chinese Word writes them: localised ids, English names.
    const STYLES: &str = "<w:style w:type=\"paragraph\" w:styleId=\"1\"><w:name w:val=\"heading 1\"/>\
        <w:pPr><w:outlineLvl w:val=\"0\"/></w:pPr></w:style>\
        <w:style w:type=\"paragraph\" w:styleId=\"2\"><w:name w:val=\"heading 2\"/><w:basedOn w:val=\"1\"/>\
        <w:pPr><w:outlineLvl w:val=\"1\"/></w:pPr></w:style>\
        <w:style w:type=\"paragraph\" w:styleId=\"a3\"><w:name w:val=\"List Paragraph\"/></w:style>\
        <w:style w:type=\"paragraph\" w:styleId=\"MyOutline\"><w:name w:val=\"Custom\"/>\
        <w:pPr><w:outlineLvl w:val=\"2\"/></w:pPr></w:style>";

    #[test]
    fn headings_lists_tables_chinese() {
        let numbered = "<w:numPr><w:ilvl w:val=\"0\"/><w:numId w:val=\"3\"/></w:numPr>";
        let body = [
            p(Some("1"), "", "第一章 年假"),
            p(None, "", "员工每年享有十五天带薪年假。"),
            p(Some("2"), "", "1.1 申请"),
            p(None, numbered, "提前两周申请"),
            p(Some("a3"), "", "主管批准"),
            p(Some("MyOutline"), "", "Deep heading"),
            "<w:tbl><w:tr><w:tc><w:p><w:r><w:t>项目</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>上限</w:t></w:r></w:p></w:tc></w:tr>\
             <w:tr><w:tc><w:p><w:r><w:t>显示器</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>300 元</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"
                .to_string(),
            "<w:p><w:r><w:t>Tom &amp; Jerry</w:t><w:tab/><w:t>say</w:t><w:br/><w:t>hi</w:t></w:r>\
             <w:r><w:delText>deleted</w:delText><w:instrText>PAGEREF</w:instrText></w:r>\
             <w:r><mc:AlternateContent xmlns:mc=\"m\"><mc:Choice><w:t xml:space=\"preserve\"> box</w:t></mc:Choice>\
             <mc:Fallback><w:t>box-again</w:t></mc:Fallback></mc:AlternateContent></w:r></w:p>"
                .to_string(),
        ]
        .concat();
        let bytes = docx(&body, Some(STYLES), Some("员工手册 &amp; 制度"));
        let doc = parse_in_process(&bytes, DocKind::Docx, &ParseOptions::default()).unwrap();
        assert_eq!(doc.title.as_deref(), Some("员工手册 & 制度"));
        use BlockKind::*;
        let got = crate::kb::parse::outline(&doc);
        assert_eq!(
            got,
            vec![
                (Heading { level: 1 }, "第一章 年假"),
                (Paragraph, "员工每年享有十五天带薪年假。"),
                (Heading { level: 2 }, "1.1 申请"),
                (ListItem, "提前两周申请"),
                (ListItem, "主管批准"),
                (Heading { level: 3 }, "Deep heading"),
                (Table, "项目 | 上限"),
                (Table, "显示器 | 300 元"),
                (Paragraph, "Tom & Jerry say hi box"),
            ]
        );
    }

    #[test]
    fn not_a_docx() {
        let o = ParseOptions::default();
        let e = parse_in_process(b"PK\x03\x04 garbage", DocKind::Docx, &o).unwrap_err();
        assert!(matches!(e, ParseError::NotDocx(_)), "{e}");
        assert!(e.to_string().starts_with("not a DOCX file: "), "{e}");
        let e = parse_in_process(b"%PDF-1.4", DocKind::Docx, &o).unwrap_err();
        assert!(matches!(e, ParseError::NotDocx(_)), "{e}");
        // A zip without a Word document (e.g. an .xlsx).
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("xl/workbook.xml", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(b"<workbook/>").unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let e = parse_in_process(&bytes, DocKind::Docx, &o).unwrap_err();
        assert!(e.to_string().contains("word/document.xml"), "{e}");
    }

    #[test]
    fn zip_bomb_stops_at_the_limit() {
        // 64 MiB of one repeated paragraph compresses to well under 1 MiB.
        let para = "<w:p><w:r><w:t>aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa</w:t></w:r></w:p>";
        let body = para.repeat((64 << 20) / para.len());
        let bytes = docx(&body, None, None);
        assert!(bytes.len() < 1 << 20, "{}", bytes.len());
        let o = ParseOptions {
            max_unpacked_bytes: 8 << 20,
            ..ParseOptions::default()
        };
        let e = parse_in_process(&bytes, DocKind::Docx, &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DOCX too large when unpacked: word/document.xml is more than 8388608 bytes"
        );
    }

    #[test]
    fn empty_docx() {
        let bytes = docx(
            "<w:p/><w:p><w:r><w:t>  </w:t></w:r></w:p>",
            None,
            Some("Title only"),
        );
        let e = parse_in_process(&bytes, DocKind::Docx, &ParseOptions::default()).unwrap_err();
        assert_eq!(e, ParseError::Empty(DocKind::Docx));
    }
}
