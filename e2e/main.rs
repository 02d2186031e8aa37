//! End-to-end tests: the real `ketch` binary driven over its real socket by
//! a real CRI client, against real registries. Run as root:
//! `cargo test --test e2e`.

mod cgroup_ns;
mod container_state;
mod containers;
mod cri136;
mod events;
mod faults;
mod faults_images;
mod foundation;
mod harness;
mod images;
mod nested;
mod network;
mod pods;
mod registry_harness;
mod runtime_handlers;
mod seccomp;
mod security_context;
mod stats;
mod streaming;
mod systemd_driver;
mod tty;
mod userns;
