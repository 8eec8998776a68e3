//! The DNS request handler on hickory-server.
//!
//! It implements `RequestHandler` itself rather than a zone handler under
//! hickory's `Catalog`: an EDNS Client Subnet answer must carry its scope
//! prefix in the response's OPT record, and which records answer depends on
//! who asks. The zone's own semantics are kept: AA on every answer in the
//! zone, SOA and NS at the apex, NXDOMAIN with the SOA for unknown names,
//! NODATA for known names without that type, REFUSED outside the zone.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use metrics::{Counter, Histogram, counter, histogram};
use outpost_config::DnsNode;

pub(super) mod fast;

use super::geo::{GeoDb, Place};
use super::limit::{RateLimit, Verdict, truncate};
use super::steer::{Reason, Steering};

/// Largest UDP answer offered in EDNS (the DNS Flag Day 2020 value).
pub(super) const EDNS_PAYLOAD: u16 = 1232;
/// What any client takes over UDP, with or without EDNS (RFC 1035 §4.2.1).
pub(super) const MIN_PAYLOAD: u16 = 512;
/// The EDNS version spoken.
const EDNS_VERSION: u8 = 0;
/// SOA timers: how long secondaries and negative answers may cache.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86_400;

/// Answers for one zone.
#[derive(Debug)]
pub struct GeoDns {
    zone: Name,
    /// The zone's name in wire form, lower-case.
    zone_wire: Vec<u8>,
    ttl: u32,
    soa: Record,
    ns: Vec<Record>,
    /// The in-zone name servers' address records, by name.
    glue: std::collections::HashMap<Name, Vec<Record>>,
    /// The first labels of glue names one label under the zone: never a
    /// site's answer, whatever the sites are called.
    glue_labels: HashSet<String>,
    /// The site ids answered: the node file's, and those the control
    /// plane lists ([`GeoDns::set_sites`]).
    sites: RwLock<HashSet<String>>,
    /// The node file's `sites`, answered whatever the control plane lists.
    file_sites: HashSet<String>,
    pub geo: Arc<GeoDb>,
    pub steering: Steering,
    metrics: DnsMetrics,
    /// The UDP response-rate limit, when there is one.
    limit: Option<RateLimit>,
    /// This DNS node's name.
    pub node: String,
    /// Whether this server answers with each registered edge, by (PoP,
    /// edge), as the registry last read said ([`GeoDns::answerable_text`]).
    pub(super) answerable: std::sync::Mutex<Vec<(String, String, bool)>>,
}

const QTYPES: [&str; 5] = ["A", "AAAA", "SOA", "NS", "other"];
const RCODES: [&str; 6] = ["noerror", "nxdomain", "refused", "formerr", "notimp", "other"];
/// Metric labels of [`Reason`], in its order.
const REASONS: [&str; 4] = ["nearest", "country", "continent", "default"];

/// Metric handles made once, so a query only increments them.
#[derive(Debug)]
struct DnsMetrics {
    queries: Vec<Counter>,
    /// By PoP (in node-file order), then by [`Reason`].
    answers: Vec<[Counter; 4]>,
    latency: Histogram,
    /// UDP answers over the rate limit: dropped, sent truncated.
    limited: [Counter; 2],
}

impl DnsMetrics {
    fn new(node: &str, pops: &[String]) -> DnsMetrics {
        let mut queries = Vec::new();
        for t in QTYPES {
            for r in RCODES {
                queries
                    .push(counter!("outpost_dns_queries_total", "node" => node.to_string(), "type" => t, "rcode" => r));
            }
        }
        let answers = pops
            .iter()
            .map(|p| {
                REASONS.map(|r| {
                    counter!("outpost_dns_answers_total", "node" => node.to_string(), "pop" => p.clone(), "reason" => r)
                })
            })
            .collect();
        DnsMetrics {
            queries,
            answers,
            latency: histogram!("outpost_dns_query_duration_seconds", "node" => node.to_string()),
            limited: ["dropped", "truncated"]
                .map(|a| counter!("outpost_dns_rate_limited_total", "node" => node.to_string(), "action" => a)),
        }
    }

    /// An answer from the PoP at `pop` (node-file order).
    pub(super) fn answered(&self, pop: usize, reason: Reason) {
        if let Some(c) = self.answers.get(pop) {
            c[reason as usize].increment(1);
        }
    }

    pub(super) fn query(&self, qtype: &str, rcode: &str) {
        let t = QTYPES.iter().position(|x| *x == qtype).unwrap_or(QTYPES.len() - 1);
        let r = RCODES.iter().position(|x| *x == rcode).unwrap_or(RCODES.len() - 1);
        if let Some(c) = self.queries.get(t * RCODES.len() + r) {
            c.increment(1);
        }
    }
}

