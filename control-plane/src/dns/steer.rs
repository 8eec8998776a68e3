//! Choosing a PoP for a client: the nearest healthy one by great-circle
//! distance when the database knows where the client is; otherwise the
//! country's, then the continent's configured PoP; otherwise the default.
//! A PoP with no healthy edge is skipped, and so is a PoP an operator
//! drained (weight 0) or, for the share of client networks above its
//! weight, one partly drained.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use outpost_config::DnsNode;
use outpost_config::api::FULL_WEIGHT;

use super::geo::Place;

/// Mean Earth radius, km.
const EARTH_KM: f64 = 6371.0;

/// Great-circle distance in km (haversine).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (a.0.to_radians(), a.1.to_radians(), b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2) + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_KM * h.sqrt().min(1.0).asin()
}

#[derive(Debug, Clone)]
struct Pop {
    name: String,
    location: (f64, f64),
    /// Edges serving as they should.
    edges: Vec<IpAddr>,
    /// Live edges that report a problem: answered only when no PoP has an
    /// edge that serves well (better a degraded edge than none).
    degraded: Vec<IpAddr>,
    /// The last live edges the registry listed (at first, the node file's):
    /// answered only when no PoP has a live edge at all.
    known: Vec<IpAddr>,
    /// Share of client networks kept, 0 (drained) to [`FULL_WEIGHT`].
    weight: u8,
}

/// Why a PoP was chosen (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Nearest = 0,
    Country = 1,
    Continent = 2,
    Default = 3,
}

/// PoP indices nearest first, by a location's coordinates as `f64` bits.
type Rankings = std::collections::HashMap<(u64, u64), Arc<[usize]>>;

/// The PoPs and their healthy edges.
#[derive(Debug)]
pub struct Steering {
    pops: RwLock<Vec<Pop>>,
    /// PoP indices nearest first, by client location (as `f64` bits): the
    /// PoPs do not move, and clients come from far fewer places than
    /// addresses.
    rankings: RwLock<Rankings>,
    countries: BTreeMap<String, String>,
    continents: BTreeMap<String, String>,
    default_pop: String,
    rotation: AtomicUsize,
}

/// A PoP chosen for a client.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    /// Its place in the node file's PoP list.
    pub index: usize,
    pub name: &'a str,
    /// Its edges to answer with (never empty), starting at `first` (the
    /// rotation, so answers spread over them).
    pub edges: &'a [IpAddr],
    pub first: usize,
    pub reason: Reason,
}

impl Choice<'_> {
    /// The edges in answer order.
    pub fn rotated(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.edges[self.first..].iter().chain(&self.edges[..self.first]).copied()
    }
}

/// Which of a PoP's edges a pass answers with.
#[derive(Clone, Copy)]
enum Edges {
    Sound,
    Degraded,
    /// The last known live ones.
    Known,
}

/// Which edges one pass of [`Steering::choose`] may answer with.
#[derive(Clone, Copy)]
struct Pass {
    edges: Edges,
    /// Honour the operators' weights (the last passes do not, so that a
    /// fleet drained by mistake still answers).
    weighted: bool,
}

/// The address family a query asks for (`None`: any, as for a type that
/// is no address).
pub type Family = Option<bool>;

/// The family of an A (`Some(false)`) or AAAA (`Some(true)`) query.
pub fn family_of(ipv6: bool) -> Family {
    Some(ipv6)
}

impl Pop {
    /// Its edges of the pass, when it has one of `family` and the
    /// client's network is within its weight.
    fn usable(&self, pass: Pass, bucket: u8, family: Family) -> Option<&Vec<IpAddr>> {
        let edges = match pass.edges {
            Edges::Sound => &self.edges,
            Edges::Degraded => &self.degraded,
            Edges::Known => &self.known,
        };
        let fits = |ip: &IpAddr| family.is_none_or(|v6| ip.is_ipv6() == v6);
        (edges.iter().any(fits) && (!pass.weighted || bucket < self.weight)).then_some(edges)
    }
}

