//! Finite-difference checks of every layer's input and parameter gradients and of the losses.
//!
//! Every check is run twice more with a deliberately wrong gradient (scaled by 1.05, and one typical
//! coordinate's sign flipped) and must then fail, so none of these tests could pass with a broken backward.
//! Layer outputs are reduced to a scalar by a fixed random projection, so every output element matters.

use effseq::gradcheck::{check_module_grads, check_param_grads, projection_loss, projection_weights, GradCheckOpts};
use effseq::layers::{cross_entropy, mse, Activation, Dropout, Embedding, LayerNorm, Linear};
use effseq::rng::{fill_uniform, rng_for};
use effseq::tasks::IGNORE;
use effseq::{Module, Param};

/// `n` values from U(-scale, scale) under `seed`.
fn uniform(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    fill_uniform(&mut rng_for(seed, 99), &mut v, scale);
    v
}

/// The index of a coordinate of typical (median) magnitude among those large enough to be checked.
fn typical_coordinate(analytic: &[f32]) -> usize {
    let mut candidates: Vec<usize> = (0..analytic.len()).filter(|&i| analytic[i].abs() > 0.05).collect();
    assert!(!candidates.is_empty(), "no coordinate with a gradient above 0.05: {analytic:?}");
    candidates.sort_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs()));
    candidates[candidates.len() / 2]
}

/// The two corruptions every check must detect.
fn corruptions(analytic: &[f32]) -> [(String, Vec<f32>); 2] {
    let scaled = analytic.iter().map(|g| g * 1.05).collect();
    let mut flipped = analytic.to_vec();
    let i = typical_coordinate(analytic);
    flipped[i] = -flipped[i];
    [("scaled by 1.05".to_string(), scaled), (format!("coordinate {i} flipped"), flipped)]
}

/// Checks `analytic` against `loss` at `values`, and that both corruptions of it are rejected.
fn assert_gradient(name: &str, values: &mut [f32], analytic: &[f32], mut loss: impl FnMut(&[f32]) -> f64) {
    let opts = GradCheckOpts::default();
    let report = check_param_grads(name, values, analytic, &mut loss, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.checked, values.len(), "small tensors are checked in full");
    assert!(report.worst_ratio < 0.5, "a correct gradient should pass with a wide margin: {report}");
    for (what, wrong) in corruptions(analytic) {
        assert!(check_param_grads(name, values, &wrong, &mut loss, &opts).is_err(), "{name}: a gradient {what} passed the check");
    }
}

/// Checks every parameter gradient held in `module` against `loss`, and that corrupting any one
/// parameter's gradient is rejected.
fn assert_module_gradients<M: Module + Clone>(module: &mut M, mut loss: impl FnMut(&mut M) -> f64) {
    let opts = GradCheckOpts::default();
    let reports = check_module_grads(module, &mut loss, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), module.params().len());
    for report in &reports {
        assert!(report.worst_ratio < 0.5, "a correct gradient should pass with a wide margin: {report}");
    }
    for index in 0..module.params().len() {
        let analytic = module.params()[index].grad.clone();
        for (what, wrong) in corruptions(&analytic) {
            let mut corrupted = module.clone();
            corrupted.params_mut()[index].grad = wrong;
            let name = &module.params()[index].name;
            assert!(check_module_grads(&mut corrupted, &mut loss, &opts).is_err(), "{name}: a gradient {what} passed the check");
        }
    }
}

#[test]
fn linear_input_and_parameter_gradients() {
    for bias in [true, false] {
        let (n, c_in, c_out) = (5, 4, 3);
        let mut lin = Linear::new("proj", c_in, c_out, bias, &mut rng_for(1, 0));
        let x = uniform(n * c_in, 1.0, 2);
        let proj = projection_weights(n * c_out, 3);
        lin.forward(&x, n).unwrap();
        let dx = lin.backward(&proj).unwrap();

        let frozen = lin.clone();
        assert_gradient("x", &mut x.clone(), &dx, |x| projection_loss(&frozen.clone().forward(x, n).unwrap(), &proj));
        assert_module_gradients(&mut lin, |l| projection_loss(&l.forward(&x, n).unwrap(), &proj));
    }
}

