//! The ECS collector (in progress): what the ECS agent's introspection API (`/v1/tasks`, EC2
//! daemon mode) and the task metadata endpoints (v2 `/v2/metadata`, v4 `/task` and
//! `/taskWithTags`, Fargate sidecar mode) answer, turned into task and container entities.
//!
//! This crate holds the conversions, tested on every ECS capture (`testdata/fixtures/ecs`) against
//! the expected entities beside them; the pulling collector, its detection and its wiring into
//! the agent come next (issue 15).

#![forbid(unsafe_code)]

pub mod convert;
