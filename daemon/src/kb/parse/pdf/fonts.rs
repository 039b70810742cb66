//! Font patches applied to lopdf's in-memory document before pdf-extract interprets it (see
//! the parent module's docs): predefined Unicode CMaps get an identity `ToUnicode`, legacy
//! multi-byte CMaps their code-space, and fonts are parsed once per document instead of once
//! per page.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pdf_extract::{Dictionary, Document, Object, Stream};

fn resolve<'a>(doc: &'a Document, o: &'a Object) -> &'a Object {
    match o {
        Object::Reference(id) => doc.get_object(*id).unwrap_or(o),
        _ => o,
    }
}

pub(super) fn patch_fonts(doc: &mut Document) {
    let ids: Vec<_> = doc.objects.keys().copied().collect();
    for id in ids {
        let patched = match doc.objects.get(&id) {
            Some(Object::Dictionary(d))
                if d.get(b"Subtype").ok().and_then(|s| s.as_name().ok()) == Some(b"Type0") =>
            {
                patch_type0(doc, d)
            }
            _ => None,
        };
        if let Some(d) = patched {
            doc.objects.insert(id, Object::Dictionary(d));
        }
    }
}

/// pdf-extract rebuilds every font on every page, reading its ToUnicode CMap and its embedded
/// Type 1 program again each time: most of its run time on TeX documents. Do that work once:
/// ToUnicode maps are rewritten in compact range form, and a Type 1 program's built-in
/// encoding becomes an `/Encoding << /Differences … >>` so the program is not read again
/// (pdf-extract reads it only for that encoding). A font these parsers panic on is left as
/// it was.
pub(super) fn precompute_fonts(doc: &mut Document) {
    let ids: Vec<_> = doc.objects.keys().copied().collect();
    for id in ids {
        let Some(Object::Dictionary(font)) = doc.objects.get(&id) else {
            continue;
        };
        if font.get(b"Type").ok().and_then(|t| t.as_name().ok()) != Some(b"Font") {
            continue;
        }
        let patched = catch_unwind(AssertUnwindSafe(|| precompute_font(doc, font)));
        if let Ok(Some(d)) = patched {
            doc.objects.insert(id, Object::Dictionary(d));
        }
    }
}

fn precompute_font(doc: &Document, font: &Dictionary) -> Option<Dictionary> {
    let mut f = font.clone();
    let mut changed = false;
    if let Some(Object::Stream(s)) = f.get(b"ToUnicode").ok().map(|o| resolve(doc, o)) {
        let content = s
            .decompressed_content()
            .unwrap_or_else(|_| s.content.clone());
        if let Some(compact) = compact_to_unicode(&content) {
            f.set(
                "ToUnicode",
                Object::Stream(Stream::new(Dictionary::new(), compact)),
            );
            changed = true;
        }
    }
    let subtype = f.get(b"Subtype").ok().and_then(|s| s.as_name().ok());
    let descriptor = f.get(b"FontDescriptor").ok().map(|o| resolve(doc, o));
    if let (Some(b"Type1"), Some(Object::Dictionary(desc))) = (subtype, descriptor) {
        if let Some(Object::Stream(program)) = desc.get(b"FontFile").ok().map(|o| resolve(doc, o)) {
            let mut desc = desc.clone();
            desc.remove(b"FontFile");
            if f.get(b"Encoding").is_err() {
                let bytes = program
                    .decompressed_content()
                    .unwrap_or_else(|_| program.content.clone());
                let map = type1_encoding_parser::get_encoding_map(&bytes).ok()?;
                let mut codes: Vec<_> = map.into_iter().collect();
                codes.sort();
                let mut diffs = Vec::with_capacity(codes.len() * 2);
                for (code, name) in codes {
                    if code < 256 {
                        diffs.push(Object::Integer(i64::from(code)));
                        diffs.push(Object::Name(name));
                    }
                }
                let mut enc = Dictionary::new();
                enc.set("Differences", Object::Array(diffs));
                f.set("Encoding", Object::Dictionary(enc));
            }
            f.set("FontDescriptor", Object::Dictionary(desc));
            changed = true;
        }
    }
    changed.then_some(f)
}

