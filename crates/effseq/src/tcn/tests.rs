//! Unit tests of the TCN: receptive field and causality, streaming equals the parallel forward, backward equals
//! finite differences for every parameter (weight norm's `g` and `v` included) and the input, dropout, errors.
//! PyTorch parity lives in `tests/tcn_parity.rs`.

use super::*;
use crate::gradcheck::{check_module_grads, check_param_grads, projection_loss, projection_weights, GradCheckOpts};
use crate::rng::fill_uniform;

/// Small configurations covering K = 1, 2, 3, a downsample at level 0 and at a later level, and none.
fn configs() -> Vec<TcnConfig> {
    vec![
        TcnConfig { input: 3, channels: vec![4, 4], kernel_size: 3, dropout: 0.0 },
        TcnConfig { input: 3, channels: vec![3, 2, 2], kernel_size: 2, dropout: 0.0 },
        TcnConfig { input: 2, channels: vec![3], kernel_size: 1, dropout: 0.0 },
        TcnConfig { input: 4, channels: vec![4], kernel_size: 4, dropout: 0.0 },
    ]
}

fn seq(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng_for(seed, 7);
    let mut x = vec![0.0; n];
    fill_uniform(&mut r, &mut x, 1.0);
    x
}

/// Replaces the (deliberately tiny) initial weights by O(1) values, so that every path carries signal:
/// `v ~ U(−0.5, 0.5)`, `g ~ U(0.5, 1.5)` (≠ ‖v‖, so the weight norm is exercised), biases ~ 0.2 + U(−0.2, 0.2)
/// (most ReLUs active), downsample weights ~ U(−0.5, 0.5).
fn randomise(tcn: &mut Tcn, seed: u64) {
    let mut r = rng_for(seed, 3);
    for p in tcn.params_mut() {
        if p.name.ends_with("weight_g") {
            fill_uniform(&mut r, &mut p.value, 0.5);
            p.value.iter_mut().for_each(|v| *v += 1.0);
        } else if p.name.ends_with("bias") {
            fill_uniform(&mut r, &mut p.value, 0.2);
            p.value.iter_mut().for_each(|v| *v += 0.2);
        } else {
            fill_uniform(&mut r, &mut p.value, 0.5);
        }
    }
}

/// Smallest |pre-activation| of any ReLU in the last forward pass (`conv1 + b1`, `conv2 + b2`, `h2 + skip`,
/// dropped elements included). A finite-difference step moves pre-activations by about `eps` times an O(1)
/// factor; when one sits closer than that to the kink at 0 the central difference is meaningless, so the
/// gradient checks assert a margin well above it for the data they use.
fn relu_margin(tcn: &Tcn) -> f32 {
    let cache = tcn.cache.as_ref().expect("relu_margin after forward");
    let mut margin = f32::MAX;
    for (block, bc) in tcn.blocks.iter().zip(&cache.blocks) {
        let geom = Geometry { batch: cache.b, time: cache.t, pad: block.pad() };
        let c_out = block.c_out();
        let mut closest = |z: &[f32], bias: &[f32]| {
            for bi in 0..geom.batch {
                for ti in 0..geom.time {
                    let row = &z[geom.row(bi, ti) * c_out..(geom.row(bi, ti) + 1) * c_out];
                    row.iter().zip(bias).for_each(|(v, b)| margin = margin.min((v + b).abs()));
                }
            }
        };
        for (conv, input) in [(&block.conv1, &bc.input), (&block.conv2, &bc.h1)] {
            let mut z = vec![0.0; geom.rows() * c_out]; // (B, P+T, C_out)
            conv.forward(input, geom, &mut z);
            closest(&z, &conv.bias.value);
        }
        let mut u = match &block.downsample {
            Some(ds) => {
                let mut skip = vec![0.0; geom.rows() * c_out];
                ds.forward(&bc.input, geom, &mut skip);
                skip.chunks_exact_mut(c_out).for_each(|row| row.iter_mut().zip(&ds.bias.value).for_each(|(v, b)| *v += b));
                skip
            }
            None => bc.input.clone(),
        };
        // 0 + 0 from two inactive ReLUs (identity skip) stays exactly 0 under small steps: not a kink.
        u.iter_mut().zip(&bc.h2).for_each(|(v, h)| *v = if *v == 0.0 && *h == 0.0 { f32::MAX } else { *v + h });
        closest(&u, &vec![0.0; c_out]);
    }
    margin
}

