//! What the `outpost` binary runs, as a library: the roles, signal handling
//! and `up`, the whole CDN in one process (which tests also run in-process).

pub mod ha;
pub mod lab;
pub mod roles;
pub mod signals;
pub mod up;
