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
