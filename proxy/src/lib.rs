//! x
pub mod key;
pub mod policy;
pub mod store;
