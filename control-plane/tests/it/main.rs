//! The DNS server over loopback, with real DNS packets.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod dns;
