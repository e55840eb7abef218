//! Decoding attention on the host, fused: for each sequence-head, one pass over its cached keys
//! (the scores, with the additive mask), a softmax, and one pass over its cached values — each
//! cached row read once, the next row's lines prefetched while this one is read. libtorch's route
//! for one query row is two batched matmuls around a softmax: an MKL matrix-vector call per
//! sequence-head for the scores and another for the values, each with its own overhead, and the
//! intermediates written out and read back. The rows are split over libtorch's threads
//! ([`super::host`]) and vectorised for AVX2 where the CPU has it (checked at run time).

use super::host::{self, avx2_dispatch};

/// Lanes of the vectorised loops: one AVX2 register of f32.
const W: usize = 8;
/// Below this many sequence-heads one thread does them all (a parallel region's start and end
/// cost more than the work).
const MIN_SPLIT: usize = 16;

/// The shapes of one call: `rows` sequence-heads of `d` channels, a cache of `t_max` slots per
/// row of which the first `len` are read, and `bias_len ≥ len` mask entries per row.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub rows: usize,
    pub d: usize,
    pub t_max: usize,
    pub len: usize,
    pub bias_len: usize,
}

/// Where each row reads its first `slots` positions. Rows are sequence-heads, `heads` per
/// sequence; sequence `i` reads them from sequence `first[i]` (≤ i), which holds the same copy
/// (the G samples of a prompt share its prefill). Reading one copy per group, while it is still
/// in the CPU's caches, instead of G copies from memory cuts the kernel's traffic by the prompt's
/// share of the positions times (G − 1)/G. Rows count from `offset`: a thread given rows
/// `offset..` reads a source below them from the row's own copy instead.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sources<'a> {
    pub slots: usize,
    pub first: &'a [usize],
    pub heads: usize,
    pub offset: usize,
}

impl<'a> Sources<'a> {
    /// Every row reads its own copy.
    pub(super) const NONE: Sources<'static> = Sources {
        slots: 0,
        first: &[],
        heads: 1,
        offset: 0,
    };

    /// The same sources for the rows from `offset` on (counted from this one's).
    pub(super) fn from(self, offset: usize) -> Self {
        Self {
            offset: self.offset + offset,
            ..self
        }
    }

    /// The row (counted from `offset`) whose first `slots` positions row `r` reads.
    #[inline(always)]
    fn of(&self, r: usize) -> usize {
        if self.slots == 0 {
            return r;
        }
        let row = r + self.offset;
        let source = self.first[row / self.heads] * self.heads + row % self.heads;
        source.checked_sub(self.offset).unwrap_or(r)
    }
}

/// `out[r] = softmax(q[r]·K[r]ᵀ / √d + bias[r]) · V[r]` for every row `r`: `q`, `out` `[rows, d]`,
/// `keys`, `values` `[rows, t_max, d]` (the first `len` slots read, the first `sources.slots`
/// of them from the row `sources` names), `bias` `[rows, bias_len]` (0 or −∞; the first `len`
/// read). A row whose keys are all masked gets zeros.
pub(super) fn attend(
    s: Shape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    bias: &[f32],
    sources: Sources<'_>,
    out: &mut [f32],
) {
    assert!(
        s.d > 0 && s.len >= 1 && s.len <= s.t_max && s.len <= s.bias_len,
        "attention shape {s:?}"
    );
    assert!(q.len() == s.rows * s.d && out.len() == q.len());
    assert!(keys.len() == s.rows * s.t_max * s.d && values.len() == keys.len());
    assert!(bias.len() == s.rows * s.bias_len);
    assert!(sources.slots == 0 || sources.first.len() * sources.heads >= sources.offset + s.rows);
    let out_at = out.as_mut_ptr() as usize;
    let (d, kv) = (s.d, s.t_max * s.d);
    host::split_rows(s.rows, MIN_SPLIT, &|rows| {
        // SAFETY: the threads' row ranges are disjoint and inside `0..s.rows`, so their parts
        // of `out` are too; `out` is borrowed until every thread is done.
        let out = unsafe {
            std::slice::from_raw_parts_mut((out_at as *mut f32).add(rows.start * d), rows.len() * d)
        };
        let part = Shape {
            rows: rows.len(),
            ..s
        };
        let q = &q[rows.start * d..rows.end * d];
        let keys = &keys[rows.start * kv..rows.end * kv];
        let values = &values[rows.start * kv..rows.end * kv];
        let bias = &bias[rows.start * s.bias_len..rows.end * s.bias_len];
        attend_part(part, q, keys, values, bias, sources.from(rows.start), out);
    });
}

