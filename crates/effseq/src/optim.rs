//! Optimizers (AdamW, SGD with momentum), global gradient-norm clipping and the learning-rate schedule.
//!
//! The updates follow PyTorch's documented algorithms operation by operation (`torch.optim.AdamW`,
//! `torch.optim.SGD`, `torch.nn.utils.clip_grad_norm_`), so a run can be compared step for step with a
//! PyTorch reference and optimizer state maps one-to-one onto PyTorch's `state_dict` entries.

use std::collections::HashMap;

use crate::config::{OptimizerKind, TrainConfig};
use crate::error::{check_len, Error, Result};
use crate::param::Param;

/// AdamW's `(beta1, beta2)`, PyTorch's defaults.
pub const ADAMW_BETAS: (f32, f32) = (0.9, 0.999);
/// AdamW's `eps`, PyTorch's default.
pub const ADAMW_EPS: f32 = 1e-8;

/// Per-parameter state, with the shape and name the optimizer was built for.
#[derive(Clone, Debug)]
struct Slot {
    /// Parameter name (the key of its state tensors).
    name: String,
    /// Parameter shape.
    shape: Vec<usize>,
    /// One buffer per entry of [`Optimizer::state_names`], each shaped like the parameter.
    buffers: Vec<Vec<f32>>,
}

/// AdamW or SGD with momentum over a fixed list of parameters.
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// Which update rule.
    kind: OptimizerKind,
    /// Decoupled weight decay (AdamW) or L2 coefficient added to the gradient (SGD).
    weight_decay: f32,
    /// SGD momentum (0: plain SGD, no buffers).
    momentum: f32,
    /// Number of `step` calls so far (AdamW's `t` after the next step is `steps + 1`).
    steps: u64,
    /// State of each parameter, in the order given to [`Optimizer::new`].
    slots: Vec<Slot>,
}

impl Optimizer {
    /// An optimizer of kind `cfg.optimizer` with `cfg.weight_decay` (and `cfg.momentum` for SGD) for
    /// `params`, with zeroed state. The parameters must be passed to [`Optimizer::step`] in the same order.
    pub fn new(cfg: &TrainConfig, params: &[&Param]) -> Optimizer {
        let mut opt = Optimizer { kind: cfg.optimizer, weight_decay: cfg.weight_decay, momentum: cfg.momentum, steps: 0, slots: Vec::new() };
        let buffers = opt.state_names().len();
        opt.slots = params.iter().map(|p| Slot { name: p.name.clone(), shape: p.shape.clone(), buffers: vec![vec![0.0; p.numel()]; buffers] }).collect();
        opt
    }

