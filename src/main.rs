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

mod monitor;
mod screen;

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
        variant: String,
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
    /// Extract a persona vector from authored contrast pairs (JSONL of {question, pos, neg}).
    Extract {
        #[arg(long)]
        pairs: PathBuf,
        /// Trait name, stored in the vector's metadata.
        #[arg(long = "trait")]
        trait_name: String,
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
    /// Describe a model: architecture, sizes, dtype, chat template.
    Info {
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

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
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
            if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
                bail!("--top-p must be in (0, 1], got {top_p}");
            }
            if temperature < 0.0 {
                bail!("--temperature must be >= 0, got {temperature}");
            }
            let device = parse_device(&device)?;
            // Validate the vector against the model's shape before moving weights.
            let host = load_host(&model).with_context(|| format!("loading model `{model}`"))?;
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
                    file.row(&variant, layer)?,
                    coef,
                    positions,
                    &device,
                ));
            }
            let loaded = host.to_device(&device)?;
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(Message::system(s));
            }
            messages.push(Message::user(prompt));
            let text = loaded.codec.render(&messages, true)?;
            let ids = loaded.codec.encode(&text)?;
            let sampling = if temperature == 0.0 {
                Sampling::Greedy
            } else {
                Sampling::Temperature { temperature, top_p }
            };
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
            let out = persona_train::train(&recipe, resume, true)?;
            println!(
                "finished {} steps (last loss {:.4}); run in {}",
                out.steps,
                out.last_loss,
                out.run_dir.display()
            );
            Ok(())
        }
        Command::Extract {
            pairs,
            trait_name,
            model,
            out,
            batch_size,
            device,
        } => {
            let device = parse_device(&device)?;
            let pairs = persona_vectors::extract::read_pairs(&pairs)?;
            let loaded = persona_model::load(&model, &device)
                .with_context(|| format!("loading model `{model}`"))?;
            let out = out.unwrap_or_else(|| {
                let name = std::path::Path::new(&model)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| model.clone());
                persona_model::persona_home()
                    .join("vectors")
                    .join(name)
                    .join(format!("{trait_name}.safetensors"))
            });
            let file = persona_vectors::extract::extract_authored(
                &loaded.model,
                &loaded.codec,
                &loaded.identity,
                &trait_name,
                &pairs,
                batch_size,
                |_| {},
            )?;
            file.save(&out)?;
            let v = &file.variants["response_avg"];
            let d = file.meta.d_model;
            println!("wrote {} ({} pairs)", out.display(), pairs.len());
            println!("row  |v_row|");
            for row in 0..=file.meta.n_layers {
                let n: f32 = v[row * d..(row + 1) * d]
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>()
                    .sqrt();
                println!("{row:>3}  {n:.3}");
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
