//! Training for lowrank: data sets and batching, AdamW and schedules, the loop, checkpoints.
pub mod error;
pub mod optim;

pub use error::{Result, TrainError};
