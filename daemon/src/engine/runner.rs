//! One ONNX Runtime session and the forward pass of a decoder-only model.
//!
//! The KV cache lives in ONNX Runtime values (`[batch, kv_heads, seq, head]`). Each step's
//! `present.*` outputs are *moved* into the next step's `past_key_values.*` inputs: no copy
//! on the CPU path. Layouts with a `position_ids` input get explicit positions, genai graphs
//! (GroupQueryAttention) derive them from the mask.
//!
//! Two shapes of cache:
//! - [`SeqState`]: one sequence, batch 1, no padding. Used for single-stream generation and
//!   for (chunked) prefill, which is always run batch-1 so a long prompt never pads a batch.
//! - [`BatchKv`]: the running batch, `[B, kv_heads, P, head]` with `P` = the longest row.
//!   Rows of different lengths are padded, and the two layouts need different padding:
//!   - genai (`GroupQueryAttention`): GQA takes each row's past length from its mask
//!     (`seqlens_k = sum(mask row) - 1`, `total_sequence_length` = mask width) and writes
//!     the new token at that row's own length, so the cache is **right-padded**: row `b`'s
//!     tokens at `[0, L_b)`, the mask row is `L_b + 1` ones then zeros. (Checked on the
//!     fixtures with ORT's CPU GQA: `present` is `P + 1` wide, row `b`'s new key lands at
//!     `L_b`, and logits equal the unpadded batch-1 run bit for bit.)
//!   - onnx-community (plain ops): `present = concat(past, new)`, so the new token always
//!     lands at the end and the cache is **left-padded**: row `b`'s tokens end at `P`, the
//!     mask row is zeros then `L_b + 1` ones, `position_ids` = `L_b`.
//!
//!   The batch tensors are copied only when membership changes ([`Runner::assemble`]: a
//!   sequence joins after its prefill, or leaves); the copy also trims the padding to the
//!   new longest row. Between changes a step costs no copy by us.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Shape};

use super::model::{FloatType, IntType, ModelSpec};
use super::onnx;
use super::ort_env::Provider;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("model output `{0}` missing or malformed")]
    Output(String),
    #[error("KV cache: {0}")]
    Cache(String),
}

/// Where the padding of a batched KV cache goes (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Valid tokens first (GroupQueryAttention graphs).
    Right,
    /// Valid tokens last (graphs with `position_ids`).
    Left,
}

/// The KV cache of the running batch.
pub struct BatchKv {
    keys: Vec<DynValue>,
    values: Vec<DynValue>,
    /// Valid tokens of each row.
    lens: Vec<usize>,
    /// Padded sequence width of the tensors.
    width: usize,
}

impl BatchKv {
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    pub fn width(&self) -> usize {
        self.width
    }
}

/// A row of a batch being assembled.
pub enum RowSource {
    /// Row `i` of the previous batch.
    Kept(usize),
    /// A freshly prefilled sequence.
    Joined(SeqState),
}

fn ort_err(e: impl std::fmt::Display) -> RunError {
    RunError::Ort(e.to_string())
}

/// The KV cache and length of one sequence.
pub struct SeqState {
    keys: Vec<DynValue>,
    values: Vec<DynValue>,
    /// Tokens already in the cache.
    pub past_len: usize,
}

pub struct Runner {
    session: Session,
    pub spec: ModelSpec,
    pub provider: Provider,
}

impl Runner {
    /// The padding this graph needs for batched KV.
    pub fn padding(&self) -> Padding {
        if self.spec.names.position_ids.is_some() {
            Padding::Left
        } else {
            Padding::Right
        }
    }

    /// Bytes of KV cache per token: layers × (key + value) × kv_heads × head_size × dtype.
    pub fn kv_bytes_per_token(&self) -> usize {
        let dtype = match self.spec.kv_type {
            FloatType::F32 => 4,
            FloatType::F16 => 2,
        };
        self.spec.num_layers * 2 * self.spec.num_kv_heads * self.spec.head_size * dtype
    }