avx2_dispatch! {
    /// [`attend`]'s arithmetic for all of `s.rows` on the calling thread (the same slices).
    pub(super) fn attend_part(
        s: Shape,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        bias: &[f32],
        sources: Sources<'_>,
        out: &mut [f32],
    ) {
        // The common head widths get a copy compiled for their width, which keeps a row's
        // output in registers across its keys (in `out` it is a load and a store per key, on
        // the loop's critical path) and unrolls the per-key loops.
        match s.d {
            32 => attend_rows::<32>(s, q, keys, values, bias, sources, out),
            64 => attend_rows::<64>(s, q, keys, values, bias, sources, out),
            128 => attend_rows::<128>(s, q, keys, values, bias, sources, out),
            _ => attend_rows::<0>(s, q, keys, values, bias, sources, out),
        }
    }
}

/// [`attend_part`] for heads `D` wide, or for any width `s.d` when `D` is 0.
#[inline(always)]
fn attend_rows<const D: usize>(
    s: Shape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    bias: &[f32],
    sources: Sources<'_>,
    out: &mut [f32],
) {
    let d = if D > 0 { D } else { s.d };
    let scale = 1.0 / (d as f32).sqrt();
    let shared = sources.slots.min(s.len);
    let slots = |x, r| row_slots(x, s, r, sources.of(r), shared);
    // Padded to whole lanes with −∞, which the exponential turns into 0.
    let mut scores = vec![f32::NEG_INFINITY; s.len.next_multiple_of(W)];
    for r in 0..s.rows {
        let q = &q[r * d..][..d];
        let bias = &bias[r * s.bias_len..][..s.len];
        let next = (r + 1 < s.rows).then_some(r + 1);
        let mut ahead = next.map(|n| slots(keys, n));
        let live = scores.iter_mut().zip(slots(keys, r)).zip(bias);
        for ((score, key), b) in live {
            if let Some(line) = ahead.as_mut().and_then(|a| a.next()) {
                prefetch(line);
            }
            let dot = if D > 0 {
                dot_fixed::<D>(q, key)
            } else {
                dot(q, key)
            };
            *score = dot * scale + b;
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let o = &mut out[r * d..][..d];
        o.fill(0.0);
        if max == f32::NEG_INFINITY {
            continue;
        }
        let mut total = [0f32; W];
        for lanes in scores.chunks_exact_mut(W) {
            for i in 0..W {
                lanes[i] = exp(lanes[i] - max);
                total[i] += lanes[i];
            }
        }
        let mut ahead = next.map(|n| slots(values, n));
        let norm = 1.0 / total.iter().sum::<f32>();
        // At a fixed width the sum runs in a local array, which lives in registers.
        let mut acc = [0f32; D];
        let sum: &mut [f32] = if D > 0 { &mut acc } else { &mut *o };
        for (p, value) in scores.iter().zip(slots(values, r)) {
            if let Some(line) = ahead.as_mut().and_then(|a| a.next()) {
                prefetch(line);
            }
            for (a, x) in sum.iter_mut().zip(value) {
                *a += p * x;
            }
        }
        for a in sum.iter_mut() {
            *a *= norm;
        }
        if D > 0 {
            o.copy_from_slice(&acc);
        }
        scores.fill(f32::NEG_INFINITY);
    }
}

/// Row `r`'s first `s.len` slots of `x [rows, t_max, d]`, one `[d]` slice each: the first
/// `shared` from row `src`'s copy, the rest from its own.
#[inline(always)]
fn row_slots(
    x: &[f32],
    s: Shape,
    r: usize,
    src: usize,
    shared: usize,
) -> std::iter::Chain<std::slice::ChunksExact<'_, f32>, std::slice::ChunksExact<'_, f32>> {
    let (d, kv) = (s.d, s.t_max * s.d);
    x[src * kv..][..shared * d]
        .chunks_exact(d)
        .chain(x[r * kv + shared * d..][..(s.len - shared) * d].chunks_exact(d))
}

/// Asks for the cache lines of `x` ahead of their reads: the hardware's prefetchers stop at page
/// bounds, and each row's keys are a few KiB at a stride of `t_max` slots.
#[inline(always)]
fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch only hints the cache, at an address inside a live slice.
        unsafe { _mm_prefetch(line.as_ptr() as *const i8, _MM_HINT_T0) };
    }
}

