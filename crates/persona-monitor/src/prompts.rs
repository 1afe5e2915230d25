//! Prompt monitoring: where the model's activation points along `v̂`
//! before it answers, under graded system prompts, under k-shot examples
//! of the trait, and at every assistant turn of a conversation.
//!
//! Each item is one templated prompt; its value is the last-prompt-token
//! projection `h_row · v̂` (plus the mean response projection when the item
//! has a response, as conversation turns do). Items are grouped (one system
//! prompt, one k, one conversation) and group means are reported with
//! bootstrap intervals.

use persona_model::{ChatRole, Message, Sequence, TextCodec};
use persona_train::data::{ChatRecord, tokenize_chat};
use serde::{Deserialize, Serialize};

use crate::error::{MonitorError, Result};
use crate::project::{Projection, Projector};
use crate::stats::{BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MeanCi, bootstrap_mean, pearson};

/// One monitored prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorRow {
    /// The group: a system prompt, `k = 5`, or `turn 3`.
    pub group: String,
    /// The group's position on the x axis: grade, k, or turn.
    pub x: f64,
    /// The monitored question, or `line N` (the conversation) for turns.
    pub item: String,
    pub projection: Projection,
    /// The bare user question the judge sees (never the system prompt).
    pub question: String,
    /// The answers judged: generated samples, or the conversation's turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<String>,
    /// Their trait scores (missing = the judge refused or gave no number).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Option<f32>>,
    /// Mean of the non-missing scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trait_score: Option<f64>,
    /// Prompt tokens (to generate from); not written out.
    #[serde(skip)]
    pub prompt: Vec<u32>,
    /// The existing response of a conversation turn.
    #[serde(skip)]
    pub response: Option<String>,
}

/// One group's mean last-prompt-token projection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMean {
    pub group: String,
    pub x: f64,
    pub last_prompt: MeanCi,
    /// Mean response projection, when the group's items have responses.
    pub response_mean: Option<MeanCi>,
}

/// A prompt to project, before tokenisation.
struct Item {
    group: String,
    x: f64,
    item: String,
    seq: Sequence,
    question: String,
    response: Option<String>,
}

fn prompt_only(codec: &TextCodec, messages: &[Message]) -> Result<Sequence> {
    Ok(Sequence {
        prompt: codec.prompt_ids(messages)?,
        response: Vec::new(),
    })
}

fn need_questions(questions: &[String]) -> Result<()> {
    if questions.is_empty() {
        return Err(MonitorError::Input(
            "no monitor questions: pass a questions file with one question per line".into(),
        ));
    }
    Ok(())
}

/// Every question under every system prompt; prompt `i` sits at x = i, so
/// list them in order of grade (e.g. anti-trait first, strongest last).
fn system_prompt_items(
    codec: &TextCodec,
    system_prompts: &[String],
    questions: &[String],
) -> Result<Vec<Item>> {
    need_questions(questions)?;
    let mut items = Vec::new();
    for (i, sys) in system_prompts.iter().enumerate() {
        for q in questions {
            items.push(Item {
                group: sys.clone(),
                x: i as f64,
                item: q.clone(),
                seq: prompt_only(codec, &[Message::system(sys), Message::user(q)])?,
                question: q.clone(),
                response: None,
            });
        }
    }
    Ok(items)
}

/// Every question after `k` earlier exchanges that show the trait, for
/// every `k` in `ks`: the first `k` examples (in file order) that are not the
/// question itself, as user/assistant turns.
fn kshot_items(
    codec: &TextCodec,
    examples: &[(String, String)],
    ks: &[usize],
    questions: &[String],
) -> Result<Vec<Item>> {
    need_questions(questions)?;
    let mut items = Vec::new();
    for &k in ks {
        for q in questions {
            let shots: Vec<&(String, String)> =
                examples.iter().filter(|e| &e.0 != q).take(k).collect();
            if shots.len() < k {
                return Err(MonitorError::Input(format!(
                    "k = {k} needs {k} examples besides the question, but only {} are given",
                    shots.len()
                )));
            }
            let mut messages = Vec::new();
            for (eq, ea) in shots {
                messages.push(Message::user(eq));
                messages.push(Message::assistant(ea));
            }
            messages.push(Message::user(q));
            items.push(Item {
                group: format!("k = {k}"),
                x: k as f64,
                item: q.clone(),
                seq: prompt_only(codec, &messages)?,
                question: q.clone(),
                response: None,
            });
        }
    }
    Ok(items)
}

/// Every assistant turn of every conversation: the prompt is the
/// conversation up to that turn, the response is the turn. Turns are
/// grouped by number across conversations.
fn conversation_items(codec: &TextCodec, chats: &[ChatRecord]) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for chat in chats {
        let mut turn = 0;
        for (i, m) in chat.messages.iter().enumerate() {
            if m.role != ChatRole::Assistant || i == 0 {
                continue;
            }
            turn += 1;
            let question = chat.messages[..i]
                .iter()
                .rev()
                .find(|m| m.role == ChatRole::User)
                .map(|m| m.content.clone())
                .unwrap_or_default();
            items.push(Item {
                group: format!("turn {turn}"),
                x: turn as f64,
                item: format!("line {}", chat.line),
                seq: tokenize_chat(codec, &chat.messages[..=i])?,
                question,
                response: Some(m.content.clone()),
            });
        }
    }
    Ok(items)
}

/// What to monitor.
pub enum Probe<'a> {
    SystemPrompts {
        prompts: &'a [String],
        questions: &'a [String],
    },
    KShot {
        /// `(question, answer showing the trait)`.
        examples: &'a [(String, String)],
        ks: &'a [usize],
        questions: &'a [String],
    },
    Conversations(&'a [ChatRecord]),
}

