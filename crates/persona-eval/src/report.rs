//! Comparison reports from saved results only: `report.md` and a
//! self-contained `report.html` (SVG plots inlined, no external files),
//! plus the SVGs beside them. Nothing is recomputed here: every number
//! comes from the arms' `result.json` / `capability.json` / `answers.jsonl`
//! and the runs' `metrics.jsonl`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use persona_monitor::plot::{Labels, Series, line_chart, scatter};
use persona_monitor::stats::{MeanCi, pearson};
use persona_train::StepMetrics;
use serde::{Deserialize, Serialize};

use crate::capability::CapabilityResult;
use crate::error::{EvalError, Result};
use crate::trait_eval::{AnswerRecord, TraitResult, read_answers};

/// Which saved arms a report shows, in order, and which runs' training
/// metrics it plots (`comparison.json` in the report folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonManifest {
    pub title: String,
    /// Arm result folders (each with `result.json`, `capability.json`, `answers.jsonl`).
    pub arms: Vec<PathBuf>,
    /// `(label, run folder)` whose `metrics.jsonl` gives the shift per step.
    pub runs: Vec<(String, PathBuf)>,
}

/// One loaded arm.
pub struct ArmData {
    pub result: TraitResult,
    pub capability: CapabilityResult,
    pub answers: Vec<AnswerRecord>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::file(path, e))
}

/// Loads an arm folder written by the evaluation.
pub fn load_arm(dir: &Path) -> Result<ArmData> {
    Ok(ArmData {
        result: read_json(&dir.join("result.json"))?,
        capability: read_json(&dir.join("capability.json"))?,
        answers: read_answers(dir)?,
    })
}

/// The `shift` entries of a run's `metrics.jsonl`: `(step, shift)` for `trait_name` at `row`.
pub fn shift_per_step(run: &Path, trait_name: &str, row: usize) -> Result<Vec<(f64, f64)>> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::file(&path, e))?;
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let m: StepMetrics = serde_json::from_str(l).map_err(|e| EvalError::file(&path, e))?;
        if let Some(v) = m
            .shift
            .as_ref()
            .and_then(|s| s.get(trait_name))
            .and_then(|r| r.get(&row.to_string()))
        {
            out.push((m.step as f64, *v));
        }
    }
    Ok(out)
}

fn ci(m: &Option<MeanCi>, digits: usize) -> String {
    match m {
        Some(m) => format!("{:.d$} [{:.d$}, {:.d$}]", m.mean, m.lo, m.hi, d = digits),
        None => "n/a".into(),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The arms' table as Markdown.
pub fn table(arms: &[ArmData]) -> String {
    let mut t = String::from(
        "| arm | trait score [95% CI] | coherence | missing | shift | held-out NLL (normal) | NLL (general chat) | MC accuracy |\n|---|---|---|---|---|---|---|---|\n",
    );
    for a in arms {
        let r = &a.result;
        let c = &a.capability;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0}% | {:+.2} | {} | {} | {} |",
            r.arm.label,
            ci(&r.trait_score, 1),
            ci(&r.coherence, 1),
            100.0 * r.missing_fraction,
            r.shift,
            ci(&c.normal_nll, 3),
            ci(&c.chat_nll, 3),
            ci(&c.mc_accuracy, 2),
        );
    }
    t
}

