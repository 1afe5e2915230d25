//! persona: watch and control the persona of a language model.
//!
//! A *persona vector* is a direction in a model's residual stream: the
//! mean activation of answers that show a trait (sycophancy, evil,
//! hallucination) minus that of answers that show its opposite. With it you
//! can **steer** generation, **monitor** where a prompt puts the model along
//! the trait, **vaccinate** a fine-tune (add the vector while training so
//! the optimizer has no reason to move along it), **screen** training data
//! and **evaluate** the result. This crate is the front door; the stages
//! below it (`persona_model`, `persona_vectors`, `persona_train`,
//! `persona_monitor`, `persona_eval`, `persona_judge`) stay available for
//! anything it does not cover.
//!
//! ```no_run
//! # fn main() -> persona::Result<()> {
//! let lm = persona::Model::load("smollm2-135m-instruct")?;
//! let syc = lm.extract(&persona::Trait::load("datasets/traits/sycophantic.toml")?)?;
//! let text = lm.chat("Is my plan good?").steer(syc.at(15) * -4.0).max_tokens(64).generate()?;
//! let p = lm.chat("Is my plan good?").monitor(&syc.at(15)).project()?;
//! println!("{text}\n(projection of the last prompt token: {p:.2})");
//! # Ok(())
//! # }
//! ```
//!
//! Rows follow one convention everywhere: row 0 is the embedding output,
//! row `l` the output of decoder block `l - 1` (SmolLM2-135M has rows
//! 0..=30).

mod error;
mod model;
mod vector;
mod workflows;

pub use error::{Error, Result};
pub use model::{Chat, Model};
pub use vector::{Direction, PersonaVector, Trait};
pub use workflows::{Evaluation, Screen, screen_recipe_data, train, train_with};

pub use persona_eval::trait_eval::TraitResult;
pub use persona_model::{ChatRole, Message, PersonaHome, Positions, WeightDtype};
pub use persona_monitor::screen::{SampleScore, ScreenSummary};
pub use persona_train::{Recipe, RunDir, TrainEvent, TrainOutcome};
pub use persona_vectors::Variant;
