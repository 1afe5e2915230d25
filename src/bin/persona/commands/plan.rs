//! `persona plan`: the memory a training step and a generation call will
//! take, before anything is loaded.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use persona_model::WeightDtype;
use persona_model::lora::Target;
use persona_model::plan::{self, GenerateShape, Item, TrainShape};

#[derive(clap::Args)]
pub struct Args {
    /// A training recipe: its model, device, micro-batch, `max_seq_len`,
    /// LoRA rank and targets.
    #[arg(long, conflicts_with_all = ["model", "batch", "seq", "rank", "device", "dtype"])]
    recipe: Option<PathBuf>,
    /// A model spec (cache name, .gguf, HF directory or
    /// `synthetic:PATH/config.json`), with --batch, --seq and --rank.
    #[arg(long, requires_all = ["batch", "seq", "rank"])]
    model: Option<String>,
    /// Sequences per micro-batch (and decoded together).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence (training) and the KV cache's length (generation).
    #[arg(long)]
    seq: Option<usize>,
    /// LoRA rank, on all seven projections.
    #[arg(long)]
    rank: Option<usize>,
    /// cpu, cuda or wgpu.
    #[arg(long)]
    device: Option<String>,
    /// The type of the frozen weights: f32 (default), bf16 or f16.
    #[arg(long)]
    dtype: Option<WeightDtype>,
}

/// Largest batch a plan accepts (far beyond any machine's memory).
const MAX_ROWS: usize = 1 << 20;

/// What to plan for: model, device, batch, tokens, rank, targets.
struct Setup {
    model: String,
    dtype: WeightDtype,
    device: String,
    rows: usize,
    tokens: usize,
    rank: usize,
    targets: Vec<Target>,
}

fn setup(a: Args) -> Result<Setup> {
    if let Some(path) = a.recipe {
        let r = persona_train::Recipe::load(&path)?;
        return Ok(Setup {
            model: r.model.name,
            dtype: r.model.dtype,
            device: r.run.device,
            rows: r.optim.batch_size,
            tokens: r.data.max_seq_len,
            rank: r.lora.rank,
            targets: r.lora.targets,
        });
    }
    let (Some(model), Some(rows), Some(tokens), Some(rank)) = (a.model, a.batch, a.seq, a.rank)
    else {
        bail!("give --recipe R, or --model M with --batch B --seq S --rank R");
    };
    Ok(Setup {
        model,
        dtype: a.dtype.unwrap_or_default(),
        device: a.device.unwrap_or_else(|| "cpu".into()),
        rows,
        tokens,
        rank,
        targets: Target::ALL.to_vec(),
    })
}

pub fn exec(a: Args) -> Result<()> {
    let s = setup(a)?;
    if s.rows == 0 || s.tokens < 2 || s.rank == 0 {
        bail!("--batch and --rank must be at least 1 and --seq at least 2");
    }
    // The name only: planning needs no working GPU.
    persona_model::device::check_device_name(&s.device)?;
    let (cfg, identity) =
        persona_model::inspect(&s.model).with_context(|| format!("reading model `{}`", s.model))?;
    if s.tokens > cfg.max_positions {
        bail!(
            "--seq {} is longer than the model's context of {} tokens",
            s.tokens,
            cfg.max_positions
        );
    }
    if s.rank > cfg.d_model || s.rows > MAX_ROWS {
        bail!(
            "--rank must be at most d_model ({}) and --batch at most {MAX_ROWS}",
            cfg.d_model
        );
    }
    let cpu = s.device == "cpu";
    let packs = cpu && persona_model::CpuKernels::selected()? != persona_model::CpuKernels::Generic;
    let packed = match (packs, s.dtype.is_f32()) {
        (false, _) => 0.0,
        (true, true) => plan::packed_bytes_per_weight(&identity.path)?,
        // Rounded to 16 bits, a GGUF's values leave its block grids: the
        // packed copy is f32.
        (true, false) => 4.0,
    };
    let per_weight = s.dtype.bytes() as f64;
    let weights = plan::weight_bytes(&cfg, per_weight);
    println!(
        "model {} ({:.2} B weights as {}), device {}",
        s.model,
        weights as f64 / 1e9 / per_weight,
        s.dtype,
        s.device
    );
    let train = TrainShape {
        rows: s.rows,
        tokens: s.tokens,
        scored: s.tokens / 2,
        rank: s.rank,
    };
    let targets: Vec<&str> = s.targets.iter().map(|t| t.short_name()).collect();
    println!(
        "\ntraining step: {} x {} tokens (half of them scored), LoRA r{} on {}",
        s.rows,
        s.tokens,
        s.rank,
        targets.join(", ")
    );
    let mut items = plan::training(&cfg, train, &s.targets, per_weight);
    if cpu && !s.dtype.is_f32() {
        items.push(Item {
            what: "f32 weight copies (CPU)",
            bytes: plan::widened_copy_bytes(&cfg),
        });
    }
    print_items(&items, cpu.then_some(2 * weights));
    let generate = GenerateShape {
        rows: s.rows,
        context: s.tokens,
        packed_bytes_per_weight: packed,
    };
    println!(
        "\ngeneration: {} sequences, {} positions each",
        s.rows, s.tokens
    );
    print_items(
        &plan::generation(&cfg, generate, per_weight),
        cpu.then_some(2 * weights),
    );
    Ok(())
}

/// The lines, their total, and whether the larger of the total and the
/// loading peak (`loading`: the host copy next to the weights, on the CPU)
/// fits the memory available now.
fn print_items(items: &[Item], loading: Option<u64>) {
    let gb = |b: u64| format!("{:>8.2} GB", b as f64 / 1e9);
    for i in items {
        println!("  {:<28}{}", i.what, gb(i.bytes));
    }
    let total = plan::total(items);
    println!("  {:<28}{}", "total", gb(total));
    let Some(loading) = loading else {
        println!(
            "  (GPU memory is not reported by the device API; compare with the card's memory)"
        );
        return;
    };
    println!("  {:<28}{}", "peak while loading", gb(loading));
    let need = total.max(loading);
    match plan::available_host_bytes() {
        Some(have) if need <= have => {
            println!(
                "  fits: {} needed, {} available",
                gb(need).trim(),
                gb(have).trim()
            )
        }
        Some(have) => println!(
            "  does NOT fit: {} needed, {} available",
            gb(need).trim(),
            gb(have).trim()
        ),
        None => println!("  (available memory unknown: /proc/meminfo unreadable)"),
    }
}
