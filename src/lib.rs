//! zonewise: a Kubernetes mutating admission webhook that keeps east–west
//! traffic inside its availability zone.
//!
//! The pure core (`config`, `object`, `patch`, `rules`, `review`, `wire`)
//! has no I/O; the server, TLS, metrics, cluster cache and command line are
//! separate modules around it.
#![forbid(unsafe_code)]

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod lookups;
pub mod metrics;
pub mod mutate;
pub mod names;
pub mod object;
pub mod patch;
pub mod reload;
pub mod review;
pub mod rules;
pub mod server;
pub mod sparse;
pub mod telemetry;
pub mod tls;
pub mod wire;
