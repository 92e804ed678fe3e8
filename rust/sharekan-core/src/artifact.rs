//! The sharekan artifact: a safetensors file with string metadata (ARCHITECTURE §6).
//!
//! This module only reads and writes tensors and the header metadata; the meaning of the
//! names, the metadata keys and the checksum are defined by the Python package. Truncated
//! or corrupt files give [`Error::Format`], never a panic.

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Most dimensions a stored tensor may have (NumPy arrays have at most 64; sharekan
/// writes at most 5).
pub const MAX_NDIM: usize = 32;

/// Element type of a stored tensor (the safetensors dtypes sharekan uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// The safetensors / NumPy-style name (`"F32"`, `"U8"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
        }
    }

    fn to_st(self) -> Dtype {
        match self {
            DType::Bool => Dtype::BOOL,
            DType::U8 => Dtype::U8,
            DType::I8 => Dtype::I8,
            DType::U16 => Dtype::U16,
            DType::I16 => Dtype::I16,
            DType::U32 => Dtype::U32,
            DType::I32 => Dtype::I32,
            DType::U64 => Dtype::U64,
            DType::I64 => Dtype::I64,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::BF16,
            DType::F32 => Dtype::F32,
            DType::F64 => Dtype::F64,
        }
    }

    fn from_st(d: Dtype) -> Result<Self> {
        Ok(match d {
            Dtype::BOOL => DType::Bool,
            Dtype::U8 => DType::U8,
            Dtype::I8 => DType::I8,
            Dtype::U16 => DType::U16,
            Dtype::I16 => DType::I16,
            Dtype::U32 => DType::U32,
            Dtype::I32 => DType::I32,
            Dtype::U64 => DType::U64,
            Dtype::I64 => DType::I64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            other => return Err(Error::Format(format!("unsupported dtype {other:?}"))),
        })
    }
}

/// One stored tensor: dtype, shape and little-endian row-major bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Raw little-endian bytes, `product(shape) * dtype.size()` long.
    pub data: Vec<u8>,
}

impl Tensor {
    /// Builds a tensor, checking that `data` has `product(shape) * dtype.size()` bytes.
    ///
    /// # Errors
    /// [`Error::Shape`] on a length mismatch or overflow.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let t = Tensor { dtype, shape, data };
        t.check("tensor")?;
        Ok(t)
    }

    /// An f32 tensor from values (row-major).
    ///
    /// # Errors
    /// [`Error::Shape`] if `values.len()` differs from the product of `shape`.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Self::new(
            DType::F32,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// An f64 tensor from values (row-major).
    ///
    /// # Errors
    /// [`Error::Shape`] if `values.len()` differs from the product of `shape`.
    pub fn from_f64(shape: Vec<usize>, values: &[f64]) -> Result<Self> {
        Self::new(
            DType::F64,
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// A u8 tensor from bytes.
    ///
    /// # Errors
    /// [`Error::Shape`] if `values.len()` differs from the product of `shape`.
    pub fn from_u8(shape: Vec<usize>, values: &[u8]) -> Result<Self> {
        Self::new(DType::U8, shape, values.to_vec())
    }

    /// An i8 tensor from values.
    ///
    /// # Errors
    /// [`Error::Shape`] if `values.len()` differs from the product of `shape`.
    pub fn from_i8(shape: Vec<usize>, values: &[i8]) -> Result<Self> {
        Self::new(DType::I8, shape, values.iter().map(|&v| v as u8).collect())
    }

    /// The values as f32, if the dtype is F32.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    /// The values as f64, if the dtype is F64.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        (self.dtype == DType::F64).then(|| {
            self.data
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b)
                })
                .collect()
        })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn check(&self, name: &str) -> Result<()> {
        let n = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(self.dtype.size()));
        match n {
            Some(n) if n == self.data.len() => Ok(()),
            _ => Err(Error::shape(
                name,
                format!(
                    "{} bytes for shape {:?} of {}",
                    n.map_or("overflowing".to_string(), |n| n.to_string()),
                    self.shape,
                    self.dtype.name()
                ),
                format!("{} bytes", self.data.len()),
            )),
        }
    }
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype.to_st()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Serialises tensors and metadata to safetensors bytes (tensor order: by name).
///
/// # Errors
/// [`Error::Shape`] if a tensor's byte length does not match its shape;
/// [`Error::Format`] if serialisation fails.
pub fn to_bytes(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    for (name, t) in tensors {
        t.check(name)?;
    }
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone())
    };
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), meta)
        .map_err(|e| Error::Format(format!("cannot serialise tensors: {e}")))?;
    canonical_header(bytes)
}

