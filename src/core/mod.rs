//! The pure core: everything a review needs, as functions of the request,
//! the policy and a lookups trait. Nothing here does network I/O, reads a
//! clock or logs; the one file read is `Config::load`, so that start-up,
//! reload and `check-config` read a policy file the same way.

pub mod admission;
pub mod config;
pub mod json;
pub mod lookups;
pub mod names;
pub mod object;
pub mod patch;
pub mod policy;
pub mod review;
pub mod rules;
pub mod sparse;
pub mod versions;
pub mod warnings;
pub mod wire;
