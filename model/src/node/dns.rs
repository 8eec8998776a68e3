//! Reading a DNS node's `[dns]` section: its zone, PoPs and the maps that
//! place clients without a location.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::read::coordinate;
use super::*;
use crate::decode::{Decode, Table, Val, parse_str};
use crate::diag::{Need, Sink};

pub(super) fn decode_dns(
    s: &mut Sink<'_>,
    root: &mut Table<'_, '_>,
    base: &Path,
    has_control: bool,
) -> Option<DnsNode> {
    let Some(mut t) = root.table(s, "dns") else {
        s.error(&root.span.clone(), "missing table [dns] (zone, geoip, pops)");
        return None;
    };
    let zone = t.req::<Spanned<String>>(s, "zone").and_then(|z| match normalise_zone(z.get_ref()) {
        Ok(zone) => Some(zone),
        Err(m) => {
            s.error(&z.span(), m);
            None
        }
    });
    let ttl = match t.opt::<Spanned<Duration>>(s, "ttl") {
        Some(v) if v.get_ref().as_secs() == 0 || v.get_ref().as_secs() > 86_400 => {
            s.error(&v.span(), "dns.ttl must be between 1s and 1 day");
            DEFAULT_DNS_TTL
        }
        Some(v) => v.into_inner(),
        None => DEFAULT_DNS_TTL,
    };
    // Checked as the node's other files are: a database missing at start
    // is an error at its line, not a node that will not start.
    let geoip: Option<PathBuf> =
        t.req::<Spanned<String>>(s, "geoip").map(|g| s.later(&g.span(), base.join(g.get_ref()), Need::File));
    let nameservers: Vec<Spanned<String>> = t.or(s, "nameservers", Vec::new());
    let nameservers: Vec<String> = nameservers
        .iter()
        .filter_map(|n| match normalise_zone(n.get_ref()) {
            Ok(name) => Some(name),
            Err(_) => {
                s.error(&n.span(), format!("`{}` is not a name server's name", n.get_ref()));
                None
            }
        })
        .collect();
    let glue = decode_glue(s, &mut t, &nameservers, zone.as_deref());
    let sites: Vec<Spanned<String>> = t.or(s, "sites", Vec::new());
    for id in &sites {
        if let Err(m) = crate::site::check_site_id(id.get_ref()) {
            s.error(&id.span(), m);
        }
    }
    let default_pop: Option<Spanned<String>> = t.req(s, "default_pop");
    let rate_limit = t.or(s, "rate_limit", DEFAULT_DNS_RATE_LIMIT);
    let pops = decode_pops(s, &mut t, has_control);
    let countries =
        placement(s, &mut t, &pops, "countries", &|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()));
    let continents = placement(s, &mut t, &pops, "continents", &|c| CONTINENTS.contains(&c));
    if let Some(d) = &default_pop
        && !pops.is_empty()
        && !pops.iter().any(|p| p.name == *d.get_ref())
    {
        s.error(&d.span(), format!("default_pop `{}` is not one of the [[dns.pop]] names", d.get_ref()));
    }
    t.finish(s);
    Some(DnsNode {
        zone: zone?,
        ttl,
        geoip: geoip?,
        nameservers,
        glue,
        pops,
        default_pop: default_pop?.into_inner(),
        countries,
        continents,
        sites: sites.into_iter().map(Spanned::into_inner).collect(),
        rate_limit,
    })
}

/// Continent codes as GeoIP databases write them.
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// The `[[dns.pop]]` tables.
fn decode_pops(s: &mut Sink<'_>, t: &mut Table<'_, '_>, has_control: bool) -> Vec<DnsPop> {
    let pops: Vec<DnsPop> = t
        .tables(s, "pop")
        .into_iter()
        .filter_map(|mut p| {
            let name: Option<String> = p.req(s, "name");
            let latitude = coordinate(s, &mut p, "latitude", 90.0);
            let longitude = coordinate(s, &mut p, "longitude", 180.0);
            let edges: Vec<IpAddr> = p.or(s, "edges", Vec::new());
            let networks: Vec<ipnet::IpNet> = p.or(s, "networks", Vec::new());
            if edges.is_empty() && !has_control {
                s.error(&p.span.clone(), "a PoP needs static edges when there is no [control] to report them");
            } else if edges.is_empty() && networks.is_empty() {
                s.error(
                    &p.span.clone(),
                    "a PoP needs `edges` or `networks`: DNS answers only with the addresses they allow",
                );
            }
            p.finish(s);
            Some(DnsPop { name: name?, latitude: latitude?, longitude: longitude?, edges, networks })
        })
        .collect();
    if pops.is_empty() {
        s.error(&t.span.clone(), "dns needs at least one [[dns.pop]]");
    }
    pops
}

/// `[dns.countries]` or `[dns.continents]`: codes `valid` accepts, each
/// mapped to one of `pops`.
fn placement(
    s: &mut Sink<'_>,
    t: &mut Table<'_, '_>,
    pops: &[DnsPop],
    key: &'static str,
    valid: &dyn Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(m) = t.table(s, key) else { return out };
    for (k, v) in m.entries() {
        if !valid(k.get_ref()) {
            s.error(&k.span(), format!("`{}` is not a code for dns.{key}", k.get_ref()));
        }
        if let Some(pop) = <Spanned<String>>::decode(s, v) {
            if !pops.iter().any(|p| p.name == *pop.get_ref()) {
                s.error(&pop.span(), format!("no [[dns.pop]] is named `{}`", pop.get_ref()));
            }
            out.insert(k.get_ref().to_string(), pop.into_inner());
        }
    }
    out
}

/// `[dns.glue]`: each name one of `nameservers` inside `zone`, each with
/// at least one address.
fn decode_glue(
    s: &mut Sink<'_>,
    t: &mut Table<'_, '_>,
    nameservers: &[String],
    zone: Option<&str>,
) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out = BTreeMap::new();
    let Some(m) = t.table(s, "glue") else { return out };
    for (k, v) in m.entries() {
        let Some(addrs) = <Vec<IpAddr>>::decode(s, v) else { continue };
        let name = match normalise_zone(k.get_ref()) {
            Ok(name) => name,
            Err(_) => {
                s.error(&k.span(), format!("`{}` is not a name server's name", k.get_ref()));
                continue;
            }
        };
        let inside = zone.is_some_and(|z| name.ends_with(&format!(".{z}")));
        if !nameservers.contains(&name) {
            s.error(&k.span(), format!("`{name}` is not one of dns.nameservers"));
        } else if !inside {
            s.error(&k.span(), format!("`{name}` is outside the zone: its addresses are not this server's to give"));
        } else if addrs.is_empty() {
            s.error(&k.span(), format!("`{name}` needs at least one address"));
        } else {
            out.insert(name, addrs);
        }
    }
    out
}

/// `cdn.example.test` or `cdn.example.test.` → `cdn.example.test.`.
fn normalise_zone(text: &str) -> Result<String, String> {
    let name = text.trim_end_matches('.');
    match crate::units::HostPattern::parse(name) {
        Ok(crate::units::HostPattern::Exact(n)) => Ok(format!("{n}.")),
        _ => Err(format!("`{text}` is not a DNS zone name")),
    }
}

impl Decode for IpAddr {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "an IP address", |t| t.parse().map_err(|_| format!("`{t}` is not an IP address")))
    }
}

impl Decode for ipnet::IpNet {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a network such as \"192.0.2.0/24\"", |t| {
            t.parse().map_err(|_| format!("`{t}` is not a network such as 192.0.2.0/24"))
        })
    }
}
