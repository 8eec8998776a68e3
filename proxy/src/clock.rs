//! The engine's clock: wall time plus an offset that tests can move, so
//! freshness is tested with exact steps over real sockets, without sleeping.
//! Stored times are wall-clock times because they must survive restarts.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
    /// The last [`Clock::stamp`], in microseconds since the epoch.
    last_stamp: AtomicU64,
}

/// Microseconds since the epoch (0 before it): how stamps and purge rules
/// keep their times.
pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let wall = SystemTime::now();
        let by = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 { wall + by } else { wall.checked_sub(by).unwrap_or(wall) }
    }

    /// A time for the record: when a fetch began, which a stored copy
    /// keeps, or when a purge was applied, which covers every copy stamped
    /// at or before it. Each stamp is later than the one before, even
    /// when the wall clock is stepped back: a purge made then still comes
    /// after the copies fetched ahead of the step, and copies fetched after
    /// the purge still come after it. (Until the wall clock catches up,
    /// stamps run a little ahead of it, by at most the step.)
    pub fn stamp(&self) -> SystemTime {
        let now = micros(self.now());
        let mut last = self.last_stamp.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last_stamp.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return UNIX_EPOCH + Duration::from_micros(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// The last stamp handed out (the epoch before the first).
    pub fn last_stamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.last_stamp.load(Ordering::Acquire))
    }

    /// The later of now and the last stamp: "now" in the stamps' time.
    pub fn latest(&self) -> SystemTime {
        self.now().max(self.last_stamp())
    }

    /// Stamps from now on come after `t` (a purge rule's time kept from a
    /// run before, when the wall clock may have been ahead of now's).
    pub fn stamp_after(&self, t: SystemTime) {
        self.last_stamp.fetch_max(micros(t), Ordering::AcqRel);
    }

    /// Moves this clock forward (tests only have a use for this).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }

    /// Moves this clock back, as a wall clock stepped back would be (tests
    /// only have a use for this).
    pub fn step_back(&self, by: Duration) {
        self.offset_ms.fetch_sub(by.as_millis() as i64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_keep_rising_when_the_clock_steps_back() {
        let clock = Clock::default();
        let first = clock.stamp();
        assert!(clock.stamp() > first);
        clock.step_back(Duration::from_secs(60));
        assert!(clock.now() < first, "the clock went back");
        let after = clock.stamp();
        assert!(after > first, "a stamp after the step still comes after the one before it");
        assert!(clock.stamp() > after);
        clock.stamp_after(after + Duration::from_secs(3600));
        assert!(clock.stamp() > after + Duration::from_secs(3600));
    }
}