impl Steering {
    pub fn new(cfg: &DnsNode) -> Steering {
        let pops = cfg
            .pops
            .iter()
            .map(|p| Pop {
                name: p.name.clone(),
                location: (p.latitude, p.longitude),
                edges: p.edges.clone(),
                degraded: Vec::new(),
                known: p.edges.clone(),
                weight: FULL_WEIGHT,
            })
            .collect();
        Steering {
            pops: RwLock::new(pops),
            rankings: RwLock::default(),
            countries: cfg.countries.clone(),
            continents: cfg.continents.clone(),
            default_pop: cfg.default_pop.clone(),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Replaces a PoP's live edges (from the node registry): those serving
    /// well, and those reporting a problem. Live ones are kept as the
    /// PoP's last known.
    pub fn set_edges(&self, pop: &str, edges: Vec<IpAddr>, degraded: Vec<IpAddr>) {
        let mut pops = self.pops.write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pops.iter_mut().find(|p| p.name == pop) {
            if !edges.is_empty() || !degraded.is_empty() {
                p.known = edges.iter().chain(&degraded).copied().collect();
            }
            p.edges = edges;
            p.degraded = degraded;
        }
    }

    /// Whether no PoP has a live edge: answers then come from the last
    /// known ones.
    pub fn none_live(&self) -> bool {
        let pops = self.pops.read().unwrap_or_else(|p| p.into_inner());
        pops.iter().all(|p| p.edges.is_empty() && p.degraded.is_empty())
    }

    /// Sets every PoP's weight: those not in `weights` get full weight.
    pub fn set_weights(&self, weights: &BTreeMap<String, u8>) {
        let mut pops = self.pops.write().unwrap_or_else(|p| p.into_inner());
        for p in pops.iter_mut() {
            p.weight = weights.get(&p.name).copied().unwrap_or(FULL_WEIGHT).min(FULL_WEIGHT);
        }
    }

    /// Calls `f` with the PoP for a client, without copying its edges.
    /// `bucket` (0..100) places the client's network for PoPs that keep
    /// only part of theirs: the same network always gets the same one.
    /// Only PoPs with an edge of the query's `family` are chosen: an IPv6
    /// client whose nearest PoP has IPv4 edges alone goes to the nearest
    /// with an IPv6 one, not to no address.
    /// PoPs with edges that serve well come first; when no PoP that is not
    /// drained has any, the live edges that report problems are answered
    /// rather than nothing (drained PoPs last of all). When no PoP has a
    /// live edge at all, the registry's view is more likely broken than
    /// every edge at once (the edges' streams to the control plane down,
    /// say), so the last known edges are answered rather than no address.
    pub fn choose_with<R>(
        &self,
        place: Option<&Place>,
        bucket: u8,
        family: Family,
        f: impl FnOnce(Choice<'_>) -> R,
    ) -> Option<R> {
        let pops = self.pops.read().unwrap_or_else(|p| p.into_inner());
        // The last known edges only when no PoP has a live one at all (not
        // when live ones are merely not of the family asked).
        let none_live = pops.iter().all(|p| p.edges.is_empty() && p.degraded.is_empty());
        let passes = [Edges::Sound, Edges::Degraded, Edges::Sound, Edges::Degraded, Edges::Known, Edges::Known]
            .into_iter()
            .zip([true, true, false, false, true, false])
            .filter(|(edges, _)| none_live || !matches!(edges, Edges::Known));
        let (pop, edges, reason) = passes
            .into_iter()
            .find_map(|(edges, weighted)| self.pick(&pops, place, Pass { edges, weighted }, bucket, family))?;
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        let index = pops.iter().position(|p| std::ptr::eq(p, pop)).unwrap_or(0);
        Some(f(Choice { index, name: &pop.name, edges, first: turn % edges.len(), reason }))
    }

    /// The nearest usable PoP; else the country's, the continent's, the
    /// default, or any usable one.
    fn pick<'a>(
        &self,
        pops: &'a [Pop],
        place: Option<&Place>,
        pass: Pass,
        bucket: u8,
        family: Family,
    ) -> Option<(&'a Pop, &'a Vec<IpAddr>, Reason)> {
        let usable = |p: &'a Pop| p.usable(pass, bucket, family).map(|e| (p, e));
        let named = |name: Option<&String>| name.and_then(|n| pops.iter().find(|p| p.name == *n)).and_then(usable);
        if let Some(loc) = place.and_then(|p| p.location) {
            let nearest = self.ranking(pops, loc).iter().find_map(|i| usable(&pops[*i]));
            if let Some((p, e)) = nearest {
                return Some((p, e, Reason::Nearest));
            }
        }
        let country = place.and_then(|p| p.country.as_ref()).and_then(|c| self.countries.get(c.as_str()));
        if let Some((p, e)) = named(country) {
            return Some((p, e, Reason::Country));
        }
        let continent = place.and_then(|p| p.continent.as_ref()).and_then(|c| self.continents.get(c.as_str()));
        if let Some((p, e)) = named(continent) {
            return Some((p, e, Reason::Continent));
        }
        named(Some(&self.default_pop)).or_else(|| pops.iter().find_map(usable)).map(|(p, e)| (p, e, Reason::Default))
    }
}

impl Steering {
    /// The PoPs' indices, nearest to `loc` first.
    fn ranking(&self, pops: &[Pop], loc: (f64, f64)) -> Arc<[usize]> {
        let key = (loc.0.to_bits(), loc.1.to_bits());
        if let Some(r) = self.rankings.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Arc::clone(r);
        }
        let mut order: Vec<usize> = (0..pops.len()).collect();
        order.sort_by(|a, b| distance_km(loc, pops[*a].location).total_cmp(&distance_km(loc, pops[*b].location)));
        let order: Arc<[usize]> = order.into();
        let mut rankings = self.rankings.write().unwrap_or_else(|p| p.into_inner());
        if rankings.len() < MAX_RANKINGS {
            rankings.insert(key, Arc::clone(&order));
        }
        order
    }
}

/// Most client locations whose ranking is kept.
const MAX_RANKINGS: usize = 1 << 16;

/// The weight bucket (0..100) of the network `prefix` bits of `ip` long:
/// a hash, so buckets spread evenly over networks.
pub fn bucket(ip: IpAddr, prefix: u8) -> u8 {
    let bits = match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    };
    let keep = u32::from(prefix.min(128));
    let masked = if keep == 0 { 0 } else { bits & (u128::MAX << (128 - keep)) };
    let family = u8::from(ip.is_ipv6());
    let mut key = [0u8; 18];
    key[..16].copy_from_slice(&masked.to_be_bytes());
    key[16..].copy_from_slice(&[family, prefix]);
    (xxhash_rust::xxh3::xxh3_64(&key) % u64::from(FULL_WEIGHT)) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn great_circle_distances() {
        let fra = (50.11, 8.68);
        let london = (51.51, -0.13);
        let sydney = (-33.87, 151.21);
        assert!((distance_km(fra, london) - 640.0).abs() < 20.0);
        assert!((distance_km(london, sydney) - 16_990.0).abs() < 100.0);
        assert_eq!(distance_km(fra, fra), 0.0);
    }

