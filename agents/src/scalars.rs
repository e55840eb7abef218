//! Several scalar tensors read to the host in one device→host transfer, handed back as an array
//! that the caller destructures into names: `let [kl, score] = host_scalars([&kl, &score])?;`.
//! One transfer instead of one per number (each is a sync on a GPU), and no quantity read back
//! by its position in a stack.

use crate::Result;
use tch::{Kind, Tensor};

/// The values of the 0-d tensors `xs` (one device, one kind), in one transfer.
pub fn host_scalars<const N: usize>(xs: [&Tensor; N]) -> Result<[f64; N]> {
    let v: Vec<f64> = Vec::try_from(Tensor::stack(&xs, 0).to_kind(Kind::Double))?;
    Ok(v.try_into()
        .unwrap_or_else(|v: Vec<f64>| unreachable!("{N} scalars stacked into {}", v.len())))
}

/// Scalars measured on each minibatch, averaged over the minibatches in one transfer at the end.
pub struct ScalarRows<const N: usize> {
    rows: Vec<Tensor>,
}

impl<const N: usize> Default for ScalarRows<N> {
    fn default() -> Self {
        Self { rows: Vec::new() }
    }
}

impl<const N: usize> ScalarRows<N> {
    /// Record one minibatch's scalars (0-d tensors, one device, one kind).
    pub fn push(&mut self, xs: [&Tensor; N]) {
        self.rows.push(Tensor::stack(&xs, 0)); // [N]
    }

    /// Minibatches recorded.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The mean of each scalar over the minibatches (in fp32, then read as f64).
    pub fn means(&self) -> Result<[f64; N]> {
        let mean = Tensor::stack(&self.rows, 0).mean_dim(0, false, Kind::Float); // [N]
        let v: Vec<f64> = Vec::try_from(mean.to_kind(Kind::Double))?;
        Ok(v.try_into()
            .unwrap_or_else(|v: Vec<f64>| unreachable!("{N} means read as {}", v.len())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_come_back_in_order_and_rows_average() {
        let [a, b] = host_scalars([&Tensor::from(1.5f32), &Tensor::from(-2.0f32)]).unwrap();
        assert_eq!((a, b), (1.5, -2.0));
        let mut rows = ScalarRows::<2>::default();
        rows.push([&Tensor::from(1.0f32), &Tensor::from(10.0f32)]);
        rows.push([&Tensor::from(3.0f32), &Tensor::from(20.0f32)]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.means().unwrap(), [2.0, 15.0]);
    }
}
