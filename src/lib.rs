//! What the `outpost` binary runs, as a library: the roles, signal handling
//! and `up`, the whole CDN in one process (which tests also run in-process).

/// The release and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("OUTPOST_REVISION"), ")");

pub mod ha;
pub mod lab;
pub mod roles;
pub mod signals;
pub mod up;
