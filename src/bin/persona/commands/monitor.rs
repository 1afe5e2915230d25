//! `persona monitor`: last-prompt-token projections on a persona vector
//! under graded system prompts, k-shot examples, or conversation turns.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use persona_model::{LoadedModel, write_atomic};
use persona_monitor::Projector;
use persona_monitor::plot::{Labels, Series, line_chart};
use persona_monitor::prompts::{MonitorReport, Probe, monitor};
use persona_train::data::ChatRecord;

use crate::args::{VectorAtRow, judgment_cache};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("probe").required(true).args(["system_prompts", "kshot", "conversations"])))]
pub struct Args {
    #[command(flatten)]
    target: VectorAtRow,
    /// Questions: a trait file (its evaluation questions) or a text file
    /// with one per line (for --system-prompts and --kshot).
    #[arg(long)]
    questions: Option<PathBuf>,
    /// System prompts, one per line, in order of grade (anti-trait first).
    #[arg(long)]
    system_prompts: Option<PathBuf>,
    /// Trait file whose authored trait-showing responses become k-shot examples.
    #[arg(long)]
    kshot: Option<PathBuf>,
    /// Numbers of examples to put before each question.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,5,10")]
    k: Vec<usize>,
    /// Conversations: JSONL of {"messages": [...]}; every assistant turn is monitored.
    #[arg(long)]
    conversations: Option<PathBuf>,
    /// Judge config (judges/*.toml): generate answers, judge them with the
    /// trait's rubric, and report Pearson r between projection and trait score.
    #[arg(long, requires = "trait_file")]
    judge: Option<PathBuf>,
    /// Trait file whose rubric the judge uses.
    #[arg(long = "trait")]
    trait_file: Option<PathBuf>,
    /// Answers generated per prompt when judging.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Sampling temperature of the judged answers (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for monitor.jsonl, groups.json and monitor.svg.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
}

fn lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if v.is_empty() {
        bail!("{} has no lines", path.display());
    }
    Ok(v)
}

pub fn exec(a: Args) -> Result<()> {
    if let Some(out) = &a.out {
        persona_model::files::check_writable_dir(out)?;
    }
    let (vector, loaded) = a.target.load()?;
    let projector = Projector::new(
        &loaded.model,
        a.target.layer,
        vector.unit_row(a.target.variant, a.target.layer)?,
        loaded.codec.pad_id,
        a.batch_size,
    )?;
    let inputs = ProbeInputs::read(&a)?;
    let bar = ProgressBar::new(0);
    let mut report = monitor(&projector, &loaded.codec, inputs.probe(&a.k), |d| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    if let Some(judge_path) = &a.judge {
        judge(&a, judge_path, &loaded, &mut report)?;
    }
    print_report(&a, &report);
    if let Some(out) = &a.out {
        write_outputs(out, &report, a.target.layer, inputs.x_name())?;
    }
    Ok(())
}

/// What the probe reads: graded system prompts, k-shot examples or
/// conversations, with their questions.
enum ProbeInputs {
    SystemPrompts(Vec<String>, Vec<String>),
    KShot(Vec<(String, String)>, Vec<String>),
    Conversations(Vec<ChatRecord>),
}

impl ProbeInputs {
    fn read(a: &Args) -> Result<Self> {
        let questions = || -> Result<Vec<String>> {
            let p = a
                .questions
                .as_ref()
                .context("--questions is needed with --system-prompts and --kshot")?;
            Ok(persona_vectors::traits::read_questions(p)?)
        };
        Ok(if let Some(p) = &a.system_prompts {
            Self::SystemPrompts(lines(p)?, questions()?)
        } else if let Some(p) = &a.kshot {
            let examples = persona_vectors::TraitDef::load(p)?
                .responses
                .into_iter()
                .flat_map(|r| r.pos.into_iter().map(move |a| (r.question.clone(), a)))
                .collect();
            Self::KShot(examples, questions()?)
        } else if let Some(p) = &a.conversations {
            Self::Conversations(persona_train::data::read_chat_records(p)?)
        } else {
            bail!("pass one of --system-prompts, --kshot, --conversations");
        })
    }

    fn probe<'a>(&'a self, ks: &'a [usize]) -> Probe<'a> {
        match self {
            Self::SystemPrompts(prompts, questions) => Probe::SystemPrompts { prompts, questions },
            Self::KShot(examples, questions) => Probe::KShot {
                examples,
                ks,
                questions,
            },
            Self::Conversations(chats) => Probe::Conversations(chats),
        }
    }

    /// What a group's x is, for the plot.
    fn x_name(&self) -> &'static str {
        match self {
            Self::SystemPrompts(..) => "system prompt grade (line in file, 0-based)",
            Self::KShot(..) => "k (trait examples before the question)",
            Self::Conversations(_) => "assistant turn",
        }
    }
}

