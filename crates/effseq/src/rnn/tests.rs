//! Unit tests of the fused LSTM/GRU: streaming equals the parallel forward, and backward equals finite
//! differences for every parameter and input (PyTorch parity lives in `tests/pytorch_parity.rs`).

use super::*;

fn configs() -> Vec<RnnConfig> {
    let mut v = Vec::new();
    for kind in [ModelKind::Lstm, ModelKind::Gru] {
        for (layers, bidirectional, bias) in [(1, false, true), (2, false, false), (2, true, true)] {
            v.push(RnnConfig { kind, input: 3, hidden: 5, layers, bidirectional, dropout: 0.0, bias });
        }
    }
    v
}

fn seq(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng_for(seed, 7);
    let mut x = vec![0.0; n];
    fill_uniform(&mut r, &mut x, 1.0);
    x
}

#[test]
fn step_by_step_equals_parallel_forward() {
    for cfg in configs().into_iter().filter(|c| !c.bidirectional) {
        let (b, t) = (3, 9);
        let mut rnn = Rnn::new(&RnnConfig { hidden: 37, ..cfg.clone() }, 1).unwrap();
        let h = rnn.config().hidden;
        let x = seq(b * t * cfg.input, 2);
        let y = rnn.forward(&x, b, t, None).unwrap();
        let mut state = rnn.zero_state(b);
        let mut y_t = vec![0.0; b * h];
        for ti in 0..t {
            let x_t: Vec<f32> = (0..b).flat_map(|bi| x[(bi * t + ti) * cfg.input..(bi * t + ti + 1) * cfg.input].to_vec()).collect();
            rnn.step(&x_t, &mut state, &mut y_t).unwrap();
            for bi in 0..b {
                for j in 0..h {
                    let want = y[(bi * t + ti) * h + j];
                    assert!((y_t[bi * h + j] - want).abs() < 1e-5, "{cfg:?} t={ti} b={bi} j={j}: {} vs {want}", y_t[bi * h + j]);
                }
            }
        }
        let fin = rnn.final_state().unwrap();
        for (a, w) in state.h.iter().zip(&fin.h) {
            assert!((a - w).abs() < 1e-5);
        }
        for (a, w) in state.c.iter().zip(&fin.c) {
            assert!((a - w).abs() < 1e-5);
        }
    }
}

#[test]
fn large_hidden_uses_parallel_kernel_and_still_agrees() {
    // H = 256, B = 8: large enough for the column-split recurrent product.
    for kind in [ModelKind::Lstm, ModelKind::Gru] {
        let cfg = RnnConfig { kind, input: 16, hidden: 256, layers: 1, bidirectional: false, dropout: 0.0, bias: true };
        let (b, t) = (8, 4);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let x = seq(b * t * 16, 3);
        let mut rnn = Rnn::new(&cfg, 5).unwrap();
        let y_par = pool.install(|| rnn.forward(&x, b, t, None).unwrap());
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let y_ser = one.install(|| rnn.forward(&x, b, t, None).unwrap());
        assert_eq!(y_par, y_ser, "{kind:?}: the parallel kernel must compute exactly what the serial one does");
    }
}

#[test]
fn chunked_forward_from_state_equals_one_forward() {
    for cfg in configs() {
        let (b, t) = (2, 8);
        let mut rnn = Rnn::new(&cfg, 3).unwrap();
        if cfg.bidirectional {
            continue;
        }
        let x = seq(b * t * cfg.input, 4);
        let full = rnn.forward(&x, b, t, None).unwrap();
        let o = cfg.output_dim();
        let half = |lo: usize| -> Vec<f32> { (0..b).flat_map(|bi| x[(bi * t + lo) * cfg.input..(bi * t + lo + t / 2) * cfg.input].to_vec()).collect() };
        let y1 = rnn.forward(&half(0), b, t / 2, None).unwrap();
        let s = rnn.final_state().unwrap();
        let y2 = rnn.forward_from(&half(t / 2), b, t / 2, Some(&s), None).unwrap();
        for bi in 0..b {
            for ti in 0..t {
                for j in 0..o {
                    let got = if ti < t / 2 { y1[(bi * (t / 2) + ti) * o + j] } else { y2[(bi * (t / 2) + ti - t / 2) * o + j] };
                    assert!((got - full[(bi * t + ti) * o + j]).abs() < 1e-5);
                }
            }
        }
    }
}