    /// The update rule.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Names of the per-parameter state tensors, as in PyTorch's `state_dict`: `exp_avg`, `exp_avg_sq`
    /// for AdamW; `momentum_buffer` for SGD with momentum; none for plain SGD.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self.kind {
            OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"],
            OptimizerKind::Sgd if self.momentum != 0.0 => &["momentum_buffer"],
            OptimizerKind::Sgd => &[],
        }
    }

    /// Number of steps taken (saved in checkpoints; AdamW's bias correction depends on it).
    pub fn steps_taken(&self) -> u64 {
        self.steps
    }

    /// Sets the number of steps taken (when resuming from a checkpoint).
    pub fn set_steps_taken(&mut self, n: u64) {
        self.steps = n;
    }

    /// One update of every parameter from its accumulated gradient, with learning rate `lr`. Does not
    /// zero the gradients. `params` must be the parameters given to [`Optimizer::new`] (same names,
    /// shapes and order), else an error and nothing is changed.
    ///
    /// AdamW (`torch.optim.AdamW`, Loshchilov & Hutter 2019, algorithm 2), with `t` the new step count:
    /// ```text
    /// p  *= 1 - lr * wd
    /// m   = lerp(m, g, 1 - beta1)                  (m + (1 - beta1)(g - m))
    /// v   = beta2 * v + (1 - beta2) * g * g
    /// p  -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    /// ```
    /// SGD (`torch.optim.SGD`, no dampening, no Nesterov):
    /// ```text
    /// g'  = g + wd * p
    /// buf = momentum * buf + g'                    (the first step gives buf = g', as buf starts at 0)
    /// p  -= lr * buf                               (p -= lr * g' without momentum)
    /// ```
    pub fn step(&mut self, params: &mut [&mut Param], lr: f32) -> Result<()> {
        if params.len() != self.slots.len() {
            return Err(Error::Invalid(format!("optimizer built for {} parameters, stepped with {}", self.slots.len(), params.len())));
        }
        for (slot, p) in self.slots.iter().zip(params.iter()) {
            if slot.name != p.name {
                return Err(Error::Invalid(format!("optimizer expected parameter '{}' but got '{}'", slot.name, p.name)));
            }
            if slot.shape != p.shape {
                return Err(Error::Shape { what: format!("optimizer parameter '{}'", p.name), expected: slot.shape.clone(), got: p.shape.clone() });
            }
        }
        self.steps += 1;
        match self.kind {
            OptimizerKind::Adamw => self.adamw_step(params, lr),
            OptimizerKind::Sgd => self.sgd_step(params, lr),
        }
        Ok(())
    }

    fn adamw_step(&mut self, params: &mut [&mut Param], lr: f32) {
        let (beta1, beta2) = ADAMW_BETAS;
        // Scalars as PyTorch computes them (Python floats, i.e. f64), then applied in f32.
        let t = self.steps.min(i32::MAX as u64) as i32;
        let bias_correction1 = 1.0 - (beta1 as f64).powi(t);
        let bias_correction2_sqrt = (1.0 - (beta2 as f64).powi(t)).sqrt() as f32;
        let step_size = (lr as f64 / bias_correction1) as f32;
        let decay = (1.0 - lr as f64 * self.weight_decay as f64) as f32;
        let lerp_weight = (1.0 - beta1 as f64) as f32;
        let sq_weight = (1.0 - beta2 as f64) as f32;
        for (slot, p) in self.slots.iter_mut().zip(params.iter_mut()) {
            let [exp_avg, exp_avg_sq] = &mut slot.buffers[..] else { unreachable!("AdamW slots hold two buffers") };
            for (((w, &g), m), v) in p.value.iter_mut().zip(&p.grad).zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()) {
                *w *= decay;
                // torch.lerp with a weight below 0.5: start + weight * (end - start).
                *m += lerp_weight * (g - *m);
                *v = *v * beta2 + sq_weight * g * g;
                let denom = v.sqrt() / bias_correction2_sqrt + ADAMW_EPS;
                *w += -step_size * *m / denom;
            }
        }
    }

    fn sgd_step(&mut self, params: &mut [&mut Param], lr: f32) {
        let (wd, momentum) = (self.weight_decay, self.momentum);
        for (slot, p) in self.slots.iter_mut().zip(params.iter_mut()) {
            let Param { value, grad, .. } = &mut **p;
            match slot.buffers.first_mut() {
                Some(buf) => {
                    for ((w, &g), b) in value.iter_mut().zip(grad.iter()).zip(buf.iter_mut()) {
                        let g = g + wd * *w;
                        *b = momentum * *b + g;
                        *w += -lr * *b;
                    }
                }
                None => {
                    for (w, &g) in value.iter_mut().zip(grad.iter()) {
                        let g = g + wd * *w;
                        *w += -lr * g;
                    }
                }
            }
        }
    }

    /// Every state tensor as `(name, shape, values)`, named `"{state}.{parameter name}"`, e.g.
    /// `exp_avg.head.weight`, `exp_avg_sq.head.weight`, `momentum_buffer.weight_ih_l0`; parameters in
    /// construction order, states in [`Optimizer::state_names`] order. The step count is not included
    /// (see [`Optimizer::steps_taken`]).
    pub fn state_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let names = self.state_names();
        self.slots
            .iter()
            .flat_map(|slot| names.iter().zip(&slot.buffers).map(move |(state, buf)| (format!("{state}.{}", slot.name), slot.shape.clone(), buf.clone())))
            .collect()
    }

    /// Restores the state written by [`Optimizer::state_tensors`]. Every expected tensor must be present
    /// with the parameter's shape (a missing one is [`Error::Invalid`], a wrongly shaped one
    /// [`Error::Shape`], both naming it); other entries of the map are ignored. Nothing is changed on error.
    pub fn load_state_tensors(&mut self, tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>) -> Result<()> {
        let names = self.state_names();
        for slot in &self.slots {
            for state in names {
                let key = format!("{state}.{}", slot.name);
                let (shape, values) = tensors.get(&key).ok_or_else(|| Error::Invalid(format!("optimizer state tensor '{key}' is missing")))?;
                if *shape != slot.shape {
                    return Err(Error::Shape { what: format!("optimizer state tensor '{key}'"), expected: slot.shape.clone(), got: shape.clone() });
                }
                check_len(&format!("optimizer state tensor '{key}'"), shape, values.len())?;
            }
        }
        for slot in &mut self.slots {
            for (state, buf) in names.iter().zip(slot.buffers.iter_mut()) {
                buf.copy_from_slice(&tensors[&format!("{state}.{}", slot.name)].1);
            }
        }
        Ok(())
    }
}

