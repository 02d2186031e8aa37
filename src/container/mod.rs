//! Containers: OCI spec generation now; the lifecycle (create, start,
//! stop, remove, status) builds on it.

pub mod manager;
pub mod rootfs;
pub mod spec;
pub mod state;
pub mod stream;
pub mod user;
