//! Per-trait logistic-regression probes on sentence embeddings: the trait
//! half of the offline classifier judge. A probe maps the features of a
//! (question, answer) pair ([`Features`]) to P(the answer shows the trait);
//! the judge reports `100 * P`. Trained by full-batch gradient descent
//! (deterministic) on standardised features, on authored labelled answers
//! (targets 0 or 1) and hand-rated model answers (target `trait / 100`),
//! with whole questions held out for validation.

use std::path::Path;

use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, read_ratings};
use crate::error::{JudgeError, Result};
use crate::metrics::auroc;

/// Version of the probe file layout and of what it embeds (3: the
/// [`Features`] named in the settings).
pub const PROBE_FORMAT: u32 = 3;

/// What a probe sees of a (question, answer) pair; `e(text)` is the
/// encoder's embedding.
///
/// Sycophancy is a relation between the two ("It's true!" is sycophantic
/// after a false claim and honest after a true one). Embedding
/// `question \n answer` alone was tried first: the shared question dominated
/// the embedding and held-out AUROC on authored answers fell from 0.98 to
/// 0.90, so the answer's own embedding is always part of the features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Features {
    /// `e(answer)`.
    Answer,
    /// `[e(answer), e(question) * e(answer)]` (elementwise product).
    Product,
    /// `[e(answer), e(question \n answer)]`.
    Joint,
    /// `[e(answer), e(question) . e(answer)]`: the answer plus one number,
    /// how on-topic it is (the embeddings are unit vectors).
    Similarity,
}

impl Features {
    /// The texts to embed for `items`, in groups whose embeddings
    /// [`Features::assemble`] concatenates.
    pub fn texts(self, items: &[(String, String)]) -> Vec<Vec<String>> {
        let answers = items.iter().map(|(_, a)| a.clone()).collect();
        match self {
            Self::Answer => vec![answers],
            Self::Product | Self::Similarity => {
                vec![answers, items.iter().map(|(q, _)| q.clone()).collect()]
            }
            Self::Joint => vec![
                answers,
                items.iter().map(|(q, a)| format!("{q}\n{a}")).collect(),
            ],
        }
    }

    /// Features from the embeddings of [`Features::texts`]' groups.
    ///
    /// # Shapes
    /// `groups`: `[groups][n][d]` -> `[n][d * 2]` (`[n][d]` for `Answer`)
    pub fn assemble(self, mut groups: Vec<Vec<Vec<f32>>>) -> Vec<Vec<f32>> {
        let answers = groups.remove(0);
        let Some(other) = groups.pop() else {
            return answers;
        };
        answers
            .into_iter()
            .zip(other)
            .map(|(a, o)| {
                let second: Vec<f32> = match self {
                    Self::Product => a.iter().zip(&o).map(|(a, q)| a * q).collect(),
                    Self::Similarity => vec![a.iter().zip(&o).map(|(a, q)| a * q).sum()],
                    _ => o,
                };
                [a, second].concat()
            })
            .collect()
    }
}

/// How a probe is trained (the `[probe]` table of a classifier judge config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    pub features: Features,
    /// L2 penalty on the weights (standardised features).
    pub l2: f64,
    /// Full-batch gradient steps.
    pub steps: usize,
    pub learning_rate: f64,
    /// Every `held_out_every`-th distinct question (in file order) is held out.
    pub held_out_every: usize,
}

/// One labelled line: `{"question", "answer", "label"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labelled {
    pub question: String,
    pub answer: String,
    /// true = the answer shows the trait.
    pub label: bool,
}

/// One training example: a pair and its target P(trait) in 0..=1.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub question: String,
    pub answer: String,
    pub target: f64,
}

impl Example {
    fn positive(&self) -> bool {
        self.target >= 0.5
    }
}

