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
        DType::F32 => count_in(bytes, |c| c.chunks_exact(4).filter(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000).count()),
        DType::F16 | DType::BF16 => {
            let mask: u16 = if dtype == DType::F16 { 0x7c00 } else { 0x7f80 };
            count_in(bytes, move |c| c.chunks_exact(2).filter(|b| u16::from_le_bytes([b[0], b[1]]) & mask == mask).count())
        }
        DType::F64 => count_in(bytes, |c| c.chunks_exact(8).filter(|b| !f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).is_finite()).count()),
        _ => 0,
    }
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
