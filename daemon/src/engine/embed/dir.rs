//! Model directory reading and validation: the files, `config.json` facts and pooling mode
//! of a sentence-transformers export, and where to look for the default model.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::engine::onnx::{first_onnx, read_json};

use super::*;

/// Static facts about an embedding model directory (no ONNX Runtime needed).
#[derive(Clone, Debug)]
pub struct EmbedSpec {
    pub dir: PathBuf,
    /// Served name: the directory name.
    pub name: String,
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub pooling: Pooling,
    /// Longest input in tokens, special tokens included.
    pub max_tokens: usize,
    /// Vector width (`hidden_size`; checked against the graph at load).
    pub dim: usize,
    /// Token id of the padding (`[PAD]`).
    pub pad_id: u32,
    /// Whether the model was trained on more than English (see the module doc).
    pub multilingual: bool,
}

/// Optional JSON file: `None` when absent, an error when present but unreadable.
pub(super) fn read_optional_json(file: &Path) -> Result<Option<Json>, EmbedError> {
    if file.exists() {
        read_json(file).map(Some)
    } else {
        Ok(None)
    }
}

pub(super) fn positive(v: &Json, key: &str, file: &Path) -> Result<Option<usize>, EmbedError> {
    match v.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(x) => match x.as_u64() {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(invalid(file, format!("`{key}` must be a positive integer"))),
        },
    }
}

/// The pooling mode of a sentence-transformers `1_Pooling/config.json`.
pub fn pooling_from_config(cfg: &Json, file: &Path) -> Result<Pooling, EmbedError> {
    let flag = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
    for unsupported in [
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ] {
        if flag(unsupported) {
            return Err(invalid(
                file,
                format!("`{unsupported}` is not supported (mean, cls or max pooling only)"),
            ));
        }
    }
    let modes: Vec<Pooling> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
    ]
    .into_iter()
    .filter(|(k, _)| flag(k))
    .map(|(_, p)| p)
    .collect();
    match modes.as_slice() {
        [] => Ok(Pooling::Mean),
        [one] => Ok(*one),
        _ => Err(invalid(
            file,
            "more than one pooling mode is set (concatenated pooling is not supported)",
        )),
    }
}

/// Whether `name` marks a multilingual model (see the module doc).
pub fn is_multilingual_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    MULTILINGUAL_MARKERS.iter().any(|m| lower.contains(m))
}

/// Whether `dir` looks like a sentence-transformers embedding model rather than a chat
/// model (so `serve` does not pick it as the chat model from `<state_dir>/models`).
pub fn is_embedding_model_dir(dir: &Path) -> bool {
    dir.join("sentence_bert_config.json").is_file()
        || dir.join("1_Pooling").is_dir()
        || dir.join("modules.json").is_file()
}

/// The ONNX file of an embedding model directory.
pub(super) fn find_onnx(dir: &Path) -> Result<PathBuf, EmbedError> {
    let top = dir.join("model.onnx");
    if top.is_file() {
        return Ok(top);
    }
    let sub = dir.join("onnx");
    let preferred = sub.join("model.onnx");
    if preferred.is_file() {
        return Ok(preferred);
    }
    first_onnx(&sub, "model").ok_or(EmbedError::Missing { file: top })
}

