//! The CRI v1 protocol, generated at build time from
//! `proto/runtime/v1/api.proto` (cri-api v0.36, Kubernetes 1.36): the
//! messages, the `RuntimeService` and `ImageService` servers ketch serves,
//! and their clients (for the tests and the benchmark). Only `cri/` and the
//! binaries use these types; the domain below `cri/` never sees them.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("runtime.v1");
