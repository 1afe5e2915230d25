//! Invariants of the forward pass on the tiny random model: caching,
//! padding, steering, capture and the row convention.

use burn::tensor::{Device, Tensor};

use crate::cache::KvCache;
use crate::model::{ForwardArgs, Logits, Model};
use crate::sites::{
    Batch, CaptureRequest, PadSide, Positions, Reduction, Role, Sequence, Steering,
};
use crate::testing::{on_threads, random_weights, test_device, tiny_config};

fn model() -> Model {
    let cfg = tiny_config();
    Model::from_weights(cfg.clone(), &random_weights(&cfg, 1), &test_device()).unwrap()
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn host2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn seq(prompt: &[u32], response: &[u32]) -> Sequence {
    Sequence {
        prompt: prompt.to_vec(),
        response: response.to_vec(),
    }
}

fn logits_all(m: &Model, b: &Batch) -> Vec<f32> {
    host(m.forward(b, ForwardArgs::plain()).unwrap().logits.unwrap())
}

fn capture(
    m: &Model,
    b: &Batch,
    steering: &[Steering],
    rows: &[usize],
    r: Reduction,
) -> Vec<Vec<f32>> {
    let req = CaptureRequest::new(rows.iter().copied(), &[r]);
    let out = m
        .forward(
            b,
            ForwardArgs {
                cache: None,
                steering,
                capture: &req,
                logits: Logits::None,
                lora: None,
                lora_dropout: None,
            },
        )
        .unwrap();
    rows.iter()
        .map(|row| match r {
            Reduction::Full => host(out.full[row].clone()),
            _ => host2(out.captured[&(*row, r)].clone()),
        })
        .collect()
}

const VOCAB: u32 = 97;

#[test]
fn kv_cache_decode_matches_full_forward() {
    let m = model();
    let tokens: Vec<u32> = (0..9).map(|i| (i * 7 + 3) % VOCAB).collect();
    let full = Batch::new(&[seq(&tokens, &[])], PadSide::Left, 0).unwrap();
    let reference = logits_all(&m, &full);
    let vocab = VOCAB as usize;

    let mut cache = KvCache::new();
    let prefix = Batch::new(&[seq(&tokens[..5], &[])], PadSide::Left, 0).unwrap();
    let first = host(
        m.forward(&prefix, ForwardArgs::decode(&mut cache, &[]))
            .unwrap()
            .logits
            .unwrap(),
    );
    assert!(max_diff(&first, &reference[4 * vocab..5 * vocab]) < 1e-5);
    for (i, &t) in tokens[5..].iter().enumerate() {
        let step = Batch {
            ids: vec![t],
            roles: vec![Role::Response],
            n_rows: 1,
            seq_len: 1,
        };
        let l = host(
            m.forward(&step, ForwardArgs::decode(&mut cache, &[]))
                .unwrap()
                .logits
                .unwrap(),
        );
        let pos = 5 + i;
        assert!(
            max_diff(&l, &reference[pos * vocab..(pos + 1) * vocab]) < 1e-5,
            "step {pos}"
        );
    }
    assert_eq!(cache.past_len(), 9);
}

#[test]
fn left_and_right_padding_do_not_change_real_tokens() {
    let m = model();
    let short = [5u32, 9, 11];
    let long = [1u32, 2, 3, 4, 5, 6, 7];
    let alone = logits_all(
        &m,
        &Batch::new(&[seq(&short, &[])], PadSide::Left, 0).unwrap(),
    );
    let vocab = VOCAB as usize;
    for side in [PadSide::Left, PadSide::Right] {
        let b = Batch::new(&[seq(&long, &[]), seq(&short, &[])], side, 0).unwrap();
        let l = logits_all(&m, &b);
        let row1 = &l[7 * vocab..];
        let offset = if side == PadSide::Left { 4 } else { 0 };
        let got = &row1[offset * vocab..(offset + 3) * vocab];
        assert!(max_diff(got, &alone) < 1e-5, "{side:?}");
        assert!(
            l.iter().all(|x| x.is_finite()),
            "{side:?}: padding produced non-finite logits"
        );
    }
}

#[test]
fn steering_with_zero_coefficient_is_bit_identical() {
    let m = model();
    let b = Batch::new(
        &[seq(&[3, 4, 5], &[6, 7]), seq(&[8], &[9])],
        PadSide::Right,
        0,
    )
    .unwrap();
    let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    let dev = test_device();
    let steer = [Steering::add(2, &v, 0.0, Positions::All, &dev).unwrap()];
    let plain = logits_all(&m, &b);
    let req = CaptureRequest::none();
    let steered = host(
        m.forward(
            &b,
            ForwardArgs {
                cache: None,
                steering: &steer,
                capture: &req,
                logits: Logits::All,
                lora: None,
                lora_dropout: None,
            },
        )
        .unwrap()
        .logits
        .unwrap(),
    );
    assert_eq!(plain, steered);
}

#[test]
fn steering_adds_coef_times_vector_at_its_row_only() {
    let m = model();
    let b = Batch::new(&[seq(&[3, 4, 5], &[6, 7])], PadSide::Right, 0).unwrap();
    let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).cos()).collect();
    let dev = test_device();
    let coef = 2.5;
    let steer = [Steering::add(2, &v, coef, Positions::Response, &dev).unwrap()];
    let base = capture(&m, &b, &[], &[1, 2, 3], Reduction::Full);
    let st = capture(&m, &b, &steer, &[1, 2, 3], Reduction::Full);
    assert_eq!(base[0], st[0], "row 1 is before the steering");
    for s in 0..5 {
        for j in 0..32 {
            let d = st[1][s * 32 + j] - base[1][s * 32 + j];
            let want = if s >= 3 { coef * v[j] } else { 0.0 };
            assert!((d - want).abs() < 1e-5, "pos {s} dim {j}: {d} vs {want}");
        }
    }
    assert!(
        max_diff(&base[2], &st[2]) > 1e-3,
        "row 3 sees the steered stream"
    );
}

