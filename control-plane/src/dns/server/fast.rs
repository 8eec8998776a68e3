//! The UDP fast path: the query nearly every resolver sends (one question,
//! A or AAAA, class IN, for a site's name, at most an EDNS 0 OPT with a
//! client subnet) is read in place and answered into a reused buffer, with
//! no allocation and no message objects. Anything else, or anything this
//! reader is not sure of (a compression pointer, trailing bytes, a second
//! client subnet, an answer that would not fit, no address of the asked
//! family), is left to the full handler, which answers every case; the
//! tests compare the two on the queries the fast path takes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{EDNS_PAYLOAD, GeoDns, MIN_PAYLOAD};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const OPTION_SUBNET: u16 = 8;
/// Header flag bits of the second 16-bit word.
pub(in crate::dns) const QR: u16 = 0x8000;
pub(in crate::dns) const OPCODE: u16 = 0x7800;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
pub(in crate::dns) const RD: u16 = 0x0100;
const CD: u16 = 0x0010;
/// The DO bit in the OPT record's flags.
const DO: u16 = 0x8000;
/// A pointer to the question's name, which starts right after the header.
const NAME_POINTER: [u8; 2] = [0xC0, 12];

/// An EDNS Client Subnet option as the query gave it.
#[derive(Debug, Clone, Copy)]
struct Subnet<'q> {
    family: u16,
    source: u8,
    /// Exactly the octets the source prefix needs.
    address: &'q [u8],
}

impl Subnet<'_> {
    fn ip(&self) -> IpAddr {
        let mut octets = [0u8; 16];
        octets[..self.address.len()].copy_from_slice(self.address);
        if self.family == 1 {
            IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    }
}

/// The query's OPT record.
#[derive(Debug, Clone, Copy)]
struct Opt<'q> {
    payload: u16,
    dnssec_ok: bool,
    subnet: Option<Subnet<'q>>,
}

/// What the fast path needs of a query.
#[derive(Debug)]
struct Query<'q> {
    /// End of the question (name, type and class).
    question_end: usize,
    qtype: u16,
    /// The site's label, as sent (any case).
    site: &'q [u8],
    opt: Option<Opt<'q>>,
}

fn u16_at(raw: &[u8], i: usize) -> Option<u16> {
    raw.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a query the fast path can answer; `None` for anything else.
/// `zone` is the zone's name in wire form, lower-case.
fn read<'q>(raw: &'q [u8], zone: &[u8]) -> Option<Query<'q>> {
    let flags = u16_at(raw, 2)?;
    if flags & (QR | OPCODE | TC) != 0 {
        return None;
    }
    let counts = (u16_at(raw, 4)?, u16_at(raw, 6)?, u16_at(raw, 8)?, u16_at(raw, 10)?);
    if !matches!(counts, (1, 0, 0, 0 | 1)) {
        return None;
    }
    // `<site>.<zone>`: one label, then exactly the zone (no pointers).
    let site_len = usize::from(*raw.get(12)?);
    if site_len == 0 || site_len > 63 {
        return None;
    }
    let site = raw.get(13..13 + site_len)?;
    let rest = 13 + site_len;
    let name_end = rest + zone.len();
    // RFC 1035 §2.3.4: a name is at most 255 octets.
    if name_end - 12 > 255 {
        return None;
    }
    if !raw.get(rest..name_end)?.eq_ignore_ascii_case(zone) {
        return None;
    }
    let (qtype, qclass) = (u16_at(raw, name_end)?, u16_at(raw, name_end + 2)?);
    if !matches!(qtype, TYPE_A | TYPE_AAAA) || qclass != CLASS_IN {
        return None;
    }
    let question_end = name_end + 4;
    let opt = if counts.3 == 1 { Some(read_opt(raw, question_end)?) } else { None };
    if opt.is_none() && raw.len() != question_end {
        return None;
    }
    Some(Query { question_end, qtype, site, opt })
}

/// The OPT record at `at`, which must end the packet: EDNS version 0, no
/// extended rcode, and at most one well-formed client subnet.
fn read_opt(raw: &[u8], at: usize) -> Option<Opt<'_>> {
    if *raw.get(at)? != 0 || u16_at(raw, at + 1)? != TYPE_OPT {
        return None;
    }
    let payload = u16_at(raw, at + 3)?;
    let (ext_rcode, version) = (*raw.get(at + 5)?, *raw.get(at + 6)?);
    let flags = u16_at(raw, at + 7)?;
    let len = usize::from(u16_at(raw, at + 9)?);
    if ext_rcode != 0 || version != 0 || raw.len() != at + 11 + len {
        return None;
    }
    let data = &raw[at + 11..];
    let mut subnet = None;
    let mut o = 0;
    while o < data.len() {
        let code = u16_at(data, o)?;
        let len = usize::from(u16_at(data, o + 2)?);
        let option = data.get(o + 4..o + 4 + len)?;
        o += 4 + len;
        if code == OPTION_SUBNET {
            if subnet.is_some() {
                return None;
            }
            subnet = Some(read_subnet(option)?);
        }
    }
    Some(Opt { payload, dnssec_ok: flags & DO != 0, subnet })
}

