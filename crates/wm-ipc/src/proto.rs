//! The code tonic generates at build time (in `build.rs`) from our `.proto` files in `proto/`,
//! which describe the Datadog IPC wire format.

// Generated code is not ours to edit, so its lints and missing docs are allowed here.
#![allow(missing_docs, missing_debug_implementations, clippy::all, clippy::unwrap_used, clippy::expect_used)]

/// The tagger messages, package `datadog.model.v1`.
pub mod model {
    pub mod v1 {
        tonic::include_proto!("datadog.model.v1");
    }
}

/// The workload metadata messages, package `datadog.workloadmeta`.
pub mod workloadmeta {
    tonic::include_proto!("datadog.workloadmeta");
}

/// The `AgentSecure` gRPC service (its client and server), package `datadog.api.v1`.
pub mod api {
    pub mod v1 {
        tonic::include_proto!("datadog.api.v1");
    }
}
