//! End-to-end tests of the `outpost` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod control;
