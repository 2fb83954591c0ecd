//! Test helpers shared by the workspace's crates (a dev-dependency only): the runner of the
//! conformance scenarios in `testdata/conformance` and `$WM_EXTRA_CONFORMANCE`; the project's test
//! data ([`testdata`]); the real
//! container runtimes the collectors are tested against ([`runtimes`], [`podman`]), and a real
//! single-node Kubernetes built from its Go modules ([`kubernetes`]); daemons of ours that misbehave
//! on demand ([`fake_daemon`], [`fake_http`], [`cloudfoundry`]); a TCP balancer standing in for a
//! Service's address where no kube-proxy runs ([`tcp_balancer`]); a store
//! watcher for those tests ([`watch`]); what the benchmarks share ([`bench`](mod@bench)).

#![forbid(unsafe_code)]

pub mod bench;
pub mod cloudfoundry;
pub mod conformance;
pub mod fake_daemon;
pub mod fake_http;
pub mod kubernetes;
pub mod podman;
pub mod procfs;
pub mod recording_proxy;
pub mod rng;
pub mod runtimes;
pub mod tcp_balancer;
pub mod testdata;
mod tls;
pub mod watch;