/// The plots of a comparison: `(file name, title, svg)`.
pub fn plots(
    arms: &[ArmData],
    manifest: &ComparisonManifest,
) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    let Some(first) = arms.first() else {
        return Ok(out);
    };
    let (trait_name, row) = (&first.result.trait_name, first.result.settings.shift_row);
    // 1. Shift per training step.
    let mut series = Vec::new();
    for (label, run) in &manifest.runs {
        series.push(Series {
            name: label.clone(),
            points: shift_per_step(run, trait_name, row)?,
            ..Default::default()
        });
    }
    if !series.is_empty() {
        let title = format!("projection shift per training step ({trait_name}, row {row})");
        out.push((
            "shift-per-step.svg".into(),
            title.clone(),
            line_chart(
                Labels {
                    title: &title,
                    x: "optimizer step",
                    y: "shift (last prompt token, on unit vector)",
                },
                &series,
            )?,
        ));
    }
    // 2. Trait score vs capability cost: the post-hoc sweep as one series,
    // every other arm as its own point.
    let point = |a: &ArmData| -> Option<(f64, f64)> {
        Some((
            a.capability.normal_nll.as_ref()?.mean,
            a.result.trait_score.as_ref()?.mean,
        ))
    };
    let (mut sweep, mut coefs) = (Vec::new(), Vec::new());
    for a in arms {
        if let (Some(steer), Some(p)) = (&a.result.arm.steer, point(a)) {
            sweep.push(p);
            coefs.push(format!("coef {}", steer.coef));
        }
    }
    let mut series = Vec::new();
    if !sweep.is_empty() {
        series.push(Series {
            name: "post-hoc steering sweep".into(),
            points: sweep,
            point_labels: coefs,
        });
    }
    for a in arms
        .iter()
        .filter(|a| a.result.arm.steer.is_none() && a.result.arm.step.is_none())
    {
        if let Some(p) = point(a) {
            series.push(Series {
                name: a.result.arm.label.clone(),
                points: vec![p],
                ..Default::default()
            });
        }
    }
    let title = format!("{trait_name} score vs capability cost");
    out.push((
        "trait-vs-capability.svg".into(),
        title.clone(),
        scatter(
            Labels {
                title: &title,
                x: "held-out NLL on normal data (nats/token)",
                y: "trait score",
            },
            &series,
        )?,
    ));
    // 3. Trait score vs shift over every unsteered checkpoint.
    let pts: Vec<(f64, f64)> = arms
        .iter()
        .filter(|a| a.result.arm.steer.is_none())
        .filter_map(|a| Some((a.result.shift, a.result.trait_score.as_ref()?.mean)))
        .collect();
    let (xs, ys): (Vec<f64>, Vec<f64>) = pts.iter().copied().unzip();
    let r = pearson(&xs, &ys);
    let title = format!(
        "{trait_name} score vs finetuning shift (Pearson r = {})",
        r.map_or("n/a".into(), |r| format!("{r:.2}"))
    );
    out.push((
        "trait-vs-shift.svg".into(),
        title.clone(),
        scatter(
            Labels {
                title: &title,
                x: "finetuning shift",
                y: "trait score",
            },
            &[Series {
                name: "checkpoints".into(),
                points: pts,
                ..Default::default()
            }],
        )?,
    ));
    Ok(out)
}

/// Pearson r between shift and trait score over the unsteered arms.
pub fn shift_trait_r(arms: &[ArmData]) -> Option<f64> {
    let (xs, ys): (Vec<f64>, Vec<f64>) = arms
        .iter()
        .filter(|a| a.result.arm.steer.is_none())
        .filter_map(|a| Some((a.result.shift, a.result.trait_score.as_ref()?.mean)))
        .unzip();
    pearson(&xs, &ys)
}

/// Example answers: the first evaluation question, first `n` samples, per arm.
fn examples(arms: &[ArmData], n: usize) -> Vec<(String, String, Vec<&AnswerRecord>)> {
    let Some(q) = arms
        .first()
        .and_then(|a| a.answers.first())
        .map(|a| a.question.clone())
    else {
        return Vec::new();
    };
    arms.iter()
        .map(|a| {
            (
                a.result.arm.label.clone(),
                q.clone(),
                a.answers
                    .iter()
                    .filter(|r| r.question == q)
                    .take(n)
                    .collect(),
            )
        })
        .collect()
}

