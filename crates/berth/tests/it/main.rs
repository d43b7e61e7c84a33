//! berth's integration tests: one test binary, one module per area. Servers run
//! in-process on port 0 (see `common`), except where a test needs a real process to
//! kill or a real client (docker, podman, buildah, ctr, skopeo) to talk to.

mod access;
mod api;
mod architecture;
mod cache;
mod cache_faults;
mod cache_limits;
mod cli;
mod client;
mod clients;
mod common;
mod crash;
mod deploy;
mod faults;
mod gc_fsck;
mod mirror;
mod ops;
mod prefetch;
mod probe;
mod replicas;
mod skopeo;
mod stress;
mod transport;
mod trust;
mod ui;