/// A client subnet per RFC 7871 §6: a known family, a source prefix that
/// fits it, exactly the octets it needs, no bit set past it, and a zero
/// scope. Anything else is the full handler's (FORMERR).
fn read_subnet(option: &[u8]) -> Option<Subnet<'_>> {
    let family = u16_at(option, 0)?;
    let (source, scope) = (*option.get(2)?, *option.get(3)?);
    let address = option.get(4..)?;
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    let needed = usize::from(source).div_ceil(8);
    if source > max || scope != 0 || address.len() != needed {
        return None;
    }
    if source % 8 != 0 && address[needed - 1] & (0xFF >> (source % 8)) != 0 {
        return None;
    }
    Some(Subnet { family, source, address })
}

impl GeoDns {
    /// Answers `raw` from `src` into `out` when it is a query the fast
    /// path takes; `false` leaves it to the full handler.
    pub fn answer_fast(&self, raw: &[u8], src: IpAddr, out: &mut Vec<u8>) -> bool {
        let started = std::time::Instant::now();
        let Some(q) = read(raw, &self.zone_wire) else { return false };
        if !self.is_site(q.site) {
            return false;
        }
        let subnet = q.opt.and_then(|o| o.subnet);
        // A dual-stack socket gives IPv4 clients as `::ffff:a.b.c.d`.
        // A source prefix of 0 says nothing of the client (RFC 7871 §7.1.2):
        // the packet's source steers.
        let client = subnet.filter(|s| s.source > 0).map_or(src.to_canonical(), |s| s.ip());
        let (place, scope, bucket) = self.place(client);
        out.clear();
        // Header: the query's id, then QR and AA, with RD and CD copied.
        let flags = u16_at(raw, 2).unwrap_or(0);
        out.extend_from_slice(&raw[..2]);
        out.extend_from_slice(&(QR | AA | (flags & (RD | CD))).to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(q.opt.is_some())]);
        out.extend_from_slice(&raw[12..q.question_end]);
        let ttl = self.ttl.to_be_bytes();
        let family = super::super::steer::family_of(q.qtype == TYPE_AAAA);
        let chosen = self.steering.choose_with(place.as_ref(), bucket, family, |c| {
            let mut n = 0u16;
            for ip in c.rotated() {
                match (ip, q.qtype) {
                    (IpAddr::V4(v4), TYPE_A) => push_address(out, TYPE_A, &ttl, &v4.octets()),
                    (IpAddr::V6(v6), TYPE_AAAA) => push_address(out, TYPE_AAAA, &ttl, &v6.octets()),
                    _ => continue,
                }
                n += 1;
            }
            (n, c.index, c.reason)
        });
        // No PoP, or none of the asked family: the full handler's NODATA.
        let Some((count @ 1.., pop, reason)) = chosen else { return false };
        out[6..8].copy_from_slice(&count.to_be_bytes());
        let limit = match q.opt {
            Some(opt) => {
                let payload = opt.payload.clamp(MIN_PAYLOAD, EDNS_PAYLOAD);
                push_opt(
                    out,
                    payload,
                    opt.dnssec_ok,
                    subnet.map(|s| (s, if s.source == 0 { 0 } else { scope.unwrap_or(s.source) })),
                );
                payload
            }
            None => MIN_PAYLOAD,
        };
        // Too big for the client: the full handler truncates.
        if out.len() > usize::from(limit) {
            return false;
        }
        self.metrics.answered(pop, reason);
        self.metrics.query(if q.qtype == TYPE_A { "A" } else { "AAAA" }, "noerror");
        self.metrics.latency.record(started.elapsed().as_secs_f64());
        true
    }

    /// Whether `label` (any case) names a site of the zone.
    fn is_site(&self, label: &[u8]) -> bool {
        let mut lower = [0u8; 63];
        let lower = &mut lower[..label.len()];
        lower.copy_from_slice(label);
        lower.make_ascii_lowercase();
        let Ok(label) = std::str::from_utf8(lower) else { return false };
        // A name server's name is answered from its glue, by the full handler.
        !self.glue_labels.contains(label) && self.sites.read().unwrap_or_else(|p| p.into_inner()).contains(label)
    }
}

/// An address record for the question's name.
fn push_address(out: &mut Vec<u8>, rtype: u16, ttl: &[u8; 4], address: &[u8]) {
    out.extend_from_slice(&NAME_POINTER);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(ttl);
    out.extend_from_slice(&(address.len() as u16).to_be_bytes());
    out.extend_from_slice(address);
}

/// The response's OPT: our payload, EDNS 0, the DO bit echoed (RFC 3225),
/// and the client subnet with the scope the answer covers (RFC 7871 §7.2.1).
fn push_opt(out: &mut Vec<u8>, payload: u16, dnssec_ok: bool, subnet: Option<(Subnet<'_>, u8)>) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(if dnssec_ok { DO } else { 0 }).to_be_bytes());
    match subnet {
        Some((s, scope)) => {
            let len = 4 + s.address.len() as u16;
            out.extend_from_slice(&(4 + len).to_be_bytes());
            out.extend_from_slice(&OPTION_SUBNET.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&s.family.to_be_bytes());
            out.extend_from_slice(&[s.source, scope]);
            out.extend_from_slice(s.address);
        }
        None => out.extend_from_slice(&[0, 0]),
    }
}