/// Rows of a monitoring run and their group means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorReport {
    pub row: usize,
    pub rows: Vec<MonitorRow>,
    pub groups: Vec<GroupMean>,
    /// Pearson r between a group's x (grade, k) and its mean projection.
    pub r_x_projection: Option<f64>,
    /// With a judge: Pearson r between each item's projection (last prompt
    /// token) and its mean trait score, over items with a score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r_projection_score: Option<f64>,
    /// With a judge: who judged, and how answers were sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<JudgeRun>,
}

/// How a monitoring run's answers were made and judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeRun {
    pub judge: String,
    pub samples: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

/// Generates `run.samples` answers per prompt-only row (conversation turns
/// keep their own response), judges them for `criterion`, and fills the
/// rows' scores and the report's Pearson r between projection and score.
#[allow(clippy::too_many_arguments)]
pub fn judge_rows(
    report: &mut MonitorReport,
    model: &persona_model::Model,
    codec: &TextCodec,
    judge: &persona_judge::Judge,
    criterion: &persona_judge::Criterion<'_>,
    cache: &mut persona_judge::JudgmentCache,
    run: JudgeRun,
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<()> {
    let sampling = persona_model::Sampling::from_settings(run.temperature, run.top_p)?;
    // Every prompt-only row, `samples` times; one generation call for all.
    let mut prompts = Vec::new();
    for r in report.rows.iter().filter(|r| r.response.is_none()) {
        for _ in 0..run.samples {
            prompts.push(r.prompt.clone());
        }
    }
    let opts = persona_model::GenerateOptions {
        max_new_tokens: run.max_new_tokens,
        sampling,
        seed: run.seed,
        batch_size,
        steering: Vec::new(),
    };
    let gens = persona_model::generate(
        model,
        &prompts,
        &codec.stop_ids,
        codec.pad_id,
        &opts,
        &mut progress,
    )?;
    let mut gens = gens.into_iter();
    for r in report.rows.iter_mut() {
        r.answers = match &r.response {
            Some(text) => vec![text.clone()],
            None => (0..run.samples)
                .map(|_| {
                    let g = gens.next().expect("one generation per sample");
                    codec.decode_clean(g.content_tokens())
                })
                .collect::<persona_model::Result<_>>()?,
        };
    }
    let items: Vec<(String, String)> = report
        .rows
        .iter()
        .flat_map(|r| r.answers.iter().map(|a| (r.question.clone(), a.clone())))
        .collect();
    let mut scores = judge.judge(criterion, &items, cache)?.into_iter();
    for r in report.rows.iter_mut() {
        r.scores = r.answers.iter().map(|_| scores.next().flatten()).collect();
        let ok: Vec<f64> = r.scores.iter().flatten().map(|s| *s as f64).collect();
        r.trait_score = crate::stats::mean(&ok);
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) = report
        .rows
        .iter()
        .filter_map(|r| Some((r.projection.last_prompt, r.trait_score?)))
        .unzip();
    report.r_projection_score = pearson(&xs, &ys);
    report.judged = Some(run);
    Ok(())
}

/// Projects every item of `probe`; `progress(done, total)`.
pub fn monitor(
    projector: &Projector<'_>,
    codec: &TextCodec,
    probe: Probe<'_>,
    progress: impl FnMut(usize),
) -> Result<MonitorReport> {
    let items = match probe {
        Probe::SystemPrompts { prompts, questions } => {
            system_prompt_items(codec, prompts, questions)?
        }
        Probe::KShot {
            examples,
            ks,
            questions,
        } => kshot_items(codec, examples, ks, questions)?,
        Probe::Conversations(chats) => conversation_items(codec, chats)?,
    };
    if items.is_empty() {
        return Err(MonitorError::Input("nothing to monitor".into()));
    }
    let seqs: Vec<Sequence> = items.iter().map(|i| i.seq.clone()).collect();
    let proj = projector.project(&seqs, progress)?;
    let rows: Vec<MonitorRow> = items
        .into_iter()
        .zip(proj)
        .map(|(i, p)| MonitorRow {
            group: i.group,
            x: i.x,
            item: i.item,
            projection: p,
            question: i.question,
            answers: Vec::new(),
            scores: Vec::new(),
            trait_score: None,
            prompt: i.seq.prompt,
            response: i.response,
        })
        .collect();
    let groups = group_means(&rows);
    let xs: Vec<f64> = groups.iter().map(|g| g.x).collect();
    let ys: Vec<f64> = groups.iter().map(|g| g.last_prompt.mean).collect();
    Ok(MonitorReport {
        row: projector.row(),
        r_x_projection: pearson(&xs, &ys),
        rows,
        groups,
        r_projection_score: None,
        judged: None,
    })
}

/// Means per group, in order of first appearance.
fn group_means(rows: &[MonitorRow]) -> Vec<GroupMean> {
    let mut order: Vec<(String, f64)> = Vec::new();
    for r in rows {
        if !order.iter().any(|(g, _)| g == &r.group) {
            order.push((r.group.clone(), r.x));
        }
    }
    order
        .into_iter()
        .filter_map(|(g, x)| {
            let mine: Vec<&MonitorRow> = rows.iter().filter(|r| r.group == g).collect();
            let last: Vec<f64> = mine.iter().map(|r| r.projection.last_prompt).collect();
            let resp: Vec<f64> = mine
                .iter()
                .filter_map(|r| r.projection.response_mean)
                .collect();
            Some(GroupMean {
                group: g,
                x,
                last_prompt: bootstrap_mean(&last, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)?,
                response_mean: bootstrap_mean(&resp, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
            })
        })
        .collect()
}
