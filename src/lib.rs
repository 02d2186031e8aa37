//! ketch: a Kubernetes container runtime speaking CRI v1.
//!
//! The binary's subcommands live in `cli`; `daemon` wires the gRPC server;
//! `cri` is the thin protocol layer over the domain modules below it.
//!
//! Only what the binaries, the benchmark and the integration tests use is
//! `pub`: the CLI, the config, the CRI service and its generated protocol,
//! the runtime, and the monitor, executor and streaming pieces the
//! integration tests drive directly. Everything else is `pub(crate)`, so
//! the compiler reports what nothing uses.

pub(crate) mod apparmor;
pub(crate) mod authority;
pub(crate) mod cgroups;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod container;
pub mod cri;
pub(crate) mod daemon;
pub(crate) mod errors;
pub(crate) mod events;
pub mod executor;
pub(crate) mod idmap;
pub(crate) mod image;
pub(crate) mod logging;
pub(crate) mod memory;
pub(crate) mod metrics;
pub mod monitor;
pub(crate) mod names;
pub(crate) mod network;
pub(crate) mod pod_pid;
pub(crate) mod preflight;
pub mod runtime;
pub(crate) mod sandbox;
pub(crate) mod seccomp;
pub(crate) mod state_dir;
pub(crate) mod store;
pub mod streaming;
pub(crate) mod sys;
pub(crate) mod systemd;
pub(crate) mod task;
#[cfg(test)]
mod testing;