/// Answers to every prompt, judged with the trait's rubric.
fn judge(
    a: &Args,
    judge_path: &std::path::Path,
    loaded: &LoadedModel,
    report: &mut MonitorReport,
) -> Result<()> {
    if a.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let trait_path = a.trait_file.as_ref().context("--judge needs --trait")?;
    let def = persona_vectors::TraitDef::load(trait_path)?;
    let judge = persona_judge::Judge::from_config(&persona_judge::JudgeConfig::load(judge_path)?)?;
    let mut cache = judgment_cache()?;
    let run = persona_monitor::prompts::JudgeRun {
        judge: judge.identity(),
        samples: a.samples,
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    let bar = ProgressBar::new(0);
    bar.set_message("generating answers to judge");
    persona_monitor::prompts::judge_rows(
        report,
        &loaded.model,
        &loaded.codec,
        &judge,
        &persona_judge::Criterion {
            name: &def.name,
            rubric: &def.rubric,
        },
        &mut cache,
        run,
        a.batch_size,
        |d| bar.set_position(d as u64),
    )?;
    bar.finish_and_clear();
    Ok(())
}

/// Group means, Pearson r, and the judged trait scores when judged.
fn print_report(a: &Args, report: &MonitorReport) {
    println!(
        "last-prompt-token projection on v̂ at row {} ({})",
        a.target.layer,
        a.target.vector.display()
    );
    println!(
        "{:>6}  {:>8}  {:>19}  {:>8}  group",
        "x", "mean", "95% interval", "resp"
    );
    for g in &report.groups {
        let resp = g
            .response_mean
            .map(|r| format!("{:+8.3}", r.mean))
            .unwrap_or_else(|| format!("{:>8}", "-"));
        let name: String = g.group.chars().take(70).collect();
        println!(
            "{:>6}  {:+8.3}  [{:+8.3}, {:+8.3}]  {resp}  {name}",
            g.x, g.last_prompt.mean, g.last_prompt.lo, g.last_prompt.hi
        );
    }
    if let Some(r) = report.r_x_projection {
        println!("Pearson r (x vs mean projection): {r:.3}");
    }
    let Some(run) = &report.judged else {
        return;
    };
    println!(
        "judged by {} ({} samples per prompt):",
        run.judge, run.samples
    );
    for g in &report.groups {
        let s: Vec<f64> = report
            .rows
            .iter()
            .filter(|r| r.group == g.group)
            .filter_map(|r| r.trait_score)
            .collect();
        let mean = persona_monitor::stats::mean(&s)
            .map(|m| format!("{m:6.1}"))
            .unwrap_or_else(|| "     -".into());
        let name: String = g.group.chars().take(60).collect();
        println!(
            "{:>6}  trait score {mean}  ({} scored)  {name}",
            g.x,
            s.len()
        );
    }
    match report.r_projection_score {
        Some(r) => println!("Pearson r (projection vs trait score, per item): {r:.3}"),
        None => println!("Pearson r (projection vs trait score): not enough scored items"),
    }
}

/// `monitor.jsonl`, `groups.json` and `monitor.svg` in `out`.
fn write_outputs(
    out: &std::path::Path,
    report: &MonitorReport,
    row: usize,
    x_name: &str,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut jsonl = String::new();
    for r in &report.rows {
        jsonl.push_str(&serde_json::to_string(r)?);
        jsonl.push('\n');
    }
    write_atomic(&out.join("monitor.jsonl"), jsonl.as_bytes())?;
    write_atomic(
        &out.join("groups.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    let series = vec![Series {
        name: "mean last-prompt projection".into(),
        points: report
            .groups
            .iter()
            .map(|g| (g.x, g.last_prompt.mean))
            .collect(),
        ..Default::default()
    }];
    let svg = line_chart(
        Labels {
            title: &format!("projection on v̂ at row {row}"),
            x: x_name,
            y: "h · v̂ (last prompt token)",
        },
        &series,
    )?;
    write_atomic(&out.join("monitor.svg"), svg.as_bytes())?;
    println!("wrote {}", out.display());
    Ok(())
}
