//! The shield tier end to end: test origins, shields and edges on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod topology;

mod lying_shield;
mod shield;
mod smuggling;
mod tls;
