//! Rank the samples of a fine-tuning dataset by how far their responses
//! would push the model along the sycophancy direction (the cheap score:
//! response projection minus last-prompt-token projection, no generation).
//!
//! `cargo run --release --example screen_dataset [DATASET]` (default: the
//! 16-example smoke dataset).

use persona::{Model, Screen, Trait};

fn main() -> persona::Result<()> {
    let dataset = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "datasets/finetune/smoke/train.jsonl".into());
    let lm = Model::load("smollm2-135m-instruct")?;
    let syc = lm.vector_for(&Trait::load("datasets/traits/sycophantic.toml")?)?;
    let out = persona::PersonaHome::from_env().screens().join("example");
    let (summary, scores) = Screen::new(&syc, 15).cheap().run(&lm, &dataset, &out)?;
    if let Some(c) = summary.cheap {
        println!(
            "{} samples, mean cheap score {:+.3} [{:+.3}, {:+.3}]",
            summary.samples, c.mean, c.lo, c.hi
        );
    }
    for s in scores.iter().take(3) {
        println!(
            "  line {:>3}  {:+.3}  {}",
            s.line,
            s.cheap.unwrap_or(f64::NAN),
            s.prompt
        );
    }
    println!("scores in {}", out.display());
    Ok(())
}
