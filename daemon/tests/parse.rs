//! The document parsers through the real `edgeseek parse-worker` child process: every format
//! in English and Chinese, the two PDFs every Debian system ships, and containment of a
//! worker that panics, aborts, hangs, spins, eats memory or floods its output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeseek::kb::chunk::{chunk, ChunkOptions};
use edgeseek::kb::parse::{parse, ParseError, ParseOptions};
use edgeseek::kb::{BlockKind, DocKind, ParsedDoc};

/// The Debian PDFs (packages `libtasn1-doc` and `shared-mime-info`; scripts/test installs
/// them).
const DEBIAN_PDFS: [&str; 2] = [
    "/usr/share/doc/libtasn1-doc/libtasn1.pdf",
    "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf",
];

fn opts() -> ParseOptions {
    ParseOptions {
        worker_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_edgeseek"))),
        ..ParseOptions::default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/kb")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (scripts/make-kb-fixtures)", p.display()))
}

/// Word-piece-like count: a token per run of ASCII letters/digits, per CJK character and per
/// other symbol (close to MiniLM's counts for English, exact in kind for Chinese).
fn count(text: &str) -> usize {
    let mut n = 0;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            n += usize::from(!in_word);
            in_word = true;
        } else {
            in_word = false;
            n += usize::from(!c.is_whitespace());
        }
    }
    n
}

fn kinds_and_texts(doc: &ParsedDoc) -> Vec<(BlockKind, String)> {
    doc.blocks
        .iter()
        .map(|b| (b.kind.clone(), b.text.clone()))
        .collect()
}

#[test]
fn pdf_english_and_chinese_through_the_worker() {
    let en = parse(&fixture("en.pdf"), DocKind::Pdf, &opts()).unwrap();
    assert_eq!(en.pages, Some(3));
    assert_eq!(en.title.as_deref(), Some("Expense Policy"));
    let heads: Vec<(&str, Option<u32>)> = en
        .blocks
        .iter()
        .filter(|b| matches!(b.kind, BlockKind::Heading { .. }))
        .map(|b| (b.text.as_str(), b.page))
        .collect();
    assert_eq!(
        heads,
        vec![
            ("1 Travel expenses", Some(1)),
            ("1.1 Meals", Some(1)),
            ("2 Equipment", Some(2)),
            ("3 Approvals", Some(3)),
        ]
    );
    // De-hyphenated across the line break; running header and page numbers dropped.
    assert!(en
        .blocks
        .iter()
        .any(|b| b.text.contains("the approval process takes")));
    assert!(!en
        .blocks
        .iter()
        .any(|b| b.text == "Expense Policy" || b.text == "2"));

    let zh = parse(&fixture("zh.pdf"), DocKind::Pdf, &opts()).unwrap();
    assert_eq!(zh.pages, Some(2));
    assert_eq!(zh.title.as_deref(), Some("员工手册"));
    assert_eq!(zh.blocks[0].kind, BlockKind::Heading { level: 1 });
    assert_eq!(zh.blocks[0].text, "第一章 年假制度");
    let security = zh
        .blocks
        .iter()
        .find(|b| b.text.starts_with("VPN"))
        .unwrap();
    assert_eq!(security.page, Some(2));
    assert_eq!(
        security.text,
        "VPN 账户密码每九十天必须更换一次。密码长度不少于十二位，并且须包含字母和数字。"
    );

    // Chunks of the Chinese PDF split at 。 and carry their heading path and page. (The
    // longest sentence has 31 tokens: it fits beside the overlap.)
    let chunks = chunk(
        &zh,
        &count,
        &ChunkOptions {
            max_tokens: 45,
            overlap_tokens: 12,
            min_tokens: 5,
        },
    );
    assert!(chunks.len() >= 4, "{chunks:#?}");
    assert!(chunks.iter().all(|c| count(&c.text) <= 45));
    assert!(chunks.iter().all(|c| c.text.ends_with('。')), "{chunks:#?}");
    let sick = chunks
        .iter()
        .find(|c| c.text.contains("病假超过三天"))
        .unwrap();
    assert_eq!(
        sick.heading,
        vec!["第一章 年假制度".to_string(), "1.1 病假".into()]
    );
    assert_eq!(sick.page, Some(1));
}

#[test]
fn docx_written_by_python_docx() {
    let doc = parse(&fixture("handbook.docx"), DocKind::Docx, &opts()).unwrap();
    assert_eq!(doc.title.as_deref(), Some("Employee handbook 员工手册"));
    use BlockKind::*;
    assert_eq!(
        kinds_and_texts(&doc),
        vec![
            (Heading { level: 1 }, "Employee handbook".into()),
            (Heading { level: 1 }, "Remote work".into()),
            (
                Paragraph,
                "Employees may work from home up to three days a week after agreeing the days \
                 with their manager."
                    .into()
            ),
            (ListItem, "A stable internet connection".into()),
            (ListItem, "A quiet place for calls".into()),
            (ListItem, "Book the desk the day before".into()),
            (ListItem, "Cancel unused bookings".into()),
            (Heading { level: 2 }, "设备与报销".into()),
            (
                Paragraph,
                "公司为远程办公的员工提供一台显示器。网络费用每月最多报销一百元。".into()
            ),
            (Table, "Item | Limit".into()),
            (Table, "Laptop | 1500 EUR".into()),
            (Table, "显示器 | 300 EUR".into()),
        ]
    );
}

