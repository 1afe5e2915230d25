//! `persona`: the command-line front end of the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::{Parser, Subcommand, ValueEnum};
use persona_model::{
    DEFAULT_MODEL, GenerateOptions, Message, Positions, Sampling, Steering, generate, load_host,
    parse_device,
};
use persona_vectors::VectorFile;

mod eval;
mod judge;
mod monitor;
mod progress;
mod screen;
mod vector_args;

/// The global allocator (mimalloc, keeping freed memory for reuse).
mod alloc;

#[derive(Parser)]
#[command(
    name = "persona",
    version,
    about = "Monitor and control the persona of language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum SteerPositions {
    /// The last prompt token and every generated token (the paper's inference steering).
    Generating,
    /// Every token, prompt included.
    All,
    /// Prompt tokens only.
    Prompt,
    /// Generated tokens only.
    Response,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    LlamaCpp,
}

#[derive(Subcommand)]
enum VectorCommand {
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
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Generate a reply to one prompt (optionally steered).
    Generate {
        /// Cache name (see `checkpoints/models/`), .gguf path or HF directory.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// System prompt; without it the model's chat template may add its own default.
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Persona-vector file to steer with.
        #[arg(long, requires_all = ["layer", "coef"])]
        steer: Option<PathBuf>,
        /// Vector row to steer at (row l = output of block l-1; row 0 = embeddings).
        #[arg(long)]
        layer: Option<usize>,
        /// Steering coefficient (negative suppresses the trait).
        #[arg(long, allow_hyphen_values = true)]
        coef: Option<f32>,
        /// Vector variant in the file.
        #[arg(long, default_value = "response_avg")]
        variant: persona_vectors::Variant,
        #[arg(long, value_enum, default_value = "generating")]
        positions: SteerPositions,
        /// cpu, cuda or wgpu (the latter two need the cargo feature of that name).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Write a model (e.g. the embedded GGUF) as an HF directory (f32 safetensors).
    Convert {
        /// Cache name, .gguf path or HF directory.
        model: String,
        /// Output directory.
        out: PathBuf,
    },
    /// Fine-tune with a recipe (LoRA, optionally with preventative steering).
    Train {
        /// Recipe TOML (see recipes/).
        recipe: PathBuf,
        /// Continue the run from its last checkpoint.
        #[arg(long)]
        resume: bool,
    },
    /// Extract a persona vector from a trait file (datasets/traits/<trait>.toml).
    Extract {
        /// Trait definition: this project's TOML layout or the common JSON one.
        #[arg(long = "trait")]
        trait_file: PathBuf,
        /// Where the contrast comes from: `authored` (the trait file's written
        /// responses, teacher-forced) or `generated` (the model's own answers
        /// under trait / anti-trait system prompts, judged and filtered).
        #[arg(long, default_value = "authored")]
        source: String,
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
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Output file (default: checkpoints/vectors/<model>/<trait>.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Inspect persona-vector files.
    #[command(subcommand)]
    Vector(VectorCommand),
    /// Write a persona vector in another tool's format.
    Export {
        /// Persona-vector file.
        #[arg(long)]
        vector: PathBuf,
        /// Target format (llama-cpp: a control-vector GGUF for `llama-cli --control-vector-scaled`).
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Rows to export (row l = output of block l-1; llama.cpp numbers it l-1).
        #[arg(long = "layer", required = true, num_args = 1..)]
        layers: Vec<usize>,
        /// Multiplier baked into the file (llama-cli can scale it again).
        #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
        coef: f32,
        #[arg(long, default_value = "response_avg")]
        variant: persona_vectors::Variant,
        /// `controlvector.model_hint` (default: the vector's model name).
        #[arg(long)]
        model_hint: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Fold LoRA adapters into the base weights and write an HF directory.
    Merge {
        /// A run folder (uses its `adapter/`) or an adapter folder (PEFT layout).
        adapter: PathBuf,
        /// The base model the adapters were trained on.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: String,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Score training samples by how far they would push the model along a
    /// persona vector (projection difference ΔP); optionally filter them.
    Screen(screen::ScreenArgs),
    /// Project prompts (graded system prompts, k-shot examples, conversation
    /// turns) on a persona vector.
    Monitor(monitor::MonitorArgs),
    /// Evaluate one model, run or post-hoc steered model on a trait:
    /// sampled answers, trait and coherence judgments, shift, capability.
    Eval(eval::EvalArgs),
    /// Write a comparison report (Markdown + self-contained HTML) from saved evaluations.
    Compare(eval::CompareArgs),
    /// Gate on trait scores: evaluate the configured checkpoints and fail
    /// when a score rises beyond the stored baseline.
    Ci(eval::CiArgs),
    /// The offline classifier judge: train per-trait probes.
    #[command(subcommand)]
    Judge(judge::JudgeCommand),
    /// Describe a model: architecture, sizes, dtype, chat template.
    Info {
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
    },
}

fn main() -> ExitCode {
    alloc::keep_freed_memory();
    // Like other Unix tools, stop quietly when a reader closes the pipe
    // (`persona vector info ... | head`) instead of panicking in `println!`.
    // SAFETY: restoring the default action of a signal before any thread
    // starts; no handler is installed.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the sources wrote (a TOML parse error
            // draws the offending line over several).
            let text = format!("{e:#}");
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("error: {}", line.join(" "));
            ExitCode::from(2)
        }
    }
}

/// An output folder must be new or empty, and writable (checked before
/// any work).
fn ensure_empty(out: &std::path::Path) -> Result<()> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} exists and is not empty; choose a new directory",
            out.display()
        );
    }
    persona_model::files::check_writable_dir(out)?;
    Ok(())
}

