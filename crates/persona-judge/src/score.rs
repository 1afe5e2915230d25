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

/// Number candidates `(text, log P)` for 0..=100 from a digit tree, for
/// tokenizers that write a number one digit per token. `rows[0][d]` is the
/// probability of digit `d` first; `rows[1 + d]` the digits' probabilities
/// after digit `d`; `rows[11]` after "10"; `rows[12]` after "100". A
/// number ends where no digit follows (the rest of a row's mass).
/// `P(k)` for one digit is `P(k) * P(no digit after k)`; for two digits
/// `ab`, `P(a) * P(b | a)` (a third digit makes it > 100, except after
/// "10").
pub fn digit_tree_candidates(rows: &[[f64; 10]; 13]) -> Vec<(String, f64)> {
    let rest = |p: &[f64; 10]| (1.0 - p.iter().sum::<f64>()).max(0.0);
    let first = &rows[0];
    let mut out = Vec::with_capacity(101);
    for k in 0..10usize {
        out.push((k.to_string(), first[k] * rest(&rows[1 + k])));
    }
    for a in 1..10usize {
        for b in 0..10usize {
            let p = first[a] * rows[1 + a][b];
            let p = if (a, b) == (1, 0) {
                p * rest(&rows[11])
            } else {
                p
            };
            out.push((format!("{a}{b}"), p));
        }
    }
    out.push((
        "100".into(),
        first[1] * rows[2][0] * rows[11][0] * rest(&rows[12]),
    ));
    out.into_iter()
        .map(|(t, p)| (t, p.max(1e-300).ln()))
        .collect()
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

    /// The digit tree turns digit probabilities into number probabilities.
    #[test]
    fn digit_tree_probabilities() {
        let mut rows = [[0f64; 10]; 13];
        // First token: "8" with 0.6, "1" with 0.2 (0.2 elsewhere, not digits).
        rows[0][8] = 0.6;
        rows[0][1] = 0.2;
        // After "8": "5" with 0.5, no digit with 0.5.
        rows[1 + 8][5] = 0.5;
        // After "1": "0" with 1.0; after "10": "0" with 0.5; after "100": nothing.
        rows[1 + 1][0] = 1.0;
        rows[11][0] = 0.5;
        let c = digit_tree_candidates(&rows);
        let p = |t: &str| c.iter().find(|x| x.0 == t).unwrap().1.exp();
        assert!((p("8") - 0.3).abs() < 1e-9);
        assert!((p("85") - 0.3).abs() < 1e-9);
        assert!((p("10") - 0.1).abs() < 1e-9);
        assert!((p("100") - 0.1).abs() < 1e-9);
        assert!(p("1") < 1e-12);
        let total: f64 = c.iter().map(|x| x.1.exp()).sum();
        assert!((total - 0.8).abs() < 1e-9, "{total}");
        // Expected score: (8*.3 + 85*.3 + 10*.1 + 100*.1) / .8
        let s = expected_score(&c).unwrap() as f64;
        assert!((s - (2.4 + 25.5 + 1.0 + 10.0) / 0.8).abs() < 1e-3, "{s}");
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