fn ip_of(subnet: &ClientSubnet) -> IpAddr {
    subnet.addr()
}

impl GeoDns {
    pub fn new(node: &str, cfg: &DnsNode, geo: Arc<GeoDb>) -> Result<GeoDns, String> {
        let zone = Name::from_ascii(&cfg.zone).map_err(|e| format!("zone `{}`: {e}", cfg.zone))?.to_lowercase();
        let ttl = cfg.ttl.as_secs() as u32;
        let mut ns_names = Vec::new();
        for n in &cfg.nameservers {
            ns_names.push(Name::from_ascii(n).map_err(|e| format!("nameserver `{n}`: {e}"))?);
        }
        if ns_names.is_empty() {
            ns_names.push(Name::from_ascii("ns1").and_then(|n| n.append_domain(&zone)).map_err(|e| e.to_string())?);
        }
        let hostmaster =
            Name::from_ascii("hostmaster").and_then(|n| n.append_domain(&zone)).map_err(|e| e.to_string())?;
        // The serial only needs to grow between configurations.
        let serial = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
            as u32)
            .max(1);
        let soa = Record::from_rdata(
            zone.clone(),
            ttl,
            RData::SOA(SOA::new(ns_names[0].clone(), hostmaster, serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl)),
        );
        let ns = ns_names.iter().map(|n| Record::from_rdata(zone.clone(), ttl, RData::NS(NS(n.clone())))).collect();
        let mut glue = std::collections::HashMap::new();
        for (name, addrs) in &cfg.glue {
            let name = Name::from_ascii(name).map_err(|e| format!("glue `{name}`: {e}"))?.to_lowercase();
            let records = addrs
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                })
                .map(|rdata| Record::from_rdata(name.clone(), ttl, rdata))
                .collect();
            glue.insert(name, records);
        }
        for n in ns_names.iter().filter(|n| zone.zone_of(n) && !glue.contains_key(&n.to_lowercase())) {
            tracing::warn!(nameserver = %n, "a name server inside the zone has no [dns.glue] addresses: resolvers cannot reach it");
        }
        let zone_wire = hickory_proto::serialize::binary::BinEncodable::to_bytes(&zone)
            .map_err(|e| format!("zone `{}`: {e}", cfg.zone))?;
        let glue_labels = glue
            .keys()
            .filter(|n| n.num_labels() == zone.num_labels() + 1 && zone.zone_of(n))
            .filter_map(|n| n.iter().next().and_then(|l| std::str::from_utf8(l).ok()).map(str::to_string))
            .collect();
        Ok(GeoDns {
            glue_labels,
            zone_wire,
            zone,
            ttl,
            soa,
            ns,
            glue,
            sites: RwLock::new(cfg.sites.iter().cloned().collect()),
            file_sites: cfg.sites.iter().cloned().collect(),
            geo,
            steering: Steering::new(cfg),
            metrics: DnsMetrics::new(node, &cfg.pops.iter().map(|p| p.name.clone()).collect::<Vec<_>>()),
            limit: RateLimit::new(cfg.rate_limit),
            node: node.to_string(),
            answerable: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// `outpost_dns_answerable{pop, edge}` as Prometheus text: 1 for each
    /// registered edge whose address this server answers with, 0 for one
    /// it does not (dead, or outside its PoP's networks). Written at each
    /// scrape from the registry as last read, not recorded: an edge that
    /// leaves the registry leaves no series behind (edges come and go
    /// under names of their own, and each would be a series for ever).
    pub fn answerable_text(&self) -> String {
        use std::fmt::Write;
        let answerable = self.answerable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if answerable.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "# HELP outpost_dns_answerable Whether this DNS server answers with the registered edge.\n\
             # TYPE outpost_dns_answerable gauge\n",
        );
        for (pop, edge, answered) in answerable.iter() {
            let _ = writeln!(
                out,
                "outpost_dns_answerable{{node=\"{}\",pop=\"{pop}\",edge=\"{edge}\"}} {}",
                self.node,
                u8::from(*answered)
            );
        }
        out
    }

    /// Whether `out`, the UDP answer to `query` from `client`, goes out
    /// under the response-rate limit ([`super::limit`]); made the
    /// truncated answer sent in its place when that is what goes.
    pub(super) fn rate_limit(&self, client: IpAddr, query: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(limit) = &self.limit else { return true };
        match limit.check(client, query, out) {
            Verdict::Send => true,
            Verdict::Truncate => {
                self.metrics.limited[1].increment(1);
                truncate(query, out);
                true
            }
            Verdict::Drop => {
                self.metrics.limited[0].increment(1);
                false
            }
        }
    }

    /// Replaces the site ids the control plane lists: with the node
    /// file's, the sites answered under the zone. A site deleted there is
    /// NXDOMAIN from then on (unless the node file names it).
    pub fn set_sites(&self, listed: impl IntoIterator<Item = String>) {
        let mut sites: HashSet<String> = listed.into_iter().map(|s| s.to_ascii_lowercase()).collect();
        sites.extend(self.file_sites.iter().cloned());
        *self.sites.write().unwrap_or_else(|p| p.into_inner()) = sites;
    }

    /// Whether `name` exists in the zone: the apex, a site, a glue name, or
    /// a name between the zone and a deeper glue name (an empty
    /// non-terminal: NODATA, never NXDOMAIN, which a resolver may take as
    /// saying nothing exists below it, RFC 8020).
    fn known(&self, name: &Name) -> bool {
        self.glue.contains_key(name) || self.steered(name) || self.above_glue(name)
    }

    /// An empty non-terminal: a name with glue names below it.
    fn above_glue(&self, name: &Name) -> bool {
        !name.is_wildcard() && self.glue.keys().any(|g| g != name && name.zone_of(g))
    }

    /// Whether `name` is the apex or a site: answered with steered edges.
    fn steered(&self, name: &Name) -> bool {
        // `num_labels` leaves out a leading `*`: a literal `*.<zone>` would
        // otherwise be taken for the zone's own name (RFC 4592: no name
        // here is a wildcard).
        if name.is_wildcard() {
            return false;
        }
        let extra = name.num_labels().saturating_sub(self.zone.num_labels());
        match extra {
            0 => true,
            1 => name.iter().next().and_then(|l| std::str::from_utf8(l).ok()).is_some_and(|label| {
                let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
                if label.bytes().any(|b| b.is_ascii_uppercase()) {
                    sites.contains(&label.to_ascii_lowercase())
                } else {
                    sites.contains(label)
                }
            }),
            _ => false,
        }
    }

    /// Where `client` is, the ECS scope an answer for it covers, and the
    /// weight bucket of its network (the database's, else a /24 or /56).
    pub(super) fn place(&self, client: IpAddr) -> (Option<Place>, Option<u8>, u8) {
        let place = self.geo.locate(client);
        // An IPv4 address found in the database's IPv6 tree can come with a
        // prefix over 32; the scope reported is at most the family's length.
        let longest = if client.is_ipv4() { 32 } else { 128 };
        let scope = place.as_ref().map(|p| p.prefix.min(longest));
        let network = scope.unwrap_or(if client.is_ipv4() { 24 } else { 56 });
        (place, scope, super::steer::bucket(client, network))
    }

    /// The steered address records for `name`, and the ECS scope to report.
    fn steer(&self, name: &Name, qtype: RecordType, client: IpAddr) -> (Vec<Record>, Option<u8>, &'static str) {
        let (place, scope, bucket) = self.place(client);
        let family = match qtype {
            RecordType::A => super::steer::family_of(false),
            RecordType::AAAA => super::steer::family_of(true),
            _ => None,
        };
        let Some(edges) = self.steering.choose_with(place.as_ref(), bucket, family, |c| {
            self.metrics.answered(c.index, c.reason);
            c.rotated().collect::<Vec<_>>()
        }) else {
            return (Vec::new(), scope, "none");
        };
        let records = edges
            .into_iter()
            .filter_map(|ip| match (ip, qtype) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(name.clone(), self.ttl, rdata))
            .collect();
        (records, scope, "steered")
    }
}

