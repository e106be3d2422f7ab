//! Turning logits into a label and probabilities (pure).

/// Numerically stable softmax of `logits` into `out` (same length).
pub fn softmax_into(logits: &[f32], out: &mut [f32]) {
    assert_eq!(logits.len(), out.len(), "softmax: length mismatch");
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// Index of the largest value; the first one on ties. `None` when empty or
/// when a value is NaN.
pub fn argmax(values: &[f32]) -> Option<usize> {
    if values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let mut p = [0.0; 2];
        softmax_into(&[0.0, 0.0], &mut p);
        assert_eq!(p, [0.5, 0.5]);
        softmax_into(&[1.0, 2.0], &mut p);
        assert!((p[1] - 0.731_058_6).abs() < 1e-6);
        // Large logits do not overflow.
        softmax_into(&[1000.0, 0.0], &mut p);
        assert_eq!(p, [1.0, 0.0]);
    }

    #[test]
    fn argmax_picks_first_max_and_rejects_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[0.1, f32::NAN]), None);
    }

    proptest! {
        #[test]
        fn softmax_is_a_distribution_preserving_order(
            logits in prop::collection::vec(-50.0f32..50.0, 2..8)
        ) {
            let mut p = vec![0.0; logits.len()];
            softmax_into(&logits, &mut p);
            let sum: f32 = p.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5);
            prop_assert!(p.iter().all(|&x| (0.0..=1.0).contains(&x)));
            prop_assert_eq!(argmax(&p), argmax(&logits));
        }

        #[test]
        fn softmax_is_shift_invariant(
            logits in prop::collection::vec(-20.0f32..20.0, 2..6),
            shift in -100.0f32..100.0,
        ) {
            let shifted: Vec<f32> = logits.iter().map(|l| l + shift).collect();
            let mut a = vec![0.0; logits.len()];
            let mut b = vec![0.0; logits.len()];
            softmax_into(&logits, &mut a);
            softmax_into(&shifted, &mut b);
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() < 1e-4);
            }
        }
    }
}