#[test]
fn linear_apply_matches_forward() {
    let mut lin = Linear::new("proj", 6, 7, true, &mut rng_for(4, 0));
    let x = uniform(3 * 6, 1.0, 5);
    let y = lin.forward(&x, 3).unwrap();
    let mut out = vec![f32::NAN; 3 * 7];
    lin.apply(&x, 3, &mut out).unwrap();
    assert_eq!(out, y);
}

#[test]
fn embedding_parameter_gradient_with_repeated_ids() {
    let (vocab, dim) = (6, 3);
    let ids = [1u32, 4, 1, 0, 5, 1];
    let mut emb = Embedding::new("embed", vocab, dim, &mut rng_for(6, 0));
    let proj = projection_weights(ids.len() * dim, 7);
    emb.forward(&ids).unwrap();
    emb.backward(&proj).unwrap();
    // Rows 2 and 3 are never looked up.
    assert!(emb.weight.grad[2 * dim..4 * dim].iter().all(|&g| g == 0.0));
    assert_module_gradients(&mut emb, |e| projection_loss(&e.forward(&ids).unwrap(), &proj));
}

#[test]
fn layernorm_input_and_parameter_gradients() {
    let (n, dim) = (4, 5);
    let mut ln = LayerNorm::new("norm", dim);
    // Non-trivial affine parameters, so that the weight enters the input gradient.
    ln.weight.value = uniform(dim, 1.0, 8).iter().map(|v| 1.0 + v).collect();
    ln.bias.value = uniform(dim, 0.5, 9);
    let x = uniform(n * dim, 2.0, 10);
    let proj = projection_weights(n * dim, 11);
    ln.forward(&x, n).unwrap();
    let dx = ln.backward(&proj).unwrap();

    let frozen = ln.clone();
    assert_gradient("x", &mut x.clone(), &dx, |x| projection_loss(&frozen.clone().forward(x, n).unwrap(), &proj));
    assert_module_gradients(&mut ln, |l| projection_loss(&l.forward(&x, n).unwrap(), &proj));
}

#[test]
fn activation_gradients() {
    // Keep inputs away from ReLU's kink at 0, where a central difference straddles two slopes.
    let x: Vec<f32> = uniform(24, 3.0, 12).iter().map(|&v| if v.abs() < 0.05 { v + 0.1 } else { v }).collect();
    let proj = projection_weights(x.len(), 13);
    for &act in Activation::ALL {
        let mut y = vec![0.0f32; x.len()];
        act.forward(&x, &mut y);
        // The backward accumulates: start from a non-zero dx and subtract it again.
        let offset = uniform(x.len(), 1.0, 14);
        let mut dx = offset.clone();
        act.backward(&x, &y, &proj, &mut dx);
        dx.iter_mut().zip(&offset).for_each(|(d, o)| *d -= o);

        let loss = |x: &[f32]| {
            let mut y = vec![0.0f32; x.len()];
            act.forward(x, &mut y);
            projection_loss(&y, &proj)
        };
        assert_gradient(act.name(), &mut x.clone(), &dx, loss);
    }
}

#[test]
fn dropout_input_gradient_replays_the_mask() {
    let p = 0.3;
    let x = uniform(40, 1.0, 15);
    let proj = projection_weights(x.len(), 16);
    let mut dropout = Dropout::new();
    let mut y = x.clone();
    dropout.forward(&mut y, p, Some(&mut rng_for(17, 0))).unwrap();
    let mut dx = proj.clone();
    dropout.backward(&mut dx).unwrap();
    assert!(dx.contains(&0.0) && dx.iter().any(|&g| g != 0.0));

    assert_gradient("x", &mut x.clone(), &dx, |x| {
        let mut y = x.to_vec();
        // The same seeded stream gives the same mask on every evaluation.
        Dropout::new().forward(&mut y, p, Some(&mut rng_for(17, 0))).unwrap();
        projection_loss(&y, &proj)
    });
}

