//! Plain text: paragraphs are separated by blank lines; lines that start with a list marker
//! are list items (a following unmarked line continues the item, as wrapped lines do).

use super::{list_marker, Blocks};
use crate::kb::{BlockKind, ParsedDoc};

pub(super) fn parse(text: &str) -> ParsedDoc {
    let mut out = Blocks::default();
    let mut current = String::new();
    let mut current_kind = BlockKind::Paragraph;
    let flush = |out: &mut Blocks, current: &mut String, kind: &BlockKind| {
        out.push(kind.clone(), current, None);
        current.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut out, &mut current, &current_kind);
            current_kind = BlockKind::Paragraph;
            continue;
        }
        if let Some((item, _bullet)) = list_marker(line) {
            flush(&mut out, &mut current, &current_kind);
            current_kind = BlockKind::ListItem;
            current.push_str(item);
            continue;
        }
        // Line breaks inside a paragraph are wrapping; `normalize` turns them into one
        // space, or none between Chinese characters.
        current.push('\n');
        current.push_str(line);
    }
    flush(&mut out, &mut current, &current_kind);
    ParsedDoc {
        title: None,
        blocks: out.blocks,
        pages: None,
    }
}

#[cfg(test)]
mod tests {
    use crate::kb::parse::{parse_in_process, ParseOptions};
    use crate::kb::{Block, BlockKind, DocKind};

    fn blocks(text: &str) -> Vec<(BlockKind, String)> {
        parse_in_process(text.as_bytes(), DocKind::Text, &ParseOptions::default())
            .unwrap()
            .blocks
            .into_iter()
            .map(|Block { kind, text, .. }| (kind, text))
            .collect()
    }

    #[test]
    fn paragraphs_and_lists_in_english() {
        let b = blocks(
            "Annual leave\n\nEmployees get fifteen days of\npaid leave per year.\n\n\
             Requests need:\n- a form signed by\n  the manager\n- two weeks' notice\n\n\
             1. First step\n2. Second step\n",
        );
        use BlockKind::*;
        assert_eq!(
            b,
            vec![
                (Paragraph, "Annual leave".into()),
                (
                    Paragraph,
                    "Employees get fifteen days of paid leave per year.".into()
                ),
                (Paragraph, "Requests need:".into()),
                (ListItem, "a form signed by the manager".into()),
                (ListItem, "two weeks' notice".into()),
                (ListItem, "1. First step".into()),
                (ListItem, "2. Second step".into()),
            ]
        );
    }

    #[test]
    fn chinese_lines_join_without_spaces() {
        let b = blocks(
            "员工每年享有十五天\n带薪年假。年假须提前\n两周申请。\n\n一、适用范围\n二、请假流程\n",
        );
        use BlockKind::*;
        assert_eq!(
            b,
            vec![
                (
                    Paragraph,
                    "员工每年享有十五天带薪年假。年假须提前两周申请。".into()
                ),
                (ListItem, "一、适用范围".into()),
                (ListItem, "二、请假流程".into()),
            ]
        );
    }

    #[test]
    fn gb18030_text_file() {
        let (gbk, _, _) =
            encoding_rs::GBK.encode("报销须在三十天内提交。\r\n\r\n发票原件必须附上。");
        let doc = parse_in_process(&gbk, DocKind::Text, &ParseOptions::default()).unwrap();
        assert_eq!(doc.blocks.len(), 2);
        assert_eq!(doc.blocks[0].text, "报销须在三十天内提交。");
        assert_eq!(doc.blocks[1].text, "发票原件必须附上。");
    }
}
