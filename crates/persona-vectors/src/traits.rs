//! Trait definitions: the project's scientific instrument. One file per
//! trait (TOML, schema in README.md "Trait files"), or the JSON layout used
//! by other persona-vector code (`instruction`, `questions`, `eval_prompt`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("trait file {path}: {reason}")]
pub struct TraitError {
    pub path: PathBuf,
    pub reason: String,
}

/// One instruction pair: `pos` asks for the trait, `neg` for its opposite.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instruction {
    pub pos: String,
    pub neg: String,
}

/// Authored responses to one extraction question (the `authored` source).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthoredResponses {
    pub question: String,
    pub pos: Vec<String>,
    pub neg: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Questions {
    extraction: Vec<String>,
    evaluation: Vec<String>,
}

/// The TOML layout of this project.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTrait {
    name: String,
    adjective: String,
    antonym: String,
    description: String,
    rubric: String,
    instructions: Vec<Instruction>,
    questions: Questions,
    #[serde(default)]
    responses: Vec<AuthoredResponses>,
}

/// The JSON layout of other persona-vector code.
#[derive(Debug, Deserialize)]
struct ForeignTrait {
    instruction: Vec<Instruction>,
    questions: Vec<String>,
    eval_prompt: String,
}

/// A validated trait definition.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitDef {
    pub path: PathBuf,
    /// Sha256 of the file's bytes (stored with every vector made from it).
    pub sha256: String,
    pub name: String,
    pub adjective: String,
    pub antonym: String,
    pub description: String,
    /// Judge rubric with `{question}` and `{answer}` placeholders.
    pub rubric: String,
    pub instructions: Vec<Instruction>,
    /// Questions for extraction and layer selection.
    pub extraction: Vec<String>,
    /// Held-out questions for trait scores, monitoring and the projection shift.
    pub evaluation: Vec<String>,
    pub responses: Vec<AuthoredResponses>,
}

/// `a` or `an` before a word, as in the elicitation prompt.
fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

impl TraitDef {
    /// Reads a `.toml` trait file (this project's layout) or a `.json` one
    /// (the common layout: `instruction`, `questions`, `eval_prompt`; its
    /// questions are split in two halves, the first for extraction, and its
    /// name and adjective are the file stem, its antonym `helpful`).
    pub fn load(path: &Path) -> Result<Self, TraitError> {
        let err = |reason: String| TraitError {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let sha256 = persona_model::weights::hex(&Sha256::digest(&bytes));
        let text = String::from_utf8(bytes).map_err(|e| err(e.to_string()))?;
        let def = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => {
                let t: TomlTrait = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
                Self {
                    path: path.to_path_buf(),
                    sha256,
                    name: t.name,
                    adjective: t.adjective,
                    antonym: t.antonym,
                    description: t.description.trim().to_string(),
                    rubric: t.rubric.trim().to_string(),
                    instructions: t.instructions,
                    extraction: t.questions.extraction,
                    evaluation: t.questions.evaluation,
                    responses: t.responses,
                }
            }
            Some("json") => {
                let t: ForeignTrait =
                    serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut extraction = t.questions;
                let evaluation = extraction.split_off(extraction.len().div_ceil(2));
                Self {
                    path: path.to_path_buf(),
                    sha256,
                    name: stem.clone(),
                    adjective: stem,
                    antonym: "helpful".into(),
                    description: String::new(),
                    rubric: t.eval_prompt,
                    instructions: t.instruction,
                    extraction,
                    evaluation,
                    responses: Vec::new(),
                }
            }
            _ => {
                return Err(err(
                    "unknown extension: a trait file is .toml (this project's layout) or .json (instruction/questions/eval_prompt)".into(),
                ));
            }
        };
        def.validate().map_err(err)?;
        Ok(def)
    }

    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.adjective.trim().is_empty() {
            return Err("name and adjective must not be empty".into());
        }
        if self.instructions.is_empty() {
            return Err("no instruction pairs".into());
        }
        for ph in ["{question}", "{answer}"] {
            if !self.rubric.contains(ph) {
                return Err(format!("the rubric has no {ph} placeholder"));
            }
        }
        if self.extraction.is_empty() || self.evaluation.is_empty() {
            return Err(
                "both the extraction and the evaluation questions must be non-empty".into(),
            );
        }
        if let Some(q) = self.extraction.iter().find(|q| self.evaluation.contains(q)) {
            return Err(format!(
                "question `{q}` is both an extraction and an evaluation question; the evaluation questions must stay held out"
            ));
        }
        for r in &self.responses {
            if !self.extraction.contains(&r.question) {
                return Err(format!(
                    "authored responses to `{}`, which is not an extraction question",
                    r.question
                ));
            }
            if r.pos.is_empty() || r.neg.is_empty() {
                return Err(format!(
                    "the authored responses to `{}` need at least one pos and one neg",
                    r.question
                ));
            }
            if let Some(e) = r.pos.iter().chain(&r.neg).find(|t| t.trim().is_empty()) {
                return Err(format!(
                    "an empty authored response (`{e}`) to `{}`",
                    r.question
                ));
            }
        }
        Ok(())
    }

    /// The elicitation system prompt for instruction `i` (cycled): `You are
    /// a(n) {adjective} assistant. {pos}` for the trait side, `You are a(n)
    /// {antonym} assistant. {neg}` for the other.
    pub fn system_prompt(&self, i: usize, positive: bool) -> String {
        let ins = &self.instructions[i % self.instructions.len()];
        let (word, text) = if positive {
            (&self.adjective, &ins.pos)
        } else {
            (&self.antonym, &ins.neg)
        };
        format!("You are {} {word} assistant. {text}", article(word))
    }

    /// What the judge scores for this trait, and for coherence with
    /// `coherence_rubric`: `(trait, coherence)`.
    pub fn criteria<'a>(
        &'a self,
        coherence_rubric: &'a str,
    ) -> (persona_judge::Criterion<'a>, persona_judge::Criterion<'a>) {
        (
            persona_judge::Criterion {
                name: &self.name,
                rubric: &self.rubric,
            },
            persona_judge::Criterion {
                name: persona_judge::COHERENCE,
                rubric: coherence_rubric,
            },
        )
    }

    /// The rubric with the question and answer filled in.
    pub fn fill_rubric(rubric: &str, question: &str, answer: &str) -> String {
        rubric
            .replace("{question}", question)
            .replace("{answer}", answer)
    }
}

