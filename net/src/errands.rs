//! Work a handler starts for a connection's requests that may go on after
//! them: an upstream fetch that others wait on and that is stored whether
//! or not its client stays, a revalidation in the background. Counted per
//! connection, so no one connection has more than its share running: an
//! HTTP/2 or HTTP/3 client that resets each stream as soon as the handler
//! has it would otherwise leave fetches behind without bound, each one
//! costing the origin a request (the reset guard of [`crate::conn`] counts
//! resets against answers, which a client can pay for with cheap hits).
//! And counted per client network ([`Networks`]), so a client that opens
//! many connections has no more running than a few connections would.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

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

    /// A place counted against the connection and against `client`'s
    /// network in `networks` too: `None` when either has its cap running.
    pub fn start_within(&self, networks: &Arc<Networks>, client: IpAddr) -> Option<Errand> {
        self.take_within(self.max, networks, client, networks.max)
    }

    /// [`Errands::start_spare`], counted against `client`'s network too
    /// (below half its cap).
    pub fn start_spare_within(&self, networks: &Arc<Networks>, client: IpAddr) -> Option<Errand> {
        self.take_within(self.max / 2, networks, client, networks.max / 2)
    }

    fn take_within(&self, limit: u32, networks: &Arc<Networks>, client: IpAddr, network_limit: u32) -> Option<Errand> {
        let mut errand = self.take_below(limit)?;
        // Refused by the network: the connection's place goes back as
        // `errand` drops.
        errand.network = Some(networks.take_below(network_of(client), network_limit)?);
        Some(errand)
    }

    fn take_below(&self, limit: u32) -> Option<Errand> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Errand { connection: Arc::clone(&self.running), network: None })
    }

    /// How many are running now.
    pub fn running(&self) -> u32 {
        self.running.load(Ordering::Acquire)
    }
}

/// One piece of work counted against its connection (and its client's
/// network) until dropped.
#[derive(Debug)]
pub struct Errand {
    connection: Arc<AtomicU32>,
    network: Option<NetworkPlace>,
}

impl Drop for Errand {
    fn drop(&mut self) {
        self.connection.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the connections of each client network (IPv4 /24, IPv6 /56) have
/// running together, shared by a node's listeners, and its cap. A network
/// is in the table only while it has something running.
#[derive(Debug)]
pub struct Networks {
    running: Mutex<HashMap<u64, u32>>,
    max: u32,
}

impl Networks {
    /// Each network allowing `max` at once (0: no cap).
    pub fn new(max: u32) -> Arc<Networks> {
        let max = if max == 0 { u32::MAX } else { max };
        Arc::new(Networks { running: Mutex::default(), max })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_below(self: &Arc<Self>, network: u64, limit: u32) -> Option<NetworkPlace> {
        let mut running = self.lock();
        let n = running.entry(network).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                running.remove(&network);
            }
            return None;
        }
        *n += 1;
        Some(NetworkPlace { networks: Arc::clone(self), network })
    }

    /// A place in `client`'s network's count, held until dropped; `None`
    /// when the network has its cap.
    pub(crate) fn enter(self: &Arc<Self>, client: IpAddr) -> Option<NetworkPlace> {
        self.take_below(network_of(client), self.max)
    }

    /// How many the network of `client` has running now.
    pub fn running(&self, client: IpAddr) -> u32 {
        self.lock().get(&network_of(client)).copied().unwrap_or(0)
    }

    /// Networks with something running.
    pub fn networks(&self) -> usize {
        self.lock().len()
    }
}

/// One place in a network's count, given back when dropped.
#[derive(Debug)]
pub(crate) struct NetworkPlace {
    networks: Arc<Networks>,
    network: u64,
}

impl Drop for NetworkPlace {
    fn drop(&mut self) {
        let mut running = self.networks.lock();
        if let Some(n) = running.get_mut(&self.network) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.network);
            }
        }
    }
}

/// A client address's network, as one number: IPv4 /24, IPv6 /56 (an
/// IPv4-mapped address counts as IPv4), told apart by their top bits.
fn network_of(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => (1 << 62) | u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => (2 << 62) | (u128::from(v6) >> 72) as u64,
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
    fn the_connections_of_one_network_share_its_cap_and_other_networks_have_their_own() {
        let networks = Networks::new(3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (a, b) = (Errands::new(100), Errands::new(100));
        let held: Vec<Errand> = vec![
            a.start_within(&networks, ip("192.0.2.1")).unwrap(),
            b.start_within(&networks, ip("192.0.2.200")).unwrap(),
            b.start_within(&networks, ip("::ffff:192.0.2.7")).unwrap(),
        ];
        assert_eq!(networks.running(ip("192.0.2.99")), 3, "one /24, mapped addresses in it");
        assert!(a.start_within(&networks, ip("192.0.2.1")).is_none(), "the network has its cap running");
        assert_eq!((a.running(), b.running()), (1, 2), "a refusal by the network gives the connection's place back");
        assert!(a.start_within(&networks, ip("192.0.3.1")).is_some(), "the next /24 is another network");
        let v6 = Errands::new(100);
        let six: Vec<Errand> = ["2001:db8:0:ff01::1", "2001:db8:0:ff02::2", "2001:db8:0:ffff::3"]
            .iter()
            .map(|s| v6.start_within(&networks, ip(s)).unwrap())
            .collect();
        assert!(v6.start_within(&networks, ip("2001:db8:0:ffab::9")).is_none(), "one /56");
        assert!(v6.start_within(&networks, ip("2001:db8:0:fe00::1")).is_some(), "another /56");
        assert!(a.start_spare_within(&networks, ip("198.51.100.1")).is_some());
        drop(six);
        drop(held);
        assert_eq!((networks.networks(), a.running(), b.running()), (0, 0, 0), "every place given back");
        let uncapped = Networks::new(0);
        let many: Vec<Errand> =
            (0..5_000).map(|_| Errands::new(0).start_within(&uncapped, ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(uncapped.running(ip("10.0.0.1")), 5_000);
        drop(many);
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
