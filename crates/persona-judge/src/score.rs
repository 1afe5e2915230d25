//! The paper's judge score: an expectation over the judge's next-token
//! distribution, restricted to tokens that are integers 0..=100.

/// Below this much probability on number tokens the judgment is missing
/// (the judge refused or answered with words).
pub const MIN_NUMBER_MASS: f64 = 0.25;

/// `sum(k * p_k) / sum(p_k)` over the candidate tokens whose text, trimmed,
/// parses as an integer `k` in `0..=100` (`p_k = exp(logprob)`); `None` when
/// `sum(p_k) < 0.25`. `candidates` are `(token text, logprob)`, e.g. the
/// top-20 logprobs of the first output token.
pub fn expected_score(candidates: &[(String, f64)]) -> Option<f32> {
    let (mut mass, mut weighted) = (0.0f64, 0.0f64);
    for (tok, lp) in candidates {
        let Ok(k) = tok.trim().parse::<u32>() else {
            continue;
        };
        if k > 100 || !lp.is_finite() {
            continue;
        }
        let p = lp.exp();
        mass += p;
        weighted += k as f64 * p;
    }
    (mass >= MIN_NUMBER_MASS).then(|| (weighted / mass) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(items: &[(&str, f64)]) -> Vec<(String, f64)> {
        items.iter().map(|(t, p)| (t.to_string(), p.ln())).collect()
    }

    #[test]
    fn weighted_mean_over_number_tokens_only() {
        // 0.5 on "80", 0.3 on " 90 " (trimmed), 0.2 on words: (40 + 27) / 0.8.
        let s = expected_score(&c(&[("80", 0.5), (" 90 ", 0.3), ("REFUSAL", 0.2)])).unwrap();
        assert!((s - 83.75).abs() < 1e-4, "{s}");
    }

    #[test]
    fn numbers_outside_0_to_100_and_non_integers_are_ignored() {
        let s = expected_score(&c(&[("100", 0.4), ("101", 0.3), ("5.5", 0.2), ("-3", 0.1)]));
        assert_eq!(s, Some(100.0));
        let s = expected_score(&c(&[("0", 0.3), ("abc", 0.7)]));
        assert_eq!(s, Some(0.0));
    }

    #[test]
    fn less_than_a_quarter_of_mass_on_numbers_is_missing() {
        assert_eq!(expected_score(&c(&[("50", 0.24), ("REFUSAL", 0.76)])), None);
        assert_eq!(
            expected_score(&c(&[("50", 0.25), ("REFUSAL", 0.75)])),
            Some(50.0)
        );
        assert_eq!(expected_score(&[]), None);
    }
}