/// Writes `report.md`, `report.html` and the SVGs into `dir` from the saved
/// results the manifest names (and writes the manifest as `comparison.json`).
pub fn write_report(dir: &Path, manifest: &ComparisonManifest) -> Result<PathBuf> {
    let arms: Vec<ArmData> = manifest
        .arms
        .iter()
        .map(|d| load_arm(d))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(dir).map_err(|e| EvalError::file(dir, e))?;
    let plots = plots(&arms, manifest)?;
    let table = table(&arms);
    let judge = arms
        .first()
        .map(|a| a.result.judge.clone())
        .unwrap_or_default();
    let settings = arms
        .first()
        .map(|a| serde_json::to_string(&a.result.settings).unwrap_or_default())
        .unwrap_or_default();
    let r = shift_trait_r(&arms).map_or("n/a".into(), |r| format!("{r:.2}"));

    let mut md = format!("# {}\n\n", manifest.title);
    let _ = writeln!(md, "Judge: {judge}\n\nSettings: `{settings}`\n");
    md.push_str(&table);
    let _ = writeln!(
        md,
        "\nTrait score: mean of non-missing judgments with a 95% bootstrap interval. Shift: mean last-prompt-token activation minus the base model's, on the unit vector. NLL: nats/token (lower is better). Pearson r (shift vs trait score, unsteered checkpoints): {r}.\n"
    );
    for (file, title, svg) in &plots {
        persona_model::write_atomic(&dir.join(file), svg.as_bytes())?;
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    md.push_str("## Example answers\n\n");
    let ex = examples(&arms, 2);
    for (label, q, answers) in &ex {
        let _ = writeln!(md, "**{label}**, to \"{q}\":\n");
        for a in answers {
            let _ = writeln!(
                md,
                "> {} *(trait {}, coherence {})*\n",
                a.answer.replace('\n', " "),
                a.trait_score.map_or("n/a".into(), |s| format!("{s:.0}")),
                a.coherence.map_or("n/a".into(), |s| format!("{s:.0}"))
            );
        }
    }

    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}code{{white-space:pre-wrap;overflow-wrap:anywhere}}blockquote{{color:#333;border-left:3px solid #ccc;margin:0.5em 0;padding-left:1em}}.plot{{margin:1em 0}}</style></head><body>\n<h1>{t}</h1>\n<p>Judge: {j}</p>\n<p>Settings: <code>{s}</code></p>\n",
        t = html_escape(&manifest.title),
        j = html_escape(&judge),
        s = html_escape(&settings)
    );
    html.push_str("<table>\n");
    for (i, line) in table.lines().enumerate() {
        if i == 1 {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let tag = if i == 0 { "th" } else { "td" };
        html.push_str("<tr>");
        for c in cells {
            let _ = write!(html, "<{tag}>{}</{tag}>", html_escape(c));
        }
        html.push_str("</tr>\n");
    }
    let _ = writeln!(
        html,
        "</table>\n<p>Pearson r (shift vs trait score, unsteered checkpoints): {r}</p>"
    );
    for (_, title, svg) in &plots {
        let _ = writeln!(
            html,
            "<div class=\"plot\"><h3>{}</h3>\n{svg}</div>",
            html_escape(title)
        );
    }
    html.push_str("<h2>Example answers</h2>\n");
    for (label, q, answers) in &ex {
        let _ = writeln!(
            html,
            "<p><b>{}</b>, to &ldquo;{}&rdquo;:</p>",
            html_escape(label),
            html_escape(q)
        );
        for a in answers {
            let _ = writeln!(
                html,
                "<blockquote>{} <i>(trait {}, coherence {})</i></blockquote>",
                html_escape(&a.answer),
                a.trait_score.map_or("n/a".into(), |s| format!("{s:.0}")),
                a.coherence.map_or("n/a".into(), |s| format!("{s:.0}"))
            );
        }
    }
    html.push_str("</body></html>\n");
    persona_model::write_atomic(
        &dir.join("comparison.json"),
        &serde_json::to_vec_pretty(manifest).expect("serialises"),
    )?;
    persona_model::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    persona_model::write_atomic(&dir.join("report.html"), html.as_bytes())?;
    Ok(dir.join("report.html"))
}
