//! Elementwise activations with explicit forward and backward passes over slices.
//!
//! Every `*_forward(x, y)` writes `y[i] = f(x[i])`; every `*_backward(.., dy, dx)` **adds**
//! `dy[i] * f'(x[i])` into `dx[i]` (zero `dx` first to overwrite). Each backward takes whichever of the
//! input `x` or the output `y` gives the cheaper derivative, as its signature says. All of them go through
//! [`crate::math`]'s branch-free `exp`/`tanh`/`sigmoid`, so the loops vectorise. They panic when the slices
//! differ in length (a programming error, not a data error).
//!
//! | function | PyTorch | derivative uses |
//! |----------|---------|-----------------|
//! | relu | `nn.ReLU` | output |
//! | gelu_tanh | `nn.GELU(approximate='tanh')` | input |
//! | gelu_erf | `nn.GELU()` (the default, `approximate='none'`) | input |
//! | tanh | `nn.Tanh` | output |
//! | sigmoid | `nn.Sigmoid` | output |
//! | silu | `nn.SiLU` | input |

use crate::math::{exp, sigmoid, tanh};

/// sqrt(2 / pi), the scale inside the tanh approximation of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation of GELU (Hendrycks & Gimpel 2016, sec. 2).
const GELU_CUBIC: f32 = 0.044_715;
/// 1 / sqrt(2).
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi), the peak of the standard normal density.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

fn check_lengths(what: &str, a: usize, b: usize) {
    assert_eq!(a, b, "{what}: slices of different lengths ({a} and {b})");
}

/// The error function, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), branch-free.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let z = x.abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    (1.0 - poly * exp(-z * z)).copysign(x)
}

/// ReLU: `y = max(x, 0)`.
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    check_lengths("relu_forward", x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.max(0.0);
    }
}

/// ReLU backward from the output: `dx += dy * [y > 0]` (the derivative at 0 is taken as 0, as PyTorch).
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_lengths("relu_backward", y.len(), dy.len());
    check_lengths("relu_backward", y.len(), dx.len());
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d += if v > 0.0 { g } else { 0.0 };
    }
}

/// GELU, tanh approximation (Hendrycks & Gimpel 2016): `y = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
/// Matches `nn.GELU(approximate='tanh')`.
pub fn gelu_tanh_forward(x: &[f32], y: &mut [f32]) {
    check_lengths("gelu_tanh_forward", x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        let u = SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v);
        *o = 0.5 * v * (1.0 + tanh(u));
    }
}

/// Backward of [`gelu_tanh_forward`] from the input:
/// `dx += dy * (1/2 (1 + t) + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))` with `t = tanh(u)`.
pub fn gelu_tanh_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_lengths("gelu_tanh_backward", x.len(), dy.len());
    check_lengths("gelu_tanh_backward", x.len(), dx.len());
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        let u = SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v);
        let t = tanh(u);
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * v * v);
        *d += g * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du);
    }
}

/// GELU, exact form (Hendrycks & Gimpel 2016): `y = x Phi(x) = x/2 (1 + erf(x / sqrt 2))`.
/// Matches `nn.GELU()` (PyTorch's default, `approximate='none'`) to about 1e-7 |x| (see [`erf`]).
pub fn gelu_erf_forward(x: &[f32], y: &mut [f32]) {
    check_lengths("gelu_erf_forward", x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2));
    }
}

/// Backward of [`gelu_erf_forward`] from the input: `dx += dy * (Phi(x) + x phi(x))`, with `phi` the
/// standard normal density.
pub fn gelu_erf_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_lengths("gelu_erf_backward", x.len(), dy.len());
    check_lengths("gelu_erf_backward", x.len(), dx.len());
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
        *d += g * (cdf + v * pdf);
    }
}

/// Hyperbolic tangent: `y = tanh(x)`.
pub fn tanh_forward(x: &[f32], y: &mut [f32]) {
    check_lengths("tanh_forward", x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = tanh(v);
    }
}

/// Backward of [`tanh_forward`] from the output: `dx += dy * (1 - y^2)`.
pub fn tanh_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_lengths("tanh_backward", y.len(), dy.len());
    check_lengths("tanh_backward", y.len(), dx.len());
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d += g * (1.0 - v * v);
    }
}

/// Logistic sigmoid: `y = 1 / (1 + e^-x)`.
pub fn sigmoid_forward(x: &[f32], y: &mut [f32]) {
    check_lengths("sigmoid_forward", x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = sigmoid(v);
    }
}

/// Backward of [`sigmoid_forward`] from the output: `dx += dy * y (1 - y)`.
pub fn sigmoid_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_lengths("sigmoid_backward", y.len(), dy.len());
    check_lengths("sigmoid_backward", y.len(), dx.len());
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *d += g * v * (1.0 - v);
    }
}

