//! Test helpers shared by the workspace's crates (a dev-dependency only): the runner of the
//! conformance scenarios in `../shared/conformance` and `$WM_EXTRA_CONFORMANCE`, and the real
//! container runtimes ([`runtimes`], [`podman`]) the collectors are tested against.

#![forbid(unsafe_code)]

pub mod conformance;
pub mod podman;
pub mod rng;
pub mod runtimes;
pub mod watch;
