//! The layout of a run folder, `<PERSONA_HOME>/runs/<name>/`, in one place:
//! every crate that reads or writes a run goes through [`RunDir`].

use std::path::{Path, PathBuf};

/// The adapter weights file of an adapter folder (PEFT's name).
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter config file of an adapter folder (PEFT's name).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// One training run's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// How far a run folder has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No folder yet.
    Absent,
    /// A folder without a checkpoint: a start that stopped (a kill, a
    /// failed write) before its first save. Nothing in it can be resumed.
    Unstarted,
    /// A checkpoint to resume from, no final adapters yet.
    Resumable,
    /// The final adapters are written.
    Finished,
}

impl RunDir {
    /// The run named `name` under `<PERSONA_HOME>/runs/`.
    pub fn named(name: &str) -> Self {
        Self::at(persona_model::PersonaHome::from_env().runs().join(name))
    }

    /// A run folder at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The final adapters (PEFT layout), written when training ends.
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }

    /// The resumable checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// The checkpoint a save is replacing (kept until the new one is in place).
    pub fn checkpoint_old(&self) -> PathBuf {
        self.root.join("checkpoint.old")
    }

    /// Where a save writes before it swaps the checkpoint in.
    pub fn checkpoint_tmp(&self) -> PathBuf {
        self.root.join("checkpoint.tmp")
    }

    /// One JSON line per optimizer step.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// Git revision, model and data hashes, seed.
    pub fn provenance(&self) -> PathBuf {
        self.root.join("provenance.json")
    }

    /// The recipe as resolved for this run.
    pub fn recipe(&self) -> PathBuf {
        self.root.join("recipe.toml")
    }

    /// The adapters of optimizer step `step` (see `run.snapshot_every`).
    pub fn snapshot(&self, step: usize) -> PathBuf {
        self.snapshots().join(format!("step-{step:05}"))
    }

    /// The folder of all snapshots.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Evaluations of this run's arms (`eval/<arm>/`).
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }

    /// Whether the final adapters exist.
    pub fn is_finished(&self) -> bool {
        self.adapter().join(ADAPTER_WEIGHTS).is_file()
    }

    /// Whether a checkpoint can be resumed (`checkpoint.old` counts: a save
    /// killed between its two renames leaves only that one).
    pub fn has_checkpoint(&self) -> bool {
        self.checkpoint().exists() || self.checkpoint_old().exists()
    }

    pub fn state(&self) -> RunState {
        if self.is_finished() {
            RunState::Finished
        } else if self.has_checkpoint() {
            RunState::Resumable
        } else if self.root.exists() {
            RunState::Unstarted
        } else {
            RunState::Absent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_what_the_folder_holds() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::at(dir.path().join("r"));
        assert_eq!(run.state(), RunState::Absent);
        std::fs::create_dir_all(run.root()).unwrap();
        std::fs::write(run.metrics(), "").unwrap();
        assert_eq!(run.state(), RunState::Unstarted);
        std::fs::create_dir_all(run.checkpoint_old()).unwrap();
        assert_eq!(run.state(), RunState::Resumable);
        std::fs::create_dir_all(run.adapter()).unwrap();
        std::fs::write(run.adapter().join(ADAPTER_WEIGHTS), "").unwrap();
        assert_eq!(run.state(), RunState::Finished);
    }
}
