//! The built-in tasks, one file each.

pub mod arithmetic;
pub mod calculator;
pub mod clarify;
pub mod guess_number;
pub mod hh;
pub mod hidden_pref;
pub mod instruct;
pub mod sentiment;

use rand::rngs::StdRng;
use rand::Rng;

/// A uniformly chosen element of a non-empty slice.
pub(crate) fn pick<'a, T>(rng: &mut StdRng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// FNV-1a of a string: a hidden value derived from a prompt that is stable across platforms and
/// Rust versions (unlike the std hasher), so a gold reward can recompute it from the prompt.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