    /// Build the batch cache for `rows` (in that order) from the previous batch and newly
    /// prefilled sequences. Copies every row once, padded to the longest row.
    pub fn assemble(
        &self,
        old: Option<BatchKv>,
        rows: Vec<RowSource>,
    ) -> Result<Option<BatchKv>, RunError> {
        if rows.is_empty() {
            return Ok(None);
        }
        let mut lens = Vec::with_capacity(rows.len());
        for r in &rows {
            lens.push(match r {
                RowSource::Kept(i) => *old
                    .as_ref()
                    .and_then(|o| o.lens.get(*i))
                    .ok_or_else(|| RunError::Cache(format!("no row {i} in the old batch")))?,
                RowSource::Joined(s) => s.past_len,
            });
        }
        let width = lens.iter().copied().max().unwrap_or(0);
        let shape = [
            rows.len(),
            self.spec.num_kv_heads,
            width,
            self.spec.head_size,
        ];
        let ty = self.spec.kv_type.element_type();
        let pad = self.padding();
        let mut keys = Vec::with_capacity(self.spec.num_layers);
        let mut values = Vec::with_capacity(self.spec.num_layers);
        for layer in 0..self.spec.num_layers {
            for (is_key, dst_list) in [(true, &mut keys), (false, &mut values)] {
                let mut dst = self.zeroed(ty, shape)?;
                for (row, src) in rows.iter().enumerate() {
                    let (tensor, src_row, src_width) = match src {
                        RowSource::Kept(i) => {
                            let o = old
                                .as_ref()
                                .ok_or_else(|| RunError::Cache("no old batch".into()))?;
                            let list = if is_key { &o.keys } else { &o.values };
                            (list.get(layer), *i, o.width)
                        }
                        RowSource::Joined(s) => {
                            let list = if is_key { &s.keys } else { &s.values };
                            (list.get(layer), 0, s.past_len)
                        }
                    };
                    let tensor =
                        tensor.ok_or_else(|| RunError::Cache(format!("layer {layer} missing")))?;
                    copy_row(
                        tensor, src_row, src_width, &mut dst, row, width, lens[row], pad,
                        &self.spec,
                    )?;
                }
                dst_list.push(dst.into_dyn());
            }
        }
        Ok(Some(BatchKv {
            keys,
            values,
            lens,
            width,
        }))
    }

    /// One decode step for the whole batch: `tokens[b]` is appended to row `b`. Returns one
    /// logits row per batch row.
    pub fn step(&mut self, batch: &mut BatchKv, tokens: &[u32]) -> Result<Vec<Vec<f32>>, RunError> {
        let b = batch.lens.len();
        if tokens.len() != b {
            return Err(RunError::Cache(format!(
                "{} tokens for a batch of {b}",
                tokens.len()
            )));
        }
        let total = batch.width + 1;
        let spec = &self.spec;
        let pad = self.padding();
        let mut mask = vec![0i64; b * total];
        for (row, &len) in batch.lens.iter().enumerate() {
            let line = &mut mask[row * total..(row + 1) * total];
            match pad {
                Padding::Right => line[..=len].fill(1),
                Padding::Left => line[total - len - 1..].fill(1),
            }
        }
        let mut inputs = ids_input(spec, vec![b, 1], tokens)?;
        inputs.push((
            Cow::Owned(spec.names.attention_mask.clone()),
            int_tensor(spec.mask_type, vec![b, total], mask)?,
        ));
        if let Some(p) = &spec.names.position_ids {
            let pos = batch.lens.iter().map(|&l| l as i64).collect();
            inputs.push((
                Cow::Owned(p.clone()),
                int_tensor(IntType::I64, vec![b, 1], pos)?,
            ));
        }
        // On failure the batch has lost its tensors; the caller drops it.
        let rows = self.run_with_kv(inputs, &mut batch.keys, &mut batch.values, b, total)?;
        batch.width = total;
        for l in batch.lens.iter_mut() {
            *l += 1;
        }
        Ok(rows)
    }

