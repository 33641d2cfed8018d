//! Inverted dropout (Srivastava et al. 2014), PyTorch's `nn.Dropout`: during training every element is
//! zeroed with probability `p` and the survivors are scaled by `1 / (1 - p)`, so evaluation is the identity.

use crate::error::{Error, Result};
use crate::rng::Rng;
use rand::Rng as _;

/// The mask of the last forward pass, replayed by the backward pass.
#[derive(Clone, Debug, Default)]
pub struct Dropout {
    /// Per-element factor of the last training forward, `0` or `1 / (1 - p)`, the shape of its input;
    /// `None` after an evaluation (identity) forward.
    mask: Option<Vec<f32>>,
}

impl Dropout {
    /// A dropout layer with no mask yet.
    pub fn new() -> Dropout {
        Dropout { mask: None }
    }

    /// Applies dropout in place. `rng: None` (evaluation) or `p == 0` is the identity; otherwise each
    /// element is kept independently with probability `1 - p` (drawn from `rng`, one draw per element in
    /// order, so a seeded stream gives a reproducible mask) and scaled by `1 / (1 - p)`; `p == 1` zeroes
    /// everything. `p` outside `[0, 1]` is an error.
    pub fn forward(&mut self, x: &mut [f32], p: f32, rng: Option<&mut Rng>) -> Result<()> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Invalid(format!("dropout probability must be in [0, 1], got {p}")));
        }
        let rng = match rng {
            Some(rng) if p > 0.0 => rng,
            _ => {
                self.mask = None;
                return Ok(());
            }
        };
        let keep_scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
        let mut mask = self.mask.take().unwrap_or_default();
        mask.clear();
        mask.extend((0..x.len()).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep_scale }));
        for (v, &m) in x.iter_mut().zip(&mask) {
            *v *= m;
        }
        self.mask = Some(mask);
        Ok(())
    }

    /// Backward in place: `dy *= mask` (the identity after an evaluation forward). `dy` must have the
    /// length of the last forward's input.
    pub fn backward(&self, dy: &mut [f32]) -> Result<()> {
        if let Some(mask) = &self.mask {
            if mask.len() != dy.len() {
                return Err(Error::shape("dropout output gradient", &[mask.len()], &[dy.len()]));
            }
            for (g, &m) in dy.iter_mut().zip(mask) {
                *g *= m;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_for;

    #[test]
    fn evaluation_and_zero_probability_are_the_identity() {
        let mut d = Dropout::new();
        let mut x = vec![1.0f32, -2.0, 3.0];
        d.forward(&mut x, 0.5, None).unwrap();
        assert_eq!(x, vec![1.0, -2.0, 3.0]);
        d.forward(&mut x, 0.0, Some(&mut rng_for(0, 0))).unwrap();
        assert_eq!(x, vec![1.0, -2.0, 3.0]);
        let mut dy = vec![1.0f32; 7];
        d.backward(&mut dy).unwrap();
        assert_eq!(dy, vec![1.0; 7]);
    }

    #[test]
    fn drops_about_p_scales_survivors_and_is_reproducible() {
        let n = 20_000;
        let mut d = Dropout::new();
        let mut x = vec![1.0f32; n];
        d.forward(&mut x, 0.25, Some(&mut rng_for(7, 1))).unwrap();
        let dropped = x.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.25).abs() < 0.01, "dropped fraction {dropped}");
        assert!(x.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        let mut again = vec![1.0f32; n];
        Dropout::new().forward(&mut again, 0.25, Some(&mut rng_for(7, 1))).unwrap();
        assert_eq!(x, again);
        // The backward replays the mask.
        let mut dy = vec![1.0f32; n];
        d.backward(&mut dy).unwrap();
        assert_eq!(dy, x);
        assert!(d.backward(&mut [1.0; 3]).is_err());
    }

    #[test]
    fn p_one_zeroes_and_invalid_p_is_an_error() {
        let mut d = Dropout::new();
        let mut x = vec![1.0f32; 5];
        d.forward(&mut x, 1.0, Some(&mut rng_for(0, 0))).unwrap();
        assert_eq!(x, vec![0.0; 5]);
        assert!(d.forward(&mut x, 1.5, None).is_err());
        assert!(d.forward(&mut x, f32::NAN, None).is_err());
    }
}
