//! The control plane: the HTTP API, the durable store, the ordered event log
//! that nodes follow, the node registry, and the geo-IP DNS server (`dns`).

pub mod acme;
pub mod api;
pub mod console;
pub mod credential;
pub mod dns;
pub mod node;
pub mod store;
pub mod tls;
