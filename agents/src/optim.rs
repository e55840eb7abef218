//! AdamW (Loshchilov & Hutter 2019) over a VarStore, with its state exposed so runs can be resumed
//! bit-for-bit, gradient-norm clipping without a host sync, and learning-rate schedules.

use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// β₁. Default 0.9.
    pub beta1: f64,
    /// β₂. Default 0.999.
    pub beta2: f64,
    /// ε. Default 1e-5 (the RLHF PPO setting; PyTorch's own default is 1e-8).
    pub eps: f64,
    /// Decoupled weight decay on matrices (not on biases or LayerNorm gains). Default 0.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-5,
            weight_decay: 0.0,
        }
    }
}

/// AdamW with first and second moments per trainable variable.
pub struct AdamW {
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// An optimiser over every trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore, cfg: AdamWConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let v = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let (names, params) = vars.into_iter().unzip();
        Self {
            names,
            params,
            m,
            v,
            step: 0,
            cfg,
        }
    }

    /// Clear every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Scale gradients so their global L2 norm is at most `max_norm` (no-op when `max_norm ≤ 0`);
    /// returns the norm before clipping as a 0-d tensor (read it when you need it).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.grad())
                .filter(|g| g.defined())
                .collect();
            if grads.is_empty() {
                return Tensor::from(0.0f32);
            }
            let sq: Vec<Tensor> = grads
                .iter()
                .map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float))
                .collect();
            let norm = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt();
            if max_norm > 0.0 {
                let coef = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
                for mut g in grads {
                    let _ = g.g_mul_(&coef);
                }
            }
            norm
        })
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                *m *= c.beta1;
                *m += &g * (1.0 - c.beta1);
                *v *= c.beta2;
                *v += &g * &g * (1.0 - c.beta2);
                if c.weight_decay > 0.0 && p.dim() >= 2 {
                    *p *= 1.0 - lr * c.weight_decay;
                }
                let update = &*m / ((&*v / bc2).sqrt() + c.eps) * (lr / bc1);
                *p -= update;
            }
        });
    }

    /// Number of updates taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// The state as named tensors (for resumable checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("m.{n}"), self.m[i].to_device(tch::Device::Cpu)));
            out.push((format!("v.{n}"), self.v[i].to_device(tch::Device::Cpu)));
        }
        out
    }

    /// Restore a state written by [`AdamW::state`].
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> = state.into_iter().collect();
        let get = |k: &str| {
            map.get(k)
                .ok_or_else(|| AgentError::Data(format!("optimizer state lacks `{k}`")))
        };
        self.step = get("step")?.int64_value(&[]);
        for (i, n) in self.names.iter().enumerate() {
            let (m, v) = (get(&format!("m.{n}"))?, get(&format!("v.{n}"))?);
            if m.size() != self.m[i].size() {
                return Err(AgentError::Data(format!(
                    "optimizer state `m.{n}` has the wrong shape"
                )));
            }
            tch::no_grad(|| {
                self.m[i].copy_(m);
                self.v[i].copy_(v);
            });
        }
        Ok(())
    }
}

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Half-cosine from the peak to `min_lr_ratio · peak`.
    #[default]
    Cosine,
    /// Straight line from the peak to `min_lr_ratio · peak`.
    Linear,
    /// Stay at the peak.
    Constant,
}

/// Learning rate at `step` (0-based) of `total`: linear warm-up over `warmup` steps, then `schedule`.
pub fn lr_at(
    step: usize,
    total: usize,
    warmup: usize,
    peak: f64,
    min_ratio: f64,
    schedule: LrSchedule,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let frac = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    let floor = peak * min_ratio;
    match schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Linear => peak - (peak - floor) * frac,
        LrSchedule::Cosine => {
            floor + 0.5 * (peak - floor) * (1.0 + (std::f64::consts::PI * frac).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn schedule_shapes() {
        assert_eq!(lr_at(0, 100, 10, 1.0, 0.1, LrSchedule::Cosine), 0.1);
        assert_eq!(lr_at(9, 100, 10, 1.0, 0.1, LrSchedule::Cosine), 1.0);
        assert!((lr_at(10, 100, 10, 1.0, 0.1, LrSchedule::Cosine) - 1.0).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.1, LrSchedule::Cosine) - 0.1).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0, 0.0, LrSchedule::Linear) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_the_update_rule() {
        // One parameter x = 1 with loss x²: g = 2. Step 1: m̂ = g, v̂ = g², so x ← x − lr·g/(|g|+ε).
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let x = vs.root().var("x", &[1], nn::Init::Const(1.0));
        let mut opt = AdamW::new(
            &vs,
            AdamWConfig {
                eps: 0.0,
                ..Default::default()
            },
        );
        opt.zero_grad();
        (&x * &x).sum(Kind::Float).backward();
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm.double_value(&[]) - 2.0).abs() < 1e-6);
        opt.step(0.1);
        assert!((x.double_value(&[0]) - 0.9).abs() < 1e-6);
    }
}