    /// Move `keys`/`values` in as `past_key_values.*`, run, and move the `present.*`
    /// outputs (checked to be `[batch, _, total, _]`) back into them. Returns the logits of
    /// the last position of each batch row.
    fn run_with_kv(
        &mut self,
        mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)>,
        keys: &mut Vec<DynValue>,
        values: &mut Vec<DynValue>,
        batch: usize,
        total: usize,
    ) -> Result<Vec<Vec<f32>>, RunError> {
        let names = &self.spec.names;
        let past = std::mem::take(keys).into_iter().zip(std::mem::take(values));
        for (i, (k, v)) in past.enumerate() {
            inputs.push((Cow::Owned(names.past_key[i].clone()), k.into()));
            inputs.push((Cow::Owned(names.past_value[i].clone()), v.into()));
        }
        let mut out = self.session.run(inputs).map_err(ort_err)?;
        let logits = out
            .remove(&names.logits)
            .ok_or_else(|| RunError::Output(names.logits.clone()))?;
        let rows = last_rows(&logits, self.spec.logits_type)
            .filter(|r| r.len() == batch)
            .ok_or_else(|| RunError::Output(names.logits.clone()))?;
        for (present, dst) in [(&names.present_key, keys), (&names.present_value, values)] {
            for name in present {
                let v = out
                    .remove(name)
                    .ok_or_else(|| RunError::Output(name.clone()))?;
                let dims: &[i64] = v.shape();
                if dims.len() != 4 || dims[0] as usize != batch || dims[2] as usize != total {
                    return Err(RunError::Output(name.clone()));
                }
                dst.push(v);
            }
        }
        Ok(rows)
    }

    pub fn new(session: Session, spec: ModelSpec, provider: Provider) -> Self {
        Runner {
            session,
            spec,
            provider,
        }
    }

    /// A tensor from the session's allocator with every byte zero. Padding must be zero, not
    /// whatever the allocator returns: masked attention weights are exactly 0, and 0 × NaN
    /// (a stale bit pattern) would still poison the row.
    fn zeroed(
        &self,
        ty: ort::value::TensorElementType,
        shape: [usize; 4],
    ) -> Result<DynTensor, RunError> {
        let mut t = DynTensor::new(self.session.allocator(), ty, shape).map_err(ort_err)?;
        let bytes = ty.byte_size(shape.iter().product()).unwrap_or(0);
        let ptr = t.data_ptr_mut().cast::<u8>();
        if bytes > 0 && !ptr.is_null() {
            // SAFETY: the tensor was just allocated in host memory with exactly `bytes` bytes.
            unsafe { std::ptr::write_bytes(ptr, 0, bytes) };
        }
        Ok(t)
    }

    /// A new sequence whose cache holds the first `len` tokens of `src` (prefix reuse).
    pub fn prefix_of(&self, src: &SeqState, len: usize) -> Result<SeqState, RunError> {
        if len > src.past_len {
            return Err(RunError::Cache(format!(
                "prefix of {len} tokens from a cache of {}",
                src.past_len
            )));
        }
        let shape = [1, self.spec.num_kv_heads, len, self.spec.head_size];
        let ty = self.spec.kv_type.element_type();
        let copy = |list: &[DynValue]| -> Result<Vec<DynValue>, RunError> {
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let mut dst = self.zeroed(ty, shape)?;
                // A batch-1 cache has no padding: its first `len` tokens are the prefix.
                copy_row(
                    t,
                    0,
                    src.past_len,
                    &mut dst,
                    0,
                    len,
                    len,
                    Padding::Right,
                    &self.spec,
                )?;
                out.push(dst.into_dyn());
            }
            Ok(out)
        };
        Ok(SeqState {
            keys: copy(&src.keys)?,
            values: copy(&src.values)?,
            past_len: len,
        })
    }

    /// An empty cache (zero-length past tensors of the graph's dtype).
    pub fn new_sequence(&self) -> Result<SeqState, RunError> {
        let shape = [1usize, self.spec.num_kv_heads, 0, self.spec.head_size];
        let ty = self.spec.kv_type.element_type();
        let make = || -> Result<DynValue, RunError> {
            Ok(DynTensor::new(self.session.allocator(), ty, shape)
                .map_err(ort_err)?
                .into_dyn())
        };
        let mut keys = Vec::with_capacity(self.spec.num_layers);
        let mut values = Vec::with_capacity(self.spec.num_layers);
        for _ in 0..self.spec.num_layers {
            keys.push(make()?);
            values.push(make()?);
        }
        Ok(SeqState {
            keys,
            values,
            past_len: 0,
        })
    }

    /// Run `tokens` (the whole prompt, or one decode token) through the model, appending
    /// them to `seq`'s cache. Returns the logits of the last position.
    pub fn forward(&mut self, seq: &mut SeqState, tokens: &[u32]) -> Result<Vec<f32>, RunError> {
        let n = tokens.len();
        let total = seq.past_len + n;
        let spec = &self.spec;
        let mut inputs = ids_input(spec, vec![1, n], tokens)?;
        inputs.push((
            Cow::Owned(spec.names.attention_mask.clone()),
            int_tensor(spec.mask_type, vec![1, total], vec![1; total])?,
        ));
        if let Some(p) = &spec.names.position_ids {
            let pos = (seq.past_len..total).map(|p| p as i64).collect();
            inputs.push((
                Cow::Owned(p.clone()),
                int_tensor(IntType::I64, vec![1, n], pos)?,
            ));
        }
        let last = self
            .run_with_kv(inputs, &mut seq.keys, &mut seq.values, 1, total)?
            .pop()
            .ok_or_else(|| RunError::Output(self.spec.names.logits.clone()))?;
        seq.past_len = total;
        Ok(last)
    }
}

