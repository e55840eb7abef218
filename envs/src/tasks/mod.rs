//! The built-in tasks, one file each.

pub mod arithmetic;
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
