//! Test helpers shared by the workspace's crates (a dev-dependency only): the runner of the
//! conformance scenarios in `../shared/conformance` and `$WM_EXTRA_CONFORMANCE`.

#![forbid(unsafe_code)]

pub mod conformance;
pub mod rng;
