//! Model directories: layout detection, dimensions, IO names, EOS ids, tokenizer.
//!
//! Two layouts are understood, detected from the files present:
//! - **genai** (onnxruntime-genai builder output): `genai_config.json` + `model.onnx`.
//!   Attention is `GroupQueryAttention`, which derives positions from the attention mask, so
//!   the graph has no `position_ids` input.
//! - **onnx-community** (optimum exports): `config.json` + `onnx/model*.onnx` with a
//!   `position_ids` input and plain attention ops.
//!
//! Everything the runner needs (layer count, KV heads, head size, names, dtypes) comes from the
//! configs and is then checked against the graph itself, so a mismatched export fails at load
//! with the file named instead of producing garbage at the first request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::onnx::{first_onnx, impl_file_error, read_json};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {0} does not exist")]
    NoDir(PathBuf),
    #[error("{dir}: not a model directory (expected genai_config.json + model.onnx, or config.json + onnx/model*.onnx)")]
    UnknownLayout { dir: PathBuf },
    #[error("{file}: missing")]
    Missing { file: PathBuf },
    #[error("{file}: {msg}")]
    Invalid { file: PathBuf, msg: String },
}

fn invalid(file: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        file: file.to_path_buf(),
        msg: msg.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Genai,
    OnnxCommunity,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Genai => "genai",
            Layout::OnnxCommunity => "onnx-community",
        }
    }
}

/// Element type of the KV cache and logits as declared by the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
}

impl FloatType {
    pub fn element_type(self) -> TensorElementType {
        match self {
            FloatType::F32 => TensorElementType::Float32,
            FloatType::F16 => TensorElementType::Float16,
        }
    }
}

pub use super::onnx::IntType;

/// Names of the graph's inputs and outputs.
#[derive(Clone, Debug)]
pub struct IoNames {
    pub input_ids: String,
    pub attention_mask: String,
    pub position_ids: Option<String>,
    pub past_key: Vec<String>,
    pub past_value: Vec<String>,
    pub logits: String,
    pub present_key: Vec<String>,
    pub present_value: Vec<String>,
}

/// Static facts about a model, read from its directory before any session exists.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub dir: PathBuf,
    /// Served name: the directory name.
    pub name: String,
    pub layout: Layout,
    pub onnx: PathBuf,
    /// HF `model_type` (`qwen2`, `llama`, …).
    pub arch: String,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_size: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub eos_ids: Vec<u32>,
    pub bos_id: Option<u32>,
    pub names: IoNames,
    /// Filled in by [`ModelSpec::bind_graph`].
    pub kv_type: FloatType,
    pub logits_type: FloatType,
    pub ids_type: IntType,
    pub mask_type: IntType,
}

/// The model's dimensions as a layout reader finds them in its config.
struct Dims {
    num_layers: usize,
    num_kv_heads: usize,
    head_size: usize,
    vocab_size: usize,
    context_length: usize,
}

impl_file_error!(ModelError);

fn get_usize(v: &Json, key: &str, file: &Path) -> Result<usize, ModelError> {
    v.get(key)
        .and_then(Json::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| invalid(file, format!("`{key}` missing or not a number")))
}

fn ids_of(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(Json::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// `first`, then the ids of `more` it does not already hold (order kept: the first is the
/// one a config names as *the* EOS).
fn merge_ids(mut first: Vec<u32>, more: Vec<u32>) -> Vec<u32> {
    for id in more {
        if !first.contains(&id) {
            first.push(id);
        }
    }
    first
}

/// EOS ids from `generation_config.json`, if the directory has a readable one.
fn generation_eos(dir: &Path) -> Vec<u32> {
    read_json::<ModelError>(&dir.join("generation_config.json"))
        .map(|gc| ids_of(gc.get("eos_token_id")))
        .unwrap_or_default()
}

/// Detect the layout of `dir`.
pub fn detect_layout(dir: &Path) -> Result<Layout, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::NoDir(dir.to_path_buf()));
    }
    if dir.join("genai_config.json").is_file() {
        Ok(Layout::Genai)
    } else if dir.join("config.json").is_file() && dir.join("onnx").is_dir() {
        Ok(Layout::OnnxCommunity)
    } else {
        Err(ModelError::UnknownLayout {
            dir: dir.to_path_buf(),
        })
    }
}

