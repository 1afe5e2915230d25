//! Append-only JSONL logs that survive a killed writer: work that takes
//! long (screening, judging) appends one record per line as it goes, and a
//! rerun reads back what is there. A torn last line (the writer died
//! mid-line) is ignored on reading and cut before the next append; a bad
//! line anywhere else is an error.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ModelError, Result};

fn bad(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Jsonl {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Every complete record of `path`; a missing file is an empty log.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        match serde_json::from_str(l) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => return Err(bad(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(out)
}

/// Appends records (one line each) and syncs them to disk, creating the
/// file and its folder when missing (never through a symbolic link). A torn
/// last line is cut first; only the file's last byte is read to find one.
pub fn append_records<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::write(dir, e))?;
    }
    let mut buf = String::new();
    for it in items {
        buf.push_str(&serde_json::to_string(it).map_err(|e| bad(path, e))?);
        buf.push('\n');
    }
    let mut f = crate::files::open_append(path)?;
    cut_torn_line(path, &f)?;
    f.write_all(buf.as_bytes())
        .map_err(|e| ModelError::write(path, e))?;
    f.sync_data().map_err(|e| ModelError::write(path, e))
}

/// Truncates `f` after its last newline when it does not end with one.
fn cut_torn_line(path: &Path, f: &std::fs::File) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut last = [0u8; 1];
    if len == 0 || (f.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n') {
        return Ok(());
    }
    let text = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    f.set_len(keep as u64)
        .map_err(|e| ModelError::write(path, e))
}
