//! Turning logits into a label and probabilities (softmax, or a sigmoid
//! per label), and token vectors into
//! one embedding (pure).

use crate::manifest::Pooling;

/// Pools `hidden`, `[len, dim]` row-major token vectors of which the first
/// `n` are real tokens (the rest padding), into `out` (`dim` values): the
/// mean of those `n` rows, summed in row order, or row 0.
pub fn pool_into(hidden: &[f32], n: usize, pooling: Pooling, out: &mut [f32]) {
    let dim = out.len();
    assert!(
        dim > 0 && n > 0 && hidden.len() >= n * dim,
        "pool: shape mismatch"
    );
    match pooling {
        Pooling::Cls => out.copy_from_slice(&hidden[..dim]),
        Pooling::Mean => {
            out.fill(0.0);
            for row in hidden[..n * dim].chunks_exact(dim) {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += v;
                }
            }
            let inv = 1.0 / n as f32;
            for o in out.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// Scales `v` to unit L2 norm (an all-zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

/// The cosine of two vectors of the same length, in f64 (NaN when either
/// is all zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

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

/// A logistic sigmoid of each of `logits` into `out` (same length): the
/// independent probability of each label of a multi-label model.
pub fn sigmoid_into(logits: &[f32], out: &mut [f32]) {
    assert_eq!(logits.len(), out.len(), "sigmoid: length mismatch");
    for (o, &l) in out.iter_mut().zip(logits) {
        // exp of a large positive value overflows to inf, giving 0: right.
        *o = 1.0 / (1.0 + (-l).exp());
    }
}

/// Whether label `i` of `probs` is given at `threshold` (at or over it).
pub fn over_threshold(probs: &[f32], threshold: f32) -> impl Iterator<Item = usize> + '_ {
    probs
        .iter()
        .enumerate()
        .filter(move |(_, &p)| p >= threshold)
        .map(|(i, _)| i)
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
    fn cosines() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-7);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-7);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-7);
        assert!(cosine(&[0.0, 0.0], &[1.0, 0.0]).is_nan());
    }

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
    fn sigmoid_known_values() {
        let mut p = [0.0; 4];
        sigmoid_into(&[0.0, 2.0, -1000.0, 1000.0], &mut p);
        assert_eq!(p[0], 0.5);
        assert!((p[1] - 0.880_797).abs() < 1e-6);
        assert_eq!(p[2], 0.0);
        assert_eq!(p[3], 1.0);
        let given: Vec<usize> = over_threshold(&p, 0.5).collect();
        assert_eq!(given, [0, 1, 3]);
        assert_eq!(over_threshold(&p, 0.9).count(), 1);
    }

    #[test]
    fn argmax_picks_first_max_and_rejects_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[0.1, f32::NAN]), None);
    }

    #[test]
    fn pooling_known_values() {
        // Three tokens of width 2, the third padding.
        let hidden = [1.0, 2.0, 3.0, 6.0, 100.0, 100.0];
        let mut out = [0.0; 2];
        pool_into(&hidden, 2, Pooling::Mean, &mut out);
        assert_eq!(out, [2.0, 4.0]);
        pool_into(&hidden, 2, Pooling::Cls, &mut out);
        assert_eq!(out, [1.0, 2.0]);
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }

    proptest! {
        #[test]
        fn mean_pool_ignores_padding_and_normalises(
            dim in 1usize..6,
            n in 1usize..5,
            pad in 0usize..3,
            seed in prop::collection::vec(-10.0f32..10.0, 64),
        ) {
            let len = n + pad;
            let hidden: Vec<f32> = (0..len * dim).map(|i| seed[i % seed.len()] + i as f32 * 0.01).collect();
            let mut a = vec![0.0; dim];
            pool_into(&hidden, n, Pooling::Mean, &mut a);
            let mut padded_other = hidden.clone();
            for v in &mut padded_other[n * dim..] {
                *v = 1e6;
            }
            let mut b = vec![0.0; dim];
            pool_into(&padded_other, n, Pooling::Mean, &mut b);
            prop_assert_eq!(&a, &b);
            for (j, &m) in a.iter().enumerate() {
                let want = (0..n).map(|r| hidden[r * dim + j] as f64).sum::<f64>() / n as f64;
                prop_assert!((m as f64 - want).abs() < 1e-4);
            }
            l2_normalize(&mut a);
            let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            prop_assert!(norm == 0.0 || (norm - 1.0).abs() < 1e-5);
        }

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