type Inputs = Vec<(Cow<'static, str>, SessionInputValue<'static>)>;

/// A fresh input list holding `input_ids` (room reserved for mask, positions and KV).
fn ids_input(spec: &ModelSpec, shape: Vec<usize>, tokens: &[u32]) -> Result<Inputs, RunError> {
    let mut inputs: Inputs = Vec::with_capacity(3 + 2 * spec.num_layers);
    inputs.push((
        Cow::Owned(spec.names.input_ids.clone()),
        int_tensor(
            spec.ids_type,
            shape,
            tokens.iter().map(|&t| t as i64).collect(),
        )?,
    ));
    Ok(inputs)
}

fn int_tensor(
    ty: IntType,
    shape: Vec<usize>,
    data: Vec<i64>,
) -> Result<SessionInputValue<'static>, RunError> {
    onnx::int_tensor(ty, shape, data).map_err(ort_err)
}

/// The logits row of the last position of every batch entry, as f32.
fn last_rows(logits: &DynValue, ty: FloatType) -> Option<Vec<Vec<f32>>> {
    let shape: &Shape = logits.shape();
    let dims: &[i64] = shape;
    if dims.len() != 3 || dims[0] < 1 || dims[1] < 1 || dims[2] < 1 {
        return None;
    }
    let (batch, seq, vocab) = (dims[0] as usize, dims[1] as usize, dims[2] as usize);
    let row = |b: usize| (b * seq + seq - 1) * vocab;
    match ty {
        FloatType::F32 => {
            let (_, data) = logits.try_extract_tensor::<f32>().ok()?;
            (0..batch)
                .map(|b| data.get(row(b)..row(b) + vocab).map(<[f32]>::to_vec))
                .collect()
        }
        FloatType::F16 => {
            // Without the `half` feature ort has no f16 element type to extract into; the
            // data is plain IEEE binary16 in host memory (session outputs default to CPU).
            let data = tensor_bytes(logits)?;
            let halves: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect();
            (0..batch)
                .map(|b| {
                    halves
                        .get(row(b)..row(b) + vocab)
                        .map(|r| r.iter().map(|&h| f16_to_f32(h)).collect())
                })
                .collect()
        }
    }
}

