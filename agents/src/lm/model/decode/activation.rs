//! GELU on the host, in place over a decoding step's MLP activations, branch-free so that the
//! loops vectorise. Both forms libtorch's `gelu` offers: the exact one,
//! `x·Φ(x) = ½·x·(1 + erf(x/√2))`, and the tanh approximation
//! `½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (OpenAI's GPT-2).

use super::attention::exp;

/// `erf(z)` for `z ≥ 0` by Abramowitz & Stegun 7.1.26 (absolute error under 1.5·10⁻⁷, the same
/// rational form libtorch's vectorised `erf` takes): `1 − t·P(t)·e^{−z²}` with `t = 1/(1 + p·z)`.
#[inline(always)]
fn erf_nonneg(z: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let t = 1.0 / (1.0 + P * z);
    let poly = A.iter().rev().fold(0.0, |acc, &a| acc * t + a) * t;
    1.0 - poly * exp(-z * z)
}

/// `tanh(u)` for `u ≥ 0`: `(1 − e^{−2u}) / (1 + e^{−2u})`, whose exponential never overflows.
#[inline(always)]
fn tanh_nonneg(u: f32) -> f32 {
    let e = exp(-2.0 * u);
    (1.0 - e) / (1.0 + e)
}

/// Exact GELU over `xs`, in place.
#[inline(always)]
pub(super) fn gelu_erf(xs: &mut [f32]) {
    for x in xs {
        let e = erf_nonneg(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
        *x *= 0.5 * (1.0 + e.copysign(*x));
    }
}

/// GELU with the tanh approximation over `xs`, in place.
#[inline(always)]
pub(super) fn gelu_tanh(xs: &mut [f32]) {
    const K: f32 = 0.797_884_6; // √(2/π)
    for x in xs {
        let u = K * (*x + 0.044_715 * *x * *x * *x);
        *x *= 0.5 * (1.0 + tanh_nonneg(u.abs()).copysign(u));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn both_forms_match_libtorch_gelu_over_a_wide_range() {
        // −12..12 in steps of 1/64, and the extremes where the exponential underflows.
        let mut xs: Vec<f32> = (-768..=768).map(|i| i as f32 / 64.0).collect();
        xs.extend([-1e4, -90.0, 90.0, 1e4]);
        for (approximate, f) in [
            ("none", gelu_erf as fn(&mut [f32])),
            ("tanh", gelu_tanh as fn(&mut [f32])),
        ] {
            let want: Vec<f32> = Vec::try_from(
                Tensor::from_slice(&xs)
                    .to_kind(Kind::Float)
                    .gelu(approximate),
            )
            .unwrap();
            let mut got = xs.clone();
            f(&mut got);
            for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
                // Relative to the larger of |GELU| and 1: the erf form's absolute error is
                // ~10⁻⁷ of x where GELU itself vanishes.
                let err = (g - w).abs() / w.abs().max(1.0);
                assert!(err < 1e-6, "{approximate} gelu({x}) = {g}, libtorch {w}");
            }
        }
        // Signs and zeros by hand: GELU(0) = 0, GELU(x) → x for large x, → 0 for large −x.
        let mut v = [0.0f32, 50.0, -50.0];
        gelu_erf(&mut v);
        assert_eq!(v, [0.0, 50.0, 0.0]);
    }
}