#[test]
fn padding_is_never_steered() {
    let m = model();
    let dev = test_device();
    let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.11).sin()).collect();
    let steer = [Steering::add(1, &v, 4.0, Positions::All, &dev).unwrap()];
    let alone = Batch::new(&[seq(&[3, 4], &[5])], PadSide::Right, 0).unwrap();
    let padded = Batch::new(
        &[seq(&[3, 4], &[5]), seq(&[1, 2, 3, 4, 5, 6], &[])],
        PadSide::Right,
        0,
    )
    .unwrap();
    let a = capture(&m, &alone, &steer, &[1], Reduction::Full);
    let p = capture(&m, &padded, &steer, &[1], Reduction::Full);
    assert!(max_diff(&a[0], &p[0][..3 * 32]) < 1e-5);
    // Pad positions of row 0 keep the unsteered embedding of the pad token.
    let base = capture(&m, &padded, &[], &[1], Reduction::Full);
    assert_eq!(&p[0][3 * 32..6 * 32], &base[0][3 * 32..6 * 32]);
}

#[test]
fn ablation_removes_the_component_along_the_vector() {
    let m = model();
    let dev = test_device();
    let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).sin() + 0.3).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let steer = [Steering::ablate(2, &v, Positions::All, &dev).unwrap()];
    let b = Batch::new(&[seq(&[3, 4, 5, 6], &[])], PadSide::Right, 0).unwrap();
    let base = capture(&m, &b, &[], &[2], Reduction::Full);
    let ab = capture(&m, &b, &steer, &[2], Reduction::Full);
    for s in 0..4 {
        let row = &ab[0][s * 32..(s + 1) * 32];
        let proj: f32 = row.iter().zip(&v).map(|(h, v)| h * v / norm).sum();
        assert!(proj.abs() < 1e-4, "pos {s}: {proj}");
        let base_proj: f32 = base[0][s * 32..(s + 1) * 32]
            .iter()
            .zip(&v)
            .map(|(h, v)| h * v / norm)
            .sum();
        assert!(
            base_proj.abs() > 1e-3,
            "test vector must have a component to remove"
        );
    }
}

