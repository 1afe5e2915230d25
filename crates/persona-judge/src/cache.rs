//! Every judgment on disk, so a re-run or a resumed run never judges twice.
//! One JSONL file; key = sha256 of (judge identity, rubric hash, question,
//! answer); a torn last line (a killed writer) is ignored.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{JudgeError, Result};

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    score: Option<f32>,
}

/// A judgment cache backed by one JSONL file.
pub struct JudgmentCache {
    path: PathBuf,
    map: HashMap<String, Option<f32>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of one judgment.
pub fn key(judge: &str, rubric: &str, question: &str, answer: &str) -> String {
    let rubric_hash = hex(&Sha256::digest(rubric.as_bytes()));
    let mut h = Sha256::new();
    for part in [judge, &rubric_hash, question, answer] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

impl JudgmentCache {
    /// Opens (or starts) the cache at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e: std::io::Error| JudgeError::Cache {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut map = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                for (i, l) in lines.iter().enumerate() {
                    match serde_json::from_str::<Entry>(l) {
                        Ok(e) => {
                            map.insert(e.key, e.score);
                        }
                        Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
                        Err(e) => {
                            return Err(JudgeError::Cache {
                                path: path.to_path_buf(),
                                reason: format!("line {}: {e}", i + 1),
                            });
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<Option<f32>> {
        self.map.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Records judgments and appends them to the file (flushed).
    pub fn insert_all(&mut self, items: &[(String, Option<f32>)]) -> Result<()> {
        let io = |e: std::io::Error| JudgeError::Cache {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Cut a torn last line before appending after it.
        if let Ok(text) = std::fs::read_to_string(&self.path)
            && !text.is_empty()
            && !text.ends_with('\n')
        {
            let keep = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
            std::fs::write(&self.path, &text[..keep]).map_err(io)?;
        }
        let mut buf = String::new();
        for (k, s) in items {
            let line = serde_json::to_string(&Entry {
                key: k.clone(),
                score: *s,
            })
            .map_err(|e| JudgeError::Cache {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            buf.push_str(&line);
            buf.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(buf.as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)?;
        for (k, s) in items {
            self.map.insert(k.clone(), *s);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let k1 = key("judge", "rubric {question} {answer}", "q", "a");
        let k2 = key("judge", "rubric {question} {answer}", "q", "b");
        assert_ne!(k1, k2);
        assert_ne!(
            k1,
            key("other judge", "rubric {question} {answer}", "q", "a")
        );
        let mut c = JudgmentCache::open(&p).unwrap();
        c.insert_all(&[(k1.clone(), Some(75.0)), (k2.clone(), None)])
            .unwrap();
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str("{\"key\": \"tor");
        std::fs::write(&p, text).unwrap();
        let mut c = JudgmentCache::open(&p).unwrap();
        assert_eq!(c.get(&k1), Some(Some(75.0)));
        assert_eq!(c.get(&k2), Some(None));
        let k3 = key("judge", "r", "q", "c");
        c.insert_all(&[(k3.clone(), Some(1.0))]).unwrap();
        let c = JudgmentCache::open(&p).unwrap();
        assert_eq!(c.len(), 3);
    }
}
