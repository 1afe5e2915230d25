//! Choosing the compute device at run time.

use burn::tensor::Device;

use crate::error::{ModelError, Result};

/// The devices a build may offer: `cpu` always (burn's `flex` backend),
/// `cuda` and `wgpu` when built with the features of those names.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(ModelError::DeviceUnavailable("cuda".into())),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => Err(ModelError::DeviceUnavailable("wgpu".into())),
        other => Err(ModelError::Input(format!(
            "unknown device `{other}`; use cpu, cuda or wgpu"
        ))),
    }
}
