//! Finding NaN and infinity in weights: in a file's raw bytes while it loads (bit tests on the
//! exponent, parallel over large tensors, a few ms per 100 M values), in tensors (a base model,
//! an adapter before it is saved, a merged model before it is written), and in the f16 block
//! scales of GGUF-quantized matrices.
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Elements per rayon task when counting.
const CHUNK: usize = 1 << 16;

/// Non-finite values in a little-endian buffer of `dtype` (0 for integer types): the exponent
/// bits all set (f32 `0x7f80_0000`, f16 `0x7c00`, bf16 `0x7f80`).
pub fn count_nonfinite_bytes(dtype: DType, bytes: &[u8]) -> usize {
    fn count_in(bytes: &[u8], f: impl Fn(&[u8]) -> usize + Sync) -> usize {
        if bytes.len() <= 4 * CHUNK {
            f(bytes)
        } else {
            bytes.par_chunks(4 * CHUNK).map(&f).sum()
        }
    }
    match dtype {
        DType::F32 => count_in(bytes, count_f32_bits),
        DType::F16 | DType::BF16 => {
            let mask: u16 = if dtype == DType::F16 { 0x7c00 } else { 0x7f80 };
            count_in(bytes, move |c| c.chunks_exact(2).filter(|b| u16::from_le_bytes([b[0], b[1]]) & mask == mask).count())
        }
        DType::F64 => count_in(bytes, |c| c.chunks_exact(8).filter(|b| !f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).is_finite()).count()),
        _ => 0,
    }
}