impl ModelSpec {
    /// Read the configs of a model directory (no ONNX Runtime needed).
    pub fn read(dir: &Path) -> Result<ModelSpec, ModelError> {
        let layout = detect_layout(dir)?;
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model")
            .to_string();
        let mut spec = match layout {
            Layout::Genai => Self::read_genai(dir)?,
            Layout::OnnxCommunity => Self::read_onnx_community(dir)?,
        };
        spec.name = name;
        if spec.eos_ids.is_empty() {
            return Err(invalid(
                &spec.dir.join(layout_config(layout)),
                "no eos_token_id",
            ));
        }
        Ok(spec)
    }

    /// A spec as a layout reader found it: the architecture name under `arch.1` and the BOS
    /// id in the config `arch.0`; the dtypes are placeholders until [`ModelSpec::bind_graph`].
    fn unbound(
        dir: &Path,
        layout: Layout,
        onnx: PathBuf,
        arch: (&Json, &str),
        dims: Dims,
        eos_ids: Vec<u32>,
        names: IoNames,
    ) -> ModelSpec {
        let (config, arch_key) = arch;
        let Dims {
            num_layers,
            num_kv_heads,
            head_size,
            vocab_size,
            context_length,
        } = dims;
        ModelSpec {
            dir: dir.to_path_buf(),
            name: String::new(),
            layout,
            onnx,
            arch: config
                .get(arch_key)
                .and_then(Json::as_str)
                .unwrap_or("unknown")
                .to_string(),
            num_layers,
            num_kv_heads,
            head_size,
            vocab_size,
            context_length,
            eos_ids,
            bos_id: ids_of(config.get("bos_token_id")).first().copied(),
            names,
            kv_type: FloatType::F32,
            logits_type: FloatType::F32,
            ids_type: IntType::I64,
            mask_type: IntType::I64,
        }
    }

