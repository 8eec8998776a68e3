//! Whether an unsafe method's success invalidated a URL (RFC 9111 §4.4)
//! while a fetch of it was under way. The copies stored then are marked
//! where they lie ([`super::Engine::invalidate`]); a fetch that began
//! before the invalidation and stores after it would otherwise store what
//! it got as fresh, though the upstream may have answered it before the
//! change. It notes its URL's count when it begins ([`Invalidations::mark`])
//! and, once it has stored its copy, invalidates that copy too if the count
//! moved ([`Invalidations::since`]).
//!
//! The counts are a fixed table of counters, a URL's found by its primary
//! key: bounded whatever clients send, with no lock, and no clock to
//! compare. Two URLs that share a counter each see the other's
//! invalidations, which costs a copy of one of them a validation, never a
//! stale answer.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::key::Key;

/// Counters in the table.
const SLOTS: usize = 4096;

#[derive(Debug)]
pub(crate) struct Invalidations {
    counts: Box<[AtomicU64]>,
}

impl Default for Invalidations {
    fn default() -> Self {
        Invalidations { counts: (0..SLOTS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Invalidations {
    fn slot(&self, primary: Key) -> &AtomicU64 {
        // Keys are hashes: their low bits are as good as any.
        &self.counts[(primary as usize) % SLOTS]
    }

    /// The URL whose primary key is `primary` was invalidated.
    pub(crate) fn record(&self, primary: Key) {
        self.slot(primary).fetch_add(1, Ordering::AcqRel);
    }

    /// The URL's count, as a fetch of it begins.
    pub(crate) fn mark(&self, primary: Key) -> u64 {
        self.slot(primary).load(Ordering::Acquire)
    }

    /// Was the URL invalidated since `mark` was taken?
    pub(crate) fn since(&self, primary: Key, mark: u64) -> bool {
        self.slot(primary).load(Ordering::Acquire) != mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_sees_an_invalidation_of_its_url_made_after_it_began_and_not_one_before() {
        let inv = Invalidations::default();
        let (url, other) = (0xabcd_0001_u128 << 20 | 7, 0xabcd_0001_u128 << 20 | 8);
        inv.record(url);
        let begun = inv.mark(url);
        assert!(!inv.since(url, begun), "an invalidation before the fetch began");
        inv.record(other);
        assert!(!inv.since(url, begun), "another URL's");
        inv.record(url);
        assert!(inv.since(url, begun));
        assert!(!inv.since(url, inv.mark(url)), "a fetch begun after it");
    }
}