/// Rewrites the JSON header with sorted keys: the safetensors crate writes metadata in
/// hash-map order, which would make identical artifacts differ byte-wise between runs.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: &str| Error::Format(format!("cannot canonicalise header: {what}"));
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("short buffer"))?;
    let header_len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad("length"))?;
    let end = 8usize
        .checked_add(header_len)
        .ok_or_else(|| bad("length"))?;
    let header = bytes.get(8..end).ok_or_else(|| bad("short buffer"))?;
    // serde_json's default map is a BTreeMap: parsing and writing back sorts every object.
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let mut text = serde_json::to_vec(&value).map_err(|e| bad(&e.to_string()))?;
    // keep the data section 8-byte aligned, padding with spaces as safetensors does
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Parses safetensors bytes into tensors and metadata.
///
/// # Errors
/// [`Error::Format`] for a truncated or corrupt buffer or an unsupported dtype.
pub fn from_bytes(buffer: &[u8]) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let st = SafeTensors::deserialize(buffer).map_err(|e| {
        Error::Format(format!(
            "not a valid safetensors buffer ({} bytes): {e}",
            buffer.len()
        ))
    })?;
    let (_, meta) = SafeTensors::read_metadata(buffer)
        .map_err(|e| Error::Format(format!("invalid safetensors header: {e}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (name, view) in st.iter() {
        let dtype = DType::from_st(view.dtype())
            .map_err(|e| Error::Format(format!("tensor `{name}`: {e}")))?;
        if view.shape().len() > MAX_NDIM {
            return Err(Error::Format(format!(
                "tensor `{name}` has {} dimensions (at most {MAX_NDIM})",
                view.shape().len()
            )));
        }
        let t = Tensor {
            dtype,
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        };
        t.check(name).map_err(|e| Error::Format(e.to_string()))?;
        tensors.insert(name.to_string(), t);
    }
    Ok((tensors, metadata.into_iter().collect()))
}

/// Writes a safetensors file.
///
/// # Errors
/// Those of [`to_bytes`]; [`Error::Io`] (naming the path) if the file cannot be written.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, Tensor>,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_bytes(tensors, metadata)?;
    std::fs::write(path, bytes)
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))
}

/// Reads a safetensors file.
///
/// # Errors
/// [`Error::Io`] (naming the path) if the file cannot be read; [`Error::Format`] if it is
/// truncated or corrupt.
pub fn load(path: impl AsRef<Path>) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    from_bytes(&bytes).map_err(|e| match e {
        Error::Format(msg) => Error::Format(format!("{}: {msg}", path.display())),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (BTreeMap<String, Tensor>, HashMap<String, String>) {
        let mut t = BTreeMap::new();
        t.insert(
            "l0.codebook".to_string(),
            Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, -1.0, 0.5, 0.25]).unwrap(),
        );
        t.insert(
            "l0.codes".to_string(),
            Tensor::from_u8(vec![3], &[1, 2, 255]).unwrap(),
        );
        t.insert(
            "l0.gains_q".to_string(),
            Tensor::from_i8(vec![1, 2], &[-127, 5]).unwrap(),
        );
        t.insert(
            "l0.grid".to_string(),
            Tensor::from_f64(vec![1, 2], &[0.0, 1.0]).unwrap(),
        );
        let mut m = HashMap::new();
        m.insert("format".to_string(), "sharekan".to_string());
        m.insert("layers".to_string(), "{\"a\": 1}".to_string());
        (t, m)
    }

    #[test]
    fn too_many_dimensions_is_a_format_error() {
        let mut t = BTreeMap::new();
        let mut shape = vec![2usize];
        shape.extend(std::iter::repeat_n(1, MAX_NDIM));
        t.insert("deep".to_string(), Tensor::from_u8(shape, &[1, 2]).unwrap());
        let bytes = to_bytes(&t, &HashMap::new()).unwrap();
        assert!(matches!(from_bytes(&bytes), Err(Error::Format(m)) if m.contains("dimensions")));
    }

    #[test]
    fn round_trip_file() {
        let (t, m) = sample();
        let dir = std::env::temp_dir().join(format!("sharekan-core-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.safetensors");
        save(&p, &t, &m).unwrap();
        let (t2, m2) = load(&p).unwrap();
        assert_eq!(t, t2);
        assert_eq!(m, m2);
        assert_eq!(t2["l0.codebook"].to_f32().unwrap()[5], 0.25);
        assert_eq!(t2["l0.grid"].to_f64().unwrap(), vec![0.0, 1.0]);
        assert!(matches!(
            load(dir.join("missing.safetensors")),
            Err(Error::Io(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_tensors_are_rejected() {
        assert!(matches!(
            Tensor::from_f32(vec![2, 2], &[1.0]),
            Err(Error::Shape { .. })
        ));
        let mut t = BTreeMap::new();
        t.insert(
            "x".to_string(),
            Tensor {
                dtype: DType::F32,
                shape: vec![3],
                data: vec![0; 4],
            },
        );
        assert!(matches!(
            to_bytes(&t, &HashMap::new()),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn every_truncation_is_a_format_error() {
        let (t, m) = sample();
        let bytes = to_bytes(&t, &m).unwrap();
        for n in 0..bytes.len() {
            assert!(
                matches!(from_bytes(&bytes[..n]), Err(Error::Format(_))),
                "prefix {n}"
            );
        }
        assert!(from_bytes(&bytes).is_ok());
    }

    proptest! {
        #[test]
        fn corrupt_bytes_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), extra in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (t, m) = sample();
            let mut bytes = to_bytes(&t, &m).unwrap();
            let i = pos.index(bytes.len());
            bytes[i] = val;
            let _ = from_bytes(&bytes);
            let _ = from_bytes(&extra);
        }
    }
}
