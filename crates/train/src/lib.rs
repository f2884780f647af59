//! Training for lowrank: data sets and batching, AdamW and schedules, the loop, checkpoints, and
//! the whole run as a library function ([`run`]).
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod guard;
pub mod optim;
pub mod run;
pub mod trainer;

pub use config::RunConfig;
pub use error::{Result, TrainError};
pub use trainer::{Observer, Silent, StepLog, TrainSummary, Trainer};
