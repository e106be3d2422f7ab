//! Quantisation arithmetic (pure): scale and zero-point choice, rounding,
//! clamping, per-tensor and per-channel weight quantisation.
//!
//! Conventions, matching ONNX `QuantizeLinear` / `MatMulInteger`:
//! `q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)` and
//! `x ≈ (q - zero_point) * scale`. Weights are symmetric int8 in
//! `[-127, 127]` (zero point 0), so `-128` never occurs and the int8 kernels
//! need no zero-point correction on the weight side. Activations are
//! asymmetric uint8 in `[0, 255]` whose range always contains 0, so that 0
//! (padding, ReLU/GELU outputs) is represented exactly.

/// Largest magnitude of a symmetric int8 weight.
pub const I8_MAX: f32 = 127.0;

/// Scale for symmetric int8 quantisation of values within `[-max_abs, max_abs]`.
/// An all-zero tensor gets scale 1 so that nothing divides by zero.
pub fn symmetric_scale(max_abs: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        max_abs / I8_MAX
    } else {
        1.0
    }
}

/// Quantises one value to symmetric int8 with `scale`.
pub fn quantize_i8(x: f32, scale: f32) -> i8 {
    (x / scale).round_ties_even().clamp(-I8_MAX, I8_MAX) as i8
}

/// Asymmetric uint8 parameters `(scale, zero_point)` for the range `[min, max]`,
/// widened to contain 0.
pub fn asymmetric_u8_params(min: f32, max: f32) -> (f32, u8) {
    let min = min.min(0.0);
    let max = max.max(0.0);
    if !(max - min).is_finite() || max - min <= 0.0 {
        return (1.0, 0);
    }
    let scale = (max - min) / 255.0;
    let zp = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// Quantises one value to uint8 with `scale` and `zero_point`.
pub fn quantize_u8(x: f32, scale: f32, zero_point: u8) -> u8 {
    ((x / scale).round_ties_even() + zero_point as f32).clamp(0.0, 255.0) as u8
}

/// Largest absolute value, ignoring NaN.
pub fn max_abs(values: impl IntoIterator<Item = f32>) -> f32 {
    values
        .into_iter()
        .filter(|v| !v.is_nan())
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

/// A weight matrix `[k, n]` (row-major, as ONNX `MatMul`'s right operand)
/// quantised to int8 with one scale per output column (`per_channel`) or one
/// for the whole tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    pub k: usize,
    pub n: usize,
    pub values: Vec<i8>,
    /// `n` scales per channel, or a single one.
    pub scales: Vec<f32>,
}

impl QuantizedMatrix {
    /// Quantises `w` (`k` rows of `n` columns).
    pub fn new(w: &[f32], k: usize, n: usize, per_channel: bool) -> QuantizedMatrix {
        assert_eq!(w.len(), k * n, "weight shape mismatch");
        let scales: Vec<f32> = if per_channel {
            (0..n)
                .map(|c| symmetric_scale(max_abs((0..k).map(|r| w[r * n + c]))))
                .collect()
        } else {
            vec![symmetric_scale(max_abs(w.iter().copied()))]
        };
        let values = w
            .iter()
            .enumerate()
            .map(|(i, &x)| quantize_i8(x, scales[if per_channel { i % n } else { 0 }]))
            .collect();
        QuantizedMatrix {
            k,
            n,
            values,
            scales,
        }
    }

    /// Scale of column `c`.
    pub fn scale(&self, c: usize) -> f32 {
        if self.scales.len() == 1 {
            self.scales[0]
        } else {
            self.scales[c]
        }
    }

    /// Back to floats.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .iter()
            .enumerate()
            .map(|(i, &q)| q as f32 * self.scale(i % self.n))
            .collect()
    }
}

/// Rows of an embedding table `[v, d]`, quantised with one scale per row.
pub fn quantize_rows(table: &[f32], v: usize, d: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(table.len(), v * d, "table shape mismatch");
    let mut q = Vec::with_capacity(table.len());
    let mut scales = Vec::with_capacity(v);
    for row in table.chunks(d) {
        let s = symmetric_scale(max_abs(row.iter().copied()));
        scales.push(s);
        q.extend(row.iter().map(|&x| quantize_i8(x, s)));
    }
    (q, scales)
}