/// Reads a labelled JSONL file; every line must parse.
pub fn read_labelled(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| JudgeError::Labelled {
        path: path.to_path_buf(),
        line: 0,
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Labelled = serde_json::from_str(line).map_err(|e| JudgeError::Labelled {
            path: path.to_path_buf(),
            line: i + 1,
            reason: format!("{e} (expected {{\"question\", \"answer\", \"label\": true|false}})"),
        })?;
        out.push(Example {
            question: l.question,
            answer: l.answer,
            target: if l.label { 1.0 } else { 0.0 },
        });
    }
    Ok(out)
}

/// Reads a ratings file as training examples (target `trait / 100`;
/// answers without a trait rating are skipped).
pub fn read_rated(path: &Path) -> Result<Vec<Example>> {
    Ok(read_ratings(path)?
        .into_iter()
        .filter_map(|r| {
            Some(Example {
                target: r.trait_score? / 100.0,
                question: r.question,
                answer: r.answer,
            })
        })
        .collect())
}

/// Refuses a training set without both sides of the trait.
pub fn check_both_sides(examples: &[Example], what: &Path) -> Result<()> {
    if !examples.iter().any(Example::positive) || !examples.iter().any(|e| !e.positive()) {
        return Err(JudgeError::Labelled {
            path: what.to_path_buf(),
            line: 0,
            reason: "needs both positive and negative examples".into(),
        });
    }
    Ok(())
}

/// One reliability bin of the held-out predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
    pub mean_predicted: f64,
    pub fraction_positive: f64,
}

/// How well the probe did, stored with it. AUROC, accuracy, Brier score
/// and calibration count an example as positive when its target is at
/// least 0.5 (a rated answer's `trait` at least 50).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The authored labelled file and the hand-rated file (when present).
    pub training_files: Vec<String>,
    /// sha256 over the training files' bytes, in order: a probe trained on
    /// other data is retrained.
    pub training_sha256: String,
    pub n_train: usize,
    pub n_held_out: usize,
    pub held_out_questions: usize,
    pub train_auroc: Option<f64>,
    pub held_out_auroc: Option<f64>,
    /// At the 0.5 threshold.
    pub held_out_accuracy: f64,
    /// Mean squared error of the probability.
    pub held_out_brier: f64,
    /// Expected calibration error over 10 equal-width bins.
    pub held_out_ece: f64,
    pub calibration: Vec<CalibrationBin>,
    /// Agreement with the held-out audit ratings, when the trait has some.
    pub audit: Option<Audit>,
}

/// A trained probe file (`<probes>/<trait>.probe.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub format: u32,
    pub trait_name: String,
    /// The encoder the features came from; a probe is refused with another.
    pub encoder: String,
    /// Feature standardisation: `(x - mean) / scale`.
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
    pub settings: ProbeSettings,
    pub report: ProbeReport,
}

impl Probe {
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| JudgeError::Probe {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let p: Self = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if p.format != PROBE_FORMAT {
            return Err(bad(format!(
                "format {} (this build reads {PROBE_FORMAT})",
                p.format
            )));
        }
        let d = p.weights.len();
        if p.mean.len() != d || p.scale.len() != d {
            return Err(bad("mean, scale and weights differ in length".into()));
        }
        Ok(p)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| JudgeError::Probe {
                path: path.to_path_buf(),
                reason: format!("cannot create its folder: {e}"),
            })?;
        }
        let bytes = serde_json::to_vec_pretty(self).expect("a probe serialises");
        persona_model::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// P(trait) for each embedding `[d]`.
    pub fn predict(&self, x: &[Vec<f32>]) -> Vec<f64> {
        x.iter()
            .map(|v| {
                let z: f64 = v
                    .iter()
                    .zip(&self.mean)
                    .zip(&self.scale)
                    .zip(&self.weights)
                    .map(|(((x, m), s), w)| ((x - m) / s) as f64 * *w as f64)
                    .sum::<f64>()
                    + self.bias as f64;
                1.0 / (1.0 + (-z).exp())
            })
            .collect()
    }
}

/// Fitted parameters of a logistic regression.
pub struct Fitted {
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
}