#[test]
fn row_zero_is_the_embedding_and_reductions_match_full_capture() {
    let m = model();
    let b = Batch::new(
        &[seq(&[3, 4, 5], &[6, 7]), seq(&[8, 9], &[])],
        PadSide::Right,
        0,
    )
    .unwrap();
    let full = capture(&m, &b, &[], &[0, 2], Reduction::Full);
    let w = random_weights(&tiny_config(), 1);
    let emb = w["model.embed_tokens.weight"].values();
    for (s, &id) in b.ids.iter().enumerate() {
        assert_eq!(
            &full[0][s * 32..(s + 1) * 32],
            &emb[id as usize * 32..(id as usize + 1) * 32]
        );
    }
    let seq_len = b.seq_len;
    let at = |row: usize, bi: usize, s: usize| {
        &full[row][(bi * seq_len + s) * 32..(bi * seq_len + s + 1) * 32]
    };
    let resp = capture(&m, &b, &[], &[2], Reduction::ResponseMean);
    let prompt = capture(&m, &b, &[], &[2], Reduction::PromptMean);
    let last = capture(&m, &b, &[], &[2], Reduction::LastPrompt);
    for j in 0..32 {
        let want_resp = (at(1, 0, 3)[j] + at(1, 0, 4)[j]) / 2.0;
        assert!((resp[0][j] - want_resp).abs() < 1e-5);
        assert_eq!(resp[0][32 + j], 0.0, "row without response captures zero");
        let want_prompt = (at(1, 1, 0)[j] + at(1, 1, 1)[j]) / 2.0;
        assert!((prompt[0][32 + j] - want_prompt).abs() < 1e-5);
        assert!((last[0][j] - at(1, 0, 2)[j]).abs() < 1e-6);
    }
}

#[test]
fn counts_report_empty_response_sets() {
    let m = model();
    let b = Batch::new(
        &[seq(&[3, 4, 5], &[6, 7]), seq(&[8, 9], &[])],
        PadSide::Right,
        0,
    )
    .unwrap();
    let req = CaptureRequest::new([1], &[Reduction::ResponseMean]);
    let out = m
        .forward(
            &b,
            ForwardArgs {
                cache: None,
                steering: &[],
                capture: &req,
                logits: Logits::None,
                lora: None,
                lora_dropout: None,
            },
        )
        .unwrap();
    assert_eq!(out.counts[&Reduction::ResponseMean], vec![2, 0]);
}

#[test]
fn response_likelihoods_match_a_softmax_over_all_logits() {
    // Hand computation from the full `[b, s, vocab]` logits: row 0's
    // response tokens 6, 7 are predicted at positions 2, 3 (the last prompt
    // token predicts the first response token); row 1 has no response, row
    // 2 no prompt (its first response token is not scored).
    let m = model();
    let rows = [
        seq(&[3, 4, 5], &[6, 7]),
        seq(&[8, 9], &[]),
        seq(&[], &[10, 11, 12]),
    ];
    let b = Batch::new(&rows, PadSide::Right, 0).unwrap();
    assert_eq!(
        b.scored_positions(),
        vec![(2, 6), (3, 7), (2 * 5, 11), (2 * 5 + 1, 12)]
    );
    let all = logits_all(&m, &b);
    let vocab = m.config.vocab_size;
    let logprob = |pos: usize, token: usize| -> f64 {
        let l = &all[pos * vocab..(pos + 1) * vocab];
        let max = l.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
        l[token] as f64 - max - z.ln()
    };
    let want = [
        (logprob(2, 6) + logprob(3, 7), 2),
        (0.0, 0),
        (logprob(10, 11) + logprob(11, 12), 2),
    ];
    // One chunk of three and chunks of one (a chunk with nothing to score).
    for batch_size in [3, 1] {
        let got = crate::response_likelihoods(&m, None, &[], &rows, batch_size, 0, |_| {}).unwrap();
        for (g, (sum, n)) in got.iter().zip(want) {
            assert_eq!(g.n_tokens, n);
            assert!(
                (g.sum_logprob - sum).abs() < 1e-4,
                "{} vs {sum}",
                g.sum_logprob
            );
        }
    }
    // Asking for scored logits without anything to score is an error.
    let none = Batch::new(&rows[1..2], PadSide::Right, 0).unwrap();
    let args = ForwardArgs {
        logits: Logits::Scored,
        ..ForwardArgs::plain()
    };
    assert!(m.forward(&none, args).is_err());
}

