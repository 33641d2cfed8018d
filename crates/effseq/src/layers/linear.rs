//! The affine map `y = x W^T + b`, PyTorch's `nn.Linear`.

use crate::error::{check_len, Error, Result};
use crate::linalg::{matmul, Trans};
use crate::param::{Module, Param};
use crate::rng::{fill_uniform, Rng};

/// `y (N, C_out) = x (N, C_in) W^T + b`, with `N` any number of rows (e.g. `B * T`).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `{prefix}.weight`, `(C_out, C_in)`.
    pub weight: Param,
    /// `{prefix}.bias`, `(C_out)`; `None` for a layer without bias.
    pub bias: Option<Param>,
    /// The input of the last `forward`, `(N, C_in)`, and its `N`.
    cache: Option<(Vec<f32>, usize)>,
}

impl Linear {
    /// A layer named `{prefix}.weight` / `{prefix}.bias`, initialised as `nn.Linear`: every weight and
    /// bias from U(-1/sqrt(C_in), 1/sqrt(C_in)) (the weight's Kaiming-uniform with a = sqrt(5) reduces to
    /// exactly that bound). The weight is drawn before the bias.
    pub fn new(prefix: &str, c_in: usize, c_out: usize, bias: bool, rng: &mut Rng) -> Linear {
        let bound = if c_in > 0 { 1.0 / (c_in as f32).sqrt() } else { 0.0 };
        let mut weight = Param::zeros(format!("{prefix}.weight"), &[c_out, c_in]);
        fill_uniform(rng, &mut weight.value, bound);
        let bias = bias.then(|| {
            let mut b = Param::zeros(format!("{prefix}.bias"), &[c_out]);
            fill_uniform(rng, &mut b.value, bound);
            b
        });
        Linear { weight, bias, cache: None }
    }

    /// Input width `C_in`.
    pub fn c_in(&self) -> usize {
        self.weight.shape[1]
    }

    /// Output width `C_out`.
    pub fn c_out(&self) -> usize {
        self.weight.shape[0]
    }

    /// `y (N, C_out)` for `x (N, C_in)`; caches `x` for [`Linear::backward`].
    pub fn forward(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; n * self.c_out()];
        self.apply(x, n, &mut y)?;
        self.cache = Some((x.to_vec(), n));
        Ok(y)
    }

    /// Inference: writes `y (N, C_out)` for `x (N, C_in)` into `out` without caching anything.
    pub fn apply(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let (c_in, c_out) = (self.c_in(), self.c_out());
        check_len(&format!("input of {}", self.weight.name), &[n, c_in], x.len())?;
        check_len(&format!("output of {}", self.weight.name), &[n, c_out], out.len())?;
        let beta = match &self.bias {
            Some(b) => {
                for row in out.chunks_exact_mut(c_out) {
                    row.copy_from_slice(&b.value);
                }
                1.0
            }
            None => 0.0,
        };
        // out (N, C_out) = x (N, C_in) * W^T, W stored (C_out, C_in).
        matmul(n, c_out, c_in, 1.0, x, Trans::N, &self.weight.value, Trans::T, beta, out);
        Ok(())
    }

    /// Given `dy (N, C_out)` for the last `forward`, adds `dW += dy^T x` and `db += sum_rows dy`, and
    /// returns `dx (N, C_in) = dy W`.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let (c_in, c_out) = (self.c_in(), self.c_out());
        let (x, n) = self.cache.as_ref().ok_or_else(|| Error::Invalid(format!("{}: backward called before forward", self.weight.name)))?;
        let n = *n;
        check_len(&format!("output gradient of {}", self.weight.name), &[n, c_out], dy.len())?;
        // dW (C_out, C_in) += dy^T (C_out, N) * x (N, C_in); dy is stored (N, C_out).
        matmul(c_out, c_in, n, 1.0, dy, Trans::T, x, Trans::N, 1.0, &mut self.weight.grad);
        if let Some(b) = &mut self.bias {
            for row in dy.chunks_exact(c_out) {
                for (g, d) in b.grad.iter_mut().zip(row) {
                    *g += d;
                }
            }
        }
        // dx (N, C_in) = dy (N, C_out) * W (C_out, C_in).
        let mut dx = vec![0.0f32; n * c_in];
        matmul(n, c_in, c_out, 1.0, dy, Trans::N, &self.weight.value, Trans::N, 0.0, &mut dx);
        Ok(dx)
    }
}

impl Module for Linear {
    fn params(&self) -> Vec<&Param> {
        std::iter::once(&self.weight).chain(self.bias.as_ref()).collect()
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        std::iter::once(&mut self.weight).chain(self.bias.as_mut()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_for;

    #[test]
    fn names_shapes_and_init_bound_match_nn_linear() {
        let lin = Linear::new("head", 16, 3, true, &mut rng_for(0, 0));
        assert_eq!(lin.weight.name, "head.weight");
        assert_eq!(lin.weight.shape, vec![3, 16]);
        let bias = lin.bias.as_ref().unwrap();
        assert_eq!((bias.name.as_str(), bias.shape.as_slice()), ("head.bias", &[3][..]));
        assert!(lin.weight.value.iter().chain(&bias.value).all(|v| v.abs() <= 0.25));
        assert!(lin.weight.value.iter().any(|v| v.abs() > 0.15), "spread over the whole range");
        assert_eq!(lin.params().len(), 2);
        assert_eq!(Linear::new("p", 4, 2, false, &mut rng_for(0, 0)).params().len(), 1);
    }

    #[test]
    fn forward_matches_a_hand_computed_product() {
        let mut lin = Linear::new("l", 2, 2, true, &mut rng_for(0, 0));
        lin.weight.value = vec![1.0, 2.0, 3.0, 4.0];
        lin.bias.as_mut().unwrap().value = vec![0.5, -0.5];
        let y = lin.forward(&[1.0, 1.0, 0.0, -1.0], 2).unwrap();
        assert_eq!(y, vec![3.5, 6.5, -1.5, -4.5]);
    }

    #[test]
    fn errors_on_wrong_lengths_and_backward_before_forward() {
        let mut lin = Linear::new("l", 3, 2, true, &mut rng_for(0, 0));
        assert!(matches!(lin.backward(&[0.0; 2]), Err(Error::Invalid(_))));
        assert!(matches!(lin.forward(&[0.0; 5], 2), Err(Error::Shape { .. })));
        lin.forward(&[0.0; 6], 2).unwrap();
        assert!(matches!(lin.backward(&[0.0; 3]), Err(Error::Shape { .. })));
        let mut out = vec![0.0; 3];
        assert!(lin.apply(&[0.0; 6], 2, &mut out).is_err());
    }

    #[test]
    fn backward_accumulates_parameter_gradients() {
        let mut lin = Linear::new("l", 3, 2, true, &mut rng_for(0, 0));
        let x = [0.1, -0.2, 0.3, 0.4, 0.5, -0.6];
        lin.forward(&x, 2).unwrap();
        let dy = [1.0, -1.0, 0.5, 2.0];
        lin.backward(&dy).unwrap();
        let once = (lin.weight.grad.clone(), lin.bias.as_ref().unwrap().grad.clone());
        lin.backward(&dy).unwrap();
        for (a, b) in lin.weight.grad.iter().zip(&once.0).chain(lin.bias.as_ref().unwrap().grad.iter().zip(&once.1)) {
            assert!((a - 2.0 * b).abs() < 1e-6);
        }
        assert_eq!(once.1, vec![1.5, 1.0]);
    }
}
