//! Parameters: a named f32 buffer with its gradient, and the [`Module`] trait that lists them.

use crate::error::{Error, Result};

/// One trainable tensor: row-major `value` of `shape`, and the gradient accumulated by backward passes.
#[derive(Clone, Debug)]
pub struct Param {
    /// PyTorch-compatible name, e.g. `weight_ih_l0` or `head.weight`.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values, `shape.iter().product()` elements.
    pub value: Vec<f32>,
    /// Gradient of the loss with respect to `value`; backward passes add to it (`+=`).
    pub grad: Vec<f32>,
}

impl Param {
    /// A parameter holding `value` (its length must match `shape`), with a zero gradient.
    pub fn new(name: impl Into<String>, shape: &[usize], value: Vec<f32>) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(n, value.len(), "Param::new: value length does not match shape");
        Param { name: name.into(), shape: shape.to_vec(), value, grad: vec![0.0; n] }
    }

    /// A zero-filled parameter.
    pub fn zeros(name: impl Into<String>, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        Param::new(name, shape, vec![0.0; n])
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.value.len()
    }

    /// Sets the gradient to zero.
    pub fn zero_grad(&mut self) {
        self.grad.iter_mut().for_each(|g| *g = 0.0);
    }

    /// Copies `values` into this parameter after checking the shape.
    pub fn load(&mut self, shape: &[usize], values: &[f32]) -> Result<()> {
        if shape != self.shape.as_slice() {
            return Err(Error::Shape { what: format!("parameter '{}'", self.name), expected: self.shape.clone(), got: shape.to_vec() });
        }
        self.value.copy_from_slice(values);
        Ok(())
    }
}

/// A NaN or infinite value found in a named tensor (see [`first_non_finite`]).
#[derive(Clone, Debug, PartialEq)]
pub struct NonFiniteValue {
    /// The tensor's name, e.g. `rnn.weight_hh_l0` or `exp_avg_sq.head.weight`.
    pub tensor: String,
    /// Row-major index of the value.
    pub index: usize,
    /// The value (NaN, inf or -inf).
    pub value: f32,
}

impl std::fmt::Display for NonFiniteValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}' is {} at element {}", self.tensor, self.value, self.index)
    }
}

/// The first NaN or infinite value of `tensors` (name and values), in their order; `None` when all are finite.
pub fn first_non_finite<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [f32])>) -> Option<NonFiniteValue> {
    tensors.into_iter().find_map(|(name, values)| {
        values.iter().position(|v| !v.is_finite()).map(|index| NonFiniteValue { tensor: name.to_string(), index, value: values[index] })
    })
}

/// Anything that owns parameters, listed in a fixed order (the optimizer state relies on that order).
pub trait Module {
    /// Every parameter, in a fixed order.
    fn params(&self) -> Vec<&Param>;
    /// Every parameter, mutably, in the same order as [`Module::params`].
    fn params_mut(&mut self) -> Vec<&mut Param>;

    /// Tensors saved with the parameters but never trained (a Performer's random features), in a fixed order.
    fn buffers(&self) -> Vec<&Param> {
        Vec::new()
    }

    /// Every buffer, mutably, in the order of [`Module::buffers`].
    fn buffers_mut(&mut self) -> Vec<&mut Param> {
        Vec::new()
    }

    /// Sets every gradient to zero.
    fn zero_grad(&mut self) {
        for p in self.params_mut() {
            p.zero_grad();
        }
    }

    /// Total number of trainable scalars.
    fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.numel()).sum()
    }
}
