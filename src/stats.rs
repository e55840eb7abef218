//! The statistics behind the claims' verdicts: a percentile bootstrap of a difference of means,
//! the Mann–Whitney U test with the Hodges–Lehmann shift and its Moses interval, Holm's correction
//! over tasks, how many seeds an inconclusive comparison would need, and the least-squares fits of
//! over-optimisation curves (Gao et al. 2022). Pure functions on plain numbers: the golden tests
//! below check them against values worked out by hand.
//!
//! Every test here is one-sided in the claim's favour and compares against a practical margin:
//! `p_holds` is the p-value of "the effect is at most the margin" (small: the claim holds),
//! `p_refuted` that of "the effect is at least the margin" (small: it does not).

use rand::{Rng, SeedableRng};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// An estimate with its two-sided interval and the two one-sided p-values against a margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// Point estimate of the effect (a − b, or the Hodges–Lehmann shift).
    pub estimate: f64,
    /// Lower end of the two-sided interval at the requested confidence.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// p-value of H0 "effect ≤ margin".
    pub p_holds: f64,
    /// p-value of H0 "effect ≥ margin".
    pub p_refuted: f64,
    /// Rank-biserial correlation in [−1, 1] (Mann–Whitney only): 2U/(nm) − 1.
    pub rank_biserial: Option<f64>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The q-quantile (linear interpolation between order statistics) of `sorted`.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    if lo == hi {
        return sorted[lo];
    }
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Percentile bootstrap of mean(a) − mean(b), resampling each group's runs (seeds) with
/// replacement, `resamples` times from `seed`. Both groups need at least one finite value.
pub fn bootstrap_mean_diff(
    a: &[f64],
    b: &[f64],
    margin: f64,
    confidence: f64,
    resamples: usize,
    seed: u64,
) -> Comparison {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draw = |v: &[f64]| {
        let s: f64 = (0..v.len()).map(|_| v[rng.random_range(0..v.len())]).sum();
        s / v.len() as f64
    };
    let mut boot: Vec<f64> = (0..resamples).map(|_| draw(a) - draw(b)).collect();
    boot.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    let below = boot.iter().filter(|&&x| x <= margin).count();
    let above = boot.iter().filter(|&&x| x >= margin).count();
    Comparison {
        estimate: mean(a) - mean(b),
        lo: quantile_sorted(&boot, tail),
        hi: quantile_sorted(&boot, 1.0 - tail),
        p_holds: (1 + below) as f64 / (resamples + 1) as f64,
        p_refuted: (1 + above) as f64 / (resamples + 1) as f64,
        rank_biserial: None,
    }
}

/// a − b, with equal values (infinities included: a run that never reached a level against
/// another that never did) giving 0 rather than NaN.
fn diff(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        a - b
    }
}

/// Mann–Whitney U of `a` over `b`: pairs with a > b count 1, ties ½.
pub fn u_statistic(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .map(|&x| {
            b.iter()
                .map(|&y| match x.total_cmp(&y) {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                })
                .sum::<f64>()
        })
        .sum()
}

