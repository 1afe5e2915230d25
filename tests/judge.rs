//! The local judge on the embedded model: the paper's logprob score
//! computed from the runtime's own next-token distribution.

mod common;

use persona_judge::{Judge, JudgeConfig, JudgmentCache};

#[test]
fn local_judge_scores_with_the_logprob_rule_and_caches() {
    let judge = Judge::from_config(&JudgeConfig::Local {
        model: "smollm2-135m-instruct".into(),
        batch_size: 4,
        device: "cpu".into(),
    })
    .unwrap();
    assert!(judge.identity().starts_with("local:smollm2-135m-instruct@"));
    // SmolLM2-135M rarely answers a rubric with a number, but it starts
    // "Count from 1 to 5." with "1.", so numbers carry enough mass there.
    let prompts: Vec<String> = ["Count from 1 to 5.", "Write a short poem about the sea."]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let scores = judge.score_prompts(&prompts).unwrap();
    println!("local judge scores: {scores:?}");
    let count = scores[0].expect("the answer starts with a number");
    assert!((0.0..=100.0).contains(&count), "{scores:?}");
    assert_eq!(scores[1], None, "a poem does not start with a number");
    // Batching the digit tree differently does not change the score.
    let one_at_a_time = Judge::from_config(&JudgeConfig::Local {
        model: "smollm2-135m-instruct".into(),
        batch_size: 1,
        device: "cpu".into(),
    })
    .unwrap();
    let single = one_at_a_time.score_prompts(&prompts[..1]).unwrap();
    assert!(
        (single[0].unwrap() - count).abs() < 1e-3,
        "{single:?} vs {count}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut cache = JudgmentCache::open(&dir.path().join("j.jsonl")).unwrap();
    let items = vec![("q".to_string(), "a".to_string())];
    let a = judge
        .judge(
            "{question} {answer}: reply with a number",
            &items,
            &mut cache,
        )
        .unwrap();
    assert_eq!(cache.len(), 1);
    let b = judge
        .judge(
            "{question} {answer}: reply with a number",
            &items,
            &mut cache,
        )
        .unwrap();
    assert_eq!(a, b);
}
