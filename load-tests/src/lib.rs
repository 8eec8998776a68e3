//! Outpost's black-box test tooling: the test origin ([`origin`]), the
//! deterministic content it serves ([`content`]) and a byte-exact recording
//! origin ([`raw`]), the load runner ([`runner`]) and the benchmarks' lean
//! load client ([`sink`]). It talks HTTP only and depends on no engine crate
//! (only on `outpost-net`, for the layout of multipart range bodies), so it
//! measures Outpost the way a customer's origin and clients see it.

pub mod content;
pub mod origin;
pub mod raw;
pub mod runner;
pub mod sink;

pub use origin::OriginServer;
