//! Markdown (CommonMark + GFM tables) through pulldown-cmark's event stream: headings with
//! their levels, paragraphs, list items (nested lists become their own items), code blocks,
//! table rows. Raw HTML is dropped; a YAML front matter `title:` becomes the title.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::Blocks;
use crate::kb::{BlockKind, ParsedDoc};

/// An open element that collects text.
struct Open {
    kind: BlockKind,
    text: String,
}

pub(super) fn parse(src: &str) -> ParsedDoc {
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS;
    let mut out = Blocks::default();
    let mut title = None;
    let mut open: Vec<Open> = Vec::new();
    // For each open paragraph: whether it opened its own block (false: it is part of a list
    // item, whose block it extends).
    let mut paragraphs: Vec<bool> = Vec::new();
    let mut row: Option<Vec<String>> = None;
    let mut cell: Option<String> = None;
    let mut in_metadata = false;

    for event in Parser::new_ext(src, opts) {
        match event {
            Event::Start(tag) => match tag {
                Tag::Heading { level, .. } => open.push(Open {
                    kind: BlockKind::Heading {
                        level: heading_level(level),
                    },
                    text: String::new(),
                }),
                Tag::Paragraph => {
                    let in_item = open.last().is_some_and(|o| o.kind == BlockKind::ListItem);
                    paragraphs.push(!in_item);
                    if !in_item {
                        open.push(Open {
                            kind: BlockKind::Paragraph,
                            text: String::new(),
                        });
                    }
                }
                Tag::Item => open.push(Open {
                    kind: BlockKind::ListItem,
                    text: String::new(),
                }),
                Tag::List(_) => {
                    // A nested list: the enclosing item's text so far is one item.
                    if let Some(o) = open.last_mut().filter(|o| o.kind == BlockKind::ListItem) {
                        out.push(BlockKind::ListItem, &o.text, None);
                        o.text.clear();
                    }
                }
                Tag::CodeBlock(_) => open.push(Open {
                    kind: BlockKind::Code,
                    text: String::new(),
                }),
                Tag::TableHead | Tag::TableRow => row = Some(Vec::new()),
                Tag::TableCell => cell = Some(String::new()),
                Tag::MetadataBlock(_) => in_metadata = true,
                _ => {}
            },
            Event::End(end) => match end {
                TagEnd::Heading(_) | TagEnd::Item | TagEnd::CodeBlock => {
                    if let Some(o) = open.pop() {
                        out.push(o.kind, &o.text, None);
                    }
                }
                TagEnd::Paragraph => {
                    if paragraphs.pop() == Some(true) {
                        if let Some(o) = open.pop() {
                            out.push(o.kind, &o.text, None);
                        }
                    } else if let Some(o) = open.last_mut() {
                        o.text.push('\n');
                    }
                }
                TagEnd::TableCell => {
                    if let (Some(c), Some(r)) = (cell.take(), row.as_mut()) {
                        r.push(super::normalize(&c));
                    }
                }
                TagEnd::TableHead | TagEnd::TableRow => {
                    if let Some(r) = row.take() {
                        if r.iter().any(|c| !c.is_empty()) {
                            out.push(BlockKind::Table, &r.join(" | "), None);
                        }
                    }
                }
                TagEnd::MetadataBlock(_) => in_metadata = false,
                _ => {}
            },
            Event::Text(t) if in_metadata => {
                title = title.or_else(|| front_matter_title(&t));
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(c) = cell.as_mut() {
                    c.push_str(&t);
                } else if let Some(o) = open.last_mut() {
                    o.text.push_str(&t);
                } else {
                    // Text outside any block (e.g. in a footnote definition).
                    out.push(BlockKind::Paragraph, &t, None);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some(c) = cell.as_mut() {
                    c.push(' ');
                } else if let Some(o) = open.last_mut() {
                    o.text.push('\n');
                }
            }
            _ => {}
        }
    }
    // Unclosed elements cannot happen with pulldown-cmark, but keep any text regardless.
    for o in open {
        out.push(o.kind, &o.text, None);
    }
    ParsedDoc {
        title,
        blocks: out.blocks,
        pages: None,
    }
}

fn heading_level(l: HeadingLevel) -> u8 {
    match l {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

/// `title: X` (optionally quoted) from a YAML front matter block.
fn front_matter_title(yaml: &str) -> Option<String> {
    yaml.lines().find_map(|l| {
        let v = l.strip_prefix("title:")?.trim();
        let v = v.trim_matches(|c| c == '"' || c == '\'').trim();
        (!v.is_empty()).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use crate::kb::parse::{parse_in_process, ParseOptions};
    use crate::kb::{BlockKind, DocKind};

    fn parse(md: &str) -> crate::kb::ParsedDoc {
        parse_in_process(md.as_bytes(), DocKind::Markdown, &ParseOptions::default()).unwrap()
    }

    #[test]
    fn structure_in_english() {
        let doc = parse(
            "# Travel policy\n\nIntro with *emphasis* and `code`,\nwrapped.\n\n\
             ## Hotels\n\n- Item one\n- Item two\n  - nested item\n- Item three\n\n\
             1. First\n\n   continued paragraph\n2. Second\n\n\
             ```rust\nfn main() {\n    println!(\"hi\");\n}\n```\n\n\
             | City | Rate |\n|------|------|\n| Paris | 200 |\n| Berlin | 150 |\n\n\
             ### Notes &amp; caveats\n\n> Quoted text.\n",
        );
        use BlockKind::*;
        let got = crate::kb::parse::outline(&doc);
        assert_eq!(
            got,
            vec![
                (Heading { level: 1 }, "Travel policy"),
                (Paragraph, "Intro with emphasis and code, wrapped."),
                (Heading { level: 2 }, "Hotels"),
                (ListItem, "Item one"),
                (ListItem, "Item two"),
                (ListItem, "nested item"),
                (ListItem, "Item three"),
                (ListItem, "First continued paragraph"),
                (ListItem, "Second"),
                (Code, "fn main() {\n    println!(\"hi\");\n}"),
                (Table, "City | Rate"),
                (Table, "Paris | 200"),
                (Table, "Berlin | 150"),
                (Heading { level: 3 }, "Notes & caveats"),
                (Paragraph, "Quoted text."),
            ]
        );
        assert_eq!(doc.title.as_deref(), Some("Travel policy"));
    }

    #[test]
    fn chinese_and_front_matter() {
        let doc = parse(
            "---\ntitle: \"员工手册\"\n---\n\n# 第一章 年假\n\n员工每年享有十五天\n带薪年假。\n\n\
             - 提前两周申请\n- 主管批准\n",
        );
        assert_eq!(doc.title.as_deref(), Some("员工手册"));
        let texts: Vec<&str> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "第一章 年假",
                "员工每年享有十五天带薪年假。",
                "提前两周申请",
                "主管批准"
            ]
        );
        assert_eq!(doc.blocks[0].kind, BlockKind::Heading { level: 1 });
        assert_eq!(doc.blocks[2].kind, BlockKind::ListItem);
    }
}
