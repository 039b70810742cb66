//! HTML through html5ever (via `scraper`'s tree): `<title>`, headings h1–h6, paragraphs,
//! list items, `<pre>` as code, one table block per row; text loose in `<div>`s and the like
//! becomes paragraphs. Scripts, styles, navigation and hidden elements are dropped; entities
//! are decoded by the parser. The walk is iterative, so deep nesting cannot overflow the
//! stack.

use ego_tree::iter::Edge;
use ego_tree::NodeId;
use scraper::{Html, Node};

use super::Blocks;
use crate::kb::{BlockKind, ParsedDoc};

/// Elements whose content is never document text.
const SKIP: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "svg", "math", "iframe", "object", "canvas",
    "select", "datalist",
];

/// Elements that end the running paragraph (their text is never glued to the text around).
const BLOCK: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "header",
    "hgroup",
    "hr",
    "li",
    "main",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "ul",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "center",
    "legend",
    "menu",
    "search",
];

/// A block element being collected.
struct Open {
    id: NodeId,
    kind: BlockKind,
    text: String,
}

pub(super) fn parse(src: &str) -> ParsedDoc {
    let html = Html::parse_document(src);
    let mut out = Blocks::default();
    let mut title: Option<String> = None;
    let mut in_title: Option<(NodeId, String)> = None;
    // Root context: loose text is a paragraph.
    let root_id = html.tree.root().id();
    let mut open = vec![Open {
        id: root_id,
        kind: BlockKind::Paragraph,
        text: String::new(),
    }];
    // The table row being collected (its id and cells), and the subtree being skipped.
    let mut row: Option<(NodeId, Vec<String>)> = None;
    let mut skipping: Option<NodeId> = None;

    for edge in html.tree.root().traverse() {
        match edge {
            Edge::Open(node) => {
                if skipping.is_some() {
                    continue;
                }
                match node.value() {
                    Node::Text(t) => {
                        if let Some((_, buf)) = in_title.as_mut() {
                            buf.push_str(t);
                        } else if let Some(cell) = row.as_mut().and_then(|(_, c)| c.last_mut()) {
                            cell.push_str(t);
                        } else if let Some(o) = open.last_mut() {
                            o.text.push_str(t);
                        }
                    }
                    Node::Element(el) => {
                        let name = el.name();
                        if SKIP.contains(&name)
                            || el.attr("hidden").is_some()
                            || el.attr("aria-hidden") == Some("true")
                        {
                            skipping = Some(node.id());
                            continue;
                        }
                        if name == "title" && title.is_none() && in_title.is_none() {
                            in_title = Some((node.id(), String::new()));
                            continue;
                        }
                        if let Some((_, cells)) = row.as_mut() {
                            // Inside a table row everything is cell text.
                            match name {
                                "td" | "th" => cells.push(String::new()),
                                "br" => push_to_cell(cells, " "),
                                n if BLOCK.contains(&n) => push_to_cell(cells, " "),
                                _ => {}
                            }
                            continue;
                        }
                        if name == "br" {
                            if let Some(o) = open.last_mut() {
                                o.text.push('\n');
                            }
                            continue;
                        }
                        if !BLOCK.contains(&name) {
                            continue;
                        }
                        flush(&mut out, &mut open);
                        let in_item = open.iter().any(|o| o.kind == BlockKind::ListItem);
                        let kind = match name {
                            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                                let level = name.as_bytes()[1] - b'0';
                                Some(BlockKind::Heading { level })
                            }
                            "pre" => Some(BlockKind::Code),
                            "li" | "dd" | "dt" => Some(BlockKind::ListItem),
                            "p" | "div" | "blockquote" | "figcaption" | "caption" if in_item => {
                                Some(BlockKind::ListItem)
                            }
                            "p" => Some(BlockKind::Paragraph),
                            "tr" => {
                                row = Some((node.id(), Vec::new()));
                                None
                            }
                            _ => None,
                        };
                        if let Some(kind) = kind {
                            open.push(Open {
                                id: node.id(),
                                kind,
                                text: String::new(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            Edge::Close(node) => {
                if let Some(id) = skipping {
                    if id == node.id() {
                        skipping = None;
                    }
                    continue;
                }
                if in_title.as_ref().is_some_and(|(id, _)| *id == node.id()) {
                    if let Some((_, t)) = in_title.take() {
                        let t = super::normalize(&t);
                        title = (!t.is_empty()).then_some(t);
                    }
                    continue;
                }
                if row.as_ref().is_some_and(|(id, _)| *id == node.id()) {
                    if let Some((_, cells)) = row.take() {
                        let cells: Vec<String> =
                            cells.iter().map(|c| super::normalize(c)).collect();
                        if cells.iter().any(|c| !c.is_empty()) {
                            out.push(BlockKind::Table, &cells.join(" | "), None);
                        }
                    }
                    continue;
                }
                if row.is_some() {
                    continue;
                }
                let Node::Element(el) = node.value() else {
                    continue;
                };
                if !BLOCK.contains(&el.name()) {
                    continue;
                }
                if open.len() > 1 && open.last().is_some_and(|o| o.id == node.id()) {
                    if let Some(o) = open.pop() {
                        out.push(o.kind, &o.text, None);
                    }
                } else {
                    flush(&mut out, &mut open);
                }
            }
        }
    }
    flush(&mut out, &mut open);
    ParsedDoc {
        title,
        blocks: out.blocks,
        pages: None,
    }
}

fn push_to_cell(cells: &mut [String], s: &str) {
    if let Some(c) = cells.last_mut() {
        c.push_str(s);
    }
}

/// Emit the innermost open block's text so far (text before a nested block).
fn flush(out: &mut Blocks, open: &mut [Open]) {
    if let Some(o) = open.last_mut() {
        if !o.text.trim().is_empty() {
            out.push(o.kind.clone(), &o.text, None);
        }
        o.text.clear();
    }
}

/// The charset a `<meta charset=…>` or `<meta http-equiv content="…; charset=…">` in the
/// first 4 KiB declares, if any.
pub(super) fn meta_charset(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(4096)];
    let lower: Vec<u8> = head.iter().map(|b| b.to_ascii_lowercase()).collect();
    let mut from = 0;
    while let Some(pos) = find(&lower[from..], b"<meta") {
        let start = from + pos;
        let end = find(&lower[start..], b">").map_or(lower.len(), |e| start + e);
        let tag = &lower[start..end];
        if let Some(c) = find(tag, b"charset=") {
            let value: String = tag[c + 8..]
                .iter()
                .skip_while(|b| matches!(b, b'"' | b'\'' | b' '))
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':'))
                .map(|&b| b as char)
                .collect();
            if !value.is_empty() {
                return Some(value);
            }
        }
        from = end;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use crate::kb::parse::{parse_in_process, ParseOptions};
    use crate::kb::{BlockKind, DocKind, ParsedDoc};

    fn parse(bytes: &[u8]) -> ParsedDoc {
        parse_in_process(bytes, DocKind::Html, &ParseOptions::default()).unwrap()
    }

    #[test]
    fn structure_in_english() {
        let doc = parse(
            br#"<!doctype html><html><head><title>Travel &amp; expenses</title>
            <style>p { color: red }</style><script>var x = "<p>not text</p>";</script></head>
            <body><nav><a href="/">Home</a> | <a href="/hr">HR</a></nav>
            <h1>Travel policy</h1>
            <p>Claims are due within <b>thirty</b>&nbsp;days.<br>Receipts are required.</p>
            <div>Loose text in a div
              <ul><li>First item</li><li>Second <em>item</em>
                <ol><li>Nested item</li></ol></li></ul>
            </div>
            <h2>Rates</h2>
            <table><tr><th>City</th><th>Rate</th></tr>
                   <tr><td>Paris</td><td><p>200 &euro;</p></td></tr></table>
            <pre>line one
  line two</pre>
            <p hidden>Hidden text</p><noscript>Enable JavaScript</noscript>
            </body></html>"#,
        );
        assert_eq!(doc.title.as_deref(), Some("Travel & expenses"));
        use BlockKind::*;
        let got = crate::kb::parse::outline(&doc);
        assert_eq!(
            got,
            vec![
                (Heading { level: 1 }, "Travel policy"),
                (
                    Paragraph,
                    "Claims are due within thirty days. Receipts are required."
                ),
                (Paragraph, "Loose text in a div"),
                (ListItem, "First item"),
                (ListItem, "Second item"),
                (ListItem, "Nested item"),
                (Heading { level: 2 }, "Rates"),
                (Table, "City | Rate"),
                (Table, "Paris | 200 €"),
                (Code, "line one\n  line two"),
            ]
        );
    }

    #[test]
    fn gbk_page_with_meta_charset() {
        let page = "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; \
                    charset=gb2312\"><title>员工手册</title></head><body><h1>年假制度</h1>\
                    <p>员工每年享有\n十五天带薪年假。</p></body></html>";
        let (gbk, _, _) = encoding_rs::GBK.encode(page);
        assert_eq!(super::meta_charset(&gbk).as_deref(), Some("gb2312"));
        let doc = parse(&gbk);
        assert_eq!(doc.title.as_deref(), Some("员工手册"));
        assert_eq!(doc.blocks[0].text, "年假制度");
        assert_eq!(doc.blocks[1].text, "员工每年享有十五天带薪年假。");
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut page = String::new();
        for _ in 0..5_000 {
            page.push_str("<div><span>");
        }
        page.push_str("deep text");
        let doc = parse(page.as_bytes());
        assert_eq!(doc.blocks.len(), 1);
        assert_eq!(doc.blocks[0].text, "deep text");
    }
}