/// Fits `P(y) = sigmoid(((x - mean) / scale) . w + b)` to targets `y` in
/// 0..=1 (cross-entropy; soft targets allowed) with an L2 penalty by
/// full-batch gradient descent from zero (deterministic).
///
/// # Shapes
/// `x`: `[n][d]`, `y`: `[n]`
pub fn fit_logistic(
    x: &[Vec<f32>],
    y: &[f64],
    s: &ProbeSettings,
    device: &Device,
) -> Result<Fitted> {
    let (n, d) = (x.len(), x[0].len());
    let mut mean = vec![0f32; d];
    for v in x {
        for (m, a) in mean.iter_mut().zip(v) {
            *m += a / n as f32;
        }
    }
    let mut scale = vec![0f32; d];
    for v in x {
        for ((s, a), m) in scale.iter_mut().zip(v).zip(&mean) {
            *s += (a - m) * (a - m) / n as f32;
        }
    }
    let scale: Vec<f32> = scale.iter().map(|v| v.sqrt().max(1e-6)).collect();
    let standard: Vec<f32> = x
        .iter()
        .flat_map(|v| {
            v.iter()
                .zip(&mean)
                .zip(&scale)
                .map(|((a, m), s)| (a - m) / s)
        })
        .collect();
    let xt = Tensor::<2>::from_data(TensorData::new(standard, [n, d]), device);
    let yt = Tensor::<2>::from_data(
        TensorData::new(y.iter().map(|&t| t as f32).collect::<Vec<_>>(), [n, 1]),
        device,
    );
    let mut w = Tensor::<2>::zeros([d, 1], device);
    let mut b = Tensor::<1>::zeros([1], device);
    for _ in 0..s.steps {
        let z = xt.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>(); // # (n, 1)
        let err = sigmoid(z) - yt.clone(); // # (n, 1)
        let gw = xt
            .clone()
            .transpose()
            .matmul(err.clone())
            .div_scalar(n as f64)
            + w.clone().mul_scalar(s.l2); // # (d, 1)
        let gb = err.mean().reshape([1]);
        w = w - gw.mul_scalar(s.learning_rate);
        b = b - gb.mul_scalar(s.learning_rate);
    }
    let weights = persona_model::host_vec(w)?;
    let bias = persona_model::host_vec(b)?[0];
    Ok(Fitted {
        mean,
        scale,
        weights,
        bias,
    })
}

/// Held-out metrics of predictions `p` against labels `y`.
pub fn calibration(p: &[f64], y: &[bool]) -> (f64, f64, f64, Vec<CalibrationBin>) {
    let n = p.len().max(1) as f64;
    let accuracy = p.iter().zip(y).filter(|(p, y)| (**p >= 0.5) == **y).count() as f64 / n;
    let brier = p
        .iter()
        .zip(y)
        .map(|(p, y)| (p - *y as u8 as f64).powi(2))
        .sum::<f64>()
        / n;
    let mut bins = Vec::new();
    let mut ece = 0.0;
    for k in 0..10 {
        let (lo, hi) = (k as f64 / 10.0, (k + 1) as f64 / 10.0);
        let members: Vec<(f64, bool)> = p
            .iter()
            .zip(y)
            .filter(|(p, _)| **p >= lo && (**p < hi || (k == 9 && **p <= hi)))
            .map(|(p, y)| (*p, *y))
            .collect();
        if members.is_empty() {
            continue;
        }
        let m = members.len() as f64;
        let mean_predicted = members.iter().map(|x| x.0).sum::<f64>() / m;
        let fraction_positive = members.iter().filter(|x| x.1).count() as f64 / m;
        ece += m / n * (mean_predicted - fraction_positive).abs();
        bins.push(CalibrationBin {
            lo,
            hi,
            n: members.len(),
            mean_predicted,
            fraction_positive,
        });
    }
    (accuracy, brier, ece, bins)
}