/// SiLU / swish (Elfwing et al. 2018; Ramachandran et al. 2017): `y = x sigmoid(x)`.
pub fn silu_forward(x: &[f32], y: &mut [f32]) {
    check_lengths("silu_forward", x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v * sigmoid(v);
    }
}

/// Backward of [`silu_forward`] from the input: `dx += dy * s (1 + x (1 - s))` with `s = sigmoid(x)`.
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    check_lengths("silu_backward", x.len(), dy.len());
    check_lengths("silu_backward", x.len(), dx.len());
    for ((d, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
        let s = sigmoid(v);
        *d += g * s * (1.0 + v * (1.0 - s));
    }
}

/// One of the activations above, chosen at run time (e.g. from a config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `y = x`.
    Identity,
    /// [`relu_forward`].
    Relu,
    /// [`gelu_tanh_forward`], `nn.GELU(approximate='tanh')`.
    GeluTanh,
    /// [`gelu_erf_forward`], `nn.GELU()`.
    GeluErf,
    /// [`tanh_forward`].
    Tanh,
    /// [`sigmoid_forward`].
    Sigmoid,
    /// [`silu_forward`].
    Silu,
}

impl Activation {
    /// Every activation, in declaration order.
    pub const ALL: &'static [Activation] =
        &[Activation::Identity, Activation::Relu, Activation::GeluTanh, Activation::GeluErf, Activation::Tanh, Activation::Sigmoid, Activation::Silu];

    /// A short lowercase name ("identity", "relu", "gelu_tanh", "gelu", "tanh", "sigmoid", "silu").
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::GeluErf => "gelu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Silu => "silu",
        }
    }

    /// `y = f(x)` elementwise.
    pub fn forward(self, x: &[f32], y: &mut [f32]) {
        match self {
            Activation::Identity => {
                check_lengths("identity_forward", x.len(), y.len());
                y.copy_from_slice(x);
            }
            Activation::Relu => relu_forward(x, y),
            Activation::GeluTanh => gelu_tanh_forward(x, y),
            Activation::GeluErf => gelu_erf_forward(x, y),
            Activation::Tanh => tanh_forward(x, y),
            Activation::Sigmoid => sigmoid_forward(x, y),
            Activation::Silu => silu_forward(x, y),
        }
    }

    /// `dx += dy * f'(x)` elementwise, given both the input `x` and the output `y` of the forward pass.
    pub fn backward(self, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
        match self {
            Activation::Identity => {
                check_lengths("identity_backward", dy.len(), dx.len());
                for (d, &g) in dx.iter_mut().zip(dy) {
                    *d += g;
                }
            }
            Activation::Relu => relu_backward(y, dy, dx),
            Activation::GeluTanh => gelu_tanh_backward(x, dy, dx),
            Activation::GeluErf => gelu_erf_backward(x, dy, dx),
            Activation::Tanh => tanh_backward(y, dy, dx),
            Activation::Sigmoid => sigmoid_backward(y, dy, dx),
            Activation::Silu => silu_backward(x, dy, dx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64 by its Maclaurin series (converges fast for |x| <= 3).
    fn erf_series(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_accurate() {
        let mut x = -3.0f64;
        while x <= 3.0 {
            assert!((erf(x as f32) as f64 - erf_series(x)).abs() < 3e-7, "erf({x})");
            x += 0.01;
        }
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn forwards_match_closed_forms_in_f64() {
        let x: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.1).collect();
        let mut y = vec![0.0f32; x.len()];
        type ClosedForm = fn(f64) -> f64;
        let closed: [(Activation, ClosedForm); 7] = [
            (Activation::Identity, |v| v),
            (Activation::Relu, |v| v.max(0.0)),
            (Activation::GeluTanh, |v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())),
            (Activation::GeluErf, |v| 0.5 * v * (1.0 + erf_series(v / 2f64.sqrt()))),
            (Activation::Tanh, f64::tanh),
            (Activation::Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
            (Activation::Silu, |v| v / (1.0 + (-v).exp())),
        ];
        for (act, f) in closed {
            act.forward(&x, &mut y);
            for (&xi, &yi) in x.iter().zip(&y) {
                assert!((yi as f64 - f(xi as f64)).abs() < 1e-6, "{} at {xi}: {yi}", act.name());
            }
        }
    }

    #[test]
    fn backward_accumulates() {
        let x = [0.5f32, -1.0];
        let mut y = [0.0f32; 2];
        tanh_forward(&x, &mut y);
        let mut dx = [1.0f32, 2.0];
        tanh_backward(&y, &[1.0, 1.0], &mut dx);
        assert!((dx[0] - (1.0 + 1.0 - 0.5f32.tanh().powi(2))).abs() < 1e-6);
        assert!((dx[1] - (2.0 + 1.0 - 1.0f32.tanh().powi(2))).abs() < 1e-6);
    }

    #[test]
    #[should_panic(expected = "slices of different lengths")]
    fn mismatched_lengths_panic() {
        relu_forward(&[1.0, 2.0], &mut [0.0]);
    }
}
