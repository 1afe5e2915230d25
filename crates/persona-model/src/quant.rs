//! ggml tensor types and their dequantisation to f32.
//!
//! Block layouts follow ggml's `ggml-common.h`: each block holds 32 values
//! and starts with an f16 scale `d` (Q4_1 also an f16 minimum `m`).
//! - Q4_0 (18 bytes): `x = (q - 8) * d`, q the low nibbles for values 0..16
//!   and the high nibbles for values 16..32.
//! - Q4_1 (20 bytes): `x = q * d + m`, same nibble order.
//! - Q8_0 (34 bytes): `x = q * d`, q an i8.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

const BLOCK: usize = 32;

/// The ggml types this runtime can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    /// Known to ggml but not supported here; carries its name for the error.
    Other(&'static str),
}

impl GgmlType {
    /// Maps a ggml type id; `None` for ids ggml does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Other("Q5_0"),
            7 => Self::Other("Q5_1"),
            8 => Self::Q8_0,
            9 => Self::Other("Q8_1"),
            10 => Self::Other("Q2_K"),
            11 => Self::Other("Q3_K"),
            12 => Self::Other("Q4_K"),
            13 => Self::Other("Q5_K"),
            14 => Self::Other("Q6_K"),
            15 => Self::Other("Q8_K"),
            16..=23 => Self::Other("IQ (importance) quant"),
            24 => Self::Other("I8"),
            25 => Self::Other("I16"),
            26 => Self::Other("I32"),
            27 => Self::Other("I64"),
            28 => Self::Other("F64"),
            29 => Self::Other("IQ1_M"),
            30 => Self::BF16,
            34 => Self::Other("TQ1_0"),
            35 => Self::Other("TQ2_0"),
            _ => return None,
        })
    }

    /// Bytes taken by `n` values, or `None` when `n` is not a whole number of blocks.
    /// Also `None` when the byte count overflows `usize`.
    pub fn n_bytes(self, n: usize) -> Option<usize> {
        let blocks = |size: usize| {
            n.is_multiple_of(BLOCK)
                .then(|| (n / BLOCK).checked_mul(size))
                .flatten()
        };
        match self {
            Self::F32 => n.checked_mul(4),
            Self::F16 | Self::BF16 => n.checked_mul(2),
            Self::Q4_0 => blocks(18),
            Self::Q4_1 => blocks(20),
            Self::Q8_0 => blocks(34),
            // Unknown layout: report size 0 so the table parses; dequantising errors.
            Self::Other(_) => Some(0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Other(n) => n,
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `bytes` of type `t` to f32 (in parallel over blocks).
pub fn dequantize(t: GgmlType, bytes: &[u8], tensor: &str) -> Result<Vec<f32>> {
    let out = match t {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::Q4_0 => blockwise(bytes, 18, |b, out| {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blockwise(bytes, 20, |b, out| {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            for j in 0..16 {
                let q = b[4 + j];
                out[j] = (q & 0x0f) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q8_0 => blockwise(bytes, 34, |b, out| {
            let d = f16_at(b, 0);
            for j in 0..32 {
                out[j] = b[2 + j] as i8 as f32 * d;
            }
        }),
        GgmlType::Other(name) => {
            return Err(ModelError::UnsupportedQuantization {
                ggml_type: name.to_string(),
                tensor: tensor.to_string(),
            });
        }
    };
    Ok(out)
}

fn blockwise(bytes: &[u8], block_bytes: usize, f: impl Fn(&[u8], &mut [f32]) + Sync) -> Vec<f32> {
    let n_blocks = bytes.len() / block_bytes;
    let mut out = vec![0f32; n_blocks * BLOCK];
    out.par_chunks_mut(BLOCK)
        .zip(bytes.par_chunks_exact(block_bytes))
        .for_each(|(o, b)| f(b, o));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_1_block_uses_low_then_high_nibbles() {
        let mut b = Vec::new();
        b.extend(f16b(0.5));
        b.extend(f16b(-1.0));
        // q[j] low nibble = j, high nibble = 15 - j
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(GgmlType::Q4_1, &b, "t").unwrap();
        for j in 0..16 {
            assert_eq!(x[j], j as f32 * 0.5 - 1.0);
            assert_eq!(x[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q4_0_is_centred_on_8() {
        let mut b = Vec::new();
        b.extend(f16b(2.0));
        b.extend([0x80u8; 16]); // low 0 -> -8, high 8 -> 0
        let x = dequantize(GgmlType::Q4_0, &b, "t").unwrap();
        assert!(x[..16].iter().all(|&v| v == -16.0));
        assert!(x[16..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn q8_0_is_signed() {
        let mut b = Vec::new();
        b.extend(f16b(0.25));
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &b, "t").unwrap();
        for (j, v) in x.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.25);
        }
    }

    #[test]
    fn unknown_type_names_type_and_tensor() {
        let e = dequantize(GgmlType::Other("Q4_K"), &[], "blk.0.attn_q.weight").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("Q4_K") && msg.contains("blk.0.attn_q.weight"),
            "{msg}"
        );
    }
}
