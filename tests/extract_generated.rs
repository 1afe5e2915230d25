//! Generated extraction on the embedded model with the offline judge:
//! a run killed mid-question resumes to exactly the answers, judgments and
//! vector of an uninterrupted run.

mod common;

use persona_judge::{Judge, JudgeConfig, JudgmentCache};
use persona_vectors::TraitDef;
use persona_vectors::generated::{GeneratedSettings, extract_generated};

#[test]
fn generated_extraction_resumes_to_the_same_answers_and_vector() {
    let repo = common::repo();
    let tmp = tempfile::tempdir().unwrap();
    let JudgeConfig::Classifier(mut cfg) =
        JudgeConfig::load(&repo.join("judges/classifier.toml")).unwrap()
    else {
        panic!("judges/classifier.toml is a classifier config");
    };
    cfg.probes = tmp.path().join("probes");
    cfg.labelled = repo.join("datasets/judge");
    let judge = Judge::from_config(&JudgeConfig::Classifier(cfg)).unwrap();
    let mut def = TraitDef::load(&repo.join("datasets/traits/sycophantic.toml")).unwrap();
    def.extraction.truncate(2);
    let rubric = persona_vectors::traits::load_coherence_rubric(
        &repo.join("datasets/traits/coherence.toml"),
    )
    .unwrap();
    let s = GeneratedSettings {
        judge: "judges/classifier.toml".into(),
        coherence_file: "datasets/traits/coherence.toml".into(),
        sampling: persona_model::SamplingSettings {
            samples: 1,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 8,
            seed: 3,
            batch_size: 20,
        },
        trait_threshold: 50.0,
        coherence_threshold: 0.0,
    };
    let loaded = common::smollm();
    let run = |work: &std::path::Path| {
        let mut cache = JudgmentCache::open(&work.join("judgments.jsonl")).unwrap();
        extract_generated(
            loaded,
            &def,
            &rubric,
            &judge,
            &mut cache,
            &s,
            work,
            |_, _| {},
        )
    };
    let a = tmp.path().join("a");
    let ra = run(&a);
    let log_a = std::fs::read_to_string(a.join("generated.jsonl")).unwrap();
    let lines: Vec<&str> = log_a.lines().collect();
    // 2 questions x 5 instructions x 1 sample x 2 sides.
    assert_eq!(lines.len(), 20);

    // Killed while writing question 1: 3 of its answers and a torn line.
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let partial = format!("{}\n{}", lines[..13].join("\n"), &lines[13][..20]);
    std::fs::write(b.join("generated.jsonl"), partial).unwrap();
    let rb = run(&b);
    assert_eq!(
        std::fs::read_to_string(b.join("generated.jsonl")).unwrap(),
        log_a,
        "the resumed log holds every question once, with the same answers"
    );
    match (ra, rb) {
        (Ok((fa, ca)), Ok((fb, cb))) => {
            assert_eq!(ca, cb);
            assert_eq!(ca.pairs, 10);
            assert_eq!(fa.variants, fb.variants);
        }
        (Err(ea), Err(eb)) => assert_eq!(ea.to_string().replace("/a/", "/b/"), eb.to_string()),
        (ra, rb) => panic!("uninterrupted {:?} vs resumed {:?}", ra.is_ok(), rb.is_ok()),
    }
    // Resuming with other settings is refused rather than mixing answers.
    let other = GeneratedSettings {
        sampling: persona_model::SamplingSettings {
            samples: 2,
            ..s.sampling
        },
        ..s.clone()
    };
    let mut cache = JudgmentCache::open(&a.join("judgments.jsonl")).unwrap();
    let Err(e) = extract_generated(
        loaded,
        &def,
        &rubric,
        &judge,
        &mut cache,
        &other,
        &a,
        |_, _| {},
    ) else {
        panic!("other settings must be refused");
    };
    let e = e.to_string();
    assert!(e.contains("other settings") && e.contains("delete"), "{e}");
}