/// loss = sum(y * R) for a fixed random R, checked against central differences for every parameter
/// (every coordinate: the tensors are small) and every input coordinate.
#[test]
fn backward_matches_finite_differences() {
    use crate::gradcheck::{check_module_grads, check_param_grads, projection_loss, projection_weights, GradCheckOpts};
    for cfg in configs() {
        let (b, t) = (2, 4);
        let mut rnn = Rnn::new(&cfg, 11).unwrap();
        let mut x = seq(b * t * cfg.input, 12);
        let r = projection_weights(b * t * cfg.output_dim(), 13);
        rnn.zero_grad();
        rnn.forward(&x, b, t, None).unwrap();
        let dx = rnn.backward(&r).unwrap();
        let opts = GradCheckOpts { max_coords: usize::MAX, ..Default::default() };
        let mut probe = rnn.clone();
        check_param_grads("x", &mut x, &dx, |xs| projection_loss(&probe.forward(xs, b, t, None).unwrap(), &r), &opts)
            .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        let reports = check_module_grads(&mut rnn, |m: &mut Rnn| projection_loss(&m.forward(&x, b, t, None).unwrap(), &r), &opts)
            .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        assert_eq!(reports.len(), rnn.params().len());
    }
}

#[test]
fn dropout_is_seeded_and_masks_the_gradient_consistently() {
    let cfg = RnnConfig { kind: ModelKind::Lstm, input: 3, hidden: 6, layers: 2, bidirectional: false, dropout: 0.5, bias: true };
    let (b, t) = (2, 5);
    let mut rnn = Rnn::new(&cfg, 0).unwrap();
    let x = seq(b * t * 3, 1);
    let y1 = rnn.forward(&x, b, t, Some(&mut rng_for(9, 9))).unwrap();
    let y2 = rnn.forward(&x, b, t, Some(&mut rng_for(9, 9))).unwrap();
    let y_eval = rnn.forward(&x, b, t, None).unwrap();
    assert_eq!(y1, y2, "same dropout seed, same output");
    assert_ne!(y1, y_eval, "dropout must change the training output");
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let cfg = RnnConfig { kind: ModelKind::Gru, input: 3, hidden: 4, layers: 1, bidirectional: false, dropout: 0.0, bias: true };
    let mut rnn = Rnn::new(&cfg, 0).unwrap();
    assert!(matches!(rnn.forward(&[0.0; 10], 2, 2, None), Err(Error::Shape { .. })));
    assert!(matches!(rnn.backward(&[0.0; 16]), Err(Error::Invalid(_))));
    rnn.forward(&[0.0; 12], 2, 2, None).unwrap();
    assert!(matches!(rnn.backward(&[0.0; 3]), Err(Error::Shape { .. })));
    let mut s = rnn.zero_state(2);
    assert!(rnn.step(&[0.0; 5], &mut s, &mut [0.0; 8]).is_err());
    let bi = RnnConfig { bidirectional: true, ..cfg.clone() };
    let mut rnn = Rnn::new(&bi, 0).unwrap();
    let mut s = rnn.zero_state(1);
    assert!(matches!(rnn.step(&[0.0; 3], &mut s, &mut [0.0; 4]), Err(Error::Invalid(_))));
    assert!(Rnn::new(&RnnConfig { hidden: 0, ..cfg }, 0).is_err());
}

#[test]
fn inference_mode_equals_training_forward_and_refuses_backward() {
    for cfg in configs() {
        // T = 600 spans several inference chunks (INFER_CHUNK = 256), including a partial one.
        let (b, t) = (2, 600);
        assert!(t > 2 * INFER_CHUNK && t % INFER_CHUNK != 0);
        let mut rnn = Rnn::new(&cfg, 21).unwrap();
        let x = seq(b * t * cfg.input, 22);
        let y = rnn.forward(&x, b, t, None).unwrap();
        let s = rnn.final_state().unwrap();
        let y_inf = rnn.infer(&x, b, t).unwrap();
        assert_eq!(y, y_inf, "{cfg:?}");
        let s_inf = rnn.final_state().unwrap();
        assert_eq!(s.h, s_inf.h);
        assert_eq!(s.c, s_inf.c);
        assert!(matches!(rnn.backward(&y), Err(Error::Invalid(_))));
    }
}

/// `x (B, T, D)` sequence `bi` cut to its first `n` steps: `(1, n, D)`.
fn sequence_prefix(x: &[f32], t: usize, d: usize, bi: usize, n: usize) -> Vec<f32> {
    x[bi * t * d..(bi * t + n) * d].to_vec()
}

