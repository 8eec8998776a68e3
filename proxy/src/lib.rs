//! The caching reverse-proxy engine that edges and shields both run:
//! listeners, HTTP/1.1 and HTTP/2 serving, RFC 9111 cache policy, cache keys,
//! foyer-backed memory and disk storage, purge rules, miss coalescing, the
//! upstream client and stale handling.

pub mod admin;
pub mod cache_status;
pub mod clock;
pub mod engine;
pub mod error;
pub mod headers;
pub mod host;
pub mod key;
pub mod node;
pub mod observe;
pub mod policy;
pub mod purge;
pub mod rendezvous;
pub mod resolve;
pub mod serve;
pub mod store;
pub mod subscribe;
pub mod tls;
pub mod upstream;

pub use engine::{Engine, EngineConfig, Tier};
