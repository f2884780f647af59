//! Helpers for the CPU custom ops: contiguous f32 views of op inputs.
use candle_core::{CpuStorage, Layout, Storage, Tensor};

pub fn msg(s: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(s.into())
}

/// The contiguous f32 slice of a custom-op argument.
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| msg(format!("{op}: input must be contiguous")))?;
    match storage {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => Err(msg(format!("{op}: only f32 is supported on cpu"))),
    }
}

/// Runs `f` on the contiguous f32 data of a tensor held by an op (a table or weight).
pub fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(f32_slice(c, l, op)?),
        _ => Err(msg(format!("{op}: cpu only"))),
    }
}

/// Whether the fused CPU path applies (f32 on the CPU); otherwise callers use the composition.
pub fn fused_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}