impl EmbedSpec {
    /// Read and check the configs of `dir`.
    pub fn read(dir: &Path) -> Result<EmbedSpec, EmbedError> {
        if !dir.is_dir() {
            return Err(EmbedError::NoDir(dir.to_path_buf()));
        }
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(DEFAULT_MODEL)
            .to_string();
        let onnx = find_onnx(dir)?;
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(EmbedError::Missing { file: tokenizer });
        }
        let cfg_file = dir.join("config.json");
        let cfg = read_json::<EmbedError>(&cfg_file)?;
        let dim = positive(&cfg, "hidden_size", &cfg_file)?
            .ok_or_else(|| invalid(&cfg_file, "`hidden_size` missing"))?;
        let positions = positive(&cfg, "max_position_embeddings", &cfg_file)?;
        let st_file = dir.join("sentence_bert_config.json");
        let seq = match read_optional_json(&st_file)? {
            Some(st) => positive(&st, "max_seq_length", &st_file)?,
            None => None,
        };
        let max_tokens = match (seq, positions) {
            (Some(s), Some(p)) if s > p => {
                return Err(invalid(
                    &st_file,
                    format!("`max_seq_length` {s} exceeds the model's {p} positions"),
                ))
            }
            (Some(s), _) => s,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(invalid(
                    &cfg_file,
                    "`max_position_embeddings` missing (and no sentence_bert_config.json)",
                ))
            }
        };
        if max_tokens < 3 {
            return Err(invalid(&cfg_file, "the model reads fewer than 3 tokens"));
        }
        let pool_file = dir.join("1_Pooling").join("config.json");
        let pooling = match read_optional_json(&pool_file)? {
            Some(p) => {
                if let Some(w) = positive(&p, "word_embedding_dimension", &pool_file)? {
                    if w != dim {
                        return Err(invalid(
                            &pool_file,
                            format!("`word_embedding_dimension` {w} but config.json says hidden_size {dim}"),
                        ));
                    }
                }
                pooling_from_config(&p, &pool_file)?
            }
            None => Pooling::Mean,
        };
        let pad_id = cfg
            .get("pad_token_id")
            .and_then(Json::as_u64)
            .map_or(0, |n| n as u32);
        let source_name = cfg
            .get("_name_or_path")
            .and_then(Json::as_str)
            .unwrap_or("");
        let multilingual = is_multilingual_name(&name) || is_multilingual_name(source_name);
        Ok(EmbedSpec {
            dir: dir.to_path_buf(),
            name,
            onnx,
            tokenizer,
            pooling,
            max_tokens,
            dim,
            pad_id,
            multilingual,
        })
    }
}

/// Candidate model directories when `embeddings.model` is not set, in order.
pub fn default_model_dirs(state_dir: &Path) -> Vec<PathBuf> {
    vec![
        state_dir.join("models").join(DEFAULT_MODEL),
        Path::new(SYSTEM_MODELS_DIR).join(DEFAULT_MODEL),
        Path::new(DEV_MODELS_DIR).join(DEFAULT_MODEL),
    ]
}

/// The embedding model directory: `configured` if set (it must exist), else the first of
/// [`default_model_dirs`] that exists.
pub fn locate(configured: Option<&Path>, state_dir: &Path) -> Result<PathBuf, EmbedError> {
    locate_in(configured, &default_model_dirs(state_dir))
}