#[async_trait::async_trait]
impl RequestHandler for GeoDns {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let started = Instant::now();
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = false;
        let mut edns_out: Option<Edns> = request.edns.as_ref().map(|asked| {
            let mut e = Edns::new();
            // A UDP answer fits what the client said it takes (never under
            // 512, RFC 6891 §6.2.5) and what we offer; it is also the size
            // this answer is truncated to.
            e.set_max_payload(asked.max_payload().clamp(MIN_PAYLOAD, EDNS_PAYLOAD));
            // RFC 3225 §3: the DO bit is copied into the response.
            e.set_dnssec_ok(asked.flags().dnssec_ok);
            e
        });
        let mut reply = Reply::default();
        if request.metadata.op_code != OpCode::Query {
            meta.response_code = ResponseCode::NotImp;
        } else if request.queries.len() != 1 {
            meta.response_code = ResponseCode::FormErr;
        } else if request.edns.as_ref().is_some_and(|e| e.version() > EDNS_VERSION) {
            // RFC 6891 §6.1.3: a version we do not speak; ours is in the OPT.
            meta.response_code = ResponseCode::BADVERS;
        } else if !client_subnet_well_formed(request.as_slice()) {
            // RFC 7871 §6: address octets beyond the prefix, or bits set past it.
            meta.response_code = ResponseCode::FormErr;
        } else {
            reply = self.answer(request, &mut meta, edns_out.as_mut());
            if request.protocol() == Protocol::Udp {
                let limit = edns_out.as_ref().map_or(MIN_PAYLOAD, Edns::max_payload);
                if !fits(request, &meta, &reply, edns_out.as_ref(), limit) {
                    // Truncated with no records at all, so the OPT (and the
                    // client subnet in it) always fits: the client asks
                    // again over TCP for the whole answer.
                    reply.answers.clear();
                    reply.soa.clear();
                    reply.additionals.clear();
                    meta.truncation = true;
                }
            }
        }
        let rcode = meta.response_code;
        let builder = MessageResponseBuilder::new(&request.queries, edns_out.as_ref());
        let message =
            builder.build(meta, reply.answers.iter(), std::iter::empty(), reply.soa.iter(), reply.additionals.iter());
        let info = match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS response not sent");
                ResponseInfo::from(Header { metadata: meta, counts: HeaderCounts::default() })
            }
        };
        self.metrics.query(reply.qtype, rcode_label(rcode));
        self.metrics.latency.record(started.elapsed().as_secs_f64());
        info
    }
}

