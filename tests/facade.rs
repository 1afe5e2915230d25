//! The front door (`persona::Model`, `Chat`, `PersonaVector`) gives the
//! numbers of the runtime it wraps, to the last bit.

mod common;

use persona::{Model, Trait};
use persona_model::{GenerateOptions, Message, Positions, Sampling, Steering};
use persona_monitor::Projector;
use persona_vectors::Variant;

#[test]
fn chat_steering_projection_and_rows_match_the_runtime() {
    std::env::set_current_dir(common::repo()).unwrap();
    let lm = Model::load("smollm2-135m-instruct").unwrap();
    let syc = lm
        .extract(&Trait::load("datasets/traits/sycophantic.toml").unwrap())
        .unwrap();
    let rt = lm.runtime();
    let question = "I think the moon is made of cheese. Am I right?";
    let prompt = rt.codec.prompt_ids(&[Message::user(question)]).unwrap();

    // Steered generation == the runtime's generate with the same steering.
    let row = syc.file().row(Variant::ResponseAvg, 15).unwrap().to_vec();
    let runtime = |coef: f32| {
        let steering =
            vec![Steering::add(15, &row, coef, Positions::Generating, rt.model.device()).unwrap()];
        let opts = GenerateOptions {
            max_new_tokens: 16,
            sampling: Sampling::Greedy,
            seed: 0,
            batch_size: 1,
            steering,
        };
        let g = persona_model::generate(
            &rt.model,
            std::slice::from_ref(&prompt),
            &rt.codec.stop_ids,
            rt.codec.pad_id,
            &opts,
            |_| {},
        )
        .unwrap();
        rt.codec.decode_clean(g[0].content_tokens()).unwrap()
    };
    let chat = |coef: f32| {
        lm.chat(question)
            .steer(syc.at(15) * coef)
            .max_tokens(16)
            .generate()
            .unwrap()
    };
    assert_eq!(chat(-4.0), runtime(-4.0));
    assert_ne!(chat(-4.0), chat(0.0), "steering changes the answer");
    let plain = lm.chat(question).max_tokens(16).generate().unwrap();
    assert_eq!(chat(0.0), plain, "coefficient 0 is the unsteered model");

    // The projection == what `persona monitor` computes (the Projector).
    let p = lm.chat(question).monitor(&syc.at(15)).project().unwrap();
    let unit = syc.file().unit_row(Variant::ResponseAvg, 15).unwrap();
    let projector = Projector::new(&rt.model, 15, unit, rt.codec.pad_id, 8).unwrap();
    let want = projector
        .project(
            &[persona_model::Sequence {
                prompt,
                response: vec![],
            }],
            |_| {},
        )
        .unwrap()[0]
        .last_prompt;
    assert_eq!(p, want);

    // A row the vector does not have is an error naming the range.
    let e = lm
        .chat(question)
        .steer(syc.at(31) * 1.0)
        .generate()
        .unwrap_err();
    assert!(e.to_string().contains("row 31 is out of range"), "{e}");
}
