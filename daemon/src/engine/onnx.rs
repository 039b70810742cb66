//! What the chat model (`model`, `runner`) and the embedding model (`embed`) both do with an
//! ONNX model directory and graph: read its JSON configs, pick its `.onnx` file, classify
//! integer inputs and build integer input tensors.

use std::path::{Path, PathBuf};

use ort::session::SessionInputValue;
use ort::value::{Tensor, TensorElementType, TensorRef, ValueType};
use serde_json::Value as Json;

/// Integer type the graph wants for ids / mask / positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntType {
    I64,
    I32,
}

impl IntType {
    /// The integer type of a graph value, if it is an int64 or int32 tensor.
    pub fn of(t: &ValueType) -> Option<IntType> {
        match t {
            ValueType::Tensor {
                ty: TensorElementType::Int64,
                ..
            } => Some(IntType::I64),
            ValueType::Tensor {
                ty: TensorElementType::Int32,
                ..
            } => Some(IntType::I32),
            _ => None,
        }
    }
}

/// The two ways a model file can fail to read, as each model kind's error type says them.
pub trait FileError {
    fn missing(file: &Path) -> Self;
    fn invalid(file: &Path, msg: String) -> Self;
}

/// `impl FileError` for an error enum with `Missing { file }` and `Invalid { file, msg }`
/// variants (`ModelError`, `EmbedError`).
macro_rules! impl_file_error {
    ($t:ident) => {
        impl $crate::engine::onnx::FileError for $t {
            fn missing(file: &std::path::Path) -> Self {
                $t::Missing {
                    file: file.to_path_buf(),
                }
            }
            fn invalid(file: &std::path::Path, msg: String) -> Self {
                $t::Invalid {
                    file: file.to_path_buf(),
                    msg,
                }
            }
        }
    };
}
pub(crate) use impl_file_error;

/// A JSON config file of a model directory (`config.json`, `genai_config.json`, …).
pub fn read_json<E: FileError>(file: &Path) -> Result<Json, E> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            E::missing(file)
        } else {
            E::invalid(file, e.to_string())
        }
    })?;
    serde_json::from_str(&text).map_err(|e| E::invalid(file, format!("invalid JSON: {e}")))
}

/// The first `*.onnx` file in `dir` by name whose name starts with `prefix`; `None` when
/// there is none or `dir` cannot be read.
pub fn first_onnx(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "onnx")
                && (prefix.is_empty()
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix)))
        })
        .collect();
    all.sort();
    all.into_iter().next()
}

/// An owned integer input tensor of type `ty` from int64 `data`.
pub fn int_tensor(
    ty: IntType,
    shape: Vec<usize>,
    data: Vec<i64>,
) -> ort::Result<SessionInputValue<'static>> {
    Ok(match ty {
        IntType::I64 => Tensor::from_array((shape, data))?.into_dyn().into(),
        IntType::I32 => {
            let data: Vec<i32> = data.into_iter().map(|x| x as i32).collect();
            Tensor::from_array((shape, data))?.into_dyn().into()
        }
    })
}

/// An integer input tensor of type `ty` that views `data64`, or (int32) `data32` after
/// converting into it: no allocation when the buffers are reused across batches.
pub fn int_tensor_view<'a>(
    ty: IntType,
    shape: [usize; 2],
    data64: &'a [i64],
    data32: &'a mut Vec<i32>,
) -> ort::Result<SessionInputValue<'a>> {
    Ok(match ty {
        IntType::I64 => TensorRef::from_array_view((shape, data64))?
            .into_dyn()
            .into(),
        IntType::I32 => {
            data32.clear();
            data32.extend(data64.iter().map(|&x| x as i32));
            TensorRef::from_array_view((shape, &data32[..]))?
                .into_dyn()
                .into()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Missing(PathBuf),
        Invalid(String),
    }

    impl FileError for E {
        fn missing(file: &Path) -> E {
            E::Missing(file.to_path_buf())
        }
        fn invalid(_: &Path, msg: String) -> E {
            E::Invalid(msg)
        }
    }

    #[test]
    fn json_configs_missing_malformed_and_fine() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        assert_eq!(read_json::<E>(&f), Err(E::Missing(f.clone())));
        std::fs::write(&f, "{not json").unwrap();
        assert!(matches!(read_json::<E>(&f), Err(E::Invalid(m)) if m.starts_with("invalid JSON")));
        std::fs::write(&f, r#"{"hidden_size": 8}"#).unwrap();
        assert_eq!(read_json::<E>(&f).unwrap()["hidden_size"], 8);
    }

    #[test]
    fn first_onnx_by_name_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(first_onnx(&dir.path().join("absent"), ""), None);
        for n in ["b.onnx", "model_z.onnx", "model_a.onnx", "a.txt"] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        assert_eq!(first_onnx(dir.path(), ""), Some(dir.path().join("b.onnx")));
        assert_eq!(
            first_onnx(dir.path(), "model"),
            Some(dir.path().join("model_a.onnx"))
        );
        assert_eq!(first_onnx(dir.path(), "x"), None);
    }
}
