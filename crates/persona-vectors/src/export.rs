//! Export to llama.cpp's control-vector GGUF, so a vector can steer a model
//! in `llama-cli --control-vector-scaled FILE:C` (older llama.cpp builds
//! took the scale as a second argument, `FILE C`).
//!
//! Layout (what llama.cpp reads): `general.architecture = "controlvector"`,
//! `controlvector.model_hint` (string), `controlvector.layer_count` (u32),
//! and one f32 tensor `direction.<N>` of shape `[d_model]` per steered layer.
//!
//! Numbering. llama.cpp adds `direction.N` to the output of decoder block
//! `N` (0-based): its graph calls `build_cvec(cur, il)` after block `il`'s
//! residual add, and `llama_adapter_cvec` keeps tensors for `il = 1 ..
//! n_layer-1` only ("there's never a tensor for layer 0"; the loader refuses
//! `direction.0`). Our row `r` is the output of block `r - 1`, so row `r`
//! exports as `direction.(r - 1)`, and only rows `2..=n_layers` can be
//! exported: row 0 (embeddings) and row 1 (block 0) have no llama.cpp slot.
//! llama.cpp adds the direction at every position (our `Positions::All`);
//! restrict it to the exported block with `--control-vector-layer-range N N`.

use crate::file::{Variant, VectorError, VectorFile};

const GGUF_TYPE_UINT32: u32 = 4;
const GGUF_TYPE_STRING: u32 = 8;
const GGML_TYPE_F32: u32 = 0;
const ALIGNMENT: usize = 32;

/// llama.cpp's direction index for our row: `Some(row - 1)` for rows >= 2.
pub fn llama_cpp_direction(row: usize) -> Option<usize> {
    (row >= 2).then(|| row - 1)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(ALIGNMENT) {
        out.push(0);
    }
}

/// The control-vector GGUF bytes: `direction.(r-1) = coef * v_r` for each
/// row `r` in `rows` (variant `variant`, raw vectors as steering uses them).
pub fn llama_cpp_control_vector(
    file: &VectorFile,
    variant: Variant,
    rows: &[usize],
    coef: f32,
    model_hint: &str,
) -> Result<Vec<u8>, VectorError> {
    let bad = |reason: String| VectorError::Export {
        path: file.path.clone(),
        reason,
    };
    if rows.is_empty() {
        return Err(bad("no rows to export".into()));
    }
    if !coef.is_finite() {
        return Err(bad(format!("coefficient {coef} is not a finite number")));
    }
    let mut tensors = Vec::new();
    for &r in rows {
        let dir = llama_cpp_direction(r).ok_or_else(|| {
            bad(format!(
                "row {r} cannot be exported: llama.cpp steers block outputs from block 1 on, i.e. rows 2..={} (row r = output of block r-1)",
                file.meta.n_layers
            ))
        })?;
        let v: Vec<f32> = file.row(variant, r)?.iter().map(|x| x * coef).collect();
        tensors.push((format!("direction.{dir}"), v));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors.dedup_by(|a, b| a.0 == b.0);

    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(3u64.to_le_bytes()); // metadata entries
    put_str(&mut out, "general.architecture");
    out.extend(GGUF_TYPE_STRING.to_le_bytes());
    put_str(&mut out, "controlvector");
    put_str(&mut out, "controlvector.model_hint");
    out.extend(GGUF_TYPE_STRING.to_le_bytes());
    put_str(&mut out, model_hint);
    put_str(&mut out, "controlvector.layer_count");
    out.extend(GGUF_TYPE_UINT32.to_le_bytes());
    out.extend((tensors.len() as u32).to_le_bytes());
    let d = file.meta.d_model;
    let stride = (d * 4).div_ceil(ALIGNMENT) * ALIGNMENT;
    for (i, (name, _)) in tensors.iter().enumerate() {
        put_str(&mut out, name);
        out.extend(1u32.to_le_bytes()); // n_dims
        out.extend((d as u64).to_le_bytes());
        out.extend(GGML_TYPE_F32.to_le_bytes());
        out.extend(((i * stride) as u64).to_le_bytes());
    }
    pad(&mut out);
    for (_, v) in &tensors {
        for x in v {
            out.extend(x.to_le_bytes());
        }
        pad(&mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::{FORMAT_VERSION, ROW_CONVENTION, VectorMeta};
    use persona_model::gguf::GgufFile;

    fn sample(n_layers: usize, d: usize) -> VectorFile {
        let mut f = VectorFile::new(VectorMeta {
            format_version: FORMAT_VERSION,
            row_convention: ROW_CONVENTION.into(),
            model_name: "tiny".into(),
            model_sha256: "abc".into(),
            d_model: d,
            n_layers,
            extra: serde_json::Value::Null,
        });
        let data = (0..(n_layers + 1) * d).map(|i| i as f32 * 0.5).collect();
        f.variants.insert(Variant::ResponseAvg, data);
        f
    }

    /// Our row r is llama.cpp's direction r-1; rows 0 and 1 have no slot.
    #[test]
    fn rows_map_to_llama_cpp_block_indices() {
        assert_eq!(llama_cpp_direction(0), None);
        assert_eq!(llama_cpp_direction(1), None);
        assert_eq!(llama_cpp_direction(2), Some(1));
        assert_eq!(llama_cpp_direction(30), Some(29));
    }

    #[test]
    fn gguf_layout_reads_back() {
        let f = sample(4, 5); // d = 5: 20 bytes per tensor, so padding matters
        let bytes =
            llama_cpp_control_vector(&f, Variant::ResponseAvg, &[4, 2], 2.0, "llama").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cv.gguf");
        std::fs::write(&p, bytes).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "controlvector");
        assert_eq!(g.get_str("controlvector.model_hint").unwrap(), "llama");
        assert_eq!(g.get_u64("controlvector.layer_count").unwrap(), 2);
        let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["direction.1", "direction.3"]);
        for (t, row) in g.tensors.iter().zip([2usize, 4]) {
            assert_eq!(t.shape, vec![5]);
            let want: Vec<f32> = f
                .row(Variant::ResponseAvg, row)
                .unwrap()
                .iter()
                .map(|x| x * 2.0)
                .collect();
            assert_eq!(g.dequantize(t).unwrap(), want, "{}", t.name);
        }
    }

    #[test]
    fn rows_without_a_slot_are_refused() {
        let f = sample(4, 5);
        let e = llama_cpp_control_vector(&f, Variant::ResponseAvg, &[1], 1.0, "llama").unwrap_err();
        assert!(e.to_string().contains("rows 2..=4"), "{e}");
        assert!(llama_cpp_control_vector(&f, Variant::ResponseAvg, &[5], 1.0, "x").is_err());
    }
}
