//! Two element-wise steps of a decoder block, RoPE and the MLP's
//! `silu(gate) * up`, computed in one pass over host memory when the pass
//! runs on the CPU without autodiff (inference: generation, scoring,
//! capture). With burn's ops each is several ops on strided views (narrow,
//! cat, a copy to contiguous, two or three element-wise ops, each
//! allocating its output); one pass halves their share of a decoding step
//! (benches/RESULTS.md).
//!
//! The values are bit-identical to the burn ops they replace, so a pass
//! gives the same numbers whichever path it takes: every element goes
//! through the same operations in the same order (products and sums
//! rounded one at a time, never fused), and the sigmoid is the one burn's
//! CPU backend uses (rten-vecmath's, whose vectors are padded, not
//! finished element by element, so a value does not depend on where it
//! lies in the slice). Tested against the burn ops.
//!
//! Other devices, autodiff passes (training) and non-f32 tensors take
//! burn's ops.

use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor, TensorData};
use rten_simd::SimdUnaryOp;

/// Whether `t` is an f32 tensor on the CPU, outside autodiff: what the
/// host passes handle.
fn on_host<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && !t.is_autodiff() && crate::device::is_cpu(&t.device())
}

/// The values of a tensor [`on_host`] accepted, in logical order (read in
/// place when this is the storage's only handle).
fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    match t.into_data().try_into_vec::<f32>() {
        Ok(values) => values,
        Err(_) => unreachable!("an f32 tensor converts to f32 values"),
    }
}

/// Rotate-half RoPE, `x * cos + swap_halves(x) * sin` (the sign of
/// rotate-half folded into `sin`, see [`crate::model`]'s `Rope`): in one
/// host pass for CPU inference, with burn's ops otherwise.
///
/// # Shapes
/// `x`: `[b, heads, s, hd]`; `cos`, `sin`: `[b, 1, s, hd]` -> `[b, heads, s, hd]`
pub(crate) fn rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    match rope_on_host(&x, cos, sin) {
        Some(y) => y,
        None => rope_with_burn_ops(x, cos.clone(), sin.clone()),
    }
}

/// [`rope`] with burn's ops: autodiff and GPU passes.
fn rope_with_burn_ops(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [_, _, _, hd] = x.dims();
    let half = hd / 2;
    let swapped = Tensor::cat(
        vec![
            x.clone().narrow(3, half, half),
            x.clone().narrow(3, 0, half),
        ],
        3,
    );
    x * cos + swapped * sin
}

/// [`rope`] in one host pass; `None` when the tensors are not
/// [`on_host`] or the tables do not have `x`'s shape.
fn rope_on_host(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    let dims = x.dims();
    let [b, heads, s, hd] = dims;
    let tables_fit = cos.dims() == [b, 1, s, hd] && sin.dims() == [b, 1, s, hd];
    if hd % 2 != 0 || !tables_fit || ![x, cos, sin].into_iter().all(on_host) {
        return None;
    }
    let values = host_values(x.clone());
    let (cos, sin) = (host_values(cos.clone()), host_values(sin.clone()));
    let half = hd / 2;
    let mut out = vec![0f32; values.len()];
    // One head row of `hd` values at a time, with its position's tables;
    // each half of the output takes the other half as `swap_halves(x)`.
    for (i, (row, out)) in values
        .chunks_exact(hd)
        .zip(out.chunks_exact_mut(hd))
        .enumerate()
    {
        let (bi, si) = (i / (heads * s), i % s);
        let at = (bi * s + si) * hd;
        let (c, sn) = (&cos[at..at + hd], &sin[at..at + hd]);
        let (first, second) = row.split_at(half);
        let (out_first, out_second) = out.split_at_mut(half);
        for (part, own, other, c, sn) in [
            (out_first, first, second, &c[..half], &sn[..half]),
            (out_second, second, first, &c[half..], &sn[half..]),
        ] {
            for ((((o, &x), &swapped), &c), &sn) in
                part.iter_mut().zip(own).zip(other).zip(c).zip(sn)
            {
                let (a, b) = (x * c, swapped * sn);
                *o = a + b;
            }
        }
    }
    Some(Tensor::from_data(TensorData::new(out, dims), &x.device()))
}