#[test]
fn out_of_range_rows_and_wrong_widths_are_errors() {
    let m = model();
    let dev = test_device();
    let b = Batch::new(&[seq(&[3], &[])], PadSide::Right, 0).unwrap();
    // A finite coefficient whose product with the vector is not.
    let e = Steering::add(1, &[2.0; 32], 3e38, Positions::All, &dev).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    let bad_row = [Steering::add(4, &[0.0; 32], 1.0, Positions::All, &dev).unwrap()];
    let e = m
        .forward(
            &b,
            ForwardArgs {
                cache: None,
                steering: &bad_row,
                capture: &CaptureRequest::none(),
                logits: Logits::All,
                lora: None,
                lora_dropout: None,
            },
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("row 4 is out of range"), "{e}");
    let bad_width = [Steering::add(1, &[0.0; 31], 1.0, Positions::All, &dev).unwrap()];
    let e = m
        .forward(
            &b,
            ForwardArgs {
                cache: None,
                steering: &bad_width,
                capture: &CaptureRequest::none(),
                logits: Logits::All,
                lora: None,
                lora_dropout: None,
            },
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("width 31"), "{e}");
}

#[test]
fn strict_loading_lists_missing_and_unexpected_keys() {
    let cfg = tiny_config();
    let mut w = random_weights(&cfg, 1);
    let t = w.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    w.insert("model.layers.1.mlp.upp_proj.weight".into(), t);
    let e = Model::from_weights(cfg, &w, &test_device())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("upp_proj"),
        "{e}"
    );
}

mod lora {
    use super::*;
    use crate::lora::{Lora, LoraDropout, PeftScaling, Scaling, Target};

    fn with_lora(m: &Model, b: &Batch, lora: &Lora) -> Vec<f32> {
        with_dropout(m, b, lora, None)
    }

    fn with_dropout(m: &Model, b: &Batch, lora: &Lora, dropout: Option<LoraDropout>) -> Vec<f32> {
        let req = CaptureRequest::none();
        host(
            m.forward(
                b,
                ForwardArgs {
                    cache: None,
                    steering: &[],
                    capture: &req,
                    logits: Logits::All,
                    lora: Some(lora),
                    lora_dropout: dropout,
                },
            )
            .unwrap()
            .logits
            .unwrap(),
        )
    }

    fn randomise_b(lora: &mut Lora, dev: &Device) {
        for (i, map) in lora.layers.iter_mut().enumerate() {
            for (j, pair) in map.values_mut().enumerate() {
                let [r, c] = pair.b.dims();
                let data: Vec<f32> = (0..r * c)
                    .map(|k| ((k * 31 + i * 7 + j) as f32 * 0.37).sin() * 0.05)
                    .collect();
                pair.b = Tensor::from_data(burn::tensor::TensorData::new(data, [r, c]), dev);
            }
        }
    }

    #[test]
    fn fresh_adapters_leave_logits_bit_identical() {
        let m = model();
        let dev = test_device();
        let lora = Lora::init(&m.config, &Target::ALL, 4, 8.0, Scaling::Rslora, 0, &dev).unwrap();
        let b = Batch::new(&[seq(&[3, 4, 5], &[6, 7])], PadSide::Right, 0).unwrap();
        assert_eq!(with_lora(&m, &b, &lora), logits_all(&m, &b));
    }

    #[test]
    fn lora_dropout_is_seeded_and_zero_probability_is_off() {
        let m = model();
        let dev = test_device();
        let mut lora =
            Lora::init(&m.config, &Target::ALL, 4, 8.0, Scaling::Rslora, 3, &dev).unwrap();
        randomise_b(&mut lora, &dev);
        let b = Batch::new(&[seq(&[3, 4, 5], &[6, 7, 8])], PadSide::Right, 0).unwrap();
        let d = |p, seed| Some(LoraDropout { p, seed });
        let plain = with_lora(&m, &b, &lora);
        assert_eq!(with_dropout(&m, &b, &lora, d(0.0, 1)), plain);
        let a = with_dropout(&m, &b, &lora, d(0.3, 1));
        assert_eq!(
            with_dropout(&m, &b, &lora, d(0.3, 1)),
            a,
            "same seed, same masks"
        );
        assert!(
            max_diff(&a, &plain) > 1e-4,
            "dropout must change the adapted output"
        );
        assert!(max_diff(&with_dropout(&m, &b, &lora, d(0.3, 2)), &a) > 1e-4);
        // Only the LoRA branch is dropped: fresh adapters (B = 0) stay exact.
        let fresh = Lora::init(&m.config, &Target::ALL, 4, 8.0, Scaling::Rslora, 3, &dev).unwrap();
        assert_eq!(with_dropout(&m, &b, &fresh, d(0.5, 1)), logits_all(&m, &b));
    }

