//! The ONNX Runtime session of an encoder: binding the graph's inputs and output, and
//! running one padded batch.

use std::borrow::Cow;
use std::path::Path;

use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, ValueType};

use crate::engine::onnx::{int_tensor_view, IntType};

use super::*;

/// The graph's embedding output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Output {
    /// `[batch, seq, dim]`: pooled here.
    Tokens(String),
    /// `[batch, dim]`: pooled by the graph.
    Sentence(String),
}

/// Input and output names and types, read from the session.
#[derive(Clone, Debug)]
pub(super) struct Graph {
    ids: IntType,
    mask: Option<IntType>,
    type_ids: Option<IntType>,
    output: Output,
}

pub(super) const INPUT_IDS: &str = "input_ids";
pub(super) const ATTENTION_MASK: &str = "attention_mask";
pub(super) const TOKEN_TYPE_IDS: &str = "token_type_ids";

pub(super) fn int_type(t: &ValueType, file: &Path, name: &str) -> Result<IntType, EmbedError> {
    IntType::of(t).ok_or_else(|| {
        invalid(
            file,
            format!("input `{name}` has unsupported type {t:?} (int64 or int32 expected)"),
        )
    })
}

/// Check the graph against the spec and find its inputs and output.
pub(super) fn bind_graph(session: &Session, spec: &EmbedSpec) -> Result<Graph, EmbedError> {
    let file = &spec.onnx;
    let mut ids = None;
    let mut mask = None;
    let mut type_ids = None;
    for input in session.inputs() {
        let name = input.name();
        let ty = int_type(input.dtype(), file, name)?;
        match name {
            INPUT_IDS => ids = Some(ty),
            ATTENTION_MASK => mask = Some(ty),
            TOKEN_TYPE_IDS => type_ids = Some(ty),
            other => {
                return Err(invalid(
                    file,
                    format!(
                    "graph input `{other}` is not one of input_ids, attention_mask, token_type_ids"
                ),
                ))
            }
        }
    }
    let ids = ids.ok_or_else(|| invalid(file, "graph has no input `input_ids`"))?;
    let find = |name: &str| session.outputs().iter().find(|o| o.name() == name);
    let (outlet, output, rank) = if let Some(o) = find("sentence_embedding") {
        (o, Output::Sentence(o.name().to_string()), 2)
    } else if let Some(o) = find("last_hidden_state").or_else(|| find("token_embeddings")) {
        (o, Output::Tokens(o.name().to_string()), 3)
    } else {
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        return Err(invalid(
            file,
            format!(
                "graph has none of the outputs sentence_embedding, last_hidden_state, token_embeddings (it has {})",
                names.join(", ")
            ),
        ));
    };
    let name = outlet.name();
    match outlet.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => {
            let dims: &[i64] = shape;
            if dims.len() != rank {
                return Err(invalid(
                    file,
                    format!(
                        "output `{name}` has {} dimensions, expected {rank}",
                        dims.len()
                    ),
                ));
            }
            if let Some(&d) = dims.last() {
                if d > 0 && d as usize != spec.dim {
                    return Err(invalid(
                        file,
                        format!(
                            "output `{name}` is {d} wide but config.json says hidden_size {}",
                            spec.dim
                        ),
                    ));
                }
            }
        }
        other => {
            return Err(invalid(
                file,
                format!("output `{name}` has unsupported type {other:?} (float32 expected)"),
            ))
        }
    }
    Ok(Graph {
        ids,
        mask,
        type_ids,
        output,
    })
}

/// One tokenized input.
#[derive(Clone, Debug)]
pub(super) struct Tokens {
    pub(super) ids: Vec<u32>,
    pub(super) type_ids: Vec<u32>,
}

/// The ONNX Runtime session and its reusable input buffers; lives on the worker thread.
pub(super) struct Model {
    session: Session,
    graph: Graph,
    pooling: Pooling,
    dim: usize,
    pad_id: i64,
    ids: Vec<i64>,
    mask: Vec<i64>,
    type_ids: Vec<i64>,
    ids32: Vec<i32>,
    mask32: Vec<i32>,
    type_ids32: Vec<i32>,
}