#[test]
fn mse_gradient() {
    let pred = uniform(12, 1.0, 18);
    let target = uniform(12, 1.0, 19);
    let (_, dpred) = mse(&pred, &target).unwrap();
    assert_gradient("pred", &mut pred.clone(), &dpred, |p| mse(p, &target).unwrap().0 as f64);
}

#[test]
fn cross_entropy_gradient_with_ignored_positions() {
    let (n, c) = (6, 4);
    let logits = uniform(n * c, 2.0, 20);
    let targets = [2, IGNORE, 0, 3, IGNORE, 1];
    let out = cross_entropy(&logits, &targets, c).unwrap();
    assert_eq!(out.counted, 4);
    assert!(out.dlogits[c..2 * c].iter().chain(&out.dlogits[4 * c..5 * c]).all(|&g| g == 0.0));
    assert_gradient("logits", &mut logits.clone(), &out.dlogits, |l| cross_entropy(l, &targets, c).unwrap().loss as f64);
}

/// A small network chaining every layer, to exercise [`check_module_grads`] on a whole model:
/// tokens -> Embedding -> Linear -> GELU -> LayerNorm -> dropout -> Linear -> cross-entropy.
#[derive(Clone)]
struct TinyNet {
    embed: Embedding,
    hidden: Linear,
    norm: LayerNorm,
    dropout: Dropout,
    head: Linear,
}

impl Module for TinyNet {
    fn params(&self) -> Vec<&Param> {
        let mut p = self.embed.params();
        p.extend(self.hidden.params());
        p.extend(self.norm.params());
        p.extend(self.head.params());
        p
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut p = self.embed.params_mut();
        p.extend(self.hidden.params_mut());
        p.extend(self.norm.params_mut());
        p.extend(self.head.params_mut());
        p
    }
}

const CLASSES: usize = 5;
const TOKENS: [u32; 6] = [3, 0, 7, 3, 5, 1];
const TARGETS: [i32; 6] = [4, 0, IGNORE, 2, 1, 3];

impl TinyNet {
    fn new() -> TinyNet {
        let rng = &mut rng_for(21, 0);
        TinyNet {
            embed: Embedding::new("embed", 8, 6, rng),
            hidden: Linear::new("hidden", 6, 7, true, rng),
            norm: LayerNorm::new("norm", 7),
            dropout: Dropout::new(),
            head: Linear::new("head", 7, CLASSES, true, rng),
        }
    }

    /// Forward pass to the loss; returns `(loss, pre-activation, activation, dlogits)`, the activation's
    /// input and output both `(N, 7)`.
    fn forward(&mut self) -> (f64, Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = TOKENS.len();
        let e = self.embed.forward(&TOKENS).unwrap();
        let pre = self.hidden.forward(&e, n).unwrap();
        let mut act = vec![0.0f32; pre.len()];
        Activation::GeluTanh.forward(&pre, &mut act);
        let mut z = self.norm.forward(&act, n).unwrap();
        self.dropout.forward(&mut z, 0.2, Some(&mut rng_for(22, 0))).unwrap();
        let logits = self.head.forward(&z, n).unwrap();
        let out = cross_entropy(&logits, &TARGETS, CLASSES).unwrap();
        (out.loss as f64, pre, act, out.dlogits)
    }

    fn backward(&mut self, pre: &[f32], act: &[f32], dlogits: &[f32]) {
        let mut dz = self.head.backward(dlogits).unwrap();
        self.dropout.backward(&mut dz).unwrap();
        let dact = self.norm.backward(&dz).unwrap();
        let mut dpre = vec![0.0f32; pre.len()];
        Activation::GeluTanh.backward(pre, act, &dact, &mut dpre);
        let de = self.hidden.backward(&dpre).unwrap();
        self.embed.backward(&de).unwrap();
    }
}

#[test]
fn whole_network_parameter_gradients() {
    let mut net = TinyNet::new();
    net.zero_grad();
    let (_, pre, act, dlogits) = net.forward();
    net.backward(&pre, &act, &dlogits);
    assert_module_gradients(&mut net, |net| net.forward().0);
}