    fn steering() -> Steering {
        let pop = |name: &str, lat: f64, lon: f64, edge: &str| outpost_config::DnsPop {
            name: name.into(),
            latitude: lat,
            longitude: lon,
            edges: vec![edge.parse().unwrap()],
            networks: Vec::new(),
        };
        let cfg = DnsNode {
            pops: vec![
                pop("fra", 50.11, 8.68, "127.0.0.11"),
                pop("iad", 38.95, -77.45, "127.0.0.12"),
                pop("sin", 1.35, 103.99, "127.0.0.13"),
            ],
            default_pop: "fra".into(),
            zone: "cdn.test.".into(),
            ttl: std::time::Duration::from_secs(30),
            geoip: Default::default(),
            nameservers: Vec::new(),
            glue: BTreeMap::new(),
            countries: BTreeMap::new(),
            continents: BTreeMap::new(),
            sites: Vec::new(),
            rate_limit: 0,
        };
        Steering::new(&cfg)
    }

    fn london() -> Place {
        Place { location: Some((51.51, -0.13)), country: None, continent: None, prefix: 24 }
    }

    fn chosen(s: &Steering, place: Option<&Place>, bucket: u8) -> (String, Vec<IpAddr>) {
        s.choose_with(place, bucket, None, |c| (c.name.to_string(), c.rotated().collect())).unwrap()
    }

