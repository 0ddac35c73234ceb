//! zonewise: a Kubernetes mutating admission webhook that keeps east–west
//! traffic inside its availability zone.
//!
//! The folders are the layers of docs/design.md:
//! - [`core`]: the pure core, no I/O, clock or logging: the request and
//!   outcome types, the rule table and rules, sparse parsing, the review
//!   pipeline, the wire format, the config and the policy.
//! - [`server`]: the HTTPS edge (connections, budgets, TLS and its reload)
//!   and the live policy.
//! - [`cluster`]: the kube client and the cache of what the rules look up.
//! - [`telemetry`]: logs and metrics, shared by the server and the cache.
//! - [`cmd`]: the command line, `mutate` and `audit`.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod cmd;
pub mod core;
pub mod server;
pub mod telemetry;
