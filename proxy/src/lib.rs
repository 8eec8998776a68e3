//! The caching reverse-proxy engine that edges and shields both run:
//! listeners, HTTP/1.1 and HTTP/2 serving, RFC 9111 cache policy, cache keys,
//! foyer-backed memory and disk storage, purge rules, miss coalescing, the
//! upstream client and stale handling.
//!
//! What the roles and the program use: a node to bind and run ([`node`]),
//! the engine it serves with ([`Engine`]), the routes edges and shields give
//! it ([`upstream::Route`], [`rendezvous`], [`key::Key`]), TLS files and the
//! local CA ([`tls`]), and the admin listener ([`admin`]). The rest is the
//! engine's own.

pub mod acme;
pub mod admin;
pub mod clock;
pub mod key;
pub mod node;
pub mod rendezvous;
pub mod tls;
pub mod upstream;

mod cache_status;
mod engine;
mod error;
mod headers;
mod host;
mod observe;
mod policy;
mod purge;
mod resolve;
mod serve;
mod store;
mod subscribe;

pub use engine::{CLAIM_MARGIN, Engine, EngineConfig, Tier};
pub use observe::reopen_access_logs;
