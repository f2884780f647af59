//! The weight of a frozen linear layer: a dense tensor, or a block-quantized matrix kept packed
//! (GGUF base models in training) and expanded to f32 for each gemm.
use crate::packed_matrix::PackedMatrix;
use candle_core::{DType, Device, Storage, Tensor};
use std::sync::Arc;

thread_local! {
    /// The expanded f32 values of the packed weight in use on this thread.
    static EXPANDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `(d_out, d_in)`.
#[derive(Clone, Debug)]
pub enum FrozenWeight {
    Dense(Tensor),
    Packed(Arc<PackedMatrix>),
}

impl From<Tensor> for FrozenWeight {
    fn from(t: Tensor) -> Self {
        Self::Dense(t)
    }
}

impl FrozenWeight {
    /// `(d_out, d_in)`.
    pub fn dims2(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Self::Dense(t) => t.dims2(),
            Self::Packed(p) => Ok(p.dims()),
        }
    }

    /// The dtype it computes in (a packed matrix expands to f32).
    pub fn dtype(&self) -> DType {
        match self {
            Self::Dense(t) => t.dtype(),
            Self::Packed(_) => DType::F32,
        }
    }

    /// The weight as a dense tensor (a packed one expanded to f32 on the CPU).
    pub fn to_dense(&self) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(t) => Ok(t.clone()),
            Self::Packed(p) => p.to_tensor(&Device::Cpu),
        }
    }

    /// Runs `f` on the weight as contiguous row-major f32 values: a dense f32 CPU tensor is read
    /// in place, a packed matrix is expanded into a buffer that lives for the call.
    pub fn with_f32<R>(&self, op: &str, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
        match self {
            Self::Packed(p) => {
                let (rows, cols) = p.dims();
                let n = rows * cols;
                // One buffer per thread, grown to the largest weight and reused by every product
                // (no zeroing or fresh pages per call); a nested call gets a buffer of its own.
                EXPANDED.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        if buf.len() < n {
                            buf.resize(n, 0.0);
                        }
                        p.dequantize_into(&mut buf[..n]);
                        Ok(f(&buf[..n]))
                    }
                    Err(_) => Ok(f(&p.dequantize())),
                })
            }
            Self::Dense(t) => {
                let (storage, layout) = t.storage_and_layout();
                let (start, end) = layout
                    .contiguous_offsets()
                    .ok_or_else(|| candle_core::Error::Msg(format!("{op}: weight must be contiguous")))?;
                match &*storage {
                    Storage::Cpu(candle_core::CpuStorage::F32(w)) => Ok(f(&w[start..end])),
                    _ => Err(candle_core::Error::Msg(format!("{op}: weight must be f32 on the cpu, got {:?}", t.dtype()))),
                }
            }
        }
    }
}
