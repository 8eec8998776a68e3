//! The sites a node serves, found by request host.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_config::{HostPattern, Site};

use crate::host::RequestHost;

/// Values by host pattern: exact names in a map, wildcards by longest
/// suffix. Sites are found this way by `Host`, certificates by SNI.
#[derive(Debug)]
pub(crate) struct HostMap<T> {
    /// Looked up on every request: hashed fast, with a per-process seed.
    exact: HashMap<String, T, foldhash::fast::RandomState>,
    /// (suffix with leading dot, value), longest suffix first.
    wildcard: Vec<(String, T)>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap { exact: HashMap::default(), wildcard: Vec::new() }
    }
}

impl<T> HostMap<T> {
    /// Adds `value` under `pattern`; the first value for an exact name stays.
    pub(crate) fn insert(&mut self, pattern: &HostPattern, value: T) {
        match pattern {
            HostPattern::Exact(name) => {
                self.exact.entry(name.clone()).or_insert(value);
            }
            HostPattern::Wildcard(suffix) => {
                // Kept longest first: the most specific wildcard wins.
                let at = self.wildcard.partition_point(|(s, _)| s.len() >= suffix.len());
                self.wildcard.insert(at, (suffix.clone(), value));
            }
        }
    }

    /// The value for a lower-case name: its exact entry, else the longest
    /// wildcard suffix it falls under.
    pub(crate) fn find(&self, name: &str) -> Option<&T> {
        if let Some(v) = self.exact.get(name) {
            return Some(v);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, v)| v)
    }
}

/// Sites by host and by id.
#[derive(Debug, Default)]
pub struct SiteTable {
    hosts: HostMap<Arc<Site>>,
    by_id: HashMap<String, Arc<Site>>,
    /// In the order given: the order hosts were claimed in, which the
    /// certificate table follows too, so a host two sites claim is
    /// answered by one site under that site's certificate.
    order: Vec<Arc<Site>>,
}

impl SiteTable {
    pub fn new(sites: impl IntoIterator<Item = Site>) -> SiteTable {
        let mut t = SiteTable::default();
        for site in sites {
            let site = Arc::new(site);
            for h in &site.hosts {
                t.hosts.insert(&h.value, Arc::clone(&site));
            }
            t.by_id.insert(site.id.clone(), Arc::clone(&site));
            t.order.push(site);
        }
        t
    }

    /// The site for a request's host.
    pub fn find(&self, host: &RequestHost<'_>) -> Option<&Arc<Site>> {
        let name = host.name();
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.hosts.find(&name.to_ascii_lowercase());
        }
        self.hosts.find(name)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Site>> {
        self.by_id.get(id)
    }

    /// In the order the table was made in.
    pub fn sites(&self) -> impl Iterator<Item = &Arc<Site>> {
        self.order.iter()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(id: &str, hosts: &[&str]) -> Site {
        let hosts = hosts.iter().map(|h| format!("\"{h}\"")).collect::<Vec<_>>().join(", ");
        format!("[site]\nid = \"{id}\"\nhosts = [{hosts}]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n").parse().unwrap()
    }

    #[test]
    fn finds_sites_by_exact_and_wildcard_host() {
        let t = SiteTable::new([site("a", &["www.a.test", "*.b.test"]), site("b", &["*.img.c.test"])]);
        let find = |h: &str| t.find(&RequestHost::parse(h).unwrap()).map(|s| s.id.clone());
        assert_eq!(find("www.a.test").unwrap(), "a");
        assert_eq!(find("WWW.A.TEST:8080").unwrap(), "a");
        assert_eq!(find("www.a.test.").unwrap(), "a");
        assert_eq!(find("x.b.test").unwrap(), "a");
        assert_eq!(find("x.y.img.c.test").unwrap(), "b");
        assert!(find("b.test").is_none() && find("img.c.test").is_none());
        assert!(find("evil.test").is_none());
        assert_eq!(t.get("b").unwrap().id, "b");
    }

    /// A host two sites claim (a race between two writers can let that
    /// through) goes to the first, and the sites are listed in that order,
    /// which the certificate table follows: the site that answers is the
    /// one whose certificate is presented, on every node alike.
    #[test]
    fn a_host_claimed_twice_goes_to_the_first_site_and_the_sites_keep_their_order() {
        let ids: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
        let t = SiteTable::new(ids.iter().map(|id| site(id, &["shared.test"])));
        let found = t.find(&RequestHost::parse("shared.test").unwrap()).unwrap();
        assert_eq!(found.id, "s00");
        assert_eq!(t.sites().map(|s| s.id.as_str()).collect::<Vec<_>>(), ids);
    }
}