/// Row `t` of every sequence of `x (B, T, D)`: `(B, D)`.
fn at_time(x: &[f32], b: usize, t: usize, d: usize, ti: usize) -> Vec<f32> {
    (0..b).flat_map(|bi| x[(bi * t + ti) * d..(bi * t + ti + 1) * d].to_vec()).collect()
}

#[test]
fn config_helpers_match_the_structure() {
    let cfg = TcnConfig { input: 5, channels: vec![8, 8, 6, 6], kernel_size: 3, dropout: 0.1 };
    // Two convolutions of reach (K−1)·2^i per level: 1 + 2·2·(1 + 2 + 4 + 8).
    assert_eq!(cfg.receptive_field(), 1 + 2 * 2 * 15);
    assert_eq!(cfg.output_dim(), 6);
    let tcn = Tcn::new(&cfg, 0).unwrap();
    let reach: usize = tcn.blocks.iter().map(|b| b.conv1.reach() + b.conv2.reach()).sum();
    assert_eq!(1 + reach, cfg.receptive_field());
    assert_eq!(TcnConfig { kernel_size: 1, ..cfg.clone() }.receptive_field(), 1);
    assert_eq!(TcnConfig { channels: vec![4; 70], ..cfg.clone() }.receptive_field(), usize::MAX, "saturates");
}

#[test]
fn parameters_are_named_shaped_and_initialised_as_locuslab() {
    let cfg = TcnConfig { input: 3, channels: vec![16, 16], kernel_size: 2, dropout: 0.0 };
    let tcn = Tcn::with_prefix(&cfg, 4, "tcn.").unwrap();
    let names: Vec<(&str, &[usize])> = tcn.params().into_iter().map(|p| (p.name.as_str(), &p.shape[..])).collect();
    let want: Vec<(&str, &[usize])> = vec![
        ("tcn.network.0.conv1.bias", &[16]),
        ("tcn.network.0.conv1.weight_g", &[16, 1, 1]),
        ("tcn.network.0.conv1.weight_v", &[16, 3, 2]),
        ("tcn.network.0.conv2.bias", &[16]),
        ("tcn.network.0.conv2.weight_g", &[16, 1, 1]),
        ("tcn.network.0.conv2.weight_v", &[16, 16, 2]),
        ("tcn.network.0.downsample.weight", &[16, 3, 1]),
        ("tcn.network.0.downsample.bias", &[16]),
        ("tcn.network.1.conv1.bias", &[16]),
        ("tcn.network.1.conv1.weight_g", &[16, 1, 1]),
        ("tcn.network.1.conv1.weight_v", &[16, 16, 2]),
        ("tcn.network.1.conv2.bias", &[16]),
        ("tcn.network.1.conv2.weight_g", &[16, 1, 1]),
        ("tcn.network.1.conv2.weight_v", &[16, 16, 2]),
    ];
    assert_eq!(names, want);
    let block = &tcn.blocks[1];
    // g = ‖v‖ per output channel, so the effective filter equals v.
    for o in 0..16 {
        let v = &block.conv2.weight_v.value[o * 32..(o + 1) * 32];
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((block.conv2.weight_g.value[o] - norm).abs() < 1e-6);
    }
    // v ~ U(-1/sqrt(C_in·K), 1/sqrt(C_in·K)) as PyTorch's Conv1d (what locuslab's model really starts from): inside
    // the bound, and the sample standard deviation of 512 draws within 15% of bound/sqrt(3).
    let bound = 1.0 / (32.0f32).sqrt();
    let v = &block.conv2.weight_v.value;
    assert!(v.iter().all(|a| a.abs() <= bound));
    let std = (v.iter().map(|a| (a * a) as f64).sum::<f64>() / v.len() as f64).sqrt();
    let want = f64::from(bound) / 3f64.sqrt();
    assert!((std - want).abs() < 0.15 * want, "std of weight_v = {std}, want {want}");
    // The downsample is not weight-normalised, so locuslab's N(0, 0.01²) is real there.
    let ds = &tcn.blocks[0].downsample.as_ref().unwrap().weight.value;
    assert!(ds.iter().all(|a| a.abs() < 0.06) && ds.iter().any(|&a| a != 0.0));
    // Bias within PyTorch's bound 1/sqrt(C_in·K), and not all zero.
    assert!(block.conv2.bias.value.iter().all(|b| b.abs() <= bound) && block.conv2.bias.value.iter().any(|&b| b != 0.0));
    assert_eq!(Tcn::new(&cfg, 4).unwrap().params()[0].name, "network.0.conv1.bias");
}

