//! Text analysis for keyword search: text → index terms, the same way for chunks and queries.
//!
//! The text is split into runs of CJK characters and everything else:
//! - CJK runs go through jieba's search-mode cut (words plus their dictionary sub-words, so
//!   `长江大桥` is found by `大桥` too). Function words such as `的`, `了`, `吗` are dropped.
//! - Other runs are split into words. A word is letters and digits, optionally joined by `.`,
//!   `-`, `_` or `/` between two alphanumerics, so identifiers and versions (`ASN.1`,
//!   `libtasn1`, `x86_64`, `1.2.3`, `CVE-2021-3121`) stay whole. Plain words are lowercased,
//!   filtered through a small English stopword list and stemmed (Snowball English, so
//!   `policies` and `policy` meet). Words with digits or connectors are kept unstemmed, and a
//!   joined word also yields its alphabetic parts (`libtasn1-6` → `libtasn1-6`, `libtasn1`).
//!
//! Fullwidth ASCII (`ＶＰＮ`, `１２３`), common in Chinese text, is folded to ASCII first.
//!
//! [`ANALYZER_VERSION`] is stored with the index; changing anything here that alters the
//! terms of some text must bump it, so stored keyword postings are re-derived at open.

use std::sync::OnceLock;

/// Bump when the terms produced for some text change (see the module docs).
pub const ANALYZER_VERSION: &str = "1";

/// What kind of text a term came from; the fusion trusts exact identifier matches more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermKind {
    /// A stemmed word (Latin or other alphabetic scripts).
    Word,
    /// Letters and digits mixed, or joined by connectors: names, versions, part numbers.
    Ident,
    /// A word from jieba's segmentation of a CJK run.
    Cjk,
}

/// Very common English words that carry no topic. Kept short: every word dropped here can
/// never be searched for (the price of a large list shows up as "to be or not to be").
/// Contraction fragments (`don`, `re`, `ll`) are here because `'` splits words.
const EN_STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "aren", "as", "at",
    "be", "because", "been", "before", "being", "between", "both", "but", "by", "can", "could",
    "couldn", "did", "didn", "do", "does", "doesn", "doing", "don", "during", "each", "few", "for",
    "from", "had", "hadn", "has", "hasn", "have", "haven", "having", "he", "her", "here", "hers",
    "him", "his", "how", "i", "if", "in", "into", "is", "isn", "it", "its", "itself", "just", "ll",
    "me", "more", "most", "my", "myself", "no", "nor", "not", "of", "off", "on", "once", "only",
    "or", "other", "our", "ours", "out", "over", "own", "re", "same", "she", "should", "shouldn",
    "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "then", "there",
    "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "ve", "very",
    "was", "wasn", "we", "were", "weren", "what", "when", "where", "which", "while", "who", "whom",
    "why", "will", "with", "would", "wouldn", "you", "your", "yours",
];

/// Chinese function words, particles, pronouns and question words. Content words, even
/// single characters (`天` "day", `假` "leave"), are kept.
const ZH_STOPWORDS: &[&str] = &[
    "的",
    "了",
    "是",
    "在",
    "和",
    "与",
    "及",
    "或",
    "也",
    "都",
    "就",
    "而",
    "之",
    "其",
    "这",
    "那",
    "个",
    "着",
    "把",
    "被",
    "让",
    "给",
    "从",
    "对",
    "向",
    "吗",
    "呢",
    "吧",
    "啊",
    "呀",
    "嘛",
    "么",
    "哦",
    "我",
    "你",
    "您",
    "他",
    "她",
    "它",
    "们",
    "我们",
    "你们",
    "他们",
    "她们",
    "它们",
    "什么",
    "怎么",
    "怎样",
    "怎么样",
    "如何",
    "哪些",
    "哪个",
    "哪里",
    "这个",
    "那个",
    "这些",
    "那些",
    "以及",
    "还是",
    "或者",
    "而且",
    "并且",
    "因为",
    "所以",
    "但是",
    "如果",
    "已经",
    "一个",
    "请问",
    "请",
    "得",
    "地",
    "所",
    "为",
    "于",
    "以",
];

fn jieba() -> &'static jieba_rs::Jieba {
    // Loading the built-in dictionary takes 100+ ms; do it once per process.
    static J: OnceLock<jieba_rs::Jieba> = OnceLock::new();
    J.get_or_init(jieba_rs::Jieba::new)
}

fn stemmer() -> &'static rust_stemmers::Stemmer {
    static S: OnceLock<rust_stemmers::Stemmer> = OnceLock::new();
    S.get_or_init(|| rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English))
}

/// Load the segmentation dictionary now (e.g. at daemon start) rather than on the first
/// request that needs it.
pub fn warm_up() {
    jieba();
    stemmer();
}

fn is_en_stopword(w: &str) -> bool {
    EN_STOPWORDS.binary_search(&w).is_ok()
}

fn is_zh_stopword(w: &str) -> bool {
    ZH_STOPWORDS.contains(&w)
}

/// Fold fullwidth ASCII forms (U+FF01..U+FF5E) and the ideographic space to ASCII.
fn fold(c: char) -> char {
    match c as u32 {
        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
        0x3000 => ' ',
        _ => c,
    }
}

fn is_connector(c: char) -> bool {
    matches!(c, '.' | '-' | '_' | '/')
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && !super::is_cjk(c)
}

