//! The sites a node serves, found by request host.

use std::collections::HashMap;
use std::sync::Arc;

use outpost_config::{HostPattern, Site};

/// Sites by host: exact names in a map, wildcards by longest suffix.
#[derive(Debug, Default)]
pub struct SiteTable {
    exact: HashMap<String, Arc<Site>>,
    /// (suffix with leading dot, site), longest suffix first.
    wildcard: Vec<(String, Arc<Site>)>,
    by_id: HashMap<String, Arc<Site>>,
}

impl SiteTable {
    pub fn new(sites: impl IntoIterator<Item = Site>) -> SiteTable {
        let mut t = SiteTable::default();
        for site in sites {
            let site = Arc::new(site);
            for h in &site.hosts {
                match &h.value {
                    HostPattern::Exact(name) => {
                        t.exact.insert(name.clone(), Arc::clone(&site));
                    }
                    HostPattern::Wildcard(suffix) => t.wildcard.push((suffix.clone(), Arc::clone(&site))),
                }
            }
            t.by_id.insert(site.id.clone(), site);
        }
        t.wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        t
    }

    /// The site for a `Host` value (any case, optional port and trailing dot).
    pub fn find(&self, host: &str) -> Option<&Arc<Site>> {
        let name = host_name(host);
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.find_lower(&name.to_ascii_lowercase());
        }
        self.find_lower(name)
    }

    fn find_lower(&self, name: &str) -> Option<&Arc<Site>> {
        if let Some(s) = self.exact.get(name) {
            return Some(s);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, s)| s)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Site>> {
        self.by_id.get(id)
    }

    pub fn sites(&self) -> impl Iterator<Item = &Arc<Site>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The host part of a Host value: no port, no trailing dot. IPv6 literals
/// keep their brackets.
pub fn host_name(host: &str) -> &str {
    let h = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
    };
    h.strip_suffix('.').unwrap_or(h)
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
        assert_eq!(t.find("www.a.test").unwrap().id, "a");
        assert_eq!(t.find("WWW.A.TEST:8080").unwrap().id, "a");
        assert_eq!(t.find("www.a.test.").unwrap().id, "a");
        assert_eq!(t.find("x.b.test").unwrap().id, "a");
        assert_eq!(t.find("x.y.img.c.test").unwrap().id, "b");
        assert!(t.find("b.test").is_none() && t.find("img.c.test").is_none());
        assert!(t.find("evil.test").is_none());
        assert!(t.find("").is_none());
        assert_eq!(t.get("b").unwrap().id, "b");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("localhost"), "localhost");
    }
}