/// The MLP's activation `silu(gate) * up` of a `[gate | up]` product,
/// with `silu(g) = g * sigmoid(g)` as burn's `silu`: in one host pass for
/// CPU inference (reading `gate_up` in place when this is its only
/// handle), with burn's ops otherwise.
///
/// # Shapes
/// `gate_up`: `[n, 2 ff]` -> `[n, ff]`
pub(crate) fn swiglu(gate_up: Tensor<2>, ff: usize) -> Tensor<2> {
    let [n, width] = gate_up.dims();
    if width != 2 * ff || !on_host(&gate_up) {
        return swiglu_with_burn_ops(gate_up, ff);
    }
    let device = gate_up.device();
    let values = host_values(gate_up);
    let mut out = Vec::with_capacity(n * ff);
    for row in values.chunks_exact(width) {
        let (gate, up) = row.split_at(ff);
        let start = out.len();
        out.extend_from_slice(gate);
        let act = &mut out[start..];
        rten_vecmath::Sigmoid {}.map_mut(act);
        for ((a, &g), &u) in act.iter_mut().zip(gate).zip(up) {
            let silu = g * *a;
            *a = silu * u;
        }
    }
    Tensor::from_data(TensorData::new(out, [n, ff]), &device)
}

/// [`swiglu`] with burn's ops: autodiff and GPU passes.
fn swiglu_with_burn_ops(gate_up: Tensor<2>, ff: usize) -> Tensor<2> {
    let gate = gate_up.clone().narrow(1, 0, ff);
    silu(gate) * gate_up.narrow(1, ff, ff)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::{rope_on_host, rope_with_burn_ops, swiglu, swiglu_with_burn_ops};
    use crate::testing::test_device;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        // Bits, so that the comparison is exact (and NaN-proof).
        crate::host_vec(t)
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    /// Same bits as the burn ops, on contiguous and strided inputs (the
    /// model passes heads as a `swap_dims` view), with 1 and several
    /// positions per row.
    #[test]
    fn rope_equals_the_burn_ops() {
        let dev = test_device();
        for (b, heads, s, hd) in [(1, 9, 1, 64), (16, 3, 1, 64), (2, 4, 5, 8), (3, 2, 7, 6)] {
            let normal = Distribution::Normal(0.0, 3.0);
            let x = Tensor::<4>::random([b, s, heads, hd], normal, &dev).swap_dims(1, 2);
            let cos = Tensor::<4>::random([b, 1, s, hd], Distribution::Default, &dev);
            let sin = Tensor::<4>::random([b, 1, s, hd], Distribution::Default, &dev);
            let got = rope_on_host(&x, &cos, &sin).expect("CPU inference tensors");
            assert_eq!(got.dims(), [b, heads, s, hd]);
            let want = rope_with_burn_ops(x.clone(), cos.clone(), sin.clone());
            assert_eq!(host(got), host(want), "{b} x {heads} x {s} x {hd}, strided");
            let contiguous = Tensor::<4>::from_data(x.into_data(), &dev);
            let got = rope_on_host(&contiguous, &cos, &sin).unwrap();
            assert_eq!(
                host(got),
                host(rope_with_burn_ops(contiguous, cos, sin)),
                "{b} x {heads} x {s} x {hd}, contiguous"
            );
        }
    }

    /// Same bits as `silu(gate) * up` in burn on the halves of a
    /// `[gate | up]` product, for widths that are and are not a multiple of
    /// the vector length, with the product shared (copied out) or not
    /// (read in place), and at large inputs (sigmoid saturates).
    #[test]
    fn swiglu_equals_the_burn_ops() {
        let dev = test_device();
        for (n, ff) in [(1, 1536), (16, 1536), (3, 37), (2, 5)] {
            let mut gate_up =
                Tensor::<2>::random([n, 2 * ff], Distribution::Normal(0.0, 4.0), &dev);
            if ff == 5 {
                let big = [-100.0f32, -20.0, 0.0, 20.0, 100.0, 1.0, 2.0, 3.0, 4.0, 5.0];
                gate_up = Tensor::<1>::from_floats(big.as_slice(), &dev)
                    .unsqueeze::<2>()
                    .repeat_dim(0, n);
            }
            let want = host(swiglu_with_burn_ops(gate_up.clone(), ff));
            let shared = swiglu(gate_up.clone(), ff);
            assert_eq!(shared.dims(), [n, ff]);
            assert_eq!(host(shared), want, "{n} x {ff}, shared");
            assert_eq!(host(swiglu(gate_up, ff)), want, "{n} x {ff}, in place");
        }
    }

    /// RoPE tables of another shape are left to burn (which reports them).
    #[test]
    fn mismatched_tables_are_not_handled() {
        let dev = test_device();
        let x = Tensor::<4>::zeros([1, 2, 3, 4], &dev);
        let wrong = Tensor::<4>::zeros([1, 1, 3, 2], &dev);
        assert!(rope_on_host(&x, &wrong, &wrong).is_none());
    }
}
