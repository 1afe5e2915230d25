//! Choosing the compute device at run time.

use burn::tensor::Device;

use crate::error::{ModelError, Result};

/// Every device name `--device` and recipes accept (a build offers the
/// GPU ones only with the cargo feature of that name).
pub const DEVICE_NAMES: [&str; 3] = ["cpu", "cuda", "wgpu"];

/// Refuses a name that is not in [`DEVICE_NAMES`] (without starting the
/// device: [`parse_device`] does that).
pub fn check_device_name(name: &str) -> Result<()> {
    if DEVICE_NAMES.contains(&name) {
        Ok(())
    } else {
        Err(unknown_device(name))
    }
}

fn unknown_device(name: &str) -> ModelError {
    ModelError::Input(format!(
        "unknown device `{name}`; use {}",
        DEVICE_NAMES.join(", ")
    ))
}

/// The devices a build may offer: `cpu` always (burn's `flex` backend),
/// `cuda` and `wgpu` when built with the features of those names.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => probe(
            Device::cuda(0),
            "cuda",
            "no usable CUDA GPU (driver, libcuda and nvrtc are needed at run time)",
        ),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(ModelError::DeviceUnavailable("cuda".into())),
        #[cfg(feature = "wgpu")]
        "wgpu" => probe(
            Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            "wgpu",
            "no GPU adapter; install a Vulkan driver (on Debian/Ubuntu without a GPU: \
             mesa-vulkan-drivers, which runs Vulkan on the CPU)",
        ),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err(ModelError::DeviceUnavailable("wgpu".into())),
        other => Err(unknown_device(other)),
    }
}

/// Runs one tiny op on a GPU `device`: a backend that finds no adapter or
/// driver panics inside burn on first use, so that first use happens here,
/// where the panic becomes an error. The panic hook is silenced meanwhile
/// (the error is the one line the user sees).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn probe(device: Device, name: &str, problem: &str) -> Result<Device> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let works = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<1>::zeros([1], &device).into_data();
    }))
    .is_ok();
    std::panic::set_hook(hook);
    if works {
        Ok(device)
    } else {
        Err(ModelError::Input(format!(
            "device `{name}` does not start: {problem}"
        )))
    }
}

/// Whether `device` is burn's CPU backend (`flex`), with or without
/// autodiff: the CPU-only work sharing (row groups, column-split products)
/// applies there only; a GPU runs a whole batch in one go.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// Tunes the gemm crate that burn's CPU backend multiplies matrices with.
/// Called by [`crate::Model::from_weights`] for a CPU model (once per
/// process; the setting is process-wide and only affects CPU matmuls).
///
/// gemm reads the weight matrix in place, without repacking it, when the
/// product has few rows (up to 8 x its 6-column kernel width on one thread,
/// 16 x on several). Our weights are `[d_in, d_out]`, so reading them in
/// place walks down columns one row (a 2-12 KB stride) at a time, which the
/// hardware prefetcher cannot follow, so small-batch decoding read memory
/// at a fraction of the machine's bandwidth. Repacking as soon as a product
/// has more than one kernel width of rows (threshold 1) streams the weights
/// instead (16- and 64-row products about twice as fast:
/// benches/RESULTS.md). Only how the weights are fetched changes, not the
/// kernel (the reference numerics tests pass unchanged).
pub fn tune_cpu_matmul() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        gemm::set_lhs_packing_threshold_single_thread(1);
        gemm::set_lhs_packing_threshold_multi_thread(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_recognised_with_and_without_autodiff() {
        assert!(is_cpu(&Device::flex()));
        assert!(is_cpu(&Device::flex().autodiff()));
    }

    /// The vendored burn-flex runs f32 `exp` and `sigmoid` through one
    /// vectorised kernel whatever the layout (vendor/README.md): a strided
    /// view must give the same bits as a contiguous copy, and the kernel
    /// must agree with `f32::exp` to a few ulp.
    #[test]
    fn cpu_exp_and_sigmoid_match_libm_and_ignore_the_layout() {
        use burn::tensor::activation::{sigmoid, silu};
        use burn::tensor::{Distribution, Tensor};
        let device = Device::flex();
        let x = Tensor::<2>::random([37, 53], Distribution::Normal(0.0, 6.0), &device);
        let strided = x.clone().transpose();
        let contiguous = Tensor::<2>::from_data(strided.clone().into_data(), &device);
        let host = |t: Tensor<2>| crate::host_vec(t).unwrap();
        let bits = |t: Tensor<2>| -> Vec<u32> { host(t).iter().map(|f| f.to_bits()).collect() };
        type Activation = fn(Tensor<2>) -> Tensor<2>;
        let ops: [(&str, Activation); 3] =
            [("exp", |t| t.exp()), ("sigmoid", sigmoid), ("silu", silu)];
        for (name, op) in ops {
            assert_eq!(
                bits(op(strided.clone())),
                bits(op(contiguous.clone())),
                "{name} depends on the layout"
            );
        }
        let input = host(contiguous.clone());
        let got = host(contiguous.exp());
        for (x, y) in input.iter().zip(&got) {
            let want = x.exp();
            assert!(
                (y - want).abs() <= 4.0 * f32::EPSILON * want,
                "exp({x}) = {y}, libm {want}"
            );
        }
    }
}
