//! NumPy arrays in and out. An input is checked (a NumPy array, float32, C-contiguous, aligned, the expected
//! shape, every value finite) and then lent to the library as a `&[f32]` into NumPy's own buffer: no copy. An output
//! is a `Vec<f32>` the library filled, handed to NumPy as the array's buffer: no copy either.

use numpy::{PyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::{error, ErrorKind};

/// A float32 array borrowed from Python, read-only, checked.
pub(crate) struct F32In<'py> {
    /// The argument's name, for messages.
    pub name: &'static str,
    array: PyReadonlyArrayDyn<'py, f32>,
}

impl<'py> F32In<'py> {
    /// The interpreter token (the array was borrowed with the GIL held).
    pub fn py(&self) -> Python<'py> {
        self.array.py()
    }

    /// The shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    /// The values, row-major (the array is C-contiguous).
    pub fn data(&self) -> &[f32] {
        self.array.as_slice().expect("checked C-contiguous and aligned in f32_in")
    }

    /// The array as a Python object (kept by a kernel context for the backward pass).
    pub fn object(&self) -> Py<PyAny> {
        self.array.as_any().clone().unbind()
    }

    /// Errors unless the shape is `want`; `dims` names its dimensions, e.g. "(B, H, T, Dh)".
    pub fn expect_shape(&self, py: Python<'_>, want: &[usize], dims: &str) -> PyResult<()> {
        if self.shape() == want {
            Ok(())
        } else {
            Err(error(py, ErrorKind::Shape, format!("{} must have shape {dims} = {}, got {}", self.name, fmt_shape(want), fmt_shape(self.shape()))))
        }
    }

    /// Errors unless the array has `ndim` dimensions, named by `dims`; returns the shape.
    pub fn expect_ndim(&self, py: Python<'_>, ndim: usize, dims: &str) -> PyResult<Vec<usize>> {
        if self.shape().len() == ndim {
            Ok(self.shape().to_vec())
        } else {
            Err(error(py, ErrorKind::Shape, format!("{} must have {ndim} dimensions {dims}, got shape {}", self.name, fmt_shape(self.shape()))))
        }
    }
}

/// `(2, 3, 4)`.
pub(crate) fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// The Python type name of `obj`, for messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// Borrows `obj` as a float32 array after checking that it is one, C-contiguous, aligned and (with `finite`) free of
/// NaN and infinities.
pub(crate) fn f32_in<'py>(obj: &Bound<'py, PyAny>, name: &'static str, finite: bool) -> PyResult<F32In<'py>> {
    let py = obj.py();
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        let hint = if type_name(obj) == "Tensor" { " (for torch tensors use effseq.torch, or pass tensor.numpy())" } else { "" };
        error(py, ErrorKind::DType, format!("{name} must be a NumPy array of float32, got {}{hint}", type_name(obj)))
    })?;
    let dtype = untyped.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
        return Err(error(py, ErrorKind::DType, format!("{name} must have dtype float32, got {dtype}: convert it with {name}.astype(numpy.float32)")));
    }
    if !untyped.is_c_contiguous() {
        return Err(error(
            py,
            ErrorKind::InvalidArgument,
            format!("{name} is not C-contiguous (a transposed or strided view?): pass numpy.ascontiguousarray({name})"),
        ));
    }
    if !untyped.is_aligned() {
        return Err(error(py, ErrorKind::InvalidArgument, format!("{name} is not aligned for float32: pass {name}.copy()")));
    }
    let typed = untyped.cast::<PyArrayDyn<f32>>().map_err(|e| error(py, ErrorKind::DType, format!("{name}: {e}")))?;
    let array = typed
        .try_readonly()
        .map_err(|e| error(py, ErrorKind::InvalidArgument, format!("{name} cannot be read: it is borrowed for writing elsewhere ({e})")))?;
    let input = F32In { name, array };
    if finite {
        if let Some(i) = first_non_finite(input.data()) {
            let value = input.data()[i];
            let what = if value.is_nan() { "NaN" } else { "an infinite value" };
            return Err(error(py, ErrorKind::InvalidArgument, format!("{name} contains {what} at index {}", fmt_shape(&unravel(i, input.shape())))));
        }
    }
    Ok(input)
}

/// [`f32_in`] for an optional argument.
pub(crate) fn f32_in_opt<'py>(obj: Option<&Bound<'py, PyAny>>, name: &'static str, finite: bool) -> PyResult<Option<F32In<'py>>> {
    obj.filter(|o| !o.is_none()).map(|o| f32_in(o, name, finite)).transpose()
}

/// Index of the first NaN or infinity. Blocks of 1024 are tested with integer ORs over the exponent bits (which
/// vectorise), and only a block that holds one is searched element by element.
fn first_non_finite(x: &[f32]) -> Option<usize> {
    const EXPONENT: u32 = 0x7f80_0000;
    x.chunks(1024).enumerate().find_map(|(block, chunk)| {
        let any = chunk.iter().fold(0u32, |acc, v| acc | u32::from(v.to_bits() & EXPONENT == EXPONENT));
        (any != 0).then(|| block * 1024 + chunk.iter().position(|v| !v.is_finite()).expect("the block holds one"))
    })
}

/// The multi-index of flat index `i` in a row-major array of `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        *slot = i % dim.max(1);
        i /= dim.max(1);
    }
    index
}

/// A NumPy float32 array of `shape` that takes over `data` as its buffer.
pub(crate) fn f32_out<'py>(py: Python<'py>, data: Vec<f32>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    debug_assert_eq!(data.len(), shape.iter().product::<usize>());
    Ok(PyArray::from_vec(py, data).reshape(shape.to_vec())?.into_any())
}

/// A NumPy uint32 array of `shape` that takes over `data`.
pub(crate) fn u32_out<'py>(py: Python<'py>, data: Vec<u32>, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray::from_vec(py, data).reshape(shape.to_vec())?.into_any())
}

/// The valid lengths `(B)` of right-padded sequences: `None`, or a sequence of `b` integers in `0..=t`.
pub(crate) fn lengths_arg(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>, b: usize, t: usize, min: usize) -> PyResult<Option<Vec<usize>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let values: Vec<i64> =
        obj.extract().map_err(|_| error(py, ErrorKind::DType, format!("lengths must be a sequence of B = {b} integers, got {}", type_name(obj))))?;
    if values.len() != b {
        return Err(error(py, ErrorKind::Shape, format!("lengths must hold B = {b} integers (one per sequence), got {}", values.len())));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            usize::try_from(n)
                .ok()
                .filter(|&n| (min..=t).contains(&n))
                .ok_or_else(|| error(py, ErrorKind::InvalidArgument, format!("lengths[{i}] = {n} is outside {min}..={t} (T = {t}, the sequence length)")))
        })
        .collect::<PyResult<Vec<usize>>>()
        .map(Some)
}

/// Errors unless every dimension of `shape` is at least 1.
pub(crate) fn nonempty(py: Python<'_>, name: &str, shape: &[usize], dims: &str) -> PyResult<()> {
    if shape.contains(&0) {
        return Err(error(py, ErrorKind::Shape, format!("{name} {dims} has an empty dimension: shape {}", fmt_shape(shape))));
    }
    Ok(())
}