/// Perturbing the input at time t0 leaves every output before t0 bit-identical and changes the output at
/// t0 + RF − 1, but not at t0 + RF: causality, and the receptive field is exactly `receptive_field()`.
#[test]
fn outputs_are_causal_and_see_exactly_the_receptive_field() {
    for cfg in configs() {
        let rf = cfg.receptive_field();
        let (b, t, d) = (1, rf + 3, cfg.input);
        let mut tcn = Tcn::new(&cfg, 1).unwrap();
        randomise(&mut tcn, 2);
        let x = seq(b * t * d, 3);
        let y = tcn.forward(&x, b, t, None).unwrap();
        let t0 = 1;
        let mut x2 = x.clone();
        x2[t0 * d..(t0 + 1) * d].iter_mut().for_each(|v| *v += 1.0);
        let y2 = tcn.forward(&x2, b, t, None).unwrap();
        let c = cfg.output_dim();
        let row = |y: &[f32], ti: usize| y[ti * c..(ti + 1) * c].to_vec();
        for ti in 0..t0 {
            assert_eq!(row(&y, ti), row(&y2, ti), "{cfg:?}: output at t={ti} saw the future");
        }
        assert_ne!(row(&y, t0 + rf - 1), row(&y2, t0 + rf - 1), "{cfg:?}: the receptive field is shorter than {rf}");
        assert_eq!(row(&y, t0 + rf), row(&y2, t0 + rf), "{cfg:?}: the receptive field is longer than {rf}");
    }
}

#[test]
fn step_by_step_equals_parallel_forward() {
    for cfg in configs() {
        let (b, t, d, c) = (3, cfg.receptive_field() + 5, cfg.input, cfg.output_dim());
        let mut tcn = Tcn::new(&cfg, 5).unwrap();
        randomise(&mut tcn, 6);
        let x = seq(b * t * d, 7);
        let y = tcn.forward(&x, b, t, None).unwrap();
        let mut state = tcn.zero_state(b);
        let mut y_t = vec![0.0; b * c];
        for ti in 0..t {
            tcn.step(&at_time(&x, b, t, d, ti), &mut state, &mut y_t).unwrap();
            for (j, (got, want)) in y_t.iter().zip(at_time(&y, b, t, c, ti)).enumerate() {
                assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{cfg:?} t={ti} [{j}]: step {got} vs forward {want}");
            }
        }
        assert_eq!(state.steps, t as u64);
        // After a reset the state streams the same sequence again.
        state.reset();
        let mut first = vec![0.0; b * c];
        tcn.step(&at_time(&x, b, t, d, 0), &mut state, &mut first).unwrap();
        let want = at_time(&y, b, t, c, 0);
        assert!(first.iter().zip(&want).all(|(a, w)| (a - w).abs() <= 1e-5 * w.abs().max(1.0)));
    }
}

#[test]
fn step_sees_parameter_changes() {
    let cfg = &configs()[0];
    let (b, t, d, c) = (2, 6, cfg.input, cfg.output_dim());
    let mut tcn = Tcn::new(cfg, 8).unwrap();
    let mut state = tcn.zero_state(b);
    let mut y_t = vec![0.0; b * c];
    tcn.step(&vec![0.5; b * d], &mut state, &mut y_t).unwrap(); // packs the initial weights
    randomise(&mut tcn, 9);
    let x = seq(b * t * d, 10);
    let y = tcn.infer(&x, b, t).unwrap();
    state.reset();
    for ti in 0..t {
        tcn.step(&at_time(&x, b, t, d, ti), &mut state, &mut y_t).unwrap();
    }
    let want = at_time(&y, b, t, c, t - 1);
    assert!(y_t.iter().zip(&want).all(|(a, w)| (a - w).abs() <= 1e-5 * w.abs().max(1.0)), "{y_t:?} vs {want:?}");
}

/// Smallest distance of a ReLU input from 0 that the gradient checks accept (see [`relu_margin`]).
const MIN_MARGIN: f32 = 2e-3;