    #[test]
    fn merged_weights_match_the_adapter_branch() {
        let cfg = tiny_config();
        let dev = test_device();
        let w = random_weights(&cfg, 1);
        let m = Model::from_weights(cfg.clone(), &w, &dev).unwrap();
        let mut lora = Lora::init(&cfg, &Target::ALL, 4, 16.0, Scaling::Classic, 5, &dev).unwrap();
        randomise_b(&mut lora, &dev);
        let b = Batch::new(&[seq(&[3, 4, 5, 9], &[6, 7])], PadSide::Right, 0).unwrap();
        let unmerged = with_lora(&m, &b, &lora);
        assert!(
            max_diff(&unmerged, &logits_all(&m, &b)) > 1e-3,
            "adapters must change the output"
        );
        let mut merged_w = w.clone();
        lora.merge_into(&mut merged_w).unwrap();
        let merged = logits_all(&Model::from_weights(cfg, &merged_w, &dev).unwrap(), &b);
        assert!(
            max_diff(&merged, &unmerged) < 1e-4,
            "{}",
            max_diff(&merged, &unmerged)
        );
    }

    #[test]
    fn peft_layout_round_trips() {
        let cfg = tiny_config();
        let dev = test_device();
        let mut lora = Lora::init(
            &cfg,
            &[Target::Q, Target::Down],
            2,
            4.0,
            Scaling::Rslora,
            9,
            &dev,
        )
        .unwrap();
        randomise_b(&mut lora, &dev);
        let peft = lora.to_peft().unwrap();
        assert_eq!(
            peft["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape,
            vec![2, 32]
        );
        assert_eq!(
            peft["base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"].shape,
            vec![32, 2]
        );
        let scaling = PeftScaling {
            rank: 2,
            alpha: 4.0,
            scaling: Scaling::Rslora,
            rank_pattern: vec![],
            alpha_pattern: vec![],
        };
        let back = Lora::from_peft(&cfg, &peft, &scaling, &dev).unwrap();
        assert_eq!(back.targets(), vec![Target::Q, Target::Down]);
        assert_eq!(back.to_peft().unwrap(), peft);
    }

    #[test]
    fn gradients_reach_adapters_only() {
        let cfg = tiny_config();
        let dev = test_device().autodiff();
        let m = Model::from_weights(cfg.clone(), &random_weights(&cfg, 1), &dev).unwrap();
        let mut lora = Lora::init(
            &cfg,
            &[Target::V, Target::Up],
            2,
            4.0,
            Scaling::Rslora,
            3,
            &dev,
        )
        .unwrap();
        for t in lora.tensors_mut() {
            *t = t.clone().require_grad();
        }
        let b = Batch::new(&[seq(&[3, 4, 5], &[6, 7])], PadSide::Right, 0).unwrap();
        let req = CaptureRequest::none();
        let logits = m
            .forward(
                &b,
                ForwardArgs {
                    cache: None,
                    steering: &[],
                    capture: &req,
                    logits: Logits::All,
                    lora: Some(&lora),
                    lora_dropout: None,
                },
            )
            .unwrap()
            .logits
            .unwrap();
        let grads = logits.sum().backward();
        let pair = &lora.layers[1][&Target::Up];
        let gb = pair.b.grad(&grads).expect("B has a gradient");
        assert!(gb.abs().sum().into_scalar::<f32>() > 0.0);
        // With B = 0 the gradient of A is exactly zero (PEFT's init property).
        let ga = pair.a.grad(&grads).expect("A has a gradient");
        assert_eq!(ga.abs().sum().into_scalar::<f32>(), 0.0);
        assert!(
            m.embed_tokens_for_tests().grad(&grads).is_none(),
            "base weights must stay frozen"
        );
    }
}

/// Four rows of different lengths (right-padded), with responses.
fn mixed_batch() -> Batch {
    let rows: Vec<Sequence> = (0..4u32)
        .map(|r| {
            let prompt: Vec<u32> = (0..12 + r).map(|i| (i * 5 + r * 11 + 1) % VOCAB).collect();
            let response: Vec<u32> = (0..6 + 2 * r).map(|i| (i * 3 + r + 2) % VOCAB).collect();
            seq(&prompt, &response)
        })
        .collect();
    Batch::new(&rows, PadSide::Right, 0).unwrap()
}

#[test]
fn inference_passes_split_into_row_groups_and_training_passes_do_not() {
    let m = model();
    let b = mixed_batch();
    on_threads(2, || {
        assert_eq!(m.row_groups(&b, &ForwardArgs::plain()), vec![0..2, 2..4]);
        // A fresh cache is filled per group (see the next tests); LoRA
        // dropout marks a training pass.
        let mut args = ForwardArgs::plain();
        args.lora_dropout = Some(crate::LoraDropout { p: 0.1, seed: 1 });
        assert_eq!(m.row_groups(&b, &args).len(), 1);
        // Too few tokens for two groups.
        let small =
            Batch::new(&[seq(&[1, 2, 3], &[]), seq(&[4, 5], &[])], PadSide::Left, 0).unwrap();
        assert_eq!(m.row_groups(&small, &ForwardArgs::plain()).len(), 1);
        // Scored logits with a group that has no response token.
        let no_response = Batch::new(
            &[
                seq(&[1; 30], &[]),
                seq(&[2; 30], &[]),
                seq(&[3; 30], &[4, 5]),
                seq(&[6; 30], &[7]),
            ],
            PadSide::Right,
            0,
        )
        .unwrap();
        let mut args = ForwardArgs::plain();
        args.logits = Logits::Scored;
        assert_eq!(m.row_groups(&no_response, &args).len(), 1);
        assert_eq!(m.row_groups(&b, &args).len(), 2);
    });
}

#[test]
fn row_group_split_matches_the_whole_batch_pass() {
    let m = model();
    let b = mixed_batch();
    let reductions = [
        Reduction::ResponseMean,
        Reduction::PromptMean,
        Reduction::LastPrompt,
        Reduction::Full,
    ];
    let req = CaptureRequest::new([0, 1, 2], &reductions);
    let steer = [Steering::add(1, &[0.5; 32], 2.0, Positions::All, &test_device()).unwrap()];
    for logits in [Logits::All, Logits::Last, Logits::Scored, Logits::None] {
        let args = || ForwardArgs {
            cache: None,
            steering: &steer,
            capture: &req,
            logits,
            lora: None,
            lora_dropout: None,
        };
        let whole = m.pass(&b, args()).unwrap();
        let split = on_threads(2, || {
            assert_eq!(m.row_groups(&b, &args()).len(), 2);
            m.forward(&b, args()).unwrap()
        });
        match (whole.logits, split.logits) {
            (Some(w), Some(s)) => {
                assert_eq!(w.dims(), s.dims(), "{logits:?}");
                assert!(max_diff(&host(w), &host(s)) < 1e-5, "{logits:?}");
            }
            (None, None) => assert_eq!(logits, Logits::None),
            _ => panic!("{logits:?}: logits present in one pass only"),
        }
        assert_eq!(whole.counts, split.counts, "{logits:?}");
        assert_eq!(whole.captured.len(), 9);
        for (k, w) in whole.captured {
            let s = &split.captured[&k];
            assert_eq!(w.dims(), s.dims());
            assert!(max_diff(&host2(w), &host2(s.clone())) < 1e-5, "{k:?}");
        }
        assert_eq!(whole.full.len(), 3);
        for (k, w) in whole.full {
            assert!(
                max_diff(&host(w), &host(split.full[&k].clone())) < 1e-5,
                "{k}"
            );
        }
    }
}

#[test]
fn prompt_pass_filling_a_fresh_cache_splits_and_joins_the_cache() {
    let m = model();
    let rows: Vec<Sequence> = (0..4u32)
        .map(|r| {
            seq(
                &(0..14 + 3 * r)
                    .map(|i| (i * 7 + r) % VOCAB)
                    .collect::<Vec<_>>(),
                &[],
            )
        })
        .collect();
    let b = Batch::new(&rows, PadSide::Left, 0).unwrap();
    let step = Batch {
        ids: vec![3, 8, 13, 21],
        roles: vec![Role::Response; 4],
        n_rows: 4,
        seq_len: 1,
    };
    let mut whole_cache = KvCache::new();
    let prompt_whole = m
        .pass(&b, ForwardArgs::decode(&mut whole_cache, &[]))
        .unwrap();
    let step_whole = m
        .pass(&step, ForwardArgs::decode(&mut whole_cache, &[]))
        .unwrap();
    let mut cache = KvCache::new();
    let (prompt_split, step_split) = on_threads(2, || {
        assert_eq!(
            m.row_groups(&b, &ForwardArgs::decode(&mut KvCache::new(), &[]))
                .len(),
            2
        );
        let p = m.forward(&b, ForwardArgs::decode(&mut cache, &[])).unwrap();
        // A cache that holds positions is continued whole.
        assert_eq!(
            m.row_groups(&step, &ForwardArgs::decode(&mut cache, &[]))
                .len(),
            1
        );
        let s = m
            .forward(&step, ForwardArgs::decode(&mut cache, &[]))
            .unwrap();
        (p, s)
    });
    assert_eq!(cache.valid, whole_cache.valid);
    for (w, s) in [(prompt_whole, prompt_split), (step_whole, step_split)] {
        let (w, s) = (host(w.logits.unwrap()), host(s.logits.unwrap()));
        assert!(max_diff(&w, &s) < 1e-5);
    }
}

/// Capping clamps the projection on `v̂` into the range at the positions
/// it applies to and leaves positions already inside it bit for bit.
#[test]
fn cap_clamps_the_projection_into_its_range() {
    let m = model();
    let dev = test_device();
    let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).sin() + 0.3).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let proj = |h: &[f32]| -> f32 { h.iter().zip(&v).map(|(h, v)| h * v / norm).sum() };
    let b = Batch::new(&[seq(&[3, 4, 5, 6], &[])], PadSide::Right, 0).unwrap();
    let base = capture(&m, &b, &[], &[2], Reduction::Full);
    let base_proj: Vec<f32> = (0..4)
        .map(|s| proj(&base[0][s * 32..(s + 1) * 32]))
        .collect();
    // A range around the median projection: some positions are inside it,
    // some below, some above.
    let mut sorted = base_proj.clone();
    sorted.sort_by(f32::total_cmp);
    let (lo, hi) = (sorted[1] - 1e-3, sorted[2] + 1e-3);
    let steer = [Steering::cap(2, &v, (lo, hi), Positions::All, &dev).unwrap()];
    let capped = capture(&m, &b, &steer, &[2], Reduction::Full);
    for (s, &p) in base_proj.iter().enumerate() {
        let (before, after) = (&base[0][s * 32..][..32], &capped[0][s * 32..][..32]);
        if (lo..=hi).contains(&p) {
            assert_eq!(before, after, "pos {s} inside the range changed");
        } else {
            let want = p.clamp(lo, hi);
            assert!(
                (proj(after) - want).abs() < 1e-4,
                "pos {s}: {} vs {want}",
                proj(after)
            );
        }
    }
    assert!(Steering::cap(2, &v, (1.0, -1.0), Positions::All, &dev).is_err());
    assert!(Steering::cap(2, &v, (f32::NAN, 1.0), Positions::All, &dev).is_err());
}