/// Size in bytes of one element of a KV / logits tensor.
fn elem_size(ty: FloatType) -> usize {
    match ty {
        FloatType::F32 => 4,
        FloatType::F16 => 2,
    }
}

/// The bytes of a CPU tensor; `None` if it is not in host memory.
fn tensor_bytes(v: &DynValue) -> Option<&[u8]> {
    let view = v.view().downcast::<DynTensorValueType>().ok()?;
    if !view.memory_info().is_cpu_accessible() {
        return None;
    }
    let ty = match view.dtype() {
        ort::value::ValueType::Tensor { ty, .. } => *ty,
        _ => return None,
    };
    let dims: &[i64] = view.shape();
    let n: usize = dims.iter().map(|&d| d.max(0) as usize).product();
    let len = ty.byte_size(n)?;
    if len == 0 {
        return Some(&[]);
    }
    let ptr = view.data_ptr().cast::<u8>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the tensor holds `len` bytes in host memory (checked above) and lives as long
    // as `v`, which the returned slice borrows.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Copy `len` valid tokens of row `src_row` of `src` (`[_, H, src_width, D]`, padded per
/// `pad`) into row `dst_row` of `dst` (`[_, H, dst_width, D]`), padded the same way.
#[allow(clippy::too_many_arguments)]
fn copy_row(
    src: &DynValue,
    src_row: usize,
    src_width: usize,
    dst: &mut DynTensor,
    dst_row: usize,
    dst_width: usize,
    len: usize,
    pad: Padding,
    spec: &ModelSpec,
) -> Result<(), RunError> {
    let heads = spec.num_kv_heads;
    let es = elem_size(spec.kv_type);
    let tok = spec.head_size * es;
    let src_dims: Vec<usize> = src.shape().iter().map(|&d| d.max(0) as usize).collect();
    if src_dims.len() != 4
        || src_row >= src_dims[0]
        || src_dims[1] != heads
        || src_dims[2] != src_width
        || src_dims[3] * es != tok
        || len > src_width
        || len > dst_width
    {
        return Err(RunError::Cache(format!(
            "source tensor {src_dims:?} does not fit row {src_row}, width {src_width}, length {len}"
        )));
    }
    let src_bytes = tensor_bytes(src)
        .ok_or_else(|| RunError::Cache("KV tensor is not in host memory".into()))?;
    let dst_rows = dst.shape().first().map_or(0, |&d| d.max(0) as usize);
    let dst_len = dst_rows * heads * dst_width * tok;
    if dst_row >= dst_rows {
        return Err(RunError::Cache(format!(
            "no row {dst_row} in the new batch"
        )));
    }
    let ptr = dst.data_ptr_mut().cast::<u8>();
    if dst_len == 0 || len == 0 {
        return Ok(());
    }
    if ptr.is_null() {
        return Err(RunError::Cache("KV tensor is not in host memory".into()));
    }
    // SAFETY: `dst` was created by `assemble` on the session's CPU allocator with
    // `dst_rows × heads × dst_width × head_size` elements of `es` bytes; no other
    // reference to its data exists while this slice lives.
    let dst_bytes = unsafe { std::slice::from_raw_parts_mut(ptr, dst_len) };
    let (s0, d0) = match pad {
        Padding::Right => (0, 0),
        Padding::Left => (src_width - len, dst_width - len),
    };
    for h in 0..heads {
        let s = ((src_row * heads + h) * src_width + s0) * tok;
        let d = ((dst_row * heads + h) * dst_width + d0) * tok;
        let n = len * tok;
        let from = src_bytes
            .get(s..s + n)
            .ok_or_else(|| RunError::Cache("source row out of bounds".into()))?;
        dst_bytes
            .get_mut(d..d + n)
            .ok_or_else(|| RunError::Cache("destination row out of bounds".into()))?
            .copy_from_slice(from);
    }
    Ok(())
}

/// IEEE 754 binary16 → binary32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: normalise
            let mut e: i32 = -14;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (((e + 127) as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 112) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }
}
