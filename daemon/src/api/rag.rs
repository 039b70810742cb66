//! Retrieval-augmented chat: the `knowledge` request parameter, the prompt with numbered
//! sources, and the `citations` of the response.
//!
//! The sources go into the last user message rather than a system message: DeepSeek-R1
//! guidance is to put all instructions in the user turn (the distilled models follow a system
//! prompt poorly), and it keeps earlier turns of the conversation untouched.

use serde_json::Value;

use super::error::ApiError;
use super::wire::chat::{Citation, KnowledgeParam};
use crate::engine::template::ChatMessage;
/// A retrieved chunk, as shown to the model, cited back to the client and returned by
/// `/v1/kb/search`: one shape for all three.
use crate::kb::Hit;
use crate::web::WebResult;

/// Most collections one request may search.
pub const MAX_COLLECTIONS: usize = 16;
/// Most sources one request may put into the prompt.
pub const MAX_TOP_K: u64 = 20;
pub const DEFAULT_TOP_K: usize = 5;

/// The validated `knowledge` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knowledge {
    pub collections: Vec<String>,
    pub top_k: usize,
}

/// Parse `"knowledge": {"collections": [...], "top_k": 5}`.
pub fn parse_knowledge(v: &Value) -> Result<Knowledge, ApiError> {
    knowledge(super::wire::from_value(
        v.clone(),
        "knowledge",
        knowledge_type_error,
    )?)
}

/// The 400 for a value of the wrong JSON type at `path` inside `knowledge`.
pub fn knowledge_type_error(path: &str) -> ApiError {
    let field = path.strip_prefix("knowledge.").unwrap_or("");
    if field.starts_with("collections[") {
        ApiError::invalid_param(
            "knowledge.collections",
            "collections must be non-empty strings",
        )
    } else if field.starts_with("collections") {
        ApiError::invalid_param(
            "knowledge.collections",
            "must be an array of collection names",
        )
    } else if field.starts_with("top_k") {
        ApiError::invalid_param(
            "knowledge.top_k",
            format!("must be an integer from 1 to {MAX_TOP_K}"),
        )
    } else {
        ApiError::invalid_param("knowledge", "must be an object")
    }
}

/// Validate a parsed `knowledge` parameter (errors name `knowledge.…`).
pub fn knowledge(k: KnowledgeParam) -> Result<Knowledge, ApiError> {
    let collections = match k.collections {
        Some(a) if !a.is_empty() && a.len() <= MAX_COLLECTIONS => {
            if a.iter().any(String::is_empty) {
                return Err(ApiError::invalid_param(
                    "knowledge.collections",
                    "collections must be non-empty strings",
                ));
            }
            a
        }
        Some(_) => {
            return Err(ApiError::invalid_param(
                "knowledge.collections",
                format!("give 1 to {MAX_COLLECTIONS} collections"),
            ))
        }
        None => {
            return Err(ApiError::invalid_param(
                "knowledge.collections",
                "collections is required",
            ))
        }
    };
    let top_k = match k.top_k {
        None => DEFAULT_TOP_K,
        Some(k @ 1..=MAX_TOP_K) => k as usize,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "knowledge.top_k",
                format!("must be an integer from 1 to {MAX_TOP_K}"),
            ))
        }
    };
    let mut seen = Vec::with_capacity(collections.len());
    for c in collections {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    Ok(Knowledge {
        collections: seen,
        top_k,
    })
}

/// The validated `web_search` parameter; `None` fields take `[web_search]`'s values.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct WebParam {
    pub top_n: Option<usize>,
    pub fetch: Option<usize>,
}

/// Longest text of one web source put into the prompt, in characters.
pub const WEB_SOURCE_CHARS: usize = 1500;

pub fn web_type_error() -> ApiError {
    ApiError::invalid_param(
        "web_search",
        "web_search must be true, false or {\"top_n\": 1-20, \"fetch\": 0-top_n}",
    )
}