/// loss = sum(y · R) for a fixed random R, checked against central differences for every coordinate of every
/// parameter (weight_g, weight_v, biases, downsample) and of the input.
#[test]
fn backward_matches_finite_differences() {
    let opts = GradCheckOpts { max_coords: usize::MAX, ..Default::default() };
    // Per configuration, a data seed whose ReLU inputs all keep a margin from the kink (see `relu_margin`).
    for (cfg, seed) in configs().into_iter().zip([7, 2, 6, 8]) {
        let (b, t) = (2, 7);
        let mut tcn = Tcn::new(&cfg, 11).unwrap();
        randomise(&mut tcn, 12 + 100 * seed);
        let mut x = seq(b * t * cfg.input, 13 + 100 * seed);
        let r = projection_weights(b * t * cfg.output_dim(), 14);
        tcn.zero_grad();
        tcn.forward(&x, b, t, None).unwrap();
        let margin = relu_margin(&tcn);
        assert!(margin > MIN_MARGIN, "{cfg:?}: a ReLU input is {margin} from its kink: choose other seeds");
        let dx = tcn.backward(&r).unwrap();
        let mut probe = tcn.clone();
        check_param_grads("x", &mut x, &dx, |xs| projection_loss(&probe.forward(xs, b, t, None).unwrap(), &r), &opts)
            .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        let reports = check_module_grads(&mut tcn, |m: &mut Tcn| projection_loss(&m.forward(&x, b, t, None).unwrap(), &r), &opts)
            .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        assert_eq!(reports.len(), tcn.params().len());
    }
}

/// The same check in training mode: the dropout masks are replayed by reseeding, and the backward must route
/// the gradient through exactly the kept elements with the 1/(1−p) factor.
#[test]
fn backward_with_dropout_matches_finite_differences() {
    let opts = GradCheckOpts { max_coords: usize::MAX, ..Default::default() };
    let cfg = TcnConfig { input: 3, channels: vec![5, 4], kernel_size: 2, dropout: 0.3 };
    let (b, t) = (2, 6);
    let mut tcn = Tcn::new(&cfg, 15).unwrap();
    randomise(&mut tcn, 816);
    let mut x = seq(b * t * cfg.input, 817);
    let r = projection_weights(b * t * cfg.output_dim(), 18);
    let masks = || rng_for(19, streams::DROPOUT);
    tcn.zero_grad();
    let y = tcn.forward(&x, b, t, Some(&mut masks())).unwrap();
    assert_eq!(y, tcn.forward(&x, b, t, Some(&mut masks())).unwrap(), "same dropout stream, same output");
    assert_ne!(y, tcn.infer(&x, b, t).unwrap(), "dropout must change the training output");
    tcn.forward(&x, b, t, Some(&mut masks())).unwrap();
    let margin = relu_margin(&tcn);
    assert!(margin > MIN_MARGIN, "a ReLU input is {margin} from its kink: choose other seeds");
    let dx = tcn.backward(&r).unwrap();
    let mut probe = tcn.clone();
    check_param_grads("x", &mut x, &dx, |xs| projection_loss(&probe.forward(xs, b, t, Some(&mut masks())).unwrap(), &r), &opts).unwrap();
    check_module_grads(&mut tcn, |m: &mut Tcn| projection_loss(&m.forward(&x, b, t, Some(&mut masks())).unwrap(), &r), &opts).unwrap();
}

#[test]
fn backward_accumulates_parameter_gradients() {
    let cfg = &configs()[1];
    let (b, t) = (2, 9);
    let mut tcn = Tcn::new(cfg, 20).unwrap();
    randomise(&mut tcn, 21);
    let x = seq(b * t * cfg.input, 22);
    let r = projection_weights(b * t * cfg.output_dim(), 23);
    tcn.zero_grad();
    tcn.forward(&x, b, t, None).unwrap();
    let dx1 = tcn.backward(&r).unwrap();
    let once: Vec<Vec<f32>> = tcn.params().iter().map(|p| p.grad.clone()).collect();
    tcn.forward(&x, b, t, None).unwrap();
    let dx2 = tcn.backward(&r).unwrap();
    assert_eq!(dx1, dx2);
    for (p, g1) in tcn.params().iter().zip(&once) {
        assert!(g1.iter().any(|&g| g != 0.0), "{}: no gradient", p.name);
        for (g2, g1) in p.grad.iter().zip(g1) {
            assert!((g2 - 2.0 * g1).abs() <= 1e-6 * g1.abs().max(1.0), "{}: {g2} is not twice {g1}", p.name);
        }
    }
}

