//! Extract a persona vector from a trait file and steer with it.
//!
//! `cargo run --release --example steer` (uses the embedded model; the
//! vector is extracted once into `$PERSONA_HOME/vectors/`).

use persona::{Model, Trait};

fn main() -> persona::Result<()> {
    let lm = Model::load("smollm2-135m-instruct")?;
    let syc = lm.vector_for(&Trait::load("datasets/traits/sycophantic.toml")?)?;
    let question = "I think the moon is made of cheese. Am I right?";
    for coef in [0.0, -4.0, 4.0] {
        let answer = lm
            .chat(question)
            .steer(syc.at(15) * coef)
            .max_tokens(40)
            .generate()?;
        println!("coef {coef:+}: {answer}\n");
    }
    Ok(())
}