/// A steering on some batch rows changes those rows only; the others get
/// the unsteered values bit for bit, also when the pass is split into row
/// groups, and a row it names outside the batch is an error.
#[test]
fn steering_some_batch_rows_leaves_the_others_unchanged() {
    let m = model();
    let dev = test_device();
    let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).cos()).collect();
    // 6 rows of 16 tokens: two row groups on two threads.
    let rows: Vec<Sequence> = (0..6u32)
        .map(|i| {
            seq(
                &(0..16).map(|t| (t * 5 + i) % VOCAB).collect::<Vec<_>>(),
                &[],
            )
        })
        .collect();
    let b = Batch::new(&rows, PadSide::Right, 0).unwrap();
    assert!(on_threads(2, || b.thread_groups(&dev, false).len()) > 1);
    let logits = |steering: &[Steering]| -> Vec<f32> {
        let req = CaptureRequest::none();
        let args = ForwardArgs {
            steering,
            logits: Logits::All,
            ..ForwardArgs::capture(&req, None)
        };
        host(m.forward(&b, args).unwrap().logits.unwrap())
    };
    let every = Steering::add(2, &v, 3.0, Positions::All, &dev).unwrap();
    let plain = on_threads(2, || logits(&[]));
    let all = on_threads(2, || logits(std::slice::from_ref(&every)));
    let some = on_threads(2, || logits(&[every.clone().on_batch_rows([1, 4])]));
    let per_row = plain.len() / 6;
    for r in 0..6 {
        let want = if r == 1 || r == 4 { &all } else { &plain };
        assert_eq!(
            &some[r * per_row..][..per_row],
            &want[r * per_row..][..per_row],
            "row {r}"
        );
    }
    let req = CaptureRequest::none();
    let outside = [every.on_batch_rows([6])];
    let args = ForwardArgs {
        steering: &outside,
        ..ForwardArgs::capture(&req, None)
    };
    assert!(m.forward(&b, args).is_err());
}

