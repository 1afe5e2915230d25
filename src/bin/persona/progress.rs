//! Progress bars and messages for the library's progress events: the
//! libraries report, the binary draws.

use indicatif::{ProgressBar, ProgressStyle};
use persona_train::TrainEvent;

/// Draws a training run's events: the extraction bar, a restart notice,
/// then one bar over the optimizer steps with the loss and the first shift.
pub struct TrainProgress {
    bar: Option<ProgressBar>,
}

impl TrainProgress {
    pub fn new() -> Self {
        Self { bar: None }
    }

    pub fn on_event(&mut self, event: TrainEvent<'_>) {
        match event {
            TrainEvent::Extracting { done, total } => {
                let bar = self.bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(total as u64);
                    b.set_message("extracting the recipe's trait vector");
                    b
                });
                bar.set_position(done as u64);
                if done == total {
                    bar.finish_and_clear();
                    self.bar = None;
                }
            }
            TrainEvent::Restarting { run } => eprintln!(
                "{} holds a start that stopped before its first checkpoint; starting the run again",
                run.display()
            ),
            TrainEvent::Started {
                run,
                step,
                total_steps,
            } => {
                match step {
                    0 => eprintln!("training {}", run.display()),
                    s => eprintln!("resuming {} at step {s}", run.display()),
                }
                let b = ProgressBar::new(total_steps as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} step {pos}/{len} {msg} [{elapsed} < {eta}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_position(step as u64);
                self.bar = Some(b);
            }
            TrainEvent::Step(m) => {
                let shift = m
                    .shift
                    .as_ref()
                    .and_then(|s| s.iter().next())
                    .and_then(|(name, rows)| {
                        rows.iter()
                            .next()
                            .map(|(r, v)| format!(" shift[{name}@{r}] {v:+.3}"))
                    })
                    .unwrap_or_default();
                if let Some(b) = &self.bar {
                    b.set_message(format!("loss {:.4}{shift}", m.loss));
                    b.set_position(m.step as u64);
                }
            }
        }
    }
}

impl TrainProgress {
    /// Leaves the last bar on screen, finished.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}
