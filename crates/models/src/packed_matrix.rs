//! A frozen weight matrix kept in its GGUF block-quantized form (as QLoRA keeps the base model in
//! 4 bits) and expanded to f32 only for the gemm that uses it.
//!
//! Q4_0, Q4_1 and Q8_0 store a row as blocks of 32 values; a block is an f16 scale `d` (Q4_1 also
//! an f16 offset `m`) and 32 quantized values: 4-bit (the low nibbles of the 16 bytes are values
//! 0–15, the high nibbles 16–31) or 8-bit signed. Expanded exactly as candle's `dequantize`
//! (`q·d + m`, `(q − 8)·d`, `q·d`, a product then a sum, never fused), so a model that keeps its
//! weights packed computes the same bits as one loaded dequantized — at 0.16 (Q4) or 0.27 (Q8)
//! of the f32 memory.
use crate::ops::cpu_util::simd_versions;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per block in every supported format.
pub const BLOCK_LEN: usize = 32;

/// The block formats kept packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl BlockFormat {
    /// The format of a GGML type, when it is one kept packed.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_0 => Some(Self::Q4_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes per block of 32 values.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        }
    }
}

/// A `(rows, cols)` matrix as row-major blocks of one [`BlockFormat`].
#[derive(Debug)]
pub struct PackedMatrix {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl PackedMatrix {
    /// A 2-D quantized tensor `(rows, cols)` kept as it is stored; `None` for a format not kept
    /// packed or a shape whose rows are not whole blocks.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let Some(format) = BlockFormat::of(q.dtype()) else { return Ok(None) };
        let Ok((rows, cols)) = q.shape().dims2() else { return Ok(None) };
        if cols % BLOCK_LEN != 0 {
            return Ok(None);
        }
        let data = q.data()?;
        let expected = rows * (cols / BLOCK_LEN) * format.block_bytes();
        if data.len() != expected {
            return Err(candle_core::Error::Msg(format!(
                "{} tensor of shape ({rows}, {cols}) holds {} bytes, expected {expected}",
                format.name(),
                data.len()
            )));
        }
        Ok(Some(Self { format, rows, cols, bytes: data.into_owned() }))
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held (the f32 matrix would take `4 · rows · cols`).
    pub fn stored_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of one row (`cols / 32` blocks).
    pub fn row_bytes(&self) -> usize {
        self.cols / BLOCK_LEN * self.format.block_bytes()
    }

    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// The blocks, row after row, as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `values: (rows, cols)` stored as Q8_0 when that loses nothing: every block's values are
    /// `q · d` for one f16 scale `d` and integers `|q| ≤ 127` (as the values of a Q8_0 tensor
    /// dequantized on load are), checked value by value. `None` when one value differs in a
    /// single bit, or `cols` is not whole blocks.
    pub fn q8_0_if_exact(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols % BLOCK_LEN != 0 || values.len() != rows * cols {
            return None;
        }
        let mut bytes = Vec::with_capacity(rows * cols / BLOCK_LEN * 34);
        for block in values.chunks_exact(BLOCK_LEN) {
            let amax = block.iter().fold(0f32, |m, &v| m.max(v.abs()));
            let d = f16::from_f32(amax / 127.0);
            let df = d.to_f32();
            bytes.extend_from_slice(&d.to_le_bytes());
            for &v in block {
                let q = if df == 0.0 { 0.0 } else { (v / df).round() };
                if q.abs() > 127.0 || q * df != v {
                    return None;
                }
                bytes.push(q as i8 as u8);
            }
        }
        Some(Self { format: BlockFormat::Q8_0, rows, cols, bytes })
    }

    /// The matrix with its rows reordered: row `i` of the result is row `source_row(i)` of this
    /// one (`source_row` must be a permutation of `0..rows`).
    pub fn permute_rows(&self, source_row: impl Fn(usize) -> usize) -> Self {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(self.bytes.len());
        for i in 0..self.rows {
            let s = source_row(i);
            bytes.extend_from_slice(&self.bytes[s * rb..(s + 1) * rb]);
        }
        Self { format: self.format, rows: self.rows, cols: self.cols, bytes }
    }

    /// Expands the whole matrix into `out: rows · cols` (row-major), rows split over the threads.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let (rb, cols) = (self.row_bytes(), self.cols);
        // About 64k values a task: large enough to amortise scheduling, small enough to balance.
        let rows_per_task = (65_536 / cols.max(1)).max(1);
        let format = self.format;
        out[..self.rows * cols]
            .par_chunks_mut(rows_per_task * cols)
            .zip(self.bytes.par_chunks(rows_per_task * rb))
            .for_each(|(o, b)| decode_blocks(format, b, o));
    }