/// A ToUnicode CMap re-written with one `bfrange` per run of consecutive codes mapping to
/// consecutive characters: the same map, a fraction of the text for pdf-extract to re-parse.
pub(super) fn compact_to_unicode(content: &[u8]) -> Option<Vec<u8>> {
    let map = adobe_cmap_parser::get_unicode_map(content).ok()?;
    let mut entries: Vec<(u32, Vec<u8>)> = map
        .into_iter()
        .filter(|(_, v)| !v.is_empty() && v.len() % 2 == 0)
        .collect();
    entries.sort();
    let single = |v: &[u8]| (v.len() == 2).then(|| u16::from_be_bytes([v[0], v[1]]));
    let mut ranges: Vec<(u32, u32, u16)> = Vec::new();
    let mut chars: Vec<(u32, &[u8])> = Vec::new();
    for (code, value) in &entries {
        if let Some(u) = single(value) {
            if let Some(last) = ranges.last_mut() {
                let len = last.1 - last.0;
                if *code == last.1 + 1
                    && u32::from(last.2) + len + 1 == u32::from(u)
                    && (last.1 & 0xFF) != 0xFF
                {
                    last.1 = *code;
                    continue;
                }
            }
            ranges.push((*code, *code, u));
        } else {
            chars.push((*code, value));
        }
    }
    let hex = |code: u32| {
        if code > 0xFFFF {
            format!("{code:08X}")
        } else {
            format!("{code:04X}")
        }
    };
    let mut s = String::from("/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n");
    if !ranges.is_empty() {
        s.push_str(&format!("{} beginbfrange\n", ranges.len()));
        for (lo, hi, u) in &ranges {
            s.push_str(&format!("<{}> <{}> <{u:04X}>\n", hex(*lo), hex(*hi)));
        }
        s.push_str("endbfrange\n");
    }
    if !chars.is_empty() {
        s.push_str(&format!("{} beginbfchar\n", chars.len()));
        for (code, value) in &chars {
            let v: String = value.iter().map(|b| format!("{b:02X}")).collect();
            s.push_str(&format!("<{}> <{v}>\n", hex(*code)));
        }
        s.push_str("endbfchar\n");
    }
    s.push_str("endcmap CMapName currentdict /CMap defineresource pop end end\n");
    Some(s.into_bytes())
}

/// The code families of the predefined CMaps, for their code-space ranges.
#[derive(Clone, Copy, PartialEq, Debug)]
enum CmapFamily {
    /// `Uni…-UCS2-H`, `Uni…-UTF16-H`: codes are UTF-16BE.
    Unicode,
    /// GB2312 / GBK / GB18030 (`GB-EUC-H`, `GBK-EUC-H`, `GBK2K-H`, …).
    Gbk,
    /// Big5 (`B5pc-H`, `ETen-B5-H`, `HKscs-B5-H`).
    Big5,
    /// Shift-JIS (`90ms-RKSJ-H`, …).
    ShiftJis,
    /// EUC-JP / EUC-KR / UHC (`EUC-H`, `KSC-EUC-H`, `KSCms-UHC-H`).
    Euc,
}

fn cmap_family(name: &str) -> Option<CmapFamily> {
    Some(
        if name.starts_with("Uni") && (name.contains("-UCS2-") || name.contains("-UTF16-")) {
            CmapFamily::Unicode
        } else if name.starts_with("GB") {
            CmapFamily::Gbk
        } else if name.contains("B5") {
            CmapFamily::Big5
        } else if name.contains("RKSJ") {
            CmapFamily::ShiftJis
        } else if name.contains("EUC") || name.contains("UHC") {
            CmapFamily::Euc
        } else {
            return None;
        },
    )
}