/// Whether the answer, encoded, fits `limit` bytes: a bound first, the
/// exact encoding only when the bound does not settle it.
fn fits(request: &Request, meta: &Metadata, reply: &Reply, edns: Option<&Edns>, limit: u16) -> bool {
    let limit = usize::from(limit);
    let rdata = |r: &Record| match r.record_type() {
        RecordType::A => 4,
        RecordType::AAAA => 16,
        _ => 2 * 256 + 20,
    };
    let question: usize = request.queries.queries().iter().map(|q| q.name().len() + 1 + 4).sum();
    let all = || reply.answers.iter().chain(&reply.soa).chain(&reply.additionals);
    let records: usize = all().map(|r| r.name.len() + 1 + 10 + rdata(r)).sum();
    let opt = edns.map_or(0, |_| 11 + 4 + 20);
    if 12 + question + records + opt <= limit {
        return true;
    }
    let mut m = hickory_proto::op::Message::new(meta.id, hickory_proto::op::MessageType::Response, OpCode::Query);
    m.add_queries(request.queries.queries().iter().map(|q| q.original().clone()));
    m.add_answers(reply.answers.iter().cloned());
    m.add_authorities(reply.soa.iter().cloned());
    m.add_additionals(reply.additionals.iter().cloned());
    if let Some(e) = edns {
        m.set_edns(e.clone());
    }
    m.to_vec().is_ok_and(|bytes| bytes.len() <= limit)
}

/// The EDNS Client Subnet option of a raw query, if any, is well formed:
/// a known family, a source prefix that fits it, exactly the address
/// octets the prefix needs, and no bit set past the prefix (RFC 7871 §6).
/// A query that cannot be walked is left to the parser that accepted it.
fn client_subnet_well_formed(raw: &[u8]) -> bool {
    walk_client_subnet(raw).unwrap_or(true)
}

fn walk_client_subnet(raw: &[u8]) -> Option<bool> {
    let u16_at = |i: usize| raw.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *raw.get(i)?;
            match len {
                0 => return Some(i + 1),
                l if l & 0xC0 == 0xC0 => return Some(i + 2),
                l => i += 1 + usize::from(l),
            }
        }
    };
    let (qd, an, ns, ar) = (u16_at(4)?, u16_at(6)?, u16_at(8)?, u16_at(10)?);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    for n in 0..usize::from(an) + usize::from(ns) + usize::from(ar) {
        i = skip_name(i)?;
        let (rtype, rdlen) = (u16_at(i)?, usize::from(u16_at(i + 8)?));
        let data = raw.get(i + 10..i + 10 + rdlen)?;
        i += 10 + rdlen;
        if rtype != u16::from(RecordType::OPT) || n < usize::from(an) + usize::from(ns) {
            continue;
        }
        let mut o = 0;
        while o + 4 <= data.len() {
            let code = u16::from_be_bytes([data[o], data[o + 1]]);
            let len = usize::from(u16::from_be_bytes([data[o + 2], data[o + 3]]));
            let option = data.get(o + 4..o + 4 + len)?;
            o += 4 + len;
            if code != u16::from(EdnsCode::Subnet) {
                continue;
            }
            let (family, source) = (u16::from_be_bytes([*option.first()?, *option.get(1)?]), *option.get(2)?);
            let address = option.get(4..)?;
            let max = match family {
                1 => 32,
                2 => 128,
                _ => return Some(false),
            };
            let needed = usize::from(source).div_ceil(8);
            let stray_bits =
                source % 8 != 0 && address.get(needed - 1).is_some_and(|b| b & (0xFF >> (source % 8)) != 0);
            return Some(source <= max && address.len() == needed && !stray_bits);
        }
    }
    Some(true)
}

