//! Tensor operations with explicit backward passes, and the differentiable compositions used on
//! the gradient path (candle's fused softmax/rms_norm/rope have no backward). Each fused op is
//! tested against its composition (values and gradients) in tests/ops_gradients.rs.
pub mod attention_core;
pub mod bf16_gemm;
pub(crate) mod cpu_util;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda_fused;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_gemm;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_kernels;
pub mod fast_exp;
pub mod frozen_linear;
pub mod heads;
pub mod head_cross_entropy;
pub mod masked_softmax;
pub mod norms;
pub mod rms_norm;
pub mod swiglu;

pub use cpu_util::cuda_ok;
pub use cross_entropy::{cross_entropy_sum, reference_cross_entropy_sum, IGNORE_INDEX};
pub use frozen_linear::{frozen_matmul, frozen_weight_matmul};
pub use head_cross_entropy::head_cross_entropy_sum;
pub use masked_softmax::{masked_softmax, AttentionMask};
