//! Every judgment on disk, so a re-run or a resumed run never judges twice.
//! One JSONL log ([`persona_model::jsonl`]); key = sha256 of (judge
//! identity, rubric hash, question, answer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use persona_model::jsonl::{append_records, read_records};
use persona_model::weights::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;

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
        let map = read_records::<Entry>(path)?
            .into_iter()
            .map(|e| (e.key, e.score))
            .collect();
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

    /// Records judgments and appends them to the file (synced).
    pub fn insert_all(&mut self, items: &[(String, Option<f32>)]) -> Result<()> {
        let entries: Vec<Entry> = items
            .iter()
            .map(|(key, score)| Entry {
                key: key.clone(),
                score: *score,
            })
            .collect();
        append_records(&self.path, &entries)?;
        self.map.extend(items.iter().cloned());
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
