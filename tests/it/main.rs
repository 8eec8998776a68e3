//! End-to-end tests of the `outpost` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod acme;
mod cli;
mod console;
mod control;
mod failures;
mod lab;
mod load;
mod observability;
mod relay;
mod replicas;
mod topology;
