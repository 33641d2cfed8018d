//! Layer normalisation (Ba, Kiros & Hinton 2016, eq. 4), PyTorch's `nn.LayerNorm(D)` over the last axis.
//!
//! Forward and backward follow llm.c's `layernorm_forward` / `layernorm_backward`: the forward caches
//! each row's mean and reciprocal standard deviation `rstd = 1 / sqrt(var + eps)` (biased variance, as
//! PyTorch), so the backward never recomputes them.

use crate::error::{check_len, Error, Result};
use crate::param::{Module, Param};

/// `y (N, D) = (x - mean) * rstd * weight + bias`, row by row.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// `{prefix}.weight` (gamma), `(D)`, initialised to ones.
    pub weight: Param,
    /// `{prefix}.bias` (beta), `(D)`, initialised to zeros.
    pub bias: Param,
    /// Added to the variance; 1e-5 as PyTorch's default.
    pub eps: f32,
    /// `(x (N, D), mean (N), rstd (N))` of the last forward.
    cache: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

impl LayerNorm {
    /// A layer over rows of width `dim`, named `{prefix}.weight` / `{prefix}.bias`, eps 1e-5.
    pub fn new(prefix: &str, dim: usize) -> LayerNorm {
        LayerNorm {
            weight: Param::new(format!("{prefix}.weight"), &[dim], vec![1.0; dim]),
            bias: Param::zeros(format!("{prefix}.bias"), &[dim]),
            eps: 1e-5,
            cache: None,
        }
    }

    /// Row width `D`.
    pub fn dim(&self) -> usize {
        self.weight.shape[0]
    }

    /// `y (N, D)` for `x (N, D)`; caches `x`, the means and the rstds.
    pub fn forward(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; n * self.dim()];
        let mut mean = vec![0.0f32; n];
        let mut rstd = vec![0.0f32; n];
        self.normalise(x, n, &mut y, &mut mean, &mut rstd)?;
        self.cache = Some((x.to_vec(), mean, rstd));
        Ok(y)
    }

    /// Inference: writes `y (N, D)` for `x (N, D)` into `out`, caching nothing.
    pub fn apply(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let dim = self.dim();
        check_len(&format!("input of {}", self.weight.name), &[n, dim], x.len())?;
        check_len(&format!("output of {}", self.weight.name), &[n, dim], out.len())?;
        for (xr, yr) in x.chunks_exact(dim.max(1)).zip(out.chunks_exact_mut(dim.max(1))) {
            self.normalise_row(xr, yr);
        }
        Ok(())
    }

    fn normalise(&self, x: &[f32], n: usize, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]) -> Result<()> {
        let dim = self.dim();
        check_len(&format!("input of {}", self.weight.name), &[n, dim], x.len())?;
        if dim == 0 {
            return Ok(());
        }
        for (r, (xr, yr)) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)).enumerate() {
            (mean[r], rstd[r]) = self.normalise_row(xr, yr);
        }
        Ok(())
    }

    /// Normalises one row of `D` values and returns its `(mean, rstd)`.
    fn normalise_row(&self, x: &[f32], y: &mut [f32]) -> (f32, f32) {
        let dim = x.len() as f32;
        let mean = x.iter().sum::<f32>() / dim;
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / dim;
        let rstd = 1.0 / (var + self.eps).sqrt();
        for (((o, &v), &w), &b) in y.iter_mut().zip(x).zip(&self.weight.value).zip(&self.bias.value) {
            *o = (v - mean) * rstd * w + b;
        }
        (mean, rstd)
    }

    /// Given `dy (N, D)` for the last forward, adds `dweight += sum_rows dy * xhat` and
    /// `dbias += sum_rows dy`, and returns
    /// `dx = rstd * (dy * w - mean(dy * w) - xhat * mean(dy * w * xhat))` where `xhat = (x - mean) * rstd`.
    pub fn backward(&mut self, dy: &[f32]) -> Result<Vec<f32>> {
        let dim = self.dim();
        let (x, mean, rstd) = self.cache.as_ref().ok_or_else(|| Error::Invalid(format!("{}: backward called before forward", self.weight.name)))?;
        check_len(&format!("output gradient of {}", self.weight.name), &[mean.len(), dim], dy.len())?;
        let mut dx = vec![0.0f32; x.len()];
        if dim == 0 {
            return Ok(dx);
        }
        let w = &self.weight.value;
        for (r, ((xr, dyr), dxr)) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).zip(dx.chunks_exact_mut(dim)).enumerate() {
            let (m, s) = (mean[r], rstd[r]);
            // Two reductions over the row: mean(dy * w) and mean(dy * w * xhat).
            let mut dnorm_mean = 0.0f32;
            let mut dnorm_norm_mean = 0.0f32;
            for i in 0..dim {
                let xhat = (xr[i] - m) * s;
                let dnorm = w[i] * dyr[i];
                dnorm_mean += dnorm;
                dnorm_norm_mean += dnorm * xhat;
            }
            dnorm_mean /= dim as f32;
            dnorm_norm_mean /= dim as f32;
            for i in 0..dim {
                let xhat = (xr[i] - m) * s;
                let dnorm = w[i] * dyr[i];
                self.bias.grad[i] += dyr[i];
                self.weight.grad[i] += xhat * dyr[i];
                dxr[i] = (dnorm - dnorm_mean - xhat * dnorm_norm_mean) * s;
            }
        }
        Ok(dx)
    }
}

impl Module for LayerNorm {
    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight, &mut self.bias]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_rows_like_pytorch() {
        let mut ln = LayerNorm::new("norm", 4);
        assert_eq!((ln.weight.name.as_str(), ln.bias.name.as_str()), ("norm.weight", "norm.bias"));
        let x = [1.0, 2.0, 3.0, 4.0, -2.0, -2.0, -2.0, -2.0];
        let y = ln.forward(&x, 2).unwrap();
        // Row 0: mean 2.5, biased variance 1.25.
        let rstd = 1.0 / (1.25f32 + 1e-5).sqrt();
        for (i, v) in [-1.5f32, -0.5, 0.5, 1.5].iter().enumerate() {
            assert!((y[i] - v * rstd).abs() < 1e-6);
        }
        // A constant row maps to the bias.
        assert!(y[4..].iter().all(|v| v.abs() < 1e-6));
        let mut out = vec![0.0; 8];
        ln.apply(&x, 2, &mut out).unwrap();
        assert_eq!(out, y);
    }

    #[test]
    fn errors_on_wrong_lengths_and_backward_before_forward() {
        let mut ln = LayerNorm::new("norm", 3);
        assert!(matches!(ln.backward(&[0.0; 3]), Err(Error::Invalid(_))));
        assert!(ln.forward(&[0.0; 4], 1).is_err());
        ln.forward(&[0.0, 1.0, 2.0], 1).unwrap();
        assert!(ln.backward(&[0.0; 6]).is_err());
    }
}