/// Splits labelled lines into (train, held-out) indices: every
/// `every`-th distinct question, in order of first appearance, is held out.
pub fn split_by_question(items: &[Example], every: usize) -> (Vec<usize>, Vec<usize>) {
    let mut questions: Vec<&str> = Vec::new();
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, it) in items.iter().enumerate() {
        let q = match questions.iter().position(|q| *q == it.question) {
            Some(q) => q,
            None => {
                questions.push(&it.question);
                questions.len() - 1
            }
        };
        if every > 0 && q % every == every - 1 {
            held.push(i);
        } else {
            train.push(i);
        }
    }
    (train, held)
}

/// Where a probe's training data came from (the report's provenance).
pub struct Provenance {
    pub files: Vec<String>,
    pub sha256: String,
}

/// Trains a probe from embedded examples and measures it on the held-out
/// questions.
pub fn train_probe(
    trait_name: &str,
    encoder: &str,
    items: &[Example],
    features: &[Vec<f32>],
    settings: &ProbeSettings,
    provenance: Provenance,
    device: &Device,
) -> Result<Probe> {
    let (train, held) = split_by_question(items, settings.held_out_every);
    let pick = |idx: &[usize]| -> (Vec<Vec<f32>>, Vec<f64>) {
        idx.iter()
            .map(|&i| (features[i].clone(), items[i].target))
            .unzip()
    };
    let (xt, yt) = pick(&train);
    let (xh, yh) = pick(&held);
    let sides = |y: &[f64]| y.iter().any(|t| *t >= 0.5) && y.iter().any(|t| *t < 0.5);
    if !sides(&yt) {
        return Err(JudgeError::Labelled {
            path: provenance.files.join(" + ").into(),
            line: 0,
            reason: "the training split lacks positives or negatives".into(),
        });
    }
    let f = fit_logistic(&xt, &yt, settings, device)?;
    let mut probe = Probe {
        format: PROBE_FORMAT,
        trait_name: trait_name.to_string(),
        encoder: encoder.to_string(),
        mean: f.mean,
        scale: f.scale,
        weights: f.weights,
        bias: f.bias,
        settings: settings.clone(),
        report: ProbeReport::empty(provenance, train.len(), held.len()),
    };
    let (lt, lh): (Vec<bool>, Vec<bool>) = (
        yt.iter().map(|t| *t >= 0.5).collect(),
        yh.iter().map(|t| *t >= 0.5).collect(),
    );
    let pt = probe.predict(&xt);
    let ph = probe.predict(&xh);
    let (accuracy, brier, ece, bins) = calibration(&ph, &lh);
    let mut qs: Vec<&str> = held.iter().map(|&i| items[i].question.as_str()).collect();
    qs.sort_unstable();
    qs.dedup();
    let r = &mut probe.report;
    r.held_out_questions = qs.len();
    r.train_auroc = auroc(&pt, &lt);
    r.held_out_auroc = auroc(&ph, &lh);
    r.held_out_accuracy = accuracy;
    r.held_out_brier = brier;
    r.held_out_ece = ece;
    r.calibration = bins;
    Ok(probe)
}

