//! The number type of a model's frozen weights: `f32`, `bf16` or `f16`.
//!
//! Only the frozen matrices and the embedding table take it. Norm weights,
//! biases, activations, LoRA adapters, optimizer moments, steering vectors
//! and the loss stay f32: they are small, and rounding them would change
//! results for no memory saved. A product with a 16-bit weight runs as
//! [`crate::model`]'s `Weight::matmul` says: on the CPU the weight is
//! widened to f32 for the product (burn's CPU backend computes 16-bit
//! products in f32 anyway; decoding packs the widened values once),
//! elsewhere the activations are narrowed to the weight's type so the
//! device's 16-bit matrix units run it.

use std::fmt;
use std::str::FromStr;

use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// The stored type of the frozen weights.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 4 bytes per weight; the CPU default, and the only type whose
    /// decoding products use the packed kernels.
    #[default]
    F32,
    /// bfloat16: 2 bytes, f32's range, 8 significant bits.
    Bf16,
    /// IEEE half: 2 bytes, 11 significant bits, largest value 65504.
    F16,
}

impl WeightDtype {
    pub const ALL: [Self; 3] = [Self::F32, Self::Bf16, Self::F16];

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        }
    }

    /// transformers' name for it (`torch_dtype` in `config.json`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    /// For serde's `skip_serializing_if`: f32 is the default, and records
    /// written before the choice existed stay byte for byte the same.
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }

    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// burn's name for it.
    pub fn burn(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.map(Self::name).into();
                format!("unknown weight dtype `{s}` (one of {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::WeightDtype;

    #[test]
    fn names_parse_back_and_others_are_refused() {
        for dtype in WeightDtype::ALL {
            assert_eq!(dtype.name().parse::<WeightDtype>().unwrap(), dtype);
        }
        assert!("fp16".parse::<WeightDtype>().unwrap_err().contains("bf16"));
        #[derive(serde::Deserialize)]
        struct S {
            dtype: WeightDtype,
        }
        let s: S = toml::from_str("dtype = \"bf16\"").unwrap();
        assert_eq!(s.dtype, WeightDtype::Bf16);
        assert!(toml::from_str::<S>("dtype = \"int8\"").is_err());
    }
}
