//! How far a judge agrees with careful ratings: `persona judge audit`, and
//! the audit line a trained probe stores and reports print.
//!
//! A ratings file is JSONL, one rated answer per line:
//! `{"question", "answer", "trait": 0..=100 | null, "coherence": 0..=100 | null,
//!   "group"?: "...", "source"?: "..."}`. `trait` is the rubric's score
//! (null: a refusal, or not rated); `group` splits the bias (e.g. by arm);
//! `source` is free provenance text and is not read.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{JudgeError, Result};
use crate::metrics::{pearson, spearman};

/// Answers with a rated coherence below this count as incoherent: the
/// audit reports the judge's trait bias on them as its own group.
pub const INCOHERENT_BELOW: f64 = 30.0;

/// One rated answer (a line of a ratings file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rating {
    pub question: String,
    pub answer: String,
    #[serde(rename = "trait")]
    pub trait_score: Option<f64>,
    pub coherence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Reads a ratings file: every line must parse, every score lie in 0..=100,
/// and at least one line carry a trait rating.
pub fn read_ratings(path: &Path) -> Result<Vec<Rating>> {
    let bad = |line: usize, reason: String| JudgeError::Labelled {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(0, e.to_string()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Rating = serde_json::from_str(line).map_err(|e| {
            bad(
                i + 1,
                format!(
                    "{e} (expected {{\"question\", \"answer\", \"trait\": 0-100|null, \"coherence\": 0-100|null, \"group\"?}})"
                ),
            )
        })?;
        for (name, v) in [("trait", r.trait_score), ("coherence", r.coherence)] {
            if v.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
                return Err(bad(i + 1, format!("`{name}` must lie in 0..=100")));
            }
        }
        out.push(r);
    }
    if !out.iter().any(|r| r.trait_score.is_some()) {
        return Err(bad(0, "holds no answer with a trait rating".into()));
    }
    Ok(out)
}

/// The judge's mean bias in one group of answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupBias {
    pub group: String,
    pub n: usize,
    pub mean_judge: f64,
    pub mean_rating: f64,
    /// `mean_judge - mean_rating`.
    pub bias: f64,
}

/// Agreement of one criterion's judgments with the ratings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Answers with both a judgment and a rating.
    pub n: usize,
    pub pearson: Option<f64>,
    pub spearman: Option<f64>,
    /// Fraction of answers the judge puts on the rating's side of 50.
    pub same_side_of_50: f64,
    /// Mean of `judge - rating`.
    pub mean_bias: f64,
    pub groups: Vec<GroupBias>,
}

impl GroupBias {
    /// The bias over `members` (`None` when there are none).
    fn of<'p, 'a: 'p>(group: &str, members: impl Iterator<Item = &'p Pair<'a>>) -> Option<Self> {
        let (mut n, mut judge, mut rating) = (0usize, 0.0, 0.0);
        for p in members {
            (n, judge, rating) = (n + 1, judge + p.0, rating + p.1);
        }
        let (mean_judge, mean_rating) = (judge / n as f64, rating / n as f64);
        (n > 0).then(|| Self {
            group: group.to_string(),
            n,
            mean_judge,
            mean_rating,
            bias: mean_judge - mean_rating,
        })
    }
}

/// One judged, rated answer: (judge, rating, group).
pub type Pair<'a> = (f64, f64, Option<&'a str>);

impl Agreement {
    /// `None` without any pair.
    pub fn of(pairs: &[Pair<'_>]) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let judge: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let rating: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let n = pairs.len() as f64;
        let mut names: Vec<&str> = pairs.iter().filter_map(|p| p.2).collect();
        names.sort_unstable();
        names.dedup();
        let groups = names
            .into_iter()
            .filter_map(|g| GroupBias::of(g, pairs.iter().filter(|p| p.2 == Some(g))))
            .collect();
        Some(Self {
            n: pairs.len(),
            pearson: pearson(&judge, &rating),
            spearman: spearman(&judge, &rating),
            same_side_of_50: pairs
                .iter()
                .filter(|p| (p.0 >= 50.0) == (p.1 >= 50.0))
                .count() as f64
                / n,
            mean_bias: pairs.iter().map(|p| p.0 - p.1).sum::<f64>() / n,
            groups,
        })
    }

    /// The worst group bias in absolute value (0 without groups).
    pub fn worst_group_bias(&self) -> f64 {
        self.groups.iter().map(|g| g.bias.abs()).fold(0.0, f64::max)
    }

    /// One line: `Pearson 0.81, Spearman 0.79, same side of 50 in 85%, bias +3.2 (n 180)`.
    pub fn line(&self) -> String {
        let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        format!(
            "Pearson {}, Spearman {}, same side of 50 in {:.0}%, bias {:+.1} (n {})",
            f(self.pearson),
            f(self.spearman),
            100.0 * self.same_side_of_50,
            self.mean_bias,
            self.n
        )
    }
}

/// A judge's audit against one ratings file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub ratings_file: String,
    pub ratings_sha256: String,
    pub trait_name: String,
    /// Trait agreement; groups are the file's `group`s plus
    /// `rated coherence < 30` when coherence is rated.
    pub trait_agreement: Option<Agreement>,
    /// Absent when the audit covered the trait only (a probe's stored audit).
    pub coherence_agreement: Option<Agreement>,
    /// Rated answers the judge gave no score (a refusal to judge).
    pub judge_missing: usize,
}