/// f32 values (little-endian) with all exponent bits set; whole words through an aligned view
/// where the buffer allows it (a loop the compiler vectorises).
fn count_f32_bits(bytes: &[u8]) -> usize {
    let bad = |w: u32| usize::from(w & 0x7f80_0000 == 0x7f80_0000);
    // SAFETY: any 4 initialised bytes are a valid u32; align_to only reinterprets the aligned middle.
    let (head, words, tail) = unsafe { bytes.align_to::<u32>() };
    if cfg!(target_endian = "little") && head.len() % 4 == 0 {
        let edge = |b: &[u8]| b.chunks_exact(4).map(|c| bad(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).sum::<usize>();
        return edge(head) + words.iter().map(|&w| bad(w)).sum::<usize>() + edge(tail);
    }
    bytes.chunks_exact(4).map(|c| bad(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).sum()
}

/// Non-finite values in a GGUF tensor's raw data, read off its blocks' scales for the quantized
/// formats (a block whose f16/f32 scales are finite expands to finite values, so only the scales
/// are read: a ninth of a Q4_1 tensor's bytes); `None` for a format not covered here.
pub fn count_nonfinite_ggml(dtype: candle_core::quantized::GgmlDType, bytes: &[u8]) -> Option<usize> {
    use candle_core::quantized::GgmlDType as G;
    // (block bytes, values per block, offsets of its f16 scales, an f32 scale at 0)
    let (block, values, halves, f32_scale): (usize, usize, &[usize], bool) = match dtype {
        G::F32 => return Some(count_nonfinite_bytes(DType::F32, bytes)),
        G::F16 => return Some(count_nonfinite_bytes(DType::F16, bytes)),
        G::BF16 => return Some(count_nonfinite_bytes(DType::BF16, bytes)),
        G::Q4_0 => (18, 32, &[0], false),
        G::Q4_1 => (20, 32, &[0, 2], false),
        G::Q5_0 => (22, 32, &[0], false),
        G::Q5_1 => (24, 32, &[0, 2], false),
        G::Q8_0 => (34, 32, &[0], false),
        G::Q8_1 => (36, 32, &[0, 2], false),
        G::Q2K => (84, 256, &[80, 82], false),
        G::Q3K => (110, 256, &[108], false),
        G::Q4K => (144, 256, &[0, 2], false),
        G::Q5K => (176, 256, &[0, 2], false),
        G::Q6K => (210, 256, &[208], false),
        G::Q8K => (292, 256, &[], true),
    };
    let bad_block = |b: &[u8]| match (halves, f32_scale) {
        // Two f16 scales side by side (Q4_1, Q5_1, Q8_1, the K formats): one 32-bit read.
        ([o, p], _) if *p == *o + 2 => {
            let w = u32::from_le_bytes([b[*o], b[o + 1], b[o + 2], b[o + 3]]);
            w & 0x7c00 == 0x7c00 || w & 0x7c00_0000 == 0x7c00_0000
        }
        (_, true) => !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite(),
        _ => halves.iter().any(|&o| u16::from_le_bytes([b[o], b[o + 1]]) & 0x7c00 == 0x7c00),
    };
    let count = |c: &[u8]| c.chunks_exact(block).filter(|b| bad_block(b)).count();
    let blocks: usize = if bytes.len() <= block * CHUNK { count(bytes) } else { bytes.par_chunks(block * CHUNK).map(count).sum() };
    Some(blocks * values)
}

/// Non-finite values in `t` (0 for integer tensors). CPU tensors are scanned in place; on a GPU
/// a reduction first tells whether there is any.
pub fn count_nonfinite(t: &Tensor) -> Result<usize> {
    if !t.dtype().is_float() {
        return Ok(0);
    }
    if t.device().is_cpu() && t.is_contiguous() {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            use candle_core::CpuStorage as C;
            return Ok(match cpu {
                C::F32(v) => {
                    let s = &v[start..end];
                    let count = |c: &[f32]| c.iter().filter(|x| !x.is_finite()).count();
                    if s.len() <= CHUNK { count(s) } else { s.par_chunks(CHUNK).map(count).sum() }
                }
                C::BF16(v) => v[start..end].iter().filter(|x| !x.is_finite()).count(),
                C::F16(v) => v[start..end].iter().filter(|x| !x.is_finite()).count(),
                C::F64(v) => v[start..end].iter().filter(|x| !x.is_finite()).count(),
                _ => 0,
            });
        }
    }
    // x·0 is 0 for every finite x and NaN otherwise: one reduction says whether to count.
    let probe = (t.to_dtype(DType::F32)? * 0.0)?.sum_all()?.to_scalar::<f32>()?;
    if probe.is_finite() {
        return Ok(0);
    }
    let host = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(host.iter().filter(|x| !x.is_finite()).count())
}

/// The first of `tensors` (in the order given) holding NaN or infinity, with its count.
pub fn first_nonfinite<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<Option<(String, usize)>> {
    for (name, t) in tensors {
        let n = count_nonfinite(t)?;
        if n > 0 {
            return Ok(Some((name.to_string(), n)));
        }
    }
    Ok(None)
}

/// An error naming the first non-finite tensor of `tensors`, if any; `what` says whose tensors
/// they are ("the merged model", "adapter …").
pub fn ensure_finite<'a>(what: &str, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
    match first_nonfinite(tensors)? {
        Some((name, count)) => Err(ModelError::NonFinite { what: what.to_string(), name, count }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nan_and_infinities_in_every_float_layout() {
        let vals = [1.0f32, f32::NAN, -0.0, f32::INFINITY, f32::NEG_INFINITY, 3e38, f32::MIN_POSITIVE / 4.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(count_nonfinite_bytes(DType::F32, &bytes), 3);
        let h: Vec<u8> = vals.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        // 3e38 overflows f16 to infinity: four.
        assert_eq!(count_nonfinite_bytes(DType::F16, &h), 4);
        let b: Vec<u8> = vals.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
        assert_eq!(count_nonfinite_bytes(DType::BF16, &b), 3);
        // Q4_1 blocks: a NaN offset in the second block.
        let mut q = vec![0u8; 60];
        q[22..24].copy_from_slice(&0x7e00u16.to_le_bytes());
        assert_eq!(count_nonfinite_ggml(candle_core::quantized::GgmlDType::Q4_1, &q), Some(32));
        // Misaligned f32 bytes are counted too.
        let mut shifted = vec![0u8];
        shifted.extend(&bytes);
        assert_eq!(count_nonfinite_bytes(DType::F32, &shifted[1..]), 3);
        let big: Vec<f32> = (0..300_000).map(|i| if i % 100_000 == 7 { f32::NAN } else { i as f32 }).collect();
        let t = Tensor::from_vec(big, 300_000, &Device::Cpu).unwrap();
        assert_eq!(count_nonfinite(&t).unwrap(), 3);
        // A strided view goes through the reduction.
        let m = Tensor::new(&[[1f32, f32::INFINITY], [2.0, 3.0]], &Device::Cpu).unwrap().t().unwrap();
        assert_eq!(count_nonfinite(&m).unwrap(), 1);
        let ok = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let bad = Tensor::new(&[f32::NAN], &Device::Cpu).unwrap();
        let err = ensure_finite("the merged model", [("a", &ok), ("b.weight", &bad)]).unwrap_err().to_string();
        assert!(err.contains("b.weight") && err.contains("the merged model"), "{err}");
    }
}