impl Model {
    /// The session for `spec`, with empty input buffers (they grow to the largest batch).
    pub(super) fn new(session: Session, graph: Graph, spec: &EmbedSpec) -> Model {
        Model {
            session,
            graph,
            pooling: spec.pooling,
            dim: spec.dim,
            pad_id: i64::from(spec.pad_id),
            ids: Vec::new(),
            mask: Vec::new(),
            type_ids: Vec::new(),
            ids32: Vec::new(),
            mask32: Vec::new(),
            type_ids32: Vec::new(),
        }
    }
}

pub(super) fn run_err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Run(e.to_string())
}

/// An input tensor of the graph's integer type, viewing `data64` or (after converting into
/// `data32`) `data32`.
pub(super) fn int_input<'a>(
    ty: IntType,
    shape: [usize; 2],
    data64: &'a [i64],
    data32: &'a mut Vec<i32>,
) -> Result<SessionInputValue<'a>, EmbedError> {
    int_tensor_view(ty, shape, data64, data32).map_err(run_err)
}

impl Model {
    /// Embed `rows` (each at most the model's limit) as one padded batch.
    pub(super) fn run(&mut self, rows: &[&Tokens]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let b = rows.len();
        let seq = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(1);
        let n = b * seq;
        self.ids.clear();
        self.ids.resize(n, self.pad_id);
        self.mask.clear();
        self.mask.resize(n, 0);
        self.type_ids.clear();
        self.type_ids.resize(n, 0);
        for (r, t) in rows.iter().enumerate() {
            let at = r * seq;
            for (dst, &id) in self.ids[at..at + t.ids.len()].iter_mut().zip(&t.ids) {
                *dst = i64::from(id);
            }
            self.mask[at..at + t.ids.len()].fill(1);
            for (dst, &id) in self.type_ids[at..at + t.type_ids.len()]
                .iter_mut()
                .zip(&t.type_ids)
            {
                *dst = i64::from(id);
            }
        }
        let lens: Vec<usize> = rows.iter().map(|r| r.ids.len()).collect();
        let shape = [b, seq];
        let g = &self.graph;
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'_>)> = Vec::with_capacity(3);
        inputs.push((
            Cow::Borrowed(INPUT_IDS),
            int_input(g.ids, shape, &self.ids, &mut self.ids32)?,
        ));
        if let Some(ty) = g.mask {
            inputs.push((
                Cow::Borrowed(ATTENTION_MASK),
                int_input(ty, shape, &self.mask, &mut self.mask32)?,
            ));
        }
        if let Some(ty) = g.type_ids {
            inputs.push((
                Cow::Borrowed(TOKEN_TYPE_IDS),
                int_input(ty, shape, &self.type_ids, &mut self.type_ids32)?,
            ));
        }
        let (out_name, pooled_by_graph) = match &g.output {
            Output::Tokens(n) => (n.clone(), false),
            Output::Sentence(n) => (n.clone(), true),
        };
        let outputs = self.session.run(inputs).map_err(run_err)?;
        let value = outputs
            .get(&out_name)
            .ok_or_else(|| EmbedError::Run(format!("output `{out_name}` missing")))?;
        let (out_shape, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
        let dims: &[i64] = out_shape;
        let dim = self.dim;
        let mut vectors = if pooled_by_graph {
            if dims != [b as i64, dim as i64] {
                return Err(EmbedError::Run(format!(
                    "output `{out_name}` has shape {dims:?}, expected [{b}, {dim}]"
                )));
            }
            data.chunks_exact(dim).map(<[f32]>::to_vec).collect()
        } else {
            if dims != [b as i64, seq as i64, dim as i64] {
                return Err(EmbedError::Run(format!(
                    "output `{out_name}` has shape {dims:?}, expected [{b}, {seq}, {dim}]"
                )));
            }
            pool(data, seq, dim, &lens, self.pooling)
        };
        vectors.iter_mut().for_each(|v| l2_normalize(v));
        Ok(vectors)
    }
}