pub(super) fn locate_in(
    configured: Option<&Path>,
    candidates: &[PathBuf],
) -> Result<PathBuf, EmbedError> {
    if let Some(dir) = configured {
        return if dir.is_dir() {
            Ok(dir.to_path_buf())
        } else {
            Err(EmbedError::NoDir(dir.to_path_buf()))
        };
    }
    if let Some(found) = candidates.iter().find(|d| d.is_dir()) {
        return Ok(found.clone());
    }
    Err(EmbedError::NotFound {
        tried: candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::expect_err;
    use serde_json::json;

    #[test]
    fn pooling_config() {
        let f = Path::new("/m/1_Pooling/config.json");
        let p = |v: Json| pooling_from_config(&v, f);
        assert_eq!(
            p(json!({"pooling_mode_mean_tokens": true})).unwrap(),
            Pooling::Mean
        );
        assert_eq!(
            p(json!({"pooling_mode_cls_token": true})).unwrap(),
            Pooling::Cls
        );
        assert_eq!(
            p(json!({"pooling_mode_max_tokens": true})).unwrap(),
            Pooling::Max
        );
        assert_eq!(p(json!({})).unwrap(), Pooling::Mean);
        expect_err(
            p(json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true})),
            &["/m/1_Pooling/config.json", "more than one"],
        );
        expect_err(
            p(json!({"pooling_mode_lasttoken": true})),
            &["pooling_mode_lasttoken"],
        );
    }

    /// A model directory with the given files (path, content).
    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    const CONFIG: &str = r#"{"hidden_size": 384, "max_position_embeddings": 512, "_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}"#;

    #[test]
    fn spec_reads_limits_and_pooling() {
        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
            ("sentence_bert_config.json", r#"{"max_seq_length": 256}"#),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true}"#,
            ),
        ]);
        let s = EmbedSpec::read(d.path()).unwrap();
        assert_eq!((s.dim, s.max_tokens, s.pooling), (384, 256, Pooling::Cls));
        assert!(s.onnx.ends_with("model.onnx"));
        assert!(!s.multilingual);
        // Without sentence_bert_config.json the position count is the limit.
        let d = dir_with(&[
            ("onnx/model_quantized.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
        ]);
        let s = EmbedSpec::read(d.path()).unwrap();
        assert_eq!((s.max_tokens, s.pooling), (512, Pooling::Mean));
        assert!(s.onnx.ends_with("onnx/model_quantized.onnx"));
    }

    #[test]
    fn spec_errors_name_the_file() {
        let d = dir_with(&[("tokenizer.json", "{}"), ("config.json", CONFIG)]);
        let e = EmbedSpec::read(d.path()).unwrap_err();
        assert!(
            matches!(&e, EmbedError::Missing { file } if file.ends_with("model.onnx")),
            "{e}"
        );

        let d = dir_with(&[("model.onnx", ""), ("config.json", CONFIG)]);
        let e = EmbedSpec::read(d.path()).unwrap_err();
        assert!(
            matches!(&e, EmbedError::Missing { file } if file.ends_with("tokenizer.json")),
            "{e}"
        );

        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", "{"),
        ]);
        expect_err(EmbedSpec::read(d.path()), &["config.json", "invalid JSON"]);

        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
            ("sentence_bert_config.json", r#"{"max_seq_length": 1024}"#),
        ]);
        expect_err(
            EmbedSpec::read(d.path()),
            &["sentence_bert_config.json", "1024"],
        );

        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            ("config.json", CONFIG),
            (
                "1_Pooling/config.json",
                r#"{"word_embedding_dimension": 768}"#,
            ),
        ]);
        expect_err(EmbedSpec::read(d.path()), &["1_Pooling", "768"]);

        let e = EmbedSpec::read(Path::new("/nonexistent/embed")).unwrap_err();
        assert!(matches!(e, EmbedError::NoDir(_)));
    }

    #[test]
    fn language_rule() {
        assert!(!is_multilingual_name("all-minilm-l6-v2"));
        assert!(!is_multilingual_name(
            "sentence-transformers/all-MiniLM-L6-v2"
        ));
        assert!(is_multilingual_name(
            "paraphrase-multilingual-MiniLM-L12-v2"
        ));
        assert!(is_multilingual_name("BAAI/bge-m3"));
        assert!(is_multilingual_name("bge-small-zh-v1.5"));
        assert!(is_multilingual_name("LaBSE"));
        // The name in config.json counts too.
        let d = dir_with(&[
            ("model.onnx", ""),
            ("tokenizer.json", "{}"),
            (
                "config.json",
                r#"{"hidden_size": 8, "max_position_embeddings": 16, "_name_or_path": "intfloat/multilingual-e5-small"}"#,
            ),
        ]);
        assert!(EmbedSpec::read(d.path()).unwrap().multilingual);
    }

    #[test]
    fn locate_search_order() {
        let root = tempfile::tempdir().unwrap();
        let cands: Vec<PathBuf> = ["a", "b", "c"]
            .iter()
            .map(|n| root.path().join(n))
            .collect();
        let e = locate_in(None, &cands).unwrap_err().to_string();
        for c in &cands {
            assert!(e.contains(&c.display().to_string()), "{e}");
        }
        std::fs::create_dir_all(&cands[2]).unwrap();
        assert_eq!(locate_in(None, &cands).unwrap(), cands[2]);
        std::fs::create_dir_all(&cands[1]).unwrap();
        assert_eq!(locate_in(None, &cands).unwrap(), cands[1]);
        // A configured directory must exist; it is never replaced by a default.
        let e = locate_in(Some(Path::new("/nonexistent/m")), &cands).unwrap_err();
        assert!(matches!(e, EmbedError::NoDir(_)));
        let state = Path::new("/srv/es");
        assert_eq!(
            default_model_dirs(state),
            vec![
                state.join("models").join(DEFAULT_MODEL),
                Path::new(SYSTEM_MODELS_DIR).join(DEFAULT_MODEL),
                Path::new(DEV_MODELS_DIR).join(DEFAULT_MODEL),
            ]
        );
    }

    #[test]
    fn embedding_dirs_are_recognised() {
        let d = dir_with(&[("sentence_bert_config.json", "{}")]);
        assert!(is_embedding_model_dir(d.path()));
        let d = dir_with(&[("genai_config.json", "{}")]);
        assert!(!is_embedding_model_dir(d.path()));
    }
}
