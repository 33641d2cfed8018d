//! Finite-difference gradient checking, the oracle for every backward pass in effseq.
//!
//! The numerical derivative of coordinate `i` is the central difference
//! `(L(x + h e_i) - L(x - h e_i)) / (x_i^+ - x_i^-)`, where `x_i^±` are the perturbed values *as actually
//! stored in f32* (so rounding of the step itself does not bias the quotient) and `h = eps * max(1, |x_i|)`.
//! Its truncation error is `O(h^2)`; its rounding error is about `ulp(L) / h`, which is why the losses used
//! with it should be sums computed in f64 — [`projection_loss`] is the recommended one: a fixed random
//! projection of a layer's output, so that every output element influences the loss with a different weight
//! and a gradient that is wrong for any element (or has two elements swapped) shows up.
//!
//! Analytic and numerical values `a`, `n` agree when `|a - n| <= atol + rtol * max(|a|, |n|)`. The defaults
//! (`atol = 1e-3`, `rtol = 1e-2`) are far above the finite-difference noise of f32 layers with O(1)
//! activations, and far below the error of a gradient scaled by 1.05 or with one coordinate's sign flipped
//! (the tests of this module check both). A check also fails when it is vacuous: when every numerical
//! derivative it compared is below `10 * atol`, it could not have told a wrong gradient from a right one.
//!
//! Two entry points:
//! - [`check_param_grads`]: one buffer, with a closure that recomputes the loss from (perturbed) values;
//!   convenient for a layer's input.
//! - [`check_module_grads`]: every parameter of a [`Module`], perturbed in place, with a closure that runs
//!   the forward pass of the whole model; convenient for models. Large tensors are checked on a seeded
//!   random subset of coordinates (plus the coordinate with the largest analytic gradient).

use crate::param::Module;
use crate::rng::{fill_uniform, rng_for};
use rand::seq::index::sample;

/// Settings of a gradient check.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckOpts {
    /// Relative step: coordinate `x` is moved by `eps * max(1, |x|)` each way. Default 1e-3.
    pub eps: f64,
    /// Absolute tolerance. Default 1e-3.
    pub atol: f64,
    /// Relative tolerance, against the larger of the two magnitudes. Default 1e-2.
    pub rtol: f64,
    /// At most this many coordinates of each tensor are compared (a seeded random subset when the tensor is
    /// larger). Default 256.
    pub max_coords: usize,
    /// Seed of the coordinate subsets.
    pub seed: u64,
    /// Fail when every compared numerical derivative is below `10 * atol` (the check would be vacuous).
    /// Default true.
    pub require_signal: bool,
}

impl Default for GradCheckOpts {
    fn default() -> Self {
        GradCheckOpts { eps: 1e-3, atol: 1e-3, rtol: 1e-2, max_coords: 256, seed: 0, require_signal: true }
    }
}

/// The outcome of checking one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckReport {
    /// The tensor's name.
    pub name: String,
    /// Number of coordinates compared.
    pub checked: usize,
    /// Number of coordinates of the tensor.
    pub total: usize,
    /// Index (into the flat tensor) of the coordinate with the largest `error_ratio`.
    pub worst_index: usize,
    /// Analytic gradient at `worst_index`.
    pub worst_analytic: f64,
    /// Finite-difference gradient at `worst_index`.
    pub worst_numeric: f64,
    /// `|a - n| / (atol + rtol * max(|a|, |n|))` at `worst_index`: at most 1 means the tensor passes.
    pub worst_ratio: f64,
    /// Largest `|n|` among the compared coordinates (how much signal the check had).
    pub max_abs_numeric: f64,
}

impl std::fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} of {} coordinates, worst at [{}]: analytic {:.6e} vs numeric {:.6e} (error/tolerance {:.3}), max |numeric| {:.3e}",
            self.name, self.checked, self.total, self.worst_index, self.worst_analytic, self.worst_numeric, self.worst_ratio, self.max_abs_numeric
        )
    }
}