/// Scales all gradients together so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: with `norm = sqrt(sum g^2)` (accumulated in f64), every gradient is
/// multiplied by `max_norm / (norm + 1e-6)` when that factor is below 1. Returns the norm before clipping.
///
/// A non-finite norm (NaN or inf gradients) is returned without scaling anything, so the caller can
/// report the divergence; `max_norm <= 0` only measures the norm.
pub fn clip_grad_norm(params: &mut [&mut Param], max_norm: f32) -> f32 {
    let sum_sq: f64 = params.iter().flat_map(|p| p.grad.iter()).map(|&g| g as f64 * g as f64).sum();
    let norm = sum_sq.sqrt();
    if norm.is_finite() && max_norm > 0.0 {
        let coef = max_norm as f64 / (norm + 1e-6);
        if coef < 1.0 {
            let coef = coef as f32;
            for p in params.iter_mut() {
                p.grad.iter_mut().for_each(|g| *g *= coef);
            }
        }
    }
    norm as f32
}

/// The learning rate of optimizer step `step` (0-based: the first update uses `step = 0`).
///
/// - Warmup, `step < warmup_steps`: linear, `lr * (step + 1) / warmup_steps`, so step 0 uses
///   `lr / warmup_steps` and step `warmup_steps - 1` the full `lr`.
/// - Then cosine decay (Loshchilov & Hutter 2017, SGDR eq. 5, one cycle):
///   `min + (lr - min) * (1 + cos(pi * progress)) / 2` with `min = lr * min_lr_ratio` and
///   `progress = (step - warmup_steps) / (steps - warmup_steps)`, clamped to `[0, 1]`; it equals `lr` at
///   `step = warmup_steps` and reaches `min` at `step = steps` (and stays there beyond).
pub fn learning_rate(cfg: &TrainConfig, step: u64) -> f32 {
    let lr = cfg.lr as f64;
    if step < cfg.warmup_steps {
        return (lr * (step + 1) as f64 / cfg.warmup_steps as f64) as f32;
    }
    let min_lr = lr * cfg.min_lr_ratio as f64;
    let decay_steps = cfg.steps.saturating_sub(cfg.warmup_steps);
    let progress = if decay_steps == 0 { 1.0 } else { ((step - cfg.warmup_steps) as f64 / decay_steps as f64).min(1.0) };
    (min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    const P0: [f64; 4] = [0.5, -1.0, 2.0, 0.0];
    /// The gradients of three steps.
    const GRADS: [[f64; 4]; 3] = [[0.1, -0.2, 0.3, 1e-3], [-0.4, 0.5, 0.0, 2.0], [0.25, 0.1, -0.3, -1.0]];

    fn cfg(kind: OptimizerKind, weight_decay: f32) -> TrainConfig {
        TrainConfig { optimizer: kind, weight_decay, momentum: 0.9, ..TrainConfig::default() }
    }

    /// Runs three steps of our optimizer; returns the parameter after each step.
    fn run(kind: OptimizerKind, weight_decay: f32, lrs: [f32; 3]) -> Vec<Vec<f32>> {
        let mut p = Param::new("w", &[2, 2], P0.iter().map(|&v| v as f32).collect());
        let mut opt = Optimizer::new(&cfg(kind, weight_decay), &[&p]);
        let mut out = Vec::new();
        for (g, lr) in GRADS.iter().zip(lrs) {
            p.grad = g.iter().map(|&v| v as f32).collect();
            opt.step(&mut [&mut p], lr).unwrap();
            out.push(p.value.clone());
        }
        assert_eq!(opt.steps_taken(), 3);
        out
    }

    fn assert_close(got: &[Vec<f32>], want: &[Vec<f64>]) {
        for (step, (g, w)) in got.iter().zip(want).enumerate() {
            for (a, b) in g.iter().zip(w) {
                assert!((*a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs()), "step {}: {g:?} vs {w:?}", step + 1);
            }
        }
    }

    #[test]
    fn adamw_matches_the_torch_algorithm_for_three_steps() {
        let (lrs, wd) = ([0.01f32, 0.02, 0.005], 0.1f32);
        // torch.optim.AdamW's documented algorithm, in f64.
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let mut p = P0.to_vec();
        let (mut m, mut v) = ([0.0f64; 4], [0.0f64; 4]);
        let mut want = Vec::new();
        for (t, (g, &lr)) in GRADS.iter().zip(&lrs).enumerate() {
            let (t, lr) = ((t + 1) as i32, lr as f64);
            for i in 0..4 {
                p[i] -= lr * wd as f64 * p[i];
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let m_hat = m[i] / (1.0 - b1.powi(t));
                let v_hat = v[i] / (1.0 - b2.powi(t));
                p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
            }
            want.push(p.clone());
        }
        // The first step of Adam moves every coordinate by lr * g / (|g| + eps) after the decay.
        let (lr0, wd0) = (lrs[0] as f64, wd as f64);
        for i in 0..4 {
            let g = GRADS[0][i];
            assert!((want[0][i] - (P0[i] * (1.0 - lr0 * wd0) - lr0 * g / (g.abs() + 1e-8))).abs() < 1e-12);
        }
        assert_close(&run(OptimizerKind::Adamw, wd, lrs), &want);
    }

    #[test]
    fn sgd_momentum_matches_the_torch_algorithm_for_three_steps() {
        let (lrs, wd, mu) = ([0.1f32, 0.05, 0.2], 0.01f32, 0.9f64);
        let mut p = P0.to_vec();
        let mut buf = [0.0f64; 4];
        let mut want = Vec::new();
        for (step, (g, &lr)) in GRADS.iter().zip(&lrs).enumerate() {
            for i in 0..4 {
                let d = g[i] + wd as f64 * p[i];
                buf[i] = if step == 0 { d } else { mu * buf[i] + d };
                p[i] -= lr as f64 * buf[i];
            }
            want.push(p.clone());
        }
        assert_close(&run(OptimizerKind::Sgd, wd, lrs), &want);
    }

    #[test]
    fn plain_sgd_has_no_state() {
        let mut p = Param::new("w", &[2], vec![1.0, 2.0]);
        let mut opt = Optimizer::new(&TrainConfig { optimizer: OptimizerKind::Sgd, momentum: 0.0, ..TrainConfig::default() }, &[&p]);
        p.grad = vec![1.0, -1.0];
        opt.step(&mut [&mut p], 0.5).unwrap();
        opt.step(&mut [&mut p], 0.5).unwrap();
        assert_eq!(p.value, vec![0.0, 3.0]);
        assert!(opt.state_tensors().is_empty());
    }

    #[test]
    fn step_rejects_other_parameters() {
        let a = Param::zeros("a", &[2, 3]);
        let mut opt = Optimizer::new(&TrainConfig::default(), &[&a]);
        let mut wrong_shape = Param::zeros("a", &[3, 2]);
        assert!(matches!(opt.step(&mut [&mut wrong_shape], 0.1), Err(Error::Shape { .. })));
        let mut wrong_name = Param::zeros("b", &[2, 3]);
        assert!(matches!(opt.step(&mut [&mut wrong_name], 0.1), Err(Error::Invalid(_))));
        assert!(matches!(opt.step(&mut [], 0.1), Err(Error::Invalid(_))));
        assert_eq!(opt.steps_taken(), 0);
    }

    #[test]
    fn state_round_trips_and_resumed_run_matches() {
        let mut p = Param::new("head.weight", &[2], vec![0.3, -0.7]);
        let mut q = Param::new("head.bias", &[1], vec![0.1]);
        let cfg = cfg(OptimizerKind::Adamw, 0.01);
        let mut opt = Optimizer::new(&cfg, &[&p, &q]);
        p.grad = vec![0.2, -0.1];
        q.grad = vec![0.5];
        opt.step(&mut [&mut p, &mut q], 0.01).unwrap();
        let names: Vec<String> = opt.state_tensors().into_iter().map(|t| t.0).collect();
        assert_eq!(names, ["exp_avg.head.weight", "exp_avg_sq.head.weight", "exp_avg.head.bias", "exp_avg_sq.head.bias"]);

        let saved: HashMap<String, (Vec<usize>, Vec<f32>)> = opt.state_tensors().into_iter().map(|(n, s, v)| (n, (s, v))).collect();
        let mut resumed = Optimizer::new(&cfg, &[&p, &q]);
        resumed.load_state_tensors(&saved).unwrap();
        resumed.set_steps_taken(opt.steps_taken());
        let (mut p2, mut q2) = (p.clone(), q.clone());
        opt.step(&mut [&mut p, &mut q], 0.01).unwrap();
        resumed.step(&mut [&mut p2, &mut q2], 0.01).unwrap();
        assert_eq!((p.value, q.value), (p2.value, q2.value));

        let mut missing = saved.clone();
        missing.remove("exp_avg_sq.head.bias");
        let err = resumed.load_state_tensors(&missing).unwrap_err();
        assert!(matches!(&err, Error::Invalid(m) if m.contains("exp_avg_sq.head.bias")), "{err}");
        let mut reshaped = saved.clone();
        reshaped.insert("exp_avg.head.weight".into(), (vec![1, 2], vec![0.0, 0.0]));
        let err = resumed.load_state_tensors(&reshaped).unwrap_err();
        assert!(matches!(&err, Error::Shape { what, .. } if what.contains("exp_avg.head.weight")), "{err}");
        let mut short = saved;
        short.insert("exp_avg.head.weight".into(), (vec![2], vec![0.0]));
        assert!(matches!(resumed.load_state_tensors(&short), Err(Error::Shape { .. })));
    }

    #[test]
    fn sgd_state_is_named_momentum_buffer() {
        let p = Param::zeros("weight_ih_l0", &[3]);
        let opt = Optimizer::new(&cfg(OptimizerKind::Sgd, 0.0), &[&p]);
        let tensors = opt.state_tensors();
        assert_eq!(tensors.len(), 1);
        assert_eq!((tensors[0].0.as_str(), tensors[0].1.as_slice()), ("momentum_buffer.weight_ih_l0", &[3][..]));
    }

    #[test]
    fn clip_grad_norm_scales_only_above_the_threshold() {
        let mut a = Param::zeros("a", &[2]);
        let mut b = Param::zeros("b", &[1]);
        a.grad = vec![3.0, 0.0];
        b.grad = vec![4.0];
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let coef = (1.0 / (5.0 + 1e-6)) as f32;
        assert_eq!((a.grad.clone(), b.grad.clone()), (vec![3.0 * coef, 0.0], vec![4.0 * coef]));
        // Below the threshold, or measuring only: unchanged.
        let before = a.grad.clone();
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 10.0);
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(a.grad, before);
        assert!((clip_grad_norm(&mut [&mut a, &mut b], 0.0) - 1.0).abs() < 1e-5);
        assert_eq!(a.grad, before);
    }

    #[test]
    fn clip_grad_norm_leaves_non_finite_gradients_alone() {
        let mut a = Param::zeros("a", &[2]);
        a.grad = vec![f32::NAN, 1.0];
        assert!(clip_grad_norm(&mut [&mut a], 1.0).is_nan());
        assert_eq!(a.grad[1], 1.0);
        a.grad = vec![f32::INFINITY, 1.0];
        assert!(clip_grad_norm(&mut [&mut a], 1.0).is_infinite());
        assert_eq!(a.grad[1], 1.0);
    }

    #[test]
    fn schedule_endpoints_and_monotonicity() {
        let cfg = TrainConfig { lr: 1e-2, warmup_steps: 10, steps: 110, min_lr_ratio: 0.1, ..TrainConfig::default() };
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-7;
        assert!(close(learning_rate(&cfg, 0), 1e-3));
        assert!(close(learning_rate(&cfg, 9), 1e-2));
        assert!(close(learning_rate(&cfg, 10), 1e-2));
        assert!(close(learning_rate(&cfg, 60), 0.5 * (1e-2 + 1e-3)), "half way: {}", learning_rate(&cfg, 60));
        assert!(close(learning_rate(&cfg, 110), 1e-3));
        assert!(close(learning_rate(&cfg, 500), 1e-3));
        let lrs: Vec<f32> = (0..=120).map(|s| learning_rate(&cfg, s)).collect();
        assert!(lrs[..10].windows(2).all(|w| w[0] < w[1]), "warmup increases");
        assert!(lrs[10..].windows(2).all(|w| w[0] >= w[1]), "decay never increases");
        assert!(lrs.iter().all(|&lr| (1e-3 - 1e-9..=1e-2 + 1e-9).contains(&lr)));
    }

    #[test]
    fn schedule_without_warmup_or_decay_room() {
        let no_warmup = TrainConfig { lr: 1.0, warmup_steps: 0, steps: 4, min_lr_ratio: 0.0, ..TrainConfig::default() };
        assert_eq!(learning_rate(&no_warmup, 0), 1.0);
        assert!((learning_rate(&no_warmup, 2) - 0.5).abs() < 1e-7);
        let all_warmup = TrainConfig { lr: 1.0, warmup_steps: 4, steps: 4, min_lr_ratio: 0.5, ..TrainConfig::default() };
        assert_eq!(learning_rate(&all_warmup, 3), 1.0);
        assert_eq!(learning_rate(&all_warmup, 4), 0.5);
    }
}
