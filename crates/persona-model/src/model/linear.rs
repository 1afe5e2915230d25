//! Frozen linear projections and how their products run: the packed
//! few-row kernels or burn's matmul ([`Weight::matmul`]); and building them
//! from HF-layout host weights.

use std::sync::{Arc, OnceLock};

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use super::schedule::matmul_few_rows;
use crate::packed::{PACKED_MAX_ROWS, PackedWeight};
use crate::weights::HostTensor;

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
        // Not on an autodiff device: the packed product is computed on the
        // host, outside burn's graph.
        if m <= PACKED_MAX_ROWS
            && !x.is_autodiff()
            && crate::device::is_cpu(&x.device())
            && let Some(y) = self
                .packed
                .get_or_init(|| PackedWeight::new(&self.tensor))
                .as_ref()
                .and_then(|p| p.matmul(&x))
        {
            return y;
        }
        matmul_few_rows(x, &self.tensor, blocks_per_thread)
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

pub(super) fn host_to_tensor<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// `[out_j, in]` host weights -> one `[in, sum_j out_j]` tensor: the
/// transposed weights side by side, so `x @ W` gives their outputs concatenated.
pub(super) fn transposed_concat(parts: &[&HostTensor], device: &Device) -> Tensor<2> {
    let inp = parts[0].shape[1];
    let total: usize = parts.iter().map(|t| t.shape[0]).sum();
    let mut data = vec![0f32; inp * total];
    data.par_chunks_mut(total).enumerate().for_each(|(i, row)| {
        let mut col = 0;
        for t in parts {
            let out = t.shape[0];
            for o in 0..out {
                row[col + o] = t.data[o * inp + i];
            }
            col += out;
        }
    });
    Tensor::from_data(TensorData::new(data, [inp, total]), device)
}

/// Concatenated biases, if the projections have them.
pub(super) fn concat_bias(parts: &[Option<&HostTensor>], device: &Device) -> Option<Tensor<1>> {
    let parts: Option<Vec<&HostTensor>> = parts.iter().copied().collect();
    parts.map(|ps| {
        let data: Vec<f32> = ps.iter().flat_map(|t| t.data.iter().copied()).collect();
        let n = data.len();
        Tensor::from_data(TensorData::new(data, [n]), device)
    })
}
