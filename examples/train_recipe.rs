//! Fine-tune from a recipe, printing the loss and the projection shift as
//! training goes.
//!
//! `cargo run --release --example train_recipe [RECIPE]` (default:
//! `recipes/smoke.toml`, 4 steps, renamed `example-smoke` so it does not
//! collide with the CLI's smoke run).

use persona::{Recipe, TrainEvent};

fn main() -> persona::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "recipes/smoke.toml".into());
    let recipe = Recipe::load_with(path.as_ref(), &["run.name=\"example-smoke\"".into()])?;
    let run = persona::RunDir::named(&recipe.run.name);
    if run.is_finished() {
        println!("{} is already trained", run.root().display());
        return Ok(());
    }
    let out = persona::train_with(&recipe, run.has_checkpoint(), |e| {
        if let TrainEvent::Step(m) = e {
            let shift = m
                .shift
                .as_ref()
                .and_then(|s| s.values().next())
                .and_then(|rows| rows.values().next())
                .map_or(String::new(), |v| format!(", shift {v:+.3}"));
            println!("step {:>3}: loss {:.4}{shift}", m.step, m.loss);
        }
    })?;
    println!(
        "{} steps; adapters in {}",
        out.steps,
        out.run_dir.join("adapter").display()
    );
    Ok(())
}
