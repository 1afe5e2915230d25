//! `persona screen`: rank training samples by how far they would push the
//! model along a persona vector.

use std::path::PathBuf;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use persona_model::PersonaHome;
use persona_monitor::screen::{
    FilterRule, SampleScore, ScreenOptions, ScreenSummary, filter, screen,
};

use crate::args::VectorAtRow;

#[derive(clap::Args)]
pub struct Args {
    /// Chat JSONL: one {"messages": [...]} per line (optional "label": true|false).
    #[arg(long)]
    dataset: PathBuf,
    #[command(flatten)]
    target: VectorAtRow,
    /// Output folder (default: checkpoints/screens/<dataset>-<vector>-row<L>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Longest greedy base response, in tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sequences per forward pass and prompts per generation batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Only the cheap variant (response minus last-prompt projection): no generation.
    #[arg(long)]
    cheap: bool,
    /// Write filtered.jsonl without the top P percent of samples.
    #[arg(long, conflicts_with = "threshold")]
    drop_top: Option<f64>,
    /// Write filtered.jsonl without samples scoring above T.
    #[arg(long, allow_hyphen_values = true)]
    threshold: Option<f64>,
}

pub fn exec(a: Args) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if a.max_new_tokens == 0 && !a.cheap {
        bail!("--max-new-tokens must be at least 1 (or pass --cheap to skip generation)");
    }
    let out = a.out.clone().unwrap_or_else(|| {
        PersonaHome::from_env().screen(&a.dataset, &a.target.vector, a.target.layer, a.cheap)
    });
    persona_model::files::check_writable_dir(&out)?;
    let (vector, loaded) = a.target.load()?;
    let opts = ScreenOptions {
        generate_base: !a.cheap,
        max_new_tokens: a.max_new_tokens,
        batch_size: a.batch_size,
        base_cache: PersonaHome::from_env().base_responses(&loaded.identity.sha256),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} samples {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(if a.cheap {
        "projecting"
    } else {
        "generating base responses and projecting"
    });
    let (summary, scores) = screen(
        &loaded.model,
        &loaded.codec,
        &loaded.identity,
        &a.dataset,
        &vector,
        a.target.variant,
        a.target.layer,
        &opts,
        &out,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    print_summary(&a, &summary, &scores);
    let rule = match (a.drop_top, a.threshold) {
        (Some(p), _) => Some(FilterRule::DropTop { percent: p }),
        (_, Some(t)) => Some(FilterRule::Threshold { threshold: t }),
        _ => None,
    };
    if let Some(rule) = rule {
        let m = filter(&out, &summary, &scores, rule)?;
        println!(
            "filter ({}): kept {}, removed {}; wrote {} and {}",
            m.rule,
            m.kept,
            m.removed.len(),
            out.join("filtered.jsonl").display(),
            out.join("filter-manifest.json").display()
        );
    }
    println!("results in {}", out.display());
    Ok(())
}

/// The dataset's means, AUROCs and highest-scoring samples.
fn print_summary(a: &Args, summary: &ScreenSummary, scores: &[SampleScore]) {
    let fmt = |c: &Option<persona_monitor::stats::MeanCi>| match c {
        Some(c) => format!("{:+.3} [{:+.3}, {:+.3}] (n {})", c.mean, c.lo, c.hi, c.n),
        None => "-".into(),
    };
    println!(
        "screened {} samples of {} at row {} ({} unscored)",
        summary.samples,
        a.dataset.display(),
        a.target.layer,
        summary.unscored
    );
    if !a.cheap {
        println!("mean ΔP                         {}", fmt(&summary.delta_p));
        println!(
            "  dataset response projection   {}",
            fmt(&summary.sample_response)
        );
        println!(
            "  base response projection      {}",
            fmt(&summary.base_response)
        );
    }
    println!("mean cheap (resp - last prompt) {}", fmt(&summary.cheap));
    if let Some(r) = summary.auroc_delta_p {
        println!("AUROC of ΔP for label = true    {r:.3}");
    }
    if let Some(r) = summary.auroc_cheap {
        println!("AUROC of cheap for label = true {r:.3}");
    }
    println!("highest:");
    for s in scores.iter().take(5) {
        let v = s.rank_score(!a.cheap).unwrap_or(f64::NAN);
        println!("  line {:>5}  {v:+.3}  {}", s.line, s.prompt);
    }
}