/// A padded batch gives every sequence exactly what it gets alone: outputs on the valid steps (zero on the padded
/// ones), final states, input gradients and the sum of the parameter gradients, in training and in inference, with
/// the reverse direction starting at each sequence's last valid step. Padding values are garbage on purpose.
#[test]
fn padded_batch_equals_each_sequence_alone() {
    use crate::gradcheck::projection_weights;
    for cfg in configs() {
        let (b, t, d, o) = (3, 7, cfg.input, cfg.output_dim());
        let lengths = [7usize, 3, 5];
        let x = seq(b * t * d, 31); // (B, T, D), padding included
        let r = projection_weights(b * t * o, 32); // dL/dy, nonzero on padded steps too
        let mut batched = Rnn::new(&cfg, 30).unwrap();
        batched.zero_grad();
        let y = batched.forward_padded(&x, b, t, Some(&lengths), None).unwrap();
        let state = batched.final_state().unwrap();
        let dx = batched.backward(&r).unwrap();
        assert_eq!(y, batched.infer_padded(&x, b, t, Some(&lengths)).unwrap(), "{cfg:?}: inference equals training");
        let state_inf = batched.final_state().unwrap();
        assert_eq!((&state.h, &state.c), (&state_inf.h, &state_inf.c), "{cfg:?}: inference final state");

        let mut alone = Rnn::new(&cfg, 30).unwrap();
        alone.zero_grad();
        let (h, layers_dirs) = (cfg.hidden, cfg.layers * cfg.directions());
        for (bi, &n) in lengths.iter().enumerate() {
            let ya = alone.forward(&sequence_prefix(&x, t, d, bi, n), 1, n, None).unwrap(); // (1, n, O)
            let sa = alone.final_state().unwrap();
            let ra = sequence_prefix(&r, t, o, bi, n);
            let dxa = alone.backward(&ra).unwrap();
            for p in 0..t {
                for j in 0..o {
                    let got = y[(bi * t + p) * o + j];
                    let want = if p < n { ya[p * o + j] } else { 0.0 };
                    assert!((got - want).abs() < 1e-5, "{cfg:?} seq {bi} step {p}: output {got} vs alone {want}");
                }
                for j in 0..d {
                    let got = dx[(bi * t + p) * d + j];
                    let want = if p < n { dxa[p * d + j] } else { 0.0 };
                    assert!((got - want).abs() < 1e-5, "{cfg:?} seq {bi} step {p}: dx {got} vs alone {want}");
                }
            }
            for ld in 0..layers_dirs {
                for j in 0..h {
                    let got = state.h[(ld * b + bi) * h + j];
                    assert!((got - sa.h[ld * h + j]).abs() < 1e-5, "{cfg:?} seq {bi}: h_n[{ld}]");
                    if !state.c.is_empty() {
                        assert!((state.c[(ld * b + bi) * h + j] - sa.c[ld * h + j]).abs() < 1e-5, "{cfg:?} seq {bi}: c_n[{ld}]");
                    }
                }
            }
        }
        for (pb, pa) in batched.params().iter().zip(alone.params()) {
            for (g, w) in pb.grad.iter().zip(&pa.grad) {
                assert!((g - w).abs() < 1e-4 * w.abs().max(1.0), "{cfg:?} {}: batched {g} vs sum alone {w}", pb.name);
            }
        }
    }
}

#[test]
fn full_lengths_take_the_unpadded_path_and_bad_lengths_are_errors() {
    let cfg = RnnConfig { kind: ModelKind::Gru, input: 3, hidden: 4, layers: 2, bidirectional: true, dropout: 0.0, bias: true };
    let (b, t) = (2, 5);
    let mut rnn = Rnn::new(&cfg, 1).unwrap();
    let x = seq(b * t * 3, 2);
    let plain = rnn.forward(&x, b, t, None).unwrap();
    assert_eq!(plain, rnn.forward_padded(&x, b, t, Some(&[5, 5]), None).unwrap(), "bit for bit");
    assert!(matches!(rnn.forward_padded(&x, b, t, Some(&[5]), None), Err(Error::Shape { .. })));
    assert!(matches!(rnn.forward_padded(&x, b, t, Some(&[0, 5]), None), Err(Error::Invalid(_))));
    assert!(matches!(rnn.infer_padded(&x, b, t, Some(&[6, 5])), Err(Error::Invalid(_))));
}
