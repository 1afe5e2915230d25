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

/// The trait score over coherent answers with their count.
fn coherent(m: &Option<MeanCi>) -> String {
    match m {
        Some(m) => format!("{:.1} ({})", m.mean, m.n),
        None => "n/a (0)".into(),
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
        "| arm | trait score [95% CI] | trait, coherent answers (n) | coherence | missing | shift | held-out NLL (normal) | NLL (general chat) | MC accuracy |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for a in arms {
        let r = &a.result;
        let c = &a.capability;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.0}% | {:+.2} | {} | {} | {} |",
            r.arm.label,
            ci(&r.trait_score, 1),
            coherent(&r.trait_score_coherent),
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

/// One plot of a report: its file name, title and SVG text.
pub struct Plot {
    pub file: &'static str,
    pub title: String,
    pub svg: String,
}

/// The plots of a comparison: shift per step (when the manifest names
/// runs), trait score against capability cost, and trait score against
/// shift.
pub fn plots(arms: &[ArmData], manifest: &ComparisonManifest) -> Result<Vec<Plot>> {
    let Some(first) = arms.first() else {
        return Ok(Vec::new());
    };
    let trait_name = &first.result.trait_name;
    let mut out = Vec::new();
    if let Some(p) = shift_plot(manifest, trait_name, first.result.settings.shift_row)? {
        out.push(p);
    }
    out.push(cost_plot(arms, trait_name)?);
    out.push(correlation_plot(arms, trait_name)?);
    Ok(out)
}

/// Shift per optimizer step, one line per training run.
fn shift_plot(manifest: &ComparisonManifest, trait_name: &str, row: usize) -> Result<Option<Plot>> {
    let series = manifest
        .runs
        .iter()
        .map(|(label, run)| {
            Ok(Series {
                name: label.clone(),
                points: shift_per_step(run, trait_name, row)?,
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if series.is_empty() {
        return Ok(None);
    }
    let title = format!("projection shift per training step ({trait_name}, row {row})");
    let labels = Labels {
        title: &title,
        x: "optimizer step",
        y: "shift (last prompt token, on unit vector)",
    };
    let svg = line_chart(labels, &series)?;
    Ok(Some(Plot {
        file: "shift-per-step.svg",
        title,
        svg,
    }))
}

/// Trait score against capability cost: the post-hoc sweep as one series,
/// every other final arm as its own point.
fn cost_plot(arms: &[ArmData], trait_name: &str) -> Result<Plot> {
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
    let others = arms
        .iter()
        .filter(|a| a.result.arm.steer.is_none() && a.result.arm.step.is_none());
    for a in others {
        if let Some(p) = point(a) {
            series.push(Series {
                name: a.result.arm.label.clone(),
                points: vec![p],
                ..Default::default()
            });
        }
    }
    let title = format!("{trait_name} score vs capability cost");
    let labels = Labels {
        title: &title,
        x: "held-out NLL on normal data (nats/token)",
        y: "trait score",
    };
    let svg = scatter(labels, &series)?;
    Ok(Plot {
        file: "trait-vs-capability.svg",
        title,
        svg,
    })
}

/// Trait score against shift over every unsteered checkpoint.
fn correlation_plot(arms: &[ArmData], trait_name: &str) -> Result<Plot> {
    let points = shift_trait_points(arms);
    let title = format!(
        "{trait_name} score vs finetuning shift (Pearson r = {})",
        fmt_r(shift_trait_r(arms))
    );
    let labels = Labels {
        title: &title,
        x: "finetuning shift",
        y: "trait score",
    };
    let series = [Series {
        name: "checkpoints".into(),
        points,
        ..Default::default()
    }];
    let svg = scatter(labels, &series)?;
    Ok(Plot {
        file: "trait-vs-shift.svg",
        title,
        svg,
    })
}

/// `(shift, trait score)` of every unsteered arm that has a trait score.
fn shift_trait_points(arms: &[ArmData]) -> Vec<(f64, f64)> {
    arms.iter()
        .filter(|a| a.result.arm.steer.is_none())
        .filter_map(|a| Some((a.result.shift, a.result.trait_score.as_ref()?.mean)))
        .collect()
}

fn fmt_r(r: Option<f64>) -> String {
    r.map_or("n/a".into(), |r| format!("{r:.2}"))
}

/// Pearson r between shift and trait score over the unsteered arms.
pub fn shift_trait_r(arms: &[ArmData]) -> Option<f64> {
    let (xs, ys): (Vec<f64>, Vec<f64>) = shift_trait_points(arms).into_iter().unzip();
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

/// Everything a report shows, gathered once and rendered twice.
struct Report<'a> {
    title: &'a str,
    judge: String,
    judge_audit: String,
    settings: String,
    table: String,
    /// Settings run more than once: mean ± sd ([`crate::repeats::table`]).
    repeats: Option<String>,
    r: String,
    plots: Vec<Plot>,
    examples: Vec<(String, String, Vec<&'a AnswerRecord>)>,
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
    let first = arms.first();
    let report = Report {
        title: &manifest.title,
        judge: first.map(|a| a.result.judge.clone()).unwrap_or_default(),
        judge_audit: first
            .map(|a| a.result.judge_audit.clone())
            .unwrap_or_default(),
        settings: first
            .map(|a| serde_json::to_string(&a.result.settings).unwrap_or_default())
            .unwrap_or_default(),
        table: table(&arms),
        repeats: crate::repeats::table(&arms),
        r: fmt_r(shift_trait_r(&arms)),
        plots: plots(&arms, manifest)?,
        examples: examples(&arms, 2),
    };
    for plot in &report.plots {
        persona_model::write_atomic(&dir.join(plot.file), plot.svg.as_bytes())?;
    }
    persona_model::write_atomic(
        &dir.join("comparison.json"),
        &serde_json::to_vec_pretty(manifest).expect("serialises"),
    )?;
    persona_model::write_atomic(&dir.join("report.md"), markdown(&report).as_bytes())?;
    persona_model::write_atomic(&dir.join("report.html"), html(&report).as_bytes())?;
    Ok(dir.join("report.html"))
}

const REPEATS_TITLE: &str = "Over repeated runs";
const REPEATS_NOTE: &str = "Arms with the same label are one setting run several times (e.g. seeds): mean ± standard deviation over the runs of each arm's point estimate.";

fn fmt_score(score: Option<f32>) -> String {
    score.map_or("n/a".into(), |s| format!("{s:.0}"))
}

fn markdown(report: &Report) -> String {
    let mut md = format!("# {}\n\n", report.title);
    let _ = writeln!(
        md,
        "Judge: {}\n\nJudge audit: {}\n\nSettings: `{}`\n",
        report.judge, report.judge_audit, report.settings
    );
    md.push_str(&report.table);
    let _ = writeln!(
        md,
        "\nTrait score: mean of non-missing judgments with a 95% bootstrap interval; trait among coherent answers: the same over answers judged coherence >= 50, with their count. Shift: mean last-prompt-token activation minus the base model's, on the unit vector. NLL: nats/token (lower is better). Pearson r (shift vs trait score, unsteered checkpoints): {}.\n",
        report.r
    );
    if let Some(t) = &report.repeats {
        let _ = writeln!(md, "## {REPEATS_TITLE}\n\n{t}\n{REPEATS_NOTE}\n");
    }
    for plot in &report.plots {
        let _ = writeln!(md, "![{}]({})\n", plot.title, plot.file);
    }
    md.push_str("## Example answers\n\n");
    for (label, q, answers) in &report.examples {
        let _ = writeln!(md, "**{label}**, to \"{q}\":\n");
        for a in answers {
            let _ = writeln!(
                md,
                "> {} *(trait {}, coherence {})*\n",
                a.answer.replace('\n', " "),
                fmt_score(a.trait_score),
                fmt_score(a.coherence)
            );
        }
    }
    md
}

/// The markdown table as HTML rows (the `|---|` separator line skipped).
fn html_table(table: &str) -> String {
    let mut html = String::from("<table>\n");
    for (i, line) in table.lines().enumerate() {
        if i == 1 {
            continue;
        }
        let tag = if i == 0 { "th" } else { "td" };
        html.push_str("<tr>");
        for c in line.trim_matches('|').split('|').map(str::trim) {
            let _ = write!(html, "<{tag}>{}</{tag}>", html_escape(c));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn html(report: &Report) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n<p>Judge: {j}</p>\n<p>Judge audit: {a}</p>\n<p>Settings: <code>{s}</code></p>\n",
        t = html_escape(report.title),
        j = html_escape(&report.judge),
        a = html_escape(&report.judge_audit),
        s = html_escape(&report.settings)
    );
    html.push_str(&html_table(&report.table));
    let _ = writeln!(
        html,
        "<p>Pearson r (shift vs trait score, unsteered checkpoints): {}</p>",
        report.r
    );
    if let Some(t) = &report.repeats {
        let _ = writeln!(html, "<h2>{REPEATS_TITLE}</h2>");
        html.push_str(&html_table(t));
        let _ = writeln!(html, "<p>{}</p>", html_escape(REPEATS_NOTE));
    }
    for plot in &report.plots {
        let _ = writeln!(
            html,
            "<div class=\"plot\"><h3>{}</h3>\n{}</div>",
            html_escape(&plot.title),
            plot.svg
        );
    }
    html.push_str("<h2>Example answers</h2>\n");
    for (label, q, answers) in &report.examples {
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
                fmt_score(a.trait_score),
                fmt_score(a.coherence)
            );
        }
    }
    html.push_str("</body></html>\n");
    html
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}code{white-space:pre-wrap;overflow-wrap:anywhere}blockquote{color:#333;border-left:3px solid #ccc;margin:0.5em 0;padding-left:1em}.plot{margin:1em 0}";
