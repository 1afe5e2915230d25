//! Classification metrics shared by the probe report and the screening summary.

/// Area under the ROC curve of `scores` for the positives (`labels[i] ==
/// true`): the probability that a random positive scores above a random
/// negative, ties counting one half (the Mann-Whitney U statistic). `None`
/// without at least one positive and one negative.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|p| *p.1)
        .map(|p| *p.0)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|p| !*p.1)
        .map(|p| *p.0)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_counts_pairs_and_ties() {
        assert_eq!(auroc(&[3.0, 2.0, 1.0], &[true, false, false]), Some(1.0));
        assert_eq!(auroc(&[1.0, 2.0, 3.0], &[true, false, false]), Some(0.0));
        // One tie (2 vs 2) out of 4 pairs, one win (3 > 1), one win (3 > 2), one loss.
        let a = auroc(&[3.0, 2.0, 2.0, 1.0], &[true, true, false, false]).unwrap();
        assert!((a - (1.0 + 1.0 + 0.5 + 1.0) / 4.0).abs() < 1e-12);
        assert_eq!(auroc(&[1.0], &[true]), None);
    }
}
