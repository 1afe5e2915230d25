//! Frozen linear projections and how their products run: the packed
//! few-row kernels or burn's matmul ([`Weight::matmul`]); and building them
//! from HF-layout host weights.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use rayon::prelude::*;

use super::schedule::matmul_few_rows;
use crate::packed::{PACKED_MAX_ROWS, PackedWeight};
use crate::weights::{HostData, HostTensor};

/// A linear projection stored as `[d_in, d_out]` so the forward is `x @ W`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor<1>>,
}

/// A frozen `[d_in, d_out]` weight. Products with few rows (decoding) on
/// the CPU use a panel-packed copy, built on the first such product and
/// shared by clones of the model: 0.625 bytes per parameter for dequantised
/// Q4_1 weights, 1.125 for Q8_0, 4 for any other (SmolLM2 from its GGUF:
/// 98 MB); see [`crate::packed`]. All other products use burn's matmul.
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    pub(super) tensor: Tensor<2>,
    pub(super) packed: Arc<OnceLock<Option<PackedWeight>>>,
}

impl Weight {
    pub(super) fn new(tensor: Tensor<2>) -> Self {
        Self {
            tensor,
            packed: Arc::default(),
        }
    }

    /// `x @ W`; `blocks_per_thread` as in [`matmul_few_rows`], for CPUs
    /// without the packed kernel.
    ///
    /// # Shapes
    /// `x`: `[m, d_in]` -> `[m, d_out]`
    pub(super) fn matmul(&self, x: Tensor<2>, blocks_per_thread: usize) -> Tensor<2> {
        let [m, _] = x.dims();
        let dtype = self.tensor.dtype();
        let cpu = crate::device::is_cpu(&x.device());
        if dtype != DType::F32 && !cpu {
            // A 16-bit weight off the CPU: the product runs in the weight's
            // type (the device's 16-bit matrix units, f32 accumulation);
            // the rest of the model stays f32.
            let narrow = x.cast(FloatDType::from(dtype));
            return narrow.matmul(self.tensor.clone()).cast(FloatDType::F32);
        }
        // Not on an autodiff device: the packed product is computed on the
        // host, outside burn's graph. 16-bit weights are packed from their
        // widened values too: widening a whole weight for every decoding
        // step (in `matmul_few_rows`) made a 0.5B model decode at 0.5
        // tokens/s (benches/RESULTS.md).
        if m <= PACKED_MAX_ROWS
            && !x.is_autodiff()
            && cpu
            && let Some(y) = self
                .packed
                .get_or_init(|| PackedWeight::new(&self.tensor))
                .as_ref()
                .and_then(|p| p.matmul(&x))
        {
            return y;
        }
        if dtype == DType::F32 {
            matmul_few_rows(x, &self.tensor, blocks_per_thread)
        } else {
            // On the CPU a 16-bit weight is widened to f32 for the product,
            // exactly (burn's CPU backend would widen it inside a 16-bit
            // product anyway, and round the result).
            let wide = self.tensor.clone().cast(FloatDType::F32);
            matmul_few_rows(x, &wide, blocks_per_thread)
        }
    }
}

impl Linear {
    /// # Shapes
    /// `x`: `[n, d_in]` -> `[n, d_out]`
    pub(super) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.weight.matmul(x, 1);
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }
}

/// A small tensor (norm weight, bias) as f32, whatever type it was kept in.
pub(super) fn host_to_f32<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(
        TensorData::new(t.values().into_owned(), t.shape.clone()),
        device,
    )
}

/// A tensor in the type it was kept in (the embedding table).
pub(super) fn host_to_tensor<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    let data = match &t.data {
        HostData::F32(v) => TensorData::new(v.clone(), t.shape.clone()),
        HostData::Bf16(v) => TensorData::new(v.clone(), t.shape.clone()),
        HostData::F16(v) => TensorData::new(v.clone(), t.shape.clone()),
    };
    Tensor::from_data(data, (device, t.dtype().burn()))
}

/// `[out_j, in]` host weights -> one `[in, sum_j out_j]` tensor: the
/// transposed weights side by side, so `x @ W` gives their outputs
/// concatenated. Kept in the parts' type when they share one, else in f32
/// (a fused projection some of whose parts had an adapter merged).
pub(super) fn transposed_concat(parts: &[&HostTensor], device: &Device) -> Tensor<2> {
    let inp = parts[0].shape[1];
    let total: usize = parts.iter().map(|t| t.shape[0]).sum();
    let shape = [inp, total];
    let bf16s = all_of(parts, |d| match d {
        HostData::Bf16(v) => Some(v.as_slice()),
        _ => None,
    });
    let f16s = all_of(parts, |d| match d {
        HostData::F16(v) => Some(v.as_slice()),
        _ => None,
    });
    let (data, dtype) = if let Some(p) = bf16s {
        (
            TensorData::new(transposed(&p, inp, total), shape),
            DType::BF16,
        )
    } else if let Some(p) = f16s {
        (
            TensorData::new(transposed(&p, inp, total), shape),
            DType::F16,
        )
    } else {
        let values: Vec<(Cow<'_, [f32]>, usize)> =
            parts.iter().map(|t| (t.values(), t.shape[0])).collect();
        let p: Vec<(&[f32], usize)> = values.iter().map(|(v, out)| (&**v, *out)).collect();
        (
            TensorData::new(transposed(&p, inp, total), shape),
            DType::F32,
        )
    };
    Tensor::from_data(data, (device, dtype))
}

/// Each part's values and output count, when every part is kept as `T`.
fn all_of<'a, T>(
    parts: &[&'a HostTensor],
    typed: impl Fn(&'a HostData) -> Option<&'a [T]>,
) -> Option<Vec<(&'a [T], usize)>> {
    parts
        .iter()
        .map(|t| typed(&t.data).map(|v| (v, t.shape[0])))
        .collect()
}

/// `[out_j, in]` row-major parts -> `[in, sum_j out_j]` row-major.
fn transposed<T: Copy + Default + Send + Sync>(
    parts: &[(&[T], usize)],
    inp: usize,
    total: usize,
) -> Vec<T> {
    let mut data = vec![T::default(); inp * total];
    data.par_chunks_mut(total).enumerate().for_each(|(i, row)| {
        let mut col = 0;
        for (values, out) in parts {
            for o in 0..*out {
                row[col + o] = values[o * inp + i];
            }
            col += out;
        }
    });
    data
}

/// Concatenated biases (as f32), if the projections have them.
pub(super) fn concat_bias(parts: &[Option<&HostTensor>], device: &Device) -> Option<Tensor<1>> {
    let parts: Option<Vec<&HostTensor>> = parts.iter().copied().collect();
    parts.map(|ps| {
        let data: Vec<f32> = ps.iter().flat_map(|t| t.values().into_owned()).collect();
        let n = data.len();
        Tensor::from_data(TensorData::new(data, [n]), device)
    })
}
