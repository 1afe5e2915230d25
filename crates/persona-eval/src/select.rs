//! Layer selection and the coefficient sweep of a persona vector: steer
//! each candidate row alone (post-hoc, at the last prompt token and every
//! generated token) on the trait's *extraction* questions and judge trait
//! and coherence; the chosen row has the highest trait score among rows
//! whose coherence stays at or above the threshold. Then sweep the
//! coefficient at the chosen row on the *evaluation* questions (the
//! dose-response curve, both signs). Both tables go into the vector file's
//! metadata (`selection`).

use std::path::PathBuf;

use persona_judge::{Judge, JudgmentCache};
use persona_model::SamplingSettings;
use persona_model::{LoadedModel, Positions, Steering};
use persona_monitor::stats::mean;
use persona_vectors::{TraitDef, Variant, VectorFile};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::trait_eval::sample_and_judge;

/// `settings/vector-select.toml`; read with [`persona_model::settings`]
/// (unknown keys are errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectSettings {
    pub judge: PathBuf,
    pub coherence_file: PathBuf,
    pub variant: Variant,
    /// Candidate rows.
    pub rows: Vec<usize>,
    /// Coefficient of the layer scan.
    pub layer_coef: f32,
    /// Coefficients of the sweep at the chosen row (include 0 and both signs).
    pub coefs: Vec<f32>,
    pub coherence_threshold: f64,
    /// Answers per question, temperature, top_p, max_new_tokens, seed,
    /// batch_size.
    #[serde(flatten)]
    pub sampling: SamplingSettings,
}

impl SelectSettings {
    /// Checks every number: sampling ([`SamplingSettings`]), finite
    /// coefficients, a coherence threshold in 0..=100, at least one row.
    pub fn check(&self) -> persona_model::Result<()> {
        let bad = |m: String| persona_model::ModelError::Input(m);
        self.sampling.sampling()?;
        if self.rows.is_empty() {
            return Err(bad("rows: name at least one candidate row".into()));
        }
        if let Some(c) = std::iter::once(&self.layer_coef)
            .chain(&self.coefs)
            .find(|c| !c.is_finite())
        {
            return Err(bad(format!("coefficient {c} is not a finite number")));
        }
        if !(0.0..=100.0).contains(&self.coherence_threshold) {
            return Err(bad(format!(
                "coherence_threshold {} must be in 0..=100",
                self.coherence_threshold
            )));
        }
        Ok(())
    }
}

/// Mean trait score and coherence of steered answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteeredScore {
    pub row: usize,
    pub coef: f32,
    pub trait_score: Option<f64>,
    pub coherence: Option<f64>,
    pub answers: usize,
}

/// The outcome stored in the vector's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub judge: String,
    pub settings: SelectSettings,
    /// On the extraction questions.
    pub layers: Vec<SteeredScore>,
    pub chosen_row: Option<usize>,
    /// At the chosen row, on the evaluation questions.
    pub sweep: Vec<SteeredScore>,
}

/// Picks the row with the highest trait score among those with coherence >= `threshold`.
pub fn choose_row(layers: &[SteeredScore], threshold: f64) -> Option<usize> {
    layers
        .iter()
        .filter(|l| l.coherence.is_some_and(|c| c >= threshold))
        .filter_map(|l| Some((l.row, l.trait_score?)))
        .fold(None, |best: Option<(usize, f64)>, (r, t)| match best {
            Some((_, bt)) if bt >= t => best,
            _ => Some((r, t)),
        })
        .map(|(r, _)| r)
}

/// Runs the layer scan and the sweep; `progress(what)` names each step.
#[allow(clippy::too_many_arguments)]
pub fn select(
    loaded: &LoadedModel,
    file: &VectorFile,
    def: &TraitDef,
    s: &SelectSettings,
    judge: &Judge,
    cache: &mut JudgmentCache,
    mut progress: impl FnMut(&str),
) -> Result<Selection> {
    file.check_model(&loaded.model.config, &loaded.identity)?;
    let coherence_rubric = persona_vectors::traits::load_coherence_rubric(&s.coherence_file)?;
    let (trait_c, coh_c) = def.criteria(&coherence_rubric);
    let device = loaded.model.device().clone();
    let mut score = |row: usize, coef: f32, questions: &[String]| -> Result<SteeredScore> {
        let steering = if coef == 0.0 {
            Vec::new()
        } else {
            vec![Steering::add(
                row,
                file.row(s.variant, row)?,
                coef,
                Positions::Generating,
                &device,
            )?]
        };
        loaded.model.check_steering(&steering)?;
        let records = sample_and_judge(
            loaded,
            steering,
            None,
            questions,
            &s.sampling,
            judge,
            (&trait_c, &coh_c),
            cache,
            &mut |_, _| {},
        )?;
        let ok = |f: &dyn Fn(&crate::trait_eval::AnswerRecord) -> Option<f32>| -> Vec<f64> {
            records.iter().filter_map(f).map(|x| x as f64).collect()
        };
        Ok(SteeredScore {
            row,
            coef,
            trait_score: mean(&ok(&|r| r.trait_score)),
            coherence: mean(&ok(&|r| r.coherence)),
            answers: records.len(),
        })
    };
    let mut layers = Vec::new();
    for &row in &s.rows {
        progress(&format!("row {row} x {:+}", s.layer_coef));
        layers.push(score(row, s.layer_coef, &def.extraction)?);
    }
    let chosen_row = choose_row(&layers, s.coherence_threshold);
    let mut sweep = Vec::new();
    if let Some(row) = chosen_row {
        for &c in &s.coefs {
            progress(&format!("row {row} coefficient {c:+}"));
            sweep.push(score(row, c, &def.evaluation)?);
        }
    }
    Ok(Selection {
        judge: judge.identity(),
        settings: s.clone(),
        layers,
        chosen_row,
        sweep,
    })
}

/// Writes `selection` into the vector file's metadata (atomically).
pub fn store(file: &mut VectorFile, selection: &Selection) -> Result<()> {
    if !file.meta.extra.is_object() {
        file.meta.extra = serde_json::json!({});
    }
    file.meta.extra["selection"] = serde_json::to_value(selection)
        .map_err(|e| EvalError::Input(format!("selection does not serialise: {e}")))?;
    let path = file.path.clone();
    file.save(&path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(row: usize, t: Option<f64>, c: Option<f64>) -> SteeredScore {
        SteeredScore {
            row,
            coef: 1.0,
            trait_score: t,
            coherence: c,
            answers: 4,
        }
    }

    #[test]
    fn the_chosen_row_is_the_most_trait_laden_coherent_one() {
        let layers = vec![
            s(5, Some(30.0), Some(80.0)),
            s(10, Some(70.0), Some(60.0)),
            s(15, Some(90.0), Some(40.0)), // incoherent: not eligible
            s(20, None, Some(90.0)),       // no trait score
            s(25, Some(70.0), Some(95.0)), // ties go to the shallower row
        ];
        assert_eq!(choose_row(&layers, 50.0), Some(10));
        assert_eq!(choose_row(&layers, 99.0), None);
        assert_eq!(choose_row(&layers, 0.0), Some(15));
    }
}