    /// The f32 matrix `(rows, cols)` as a vector.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_into(&mut out);
        out
    }

    /// The f32 matrix as a tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.dequantize(), (self.rows, self.cols), &Device::Cpu)?.to_device(device)
    }
}

/// Expands whole blocks of `bytes` into `out` (32 values a block).
fn decode_blocks(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    match format {
        BlockFormat::Q4_0 => decode_q4_0(bytes, out),
        BlockFormat::Q4_1 => decode_q4_1(bytes, out),
        BlockFormat::Q8_0 => decode_q8_0(bytes, out),
    }
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

simd_versions! {
    /// Q4_0 blocks: `x = (q − 8) · d`.
    pub fn decode_q4_0(bytes: &[u8], out: &mut [f32]) -> () {
        for (b, o) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(BLOCK_LEN)) {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            let (lo, hi) = o.split_at_mut(16);
            for j in 0..16 {
                lo[j] = ((qs[j] & 0x0F) as i16 - 8) as f32 * d;
                hi[j] = ((qs[j] >> 4) as i16 - 8) as f32 * d;
            }
        }
    }
}

simd_versions! {
    /// Q4_1 blocks: `x = q · d + m`.
    pub fn decode_q4_1(bytes: &[u8], out: &mut [f32]) -> () {
        for (b, o) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(BLOCK_LEN)) {
            let d = f16_at(b, 0);
            let m = f16_at(b, 2);
            let qs = &b[4..20];
            let (lo, hi) = o.split_at_mut(16);
            for j in 0..16 {
                lo[j] = (qs[j] & 0x0F) as f32 * d + m;
                hi[j] = (qs[j] >> 4) as f32 * d + m;
            }
        }
    }
}

simd_versions! {
    /// Q8_0 blocks: `x = q · d`, `q` signed.
    pub fn decode_q8_0(bytes: &[u8], out: &mut [f32]) -> () {
        for (b, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(BLOCK_LEN)) {
            let d = f16_at(b, 0);
            for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                *x = (q as i8) as f32 * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_matrix(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut s = seed;
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Bit for bit what candle's own dequantize gives, in every format kept packed.
    #[test]
    fn expands_exactly_as_candle_dequantize() {
        let w = random_matrix(40, 96, 7);
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let packed = PackedMatrix::from_qtensor(&q).unwrap().unwrap();
            assert_eq!(packed.dims(), (40, 96));
            let reference = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ours = packed.dequantize();
            let same = reference.iter().zip(&ours).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{dtype:?} differs from candle's dequantize");
            assert!(packed.stored_bytes() * 3 < 40 * 96 * 4, "{dtype:?} is not smaller than f32");
        }
    }

    #[test]
    fn permuted_rows_expand_to_permuted_values() {
        let w = random_matrix(6, 64, 3);
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let packed = PackedMatrix::from_qtensor(&q).unwrap().unwrap();
        let order = [3usize, 0, 5, 1, 4, 2];
        let permuted = packed.permute_rows(|i| order[i]).dequantize();
        let plain = packed.dequantize();
        for (i, &s) in order.iter().enumerate() {
            assert_eq!(&permuted[i * 64..(i + 1) * 64], &plain[s * 64..(s + 1) * 64]);
        }
    }

    #[test]
    fn dequantized_q8_0_values_pack_back_exactly_and_others_do_not() {
        let w = random_matrix(8, 64, 11);
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let values = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let packed = PackedMatrix::q8_0_if_exact(&values, 8, 64).expect("Q8_0 values repack exactly");
        assert_eq!(packed.dequantize(), values);
        let raw = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(PackedMatrix::q8_0_if_exact(&raw, 8, 64).is_none(), "arbitrary floats are not Q8_0 values");
        assert!(PackedMatrix::q8_0_if_exact(&values[..8 * 48], 8, 48).is_none(), "48 columns are not whole blocks");
    }

    #[test]
    fn other_formats_and_shapes_stay_unpacked() {
        let w = random_matrix(4, 256, 5);
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        assert!(PackedMatrix::from_qtensor(&q).unwrap().is_none());
        let v = QTensor::quantize(&random_matrix(1, 64, 9).flatten_all().unwrap(), GgmlDType::Q8_0).unwrap();
        assert!(PackedMatrix::from_qtensor(&v).unwrap().is_none());
    }
}
