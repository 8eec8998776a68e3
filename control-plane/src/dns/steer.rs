//! Choosing a PoP for a client: the nearest healthy one by great-circle
//! distance when the database knows where the client is; otherwise the
//! country's, then the continent's configured PoP; otherwise the default.
//! A PoP with no healthy edge is skipped.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use outpost_config::DnsNode;

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
    /// Healthy edge addresses.
    edges: Vec<IpAddr>,
}

/// Why a PoP was chosen (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Nearest,
    Country,
    Continent,
    Default,
}

/// The PoPs and their healthy edges.
#[derive(Debug)]
pub struct Steering {
    pops: RwLock<Vec<Pop>>,
    countries: BTreeMap<String, String>,
    continents: BTreeMap<String, String>,
    default_pop: String,
    rotation: AtomicUsize,
}

impl Steering {
    pub fn new(cfg: &DnsNode) -> Steering {
        let pops = cfg
            .pops
            .iter()
            .map(|p| Pop { name: p.name.clone(), location: (p.latitude, p.longitude), edges: p.edges.clone() })
            .collect();
        Steering {
            pops: RwLock::new(pops),
            countries: cfg.countries.clone(),
            continents: cfg.continents.clone(),
            default_pop: cfg.default_pop.clone(),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Replaces a PoP's healthy edges (from the node registry).
    pub fn set_edges(&self, pop: &str, edges: Vec<IpAddr>) {
        let mut pops = self.pops.write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pops.iter_mut().find(|p| p.name == pop) {
            p.edges = edges;
        }
    }

    /// The PoP for a client and its edges (rotated per answer), with the reason.
    pub fn choose(&self, place: Option<&Place>) -> Option<(String, Vec<IpAddr>, Reason)> {
        let pops = self.pops.read().unwrap_or_else(|p| p.into_inner());
        let healthy = |name: &str| pops.iter().find(|p| p.name == name && !p.edges.is_empty());
        let mut pick: Option<(&Pop, Reason)> = None;
        if let Some(loc) = place.and_then(|p| p.location) {
            pick = pops
                .iter()
                .filter(|p| !p.edges.is_empty())
                .min_by(|a, b| distance_km(loc, a.location).total_cmp(&distance_km(loc, b.location)))
                .map(|p| (p, Reason::Nearest));
        }
        if pick.is_none() {
            let country = place.and_then(|p| p.country.as_ref()).and_then(|c| self.countries.get(c.as_str()));
            pick = country.and_then(|n| healthy(n)).map(|p| (p, Reason::Country));
        }
        if pick.is_none() {
            let continent = place.and_then(|p| p.continent.as_ref()).and_then(|c| self.continents.get(c.as_str()));
            pick = continent.and_then(|n| healthy(n)).map(|p| (p, Reason::Continent));
        }
        if pick.is_none() {
            pick = healthy(&self.default_pop)
                .or_else(|| pops.iter().find(|p| !p.edges.is_empty()))
                .map(|p| (p, Reason::Default));
        }
        let (pop, reason) = pick?;
        let mut edges = pop.edges.clone();
        let turn = self.rotation.fetch_add(1, Ordering::Relaxed);
        let n = edges.len();
        edges.rotate_left(turn % n);
        Some((pop.name.clone(), edges, reason))
    }
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
}