/// A fixed random projection: `n` weights drawn from U(-1, 1) under `seed`. Use with [`projection_loss`].
pub fn projection_weights(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rng_for(seed, 0x6772_6164); // stream tag "grad"
    let mut w = vec![0.0f32; n];
    fill_uniform(&mut rng, &mut w, 1.0);
    w
}

/// `sum_i y[i] * w[i]`, accumulated in f64. Its gradient with respect to `y` is `w` itself.
pub fn projection_loss(y: &[f32], w: &[f32]) -> f64 {
    assert_eq!(y.len(), w.len(), "projection_loss: output and weights differ in length");
    y.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Checks `analytic`, the gradient of `loss` at `values`, by central differences.
///
/// `values` is perturbed one coordinate at a time and restored afterwards; `loss` is called with the
/// perturbed buffer and must be a deterministic function of it. Returns the report, or `Err` with the
/// report's text when a coordinate is out of tolerance or the check is vacuous.
pub fn check_param_grads<F>(name: &str, values: &mut [f32], analytic: &[f32], mut loss: F, opts: &GradCheckOpts) -> Result<GradCheckReport, String>
where
    F: FnMut(&[f32]) -> f64,
{
    if values.len() != analytic.len() {
        return Err(format!("{name}: {} values but {} analytic gradients", values.len(), analytic.len()));
    }
    let eps = opts.eps;
    check_coords(name, analytic, opts, |i, direction| {
        let old = values[i];
        values[i] = perturbed(old, eps, direction);
        let l = loss(values);
        let new = std::mem::replace(&mut values[i], old);
        (l, new)
    })
}

/// Checks every parameter gradient of `module` by central differences.
///
/// The analytic gradients are read from each [`crate::Param::grad`] at the time of the call, so run the
/// forward and backward pass (after zeroing the gradients) first. `loss` runs the forward pass of the
/// module with its current (perturbed) parameters and returns the scalar loss; it must be deterministic
/// (fixed dropout masks, fixed data) and may change gradients (they are not read again). Returns one report
/// per parameter, in [`Module::params`] order, or `Err` with the text of every failing report.
pub fn check_module_grads<M, F>(module: &mut M, mut loss: F, opts: &GradCheckOpts) -> Result<Vec<GradCheckReport>, String>
where
    M: Module + ?Sized,
    F: FnMut(&mut M) -> f64,
{
    let snapshot: Vec<(String, Vec<f32>)> = module.params().iter().map(|p| (p.name.clone(), p.grad.clone())).collect();
    let mut reports = Vec::with_capacity(snapshot.len());
    let mut failures = Vec::new();
    for (index, (name, analytic)) in snapshot.iter().enumerate() {
        let result = check_coords(name, analytic, opts, |i, direction| {
            let old = module.params_mut()[index].value[i];
            module.params_mut()[index].value[i] = perturbed(old, opts.eps, direction);
            let l = loss(module);
            let new = std::mem::replace(&mut module.params_mut()[index].value[i], old);
            (l, new)
        });
        match result {
            Ok(report) => reports.push(report),
            Err(msg) => failures.push(msg),
        }
    }
    if failures.is_empty() {
        Ok(reports)
    } else {
        Err(failures.join("\n"))
    }
}

/// FNV-1a of a name, so that each tensor gets its own coordinate subset under one seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The coordinates to compare: all of them, or a seeded subset of `max_coords` that always contains the
/// coordinate with the largest analytic magnitude. Sorted.
fn select_coords(name: &str, analytic: &[f32], opts: &GradCheckOpts) -> Vec<usize> {
    let total = analytic.len();
    if total <= opts.max_coords {
        return (0..total).collect();
    }
    let mut rng = rng_for(opts.seed, name_hash(name));
    let mut coords = sample(&mut rng, total, opts.max_coords.max(1)).into_vec();
    let largest = (0..total).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap_or(0);
    if !coords.contains(&largest) {
        coords[0] = largest;
    }
    coords.sort_unstable();
    coords
}

/// `x` moved by `direction * eps * max(1, |x|)`, rounded to f32 (`direction` is +1 or -1).
fn perturbed(x: f32, eps: f64, direction: f64) -> f32 {
    (x as f64 + direction * eps * (x.abs() as f64).max(1.0)) as f32
}

/// The shared core: `loss_at(i, direction)` sets coordinate `i` to `perturbed(x_i, eps, direction)`,
/// evaluates the loss, restores the coordinate and returns `(loss, the perturbed value)`.
fn check_coords<F>(name: &str, analytic: &[f32], opts: &GradCheckOpts, mut loss_at: F) -> Result<GradCheckReport, String>
where
    F: FnMut(usize, f64) -> (f64, f32),
{
    let coords = select_coords(name, analytic, opts);
    let mut report = GradCheckReport {
        name: name.to_string(),
        checked: 0,
        total: analytic.len(),
        worst_index: 0,
        worst_analytic: 0.0,
        worst_numeric: 0.0,
        worst_ratio: 0.0,
        max_abs_numeric: 0.0,
    };
    for &i in &coords {
        let (l_plus, x_plus) = loss_at(i, 1.0);
        let (l_minus, x_minus) = loss_at(i, -1.0);
        let numeric = (l_plus - l_minus) / (x_plus as f64 - x_minus as f64);
        let a = analytic[i] as f64;
        let tolerance = opts.atol + opts.rtol * a.abs().max(numeric.abs());
        // A NaN anywhere is a failure: make its ratio infinite.
        let ratio = if numeric.is_finite() && a.is_finite() { (a - numeric).abs() / tolerance } else { f64::INFINITY };
        if report.checked == 0 || ratio > report.worst_ratio {
            report.worst_index = i;
            report.worst_analytic = a;
            report.worst_numeric = numeric;
            report.worst_ratio = ratio;
        }
        report.max_abs_numeric = report.max_abs_numeric.max(numeric.abs());
        report.checked += 1;
    }
    if report.worst_ratio > 1.0 {
        return Err(format!("gradient check failed: {report}"));
    }
    if opts.require_signal && report.checked > 0 && report.max_abs_numeric < 10.0 * opts.atol {
        return Err(format!("gradient check is vacuous (every numerical derivative is below 10 * atol = {:e}): {report}", 10.0 * opts.atol));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::param::Param;

    /// y = tanh(W x) for a 4x5 W, loss = projection of y. Returns (loss, dL/dx, dL/dW).
    fn tiny_model(w: &[f32], x: &[f32], proj: &[f32]) -> (f64, Vec<f32>, Vec<f32>) {
        let (m, k) = (4, 5);
        let mut loss = 0.0;
        let mut dx = vec![0.0f32; k];
        let mut dw = vec![0.0f32; m * k];
        for r in 0..m {
            let z: f32 = (0..k).map(|c| w[r * k + c] * x[c]).sum();
            let y = z.tanh();
            loss += y as f64 * proj[r] as f64;
            let dz = proj[r] * (1.0 - y * y);
            for c in 0..k {
                dx[c] += dz * w[r * k + c];
                dw[r * k + c] += dz * x[c];
            }
        }
        (loss, dx, dw)
    }

    fn inputs() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        (projection_weights(20, 1), projection_weights(5, 2), projection_weights(4, 3))
    }

    #[test]
    fn accepts_a_correct_gradient() {
        let (w, mut x, proj) = inputs();
        let (_, dx, _) = tiny_model(&w, &x, &proj);
        let report = check_param_grads("x", &mut x, &dx, |x| tiny_model(&w, x, &proj).0, &GradCheckOpts::default()).unwrap();
        assert_eq!(report.checked, 5);
        assert!(report.worst_ratio < 0.1, "{report}");
    }

    #[test]
    fn rejects_a_gradient_scaled_by_1_05() {
        let (w, mut x, proj) = inputs();
        let (_, dx, _) = tiny_model(&w, &x, &proj);
        let scaled: Vec<f32> = dx.iter().map(|g| g * 1.05).collect();
        let err = check_param_grads("x", &mut x, &scaled, |x| tiny_model(&w, x, &proj).0, &GradCheckOpts::default()).unwrap_err();
        assert!(err.contains("gradient check failed"), "{err}");
    }

    #[test]
    fn rejects_a_gradient_with_one_coordinate_flipped() {
        let (w, mut x, proj) = inputs();
        let (_, dx, _) = tiny_model(&w, &x, &proj);
        // Flip the smallest-magnitude coordinate that still carries signal, the hardest one to notice.
        let i = (0..dx.len()).filter(|&i| dx[i].abs() > 0.02).min_by(|&a, &b| dx[a].abs().total_cmp(&dx[b].abs())).unwrap();
        let mut flipped = dx.clone();
        flipped[i] = -flipped[i];
        let err = check_param_grads("x", &mut x, &flipped, |x| tiny_model(&w, x, &proj).0, &GradCheckOpts::default()).unwrap_err();
        assert!(err.contains(&format!("worst at [{i}]")), "{err}");
        // The values were restored after the check.
        assert_eq!(x, inputs().1);
    }

    #[test]
    fn rejects_a_vacuous_check() {
        let mut x = vec![0.5f32; 3];
        let err = check_param_grads("x", &mut x, &[0.0; 3], |_| 1.0, &GradCheckOpts::default()).unwrap_err();
        assert!(err.contains("vacuous"), "{err}");
        let opts = GradCheckOpts { require_signal: false, ..GradCheckOpts::default() };
        assert!(check_param_grads("x", &mut x, &[0.0; 3], |_| 1.0, &opts).is_ok());
    }

    #[test]
    fn rejects_nan_gradients_and_length_mismatch() {
        let (w, mut x, proj) = inputs();
        let (_, mut dx, _) = tiny_model(&w, &x, &proj);
        assert!(check_param_grads("x", &mut x, &dx[..4], |x| tiny_model(&w, x, &proj).0, &GradCheckOpts::default()).is_err());
        dx[2] = f32::NAN;
        let err = check_param_grads("x", &mut x, &dx, |x| tiny_model(&w, x, &proj).0, &GradCheckOpts::default()).unwrap_err();
        assert!(err.contains("worst at [2]"), "{err}");
    }

    struct TinyModule {
        w: Param,
    }

    impl Module for TinyModule {
        fn params(&self) -> Vec<&Param> {
            vec![&self.w]
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            vec![&mut self.w]
        }
    }

    #[test]
    fn module_check_accepts_correct_and_rejects_wrong_parameter_gradients() {
        let (w, x, proj) = inputs();
        let (_, _, dw) = tiny_model(&w, &x, &proj);
        let mut module = TinyModule { w: Param::new("w", &[4, 5], w.clone()) };
        module.w.grad = dw.clone();
        let reports = check_module_grads(&mut module, |m| tiny_model(&m.w.value, &x, &proj).0, &GradCheckOpts::default()).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].checked, 20);
        assert_eq!(module.w.value, w, "parameters are restored");

        module.w.grad = dw.iter().map(|g| g * 1.05).collect();
        let err = check_module_grads(&mut module, |m| tiny_model(&m.w.value, &x, &proj).0, &GradCheckOpts::default()).unwrap_err();
        assert!(err.starts_with("gradient check failed: w:"), "{err}");
    }

    #[test]
    fn large_tensors_are_subsampled_reproducibly_and_keep_the_largest_coordinate() {
        let mut analytic = vec![0.1f32; 1000];
        analytic[777] = 5.0;
        let opts = GradCheckOpts { max_coords: 10, ..GradCheckOpts::default() };
        let a = select_coords("t", &analytic, &opts);
        assert_eq!(a.len(), 10);
        assert!(a.contains(&777));
        assert_eq!(a, select_coords("t", &analytic, &opts));
        assert_ne!(a, select_coords("u", &analytic, &opts));
        assert!(a.windows(2).all(|p| p[0] < p[1]));
    }
}
