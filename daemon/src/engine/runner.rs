//! One ONNX Runtime session and the forward pass of a decoder-only model.
//!
//! The KV cache of a sequence lives in ONNX Runtime values (`[batch, kv_heads, seq, head]`).
//! Each step's `present.*` outputs are *moved* into the sequence as the next step's
//! `past_key_values.*` inputs: no copy on the CPU path. The attention mask covers past plus
//! new tokens; layouts with a `position_ids` input get explicit positions, genai graphs
//! (GroupQueryAttention) derive them from the mask.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynTensorValueType, DynValue, Shape, Tensor};

use super::model::{FloatType, IntType, ModelSpec};
use super::ort_env::Provider;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    #[error("model output `{0}` missing or malformed")]
    Output(String),
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
    pub fn new(session: Session, spec: ModelSpec, provider: Provider) -> Self {
        Runner {
            session,
            spec,
            provider,
        }
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
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> =
            Vec::with_capacity(3 + 2 * spec.num_layers);
        inputs.push((
            Cow::Owned(spec.names.input_ids.clone()),
            int_tensor(
                spec.ids_type,
                vec![1, n],
                tokens.iter().map(|&t| t as i64).collect(),
            )?,
        ));
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
        let keys = std::mem::take(&mut seq.keys);
        let values = std::mem::take(&mut seq.values);
        for (i, (k, v)) in keys.into_iter().zip(values).enumerate() {
            inputs.push((Cow::Owned(spec.names.past_key[i].clone()), k.into()));
            inputs.push((Cow::Owned(spec.names.past_value[i].clone()), v.into()));
        }
        let logits_name = spec.names.logits.clone();
        let logits_type = spec.logits_type;
        let present_key = spec.names.present_key.clone();
        let present_value = spec.names.present_value.clone();

        let mut out = self.session.run(inputs).map_err(ort_err)?;
        let logits = out
            .remove(&logits_name)
            .ok_or_else(|| RunError::Output(logits_name.clone()))?;
        let last =
            last_row(&logits, logits_type).ok_or_else(|| RunError::Output(logits_name.clone()))?;
        for name in present_key.iter() {
            seq.keys.push(
                out.remove(name)
                    .ok_or_else(|| RunError::Output(name.clone()))?,
            );
        }
        for name in present_value.iter() {
            seq.values.push(
                out.remove(name)
                    .ok_or_else(|| RunError::Output(name.clone()))?,
            );
        }
        seq.past_len = total;
        Ok(last)
    }
}

fn int_tensor(
    ty: IntType,
    shape: Vec<usize>,
    data: Vec<i64>,
) -> Result<SessionInputValue<'static>, RunError> {
    Ok(match ty {
        IntType::I64 => Tensor::from_array((shape, data))
            .map_err(ort_err)?
            .into_dyn()
            .into(),
        IntType::I32 => Tensor::from_array((
            shape,
            data.into_iter().map(|x| x as i32).collect::<Vec<i32>>(),
        ))
        .map_err(ort_err)?
        .into_dyn()
        .into(),
    })
}

/// The logits row of the last position of the first batch entry, as f32.
fn last_row(logits: &DynValue, ty: FloatType) -> Option<Vec<f32>> {
    let shape: &Shape = logits.shape();
    let dims: &[i64] = shape;
    if dims.len() != 3 || dims[1] < 1 || dims[2] < 1 {
        return None;
    }
    let vocab = dims[2] as usize;
    let offset = (dims[1] as usize - 1) * vocab;
    match ty {
        FloatType::F32 => {
            let (_, data) = logits.try_extract_tensor::<f32>().ok()?;
            data.get(offset..offset + vocab).map(<[f32]>::to_vec)
        }
        FloatType::F16 => {
            // Without the `half` feature ort has no f16 element type to extract into; the
            // data is plain IEEE binary16 in host memory (session outputs default to CPU).
            let total: usize = dims.iter().map(|&d| d as usize).product();
            let view = logits.view().downcast::<DynTensorValueType>().ok()?;
            let ptr = view.data_ptr().cast::<u16>();
            if ptr.is_null() {
                return None;
            }
            // SAFETY: the tensor holds `total` u16 values in CPU memory and outlives the slice.
            let data = unsafe { std::slice::from_raw_parts(ptr, total) };
            data.get(offset..offset + vocab)
                .map(|r| r.iter().map(|&h| f16_to_f32(h)).collect())
        }
    }
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