/// Parse `"web_search": true | false | {"top_n", "fetch"}`.
pub fn web_param(v: Value) -> Result<Option<WebParam>, ApiError> {
    let o = match v {
        Value::Bool(false) => return Ok(None),
        Value::Bool(true) => return Ok(Some(WebParam::default())),
        Value::Object(o) => o,
        _ => return Err(web_type_error()),
    };
    let mut p = WebParam::default();
    for (k, v) in o {
        let n = v.as_u64().map(|n| n as usize);
        match (k.as_str(), n) {
            ("top_n", Some(n @ 1..=crate::web::searxng::MAX_TOP_N)) => p.top_n = Some(n),
            ("fetch", Some(n)) if n <= crate::web::searxng::MAX_TOP_N => p.fetch = Some(n),
            ("top_n" | "fetch", _) => {
                return Err(ApiError::invalid_param(
                    &format!("web_search.{k}"),
                    format!(
                        "must be an integer from {} to {}",
                        u8::from(k == "top_n"),
                        crate::web::searxng::MAX_TOP_N
                    ),
                ))
            }
            _ => return Err(ApiError::unknown_param(&format!("web_search.{k}"))),
        }
    }
    if let (Some(t), Some(f)) = (p.top_n, p.fetch) {
        if f > t {
            return Err(ApiError::invalid_param(
                "web_search.fetch",
                "fetch cannot be more than top_n",
            ));
        }
    }
    Ok(Some(p))
}

/// The text retrieval searches for: the last user message.
pub fn query_of(messages: &[ChatMessage]) -> Option<&str> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.content.as_deref())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Put the knowledge-base hits and web results into the last user message as numbered
/// sources (hits first, then web results) with the instruction to cite them. With no
/// sources the model is told so, instead of silently answering from its own knowledge as if
/// the sources agreed.
pub fn augment(messages: &mut [ChatMessage], sources: &[Hit], web: &[WebResult]) {
    let Some(last) = messages.iter_mut().rev().find(|m| m.role == "user") else {
        return;
    };
    let question = last.content.take().unwrap_or_default();
    let mut p = String::new();
    let from = match (sources.is_empty(), web.is_empty()) {
        (true, true) => None,
        (false, true) => Some("taken from the company's documents"),
        (true, false) => Some("found by a web search"),
        (false, false) => Some("from the company's documents and a web search"),
    };
    match from {
        None => p.push_str(
            "No source matched this question. Say that the sources do not cover it, then \
             answer only if you are sure.\n\n",
        ),
        Some(from) => p.push_str(&format!(
            "Answer the question using the numbered sources below, {from}. Cite the sources \
             you use as [1], [2], ... right after the statement they support. If the sources \
             do not contain the answer, say so. Answer in the language of the question.\n\n"
        )),
    }
    for (i, s) in sources.iter().enumerate() {
        p.push_str(&format!("[{}] {}", i + 1, s.filename));
        if let Some(page) = s.page {
            p.push_str(&format!(", page {page}"));
        }
        if let Some(h) = &s.heading {
            p.push_str(&format!(" — {h}"));
        }
        p.push('\n');
        p.push_str(s.text.trim());
        p.push_str("\n\n");
    }
    for (i, w) in web.iter().enumerate() {
        p.push_str(&format!(
            "[{}] {} — {}\n",
            sources.len() + i + 1,
            w.title,
            w.url
        ));
        let text = w.text.as_deref().unwrap_or(&w.snippet).trim();
        p.push_str(&cut(text, WEB_SOURCE_CHARS));
        p.push_str("\n\n");
    }
    p.push_str("Question: ");
    p.push_str(&question);
    last.content = Some(p);
}

/// At most `max` characters of `s`, with a mark where it was cut.
pub fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{} […]", &s[..at]),
    }
}

/// A web result as a citation (`index`, `url`, `title`, `text`: the snippet).
pub fn web_citation(index: usize, w: &WebResult) -> Value {
    serde_json::json!({"index": index, "url": w.url, "title": w.title, "text": w.snippet})
}

/// The response's `citations`: `index` is the `[n]` the answer uses.
pub fn citations(sources: &[Hit]) -> Vec<Citation> {
    sources
        .iter()
        .enumerate()
        .map(|(i, s)| Citation {
            index: i + 1,
            hit: s.clone(),
        })
        .collect()
}

