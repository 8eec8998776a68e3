//! Holding back from a failing upstream. When a revalidation fails and a
//! stale copy stands in (stale-if-error), the key is held: for a while,
//! requests for it get the stale copy at once instead of asking the
//! upstream again. Without this every request for an expired object would
//! reach an origin that is down — a storm against the one component that
//! is already struggling. The hold doubles with each failure, from
//! [`FIRST_HOLD`] up to [`MAX_HOLD`], and ends at the first success.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crate::key::Key;

pub(crate) const FIRST_HOLD: Duration = Duration::from_secs(1);
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(4);
/// Keys held at once; past it the oldest holds are dropped (the upstream is
/// then asked again, which is safe).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct Holds {
    keys: Mutex<HashMap<Key, (SystemTime, Duration)>>,
    /// Keys held, so the common case (none) takes no lock.
    count: AtomicUsize,
}

impl Holds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (SystemTime, Duration)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is `key` held at `now` (the engine's clock)?
    pub(crate) fn held(&self, key: Key, now: SystemTime) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.lock().get(&key).is_some_and(|(until, _)| now < *until)
    }

    /// The upstream failed for `key` at `now` and a stale copy was served.
    pub(crate) fn failed(&self, key: Key, now: SystemTime) {
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (until, _)| *until > now);
            if keys.len() >= MAX_KEYS {
                keys.clear();
            }
        }
        let hold = keys.get(&key).map_or(FIRST_HOLD, |(_, last)| (*last * 2).min(MAX_HOLD));
        keys.insert(key, (now + hold, hold));
        self.count.store(keys.len(), Ordering::Release);
    }

    /// The upstream answered for `key`.
    pub(crate) fn succeeded(&self, key: Key) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut keys = self.lock();
        keys.remove(&key);
        self.count.store(keys.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_grow_and_end_on_success() {
        let h = Holds::default();
        let k: Key = 7;
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert!(!h.held(k, t));
        h.failed(k, t);
        assert!(h.held(k, t) && !h.held(k, t + FIRST_HOLD));
        for _ in 0..10 {
            h.failed(k, t);
        }
        assert_eq!(h.lock()[&k].1, MAX_HOLD);
        assert!(h.held(k, t + MAX_HOLD / 2));
        h.succeeded(k);
        assert!(!h.held(k, t));
        assert_eq!(h.count.load(Ordering::Acquire), 0);
    }
}
