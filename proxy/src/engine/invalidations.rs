//! When each URL was last invalidated by an unsafe method's success (RFC
//! 9111 §4.4), for the fetches under way at the time. The copies stored
//! then are marked where they lie ([`super::Engine::invalidate`]); a fetch
//! that began before the invalidation and stores after it would otherwise
//! store what it got as fresh, though the upstream may have answered it
//! before the change. Its copy is stored marked instead: validated before
//! it is sent again.
//!
//! An entry is needed only while a fetch that began before it may still
//! store, so the table is bounded: past [`MAX_URLS`] it is emptied, and
//! the newest time it held becomes a horizon that every fetch begun before
//! it counts as invalidated. That costs each such fetch's copy one
//! validation, never a stale answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::key::Key;

/// URLs remembered at once.
const MAX_URLS: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct Invalidations {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By a URL's primary key, the time of its last invalidation.
    at: HashMap<Key, SystemTime>,
    /// Every fetch begun at or before it counts as invalidated.
    horizon: Option<SystemTime>,
}

impl Invalidations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The URL whose primary key is `key` was invalidated at `now`.
    pub(crate) fn record(&self, key: Key, now: SystemTime) {
        let mut inner = self.lock();
        if inner.at.len() >= MAX_URLS && !inner.at.contains_key(&key) {
            let newest = inner.at.drain().map(|(_, t)| t).max();
            inner.horizon = inner.horizon.max(newest);
        }
        let at = inner.at.entry(key).or_insert(now);
        *at = (*at).max(now);
    }

    /// Was the URL whose primary key is `key` invalidated after a fetch of
    /// it began at `started` (or at the same instant)?
    pub(crate) fn since(&self, key: Key, started: SystemTime) -> bool {
        let inner = self.lock();
        inner.horizon.is_some_and(|h| started <= h) || inner.at.get(&key).is_some_and(|at| started <= *at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(n: u64) -> Key {
        Key::from(n) << 64 | 0xabc
    }

    #[test]
    fn a_fetch_begun_before_an_invalidation_of_its_url_is_covered_and_one_begun_after_is_not() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let inv = Invalidations::default();
        assert!(!inv.since(key(1), t));
        inv.record(key(1), t);
        assert!(inv.since(key(1), t - Duration::from_micros(1)));
        assert!(inv.since(key(1), t), "begun at the same instant: the upstream may have answered before the change");
        assert!(!inv.since(key(1), t + Duration::from_micros(1)));
        assert!(!inv.since(key(2), t - Duration::from_secs(1)), "another URL");
        // An older time never moves the entry back.
        inv.record(key(1), t - Duration::from_secs(5));
        assert!(inv.since(key(1), t - Duration::from_micros(1)));
    }

    #[test]
    fn a_full_table_is_emptied_into_a_horizon_that_covers_every_earlier_fetch() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let inv = Invalidations::default();
        for n in 0..MAX_URLS as u64 {
            inv.record(key(n), t0 + Duration::from_micros(n));
        }
        let newest = t0 + Duration::from_micros(MAX_URLS as u64 - 1);
        let later = newest + Duration::from_secs(1);
        inv.record(key(u64::MAX), later);
        assert_eq!(inv.lock().at.len(), 1, "bounded");
        // A URL the table no longer names is covered up to the horizon.
        assert!(inv.since(key(7), t0));
        assert!(inv.since(key(123_456), newest), "any URL, begun before the horizon");
        assert!(!inv.since(key(7), newest + Duration::from_micros(1)));
        assert!(inv.since(key(u64::MAX), later));
    }
}
