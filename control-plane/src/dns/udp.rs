//! The UDP listener. Each datagram is answered in the thread that read it
//! (a batch at a time with `recvmmsg`), no task per query: the common query by the fast path
//! ([`GeoDns::answer_fast`]), anything else by the full handler through
//! hickory's message types ([`answer_full`]). The answers to what was
//! queued together leave with one `sendmmsg`, as nsd and gdnsd send them,
//! which also lets a busy resolver read them in fewer wakeups. Each answer
//! passes the response-rate limit first ([`super::limit`]). TCP stays
//! with hickory's server, and is never limited.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::GeoDns;
use super::server::fast::{OPCODE, QR, RD};
use super::server::{EDNS_PAYLOAD, MIN_PAYLOAD};

/// Largest query read; longer datagrams are cut there and then refused as
/// malformed by the parser.
const MAX_QUERY: usize = 4096;
/// The socket buffers asked for, each way.
const SOCKET_BUFFER: usize = 4 << 20;
/// Most answers sent with one `sendmmsg`.
const BATCH: usize = 32;
/// The FORMERR response code, in the header's flags word.
const FORMERR: u16 = 1;

/// Answers datagrams on `socket` until `shutdown`, with a thread per core
/// (at most four) reading it: a blocking loop per thread, as nsd and gdnsd
/// run theirs, with the runtime only for what is not the fast path.
pub(super) fn serve(
    dns: Arc<GeoDns>,
    socket: UdpSocket,
    shutdown: &CancellationToken,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    // Room for a burst of queries while the threads are busy (nsd asks for
    // the same): beyond the system's cap only with privilege.
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER);
    }
    if sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER);
    }
    // How often a thread waiting for queries looks at `shutdown`.
    socket.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    let mut tasks = Vec::new();
    for _ in 0..threads {
        let (dns, socket, shutdown) = (Arc::clone(&dns), socket.try_clone()?, shutdown.clone());
        let runtime = tokio::runtime::Handle::current();
        tasks.push(tokio::task::spawn_blocking(move || answer_loop(&dns, &socket, &shutdown, &runtime)));
    }
    Ok(tasks)
}

fn answer_loop(
    dns: &GeoDns,
    socket: &std::net::UdpSocket,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
    use std::os::fd::AsRawFd;
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_QUERY]).collect();
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(usize::from(EDNS_PAYLOAD))).collect();
    // Per datagram read: its buffer, length and source.
    let mut got: Vec<(usize, usize, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut dests: Vec<SocketAddr> = Vec::with_capacity(BATCH);
    while !shutdown.is_cancelled() {
        // Waits for one datagram, then takes what else is queued (up to a
        // batch) with the same call.
        got.clear();
        {
            let mut iovs: Vec<[std::io::IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [std::io::IoSliceMut::new(b)]).collect();
            match recvmmsg(socket.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(received) => {
                    for (i, m) in received.enumerate() {
                        if let Some(src) = m.address.as_ref().and_then(socket_addr) {
                            got.push((i, m.bytes, src));
                        }
                    }
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // Not a spin on an error that persists (out of memory).
                    tracing::debug!(error = %e, "UDP receive failed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            }
        }
        dests.clear();
        for &(i, n, ref src) in &got {
            // Nothing can be sent back to port 0 (and answering it would
            // reflect at someone else).
            if src.port() == 0 {
                continue;
            }
            let (query, out) = (&bufs[i][..n], &mut outs[dests.len()]);
            let answered = dns.answer_fast(query, src.ip(), out)
                || match runtime.block_on(answer_full(dns, query, *src)) {
                    Some(bytes) => {
                        *out = bytes;
                        true
                    }
                    None => false,
                };
            if answered && dns.rate_limit(src.ip(), query, out) {
                dests.push(*src);
            }
        }
        send_batch(socket, &outs[..dests.len()], &dests);
    }
}

/// A datagram's source as a standard address (IPv4 or IPv6 only).
fn socket_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    a.as_sockaddr_in()
        .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
        .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6))))
}

/// Sends `outs[i]` to `dests[i]` with as few `sendmmsg` calls as the
/// socket takes; an answer the kernel refuses is dropped, as a lost
/// datagram would be.
fn send_batch(socket: &std::net::UdpSocket, outs: &[Vec<u8>], dests: &[SocketAddr]) {
    let mut sent = 0;
    while sent < dests.len() {
        match try_send(socket, &outs[sent..], &dests[sent..]) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, dest = %dests[sent], "UDP answer not sent");
                sent += 1;
            }
        }
    }
}

