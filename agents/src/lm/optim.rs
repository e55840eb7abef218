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
///
/// The trainable variables are re-seated as views of one flat buffer, and the moments live in two
/// more, so an update is a dozen whole-buffer operations instead of a dozen per variable (on a GPU,
/// kernel launches dominate small models otherwise). One optimiser per VarStore: a second one
/// would re-seat the variables into its own buffer.
pub struct AdamW {
    names: Vec<String>,
    params: Vec<Tensor>,
    /// Element offset of each variable in the flat buffers.
    offsets: Vec<i64>,
    flat: Tensor, // [P], the variables' storage
    m: Tensor,    // [P]
    v: Tensor,    // [P]
    /// 1 where decoupled weight decay applies (matrices that receive gradients), else 0; fixed at
    /// the first step, so variables a loss never reaches are never decayed.
    decay: Option<Tensor>, // [P]
    /// The clipped flat gradient, when `clip_grad_norm` ran since the last step.
    clipped: Option<Tensor>, // [P]
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
        let mut offsets = Vec::with_capacity(vars.len());
        let mut total = 0i64;
        for (_, t) in &vars {
            offsets.push(total);
            total += t.numel() as i64;
        }
        let opts = vars
            .first()
            .map_or((Kind::Float, vs.device()), |(_, t)| (t.kind(), t.device()));
        let flat = Tensor::zeros([total], opts);
        tch::no_grad(|| {
            for ((_, t), &off) in vars.iter_mut().zip(&offsets) {
                let view = flat
                    .narrow(0, off, t.numel() as i64)
                    .view(t.size().as_slice());
                view.shallow_clone().copy_(t);
                t.set_data(&view);
            }
        });
        let (names, params) = vars.into_iter().unzip();
        Self {
            names,
            params,
            offsets,
            m: flat.zeros_like(),
            v: flat.zeros_like(),
            flat,
            decay: None,
            clipped: None,
            step: 0,
            cfg,
        }
    }

    /// Clear every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
        self.clipped = None;
    }

    /// Every gradient in one flat buffer `[P]` (zeros where a variable has none).
    fn flat_grad(&self) -> Tensor {
        let parts: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    p.zeros_like().reshape([-1])
                }
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Scale gradients so their global L2 norm is at most `max_norm` (no-op when `max_norm ≤ 0`);
    /// returns the norm before clipping as a 0-d tensor (read it when you need it). The next
    /// [`AdamW::step`] uses the clipped gradients.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        tch::no_grad(|| {
            if self.params.is_empty() {
                return Tensor::from(0.0f32);
            }
            let mut g = self.flat_grad(); // [P]
            let norm = g.norm(); // 0-d
            if max_norm > 0.0 {
                let coef = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
                let _ = g.g_mul_(&coef);
            }
            self.clipped = Some(g);
            norm
        })
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        if self.params.is_empty() {
            return;
        }
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            if self.decay.is_none() && c.weight_decay > 0.0 {
                let parts: Vec<Tensor> = self
                    .params
                    .iter()
                    .map(|p| {
                        let on = p.dim() >= 2 && p.grad().defined();
                        p.ones_like().reshape([-1]) * if on { 1.0 } else { 0.0 }
                    })
                    .collect();
                self.decay = Some(Tensor::cat(&parts, 0));
            }
            let g = match self.clipped.take() {
                Some(g) => g,
                None => self.flat_grad(),
            }; // [P]
               // In-place, fused where libtorch offers it: each op is a pass over every parameter.
            let _ = self.m.lerp_(&g, 1.0 - c.beta1); // β₁m + (1−β₁)g
            let _ = self.v.lerp_(&g.square(), 1.0 - c.beta2); // β₂v + (1−β₂)g²
            if let Some(d) = &self.decay {
                let p = self.flat.shallow_clone();
                let _ = self.flat.addcmul_(&p, &(d * (-lr * c.weight_decay)));
            }
            // Where a variable never had a gradient, m = v = 0: the floor keeps 0/0 (ε = 0) at 0.
            let mut denom = self.v.sqrt(); // [P]
            let _ = denom.g_div_scalar_(bc2.sqrt());
            let _ = denom.g_add_scalar_(c.eps);
            let _ = denom.clamp_min_(f64::from(f32::MIN_POSITIVE));
            let _ = self.flat.addcdiv_(&(&self.m * (-lr / bc1)), &denom);
        });
    }

    /// Number of updates taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// One variable's slice of a flat buffer.
    fn slice(&self, flat: &Tensor, i: usize) -> Tensor {
        flat.narrow(0, self.offsets[i], self.params[i].numel() as i64)
            .view(self.params[i].size().as_slice())
    }

    /// The state as named tensors (for resumable checkpoints).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for (i, n) in self.names.iter().enumerate() {
            let cpu = |t: Tensor| t.to_device(tch::Device::Cpu).copy();
            out.push((format!("m.{n}"), cpu(self.slice(&self.m, i))));
            out.push((format!("v.{n}"), cpu(self.slice(&self.v, i))));
        }
        if let Some(d) = &self.decay {
            out.push(("decay".to_string(), d.to_device(tch::Device::Cpu).copy()));
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
            if m.size() != self.params[i].size() || v.size() != self.params[i].size() {
                return Err(AgentError::Data(format!(
                    "optimizer state `m.{n}` or `v.{n}` has the wrong shape"
                )));
            }
            tch::no_grad(|| {
                self.slice(&self.m, i).copy_(m);
                self.slice(&self.v, i).copy_(v);
            });
        }
        self.decay = match map.get("decay") {
            Some(d) if d.size() == self.flat.size() => Some(d.to_device(self.flat.device())),
            Some(_) => {
                return Err(AgentError::Data(
                    "optimizer state `decay` has the wrong shape".into(),
                ))
            }
            None => None,
        };
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

    #[test]
    fn flat_buffers_keep_values_decay_only_matrices_with_gradients_and_resume_exactly() {
        let build = || {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let w = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
            let b = vs.root().var("b", &[2], nn::Init::Const(0.5));
            let unused = vs.root().var("unused", &[3, 1], nn::Init::Const(2.0));
            (vs, w, b, unused)
        };
        let cfg = AdamWConfig {
            eps: 0.0,
            weight_decay: 0.1,
            ..Default::default()
        };
        let (vs, w, b, unused) = build();
        let mut opt = AdamW::new(&vs, cfg);
        // Re-seating the variables into the flat buffer keeps their values.
        assert_eq!(Vec::<f32>::try_from(&w.view([-1])).unwrap(), vec![1.0; 4]);
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![0.5; 2]);
        let loss =
            |w: &Tensor, b: &Tensor| (w.sum(Kind::Float) * 3.0 + b.sum(Kind::Float)).backward();
        opt.zero_grad();
        loss(&w, &b);
        opt.step(0.1);
        // Step 1 moves every element by lr·sign(g); w (a matrix) also decays, b (a vector) and the
        // matrix that got no gradient do not.
        let wv = w.double_value(&[0, 0]);
        assert!((wv - (1.0 * (1.0 - 0.1 * 0.1) - 0.1)).abs() < 1e-6, "{wv}");
        assert!((b.double_value(&[0]) - 0.4).abs() < 1e-6);
        assert_eq!(unused.double_value(&[0, 0]), 2.0);
        // Resume: a fresh optimiser loaded with the state takes the same next step.
        let state = opt.state();
        let (vs2, w2, b2, _) = build();
        tch::no_grad(|| {
            w2.shallow_clone().copy_(&w);
            b2.shallow_clone().copy_(&b);
        });
        let mut opt2 = AdamW::new(&vs2, cfg);
        opt2.load_state(state).unwrap();
        for (o, w, b) in [(&mut opt, &w, &b), (&mut opt2, &w2, &b2)] {
            o.zero_grad();
            loss(w, b);
            let _ = o.clip_grad_norm(1.0);
            o.step(0.05);
        }
        assert_eq!(
            Vec::<f32>::try_from(&w.view([-1])).unwrap(),
            Vec::<f32>::try_from(&w2.view([-1])).unwrap()
        );
        assert_eq!(
            Vec::<f32>::try_from(&b).unwrap(),
            Vec::<f32>::try_from(&b2).unwrap()
        );
    }
}
