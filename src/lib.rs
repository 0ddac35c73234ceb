//! zonewise: a Kubernetes mutating admission webhook that keeps east–west
//! traffic inside its availability zone.
//!
//! The pure core has no I/O: `admission` (the request and outcome types, at
//! the bottom), `warnings`, `versions`, `config` and `policy`, `object` and
//! `patch`, the rule table and rules in `rules`, `sparse` parsing, the
//! `review` pipeline and the `wire` format. The server, TLS, metrics,
//! cluster cache, audit and command line are separate modules around it.
//! docs/design.md describes the architecture.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
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
pub mod policy;
pub mod reload;
pub mod review;
pub mod rules;
pub mod server;
pub mod sparse;
pub mod telemetry;
pub mod tls;
pub mod versions;
pub mod warnings;
pub mod wire;