fn patch_type0(doc: &Document, font: &Dictionary) -> Option<Dictionary> {
    let mut f = font.clone();
    let mut changed = false;
    let to_unicode = f.get(b"ToUnicode").ok().map(|o| resolve(doc, o).clone());
    let has_to_unicode = matches!(to_unicode, Some(Object::Stream(_)));
    if matches!(
        to_unicode,
        Some(Object::Name(_)) | Some(Object::Dictionary(_)) | Some(Object::Null)
    ) {
        // pdf-extract aborts on a named ToUnicode; without a usable map it is no help anyway.
        f.remove(b"ToUnicode");
        changed = true;
    }
    let encoding = f.get(b"Encoding").ok().map(|o| resolve(doc, o).clone());
    let name = match &encoding {
        Some(Object::Name(n)) => String::from_utf8_lossy(n).into_owned(),
        Some(Object::Stream(_)) => String::new(),
        _ => "Identity-H".to_string(),
    };
    let mut width_shift = false;
    if !name.is_empty() && !matches!(name.as_str(), "Identity-H" | "Identity-V") {
        match cmap_family(&name) {
            Some(CmapFamily::Unicode) => {
                f.set("Encoding", Object::Name(b"Identity-H".to_vec()));
                if !has_to_unicode {
                    f.set("ToUnicode", Object::Stream(identity_to_unicode(&name)));
                }
                width_shift = true;
            }
            Some(family) => {
                f.set("Encoding", Object::Stream(codespace_cmap(family)));
            }
            None => f.set("Encoding", Object::Name(b"Identity-H".to_vec())),
        }
        changed = true;
    } else if encoding.is_none() {
        f.set("Encoding", Object::Name(b"Identity-H".to_vec()));
        changed = true;
    }
    // Widths: pdf-extract misreads the `c_first c_last w` form of /W; rewrite /W in the
    // `c [w …]` form (moved from CIDs to Unicode codes where the encoding became identity).
    let descendants = match f.get(b"DescendantFonts").ok().map(|o| resolve(doc, o)) {
        Some(Object::Array(a)) if !a.is_empty() => a.clone(),
        _ => return changed.then_some(f),
    };
    let Object::Dictionary(cid_font) = resolve(doc, &descendants[0]).clone() else {
        return changed.then_some(f);
    };
    let mut cid_font = cid_font;
    let w = cid_font.get(b"W").ok().map(|o| resolve(doc, o).clone());
    if let Some(Object::Array(w)) = w {
        let widths = parse_widths(doc, &w);
        let widths = if width_shift {
            // Adobe's CJK collections (GB1, CNS1, Japan1, Korea1) put printable ASCII at
            // CIDs 1..=95: code c is CID c - 31.
            (0x20u32..=0x7E)
                .filter_map(|c| widths.get(&(c - 31)).map(|w| (c, *w)))
                .collect()
        } else {
            widths
        };
        cid_font.set("W", Object::Array(width_array(&widths)));
        changed = true;
    }
    if changed {
        let mut d = descendants;
        d[0] = Object::Dictionary(cid_font);
        f.set("DescendantFonts", Object::Array(d));
        Some(f)
    } else {
        None
    }
}

fn num(o: &Object) -> Option<f64> {
    match o {
        Object::Integer(i) => Some(*i as f64),
        Object::Real(r) => Some(f64::from(*r)),
        _ => None,
    }
}

/// A CID font's /W array (both forms) → CID → width. Capped: a hostile range cannot make
/// millions of entries.
pub(super) fn parse_widths(doc: &Document, w: &[Object]) -> BTreeMap<u32, f64> {
    const MAX: usize = 70_000;
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < w.len() && out.len() < MAX {
        let Some(first) = num(resolve(doc, &w[i])) else {
            break;
        };
        let first = first.max(0.0) as u32;
        match w.get(i + 1).map(|o| resolve(doc, o)) {
            Some(Object::Array(ws)) => {
                for (j, o) in ws.iter().enumerate().take(MAX) {
                    if let Some(v) = num(resolve(doc, o)) {
                        out.insert(first.saturating_add(j as u32), v);
                    }
                }
                i += 2;
            }
            Some(o) => {
                let (Some(last), Some(v)) =
                    (num(o), w.get(i + 2).and_then(|o| num(resolve(doc, o))))
                else {
                    break;
                };
                let last = (last.max(0.0) as u32).min(first.saturating_add(MAX as u32));
                for c in first..=last {
                    out.insert(c, v);
                }
                i += 3;
            }
            None => break,
        }
    }
    out
}