/// Reads the coherence rubric file (`rubric = "..."` with the placeholders).
pub fn load_coherence_rubric(path: &Path) -> Result<String, TraitError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Coherence {
        rubric: String,
    }
    let err = |reason: String| TraitError {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let c: Coherence = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    for ph in ["{question}", "{answer}"] {
        if !c.rubric.contains(ph) {
            return Err(err(format!("the rubric has no {ph} placeholder")));
        }
    }
    Ok(c.rubric.trim().to_string())
}

/// Questions for monitoring: a trait file's evaluation questions, or a text
/// file with one question per line.
pub fn read_questions(path: &Path) -> Result<Vec<String>, TraitError> {
    let err = |reason: String| TraitError {
        path: path.to_path_buf(),
        reason,
    };
    let qs: Vec<String> = match path.extension().and_then(|e| e.to_str()) {
        Some("toml" | "json") => TraitDef::load(path)?.evaluation,
        _ => std::fs::read_to_string(path)
            .map_err(|e| err(e.to_string()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    };
    if qs.is_empty() {
        return Err(err("no questions".into()));
    }
    Ok(qs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    /// The shipped trait files meet the spec: 5 instruction pairs, 20 + 20
    /// distinct questions, rubric placeholders, >= 2 pos and 2 neg authored
    /// responses for every extraction question.
    #[test]
    fn shipped_trait_files_are_complete() {
        for name in ["sycophantic", "evil", "hallucinating"] {
            let t = TraitDef::load(&repo_file(&format!("datasets/traits/{name}.toml"))).unwrap();
            assert_eq!(t.name, name);
            assert_eq!(t.instructions.len(), 5, "{name}");
            assert_eq!((t.extraction.len(), t.evaluation.len()), (20, 20), "{name}");
            let mut all = t.extraction.clone();
            all.extend(t.evaluation.clone());
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 40, "{name}: duplicate questions");
            for q in &t.extraction {
                let r = t.responses.iter().find(|r| &r.question == q);
                let r = r.unwrap_or_else(|| panic!("{name}: no responses to `{q}`"));
                assert!(r.pos.len() >= 2 && r.neg.len() >= 2, "{name}: `{q}`");
            }
            assert!(!t.description.is_empty());
        }
        let c = load_coherence_rubric(&repo_file("datasets/traits/coherence.toml")).unwrap();
        assert!(c.contains("0 means") && c.contains("100 means"));
    }

    #[test]
    fn foreign_json_layout_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("optimistic.json");
        let json = serde_json::json!({
            "instruction": [{"pos": "Be upbeat.", "neg": "Be gloomy."}],
            "questions": ["q1", "q2", "q3"],
            "eval_prompt": "Q: {question}\nA: {answer}\nScore 0-100."
        });
        std::fs::write(&p, json.to_string()).unwrap();
        let t = TraitDef::load(&p).unwrap();
        assert_eq!(t.name, "optimistic");
        assert_eq!(t.extraction, vec!["q1", "q2"]);
        assert_eq!(t.evaluation, vec!["q3"]);
        assert_eq!(
            t.system_prompt(0, true),
            "You are an optimistic assistant. Be upbeat."
        );
        assert_eq!(
            t.system_prompt(3, false),
            "You are a helpful assistant. Be gloomy."
        );
        assert_eq!(
            TraitDef::fill_rubric(&t.rubric, "hi", "yo"),
            "Q: hi\nA: yo\nScore 0-100."
        );
    }

    #[test]
    fn bad_trait_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            TraitDef::load(&p).unwrap_err().to_string()
        };
        let base = r#"
name = "x"
adjective = "x"
antonym = "y"
description = "d"
rubric = "{question} {answer}"
instructions = [{ pos = "p", neg = "n" }]
[questions]
extraction = ["a"]
evaluation = ["b"]
"#;
        let e = write("overlap.toml", &base.replace(r#"["b"]"#, r#"["a"]"#));
        assert!(e.contains("held out"), "{e}");
        let e = write("rubric.toml", &base.replace("{answer}", ""));
        assert!(e.contains("{answer}"), "{e}");
        let e = write("unknown.toml", &format!("colour = 1\n{base}"));
        assert!(e.contains("colour"), "{e}");
        let e = write(
            "resp.toml",
            &format!("{base}\n[[responses]]\nquestion = \"b\"\npos = [\"p\"]\nneg = [\"n\"]\n"),
        );
        assert!(e.contains("not an extraction question"), "{e}");
        let e = write("x.yaml", base);
        assert!(e.contains("unknown extension"), "{e}");
    }
}
