//! Tensor operations with explicit backward passes, and the differentiable compositions used on
//! the gradient path (candle's fused softmax/rms_norm/rope have no backward).
pub mod cross_entropy;
pub mod frozen_linear;
pub mod norms;

pub use cross_entropy::{cross_entropy_sum, reference_cross_entropy_sum, IGNORE_INDEX};
pub use frozen_linear::frozen_matmul;
