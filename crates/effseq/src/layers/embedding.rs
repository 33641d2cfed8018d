//! Token embedding, PyTorch's `nn.Embedding`: a lookup of rows of a `(V, D)` table.

use crate::error::{check_len, Error, Result};
use crate::param::{Module, Param};
use crate::rng::{fill_normal, Rng};

/// `y (N, D) = weight[ids]` for `N` token ids in `0..V`.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// `{prefix}.weight`, `(V, D)`.
    pub weight: Param,
    /// The ids of the last `forward`, `(N)`.
    cache: Option<Vec<u32>>,
}

impl Embedding {
    /// A table named `{prefix}.weight` of `vocab` rows of width `dim`, initialised N(0, 1) as `nn.Embedding`.
    pub fn new(prefix: &str, vocab: usize, dim: usize, rng: &mut Rng) -> Embedding {
        let mut weight = Param::zeros(format!("{prefix}.weight"), &[vocab, dim]);
        fill_normal(rng, &mut weight.value, 1.0);
        Embedding { weight, cache: None }
    }

    /// Vocabulary size `V`.
    pub fn vocab(&self) -> usize {
        self.weight.shape[0]
    }

    /// Embedding width `D`.
    pub fn dim(&self) -> usize {
        self.weight.shape[1]
    }

    /// `y (N, D)` for `ids (N)`; caches the ids for [`Embedding::backward`].
    pub fn forward(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut y = vec![0.0f32; ids.len() * self.dim()];
        self.apply(ids, &mut y)?;
        self.cache = Some(ids.to_vec());
        Ok(y)
    }

    /// Inference: writes `y (N, D)` for `ids (N)` into `out`. An id outside `0..V` is an error naming it.
    pub fn apply(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let (vocab, dim) = (self.vocab(), self.dim());
        check_len(&format!("output of {}", self.weight.name), &[ids.len(), dim], out.len())?;
        for (pos, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if id >= vocab {
                return Err(Error::Invalid(format!("{}: token id {id} at position {pos} is out of range for a vocabulary of {vocab}", self.weight.name)));
            }
            out[pos * dim..(pos + 1) * dim].copy_from_slice(&self.weight.value[id * dim..(id + 1) * dim]);
        }
        Ok(())
    }

    /// Given `dy (N, D)` for the last `forward`, adds each row of `dy` into the gradient row of its id
    /// (repeated ids accumulate). The ids are not differentiable, so nothing is returned.
    pub fn backward(&mut self, dy: &[f32]) -> Result<()> {
        let dim = self.dim();
        let ids = self.cache.as_ref().ok_or_else(|| Error::Invalid(format!("{}: backward called before forward", self.weight.name)))?;
        check_len(&format!("output gradient of {}", self.weight.name), &[ids.len(), dim], dy.len())?;
        for (pos, &id) in ids.iter().enumerate() {
            let id = id as usize;
            for (g, d) in self.weight.grad[id * dim..(id + 1) * dim].iter_mut().zip(&dy[pos * dim..(pos + 1) * dim]) {
                *g += d;
            }
        }
        Ok(())
    }
}

impl Module for Embedding {
    fn params(&self) -> Vec<&Param> {
        vec![&self.weight]
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_for;

    #[test]
    fn looks_up_rows_and_accumulates_repeated_ids() {
        let mut emb = Embedding::new("embed", 4, 2, &mut rng_for(0, 0));
        assert_eq!(emb.weight.name, "embed.weight");
        emb.weight.value = (0..8).map(|v| v as f32).collect();
        let y = emb.forward(&[3, 1, 3]).unwrap();
        assert_eq!(y, vec![6.0, 7.0, 2.0, 3.0, 6.0, 7.0]);
        emb.backward(&[1.0, 2.0, 10.0, 20.0, 100.0, 200.0]).unwrap();
        assert_eq!(emb.weight.grad, vec![0.0, 0.0, 10.0, 20.0, 0.0, 0.0, 101.0, 202.0]);
    }

    #[test]
    fn out_of_range_id_is_an_error_naming_it() {
        let mut emb = Embedding::new("embed", 4, 2, &mut rng_for(0, 0));
        let err = emb.forward(&[0, 9]).unwrap_err().to_string();
        assert!(err.contains("token id 9") && err.contains("vocabulary of 4"), "{err}");
        assert!(matches!(emb.backward(&[0.0; 4]), Err(Error::Invalid(_))));
    }

    #[test]
    fn init_is_standard_normal() {
        let emb = Embedding::new("e", 100, 100, &mut rng_for(3, 0));
        let n = emb.weight.value.len() as f64;
        let mean = emb.weight.value.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = emb.weight.value.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }
}
