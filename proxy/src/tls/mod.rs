//! TLS with rustls (ring provider): termination on edge and shield listeners
//! ([`server`]), connections to https upstreams and the control plane
//! ([`client`]), and the PEM files both read ([`files`]).

pub mod client;
pub mod files;
pub mod pki;
pub mod server;

pub use client::{UpstreamTls, client_config};
pub use files::{LoadedCert, TlsFileError, confined, load_pair};
pub use server::{CertStore, quic_server_config, server_config};
