//! Pod networking through CNI (spec 0.3.x, 0.4.0, 1.0.x, 1.1): config
//! discovery, plugin execution (ADD/DEL/CHECK), results and pod IPs.
//!
//! # API
//!
//! [`Cni`] is built once from the `[cni]` config and shared (it is `Clone`,
//! clones share state). Per pod:
//!
//! - [`Cni::setup`]`(&PodNetwork) -> Result<NetworkStatus, NetworkError>`:
//!   runs ADD of every plugin of the current network in order (`lo` is
//!   up already, see below). On success the [`NetworkStatus`] has the pod IPs (IPv4 first;
//!   the first is the primary IP of `PodSandboxStatus`), the typed result
//!   and the [`CachedResult`] to persist. On failure everything it had
//!   added has been deleted again (DEL in reverse, so an allocated IP is
//!   released) and the error carries the plugin's own message; only
//!   [`NetworkError::CleanupFailed`] means something may be left.
//! - [`Cni::teardown`]`(&PodNetwork, Option<&CachedResult>)`: DEL of every
//!   plugin in reverse order. Idempotent, and it works when the
//!   netns is gone (the path is passed anyway; plugins then only release
//!   what lives outside it, the IP and iptables rules). With the cached
//!   result it uses the network config, runtime config and result of the
//!   ADD, so a DEL after a restart works even if the config dir changed;
//!   without one (a crash before the result was persisted) it uses the
//!   current config. A failing plugin does not stop the others: the first
//!   error is returned after all ran.
//! - [`Cni::check`]`(&PodNetwork, &CachedResult)`: CHECK (for networks of
//!   version 0.4.0 and later that do not set `disableCheck`). Note that
//!   the portmap of plugins 1.1.1 (Debian 12) fails CHECK for IPv4-only
//!   pods (containernetworking/plugins#819); kubelet never asks for it.
//! - [`Cni::update_pod_cidr`]: `UpdateRuntimeConfig`'s pod CIDR (see below).
//! - [`find_network`] / [`Cni::network`]: the config in use; its error is
//!   the NetworkReady reason of `Status`.
//!
//! `setup` and `teardown` must be awaited inside a tokio runtime: they run
//! as tasks of their own, so a cancelled RPC (kubelet gives up, the client
//! goes away) never stops them half-way. A setup whose caller is gone is
//! torn down again when it completes, as no one will persist its result.
//! Every plugin call is bounded by `cni.plugin_timeout_secs`; a plugin
//! that overruns is killed with its whole process group and reaped.
//!
//! # What the pod sandbox module does
//!
//! Host-network pods skip CNI entirely: no setup, no teardown, no cache.
//! `RunPodSandbox`, for a pod network:
//! 1. create and pin the network namespace (`/run/ketch/pods/<id>/ns/net`);
//! 2. build the [`PodNetwork`]: sandbox id, that netns path, `eth0`, the
//!    pod's name/namespace/uid, its port mappings (`host_port` 0 is never
//!    forwarded), [`Bandwidth::from_annotations`], DNS config, annotations,
//!    cgroup parent;
//! 3. `setup`; on error remove the pin and fail the RPC (nothing of the
//!    network is left to undo);
//! 4. persist the [`CachedResult`] (it is `Serialize`/`Deserialize`) with
//!    the sandbox record, atomically, before answering READY. A crash
//!    between 3 and 4 leaves a sandbox without a cache: its cleanup calls
//!    `teardown(pod, None)`.
//!
//! `StopPodSandbox`/`RemovePodSandbox`: `teardown(pod, cached)` with the
//! persisted cache, then unmount and unlink the netns pin even when
//! teardown failed (log it; a retry of DEL with the cache still works
//! after the netns is gone). Rebuild the `PodNetwork` from the stored
//! sandbox config: the same id, netns path and pod identity.
//!
//! # Pod CIDR (`UpdateRuntimeConfig`)
//!
//! [`Cni::update_pod_cidr`] records the node's pod CIDRs (comma separated,
//! as kubelet sends them) and, when `cni.conf_template` is set and no
//! network config is in place yet, renders that template (containerd's
//! variables `.PodCIDR`, `.PodCIDRRanges`, `.Routes`; see `template`) into
//! `<first conf dir>/10-ketch-net.conflist`, atomically. That is what
//! containerd does with its `conf_template`; a config dropped in by a
//! network add-on always wins.
//!
//! # Loopback
//!
//! `lo` is brought up by the sandbox, with one ioctl in the thread that
//! makes the network namespace (`sandbox::namespaces`), not by the
//! `loopback` plugin that containerd and CRI-O run as a network of its
//! own: that plugin is a Go binary whose exec cost a fifth of
//! RunPodSandbox. A network config may still list `loopback`; it is then
//! run like any other plugin.

mod cache;
mod client;
pub mod conf;
mod error;
mod exec;
mod pod;
mod pod_cidr;
mod quantity;
mod result;
pub mod template;

pub use cache::{CachedResult, NetworkStatus};
pub use client::Cni;
pub use conf::{ConfError, NetworkConfList, find_network};
pub use error::NetworkError;
pub use exec::CniCommand;
pub use pod::{Bandwidth, DnsConfig, PodNetwork, PortMapping, Protocol};
#[cfg(test)]
pub use pod::{EGRESS_BANDWIDTH_ANNOTATION, INGRESS_BANDWIDTH_ANNOTATION};
pub use result::CniResult;

#[cfg(test)]
mod tests;
