//! Integration tests: the test origin driven over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod origin;
mod runner;
mod sink;