impl ProbeReport {
    fn empty(provenance: Provenance, n_train: usize, n_held_out: usize) -> Self {
        Self {
            training_files: provenance.files,
            training_sha256: provenance.sha256,
            n_train,
            n_held_out,
            held_out_questions: 0,
            train_auroc: None,
            held_out_auroc: None,
            held_out_accuracy: 0.0,
            held_out_brier: 0.0,
            held_out_ece: 0.0,
            calibration: Vec::new(),
            audit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: &str, label: bool) -> Example {
        Example {
            question: q.into(),
            answer: "a".into(),
            target: label as u8 as f64,
        }
    }

    #[test]
    fn logistic_fit_separates_a_separable_set_and_matches_predict() {
        let device = Device::flex();
        // Class decided by the sign of the first feature; the second is noise.
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                vec![
                    if i % 2 == 0 { 1.0 } else { -1.0 } + 0.01 * i as f32,
                    (i % 7) as f32,
                ]
            })
            .collect();
        let y: Vec<f64> = (0..40).map(|i| (i % 2 == 0) as u8 as f64).collect();
        let s = ProbeSettings {
            features: Features::Answer,
            l2: 0.01,
            steps: 300,
            learning_rate: 0.5,
            held_out_every: 5,
        };
        let f = fit_logistic(&x, &y, &s, &device).unwrap();
        assert!(
            f.weights[0] > 1.0,
            "weight on the informative feature: {}",
            f.weights[0]
        );
        assert!(f.weights[1].abs() < 0.2 * f.weights[0]);
        let probe = Probe {
            format: PROBE_FORMAT,
            trait_name: "t".into(),
            encoder: "e".into(),
            mean: f.mean,
            scale: f.scale,
            weights: f.weights,
            bias: f.bias,
            settings: s,
            report: ProbeReport::empty(
                Provenance {
                    files: vec![],
                    sha256: String::new(),
                },
                0,
                0,
            ),
        };
        let p = probe.predict(&x);
        assert!(p.iter().zip(&y).all(|(p, y)| (*p > 0.5) == (*y > 0.5)));
    }

    #[test]
    fn split_holds_out_whole_questions() {
        let items: Vec<Example> = ["a", "a", "b", "c", "c", "d", "b"]
            .iter()
            .enumerate()
            .map(|(i, q)| item(q, i % 2 == 0))
            .collect();
        let (train, held) = split_by_question(&items, 2);
        // Questions in order: a (0), b (1), c (2), d (3): b and d held out.
        assert_eq!(held, vec![2, 5, 6]);
        assert_eq!(train, vec![0, 1, 3, 4]);
    }

    #[test]
    fn calibration_bins_and_scores() {
        let p = [0.05, 0.15, 0.95, 0.85];
        let y = [false, false, true, true];
        let (acc, brier, ece, bins) = calibration(&p, &y);
        assert_eq!(acc, 1.0);
        assert!((brier - (0.0025 + 0.0225 + 0.0025 + 0.0225) / 4.0).abs() < 1e-12);
        assert_eq!(bins.len(), 4);
        assert!((ece - (0.05 + 0.15 + 0.05 + 0.15) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn soft_targets_fit_their_probability() {
        // One constant feature, targets 0.2 on average: the fit's P must
        // approach 0.2 (cross-entropy's optimum), which hard labels cannot.
        let x: Vec<Vec<f32>> = (0..50).map(|i| vec![(i % 2) as f32]).collect();
        let y: Vec<f64> = (0..50)
            .map(|i| if i % 2 == 0 { 0.1 } else { 0.3 })
            .collect();
        let s = ProbeSettings {
            features: Features::Answer,
            l2: 0.0,
            steps: 2000,
            learning_rate: 0.5,
            held_out_every: 5,
        };
        let f = fit_logistic(&x, &y, &s, &Device::flex()).unwrap();
        let z = |v: f32| ((v - f.mean[0]) / f.scale[0]) * f.weights[0] + f.bias;
        let p = |v: f32| 1.0 / (1.0 + (-z(v)).exp());
        assert!((p(0.0) - 0.1).abs() < 0.01, "{}", p(0.0));
        assert!((p(1.0) - 0.3).abs() < 0.01, "{}", p(1.0));
    }

    #[test]
    fn features_keep_the_answer_and_add_the_pair() {
        let items = vec![("q1".to_string(), "a1".to_string())];
        assert_eq!(Features::Joint.texts(&items)[1], vec!["q1\na1".to_string()]);
        assert_eq!(Features::Product.texts(&items)[1], vec!["q1".to_string()]);
        let groups = vec![vec![vec![1.0, 2.0]], vec![vec![3.0, 4.0]]];
        assert_eq!(
            Features::Product.assemble(groups.clone()),
            vec![vec![1.0, 2.0, 3.0, 8.0]]
        );
        assert_eq!(
            Features::Joint.assemble(groups.clone()),
            vec![vec![1.0, 2.0, 3.0, 4.0]]
        );
        assert_eq!(
            Features::Answer.assemble(groups[..1].to_vec()),
            vec![vec![1.0, 2.0]]
        );
    }
}
