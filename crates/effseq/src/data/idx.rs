//! The IDX binary format of MNIST (LeCun et al., <http://yann.lecun.com/exdb/mnist/>): a big-endian `u32` magic
//! whose low bytes give the element type (0x08: unsigned byte) and the number of dimensions, one big-endian
//! `u32` per dimension, then the elements in row-major order. Images use magic 2051 (`0x00000803`, 3 dims:
//! N, rows, cols); labels use magic 2049 (`0x00000801`, 1 dim: N).

use std::path::Path;

use crate::data::{data_error, read_bytes};
use crate::error::Result;

/// Magic number of an IDX file of `u8` images `(N, rows, cols)`.
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of `u8` labels `(N)`.
pub const LABELS_MAGIC: u32 = 2049;

/// A `u8` array read from an IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major over `dims`.
    pub data: Vec<u8>,
}

/// Reads an IDX file of `u8` elements (gunzipped when it ends in `.gz`) whose magic must be `expected_magic`.
pub fn read_idx(path: &Path, expected_magic: u32) -> Result<IdxArray> {
    parse_idx(&read_bytes(path)?, path, expected_magic)
}

/// [`read_idx`] on bytes already in memory; `path` names them in errors. The magic must equal
/// `expected_magic` and the data must hold exactly the product of the dimensions: a wrong magic, a short
/// header, truncated data or trailing bytes are [`crate::Error::Data`].
pub fn parse_idx(bytes: &[u8], path: &Path, expected_magic: u32) -> Result<IdxArray> {
    let word = |i: usize| -> Option<u32> { bytes.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])) };
    let magic = word(0).ok_or_else(|| data_error(path, None, format!("IDX file too short for its magic number ({} bytes)", bytes.len())))?;
    if magic != expected_magic {
        return Err(data_error(path, None, format!("IDX magic number is {magic} (0x{magic:08x}), expected {expected_magic} (0x{expected_magic:08x})")));
    }
    let ndims = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndims);
    for i in 0..ndims {
        let dim =
            word(1 + i).ok_or_else(|| data_error(path, None, format!("IDX header truncated: {ndims} dimensions announced, file has {} bytes", bytes.len())))?;
        dims.push(dim as usize);
    }
    let header = 4 * (1 + ndims);
    let expected =
        dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| data_error(path, None, format!("IDX dimensions {dims:?} overflow")))?;
    let found = bytes.len() - header;
    if found != expected {
        let what = if found < expected { "truncated" } else { "has trailing bytes" };
        return Err(data_error(
            path,
            None,
            format!("IDX data {what}: dimensions {dims:?} need {expected} bytes after the {header}-byte header, found {found}"),
        ));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

/// The bytes of an IDX file of `u8` elements with magic `magic` and dimensions `dims`, holding `data`.
pub fn encode_idx(magic: u32, dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * (1 + dims.len()) + data.len());
    out.extend_from_slice(&magic.to_be_bytes());
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn round_trip() {
        let bytes = encode_idx(IMAGES_MAGIC, &[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let arr = parse_idx(&bytes, Path::new("x.idx"), IMAGES_MAGIC).unwrap();
        assert_eq!(arr.dims, vec![2, 2, 3]);
        assert_eq!(arr.data[11], 12);
        let labels = parse_idx(&encode_idx(LABELS_MAGIC, &[3], &[7, 8, 9]), Path::new("y.idx"), LABELS_MAGIC).unwrap();
        assert_eq!((labels.dims, labels.data), (vec![3], vec![7, 8, 9]));
    }

    #[test]
    fn wrong_magic_truncation_and_trailing_bytes() {
        let path = Path::new("images.idx");
        let labels = encode_idx(LABELS_MAGIC, &[3], &[1, 2, 3]);
        let err = parse_idx(&labels, path, IMAGES_MAGIC).unwrap_err();
        assert!(matches!(&err, Error::Data { path: p, .. } if p == path));
        assert!(err.to_string().contains("magic number is 2049") && err.to_string().contains("expected 2051"), "{err}");

        let images = encode_idx(IMAGES_MAGIC, &[2, 2, 2], &[0; 8]);
        let err = parse_idx(&images[..images.len() - 1], path, IMAGES_MAGIC).unwrap_err();
        assert!(err.to_string().contains("truncated") && err.to_string().contains("need 8 bytes"), "{err}");
        let mut long = images.clone();
        long.push(0);
        assert!(parse_idx(&long, path, IMAGES_MAGIC).unwrap_err().to_string().contains("trailing"));
        assert!(parse_idx(&images[..10], path, IMAGES_MAGIC).unwrap_err().to_string().contains("header truncated"));
        assert!(parse_idx(&[0, 0], path, IMAGES_MAGIC).is_err());
    }
}
