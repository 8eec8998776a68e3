//! Work a handler starts for a connection's requests that may go on after
//! them: an upstream fetch that others wait on and that is stored whether
//! or not its client stays, a revalidation in the background. Counted per
//! connection, so no one connection has more than its share running: an
//! HTTP/2 or HTTP/3 client that resets each stream as soon as the handler
//! has it would otherwise leave fetches behind without bound, each one
//! costing the origin a request (the reset guard of [`crate::conn`] counts
//! resets against answers, which a client can pay for with cheap hits).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// One connection's count of what is running for it, and its cap.
#[derive(Debug, Clone)]
pub struct Errands {
    running: Arc<AtomicU32>,
    max: u32,
}

impl Errands {
    /// A connection's count, allowing `max` at once (0: no cap).
    pub fn new(max: u32) -> Errands {
        let max = if max == 0 { u32::MAX } else { max };
        Errands { running: Arc::new(AtomicU32::new(0)), max }
    }

    /// A place for one more, held until the [`Errand`] is dropped; `None`
    /// when the connection already has its cap running.
    pub fn start(&self) -> Option<Errand> {
        self.take_below(self.max)
    }

    /// A place for work no request waits on (a revalidation in the
    /// background), taken only while fewer than half the places are: the
    /// rest stay for requests whose clients wait, so a client with as many
    /// requests open as an HTTP/2 connection allows (half the default cap)
    /// and each leaving such work behind is never refused.
    pub fn start_spare(&self) -> Option<Errand> {
        self.take_below(self.max / 2)
    }

    fn take_below(&self, limit: u32) -> Option<Errand> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Errand(Arc::clone(&self.running)))
    }

    /// How many are running now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Acquire)
    }
}

/// One piece of work counted against its connection until dropped.
#[derive(Debug)]
pub struct Errand(Arc<AtomicU32>);

impl Drop for Errand {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_each_errand_ended_makes_room_for_one() {
        let errands = Errands::new(3);
        let held: Vec<Errand> = (0..3).map(|_| errands.start().expect("room for three")).collect();
        assert_eq!(errands.running(), 3);
        assert!(errands.start().is_none(), "a fourth is refused");
        assert_eq!(errands.running(), 3, "a refusal takes no place");
        let mut held = held.into_iter();
        drop(held.next());
        assert_eq!(errands.running(), 2);
        let again = errands.start().expect("an ended errand's place is free again");
        assert!(errands.start().is_none());
        drop(again);
        drop(held);
        assert_eq!(errands.running(), 0);
    }

    #[test]
    fn work_no_request_waits_on_takes_only_the_first_half() {
        let errands = Errands::new(4);
        let spare: Vec<Errand> = (0..2).map(|_| errands.start_spare().expect("room in the first half")).collect();
        assert!(errands.start_spare().is_none(), "the second half is kept");
        let waited: Vec<Errand> = (0..2).map(|_| errands.start().expect("kept for requests")).collect();
        assert!(errands.start().is_none());
        drop(waited);
        drop(spare);
        assert_eq!(errands.running(), 0);
    }

    #[test]
    fn a_cap_of_zero_is_none() {
        let errands = Errands::new(0);
        let held: Vec<Errand> = (0..10_000).map(|_| errands.start().expect("no cap")).collect();
        assert_eq!(errands.running(), 10_000);
        assert!(errands.start_spare().is_some());
        drop(held);
    }

    #[test]
    fn every_clone_counts_against_the_same_connection() {
        let errands = Errands::new(2);
        let other = errands.clone();
        let _a = errands.start().unwrap();
        let _b = other.start().unwrap();
        assert!(errands.start().is_none() && other.start().is_none());
    }
}