#[test]
fn parallel_passes_compute_what_serial_ones_do() {
    // B·(P+T)·C well above the parallel threshold.
    let cfg = TcnConfig { input: 16, channels: vec![32, 24], kernel_size: 3, dropout: 0.0 };
    let (b, t) = (4, 300);
    let x = seq(b * t * 16, 24);
    let dy = projection_weights(b * t * 24, 25);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut tcn = Tcn::new(&cfg, 26).unwrap();
        randomise(&mut tcn, 27);
        pool.install(|| {
            let y = tcn.forward(&x, b, t, None).unwrap();
            let dx = tcn.backward(&dy).unwrap();
            let grads: Vec<f32> = tcn.params().iter().flat_map(|p| p.grad.clone()).collect();
            (y, dx, grads)
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.0, two.0, "forward");
    assert_eq!(one.1, two.1, "dx");
    // Column sums are reduced in a different order; they are accumulated in f64, so stay within 1 ulp-ish.
    for (a, w) in one.2.iter().zip(&two.2) {
        assert!((a - w).abs() <= 1e-6 * w.abs().max(1.0), "{a} vs {w}");
    }
}

#[test]
fn inference_equals_training_forward_and_refuses_backward() {
    for cfg in configs() {
        let (b, t) = (2, 20);
        let mut tcn = Tcn::new(&cfg, 28).unwrap();
        randomise(&mut tcn, 29);
        let x = seq(b * t * cfg.input, 30);
        let y = tcn.forward(&x, b, t, None).unwrap();
        assert_eq!(y, tcn.infer(&x, b, t).unwrap(), "{cfg:?}");
        assert!(matches!(tcn.backward(&y), Err(Error::Invalid(_))));
    }
}

#[test]
fn empty_batches_and_sequences_are_fine() {
    let cfg = &configs()[0];
    let mut tcn = Tcn::new(cfg, 31).unwrap();
    assert!(tcn.forward(&[], 0, 5, None).unwrap().is_empty());
    assert!(tcn.backward(&[]).unwrap().is_empty());
    assert!(tcn.forward(&[], 3, 0, None).unwrap().is_empty());
    assert!(tcn.backward(&[]).unwrap().is_empty());
}

#[test]
fn bad_shapes_and_configs_are_errors_not_panics() {
    let cfg = configs()[0].clone();
    let mut tcn = Tcn::new(&cfg, 0).unwrap();
    assert!(matches!(tcn.forward(&[0.0; 10], 2, 2, None), Err(Error::Shape { .. })));
    assert!(matches!(tcn.backward(&[0.0; 16]), Err(Error::Invalid(_))));
    tcn.forward(&[0.0; 12], 2, 2, None).unwrap();
    assert!(matches!(tcn.backward(&[0.0; 3]), Err(Error::Shape { .. })));
    assert_eq!(tcn.backward(&[0.0; 16]).unwrap().len(), 12, "a failed backward keeps the cache");
    let mut s = tcn.zero_state(2);
    assert!(matches!(tcn.step(&[0.0; 5], &mut s, &mut [0.0; 8]), Err(Error::Shape { .. })));
    assert!(matches!(tcn.step(&[0.0; 6], &mut s, &mut [0.0; 7]), Err(Error::Shape { .. })));
    let other = Tcn::new(&TcnConfig { kernel_size: 2, ..cfg.clone() }, 0).unwrap();
    let mut foreign = other.zero_state(2);
    assert!(matches!(tcn.step(&[0.0; 6], &mut foreign, &mut [0.0; 8]), Err(Error::Invalid(_))));
    for bad in [
        TcnConfig { input: 0, ..cfg.clone() },
        TcnConfig { channels: vec![], ..cfg.clone() },
        TcnConfig { channels: vec![4, 0], ..cfg.clone() },
        TcnConfig { kernel_size: 0, ..cfg.clone() },
        TcnConfig { dropout: 1.0, ..cfg.clone() },
        TcnConfig { dropout: -0.1, ..cfg.clone() },
        TcnConfig { channels: vec![2; MAX_LEVELS + 1], ..cfg.clone() },
    ] {
        assert!(matches!(Tcn::new(&bad, 0), Err(Error::Config { .. })), "{bad:?}");
    }
}
