//! A reader for GGUF v2/v3 files (llama.cpp's model format): metadata, tensor
//! table and dequantisation of the tensor data to f32.
//!
//! The file is memory-mapped; nothing is copied until a tensor is dequantised.
//! No crate on crates.io reads GGUF without pulling in a second tensor
//! framework (candle), and the format is small: header, key/value metadata,
//! tensor infos, aligned data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{ModelError, Result};
use crate::quant::{GgmlType, dequantize};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(v) => Some(*v),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in PyTorch order (slowest dimension first); GGUF stores it reversed.
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the file.
    offset: usize,
    n_bytes: usize,
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.to_path_buf(),
            reason: format!("{} (at byte {})", reason.into(), self.pos),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.err("unexpected end of file"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        // No length in a sane file exceeds the file itself.
        if n > self.bytes.len() as u64 {
            return Err(self.err(format!("implausible length {n}")));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn value(&mut self, type_id: u32, depth: usize) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U64(self.u8()? as u64),
            1 => Value::I64(self.u8()? as i8 as i64),
            2 => Value::U64(self.u16()? as u64),
            3 => Value::I64(self.u16()? as i16 as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.err("arrays nested too deeply"));
                }
                let inner = self.u32()?;
                let n = self.len()?;
                // Every item takes at least one byte of what is left.
                let mut items = Vec::with_capacity(n.min(self.bytes.len() - self.pos));
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
}

/// One entry of the tensor table as stored: name, dims (GGUF order), type
/// id, offset from the data start.
type RawTensor = (String, Vec<usize>, u32, u64);

impl Cursor<'_> {
    /// The tensor table's `n` entries.
    fn tensor_table(&mut self, n: usize) -> Result<Vec<RawTensor>> {
        // Capacity hint only: the count comes from the file.
        let mut raw = Vec::with_capacity(n.min(1 << 12));
        for _ in 0..n {
            let name = self.string()?;
            let n_dims = self.u32()? as usize;
            if n_dims > 4 {
                return Err(self.err(format!("tensor {name} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| self.len())
                .collect::<Result<Vec<_>>>()?;
            let type_id = self.u32()?;
            let offset = self.u64()?;
            raw.push((name, dims, type_id, offset));
        }
        Ok(raw)
    }

    /// Where a table entry's data lies, checked to be inside the file.
    fn locate(
        &self,
        (name, mut dims, type_id, offset): RawTensor,
        data_start: u64,
    ) -> Result<TensorInfo> {
        let ggml_type =
            GgmlType::from_id(type_id).ok_or_else(|| ModelError::UnsupportedQuantization {
                ggml_type: format!("ggml type id {type_id}"),
                tensor: name.clone(),
            })?;
        let n_elems = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| self.err(format!("tensor {name}: shape {dims:?} overflows")))?;
        let n_bytes = ggml_type.n_bytes(n_elems).ok_or_else(|| {
            self.err(format!(
                "tensor {name}: {n_elems} elements is not a whole number of {ggml_type:?} blocks"
            ))
        })?;
        let past_end = || self.err(format!("tensor {name} runs past the end of the file"));
        let start = data_start
            .checked_add(offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(past_end)?;
        if start
            .checked_add(n_bytes)
            .is_none_or(|e| e > self.bytes.len())
        {
            return Err(past_end());
        }
        dims.reverse();
        Ok(TensorInfo {
            name,
            shape: dims,
            ggml_type,
            offset: start,
            n_bytes,
        })
    }
}

impl GgufFile {
    /// Opens and parses the header, metadata and tensor table of a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is opened read-only and the map is never written;
        // as with any mmap, another process truncating the file is undefined.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (metadata, tensors) = {
            let mut c = Cursor {
                bytes: &mmap,
                pos: 0,
                path,
            };
            if c.take(4)? != MAGIC {
                return Err(c.err("bad magic (expected `GGUF`)"));
            }
            let version = c.u32()?;
            if !(2..=3).contains(&version) {
                return Err(c.err(format!("unsupported GGUF version {version}")));
            }
            let n_tensors = c.len()?;
            let n_kv = c.len()?;
            let mut metadata = BTreeMap::new();
            for _ in 0..n_kv {
                let key = c.string()?;
                let t = c.u32()?;
                let v = c.value(t, 0)?;
                metadata.insert(key, v);
            }
            let raw = c.tensor_table(n_tensors)?;
            let alignment = metadata
                .get("general.alignment")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_ALIGNMENT)
                .max(1);
            let data_start = (c.pos as u64)
                .div_ceil(alignment)
                .checked_mul(alignment)
                .ok_or_else(|| c.err(format!("implausible alignment {alignment}")))?;
            let tensors = raw
                .into_iter()
                .map(|r| c.locate(r, data_start))
                .collect::<Result<Vec<_>>>()?;
            (metadata, tensors)
        };
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value, or a `MissingMetadata` error naming the key.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| ModelError::MissingMetadata(key.to_string()))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)?.as_u64().ok_or_else(|| self.bad_type(key))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)?.as_f64().ok_or_else(|| self.bad_type(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)?.as_str().ok_or_else(|| self.bad_type(key))
    }

    /// A metadata array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self
            .get(key)?
            .as_array()
            .ok_or_else(|| self.bad_type(key))?;
        arr.iter()
            .map(|v| v.as_str().ok_or_else(|| self.bad_type(key)))
            .collect()
    }

    fn bad_type(&self, key: &str) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            reason: format!("metadata key `{key}` has an unexpected type"),
        }
    }

    /// Dequantises one tensor to f32, in PyTorch (row-major) order.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = &self.mmap[info.offset..info.offset + info.n_bytes];
        dequantize(info.ggml_type, bytes, &info.name)
    }
}