#[test]
fn html_english_and_gbk_chinese_through_the_worker() {
    let en = parse(
        b"<html><head><title>Leave</title></head><body><nav>Menu</nav><h1>Annual leave</h1>\
          <p>Fifteen&nbsp;days.</p></body></html>",
        DocKind::Html,
        &opts(),
    )
    .unwrap();
    assert_eq!(en.title.as_deref(), Some("Leave"));
    assert_eq!(
        kinds_and_texts(&en),
        vec![
            (BlockKind::Heading { level: 1 }, "Annual leave".into()),
            (BlockKind::Paragraph, "Fifteen days.".into()),
        ]
    );
    let page = "<html><head><meta charset=\"gbk\"><title>信息安全</title></head><body>\
                <h2>密码</h2><ul><li>每九十天更换一次</li><li>不少于十二位</li></ul></body></html>";
    let (gbk, _, _) = encoding_rs::GBK.encode(page);
    let zh = parse(&gbk, DocKind::Html, &opts()).unwrap();
    assert_eq!(zh.title.as_deref(), Some("信息安全"));
    assert_eq!(
        kinds_and_texts(&zh),
        vec![
            (BlockKind::Heading { level: 2 }, "密码".into()),
            (BlockKind::ListItem, "每九十天更换一次".into()),
            (BlockKind::ListItem, "不少于十二位".into()),
        ]
    );
}

#[test]
fn text_and_markdown_parse_in_process() {
    // No worker is started for them: a worker path that does not exist does not matter.
    let o = ParseOptions {
        worker_exe: Some(PathBuf::from("/nonexistent/edgeseek")),
        ..ParseOptions::default()
    };
    let md = parse("# 标题\n\n正文第一段。\n".as_bytes(), DocKind::Markdown, &o).unwrap();
    assert_eq!(md.title.as_deref(), Some("标题"));
    let txt = parse(b"Plain text.\n\nSecond paragraph.", DocKind::Text, &o).unwrap();
    assert_eq!(txt.blocks.len(), 2);
    let e = parse(b"%PDF-1.4", DocKind::Pdf, &o).unwrap_err();
    assert!(matches!(e, ParseError::Spawn { .. }), "{e}");
    assert!(e
        .to_string()
        .starts_with("cannot start the parser process /nonexistent/edgeseek"));
}

