//! Helpers for the CPU custom ops: contiguous f32 views of op inputs, the macro that compiles
//! a slice kernel twice (AVX2 + FMA picked at run time, and the baseline target), and the two
//! predicates every op dispatches on (fused CPU path, CUDA kernels).
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

/// Whether the fused ops' CUDA kernels apply (a CUDA tensor, f32 or bf16, in a `cuda` build).
pub fn cuda_ok(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        super::cuda_kernels::supports(x)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        false
    }
}

/// Whether the fused CPU path applies (f32 on the CPU); otherwise callers use the composition.
pub fn fused_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// Defines `pub fn name(args) -> ret { body }` compiled twice: once with AVX2 + FMA enabled
/// (called when the CPU has them, checked at run time) and once for the baseline target. The
/// compiler never contracts `a * b + c` into an FMA on its own, so both give the same bits
/// wherever the body does not call `mul_add`.
macro_rules! simd_versions {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn simd($($arg: $ty),*) -> $ret $body
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { simd($($arg),*) };
                }
            }
            fn plain($($arg: $ty),*) -> $ret $body
            plain($($arg),*)
        }
    };
}
pub(crate) use simd_versions;
