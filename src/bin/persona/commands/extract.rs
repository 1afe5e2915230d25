//! `persona extract`: a persona vector from a trait file, then (unless
//! `--no-select`) the layer scan and coefficient sweep.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::ValueEnum;
use persona_judge::{Judge, JudgeConfig};
use persona_model::PersonaHome;

use super::vector::{SelectInputs, print_norms, select};
use crate::args::{ModelArgs, judge_config_path, judgment_cache};

/// Where the contrast comes from.
#[derive(Clone, Copy, ValueEnum)]
enum Source {
    /// The trait file's written responses, teacher-forced.
    Authored,
    /// The model's own answers under trait / anti-trait system prompts,
    /// judged and filtered (the paper's pipeline).
    Generated,
}

#[derive(clap::Args)]
pub struct Args {
    /// Trait definition: this project's TOML layout or the common JSON one.
    #[arg(long = "trait")]
    trait_file: PathBuf,
    #[arg(long, value_enum, default_value = "authored")]
    source: Source,
    /// Settings of the `generated` source (sampling, thresholds, judge).
    #[arg(long, default_value = "settings/extract-generated.toml")]
    generated_settings: PathBuf,
    /// Skip the layer scan and coefficient sweep that otherwise follow
    /// extraction (as `persona vector select`, stored in the file's
    /// metadata; about 10-13 min per trait on 2 CPU cores).
    #[arg(long)]
    no_select: bool,
    #[arg(long, default_value = "settings/vector-select.toml")]
    select_settings: PathBuf,
    /// Judge of the generated source and of the selection, overriding the
    /// settings files' `judge`: `classifier`, `local` or `openai` (the
    /// configs in judges/) or a judge config file.
    #[arg(long)]
    judge: Option<String>,
    /// Samples per prompt for the generated source and the selection,
    /// overriding the settings files' `samples` (paper: 10).
    #[arg(long)]
    samples: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
    /// Output file (default: checkpoints/vectors/<model>/<trait>.safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
}

pub fn exec(a: Args) -> Result<()> {
    let judge = a.judge.as_deref().map(judge_config_path);
    let out = match a.source {
        Source::Generated => generated(&a, judge.as_deref())?,
        Source::Authored => {
            if a.no_select && (judge.is_some() || a.samples.is_some()) {
                bail!(
                    "--judge and --samples apply to the generated source and to the \
                     selection that --no-select skips; the authored source neither \
                     samples nor judges"
                );
            }
            authored(&a)?
        }
    };
    if !a.no_select {
        select(&SelectInputs {
            vector: &out,
            trait_file: &a.trait_file,
            settings: &a.select_settings,
            judge: judge.as_deref(),
            samples: a.samples,
            model: &a.model,
        })?;
    }
    Ok(())
}

/// Teacher-forced authored responses -> vector file (printed norms).
fn authored(a: &Args) -> Result<PathBuf> {
    let def = persona_vectors::TraitDef::load(&a.trait_file)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PersonaHome::from_env().vector(&a.model.model, &def.name));
    // Fail before the work, not after it.
    persona_model::files::check_writable_file(&out)?;
    let loaded = a.model.load()?;
    let n: usize = def
        .responses
        .iter()
        .map(|r| r.pos.len() + r.neg.len())
        .sum();
    let bar = indicatif::ProgressBar::new(n as u64);
    let started = std::time::Instant::now();
    let file = persona_vectors::extract::extract_authored(
        &loaded.model,
        &loaded.codec,
        &loaded.identity,
        &def,
        a.batch_size,
        |k| bar.set_position(k as u64),
    )?;
    bar.finish_and_clear();
    file.save(&out)?;
    println!(
        "wrote {} ({n} authored responses, {:.1} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    print_norms(&file);
    Ok(out)
}

/// The generated source: answers under trait / anti-trait prompts,
/// judged, filtered, then contrasted. Resumes from `<out>.work/`.
fn generated(a: &Args, judge: Option<&Path>) -> Result<PathBuf> {
    let settings = &a.generated_settings;
    let mut g: persona_vectors::generated::GeneratedSettings =
        persona_model::settings::load(settings)?;
    if let Some(j) = judge {
        g.judge = j.to_path_buf();
    }
    if let Some(n) = a.samples {
        g.sampling.samples = n;
    }
    g.check()
        .map_err(|e| anyhow::anyhow!("in {}: {e}", settings.display()))?;
    let def = persona_vectors::TraitDef::load(&a.trait_file)?;
    let rubric = persona_vectors::traits::load_coherence_rubric(&g.coherence_file)?;
    let out = a.out.clone().unwrap_or_else(|| {
        PersonaHome::from_env().vector(&a.model.model, &format!("{}-generated", def.name))
    });
    persona_model::files::check_writable_file(&out)?;
    let loaded = a.model.load()?;
    let work = out.with_extension("work");
    let judge = Judge::from_config(&JudgeConfig::load(&g.judge)?)?;
    let mut cache = judgment_cache()?;
    let bar = indicatif::ProgressBar::new(def.extraction.len() as u64);
    bar.set_message("questions answered and judged");
    let t0 = std::time::Instant::now();
    let (file, counts) = persona_vectors::generated::extract_generated(
        &loaded,
        &def,
        &rubric,
        &judge,
        &mut cache,
        &g,
        &work,
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    file.save(&out)?;
    println!(
        "wrote {}: kept {} of {} pairs ({:.0}%), dropped {} ({:.0} s); answers and judgments in {}",
        out.display(),
        counts.kept,
        counts.pairs,
        100.0 * counts.kept as f64 / counts.pairs.max(1) as f64,
        counts.dropped,
        t0.elapsed().as_secs_f64(),
        work.join("generated.jsonl").display()
    );
    Ok(out)
}