/// `a·b` over W lanes, so that it vectorises (a serial sum cannot be reassociated).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; W];
    let (ac, bc) = (a.chunks_exact(W), b.chunks_exact(W));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`dot`] for slices `D` long (a multiple of W), fully unrolled.
#[inline(always)]
fn dot_fixed<const D: usize>(a: &[f32], b: &[f32]) -> f32 {
    let (a, b): (&[f32; D], &[f32; D]) = (a.try_into().unwrap(), b.try_into().unwrap());
    let mut acc = [0f32; W];
    for c in (0..D).step_by(W) {
        for l in 0..W {
            acc[l] += a[c + l] * b[c + l];
        }
    }
    acc.iter().sum()
}

/// `eˣ` for `x ≤ 0` (a softmax's shifted scores), within 2 ulp, and 0 below −87 (and at −∞):
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (ln 2 split in two so that `n·ln 2` is exact enough),
/// `eʳ` by its Taylor series to degree 7 (the remainder is under 2⁻²⁴ relative), and `2ⁿ` written
/// into the exponent bits. Branch-free, so that a loop over it vectorises.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer and leaves it in the low bits of the mantissa, where
    // integer arithmetic reads it (a float-to-int cast would not vectorise).
    const ROUND: f32 = 12_582_912.0;
    let y = x.max(-87.0);
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let two_n = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    // All ones where x ≥ −87, zeros below (and at −∞): a select without a branch.
    let keep = ((x >= -87.0) as u32).wrapping_neg();
    f32::from_bits((p * two_n).to_bits() & keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_correctly_rounded_value() {
        let mut worst = 0f64;
        for i in 0..87_000 {
            let x = -(i as f32) * 1e-3;
            let want = (x as f64).exp();
            let ulp = (want as f32).next_up() as f64 - want as f32 as f64;
            worst = worst.max((exp(x) as f64 - want).abs() / ulp);
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-87.01), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    /// The same attention in f64, one row at a time, straight from its definition.
    fn naive(s: Shape, q: &[f32], k: &[f32], v: &[f32], bias: &[f32]) -> Vec<f64> {
        let mut out = Vec::new();
        for r in 0..s.rows {
            let score = |j: usize| {
                let key = &k[(r * s.t_max + j) * s.d..][..s.d];
                let dot: f64 = (0..s.d)
                    .map(|c| q[r * s.d + c] as f64 * key[c] as f64)
                    .sum();
                dot / (s.d as f64).sqrt() + bias[r * s.bias_len + j] as f64
            };
            let max = (0..s.len).map(score).fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = (0..s.len).map(|j| (score(j) - max).exp()).collect();
            let total: f64 = w.iter().sum();
            for c in 0..s.d {
                let acc: f64 = (0..s.len)
                    .map(|j| w[j] * v[(r * s.t_max + j) * s.d + c] as f64)
                    .sum();
                out.push(if max == f64::NEG_INFINITY {
                    0.0
                } else {
                    acc / total
                });
            }
        }
        out
    }

    #[test]
    fn fused_attention_matches_its_definition_with_masks_and_odd_widths() {
        // d = 12 leaves a tail after the 8 lanes; len 5 of 7 slots; 3 rows, so two threads get
        // unequal shares; row 1 masks two keys, row 2 masks all of them.
        for (d, rows) in [(12, 3), (32, 40), (64, 5), (128, 3)] {
            let s = Shape {
                rows,
                d,
                t_max: 7,
                len: 5,
                bias_len: 9,
            };
            let val = |i: usize, m: usize| ((i * 37 + m) % 23) as f32 / 11.0 - 1.0;
            let q: Vec<f32> = (0..rows * d).map(|i| val(i, 1)).collect();
            let k: Vec<f32> = (0..rows * 7 * d).map(|i| val(i, 5)).collect();
            let v: Vec<f32> = (0..rows * 7 * d).map(|i| val(i, 9)).collect();
            let mut bias = vec![0f32; rows * 9];
            bias[9 + 1] = f32::NEG_INFINITY;
            bias[9 + 3] = f32::NEG_INFINITY;
            bias[18..23].fill(f32::NEG_INFINITY);
            let mut out = vec![f32::NAN; rows * d];
            attend(s, &q, &k, &v, &bias, Sources::NONE, &mut out);
            let want = naive(s, &q, &k, &v, &bias);
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (*o as f64 - w).abs() < 1e-5,
                    "d {d}, element {i}: {o} vs {w}"
                );
            }
            assert!(out[2 * d..3 * d].iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    fn shared_slots_are_read_from_the_source_row() {
        // 40 rows in groups of 4, 3 shared slots of len 5: each row reads its group's first row
        // for slots 0..3 and its own for 3..5.
        let (rows, d, t_max, len) = (40, 16, 6, 5);
        let s = Shape {
            rows,
            d,
            t_max,
            len,
            bias_len: len,
        };
        let val = |i: usize, m: usize| ((i * 29 + m) % 19) as f32 / 9.0 - 1.0;
        let q: Vec<f32> = (0..rows * d).map(|i| val(i, 2)).collect();
        let mut k: Vec<f32> = (0..rows * t_max * d).map(|i| val(i, 3)).collect();
        let mut v: Vec<f32> = (0..rows * t_max * d).map(|i| val(i, 7)).collect();
        let first: Vec<usize> = (0..rows).map(|r| r / 4 * 4).collect();
        let sources = Sources {
            slots: 3,
            first: &first,
            heads: 1,
            offset: 0,
        };
        let bias = vec![0f32; rows * len];
        // True copies: every row's shared slots equal its source's.
        for (r, &f) in first.iter().enumerate() {
            let (to, from) = (r * t_max * d, f * t_max * d);
            k.copy_within(from..from + 3 * d, to);
            v.copy_within(from..from + 3 * d, to);
        }
        let want = naive(s, &q, &k, &v, &bias);
        let close = |out: &[f32]| {
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                assert!((*o as f64 - w).abs() < 1e-5, "element {i}: {o} vs {w}");
            }
        };
        // Split over the threads (a range may start inside a group: its first rows read their
        // own copies, which are true).
        let mut out = vec![f32::NAN; rows * d];
        attend(s, &q, &k, &v, &bias, sources, &mut out);
        close(&out);
        // On one thread with the other copies spoilt: nothing but the sources' copies is read.
        for r in (0..rows).filter(|&r| first[r] != r) {
            k[r * t_max * d..][..3 * d].fill(1e3);
            v[r * t_max * d..][..3 * d].fill(-1e3);
        }
        let mut out = vec![f32::NAN; rows * d];
        attend_part(s, &q, &k, &v, &bias, sources, &mut out);
        close(&out);
        // A range starting at row 6 reads row 7's (group 4..8) own copy, row 9's from row 8.
        assert_eq!(sources.from(6).of(1), 1);
        assert_eq!(sources.from(8).of(1), 0);
        assert_eq!(Sources::NONE.of(3), 3);
        // Two heads per sequence, sequences [0, 0, 2]: row 5 (sequence 2, head 1) reads row 5,
        // row 3 (sequence 1, head 1) reads row 1.
        let by_head = Sources {
            slots: 3,
            first: &[0, 0, 2],
            heads: 2,
            offset: 0,
        };
        assert_eq!([by_head.of(3), by_head.of(5), by_head.of(2)], [1, 5, 0]);
    }
}