/// Decodes `prompt` alone for `steps` greedy steps; returns every step's
/// logits.
fn decode_alone(m: &Model, prompt: &[u32], steering: &[Steering], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new();
    let mut batch = Batch::new(&[seq(prompt, &[])], PadSide::Left, 0).unwrap();
    let mut out = Vec::new();
    for _ in 0..=steps {
        let l = host(
            m.forward(&batch, ForwardArgs::decode(&mut cache, steering))
                .unwrap()
                .logits
                .unwrap(),
        );
        let next = greedy(&l);
        out.push(l);
        batch = one_token_batch(&[next]);
    }
    out
}

fn greedy(row: &[f32]) -> u32 {
    crate::generate::sample(
        row,
        crate::Sampling::Greedy,
        // Greedy draws nothing from the stream.
        &mut crate::generate::prompt_rng(0, 0),
    )
}

fn one_token_batch(ids: &[u32]) -> Batch {
    Batch {
        ids: ids.to_vec(),
        roles: vec![Role::Response; ids.len()],
        n_rows: ids.len(),
        seq_len: 1,
    }
}

/// A request joining a batch that is already decoding (its prompt run
/// alone, its cache rows appended) and steered on its own row decodes
/// exactly as it does alone, and so does the row it joined; rows of
/// different lengths share one left-padded cache.
#[test]
fn rows_joining_a_decoding_batch_decode_as_they_do_alone() {
    let m = model();
    let dev = test_device();
    let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).cos()).collect();
    let steer = Steering::add(2, &v, 2.0, Positions::Generating, &dev).unwrap();
    let (a, b): (Vec<u32>, Vec<u32>) = ((1..9).collect(), vec![40, 41, 42]);
    let want_a = decode_alone(&m, &a, &[], 5);
    let want_b = decode_alone(&m, &b, std::slice::from_ref(&steer), 3);

    let mut cache = KvCache::new();
    let first = Batch::new(&[seq(&a, &[])], PadSide::Left, 0).unwrap();
    let mut got_a = vec![host(
        m.forward(&first, ForwardArgs::decode(&mut cache, &[]))
            .unwrap()
            .logits
            .unwrap(),
    )];
    let step = one_token_batch(&[greedy(&got_a[0])]);
    got_a.push(host(
        m.forward(&step, ForwardArgs::decode(&mut cache, &[]))
            .unwrap()
            .logits
            .unwrap(),
    ));
    // B's prompt runs alone with its steering, then joins A's cache.
    let mut joining = KvCache::new();
    let prompt_b = Batch::new(&[seq(&b, &[])], PadSide::Left, 0).unwrap();
    let mut got_b = vec![host(
        m.forward(
            &prompt_b,
            ForwardArgs::decode(&mut joining, std::slice::from_ref(&steer)),
        )
        .unwrap()
        .logits
        .unwrap(),
    )];
    cache.append_rows(joining, 8);
    assert_eq!(cache.n_rows(), 2);
    let only_b = [steer.on_batch_rows([1])];
    for _ in 0..3 {
        let next = [greedy(got_a.last().unwrap()), greedy(got_b.last().unwrap())];
        let l = host(
            m.forward(
                &one_token_batch(&next),
                ForwardArgs::decode(&mut cache, &only_b),
            )
            .unwrap()
            .logits
            .unwrap(),
        );
        let vocab = l.len() / 2;
        got_a.push(l[..vocab].to_vec());
        got_b.push(l[vocab..].to_vec());
    }
    assert_eq!(got_a, want_a[..5]);
    assert_eq!(got_b, want_b);
}
