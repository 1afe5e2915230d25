//! `persona vector info` and `persona vector select`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use persona_eval::select::{SelectSettings, Selection, select as run_selection, store};
use persona_judge::{Judge, JudgeConfig};
use persona_vectors::VectorFile;

use crate::args::{ModelArgs, judgment_cache, spinner};

#[derive(Subcommand)]
pub enum Command {
    /// Metadata and per-row norms of a vector file.
    Info { file: PathBuf },
    /// Choose the steering row (layer scan on the extraction questions) and
    /// measure the dose-response at it (coefficient sweep on the evaluation
    /// questions); stores both tables in the vector file's metadata.
    Select {
        #[arg(long)]
        vector: PathBuf,
        /// The trait file the vector was extracted from.
        #[arg(long = "trait")]
        trait_file: PathBuf,
        #[arg(long, default_value = "settings/vector-select.toml")]
        settings: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
}

pub fn exec(c: Command) -> Result<()> {
    match c {
        Command::Info { file } => info(&file),
        Command::Select {
            vector,
            trait_file,
            settings,
            model,
        } => select(&SelectInputs {
            vector: &vector,
            trait_file: &trait_file,
            settings: &settings,
            judge: None,
            samples: None,
            model: &model,
        }),
    }
}

fn info(file: &Path) -> Result<()> {
    let f = VectorFile::load(file)?;
    println!("file:           {}", file.display());
    println!(
        "model:          {} (sha256 {})",
        f.meta.model_name, f.meta.model_sha256
    );
    println!(
        "shape:          [{}, {}] per variant",
        f.meta.n_layers + 1,
        f.meta.d_model
    );
    println!("rows:           {}", f.meta.row_convention);
    println!("format version: {}", f.meta.format_version);
    let mut extra = f.meta.extra.clone();
    let selection = extra
        .as_object_mut()
        .and_then(|o| o.remove("selection"))
        .map(serde_json::from_value::<Selection>)
        .transpose()?;
    println!("extraction:     {}", serde_json::to_string_pretty(&extra)?);
    print_norms(&f);
    if let Some(sel) = selection {
        print_selection(&sel);
    }
    Ok(())
}

/// Per-row norms of every variant of a vector file.
pub fn print_norms(file: &VectorFile) {
    let d = file.meta.d_model;
    print!("row ");
    for v in file.variants.keys() {
        print!("  |{v}|");
    }
    println!();
    for row in 0..=file.meta.n_layers {
        print!("{row:>3} ");
        for (v, data) in &file.variants {
            let x = &data[row * d..(row + 1) * d];
            let norm = x.iter().map(|x| x * x).sum::<f32>().sqrt();
            print!("  {norm:>w$.3}", w = v.name().len() + 2);
        }
        println!();
    }
}

/// What `persona vector select` (and extraction's selection) reads.
pub struct SelectInputs<'a> {
    pub vector: &'a Path,
    pub trait_file: &'a Path,
    pub settings: &'a Path,
    /// Overrides of the settings' `judge` and `samples` (`persona extract`).
    pub judge: Option<&'a Path>,
    pub samples: Option<usize>,
    pub model: &'a ModelArgs,
}

/// The layer scan and coefficient sweep, stored in the vector's metadata.
pub fn select(i: &SelectInputs<'_>) -> Result<()> {
    let mut s: SelectSettings = persona_model::settings::load(i.settings)?;
    if let Some(j) = i.judge {
        s.judge = j.to_path_buf();
    }
    if let Some(n) = i.samples {
        s.sampling.samples = n;
    }
    s.check()
        .map_err(|e| anyhow::anyhow!("in {}: {e}", i.settings.display()))?;
    let def = persona_vectors::TraitDef::load(i.trait_file)?;
    let mut file = VectorFile::load(i.vector)?;
    let loaded = i.model.load()?;
    file.check_model(&loaded.model.config, &loaded.identity)?;
    let judge = Judge::from_config(&JudgeConfig::load(&s.judge)?)?;
    let mut cache = judgment_cache()?;
    let bar = spinner();
    let t0 = std::time::Instant::now();
    let sel = run_selection(&loaded, &file, &def, &s, &judge, &mut cache, |what| {
        bar.set_message(format!("steering {what}"))
    })?;
    bar.finish_and_clear();
    store(&mut file, &sel)?;
    print_selection(&sel);
    println!(
        "stored in {} ({:.0} s)",
        i.vector.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The layer scan and the sweep as tables.
fn print_selection(sel: &Selection) {
    let f = |x: Option<f64>| x.map_or("n/a".into(), |v| format!("{v:.1}"));
    println!(
        "layer scan (coefficient {:+}, extraction questions, judge {}):",
        sel.settings.layer_coef, sel.judge
    );
    println!("  row  trait  coherence");
    for l in &sel.layers {
        println!(
            "  {:>3}  {:>5}  {:>9}",
            l.row,
            f(l.trait_score),
            f(l.coherence)
        );
    }
    let threshold = sel.settings.coherence_threshold;
    match sel.chosen_row {
        Some(r) => println!("chosen row: {r} (highest trait score with coherence >= {threshold})"),
        None => println!("no row keeps coherence >= {threshold}; nothing chosen"),
    }
    if !sel.sweep.is_empty() {
        println!("coefficient sweep (evaluation questions):");
        println!("   coef  trait  coherence");
        for c in &sel.sweep {
            println!(
                "  {:>+5}  {:>5}  {:>9}",
                c.coef,
                f(c.trait_score),
                f(c.coherence)
            );
        }
    }
}