/// Number of ways to split n + m distinct values into the groups with each U, for U = 0..=nm
/// (the null distribution without ties; counts, not probabilities).
pub fn u_null_counts(n: usize, m: usize) -> Vec<f64> {
    // f[i][j][u]: arrangements of i a's and j b's with U = u; the largest value is an a (adding
    // j to U) or a b.
    let mut prev: Vec<Vec<f64>> = vec![vec![1.0]; m + 1]; // i = 0: U = 0 only
    for i in 1..=n {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(m + 1);
        for j in 0..=m {
            let mut c = vec![0.0; i * j + 1];
            for (u, &x) in prev[j].iter().enumerate() {
                c[u + j] += x;
            }
            if j > 0 {
                for (u, &x) in cur[j - 1].iter().enumerate() {
                    c[u] += x;
                }
            }
            cur.push(c);
        }
        prev = cur;
    }
    prev.swap_remove(m)
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// One-sided permutation p-values of U for `a` over `b`: (P(U* ≥ U), P(U* ≤ U)) over every way
/// of relabelling the pooled values (ties kept as they are); a normal approximation with a tie
/// correction beyond 200,000 relabellings.
fn u_p_values(a: &[f64], b: &[f64]) -> (f64, f64) {
    let (n, m) = (a.len(), b.len());
    let u = u_statistic(a, b);
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    if binomial(n + m, n) <= 200_000.0 {
        let (mut ge, mut le, mut total) = (0usize, 0usize, 0usize);
        let mut idx: Vec<usize> = (0..n).collect();
        let eps = 1e-9;
        loop {
            let mut in_a = vec![false; n + m];
            for &i in &idx {
                in_a[i] = true;
            }
            let pick = |side: bool| -> Vec<f64> {
                pooled
                    .iter()
                    .zip(&in_a)
                    .filter(|(_, &x)| x == side)
                    .map(|(&v, _)| v)
                    .collect()
            };
            let (xa, xb) = (pick(true), pick(false));
            let us = u_statistic(&xa, &xb);
            total += 1;
            ge += usize::from(us >= u - eps);
            le += usize::from(us <= u + eps);
            // Next combination of n indices out of n + m, in lexicographic order.
            let mut k = n;
            while k > 0 && idx[k - 1] == k - 1 + m {
                k -= 1;
            }
            if k == 0 {
                break;
            }
            idx[k - 1] += 1;
            for t in k..n {
                idx[t] = idx[t - 1] + 1;
            }
        }
        return (ge as f64 / total as f64, le as f64 / total as f64);
    }
    // Mid-ranks and the tie-corrected variance of U.
    let mut sorted = pooled.clone();
    sorted.sort_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[i] {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        i = j + 1;
    }
    let (nf, mf) = (n as f64, m as f64);
    let nn = nf + mf;
    let var = nf * mf / 12.0 * ((nn + 1.0) - ties / (nn * (nn - 1.0)));
    let mu = nf * mf / 2.0;
    let z = Normal::standard();
    if var <= 0.0 {
        return (1.0, 1.0);
    }
    let sd = var.sqrt();
    (1.0 - z.cdf((u - 0.5 - mu) / sd), z.cdf((u + 0.5 - mu) / sd))
}

/// Mann–Whitney U test of "a is shifted above b by more than `margin`": the Hodges–Lehmann
/// estimate (median of every a_i − b_j), its Moses interval at `confidence` (order statistics of
/// those differences picked from U's exact null distribution; unbounded when the groups are too
/// small for that confidence), the one-sided permutation p-values of U after shifting a by the
/// margin, and the rank-biserial correlation of the unshifted groups.
pub fn mann_whitney(a: &[f64], b: &[f64], margin: f64, confidence: f64) -> Comparison {
    let (n, m) = (a.len(), b.len());
    let mut d: Vec<f64> = a
        .iter()
        .flat_map(|&x| b.iter().map(move |&y| diff(x, y)))
        .collect();
    d.sort_by(f64::total_cmp);
    let estimate = quantile_sorted(&d, 0.5);
    let counts = u_null_counts(n, m);
    let total: f64 = counts.iter().sum();
    let tail = (1.0 - confidence) / 2.0;
    // k: the most differences that can be cut from each end with P(U ≤ k − 1) ≤ tail.
    let mut k = 0;
    let mut cum = 0.0;
    for c in &counts {
        cum += c / total;
        if cum > tail + 1e-12 {
            break;
        }
        k += 1;
    }
    let (lo, hi) = if k == 0 {
        (f64::NEG_INFINITY, f64::INFINITY)
    } else {
        (d[k - 1], d[d.len() - k])
    };
    let shifted: Vec<f64> = a.iter().map(|x| x - margin).collect();
    let (p_holds, p_refuted) = u_p_values(&shifted, b);
    Comparison {
        estimate,
        lo,
        hi,
        p_holds,
        p_refuted,
        rank_biserial: Some(2.0 * u_statistic(a, b) / (n * m) as f64 - 1.0),
    }
}

/// Welch's t comparison of mean(a) − mean(b) against `margin`: the interval from Student's t
/// with the Welch–Satterthwaite degrees of freedom, and the two one-sided p-values. Valid for
/// small groups where a percentile bootstrap is not (it has no valid interval over 2–5 values).
/// Each group needs at least 2 finite values.
pub fn welch(a: &[f64], b: &[f64], margin: f64, confidence: f64) -> Comparison {
    let var = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (ea, eb) = (var(a) / na, var(b) / nb);
    let estimate = mean(a) - mean(b);
    let se = (ea + eb).sqrt();
    let tail = (1.0 - confidence) / 2.0;
    if se <= 0.0 || !se.is_finite() {
        // No spread at all: the difference is known exactly.
        let (p_holds, p_refuted) = match estimate.total_cmp(&margin) {
            std::cmp::Ordering::Greater => (0.0, 1.0),
            std::cmp::Ordering::Less => (1.0, 0.0),
            std::cmp::Ordering::Equal => (0.5, 0.5),
        };
        return Comparison {
            estimate,
            lo: estimate,
            hi: estimate,
            p_holds,
            p_refuted,
            rank_biserial: None,
        };
    }
    let df = (ea + eb).powi(2) / (ea * ea / (na - 1.0) + eb * eb / (nb - 1.0));
    let t = StudentsT::new(0.0, 1.0, df).expect("positive degrees of freedom");
    let crit = t.inverse_cdf(1.0 - tail);
    let z = (estimate - margin) / se;
    Comparison {
        estimate,
        lo: estimate - crit * se,
        hi: estimate + crit * se,
        p_holds: 1.0 - t.cdf(z),
        p_refuted: t.cdf(z),
        rank_biserial: None,
    }
}

/// The smallest one-sided p-value an exact rank test of `n` against `m` values can give:
/// 1 / C(n + m, n), when every value of one group lies beyond every value of the other.
pub fn least_rank_p(n: usize, m: usize) -> f64 {
    1.0 / binomial(n + m, n)
}

/// Whether `n` and `m` seeds could decide a comparison at one-sided level `alpha` in a Holm
/// family of `family` tests, by the strictest exact standard: the smallest p a rank test can
/// reach, times the family size (Holm's first step), must be at most `alpha`. Below that no
/// data at all could make a distribution-free test reject, so no verdict is given.
pub fn seeds_can_decide(n: usize, m: usize, alpha: f64, family: usize) -> bool {
    least_rank_p(n, m) * family.max(1) as f64 <= alpha
}

/// The fewest seeds per agent at which [`seeds_can_decide`] holds.
pub fn seeds_to_decide(alpha: f64, family: usize) -> usize {
    (2..)
        .find(|&n| seeds_can_decide(n, n, alpha, family))
        .unwrap_or(2)
}

/// A p-value as a report prints it: three decimals, and `< 0.001` below that (never `0.000`,
/// which no permutation or resampling test can give).
pub fn format_p(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// Holm's step-down adjustment of `p` (any order): the adjusted p-values, in the same order.
/// Rejecting where the adjusted value is at most α controls the family-wise error at α.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// Seeds per group an interval of the observed width would need to clear the margin, if the
/// estimate stayed where it is: the half-width shrinks as 1/√n. `None` when it cannot (the
/// estimate sits on the margin, or the interval is unbounded).
pub fn seeds_to_resolve(n: usize, c: &Comparison, margin: f64) -> Option<usize> {
    let half = (c.hi - c.lo) / 2.0;
    let gap = (c.estimate - margin).abs();
    if !half.is_finite() || !gap.is_finite() || gap <= 0.0 {
        return None;
    }
    let need = (n as f64 * (half / gap).powi(2)).ceil() as usize;
    Some(need.max(n + 1))
}

/// A least-squares fit y ≈ α·x1 − β·x2 (no intercept), with intervals from the t distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// α.
    pub alpha: f64,
    /// (lo, hi) of α at the requested confidence.
    pub alpha_ci: (f64, f64),
    /// β.
    pub beta: f64,
    /// (lo, hi) of β.
    pub beta_ci: (f64, f64),
    /// Share of the (uncentred) variation of y the fit explains: 1 − SSE / Σy².
    pub r2: f64,
    /// Points fitted.
    pub n: usize,
}

/// Fit y ≈ α·x1 − β·x2 by least squares (2 × 2 normal equations); `None` with fewer than three
/// points or collinear regressors.
pub fn fit_two(x1: &[f64], x2: &[f64], y: &[f64], confidence: f64) -> Option<Fit> {
    let n = y.len();
    if n < 3 || x1.len() != n || x2.len() != n {
        return None;
    }
    // Regressors u = x1, v = −x2, so y ≈ α u + β v.
    let (mut suu, mut svv, mut suv, mut suy, mut svy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        let (u, v) = (x1[i], -x2[i]);
        suu += u * u;
        svv += v * v;
        suv += u * v;
        suy += u * y[i];
        svy += v * y[i];
        syy += y[i] * y[i];
    }
    let det = suu * svv - suv * suv;
    if det.abs() <= 1e-12 * suu.max(svv).max(1e-300).powi(2) {
        return None;
    }
    let alpha = (svv * suy - suv * svy) / det;
    let beta = (suu * svy - suv * suy) / det;
    let sse: f64 = (0..n)
        .map(|i| {
            let r = y[i] - alpha * x1[i] + beta * x2[i];
            r * r
        })
        .sum();
    let s2 = sse / (n - 2) as f64;
    let (se_a, se_b) = ((s2 * svv / det).sqrt(), (s2 * suu / det).sqrt());
    let t = StudentsT::new(0.0, 1.0, (n - 2) as f64)
        .ok()?
        .inverse_cdf(1.0 - (1.0 - confidence) / 2.0);
    Some(Fit {
        alpha,
        alpha_ci: (alpha - t * se_a, alpha + t * se_a),
        beta,
        beta_ci: (beta - t * se_b, beta + t * se_b),
        r2: if syy > 0.0 { 1.0 - sse / syy } else { f64::NAN },
        n,
    })
}

/// Linear interpolation of a curve at `x`: points sorted by x (equal x averaged); `None` outside
/// the curve's range.
pub fn interpolate(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let mut raw: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    raw.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut p: Vec<(f64, f64)> = Vec::with_capacity(raw.len());
    for group in raw.chunk_by(|a, b| a.0 == b.0) {
        let ys: Vec<f64> = group.iter().map(|q| q.1).collect();
        p.push((group[0].0, mean(&ys)));
    }
    let first = p.first()?;
    let last = p.last()?;
    if x < first.0 || x > last.0 {
        return None;
    }
    if let Some(q) = p.iter().find(|q| q.0 == x) {
        return Some(q.1);
    }
    let i = p.iter().position(|q| q.0 > x)?;
    let (x0, y0) = p[i - 1];
    let (x1, y1) = p[i];
    Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn u_null_counts_match_the_hand_enumeration() {
        // n = m = 2: the 6 orders of aabb: U = 0 (bbaa… a below every b) once, 1 once, 2 twice,
        // 3 once, 4 once.
        assert_eq!(u_null_counts(2, 2), vec![1.0, 1.0, 2.0, 1.0, 1.0]);
        // n = m = 5: 252 orders; U = 0, 1, 2, 3 happen 1, 1, 2, 3 times (partitions of u into at
        // most 5 parts of size ≤ 5).
        let c = u_null_counts(5, 5);
        assert_eq!(c.iter().sum::<f64>(), 252.0);
        assert_eq!(&c[..4], &[1.0, 1.0, 2.0, 3.0]);
        assert_eq!(u_null_counts(1, 3), vec![1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn mann_whitney_on_separated_groups() {
        // Every a above every b: U = 25, only 1 of the 252 relabellings reaches it.
        let a = [1.0, 1.1, 1.2, 1.3, 1.4];
        let b = [0.0, 0.1, 0.2, 0.3, 0.4];
        let c = mann_whitney(&a, &b, 0.0, 0.95);
        assert!(close(c.p_holds, 1.0 / 252.0, 1e-12), "{c:?}");
        assert!(close(c.p_refuted, 1.0, 1e-12));
        assert_eq!(c.rank_biserial, Some(1.0));
        // The 25 differences are 0.6, 0.7 (×2), 0.8 (×3), 0.9 (×4), 1.0 (×5), 1.1 (×4), 1.2 (×3),
        // 1.3 (×2), 1.4: median 1.0; P(U ≤ 2) = 4/252 ≤ 0.025 < P(U ≤ 3) = 7/252, so k = 3 and
        // the interval is the 3rd smallest and 3rd largest: [0.7, 1.3].
        assert!(close(c.estimate, 1.0, 1e-12));
        assert!(close(c.lo, 0.7, 1e-12) && close(c.hi, 1.3, 1e-12), "{c:?}");
        // A margin of 0.65 makes a − 0.65 = [0.35, …, 0.75]: U = 21 + ... counted below.
        let c = mann_whitney(&a, &b, 0.65, 0.95);
        let shifted: Vec<f64> = a.iter().map(|x| x - 0.65).collect();
        let u = u_statistic(&shifted, &b);
        // 0.35 beats 4 b's, 0.45 … 0.75 beat all 5: U = 4 + 20 = 24; P(U* ≥ 24) = 2/252.
        assert_eq!(u, 24.0);
        assert!(close(c.p_holds, 2.0 / 252.0, 1e-12), "{c:?}");
    }

    #[test]
    fn mann_whitney_with_ties_and_infinities() {
        // Costs where two runs never reached the level (∞): ∞ ties with ∞ (difference 0).
        let a = [1.0, 2.0, f64::INFINITY];
        let b = [f64::INFINITY, f64::INFINITY, 3.0];
        // U of a over b: 1 and 2 beat nothing (0), ∞ beats 3 (1) and ties two ∞ (0.5 + 0.5): U = 2.
        assert_eq!(u_statistic(&a, &b), 2.0);
        let c = mann_whitney(&a, &b, 0.0, 0.9);
        // Differences: −∞ four times, 1 − 3 = −2, 2 − 3 = −1, ∞ − ∞ = 0 twice, ∞ − 3 = ∞:
        // the median of the nine is −2.
        assert_eq!(c.estimate, -2.0, "{c:?}");
        assert!(c.p_refuted < c.p_holds);
    }

    #[test]
    fn bootstrap_covers_the_difference_and_is_seeded() {
        let a = [0.6, 0.7, 0.8, 0.65, 0.75];
        let b = [0.1, 0.2, 0.15, 0.25, 0.3];
        let c = bootstrap_mean_diff(&a, &b, 0.0, 0.95, 4000, 7);
        // Means 0.70 and 0.20: 0.5; resampled means stay within [0.6, 0.8] and [0.1, 0.3], so every
        // resampled difference lies in [0.3, 0.7] and none is ≤ 0.
        assert!(close(c.estimate, 0.5, 1e-12));
        assert!(
            c.lo >= 0.3 && c.hi <= 0.7 && c.lo < 0.5 && c.hi > 0.5,
            "{c:?}"
        );
        assert!(close(c.p_holds, 1.0 / 4001.0, 1e-12));
        assert!(close(c.p_refuted, 1.0, 1e-12));
        assert_eq!(c, bootstrap_mean_diff(&a, &b, 0.0, 0.95, 4000, 7));
        // A margin of 0.8 lies above every resampled difference: refuted.
        let c = bootstrap_mean_diff(&a, &b, 0.8, 0.95, 4000, 7);
        assert!(close(c.p_refuted, 1.0 / 4001.0, 1e-12) && close(c.p_holds, 1.0, 1e-12));
    }

    #[test]
    fn holm_adjusts_in_step_down_order() {
        // Sorted 0.01, 0.02, 0.04 with m = 3: 3 × 0.01 = 0.03, max(0.03, 2 × 0.02) = 0.04,
        // max(0.04, 1 × 0.04) = 0.04; returned in the input order.
        let adj = holm(&[0.04, 0.01, 0.02]);
        for (x, y) in adj.iter().zip([0.04, 0.03, 0.04]) {
            assert!(close(*x, y, 1e-12), "{adj:?}");
        }
        // Monotone: a large first p-value caps what follows; and capped at 1.
        let adj = holm(&[0.3, 0.5, 0.9]);
        for (x, y) in adj.iter().zip([0.9, 1.0, 1.0]) {
            assert!(close(*x, y, 1e-12), "{adj:?}");
        }
    }

    #[test]
    fn seeds_to_resolve_scales_with_the_squared_width() {
        // Half-width 0.2 at n = 4 around 0.1 with margin 0: (0.2 / 0.1)² × 4 = 16 seeds.
        let c = Comparison {
            estimate: 0.1,
            lo: -0.1,
            hi: 0.3,
            p_holds: 0.2,
            p_refuted: 0.8,
            rank_biserial: None,
        };
        assert_eq!(seeds_to_resolve(4, &c, 0.0), Some(16));
        assert_eq!(seeds_to_resolve(4, &c, 0.1), None);
    }

    #[test]
    fn fit_two_recovers_an_exact_curve() {
        // gold = d (2 − 0.5 log d) at d = 0.5, 1, 2, 3: exact, so α = 2, β = 0.5, R² = 1.
        let d = [0.5f64, 1.0, 2.0, 3.0];
        let x2: Vec<f64> = d.iter().map(|x| x * x.ln()).collect();
        let y: Vec<f64> = d.iter().map(|x| x * (2.0 - 0.5 * x.ln())).collect();
        let f = fit_two(&d, &x2, &y, 0.95).unwrap();
        assert!(
            close(f.alpha, 2.0, 1e-9) && close(f.beta, 0.5, 1e-9),
            "{f:?}"
        );
        assert!(close(f.r2, 1.0, 1e-12));
        assert!(close(f.alpha_ci.0, 2.0, 1e-6) && close(f.alpha_ci.1, 2.0, 1e-6));
        // Hand case with noise: y = [1, 2, 2] on x1 = [1, 2, 3], x2 = [0, 0, 1]:
        // normal equations [[14, −3], [−3, 1]] (α, β) = [11, −2] → α = 5/5 = 1, β = 1.
        let f = fit_two(&[1.0, 2.0, 3.0], &[0.0, 0.0, 1.0], &[1.0, 2.0, 2.0], 0.95).unwrap();
        assert!(
            close(f.alpha, 1.0, 1e-12) && close(f.beta, 1.0, 1e-12),
            "{f:?}"
        );
        // Residuals 0, 0, 0: a perfect fit again, with one degree of freedom.
        assert!(close(f.r2, 1.0, 1e-12));
        assert!(fit_two(&[1.0, 2.0], &[0.0, 1.0], &[1.0, 2.0], 0.95).is_none());
    }

    #[test]
    fn interpolation_between_points() {
        let p = [(0.0, 0.0), (2.0, 1.0), (1.0, 1.0), (1.0, 0.0)];
        // Points at x = 1 average to 0.5; halfway between 1 and 2: 0.75.
        assert_eq!(interpolate(&p, 1.0), Some(0.5));
        assert_eq!(interpolate(&p, 1.5), Some(0.75));
        assert_eq!(interpolate(&p, 0.5), Some(0.25));
        assert_eq!(interpolate(&p, 2.5), None);
    }

    #[test]
    fn exact_tests_cannot_decide_below_four_seeds_a_side() {
        // C(4, 2) = 6, C(6, 3) = 20, C(8, 4) = 70, C(10, 5) = 252.
        assert!((least_rank_p(2, 2) - 1.0 / 6.0).abs() < 1e-12);
        assert!((least_rank_p(3, 3) - 0.05).abs() < 1e-12);
        assert!((least_rank_p(5, 5) - 1.0 / 252.0).abs() < 1e-12);
        // One-sided 0.025 (a two-sided 95% level): 2 and 3 a side never reach it, 4 does alone,
        // and Holm over 3 tasks needs 5 (3/70 = 0.043 > 0.025 ≥ 3/252 = 0.012).
        assert!(!seeds_can_decide(2, 2, 0.025, 1));
        assert!(!seeds_can_decide(3, 3, 0.025, 1));
        assert!(seeds_can_decide(4, 4, 0.025, 1));
        assert!(!seeds_can_decide(4, 4, 0.025, 3));
        assert!(seeds_can_decide(5, 5, 0.025, 3));
        assert_eq!(seeds_to_decide(0.025, 1), 4);
        assert_eq!(seeds_to_decide(0.025, 3), 5);
    }

    #[test]
    fn welch_matches_hand_worked_values_at_two_three_and_five_seeds() {
        // n = 2 each: a = [1, 3], b = [0, 0]: d = 2, s²_a = 2, s²_b = 0, se = √(2/2) = 1,
        // df = 1 (all the variance is a's, n − 1 = 1): t₀.₉₇₅(1) = 12.706, interval [−10.71, 14.71].
        let c = welch(&[1.0, 3.0], &[0.0, 0.0], 0.0, 0.95);
        assert!((c.estimate - 2.0).abs() < 1e-12);
        assert!((c.hi - (2.0 + 12.706_204_736)).abs() < 1e-6, "{c:?}");
        // P(T₁ ≥ 2) = ½ − atan(2)/π = 0.147584.
        assert!((c.p_holds - 0.147_583_617_650_433_3).abs() < 1e-9, "{c:?}");
        assert!((c.p_holds + c.p_refuted - 1.0).abs() < 1e-12);
        // n = 3 each, equal variances 1: a = [1, 2, 3], b = [0, 1, 2]: d = 1, se = √(2/3),
        // df = 4: t₀.₉₇₅(4) = 2.776445, half-width 2.776445 · 0.816497 = 2.266949.
        let c = welch(&[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0], 0.0, 0.95);
        assert!((c.hi - c.estimate - 2.266_949).abs() < 1e-5, "{c:?}");
        // n = 5 each, identical values but for a shift of 0.5 against a margin of 0.5: z = 0,
        // so each one-sided p is ½.
        let b = [0.1, 0.4, 0.2, 0.9, 0.5];
        let a: Vec<f64> = b.iter().map(|x| x + 0.5).collect();
        let c = welch(&a, &b, 0.5, 0.95);
        assert!(
            (c.p_holds - 0.5).abs() < 1e-9 && (c.p_refuted - 0.5).abs() < 1e-9,
            "{c:?}"
        );
        // No spread: the sign of d − margin decides.
        let c = welch(&[1.0, 1.0], &[0.0, 0.0], 0.5, 0.95);
        assert_eq!((c.p_holds, c.p_refuted), (0.0, 1.0));
    }

    #[test]
    fn p_values_never_print_as_zero() {
        assert_eq!(format_p(0.0), "< 0.001");
        assert_eq!(format_p(1.0 / 10_001.0), "< 0.001");
        assert_eq!(format_p(0.0123), "0.012");
        assert_eq!(format_p(f64::NAN), "–");
    }
}