#[test]
fn debian_pdfs_parse_with_pages_headings_and_chunks() {
    for path in DEBIAN_PDFS {
        let bytes = std::fs::read(path).unwrap_or_else(|e| {
            panic!("{path}: {e}: apt-get install -y libtasn1-doc shared-mime-info")
        });
        let t = Instant::now();
        let doc = parse(&bytes, DocKind::Pdf, &opts()).unwrap();
        let parse_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let chunks = chunk(&doc, &count, &ChunkOptions::default());
        let chunk_s = t.elapsed().as_secs_f64();
        eprintln!(
            "{path}: {} pages, {} blocks, {} chunks; parse {parse_s:.3} s (worker), chunk {chunk_s:.3} s",
            doc.pages.unwrap_or(0),
            doc.blocks.len(),
            chunks.len()
        );
        let pages = doc.pages.unwrap();
        assert!(pages > 10, "{path}: {pages} pages");
        // Every block has a page, in reading order, and most pages have text.
        let mut last = 1;
        for b in &doc.blocks {
            let p = b.page.unwrap();
            assert!(p >= last && p <= pages, "{path}: page {p} after {last}");
            last = p;
        }
        let mut with_text: Vec<u32> = doc.blocks.iter().filter_map(|b| b.page).collect();
        with_text.dedup();
        assert!(
            with_text.len() as u32 >= pages * 3 / 4,
            "{path}: text on {with_text:?}"
        );
        assert!(
            doc.blocks
                .iter()
                .filter(|b| matches!(b.kind, BlockKind::Heading { .. }))
                .count()
                >= 5
        );
        for c in &chunks {
            assert!(count(&c.text) <= 200, "{path}: {} tokens", count(&c.text));
            assert!(c.page.is_some());
        }
        // Chunk pages never go backwards.
        assert!(chunks.windows(2).all(|w| w[0].page <= w[1].page));
        // A generous bound: this is about a parser that loops, not speed (see the report).
        assert!(parse_s < 10.0, "{path}: {parse_s} s");
    }
    let tasn = parse(
        &std::fs::read(DEBIAN_PDFS[0]).unwrap(),
        DocKind::Pdf,
        &opts(),
    )
    .unwrap();
    let all: String = tasn
        .blocks
        .iter()
        .map(|b| b.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(all.contains("Abstract Syntax Notation One"));
    // "manip-\nulation" in the PDF, de-hyphenated.
    assert!(
        all.contains("Distinguished Encoding Rules (DER) manipulation"),
        "{}",
        &all[..2000]
    );
    assert!(tasn
        .blocks
        .iter()
        .any(|b| matches!(b.kind, BlockKind::Heading { .. }) && b.text == "1 Introduction"));
    let mime = parse(
        &std::fs::read(DEBIAN_PDFS[1]).unwrap(),
        DocKind::Pdf,
        &opts(),
    )
    .unwrap();
    let first = mime
        .blocks
        .iter()
        .find(|b| b.text.starts_with("This is version"))
        .unwrap();
    assert_eq!(first.page, Some(1));
    let h = mime
        .blocks
        .iter()
        .find(|b| b.text == "1.2. What is this spec?")
        .unwrap();
    assert!(matches!(h.kind, BlockKind::Heading { .. }));
}

fn hooked(hook: &str) -> ParseOptions {
    ParseOptions {
        test_hook: Some(hook.into()),
        ..opts()
    }
}

#[test]
fn a_panicking_or_aborting_worker_is_an_error() {
    let e = parse(&fixture("en.pdf"), DocKind::Pdf, &hooked("panic")).unwrap_err();
    assert!(matches!(e, ParseError::Worker(_)), "{e}");
    assert!(e.to_string().contains("test hook: parser panic"), "{e}");
    let e = parse(&fixture("en.pdf"), DocKind::Pdf, &hooked("abort")).unwrap_err();
    assert_eq!(e.to_string(), "parser process failed: killed by signal 6");
}

#[test]
fn a_hanging_worker_is_killed_at_the_timeout() {
    let o = ParseOptions {
        timeout: Duration::from_secs(1),
        ..hooked("sleep")
    };
    let t = Instant::now();
    let e = parse(&fixture("en.pdf"), DocKind::Pdf, &o).unwrap_err();
    assert_eq!(e, ParseError::Timeout(1));
    assert_eq!(e.to_string(), "parser timed out after 1 s");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_spinning_worker_hits_its_cpu_limit() {
    let o = ParseOptions {
        cpu_seconds: 1,
        timeout: Duration::from_secs(30),
        ..hooked("spin")
    };
    let t = Instant::now();
    let e = parse(b"<p>x</p>", DocKind::Html, &o).unwrap_err();
    assert_eq!(e, ParseError::CpuLimit(1));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn a_worker_out_of_memory_is_contained() {
    let o = ParseOptions {
        max_memory_bytes: 512 << 20,
        ..hooked("alloc")
    };
    let e = parse(&fixture("handbook.docx"), DocKind::Docx, &o).unwrap_err();
    assert_eq!(e, ParseError::OutOfMemory(512));
    assert_eq!(e.to_string(), "parser ran out of memory (limit 512 MiB)");
}

#[test]
fn a_flooding_worker_is_cut_off() {
    let o = ParseOptions {
        max_output_bytes: 1 << 20,
        ..hooked("spew")
    };
    let e = parse(&fixture("en.pdf"), DocKind::Pdf, &o).unwrap_err();
    assert_eq!(e, ParseError::OutputTooLarge(1 << 20));
}

#[test]
fn errors_from_the_worker_keep_their_kind() {
    let e = parse(b"PK\x03\x04 not really", DocKind::Docx, &opts()).unwrap_err();
    assert!(e.to_string().starts_with("not a DOCX file: "), "{e}");
    let e = parse(b"%PDF-1.4\n%%EOF\n", DocKind::Pdf, &opts()).unwrap_err();
    assert!(
        matches!(e, ParseError::Pdf(_) | ParseError::NoPdfText),
        "{e}"
    );
    let e = parse(
        b"<html><body><script>x</script></body></html>",
        DocKind::Html,
        &opts(),
    )
    .unwrap_err();
    assert_eq!(e, ParseError::Empty(DocKind::Html));
    let big = vec![b'a'; 2000];
    let o = ParseOptions {
        max_input_bytes: 1000,
        ..opts()
    };
    let e = parse(&big, DocKind::Pdf, &o).unwrap_err();
    assert_eq!(e.to_string(), "document too large: 2000 > 1000 bytes");
}

#[test]
fn worker_protocol_and_hidden_subcommand() {
    let exe = env!("CARGO_BIN_EXE_edgeseek");
    let mut child = Command::new(exe)
        .args([
            "parse-worker",
            "--kind",
            "pdf",
            "--max-input-bytes",
            "1000000",
        ])
        .args(["--max-unpacked-bytes", "1000000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&fixture("zh.pdf")).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Ok"]["pages"], 2);
    assert_eq!(v["Ok"]["blocks"][0]["kind"]["type"], "heading");
    assert_eq!(v["Ok"]["blocks"][0]["kind"]["level"], 1);
    assert_eq!(v["Ok"]["blocks"][0]["page"], 1);

    let help = Command::new(exe).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("serve") && !help.contains("parse-worker"),
        "{help}"
    );
}
