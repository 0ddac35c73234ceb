//! The commands: the command line itself, offline `mutate`, and the
//! read-only `audit` of a running cluster.

pub mod audit;
pub mod cli;
pub mod mutate;