/// One `sendmmsg` of `outs[i]` to `dests[i]`: how many were sent.
fn try_send(socket: &std::net::UdpSocket, outs: &[Vec<u8>], dests: &[SocketAddr]) -> std::io::Result<usize> {
    use rustix::net::addr::SocketAddrArg;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags};
    let addrs: Vec<rustix::net::SocketAddrAny> = dests.iter().map(SocketAddrArg::as_any).collect();
    let iovs: Vec<[std::io::IoSlice<'_>; 1]> = outs.iter().map(|o| [std::io::IoSlice::new(o)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
        dests.iter().map(|_| SendAncillaryBuffer::default()).collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    rustix::net::sendmmsg(socket, &mut msgs, SendFlags::empty()).map_err(std::io::Error::from)
}

/// The full handler's answer to one datagram: FORMERR for a query that
/// does not parse (when its header can be read), nothing for responses
/// and for datagrams shorter than a header.
pub(super) async fn answer_full(dns: &GeoDns, raw: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    answer_full_over(dns, raw, src, Protocol::Udp).await
}

/// [`answer_full`] for a query that came over `protocol`: over TCP the
/// answer is whole, up to 64 KiB, whatever the EDNS payload says.
pub(super) async fn answer_full_over(dns: &GeoDns, raw: &[u8], src: SocketAddr, protocol: Protocol) -> Option<Vec<u8>> {
    let flags = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    if raw.len() < 12 || flags & QR != 0 {
        return None;
    }
    let Ok(request) = Request::from_bytes(raw.to_vec(), src, protocol) else {
        let mut reply = raw[..12].to_vec();
        reply[2..4].copy_from_slice(&(QR | (flags & (OPCODE | RD)) | FORMERR).to_be_bytes());
        reply[4..12].fill(0);
        return Some(reply);
    };
    let capture = Capture { out: Arc::default(), whole: protocol == Protocol::Tcp };
    dns.handle_request::<_, TokioTime>(&request, capture.clone()).await;
    capture.out.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// A response handler that keeps the encoded answer: sized to the client's
/// EDNS payload, or `whole` (TCP).
#[derive(Debug, Clone, Default)]
struct Capture {
    out: Arc<Mutex<Option<Vec<u8>>>>,
    whole: bool,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let id = response.metadata().id;
        let limit = if self.whole { u16::MAX } else { response.edns().map_or(MIN_PAYLOAD, |e| e.max_payload()) };
        let mut bytes = Vec::with_capacity(usize::from(limit));
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(limit);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(e) => {
                // The handler sizes its answers; should one still not fit,
                // the client gets SERVFAIL rather than nothing.
                tracing::warn!(error = %e, "DNS answer does not encode");
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header { metadata, counts: HeaderCounts::default() };
                bytes = header.to_bytes().map_err(|e| NetError::from(e.to_string()))?;
                ResponseInfo::from(header)
            }
        };
        *self.out.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

    use super::*;

    /// A DNS node on the sample database: fra with two IPv4 and one IPv6
    /// edge, iad and sin with one of each.
    fn dns() -> (tempfile::TempDir, GeoDns) {
        dns_with("[\"shop\"]", "")
    }

    /// The same with these site ids and more of the node file after the PoPs.
    fn dns_with(sites: &str, tail: &str) -> (tempfile::TempDir, GeoDns) {
        let dir = tempfile::tempdir().unwrap();
        let geoip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/geoip/sample.mmdb");
        let text = format!(
            "[node]\nname = \"dns\"\nrole = \"dns\"\n[listen]\ndns = \"127.0.0.1:0\"\n\
             [dns]\nzone = \"cdn.test.\"\ngeoip = \"{}\"\ndefault_pop = \"fra\"\nsites = {sites}\n\
             [[dns.pop]]\nname = \"fra\"\nlatitude = 50.11\nlongitude = 8.68\nedges = [\"127.0.0.11\", \"127.0.0.21\", \"fd00::11\"]\n\
             [[dns.pop]]\nname = \"iad\"\nlatitude = 38.95\nlongitude = -77.45\nedges = [\"127.0.0.12\", \"fd00::12\"]\n\
             [[dns.pop]]\nname = \"sin\"\nlatitude = 1.35\nlongitude = 103.99\nedges = [\"127.0.0.13\", \"fd00::13\"]\n{tail}",
            geoip.display()
        );
        let file = dir.path().join("dns.toml");
        std::fs::write(&file, text).unwrap();
        let node = outpost_config::NodeConfig::load(&file).unwrap();
        let outpost_config::RoleConfig::Dns(cfg) = &node.role else { unreachable!() };
        let geo = Arc::new(super::super::GeoDb::open(&cfg.geoip).unwrap());
        (dir, GeoDns::new("dns", cfg, geo).unwrap())
    }

    /// An OPT to send: payload, DO, and a client subnet (address, prefix).
    type AskedEdns<'a> = Option<(u16, bool, Option<(&'a str, u8)>)>;
    /// An OPT as read: payload, version, DO, client subnet (address,
    /// source, scope).
    type SeenEdns = Option<(u16, u8, bool, Option<(IpAddr, u8, u8)>)>;

    fn query(name: &str, qtype: RecordType, edns: AskedEdns<'_>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0xBEEF;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((payload, dnssec_ok, subnet)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            if let Some((addr, prefix)) = subnet {
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(addr.parse().unwrap(), prefix, 0)));
            }
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// What a client reads in an answer, order of records aside.
    #[derive(Debug, PartialEq)]
    struct Seen {
        id: u16,
        flags: String,
        rcode: ResponseCode,
        question: String,
        answers: BTreeSet<(String, u32, IpAddr)>,
        authorities: usize,
        edns: SeenEdns,
    }

    fn seen(bytes: &[u8]) -> Seen {
        let m = Message::from_vec(bytes).unwrap();
        let answers = m
            .answers
            .iter()
            .map(|r| {
                let ip = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    other => panic!("{other:?}"),
                };
                assert_eq!(r.dns_class, DNSClass::IN);
                // Owner names compare without case (the fast path points
                // at the question, as the client spelled it).
                (r.name.to_string().to_ascii_lowercase(), r.ttl, ip)
            })
            .collect();
        let edns = m.edns.as_ref().map(|e| {
            let subnet = match e.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) => Some((s.addr(), s.source_prefix(), s.scope_prefix())),
                _ => None,
            };
            (e.max_payload(), e.version(), e.flags().dnssec_ok, subnet)
        });
        Seen {
            id: m.metadata.id,
            flags: m.metadata.flags().to_string(),
            rcode: m.metadata.response_code,
            question: m.queries[0].to_string(),
            answers,
            authorities: m.authorities.len(),
            edns,
        }
    }

    fn src() -> SocketAddr {
        "127.0.0.1:5300".parse().unwrap()
    }

    /// The fast path's answer, and the full handler's for the same bytes.
    async fn both(dns: &GeoDns, q: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut out = Vec::new();
        let fast = dns.answer_fast(q, src().ip(), &mut out).then_some(out);
        (fast, answer_full(dns, q, src()).await)
    }

    #[tokio::test]
    async fn the_fast_path_answers_as_the_full_handler_does() {
        let (_dir, dns) = dns();
        let cases = [
            query("shop.cdn.test.", RecordType::A, None),
            query("ShOp.CDN.tEsT.", RecordType::A, None),
            query("shop.cdn.test.", RecordType::A, Some((4096, false, None))),
            query("shop.cdn.test.", RecordType::A, Some((512, true, Some(("81.2.69.0", 24))))),
            query("shop.cdn.test.", RecordType::A, Some((1232, false, Some(("8.8.8.0", 24))))),
            query("shop.cdn.test.", RecordType::A, Some((1232, false, Some(("202.12.0.0", 16))))),
            query("shop.cdn.test.", RecordType::A, Some((1232, false, Some(("0.0.0.0", 0))))),
            query("shop.cdn.test.", RecordType::AAAA, None),
            query("shop.cdn.test.", RecordType::AAAA, Some((1232, false, Some(("2001:4860::", 48))))),
            query("shop.cdn.test.", RecordType::AAAA, Some((1232, true, Some(("2001:218::", 32))))),
            query("shop.cdn.test.", RecordType::A, Some((1232, false, Some(("2a02:c7c::", 56))))),
        ];
        for q in &cases {
            let (fast, full) = both(&dns, q).await;
            let full = full.unwrap();
            let fast = fast.unwrap_or_else(|| panic!("the fast path left {:?} to the full handler", seen(&full)));
            assert_eq!(seen(&fast), seen(&full));
            assert!(fast.len() <= full.len(), "{} bytes where the full handler takes {}", fast.len(), full.len());
        }
        // The answers steer: London's subnet gets fra's edges, Tokyo's
        // IPv6 network sin's.
        let mut out = Vec::new();
        assert!(dns.answer_fast(&cases[3], src().ip(), &mut out));
        let london = seen(&out);
        let ips: BTreeSet<IpAddr> = london.answers.iter().map(|a| a.2).collect();
        assert_eq!(ips, ["127.0.0.11", "127.0.0.21"].map(|a| a.parse().unwrap()).into());
        assert_eq!(london.edns.unwrap().3, Some(("81.2.69.0".parse().unwrap(), 24, 24)));
        assert!(dns.answer_fast(&cases[9], src().ip(), &mut out));
        let tokyo = seen(&out);
        assert_eq!(tokyo.answers.iter().map(|a| a.2).collect::<Vec<_>>(), ["fd00::13".parse::<IpAddr>().unwrap()]);
        assert_eq!(tokyo.edns.unwrap().3, Some(("2001:218::".parse().unwrap(), 32, 32)));
    }

    /// A site named like an in-zone name server does not take its name: the
    /// name server's glue answers, on either path.
    #[tokio::test]
    async fn a_name_servers_name_is_answered_from_glue_even_when_a_site_has_it() {
        let (_dir, dns) = dns_with(
            "[\"shop\", \"ns1\"]\nnameservers = [\"ns1.cdn.test.\"]",
            "[dns.glue]\n\"ns1.cdn.test.\" = [\"192.0.2.53\"]\n",
        );
        let q = query("ns1.cdn.test.", RecordType::A, None);
        let mut out = Vec::new();
        assert!(!dns.answer_fast(&q, src().ip(), &mut out), "steered where glue answers");
        let full = answer_full(&dns, &q, src()).await.unwrap();
        let want: BTreeSet<IpAddr> = ["192.0.2.53".parse().unwrap()].into();
        assert_eq!(seen(&full).answers.iter().map(|a| a.2).collect::<BTreeSet<_>>(), want);
    }

    /// A client subnet of prefix 0 (a client that asked for privacy) says
    /// nothing of where it is: the resolver's own address steers, and the
    /// answer's scope is 0 (RFC 7871 §7.1.2, §7.2.1), on both paths.
    #[tokio::test]
    async fn a_zero_length_client_subnet_is_steered_by_the_resolver_with_scope_zero() {
        let (_dir, dns) = dns();
        let q = query("shop.cdn.test.", RecordType::A, Some((1232, false, Some(("0.0.0.0", 0)))));
        let tokyo_resolver: SocketAddr = "202.12.27.33:5300".parse().unwrap();
        let mut out = Vec::new();
        assert!(dns.answer_fast(&q, tokyo_resolver.ip(), &mut out));
        let full = answer_full(&dns, &q, tokyo_resolver).await.unwrap();
        for answer in [seen(&out), seen(&full)] {
            let ips: Vec<IpAddr> = answer.answers.iter().map(|a| a.2).collect();
            assert_eq!(ips, ["127.0.0.13".parse::<IpAddr>().unwrap()], "Tokyo's resolver gets sin");
            assert_eq!(answer.edns.unwrap().3, Some(("0.0.0.0".parse().unwrap(), 0, 0)));
        }
    }

    /// On a dual-stack socket an IPv4 resolver's address comes mapped into
    /// IPv6; it is located as the IPv4 address it is, by both paths.
    #[tokio::test]
    async fn a_mapped_ipv4_source_is_located_as_ipv4() {
        let (_dir, dns) = dns();
        let q = query("shop.cdn.test.", RecordType::A, None);
        let tokyo: SocketAddr = "[::ffff:202.12.27.33]:5300".parse().unwrap();
        let mut out = Vec::new();
        assert!(dns.answer_fast(&q, tokyo.ip(), &mut out));
        let want: BTreeSet<IpAddr> = ["127.0.0.13".parse().unwrap()].into();
        assert_eq!(seen(&out).answers.iter().map(|a| a.2).collect::<BTreeSet<_>>(), want);
        let full = answer_full(&dns, &q, tokyo).await.unwrap();
        assert_eq!(seen(&full).answers.iter().map(|a| a.2).collect::<BTreeSet<_>>(), want);
    }

    #[tokio::test]
    async fn what_the_fast_path_does_not_take_the_full_handler_answers() {
        let (_dir, dns) = dns();
        let flags = |q: &mut Vec<u8>, byte: usize, bits: u8| q[byte] |= bits;
        let mut tc = query("shop.cdn.test.", RecordType::A, None);
        flags(&mut tc, 2, 0x02);
        let mut response = query("shop.cdn.test.", RecordType::A, None);
        flags(&mut response, 2, 0x80);
        let mut version1 = query("shop.cdn.test.", RecordType::A, Some((1232, false, None)));
        let at = version1.len() - 5;
        version1[at] = 1;
        let mut trailing = query("shop.cdn.test.", RecordType::A, None);
        trailing.push(0);
        // A /20 whose third octet has a bit past the prefix set.
        let mut stray_bits = query("shop.cdn.test.", RecordType::A, Some((1232, false, Some(("81.2.64.0", 20)))));
        *stray_bits.last_mut().unwrap() |= 0x01;
        // The name as a pointer back into the header, as no resolver sends.
        let mut pointer = query("shop.cdn.test.", RecordType::A, None);
        pointer.splice(17..26, [0xC0, 12]);
        let cases: Vec<(&str, Vec<u8>, Option<ResponseCode>)> = vec![
            ("unknown site", query("nope.cdn.test.", RecordType::A, None), Some(ResponseCode::NXDomain)),
            ("apex", query("cdn.test.", RecordType::A, None), Some(ResponseCode::NoError)),
            ("SOA", query("shop.cdn.test.", RecordType::SOA, None), Some(ResponseCode::NoError)),
            ("outside the zone", query("shop.other.test.", RecordType::A, None), Some(ResponseCode::Refused)),
            ("truncated flag", tc, None),
            ("a response", response, None),
            ("EDNS version 1", version1, Some(ResponseCode::BADVERS)),
            ("trailing byte", trailing, None),
            ("subnet bits past the prefix", stray_bits, Some(ResponseCode::FormErr)),
            ("a name pointer", pointer, None),
        ];
        for (what, q, rcode) in cases {
            let mut out = Vec::new();
            assert!(!dns.answer_fast(&q, src().ip(), &mut out), "{what}: taken by the fast path");
            let full = answer_full(&dns, &q, src()).await;
            if let Some(rcode) = rcode {
                let got = Message::from_vec(&full.unwrap()).unwrap().metadata.response_code;
                // BADVERS shares its low bits with BADSIG: compare numbers.
                assert_eq!(u16::from(got) & 0xF, u16::from(rcode) & 0xF, "{what}: {got}");
            }
        }
        // Every prefix of a good query: none answered fast, none a panic.
        let good = query("shop.cdn.test.", RecordType::A, Some((1232, true, Some(("81.2.69.0", 24)))));
        for n in 0..good.len() {
            let mut out = Vec::new();
            assert!(!dns.answer_fast(&good[..n], src().ip(), &mut out), "{n} bytes answered");
            let _ = answer_full(&dns, &good[..n], src()).await;
        }
    }

    /// Random corruptions of good queries: the fast path never panics, and
    /// whatever it answers, the full handler answers the same.
    #[tokio::test]
    async fn corrupted_queries_are_answered_fast_only_as_the_full_handler_would() {
        let (_dir, dns) = dns();
        let seeds = [
            query("shop.cdn.test.", RecordType::A, Some((1232, true, Some(("81.2.69.0", 24))))),
            query("shop.cdn.test.", RecordType::AAAA, Some((1232, false, Some(("2001:218::", 32))))),
            query("shop.cdn.test.", RecordType::A, None),
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut fast_answers, mut tried) = (0, 0);
        for round in 0..6000 {
            let mut q = seeds[round % seeds.len()].clone();
            for _ in 0..=(next() % 3) {
                let at = (next() as usize) % q.len();
                q[at] ^= 1 << (next() % 8);
            }
            tried += 1;
            let (fast, full) = both(&dns, &q).await;
            if let Some(fast) = fast {
                fast_answers += 1;
                let (a, b) = (seen(&fast), seen(&full.expect("the full handler answers what the fast path does")));
                // The rotation and the id aside, the same answer.
                assert_eq!(
                    (a.rcode, &a.question, a.answers.len(), &a.edns),
                    (b.rcode, &b.question, b.answers.len(), &b.edns),
                    "{q:02x?}"
                );
            }
        }
        assert!(fast_answers > 0 && fast_answers < tried, "{fast_answers} of {tried} answered fast");
    }
}