/// Signal-to-quantisation-noise ratio in dB of `approx` against `exact`
/// (infinite when they are equal).
pub fn sqnr_db(exact: &[f32], approx: &[f32]) -> f64 {
    let signal: f64 = exact.iter().map(|&x| (x as f64).powi(2)).sum();
    let noise: f64 = exact
        .iter()
        .zip(approx)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// The `p`-th percentile (0–100) of `|x|`, by sorting a copy.
pub fn abs_percentile(values: &[f32], p: f64) -> f32 {
    let mut v: Vec<f32> = values
        .iter()
        .filter(|x| !x.is_nan())
        .map(|x| x.abs())
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f32::total_cmp);
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rounding_is_half_to_even_and_clamped() {
        assert_eq!(quantize_i8(0.5, 1.0), 0);
        assert_eq!(quantize_i8(1.5, 1.0), 2);
        assert_eq!(quantize_i8(-2.5, 1.0), -2);
        assert_eq!(quantize_i8(1000.0, 1.0), 127);
        assert_eq!(quantize_i8(-1000.0, 1.0), -127);
        assert_eq!(quantize_u8(-1000.0, 1.0, 10), 0);
        assert_eq!(quantize_u8(1000.0, 1.0, 10), 255);
    }

    #[test]
    fn degenerate_ranges_get_safe_parameters() {
        assert_eq!(symmetric_scale(0.0), 1.0);
        assert_eq!(symmetric_scale(f32::NAN), 1.0);
        assert_eq!(asymmetric_u8_params(0.0, 0.0), (1.0, 0));
        // A positive-only range still contains 0, with zero point 0.
        let (s, zp) = asymmetric_u8_params(2.0, 4.0);
        assert_eq!(zp, 0);
        assert!((s - 4.0 / 255.0).abs() < 1e-9);
    }

    #[test]
    fn per_channel_beats_per_tensor_on_uneven_columns() {
        // Column 0 is tiny, column 1 is large: per-tensor crushes column 0.
        let w = [0.001, 10.0, -0.002, -9.0, 0.0015, 5.0];
        let pc = QuantizedMatrix::new(&w, 3, 2, true);
        let pt = QuantizedMatrix::new(&w, 3, 2, false);
        assert_eq!(pc.scales.len(), 2);
        assert_eq!(pt.scales.len(), 1);
        let err = |q: &QuantizedMatrix| -> f32 {
            let d = q.dequantize();
            w.iter()
                .zip(&d)
                .map(|(a, b)| (a - b).abs())
                .step_by(2)
                .sum()
        };
        assert!(err(&pc) < err(&pt) / 10.0);
        assert!(sqnr_db(&w, &pc.dequantize()) > sqnr_db(&w, &pt.dequantize()));
    }

    #[test]
    fn percentile_of_known_values() {
        let v: Vec<f32> = (0..=100).map(|i| i as f32 - 50.0).collect();
        assert_eq!(abs_percentile(&v, 100.0), 50.0);
        assert_eq!(abs_percentile(&v, 0.0), 0.0);
        assert_eq!(abs_percentile(&[], 99.0), 0.0);
    }

    proptest! {
        #[test]
        fn weight_round_trip_error_is_at_most_half_a_step(
            (k, n, w) in (1usize..6, 1usize..6).prop_flat_map(|(k, n)| {
                (Just(k), Just(n), prop::collection::vec(-4.0f32..4.0, k * n))
            }),
            per_channel in any::<bool>(),
        ) {
            let q = QuantizedMatrix::new(&w, k, n, per_channel);
            let d = q.dequantize();
            for (i, (&x, &y)) in w.iter().zip(&d).enumerate() {
                let step = q.scale(i % n);
                prop_assert!((x - y).abs() <= step / 2.0 * 1.0001 + 1e-7,
                    "x {} y {} step {}", x, y, step);
                prop_assert!(q.values[i] >= -127);
            }
            // The extreme of every channel maps to ±127 exactly.
            if per_channel {
                for c in 0..n {
                    let m = max_abs((0..k).map(|r| w[r * n + c]));
                    if m > 0.0 {
                        prop_assert!((0..k).any(|r| q.values[r * n + c].unsigned_abs() == 127));
                    }
                }
            }
        }

        #[test]
        fn activation_round_trip_error_is_at_most_half_a_step(
            v in prop::collection::vec(-20.0f32..20.0, 1..64)
        ) {
            let min = v.iter().copied().fold(f32::INFINITY, f32::min);
            let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (s, zp) = asymmetric_u8_params(min, max);
            // Zero is exact.
            prop_assert_eq!((quantize_u8(0.0, s, zp) as f32 - zp as f32) * s, 0.0);
            for &x in &v {
                let q = quantize_u8(x, s, zp);
                let y = (q as f32 - zp as f32) * s;
                // Half a step from rounding, plus at most half a step where the
                // rounded zero point pushes a range end into the clamp.
                prop_assert!((x - y).abs() <= s * 1.0001 + 1e-6, "x {} y {} s {}", x, y, s);
            }
        }

        #[test]
        fn embedding_rows_round_trip(
            (v, d, t) in (1usize..5, 1usize..8).prop_flat_map(|(v, d)| {
                (Just(v), Just(d), prop::collection::vec(-1.0f32..1.0, v * d))
            })
        ) {
            let (q, s) = quantize_rows(&t, v, d);
            prop_assert_eq!(s.len(), v);
            for (i, (&x, &qq)) in t.iter().zip(&q).enumerate() {
                let y = qq as f32 * s[i / d];
                prop_assert!((x - y).abs() <= s[i / d] / 2.0 * 1.0001 + 1e-7);
            }
        }
    }
}
