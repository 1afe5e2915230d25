//! The same arm over repeated runs (seeds): arms that share a label are
//! one setting measured several times; the table gives each setting's
//! mean and standard deviation over its runs, so a comparison across
//! seeds reads from saved results like any other report.

use std::fmt::Write;

use crate::report::ArmData;

/// One setting's values over its runs: one per distinct result.
struct Setting<'a> {
    label: &'a str,
    runs: Vec<&'a ArmData>,
}

/// Arms grouped by label, in the order labels first appear; an arm whose
/// result is the same evaluation as one already in its group (the base
/// model, evaluated once per run folder with the same fingerprint) counts
/// once.
fn settings(arms: &[ArmData]) -> Vec<Setting<'_>> {
    let mut out: Vec<Setting<'_>> = Vec::new();
    for a in arms {
        let label = a.result.arm.label.as_str();
        let fp = &a.result.fingerprint;
        match out.iter_mut().find(|s| s.label == label) {
            Some(s) if s.runs.iter().any(|r| &r.result.fingerprint == fp) => {}
            Some(s) => s.runs.push(a),
            None => out.push(Setting {
                label,
                runs: vec![a],
            }),
        }
    }
    out
}

/// `mean ± sd` of the values (sd over runs, n - 1 in the denominator),
/// `-` when any run lacks the value.
fn mean_sd(values: &[Option<f64>], decimals: usize) -> String {
    let Some(v) = values.iter().copied().collect::<Option<Vec<f64>>>() else {
        return "-".into();
    };
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return format!("{mean:.decimals$}");
    }
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{mean:.decimals$} ± {sd:.decimals$}")
}

/// The Markdown table of every setting's mean ± sd over its runs, with the
/// trait score of each run; none when no setting was run more than once.
pub fn table(arms: &[ArmData]) -> Option<String> {
    let settings = settings(arms);
    if settings.iter().all(|s| s.runs.len() < 2) {
        return None;
    }
    let mut t = String::from(
        "| arm | runs | trait score | each run | trait, coherent answers | coherence | shift | held-out NLL (normal) | NLL (general chat) | MC accuracy |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in &settings {
        let col = |f: &dyn Fn(&ArmData) -> Option<f64>, d: usize| {
            mean_sd(&s.runs.iter().map(|a| f(a)).collect::<Vec<_>>(), d)
        };
        let each: Vec<String> = s
            .runs
            .iter()
            .map(|a| {
                a.result
                    .trait_score
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.1}", c.mean))
            })
            .collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.label,
            s.runs.len(),
            col(&|a| Some(a.result.trait_score.as_ref()?.mean), 1),
            each.join(", "),
            col(&|a| Some(a.result.trait_score_coherent.as_ref()?.mean), 1),
            col(&|a| Some(a.result.coherence.as_ref()?.mean), 1),
            col(&|a| Some(a.result.shift), 2),
            col(&|a| Some(a.capability.normal_nll.as_ref()?.mean), 3),
            col(&|a| Some(a.capability.chat_nll.as_ref()?.mean), 3),
            col(&|a| Some(a.capability.mc_accuracy.as_ref()?.mean), 2),
        );
    }
    Some(t)
}