impl Audit {
    /// Scores `judged` (the judge's trait and coherence per rating, in
    /// order; `None` = missing or not asked) against `ratings`.
    pub fn of(
        trait_name: &str,
        (ratings_file, ratings_sha256): (String, String),
        ratings: &[Rating],
        trait_judged: &[Option<f32>],
        coherence_judged: Option<&[Option<f32>]>,
    ) -> Self {
        let (mut trait_pairs, mut incoherent): (Vec<Pair<'_>>, Vec<Pair<'_>>) = (vec![], vec![]);
        for (r, j) in ratings.iter().zip(trait_judged) {
            if let (Some(j), Some(t)) = (j, r.trait_score) {
                trait_pairs.push((*j as f64, t, r.group.as_deref()));
                if r.coherence.is_some_and(|c| c < INCOHERENT_BELOW) {
                    incoherent.push((*j as f64, t, None));
                }
            }
        }
        let mut trait_agreement = Agreement::of(&trait_pairs);
        let name = format!("rated coherence < {INCOHERENT_BELOW}");
        if let (Some(a), Some(g)) = (
            &mut trait_agreement,
            GroupBias::of(&name, incoherent.iter()),
        ) {
            a.groups.push(g);
            a.groups.sort_by(|x, y| x.group.cmp(&y.group));
        }
        let coherence_agreement = coherence_judged.and_then(|c| {
            let pairs: Vec<Pair<'_>> = ratings
                .iter()
                .zip(c)
                .filter_map(|(r, j)| Some((*j.as_ref()? as f64, r.coherence?, r.group.as_deref())))
                .collect();
            Agreement::of(&pairs)
        });
        Self {
            ratings_file,
            ratings_sha256,
            trait_name: trait_name.to_string(),
            trait_agreement,
            coherence_agreement,
            judge_missing: ratings
                .iter()
                .zip(trait_judged)
                .filter(|(r, j)| r.trait_score.is_some() && j.is_none())
                .count(),
        }
    }

    /// The line reports print next to the judge's name.
    pub fn line(&self) -> String {
        let t = self
            .trait_agreement
            .as_ref()
            .map_or("no rated answers".to_string(), Agreement::line);
        format!(
            "audited on {} (sha256 {}): {}: {t}",
            self.ratings_file,
            self.ratings_sha256
                .get(..12)
                .unwrap_or(&self.ratings_sha256),
            self.trait_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rating(t: f64, c: f64, g: &str) -> Rating {
        Rating {
            question: "q".into(),
            answer: "a".into(),
            trait_score: Some(t),
            coherence: Some(c),
            group: Some(g.into()),
            source: None,
        }
    }

    #[test]
    fn agreement_counts_bias_sides_and_groups() {
        let ratings = vec![
            rating(10.0, 90.0, "base"),
            rating(90.0, 90.0, "base"),
            rating(20.0, 10.0, "steered"),
            rating(60.0, 80.0, "steered"),
        ];
        let judged = [Some(20.0), Some(80.0), Some(60.0), None];
        let a = Audit::of(
            "t",
            ("f".into(), "0123456789abcdef".into()),
            &ratings,
            &judged,
            None,
        );
        let t = a.trait_agreement.unwrap();
        assert_eq!(t.n, 3);
        assert_eq!(a.judge_missing, 1);
        // Bias: (+10, -10, +40) / 3.
        assert!((t.mean_bias - 40.0 / 3.0).abs() < 1e-9);
        // Sides of 50: agree, agree, disagree.
        assert!((t.same_side_of_50 - 2.0 / 3.0).abs() < 1e-9);
        let g = |name: &str| t.groups.iter().find(|g| g.group == name).unwrap().clone();
        assert_eq!(g("base").n, 2);
        assert!(g("base").bias.abs() < 1e-9);
        assert!((g("steered").bias - 40.0).abs() < 1e-9);
        assert_eq!(g("rated coherence < 30").n, 1);
        assert!((t.worst_group_bias() - 40.0).abs() < 1e-9);
        assert!(a.coherence_agreement.is_none());
    }

    #[test]
    fn ratings_out_of_range_or_malformed_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        let ok = r#"{"question":"q","answer":"a","trait":10,"coherence":null}"#;
        std::fs::write(&p, format!("{ok}\n{ok}\n")).unwrap();
        assert_eq!(read_ratings(&p).unwrap().len(), 2);
        std::fs::write(
            &p,
            format!("{ok}\n{}\n", ok.replace("10", "101")).as_bytes(),
        )
        .unwrap();
        let e = read_ratings(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("0..=100"), "{e}");
        std::fs::write(&p, format!("{ok}\n{{\"question\":\"q\"}}\n")).unwrap();
        let e = read_ratings(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(&p, ok.replace("10", "null")).unwrap();
        let e = read_ratings(&p).unwrap_err().to_string();
        assert!(e.contains("no answer with a trait rating"), "{e}");
    }
}
