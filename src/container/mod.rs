//! Containers: the domain form of a CreateContainer request (`config`),
//! the OCI spec built from it (`spec`, with `user` resolving who the
//! process runs as and `rootfs` mounting its overlay), the persisted
//! record (`record`) and the lifecycle rules (`state`), and the
//! [`ContainerManager`] with one file per operation: `create`, `start`,
//! `stop`, `remove`, `exec`, `reopen_log`, `update`, `status`,
//! `reconcile`, `stats`; lifecycle changes are published as
//! `crate::events`. `stream` serves exec and attach sessions.

pub mod config;
mod create;
mod error;
mod exec;
mod manager;
mod reconcile;
pub mod record;
mod remove;
mod reopen_log;
pub mod rootfs;
pub mod signal;
pub mod spec;
mod start;
pub mod state;
pub mod stats;
mod status;
mod stop;
pub mod stream;
mod update;
pub mod user;

pub use error::ContainerError;
pub use manager::{ContainerManager, ImageInfo, PodInfo, VolumeImage};
pub use record::ContainerRecord;
pub use status::ContainerFilter;