/// Calls `emit(term, kind)` for every index term of `text`, in order (repeats included: the
/// keyword index counts term frequency).
pub fn analyze_with(text: &str, mut emit: impl FnMut(&str, TermKind)) {
    let folded: String = text.chars().map(fold).collect();
    let chars: Vec<char> = folded.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if super::is_cjk(c) {
            let start = i;
            while i < chars.len() && super::is_cjk(chars[i]) {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            cjk_terms(&run, &mut emit);
        } else if is_word_char(c) {
            let start = i;
            i += 1;
            loop {
                if i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                } else if i + 1 < chars.len()
                    && is_connector(chars[i])
                    && is_word_char(chars[i + 1])
                {
                    i += 2;
                } else {
                    break;
                }
            }
            let word: String = chars[start..i].iter().collect();
            word_terms(&word, &mut emit);
        } else {
            i += 1;
        }
    }
}

/// The terms of `text` as owned strings (repeats included).
pub fn analyze(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    analyze_with(text, |t, _| out.push(t.to_string()));
    out
}

fn cjk_terms(run: &str, emit: &mut impl FnMut(&str, TermKind)) {
    for tok in jieba().cut_for_search(run, true) {
        let w = tok.word;
        if w.chars().all(super::is_cjk) && !is_zh_stopword(w) {
            emit(w, TermKind::Cjk);
        }
    }
}

fn word_terms(word: &str, emit: &mut impl FnMut(&str, TermKind)) {
    let lower = word.to_lowercase();
    let joined = lower.contains(is_connector);
    let has_digit = lower.chars().any(|c| c.is_numeric());
    if !joined && !has_digit {
        plain_word(&lower, emit);
        return;
    }
    if lower.chars().count() >= 2 || has_digit {
        emit(&lower, TermKind::Ident);
    }
    if joined {
        // The alphabetic (or alphanumeric) parts, so `libtasn1-6` is found by `libtasn1`
        // and `state-of-the-art` by `art`. Purely numeric parts (`6`, `3`) are noise.
        for part in lower.split(is_connector) {
            if part.chars().count() < 2 || !part.chars().any(char::is_alphabetic) {
                continue;
            }
            if part.chars().any(|c| c.is_numeric()) {
                emit(part, TermKind::Ident);
            } else {
                plain_word(part, emit);
            }
        }
    }
}

fn plain_word(w: &str, emit: &mut impl FnMut(&str, TermKind)) {
    if w.chars().count() < 2 || is_en_stopword(w) {
        return;
    }
    if w.is_ascii() {
        let stem = stemmer().stem(w);
        emit(&stem, TermKind::Word);
    } else {
        // Snowball English would mangle other languages; keep them whole.
        emit(w, TermKind::Word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopword_list_is_sorted_for_binary_search() {
        assert!(EN_STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn english_is_lowercased_stemmed_and_filtered() {
        let t = analyze("The Policies on Annual Leave, and how they're applied.");
        assert_eq!(t, ["polici", "annual", "leav", "appli"]);
        // The same stem for inflections: a query meets the text.
        assert_eq!(analyze("policy"), analyze("policies"));
    }

    #[test]
    fn identifiers_and_versions_stay_whole_and_yield_their_parts() {
        let t = analyze("Update libtasn1-6 to 4.19.0 for ASN.1 parsing (CVE-2021-46848), x86_64.");
        for want in [
            "updat",
            "libtasn1-6",
            "libtasn1",
            "4.19.0",
            "asn.1",
            "asn",
            "pars",
            "cve-2021-46848",
            "cve",
            "x86_64",
        ] {
            assert!(t.iter().any(|x| x == want), "{want} missing from {t:?}");
        }
        // Numeric fragments and single letters are not terms of their own.
        assert!(
            !t.iter().any(|x| x == "6" || x == "1" || x == "19"),
            "{t:?}"
        );
        // A sentence-final dot is not a connector.
        assert_eq!(analyze("version 1.2."), ["version", "1.2"]);
        assert_eq!(analyze("the employee's badge"), ["employe", "badg"]);
    }

    #[test]
    fn chinese_goes_through_jieba_and_drops_function_words() {
        let t = analyze("员工的报销发票有多少？");
        for w in ["员工", "报销", "发票", "多少"] {
            assert!(t.contains(&w.to_string()), "{w} missing from {t:?}");
        }
        assert!(!t.contains(&"的".to_string()), "{t:?}");
        // Search mode adds dictionary sub-words of long words.
        let t = analyze("长江大桥");
        for w in ["长江", "大桥", "长江大桥"] {
            assert!(t.contains(&w.to_string()), "{w} missing from {t:?}");
        }
        assert!(analyze("，。！？、").is_empty());
    }

    #[test]
    fn mixed_script_and_fullwidth_text_use_both_paths() {
        let t = analyze("ＶＰＮ密码怎么重置? Reset the VPN password");
        assert_eq!(t.iter().filter(|x| *x == "vpn").count(), 2, "{t:?}");
        for w in ["密码", "重置", "reset", "password"] {
            assert!(t.contains(&w.to_string()), "{w} missing from {t:?}");
        }
        assert!(!t.contains(&"怎么".to_string()), "{t:?}");
        let mut kinds = Vec::new();
        analyze_with("密码 policy v2.1", |t, k| kinds.push((t.to_string(), k)));
        assert_eq!(
            kinds,
            [
                ("密码".to_string(), TermKind::Cjk),
                ("polici".to_string(), TermKind::Word),
                ("v2.1".to_string(), TermKind::Ident),
                ("v2".to_string(), TermKind::Ident)
            ]
        );
    }
}
