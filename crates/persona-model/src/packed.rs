//! The model's side of the packed few-row products (the kernels live in
//! the `persona-kernels` crate, on host slices): a frozen `[k, n]` weight
//! packed once from its tensor, and products of few-row tensors over it.
//! `model::linear::Weight` decides when to use it.

use burn::tensor::{Tensor, TensorData};
use persona_kernels::PackedMatrix;
pub use persona_kernels::{CPU_KERNELS_VAR, CpuKernels, Format};

/// Products with at most this many rows use the packed weights; larger
/// ones (prefill, training) are faster in gemm, which then reuses each
/// packed panel for many rows. Measured (gemm's kernel on pre-packed
/// panels): ours wins up to 32 rows and ties at 64 (benches/RESULTS.md).
pub(crate) const PACKED_MAX_ROWS: usize = 32;

/// A frozen weight packed for the selected kernels.
#[derive(Debug)]
pub(crate) struct PackedWeight(PackedMatrix);

impl PackedWeight {
    /// Packs `w` (`[k, n]`; f32, or 16-bit values widened exactly) for the
    /// selected kernels. `None` when they are [`CpuKernels::Generic`].
    pub(crate) fn new(w: &Tensor<2>) -> Option<Self> {
        let kernels = CpuKernels::selected().ok()?;
        if kernels == CpuKernels::Generic {
            return None;
        }
        let [k, n] = w.dims();
        let data = w.clone().into_data().try_cast_as::<f32>().ok()?;
        PackedMatrix::pack(data.as_slice::<f32>().ok()?, k, n, kernels).map(Self)
    }

    pub(crate) fn format(&self) -> Format {
        self.0.format()
    }

    /// Bytes the panels take (what a decoding step reads).
    pub(crate) fn bytes(&self) -> usize {
        self.0.bytes()
    }

    /// `x @ w`, computed on the host. `None` (nothing computed) when `x` is
    /// not f32 or its width is not `k`.
    ///
    /// # Shapes
    /// `x`: `[m, k]` -> `[m, n]`
    pub(crate) fn matmul(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        let [m, _] = x.dims();
        let data = x.clone().into_data();
        let out = self.0.matmul(data.as_slice::<f32>().ok()?, m)?;
        let (_, n) = self.0.dims();
        Some(Tensor::from_data(TensorData::new(out, [m, n]), &x.device()))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::PackedWeight;
    use crate::testing::test_device;

    /// The tensor side of the packed product: the same values as burn's
    /// matmul up to summation order, and a width that is not `k` refused.
    #[test]
    fn packed_tensor_products_match_burns_matmul() {
        let dev = test_device();
        let w = Tensor::<2>::random([96, 80], Distribution::Normal(0.0, 1.0), &dev);
        let x = Tensor::<2>::random([5, 96], Distribution::Normal(0.0, 1.0), &dev);
        let Some(packed) = PackedWeight::new(&w) else {
            eprintln!("no packed kernels on this CPU: nothing to compare");
            return;
        };
        let got = crate::host_vec(packed.matmul(&x).unwrap()).unwrap();
        let want = crate::host_vec(x.matmul(w)).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{g} vs {w}");
        }
        assert!(packed.matmul(&Tensor::<2>::zeros([2, 9], &dev)).is_none());
    }
}
