//! Losses with their gradients: mean squared error and softmax cross-entropy.

use crate::error::{check_len, Error, Result};
use crate::math::exp;

/// Class target that is skipped by the loss and the metric (PyTorch's `ignore_index`).
pub const IGNORE: i32 = -100;

/// Mean squared error over every element, as `nn.MSELoss()` (reduction `mean`).
///
/// Returns `(loss, dpred)` with `loss = mean((pred - target)^2)` (accumulated in f64) and
/// `dpred = 2 (pred - target) / len`, the gradient of that mean, shaped like `pred`. Buffers of different
/// lengths, or empty ones, are an error.
pub fn mse(pred: &[f32], target: &[f32]) -> Result<(f32, Vec<f32>)> {
    if pred.len() != target.len() {
        return Err(Error::shape("mse target", &[pred.len()], &[target.len()]));
    }
    if pred.is_empty() {
        return Err(Error::Invalid("mse of empty buffers".into()));
    }
    let scale = 2.0 / pred.len() as f64;
    let mut sum = 0.0f64;
    let grad = pred
        .iter()
        .zip(target)
        .map(|(&p, &t)| {
            let diff = p as f64 - t as f64;
            sum += diff * diff;
            (scale * diff) as f32
        })
        .collect();
    Ok(((sum / pred.len() as f64) as f32, grad))
}

/// The result of [`cross_entropy`].
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropyOut {
    /// Mean negative log-likelihood over the counted positions (0 when none is counted; PyTorch
    /// returns NaN there).
    pub loss: f32,
    /// Gradient of `loss` with respect to the logits, `(N, C)`: `(softmax - onehot) / counted` on counted
    /// rows, zero on ignored ones.
    pub dlogits: Vec<f32>,
    /// Positions whose target is not [`IGNORE`].
    pub counted: usize,
    /// Counted positions whose argmax logit (the first one on ties) equals the target.
    pub correct: usize,
}

/// Softmax cross-entropy of `logits (N, C)` against class ids `targets (N)`, as
/// `nn.CrossEntropyLoss(ignore_index=-100)` with reduction `mean`.
///
/// Uses the stable log-softmax `log p_t = x_t - max - ln(sum_j exp(x_j - max))`, with the sums in f64.
/// Targets equal to [`IGNORE`] are skipped; any other target outside `0..C` is an error naming it and
/// its position.
pub fn cross_entropy(logits: &[f32], targets: &[i32], c: usize) -> Result<CrossEntropyOut> {
    if c == 0 {
        return Err(Error::Invalid("cross_entropy needs at least one class".into()));
    }
    let n = targets.len();
    check_len("cross_entropy logits", &[n, c], logits.len())?;
    if let Some((pos, &t)) = targets.iter().enumerate().find(|&(_, &t)| t != IGNORE && !(0..c as i64).contains(&(t as i64))) {
        return Err(Error::Invalid(format!("cross_entropy: target {t} at position {pos} is out of range for {c} classes (use {IGNORE} to skip a position)")));
    }
    let counted = targets.iter().filter(|&&t| t != IGNORE).count();
    let mut dlogits = vec![0.0f32; n * c];
    let mut nll_sum = 0.0f64;
    let mut correct = 0;
    let inv_counted = if counted > 0 { 1.0 / counted as f64 } else { 0.0 };
    for ((row, drow), &target) in logits.chunks_exact(c).zip(dlogits.chunks_exact_mut(c)).zip(targets) {
        if target == IGNORE {
            continue;
        }
        let target = target as usize;
        // First index of the maximum (NaNs never win a comparison).
        let (argmax, max) = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (j, &v)| if v > best.1 { (j, v) } else { best });
        if argmax == target {
            correct += 1;
        }
        for (d, &v) in drow.iter_mut().zip(row) {
            *d = exp(v - max);
        }
        let sum: f64 = drow.iter().map(|&e| e as f64).sum();
        nll_sum += sum.ln() + max as f64 - row[target] as f64;
        // dlogits = (softmax - onehot) / counted.
        let scale = inv_counted / sum;
        for d in drow.iter_mut() {
            *d = (*d as f64 * scale) as f32;
        }
        drow[target] -= inv_counted as f32;
    }
    Ok(CrossEntropyOut { loss: (nll_sum * inv_counted) as f32, dlogits, counted, correct })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_matches_hand_computation() {
        let (loss, grad) = mse(&[1.0, 2.0, 4.0], &[0.0, 2.0, 1.0]).unwrap();
        assert!((loss - 10.0 / 3.0).abs() < 1e-6);
        assert_eq!(grad, vec![2.0 / 3.0, 0.0, 2.0]);
        assert!(mse(&[1.0], &[1.0, 2.0]).is_err());
        assert!(mse(&[], &[]).is_err());
    }

    #[test]
    fn cross_entropy_matches_hand_computation() {
        // Row 0: logits (0, ln 3), target 1: p = 3/4. Row 1 ignored. Row 2: uniform over 2, target 0.
        let logits = [0.0, 3f32.ln(), 5.0, -5.0, 1.0, 1.0];
        let out = cross_entropy(&logits, &[1, IGNORE, 0], 2).unwrap();
        let want = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((out.loss as f64 - want).abs() < 1e-6, "{} vs {want}", out.loss);
        assert_eq!((out.counted, out.correct), (2, 2)); // ties go to the first index
        let want_grad = [0.25 / 2.0, -0.25 / 2.0, 0.0, 0.0, -0.5 / 2.0, 0.5 / 2.0];
        for (g, w) in out.dlogits.iter().zip(want_grad) {
            assert!((g - w).abs() < 1e-6, "{:?}", out.dlogits);
        }
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() {
        let out = cross_entropy(&[1e4, 0.0, -1e4], &[1], 3).unwrap();
        assert!((out.loss - 1e4).abs() < 1.0 && out.dlogits.iter().all(|g| g.is_finite()));
        assert_eq!(out.correct, 0);
    }

    #[test]
    fn cross_entropy_errors_and_all_ignored() {
        let err = cross_entropy(&[0.0; 4], &[0, 2], 2).unwrap_err().to_string();
        assert!(err.contains("target 2 at position 1"), "{err}");
        assert!(cross_entropy(&[0.0; 4], &[-1, 0], 2).is_err());
        assert!(cross_entropy(&[0.0; 3], &[0, 0], 2).is_err());
        let none = cross_entropy(&[0.0; 4], &[IGNORE, IGNORE], 2).unwrap();
        assert_eq!((none.loss, none.counted, none.correct), (0.0, 0, 0));
        assert!(none.dlogits.iter().all(|&g| g == 0.0));
    }
}