/// `persona extract --source authored`: teacher-forced authored responses
/// -> vector file (printed norms). Returns the file written.
fn extract_authored(
    trait_file: &std::path::Path,
    model: &str,
    out: Option<PathBuf>,
    batch_size: usize,
    device: &str,
) -> Result<PathBuf> {
    let device = parse_device(device)?;
    let def = persona_vectors::TraitDef::load(trait_file)?;
    let out =
        out.unwrap_or_else(|| persona_model::PersonaHome::from_env().vector(model, &def.name));
    // Fail before the work, not after it.
    persona_model::files::check_writable_file(&out)?;
    let loaded =
        persona_model::load(model, &device).with_context(|| format!("loading model `{model}`"))?;
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
        batch_size,
        |k| bar.set_position(k as u64),
    )?;
    bar.finish_and_clear();
    file.save(&out)?;
    println!(
        "wrote {} ({} authored responses, {:.1} s)",
        out.display(),
        n,
        started.elapsed().as_secs_f64()
    );
    print_norms(&file);
    Ok(out)
}

/// Per-row norms of every variant of a vector file.
fn print_norms(file: &VectorFile) {
    let d = file.meta.d_model;
    let names: Vec<&str> = file.variants.keys().map(|v| v.name()).collect();
    print!("row ");
    for n in &names {
        print!("  |{n}|");
    }
    println!();
    for row in 0..=file.meta.n_layers {
        print!("{row:>3} ");
        for n in &names {
            let v = &file.variants[&n.parse().expect("a variant name")][row * d..(row + 1) * d];
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            print!("  {norm:>w$.3}", w = n.len() + 2);
        }
        println!();
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Judge(cmd) => judge::run(cmd),
        Command::Eval(a) => eval::eval(a),
        Command::Compare(a) => eval::compare(a),
        Command::Ci(a) => eval::ci(a),
        Command::Generate {
            model,
            system,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            steer,
            layer,
            coef,
            variant,
            positions,
            device,
        } => {
            let sampling = Sampling::from_settings(temperature, top_p)?;
            let device = parse_device(&device)?;
            // Validate the vector against the model's shape before moving weights.
            let host = load_host(&model).with_context(|| format!("loading model `{model}`"))?;
            let context = host.config.max_positions;
            if max_new_tokens > context {
                bail!(
                    "--max-new-tokens {max_new_tokens} is more than the model's context of {context} tokens; generation stops at the context anyway, so pass at most {context}"
                );
            }
            let mut steering = Vec::new();
            if let (Some(path), Some(layer), Some(coef)) = (steer, layer, coef) {
                let file = VectorFile::load(&path)?;
                file.check_model(&host.config, &host.identity)?;
                let positions = match positions {
                    SteerPositions::Generating => Positions::Generating,
                    SteerPositions::All => Positions::All,
                    SteerPositions::Prompt => Positions::Prompt,
                    SteerPositions::Response => Positions::Response,
                };
                steering.push(Steering::add(
                    layer,
                    file.row(variant, layer)?,
                    coef,
                    positions,
                    &device,
                )?);
            }
            let loaded = host.to_device(&device)?;
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(Message::system(s));
            }
            messages.push(Message::user(prompt));
            let ids = loaded.codec.prompt_ids(&messages)?;
            let opts = GenerateOptions {
                max_new_tokens,
                sampling,
                seed,
                batch_size: 1,
                steering,
            };
            let out = generate(
                &loaded.model,
                &[ids],
                &loaded.codec.stop_ids,
                loaded.codec.pad_id,
                &opts,
                |_| {},
            )?;
            let reply = loaded.codec.decode_clean(out[0].content_tokens())?;
            println!("{reply}");
            Ok(())
        }
        Command::Train { recipe, resume } => {
            // The experiment's settings are checked before any training.
            let experiment = eval::experiment_config(&recipe)?;
            let finished = persona_train::Recipe::load(&recipe)
                .map(|r| persona_train::RunDir::named(&r.run.name).is_finished())?;
            if experiment.is_some() && finished && !resume {
                println!("run already finished; going on to its experiment");
            } else {
                let mut progress = progress::TrainProgress::new();
                let out = persona_train::train(&recipe, resume, &mut |e| progress.on_event(e))?;
                drop(progress);
                println!(
                    "finished {} steps (last loss {:.4}); run in {}",
                    out.steps,
                    out.last_loss,
                    out.run_dir.display()
                );
            }
            if let Some(cfg) = experiment {
                eval::run_experiment(&recipe, &cfg)?;
            }
            Ok(())
        }
        Command::Extract {
            trait_file,
            source,
            generated_settings,
            no_select,
            select_settings,
            judge,
            samples,
            model,
            out,
            batch_size,
            device,
        } => {
            let overrides = eval::Overrides {
                judge: judge.as_deref().map(eval::judge_config_path),
                samples,
            };
            let out = match source.as_str() {
                "generated" => eval::extract_generated(
                    &trait_file,
                    &generated_settings,
                    &overrides,
                    &model,
                    out,
                    &device,
                )?,
                "authored" => {
                    if no_select && (overrides.judge.is_some() || overrides.samples.is_some()) {
                        bail!(
                            "--judge and --samples apply to the generated source and to the \
                             selection that --no-select skips; the authored source neither \
                             samples nor judges"
                        );
                    }
                    extract_authored(&trait_file, &model, out, batch_size, &device)?
                }
                other => bail!("--source {other}: use `authored` or `generated`"),
            };
            if !no_select {
                eval::select(
                    &out,
                    &trait_file,
                    &select_settings,
                    &overrides,
                    &model,
                    &device,
                )?;
            }
            Ok(())
        }
        Command::Merge {
            adapter,
            model,
            out,
        } => {
            ensure_empty(&out)?;
            let dir = if adapter.join("adapter").is_dir() {
                adapter.join("adapter")
            } else {
                adapter
            };
            let mut host = load_host(&model).with_context(|| format!("loading model `{model}`"))?;
            let lora =
                persona_train::checkpoint::read_adapter(&dir, &host.config, &Device::flex())?;
            lora.merge_into(&mut host.weights)?;
            host.write_hf_dir(&out)?;
            println!(
                "merged {} into {}; wrote {}",
                dir.display(),
                model,
                out.display()
            );
            Ok(())
        }
        Command::Convert { model, out } => {
            ensure_empty(&out)?;
            let host = load_host(&model).with_context(|| format!("loading model `{model}`"))?;
            host.write_hf_dir(&out)?;
            println!(
                "wrote {} ({} tensors, f32)",
                out.display(),
                host.weights.len()
            );
            Ok(())
        }
        Command::Vector(VectorCommand::Select {
            vector,
            trait_file,
            settings,
            model,
            device,
        }) => eval::select(
            &vector,
            &trait_file,
            &settings,
            &eval::Overrides::default(),
            &model,
            &device,
        ),
        Command::Vector(VectorCommand::Info { file }) => {
            let f = VectorFile::load(&file)?;
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
                .map(serde_json::from_value::<persona_eval::select::Selection>)
                .transpose()?;
            println!("extraction:     {}", serde_json::to_string_pretty(&extra)?);
            print_norms(&f);
            if let Some(sel) = selection {
                eval::print_selection(&sel);
            }
            Ok(())
        }
        Command::Export {
            vector,
            format: ExportFormat::LlamaCpp,
            layers,
            coef,
            variant,
            model_hint,
            out,
        } => {
            let f = VectorFile::load(&vector)?;
            let hint = model_hint.unwrap_or_else(|| f.meta.model_name.clone());
            let bytes = persona_vectors::export::llama_cpp_control_vector(
                &f, variant, &layers, coef, &hint,
            )?;
            persona_model::write_atomic(&out, &bytes)?;
            let dirs: Vec<String> = layers
                .iter()
                .filter_map(|r| persona_vectors::export::llama_cpp_direction(*r))
                .map(|d| d.to_string())
                .collect();
            println!(
                "wrote {} (rows {:?} -> llama.cpp direction.{{{}}}, x {coef})",
                out.display(),
                layers,
                dirs.join(",")
            );
            println!(
                "steer with: llama-cli -m MODEL.gguf --control-vector-scaled {}:1.0 --control-vector-layer-range {} {}",
                out.display(),
                dirs.first().map(String::as_str).unwrap_or("1"),
                dirs.last().map(String::as_str).unwrap_or("1"),
            );
            Ok(())
        }
        Command::Screen(args) => screen::run(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Info { model } => {
            let host = load_host(&model).with_context(|| format!("loading model `{model}`"))?;
            let c = &host.config;
            let params: usize = host.weights.values().map(|t| t.data.len()).sum();
            println!("model:        {}", host.identity.name);
            println!("path:         {}", host.identity.path.display());
            println!("sha256:       {}", host.identity.sha256);
            println!("architecture: {}", c.architecture.hf_name());
            println!("stored as:    {}", host.source_format);
            println!("loaded as:    f32");
            println!("parameters:   {params}");
            println!(
                "blocks {} | d_model {} | heads {} (kv {}) | head_dim {} | ffn {} | vocab {} | context {}",
                c.n_layers,
                c.d_model,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.d_ff,
                c.vocab_size,
                c.max_positions
            );
            println!(
                "rope theta {} | rms eps {} | tied embeddings {} | qkv bias {}",
                c.rope_theta, c.rms_eps, c.tie_embeddings, c.qkv_bias
            );
            println!(
                "residual rows: 0..={} (row 0 = embedding output, row l = output of block l-1)",
                c.n_layers
            );
            println!(
                "bos {:?} | eos {:?} | stop ids {:?}",
                host.codec.bos_token, host.codec.eos_token, host.codec.stop_ids
            );
            println!("chat template:\n{}", host.codec.chat_template);
            Ok(())
        }
    }
}
