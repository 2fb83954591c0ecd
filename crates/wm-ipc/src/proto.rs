//! Code generated from `proto/` (the Datadog IPC wire format).

#![allow(missing_docs, missing_debug_implementations, clippy::all, clippy::unwrap_used, clippy::expect_used)]

/// `datadog.model.v1`: tagger messages.
pub mod model {
    pub mod v1 {
        tonic::include_proto!("datadog.model.v1");
    }
}

/// `datadog.workloadmeta`: workload metadata messages.
pub mod workloadmeta {
    tonic::include_proto!("datadog.workloadmeta");
}

/// `datadog.api.v1`: the `AgentSecure` service.
pub mod api {
    pub mod v1 {
        tonic::include_proto!("datadog.api.v1");
    }
}
