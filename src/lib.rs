//! ketch: a Kubernetes container runtime speaking CRI v1.
//!
//! The binary's subcommands live in `cli`; `daemon` wires the gRPC server;
//! `cri` is the thin protocol layer over the domain modules below it.

pub mod authority;
pub mod cgroups;
pub mod cli;
pub mod clock;
pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod errors;
pub mod executor;
pub mod image;
pub mod logging;
pub mod memory;
pub mod monitor;
pub mod names;
pub mod network;
pub mod pod_pid;
pub mod runtime;
pub mod sandbox;
pub mod store;
pub mod streaming;
pub mod sys;
pub mod task;
#[cfg(test)]
mod testing;