    fn read_genai(dir: &Path) -> Result<ModelSpec, ModelError> {
        let file = dir.join("genai_config.json");
        let cfg = read_json(&file)?;
        let model = cfg
            .get("model")
            .ok_or_else(|| invalid(&file, "`model` section missing"))?;
        let dec = model
            .get("decoder")
            .ok_or_else(|| invalid(&file, "`model.decoder` missing"))?;
        let dims = Dims {
            num_layers: get_usize(dec, "num_hidden_layers", &file)?,
            num_kv_heads: get_usize(dec, "num_key_value_heads", &file)?,
            head_size: get_usize(dec, "head_size", &file)?,
            vocab_size: get_usize(model, "vocab_size", &file)?,
            context_length: get_usize(model, "context_length", &file)?,
        };
        let num_layers = dims.num_layers;
        let onnx_name = dec
            .get("filename")
            .and_then(Json::as_str)
            .unwrap_or("model.onnx");
        let onnx = dir.join(onnx_name);
        if !onnx.is_file() {
            return Err(ModelError::Missing { file: onnx });
        }
        let s = |sect: &str, key: &str, default: &str| -> String {
            dec.get(sect)
                .and_then(|x| x.get(key))
                .and_then(Json::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let per_layer = |pattern: String| -> Vec<String> {
            (0..num_layers)
                .map(|i| pattern.replace("%d", &i.to_string()))
                .collect()
        };
        let has_pos = dec
            .get("inputs")
            .and_then(|x| x.get("position_ids"))
            .is_some();
        let names = IoNames {
            input_ids: s("inputs", "input_ids", "input_ids"),
            attention_mask: s("inputs", "attention_mask", "attention_mask"),
            position_ids: has_pos.then(|| s("inputs", "position_ids", "position_ids")),
            past_key: per_layer(s("inputs", "past_key_names", "past_key_values.%d.key")),
            past_value: per_layer(s("inputs", "past_value_names", "past_key_values.%d.value")),
            logits: s("outputs", "logits", "logits"),
            present_key: per_layer(s("outputs", "present_key_names", "present.%d.key")),
            present_value: per_layer(s("outputs", "present_value_names", "present.%d.value")),
        };
        // generation_config.json may list more stop ids (Qwen chat models end turns with <|im_end|>).
        let eos_ids = merge_ids(ids_of(model.get("eos_token_id")), generation_eos(dir));
        Ok(ModelSpec::unbound(
            dir,
            Layout::Genai,
            onnx,
            (model, "type"),
            dims,
            eos_ids,
            names,
        ))
    }

    fn read_onnx_community(dir: &Path) -> Result<ModelSpec, ModelError> {
        let file = dir.join("config.json");
        let cfg = read_json(&file)?;
        let num_layers = get_usize(&cfg, "num_hidden_layers", &file)?;
        let heads = get_usize(&cfg, "num_attention_heads", &file)?;
        let num_kv_heads = cfg
            .get("num_key_value_heads")
            .and_then(Json::as_u64)
            .map(|n| n as usize)
            .unwrap_or(heads);
        let hidden = get_usize(&cfg, "hidden_size", &file)?;
        let head_size = match cfg.get("head_dim").and_then(Json::as_u64) {
            Some(h) => h as usize,
            None if heads > 0 => hidden / heads,
            None => return Err(invalid(&file, "`num_attention_heads` is 0")),
        };
        let dims = Dims {
            num_layers,
            num_kv_heads,
            head_size,
            vocab_size: get_usize(&cfg, "vocab_size", &file)?,
            context_length: get_usize(&cfg, "max_position_embeddings", &file)?,
        };
        let onnx = pick_onnx_file(&dir.join("onnx"))?;
        let per_layer = |fmt: &str| -> Vec<String> {
            (0..num_layers)
                .map(|i| fmt.replace("{}", &i.to_string()))
                .collect()
        };
        let names = IoNames {
            input_ids: "input_ids".into(),
            attention_mask: "attention_mask".into(),
            position_ids: Some("position_ids".into()),
            past_key: per_layer("past_key_values.{}.key"),
            past_value: per_layer("past_key_values.{}.value"),
            logits: "logits".into(),
            present_key: per_layer("present.{}.key"),
            present_value: per_layer("present.{}.value"),
        };
        let eos_ids = merge_ids(generation_eos(dir), ids_of(cfg.get("eos_token_id")));
        Ok(ModelSpec::unbound(
            dir,
            Layout::OnnxCommunity,
            onnx,
            (&cfg, "model_type"),
            dims,
            eos_ids,
            names,
        ))
    }

    /// Check the names and shapes against the loaded graph and record the dtypes it wants.
    pub fn bind_graph(&mut self, session: &Session) -> Result<(), ModelError> {
        let file = self.onnx.clone();
        let input = |name: &str| session.inputs().iter().find(|o| o.name() == name);
        let output = |name: &str| session.outputs().iter().find(|o| o.name() == name);
        let need_in = |name: &str| {
            input(name).ok_or_else(|| invalid(&file, format!("graph has no input `{name}`")))
        };
        let need_out = |name: &str| {
            output(name).ok_or_else(|| invalid(&file, format!("graph has no output `{name}`")))
        };
        let ids = need_in(&self.names.input_ids)?;
        self.ids_type = int_type(ids.dtype(), &file, &self.names.input_ids)?;
        let mask = need_in(&self.names.attention_mask)?;
        self.mask_type = int_type(mask.dtype(), &file, &self.names.attention_mask)?;
        match (&self.names.position_ids, input("position_ids")) {
            (Some(p), _) => {
                need_in(p)?;
            }
            // A genai config that does not declare position_ids but a graph that wants them.
            (None, Some(_)) => self.names.position_ids = Some("position_ids".into()),
            (None, None) => {}
        }
        let past_count = session
            .inputs()
            .iter()
            .filter(|o| {
                o.name().starts_with("past_key_values.") || o.name().starts_with("past_key.")
            })
            .count();
        if past_count != 2 * self.num_layers {
            return Err(invalid(
                &file,
                format!(
                    "graph has {past_count} past KV inputs but the config says {} layers",
                    self.num_layers
                ),
            ));
        }
        for i in 0..self.num_layers {
            for name in [&self.names.past_key[i], &self.names.past_value[i]] {
                let o = need_in(name)?;
                self.kv_type = float_type(o.dtype(), &file, name)?;
                if let ValueType::Tensor { shape, .. } = o.dtype() {
                    let dims: &[i64] = shape;
                    if dims.len() != 4 {
                        return Err(invalid(&file, format!("`{name}` is not 4-D")));
                    }
                    // [batch, kv_heads, seq, head_size]; a symbolic dim (-1) is not checked.
                    let (heads, size) = (dims[1], dims[3]);
                    let wrong = if heads > 0 && heads as usize != self.num_kv_heads {
                        Some(format!(
                            "{heads} KV heads, config says {}",
                            self.num_kv_heads
                        ))
                    } else if size > 0 && size as usize != self.head_size {
                        Some(format!("head size {size}, config says {}", self.head_size))
                    } else {
                        None
                    };
                    if let Some(what) = wrong {
                        return Err(invalid(&file, format!("`{name}` has {what}")));
                    }
                }
            }
            need_out(&self.names.present_key[i])?;
            need_out(&self.names.present_value[i])?;
        }
        let logits = need_out(&self.names.logits)?;
        self.logits_type = float_type(logits.dtype(), &file, &self.names.logits)?;
        if let ValueType::Tensor { shape, .. } = logits.dtype() {
            let dims: &[i64] = shape;
            if let Some(&v) = dims.last() {
                if v > 0 {
                    self.vocab_size = v as usize;
                }
            }
        }
        Ok(())
    }
}

fn layout_config(l: Layout) -> &'static str {
    match l {
        Layout::Genai => "genai_config.json",
        Layout::OnnxCommunity => "config.json",
    }
}

/// Map a graph value's element type through `allowed`, or name the value in the error.
fn element_type<T: Copy>(
    t: &ValueType,
    file: &Path,
    name: &str,
    allowed: &[(TensorElementType, T)],
) -> Result<T, ModelError> {
    if let ValueType::Tensor { ty, .. } = t {
        if let Some((_, v)) = allowed.iter().find(|(e, _)| e == ty) {
            return Ok(*v);
        }
    }
    Err(invalid(
        file,
        format!("`{name}` has unsupported type {t:?}"),
    ))
}

fn int_type(t: &ValueType, file: &Path, name: &str) -> Result<IntType, ModelError> {
    IntType::of(t).ok_or_else(|| invalid(file, format!("`{name}` has unsupported type {t:?}")))
}

fn float_type(t: &ValueType, file: &Path, name: &str) -> Result<FloatType, ModelError> {
    use TensorElementType::{Float16, Float32};
    element_type(
        t,
        file,
        name,
        &[(Float32, FloatType::F32), (Float16, FloatType::F16)],
    )
}

/// onnx-community folders carry several precisions of one graph; take full precision when
/// present, else the common quantised names, else the first `.onnx` in name order.
fn pick_onnx_file(onnx_dir: &Path) -> Result<PathBuf, ModelError> {
    const PREFERRED: [&str; 6] = [
        "model.onnx",
        "model_q4.onnx",
        "model_int8.onnx",
        "model_quantized.onnx",
        "model_fp16.onnx",
        "model_q4f16.onnx",
    ];
    for n in PREFERRED {
        let p = onnx_dir.join(n);
        if p.is_file() {
            return Ok(p);
        }
    }
    first_onnx(onnx_dir, "").ok_or(ModelError::Missing {
        file: onnx_dir.join("model.onnx"),
    })
}

/// Load `tokenizer.json` and check it fits the model's logits.
pub fn load_tokenizer(spec: &ModelSpec) -> Result<Arc<Tokenizer>, ModelError> {
    let file = spec.dir.join("tokenizer.json");
    if !file.is_file() {
        return Err(ModelError::Missing { file });
    }
    let tok =
        Tokenizer::from_file(&file).map_err(|e| invalid(&file, format!("cannot load: {e}")))?;
    let n = tok.get_vocab_size(true);
    if n > spec.vocab_size {
        return Err(invalid(
            &file,
            format!(
                "tokenizer has {n} tokens but the model only produces {} logits",
                spec.vocab_size
            ),
        ));
    }
    Ok(Arc::new(tok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_directory_is_rejected_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        let e = ModelSpec::read(d.path()).unwrap_err().to_string();
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        assert!(e.contains("not a model directory"), "{e}");
    }

    #[test]
    fn missing_directory() {
        let e = ModelSpec::read(Path::new("/nonexistent/model")).unwrap_err();
        assert!(matches!(e, ModelError::NoDir(_)));
    }

    #[test]
    fn genai_missing_onnx_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("genai_config.json"),
            r#"{"model":{"type":"qwen2","vocab_size":10,"context_length":64,"eos_token_id":[1],
               "decoder":{"num_hidden_layers":2,"num_key_value_heads":2,"head_size":8,"filename":"model.onnx"}}}"#,
        )
        .unwrap();
        let e = ModelSpec::read(d.path()).unwrap_err();
        match e {
            ModelError::Missing { file } => assert!(file.ends_with("model.onnx")),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn genai_bad_json_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("genai_config.json"), "{nope").unwrap();
        let e = ModelSpec::read(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("genai_config.json") && e.contains("invalid JSON"),
            "{e}"
        );
    }

    #[test]
    fn genai_reads_dims_and_merges_eos() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("genai_config.json"),
            r#"{"model":{"type":"qwen2","vocab_size":10,"context_length":64,"eos_token_id":[3],"bos_token_id":2,
               "decoder":{"num_hidden_layers":3,"num_key_value_heads":2,"head_size":8,"filename":"m.onnx",
               "inputs":{"input_ids":"input_ids","attention_mask":"attention_mask",
                 "past_key_names":"past_key_values.%d.key","past_value_names":"past_key_values.%d.value"},
               "outputs":{"logits":"logits","present_key_names":"present.%d.key","present_value_names":"present.%d.value"}}}}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("generation_config.json"),
            r#"{"eos_token_id":[3,4]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("m.onnx"), b"").unwrap();
        let s = ModelSpec::read(d.path()).unwrap();
        assert_eq!(s.layout, Layout::Genai);
        assert_eq!(
            (s.num_layers, s.num_kv_heads, s.head_size, s.context_length),
            (3, 2, 8, 64)
        );
        assert_eq!(s.eos_ids, vec![3, 4]);
        assert_eq!(s.bos_id, Some(2));
        assert_eq!(s.names.past_key[2], "past_key_values.2.key");
        assert_eq!(s.names.present_value[1], "present.1.value");
        assert!(s.names.position_ids.is_none());
    }

    #[test]
    fn onnx_community_prefers_full_precision() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("onnx")).unwrap();
        for n in ["model_q4.onnx", "model.onnx", "model_fp16.onnx"] {
            std::fs::write(d.path().join("onnx").join(n), b"").unwrap();
        }
        std::fs::write(
            d.path().join("config.json"),
            r#"{"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
               "hidden_size":64,"vocab_size":100,"max_position_embeddings":128,"eos_token_id":7}"#,
        )
        .unwrap();
        let s = ModelSpec::read(d.path()).unwrap();
        assert_eq!(s.layout, Layout::OnnxCommunity);
        assert!(s.onnx.ends_with("onnx/model.onnx"));
        assert_eq!(s.head_size, 16);
        assert_eq!(s.eos_ids, vec![7]);
        assert_eq!(s.names.position_ids.as_deref(), Some("position_ids"));
    }

    #[test]
    fn missing_eos_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("onnx")).unwrap();
        std::fs::write(d.path().join("onnx/model.onnx"), b"").unwrap();
        std::fs::write(
            d.path().join("config.json"),
            r#"{"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,
               "hidden_size":64,"vocab_size":100,"max_position_embeddings":128}"#,
        )
        .unwrap();
        let e = ModelSpec::read(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("eos_token_id"),
            "{e}"
        );
    }
}