/// [`citations`] and then the web results as JSON, for the response and the first stream
/// chunk: numbered as [`augment`] numbers them.
pub fn citations_json(sources: &[Hit], web: &[WebResult]) -> Value {
    let mut v = match super::wire::value(&citations(sources)) {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    v.extend(
        web.iter()
            .enumerate()
            .map(|(i, w)| web_citation(sources.len() + i + 1, w)),
    );
    Value::Array(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(content.into()),
            extra: Map::new(),
        }
    }

    fn src(n: u32) -> Hit {
        Hit {
            document_id: format!("d{n}"),
            filename: format!("doc{n}.md"),
            collection: "hr".into(),
            chunk_id: format!("d{n}_0"),
            ordinal: 0,
            page: (n == 2).then_some(7),
            heading: Some("Leave > Annual".into()),
            text: format!("chunk text {n}"),
            score: 0.5,
            bm25_rank: Some(1),
            bm25_score: Some(2.0),
            dense_rank: None,
            dense_score: None,
        }
    }

    #[test]
    fn knowledge_parameter() {
        let k = parse_knowledge(&json!({"collections": ["hr", "hr", "it"]})).unwrap();
        assert_eq!(k.collections, vec!["hr", "it"]);
        assert_eq!(k.top_k, DEFAULT_TOP_K);
        assert_eq!(
            parse_knowledge(&json!({"collections": ["hr"], "top_k": 3}))
                .unwrap()
                .top_k,
            3
        );
        for (bad, param) in [
            (json!([]), "knowledge"),
            (json!({}), "knowledge.collections"),
            (json!({"collections": []}), "knowledge.collections"),
            (json!({"collections": [""]}), "knowledge.collections"),
            (json!({"collections": "hr"}), "knowledge.collections"),
            (
                json!({"collections": ["hr"], "top_k": 0}),
                "knowledge.top_k",
            ),
            (
                json!({"collections": ["hr"], "top_k": 21}),
                "knowledge.top_k",
            ),
            (
                json!({"collections": ["hr"], "filter": 1}),
                "knowledge.filter",
            ),
        ] {
            let e = parse_knowledge(&bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{bad}");
        }
    }

    #[test]
    fn sources_go_into_the_last_user_turn() {
        let mut m = vec![
            msg("user", "first question"),
            msg("assistant", "first answer"),
            msg("user", "How many days?"),
        ];
        assert_eq!(query_of(&m), Some("How many days?"));
        let web = WebResult {
            title: "VPN help".into(),
            url: "https://wiki.example.test/vpn".into(),
            snippet: "Install the client".into(),
            text: Some("x".repeat(WEB_SOURCE_CHARS + 10)),
        };
        augment(&mut m, &[src(1), src(2)], std::slice::from_ref(&web));
        assert_eq!(m[0].content.as_deref(), Some("first question"));
        let p = m[2].content.as_deref().unwrap();
        assert!(p.contains("[1] doc1.md — Leave > Annual\nchunk text 1"));
        assert!(p.contains("[2] doc2.md, page 7"));
        assert!(p.ends_with("Question: How many days?"));
        assert!(p.contains("documents and a web search"));
        assert!(p.contains("[3] VPN help — https://wiki.example.test/vpn\n"));
        assert!(p.contains(&format!("{} […]", "x".repeat(WEB_SOURCE_CHARS))));
        let c = citations_json(&[src(1), src(2)], std::slice::from_ref(&web));
        assert_eq!(c[2]["index"], 3);
        assert_eq!(c[2]["url"], "https://wiki.example.test/vpn");
        assert_eq!(c[2]["text"], "Install the client");
        assert_eq!(c[1]["index"], 2);
        assert_eq!(c[1]["page"], 7);
        assert_eq!(c[0]["page"], Value::Null);
        assert_eq!(c[0]["chunk_id"], "d1_0");
        // The hit's own fields, the same as a search result, minus the internal ones.
        assert_eq!(c[0]["score"], 0.5);
        assert_eq!(c[0]["bm25_rank"], 1);
        assert!(c[0].get("ordinal").is_none() && c[0].get("bm25_score").is_none());
    }

    #[test]
    fn web_search_parameter() {
        assert_eq!(web_param(Value::Bool(false)).unwrap(), None);
        assert_eq!(
            web_param(Value::Bool(true)).unwrap(),
            Some(WebParam::default())
        );
        let p = web_param(json!({"top_n": 3, "fetch": 1})).unwrap().unwrap();
        assert_eq!((p.top_n, p.fetch), (Some(3), Some(1)));
        for (v, param) in [
            (json!({"top_n": 0}), "web_search.top_n"),
            (json!({"top_n": 2, "fetch": 3}), "web_search.fetch"),
            (json!({"depth": 1}), "web_search.depth"),
            (json!("yes"), "web_search"),
        ] {
            assert_eq!(web_param(v).unwrap_err().param.as_deref(), Some(param));
        }
    }

    #[test]
    fn no_sources_is_said() {
        let mut m = vec![msg("user", "q")];
        augment(&mut m, &[], &[]);
        assert!(m[0]
            .content
            .as_deref()
            .unwrap()
            .contains("No source matched"));
        assert_eq!(query_of(&[msg("assistant", "x")]), None);
    }
}
