//! The end-to-end harness: the real daemon, real registries, real images.
#![allow(dead_code)]

pub mod crash;
pub mod cri;
pub mod daemon;
pub mod env;
pub mod images;
pub mod net;
pub mod pods;
pub mod registry;
pub mod stream_client;

pub use daemon::{Daemon, DaemonOptions};