/// The sections of an answer, and the query type's metric label.
struct Reply {
    answers: Vec<Record>,
    soa: Vec<Record>,
    additionals: Vec<Record>,
    qtype: &'static str,
}

impl Default for Reply {
    fn default() -> Self {
        Reply { answers: Vec::new(), soa: Vec::new(), additionals: Vec::new(), qtype: "other" }
    }
}

impl GeoDns {
    /// The answer to a query with one question; sets the response code and
    /// the authoritative flag in `meta`, and the ECS scope in `edns`.
    fn answer(&self, request: &Request, meta: &mut Metadata, edns: Option<&mut Edns>) -> Reply {
        let q = &request.queries.queries()[0];
        // LowerName is already lower-case.
        let name: Name = Name::from(q.name().clone());
        let qtype = q.query_type();
        let mut reply = Reply { qtype: qtype_label(qtype), ..Reply::default() };
        // Only the Internet class is served; zone transfers are not offered.
        if q.query_class() != DNSClass::IN || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            meta.response_code = ResponseCode::Refused;
            return reply;
        }
        if !self.zone.zone_of(&name) {
            meta.response_code = ResponseCode::Refused;
            return reply;
        }
        meta.authoritative = true;
        if !self.known(&name) {
            meta.response_code = ResponseCode::NXDomain;
            reply.soa.push(self.soa.clone());
            return reply;
        }
        let apex = name == self.zone;
        match (qtype, self.glue.get(&name)) {
            (RecordType::SOA, _) if apex => reply.answers.push(self.soa.clone()),
            (RecordType::NS, _) if apex => {
                reply.answers.extend(self.ns.iter().cloned());
                // Glue, so a resolver can reach the servers it was just told of.
                reply.additionals.extend(self.glue.values().flatten().cloned());
            }
            (RecordType::A | RecordType::AAAA, Some(records)) => {
                reply.answers.extend(records.iter().filter(|r| r.record_type() == qtype).cloned());
            }
            (RecordType::A | RecordType::AAAA, None) if self.steered(&name) => {
                reply.answers = self.addresses(request, &name, qtype, edns);
            }
            _ => {}
        }
        // Positive answers carry no authority section (it is optional, and
        // the answer is what resolvers need).
        if reply.answers.is_empty() {
            reply.soa.push(self.soa.clone());
        }
        reply
    }

    /// The steered A or AAAA records for the client (its ECS subnet when
    /// given), echoing the subnet with the scope the answer covers.
    fn addresses(&self, request: &Request, name: &Name, qtype: RecordType, edns: Option<&mut Edns>) -> Vec<Record> {
        let subnet = request.edns.as_ref().and_then(|e| match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(s)) => Some(*s),
            _ => None,
        });
        // A source prefix of 0 says nothing of the client (RFC 7871 §7.1.2):
        // the packet's source steers. A dual-stack socket gives IPv4
        // sources as `::ffff:a.b.c.d`.
        let located = subnet.as_ref().filter(|s| s.source_prefix() > 0);
        let client = located.map_or_else(|| request.src().ip().to_canonical(), ip_of);
        let (records, scope, _) = self.steer(name, qtype, client);
        if let (Some(s), Some(e)) = (subnet, edns) {
            // RFC 7871 §7.2.1: the scope the answer covers; 0 for a query
            // that gave no client address.
            let scope = if s.source_prefix() == 0 { 0 } else { scope.unwrap_or(s.source_prefix()) };
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(s.addr(), s.source_prefix(), scope)));
        }
        records
    }
}

fn qtype_label(qtype: RecordType) -> &'static str {
    match qtype {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::SOA => "SOA",
        RecordType::NS => "NS",
        _ => "other",
    }
}

fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::Refused => "refused",
        ResponseCode::FormErr => "formerr",
        ResponseCode::NotImp => "notimp",
        _ => "other",
    }
}
