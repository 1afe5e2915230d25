//! Small, exact statistics used by monitoring and screening reports: means,
//! a seeded percentile-bootstrap interval, quantiles (Pearson r from
//! `persona_judge::metrics`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use persona_judge::metrics::auroc;

/// Resamples and seed of every bootstrap interval the reports show (fixed,
/// so a report is reproducible; recorded next to the intervals).
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
pub const BOOTSTRAP_SEED: u64 = 0;

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(x: &[f64]) -> Option<f64> {
    (!x.is_empty()).then(|| x.iter().sum::<f64>() / x.len() as f64)
}

/// A mean with its 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
}

/// The mean of `x` and its 95% percentile-bootstrap interval from
/// `resamples` resamples drawn with a ChaCha8 stream seeded by `seed` (so
/// the interval is reproducible). `None` for an empty slice.
pub fn bootstrap_mean(x: &[f64], resamples: usize, seed: u64) -> Option<MeanCi> {
    let m = mean(x)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            (0..x.len())
                .map(|_| x[rng.random_range(0..x.len())])
                .sum::<f64>()
                / x.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((means.len() - 1) as f64 * q).round() as usize];
    Some(MeanCi {
        mean: m,
        lo: at(0.025),
        hi: at(0.975),
        n: x.len(),
    })
}

pub use persona_judge::metrics::pearson;

/// The value at quantile `q` (0..=1) of `x`, by linear interpolation
/// between order statistics. `None` for an empty slice.
pub fn quantile(x: &[f64], q: f64) -> Option<f64> {
    if x.is_empty() {
        return None;
    }
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = (s.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_shrinks_with_n() {
        let small: Vec<f64> = (0..20).map(|i| (i % 7) as f64).collect();
        let large: Vec<f64> = (0..2000).map(|i| (i % 7) as f64).collect();
        let a = bootstrap_mean(&small, 2000, 1).unwrap();
        let b = bootstrap_mean(&large, 2000, 1).unwrap();
        assert!(a.lo < a.mean && a.mean < a.hi);
        assert!(b.hi - b.lo < (a.hi - a.lo) / 4.0, "{a:?} {b:?}");
        // Roughly 1.96 standard errors each side: sd of 0..7 cycling is 2.0.
        let se = 2.0 / (2000f64).sqrt();
        assert!(
            ((b.hi - b.lo) / 2.0 - 1.96 * se).abs() < 0.3 * 1.96 * se,
            "{b:?}"
        );
        assert_eq!(bootstrap_mean(&small, 2000, 1), Some(a), "seeded");
        assert_eq!(bootstrap_mean(&[], 10, 1), None);
    }

    #[test]
    fn quantiles_interpolate() {
        let x = [4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quantile(&x, 0.0), Some(1.0));
        assert_eq!(quantile(&x, 0.5), Some(3.0));
        assert!((quantile(&x, 0.9).unwrap() - 4.6).abs() < 1e-12);
    }
}