    #[test]
    fn a_drained_pop_sends_its_clients_to_the_next_nearest_and_a_partial_weight_some() {
        let s = steering();
        assert_eq!(chosen(&s, Some(&london()), 99).0, "fra");
        s.set_weights(&BTreeMap::from([("fra".to_string(), 0)]));
        assert_eq!(chosen(&s, Some(&london()), 0).0, "iad", "drained: the next nearest PoP");
        assert_eq!(chosen(&s, None, 0).0, "iad", "the default PoP drained too");
        s.set_weights(&BTreeMap::from([("fra".to_string(), 30)]));
        assert_eq!(chosen(&s, Some(&london()), 29).0, "fra", "a network below the weight stays");
        assert_eq!(chosen(&s, Some(&london()), 30).0, "iad", "one above it moves");
        s.set_weights(&BTreeMap::new());
        assert_eq!(chosen(&s, Some(&london()), 99).0, "fra", "a PoP no longer listed is back at full weight");
        let every = ["fra", "iad", "sin"].map(|p| (p.to_string(), 0));
        s.set_weights(&BTreeMap::from(every));
        assert_eq!(chosen(&s, Some(&london()), 50).0, "fra", "every PoP drained: weights are ignored, not the clients");
    }

    #[test]
    fn edges_with_problems_are_answered_only_when_no_pop_has_a_sound_one() {
        let s = steering();
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        s.set_edges("fra", vec![ip("127.0.0.21")], vec![ip("127.0.0.11")]);
        assert_eq!(chosen(&s, Some(&london()), 0), ("fra".into(), vec![ip("127.0.0.21")]), "the sound edge alone");
        s.set_edges("fra", Vec::new(), vec![ip("127.0.0.11")]);
        assert_eq!(chosen(&s, Some(&london()), 0).0, "iad", "a PoP of degraded edges is passed over");
        s.set_edges("iad", Vec::new(), Vec::new());
        s.set_edges("sin", Vec::new(), vec![ip("127.0.0.13")]);
        assert_eq!(
            chosen(&s, Some(&london()), 0),
            ("fra".into(), vec![ip("127.0.0.11")]),
            "no sound edge anywhere: the nearest degraded ones rather than nothing"
        );
        assert!(!s.none_live());
        s.set_edges("fra", Vec::new(), Vec::new());
        s.set_edges("sin", Vec::new(), Vec::new());
        assert!(s.none_live());
        assert_eq!(
            chosen(&s, Some(&london()), 0),
            ("fra".into(), vec![ip("127.0.0.11")]),
            "no live edge at all: the nearest PoP's last live edges rather than no address"
        );
        s.set_edges("iad", vec![ip("127.0.0.22")], Vec::new());
        assert_eq!(chosen(&s, Some(&london()), 0), ("iad".into(), vec![ip("127.0.0.22")]), "a live edge again");
        s.set_edges("iad", Vec::new(), Vec::new());
        s.set_weights(&BTreeMap::from([("fra".to_string(), 0)]));
        assert_eq!(chosen(&s, Some(&london()), 0).0, "iad", "a drained PoP's last known edges come last");
    }

    #[test]
    fn a_query_goes_to_the_nearest_pop_with_an_edge_of_its_family() {
        let s = steering();
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        s.set_edges("iad", vec![ip("127.0.0.12"), ip("::12")], Vec::new());
        let pop = |family| s.choose_with(Some(&london()), 0, family, |c| c.name.to_string()).unwrap();
        assert_eq!(pop(family_of(false)), "fra");
        assert_eq!(pop(family_of(true)), "iad", "Frankfurt has no IPv6 edge");
        assert_eq!(pop(None), "fra");
        s.set_edges("iad", vec![ip("127.0.0.12")], Vec::new());
        // Frankfurt was last seen with an IPv6 edge, and is down now.
        s.set_edges("fra", vec![ip("::11")], Vec::new());
        s.set_edges("fra", Vec::new(), Vec::new());
        assert!(
            s.choose_with(Some(&london()), 0, family_of(true), |_| ()).is_none(),
            "live edges, none of IPv6: NODATA, not a down PoP's last known"
        );
    }

    #[test]
    fn buckets_follow_the_network_not_the_address() {
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        assert_eq!(bucket(ip("81.2.69.1"), 24), bucket(ip("81.2.69.200"), 24));
        assert_eq!(bucket(ip("2001:db8:1:2::1"), 48), bucket(ip("2001:db8:1:ffff::9"), 48));
        let spread: std::collections::BTreeSet<u8> =
            (0..=255u8).map(|i| bucket(ip(&format!("10.0.{i}.0")), 24)).collect();
        assert!(spread.len() > 60, "256 networks fall in {} buckets", spread.len());
        assert!(spread.iter().all(|b| *b < FULL_WEIGHT));
    }
}