pub(super) fn width_array(widths: &BTreeMap<u32, f64>) -> Vec<Object> {
    let mut out = Vec::new();
    let mut run: Vec<Object> = Vec::new();
    let mut run_start = 0u32;
    let mut next = None;
    for (&c, &w) in widths {
        if next != Some(c) {
            if !run.is_empty() {
                out.push(Object::Integer(i64::from(run_start)));
                out.push(Object::Array(std::mem::take(&mut run)));
            }
            run_start = c;
        }
        run.push(Object::Real(w as f32));
        next = Some(c + 1);
    }
    if !run.is_empty() {
        out.push(Object::Integer(i64::from(run_start)));
        out.push(Object::Array(run));
    }
    out
}

/// A ToUnicode CMap mapping each 2-byte code to the same UTF-16 code unit, over the blocks
/// the font's character collection can hold (kept small: pdf-extract re-reads it per page).
fn identity_to_unicode(cmap_name: &str) -> Stream {
    let mut ranges: Vec<(u32, u32)> = vec![
        (0x0020, 0x007E),
        (0x00A0, 0x00FF),
        (0x2000, 0x206F),
        (0x2100, 0x22FF),
        (0x2460, 0x25FF),
        (0x3000, 0x303F),
        (0x4E00, 0x9FFF),
        (0xFF00, 0xFFEF),
    ];
    if cmap_name.contains("JIS") {
        ranges.push((0x3040, 0x30FF));
    }
    if cmap_name.contains("KS") {
        ranges.push((0x3130, 0x318F));
        ranges.push((0xAC00, 0xD7A3));
    }
    if cmap_name.contains("CNS") || cmap_name.contains("GB") {
        ranges.push((0x3100, 0x312F));
    }
    let mut s = String::from(
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n\
         1 begincodespacerange <0000> <FFFF> endcodespacerange\n",
    );
    s.push_str(&format!("{} beginbfrange\n", ranges.len()));
    for (lo, hi) in ranges {
        s.push_str(&format!("<{lo:04X}> <{hi:04X}> <{lo:04X}>\n"));
    }
    s.push_str("endbfrange\nendcmap CMapName currentdict /CMap defineresource pop end end\n");
    Stream::new(Dictionary::new(), s.into_bytes())
}

/// An encoding CMap with only the code-space of a legacy CJK encoding and an identity
/// CID mapping: enough for pdf-extract to split byte strings into codes, which the font's
/// ToUnicode map (if any) then decodes.
fn codespace_cmap(family: CmapFamily) -> Stream {
    let ranges: &[(&str, &str)] = match family {
        CmapFamily::Gbk | CmapFamily::Big5 => &[("00", "80"), ("8140", "FEFE")],
        CmapFamily::ShiftJis => &[
            ("00", "80"),
            ("8140", "9FFC"),
            ("A0", "DF"),
            ("E040", "FCFC"),
        ],
        CmapFamily::Euc => &[("00", "80"), ("8EA0", "8EDF"), ("8141", "FEFE")],
        CmapFamily::Unicode => &[("0000", "FFFF")],
    };
    let mut s = String::from("/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n");
    s.push_str(&format!("{} begincodespacerange\n", ranges.len()));
    for (lo, hi) in ranges {
        s.push_str(&format!("<{lo}> <{hi}>\n"));
    }
    s.push_str("endcodespacerange\n1 begincidrange\n<00> <FFFF> 0\nendcidrange\n");
    s.push_str("endcmap CMapName currentdict /CMap defineresource pop end end\n");
    Stream::new(Dictionary::new(), s.into_bytes())
}
