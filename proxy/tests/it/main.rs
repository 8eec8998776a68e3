//! The engine over loopback: a real test origin, a real edge node with a
//! real disk cache in a temp dir, real HTTP clients.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod harness;

mod cache;
mod control_link;
mod differential;
mod direct;
mod http3;
mod interim;
mod keys;
mod represent;
mod sendfile;
mod serving;
mod tls;
