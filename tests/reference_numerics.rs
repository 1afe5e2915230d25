//! The embedded model against PyTorch/transformers reference numbers
//! (`tests/data/smollm2-135m-instruct.reference.json`, computed with PyTorch
//! and transformers; see its `notes`).

mod common;

use burn::tensor::Tensor;
use common::{floats, frobenius, reference, reference_ids, smollm};
use persona_model::{
    CaptureRequest, ForwardArgs, GenerateOptions, Logits, Message, Sampling, generate, host_vec,
};

fn reference_messages() -> Vec<Message> {
    vec![
        Message::system("You are a helpful assistant."),
        Message::user("What is the capital of France? Answer in one word."),
    ]
}

#[test]
fn chat_template_renders_the_reference_prompt() {
    let m = smollm();
    let text = m.codec.render(&reference_messages(), true).unwrap();
    assert_eq!(text, reference()["prompt_text"].as_str().unwrap());
}

#[test]
fn chat_template_adds_the_default_system_prompt() {
    let m = smollm();
    let text = m.codec.render(&[Message::user("Hi")], true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn reference_prompt_tokenizes_to_reference_ids() {
    let m = smollm();
    let ids = m
        .codec
        .encode(reference()["prompt_text"].as_str().unwrap())
        .unwrap();
    assert_eq!(ids, reference_ids());
    assert_eq!(
        m.codec.decode(&ids).unwrap(),
        reference()["prompt_text"].as_str().unwrap()
    );
    // Digits are split one by one (the `smollm` pre-tokenizer).
    let digits = m.codec.encode("2025").unwrap();
    assert_eq!(digits.len(), 4);
}

#[test]
fn logits_hidden_norms_and_row_convention_match_reference() {
    let m = smollm();
    let (logits, hidden) = common::reference_pass(m);
    let worst_logit = common::assert_reference_logits(&logits);
    eprintln!("worst absolute logit error (first5 + top5): {worst_logit:e}");
    let worst = common::assert_reference_norms(&hidden);
    let n_layers = m.model.config.n_layers;
    eprintln!("worst relative hidden-norm error rows 0..{n_layers}: {worst:e}");

    // HF's last hidden state is after the final norm; our row n_layers is raw.
    let norms = floats(&reference()["f32"]["all_hidden_state_frobenius_norms"]);
    let d = m.model.config.d_model;
    let last = &hidden[n_layers];
    let last_row = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(last.clone(), [last.len() / d, d]),
        m.model.device(),
    );
    let normed = host_vec(m.model.final_norm(last_row)).unwrap();
    let rel = (frobenius(&normed) - norms[n_layers]).abs() / norms[n_layers];
    assert!(rel < 1e-4, "final-normed row {n_layers}: rel {rel:e}");
    let raw_rel = (frobenius(last) - norms[n_layers]).abs() / norms[n_layers];
    assert!(
        raw_rel > 1e-2,
        "our row {n_layers} must be the raw block output, not the normed one"
    );

    // Row 10 and 20, last position, first five values.
    for row in [0usize, 10, 20] {
        let want =
            floats(&reference()["f32"][format!("hidden_states[{row}]")]["last_position_first5"]);
        let last = &hidden[row][hidden[row].len() - d..];
        for (i, w) in want.iter().enumerate() {
            let tol = 1e-4 * w.abs().max(1.0) * 10.0;
            assert!(
                (last[i] as f64 - w).abs() < tol,
                "row {row} dim {i}: {} vs {w}",
                last[i]
            );
        }
    }
}

fn greedy(prompts: &[Vec<u32>], batch_size: usize) -> Vec<Vec<u32>> {
    let m = smollm();
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Greedy,
        seed: 0,
        batch_size,
        steering: vec![],
    };
    generate(
        &m.model,
        prompts,
        &m.codec.stop_ids,
        m.codec.pad_id,
        &opts,
        |_| {},
    )
    .unwrap()
    .into_iter()
    .map(|g| g.tokens)
    .collect()
}

const PARIS: [u32; 8] = [504, 3575, 282, 4649, 314, 7042, 30, 2];

#[test]
fn greedy_continuation_with_kv_cache_batch_one() {
    let out = greedy(&[reference_ids()], 1);
    assert_eq!(out[0], PARIS);
    let m = smollm();
    assert_eq!(
        m.codec.decode(&out[0]).unwrap(),
        "The capital of France is Paris.<|im_end|>"
    );
    // Decoding packed every weight, and all of SmolLM2's dequantised GGUF
    // weights are exact Q4_1 / Q8_0 grids (on CPUs with AVX-512F; none are
    // packed elsewhere).
    let packed = m.model.packed_weights();
    if !packed.is_empty() {
        let formats: Vec<(&str, usize)> = packed.iter().map(|(f, (n, _))| (*f, *n)).collect();
        assert_eq!(formats, [("Q4_1", 4 * 30), ("Q8_0", 1)]);
    }
}

#[test]
fn greedy_continuation_without_cache() {
    let m = smollm();
    let mut ids = reference_ids();
    let mut new = Vec::new();
    for _ in 0..PARIS.len() {
        let batch = common::prompt_batch(ids.clone(), m.codec.pad_id);
        let args = ForwardArgs {
            cache: None,
            steering: &[],
            capture: &CaptureRequest::none(),
            logits: Logits::Last,
            lora: None,
            lora_dropout: None,
        };
        let l = m
            .model
            .forward(&batch, args)
            .unwrap()
            .logits
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let next = l
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        new.push(next);
        ids.push(next);
        if m.codec.stop_ids.contains(&next) {
            break;
        }
    }
    assert_eq!(new, PARIS);
}

#[test]
fn greedy_continuation_inside_a_padded_batch_of_four() {
    let m = smollm();
    let others = [
        "Hi!",
        "Write a haiku about the sea and the wind over the water at night.",
        "2+2=?",
    ];
    let mut prompts = vec![reference_ids()];
    for o in others {
        let text = m.codec.render(&[Message::user(o)], true).unwrap();
        prompts.push(m.codec.encode(&text).unwrap());
    }
    // Lengths differ, so the reference prompt is padded in the batch.
    assert!(prompts.iter().any(|p| p.len() > prompts[0].len()));
    let out = greedy(&prompts, 4);
    assert_eq!(out[0], PARIS);
    // The others match their own batch-1 runs.
    let alone = greedy(&prompts[1..], 1);
    assert_eq!(&out[1..], &alone[..]);
}

#[test]
fn sampling_is_reproducible_from_the_seed() {
    let m = smollm();
    let text = m
        .codec
        .render(&[Message::user("Tell me a short story about a cat.")], true)
        .unwrap();
    let ids = m.codec.encode(&text).unwrap();
    let run = |seed: u64, batch_size: usize, prompts: Vec<Vec<u32>>| {
        let opts = GenerateOptions {
            max_new_tokens: 16,
            sampling: Sampling::Temperature {
                temperature: 1.0,
                top_p: 1.0,
            },
            seed,
            batch_size,
            steering: vec![],
        };
        generate(
            &m.model,
            &prompts,
            &m.codec.stop_ids,
            m.codec.pad_id,
            &opts,
            |_| {},
        )
        .unwrap()
    };
    let a = run(7, 1, vec![ids.clone()]);
    let b = run(7, 1, vec![ids.clone()]);
    assert_eq!(a, b);
    let c = run(8, 1, vec![ids.clone()]);
    assert_ne!(
        a[0].tokens, c[0].tokens,
        "different seeds gave the same 16 sampled tokens"
    );
}
