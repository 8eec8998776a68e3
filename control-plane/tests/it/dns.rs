use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use outpost_config::NodeConfig;
use outpost_control::dns::{DnsNode, build_database};
use outpost_testkit::eventually;
use tokio_util::sync::CancellationToken;

const SOURCE: &str = r#"
[[network]]
network = "81.2.69.0/24"
country = "GB"
continent = "EU"
latitude = 51.51
longitude = -0.09

[[network]]
network = "8.8.8.0/24"
country = "US"
continent = "NA"
latitude = 37.39
longitude = -122.08

[[network]]
network = "202.12.0.0/16"
country = "JP"
continent = "AS"
latitude = 35.69
longitude = 139.69

[[network]]
network = "5.10.0.0/16"
country = "DE"
continent = "EU"

[[network]]
network = "41.0.0.0/16"
continent = "AF"
"#;

struct Running {
    addr: SocketAddr,
    node: std::sync::Arc<outpost_control::dns::GeoDns>,
    _stop: tokio_util::sync::DropGuard,
}

fn node_file(dir: &Path, extra_edges: usize) -> NodeConfig {
    node_file_with(dir, extra_edges, "")
}

fn node_file_with(dir: &Path, extra_edges: usize, extra: &str) -> NodeConfig {
    let mut iad = vec!["\"127.0.0.12\"".to_string()];
    for i in 0..extra_edges {
        iad.push(format!("\"10.9.{}.{}\"", i / 250, i % 250 + 1));
    }
    let text = format!(
        r#"
[node]
name = "dns-test"
role = "dns"
[listen]
dns = "127.0.0.1:0"
[dns]
zone = "cdn.test."
ttl = "20s"
geoip = "geo.mmdb"
default_pop = "fra"
sites = ["shop"]
nameservers = ["ns1.cdn.test.", "ns.example.net."]
[[dns.pop]]
name = "fra"
latitude = 50.11
longitude = 8.68
edges = ["127.0.0.11", "::11"]
networks = ["127.0.0.16/28"]
[[dns.pop]]
name = "iad"
latitude = 38.95
longitude = -77.45
edges = [{}]
[[dns.pop]]
name = "sin"
latitude = 1.35
longitude = 103.99
edges = ["127.0.0.13", "127.0.0.14"]
[dns.countries]
DE = "sin"
[dns.continents]
AF = "iad"
{extra}
"#,
        iad.join(", ")
    );
    let file = dir.join("dns.toml");
    std::fs::write(&file, text).unwrap();
    // The database the file names is there before it is loaded, as a
    // node's files are checked then.
    std::fs::write(dir.join("geo.toml"), SOURCE).unwrap();
    build_database(&dir.join("geo.toml"), &dir.join("geo.mmdb")).unwrap();
    NodeConfig::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

async fn start(dir: &Path, extra_edges: usize) -> Running {
    start_from(dir, node_file(dir, extra_edges)).await
}

async fn start_from(_dir: &Path, cfg: NodeConfig) -> Running {
    let bound = DnsNode::bind(&cfg).await.unwrap();
    let addr = bound.addr();
    let node = std::sync::Arc::clone(&bound.handler);
    let stop = CancellationToken::new();
    tokio::spawn(bound.run(stop.clone()));
    Running { addr, node, _stop: stop.drop_guard() }
}

fn query(name: &str, rtype: RecordType, subnet: Option<(&str, u8)>, edns: bool) -> Vec<u8> {
    let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns || subnet.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        if let Some((ip, prefix)) = subnet {
            e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(ip.parse().unwrap(), prefix, 0)));
        }
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp(addr: SocketAddr, packet: Vec<u8>) -> Option<Message> {
    udp_bytes(addr, packet).await.map(|b| Message::from_vec(&b).unwrap())
}

/// How long a query waits for its answer: what a loaded machine can take.
const UDP_WAIT: Duration = Duration::from_secs(3);

/// The datagram that answers `packet`, as it came.
async fn udp_bytes(addr: SocketAddr, packet: Vec<u8>) -> Option<Vec<u8>> {
    udp_within(addr, packet, UDP_WAIT).await
}

/// The datagram that answers `packet` within `wait`.
async fn udp_within(addr: SocketAddr, packet: Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        s.send_to(&packet, addr).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
    .await
    .unwrap()
}

/// An OPT record as a client writes it.
struct Opt {
    payload: u16,
    version: u8,
    dnssec_ok: bool,
    options: Vec<(u16, Vec<u8>)>,
}

impl Opt {
    fn with(options: Vec<(u16, Vec<u8>)>) -> Opt {
        Opt { payload: 1232, version: 0, dnssec_ok: false, options }
    }
}

/// A query written byte by byte, so it can say what a library would not.
fn raw_query(name: &str, qtype: u16, qclass: u16, opt: Option<Opt>) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())];
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend(label.as_bytes());
    }
    p.push(0);
    p.extend(qtype.to_be_bytes());
    p.extend(qclass.to_be_bytes());
    if let Some(o) = opt {
        p.push(0);
        p.extend(41u16.to_be_bytes());
        p.extend(o.payload.to_be_bytes());
        p.extend([0, o.version]);
        p.extend(if o.dnssec_ok { 0x8000u16 } else { 0 }.to_be_bytes());
        let mut data = Vec::new();
        for (code, d) in &o.options {
            data.extend(code.to_be_bytes());
            data.extend((d.len() as u16).to_be_bytes());
            data.extend(d);
        }
        p.extend((data.len() as u16).to_be_bytes());
        p.extend(data);
    }
    p
}

/// An EDNS Client Subnet option with exactly these address octets.
fn ecs(family: u16, source: u8, address: &[u8]) -> (u16, Vec<u8>) {
    (8, [&family.to_be_bytes()[..], &[source, 0], address].concat())
}

async fn tcp(addr: SocketAddr, packet: Vec<u8>) -> Message {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        over_tcp(&mut s, &packet)
    })
    .await
    .unwrap()
}

/// One query and its answer on an open TCP connection.
fn over_tcp(s: &mut TcpStream, packet: &[u8]) -> Message {
    s.write_all(&(packet.len() as u16).to_be_bytes()).unwrap();
    s.write_all(packet).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addrs(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn scope(m: &Message) -> Option<u8> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some(s.scope_prefix()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_steered_to_the_nearest_pop() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    for (subnet, prefix, want, want_scope) in [
        ("81.2.69.0", 24, vec![ip("127.0.0.11")], 24), // London → Frankfurt
        ("8.8.8.0", 24, vec![ip("127.0.0.12")], 24),   // Mountain View → Ashburn
        ("202.12.27.0", 24, vec![ip("127.0.0.13"), ip("127.0.0.14")], 16), // Tokyo → Singapore
    ] {
        let m = udp(dns.addr, query("shop.cdn.test.", RecordType::A, Some((subnet, prefix)), true)).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative, "AA is set");
        let mut got = addrs(&m);
        got.sort();
        assert_eq!(got, want, "{subnet}");
        assert_eq!(scope(&m), Some(want_scope), "{subnet}: the scope is the database network's");
        assert!(m.answers.iter().all(|r| r.ttl == 20));
    }
    // Several edges in a PoP are rotated between answers.
    let first = |m: Message| addrs(&m)[0];
    let a =
        first(udp(dns.addr, query("shop.cdn.test.", RecordType::A, Some(("202.12.27.0", 24)), true)).await.unwrap());
    let b =
        first(udp(dns.addr, query("shop.cdn.test.", RecordType::A, Some(("202.12.27.0", 24)), true)).await.unwrap());
    assert_ne!(a, b);
    // AAAA from the same PoP; the apex answers too.
    let m = udp(dns.addr, query("shop.cdn.test.", RecordType::AAAA, Some(("81.2.69.0", 24)), true)).await.unwrap();
    assert_eq!(addrs(&m), vec![ip("::11")]);
    let m = udp(dns.addr, query("cdn.test.", RecordType::A, Some(("81.2.69.0", 24)), true)).await.unwrap();
    assert_eq!(addrs(&m), vec![ip("127.0.0.11")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_country_continent_default() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let pop = |m: Message| addrs(&m)[0];
    let ask = |s: &'static str| query("shop.cdn.test.", RecordType::A, Some((s, 24)), true);
    assert_eq!(
        pop(udp(dns.addr, ask("5.10.1.0")).await.unwrap()),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 13)),
        "DE → sin by country"
    );
    assert_eq!(
        pop(udp(dns.addr, ask("41.0.1.0")).await.unwrap()),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12)),
        "AF → iad by continent"
    );
    let unknown = udp(dns.addr, ask("100.64.1.0")).await.unwrap();
    assert_eq!(pop(unknown.clone()), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), "unknown → default");
    assert_eq!(scope(&unknown), Some(24), "no record: the scope is the client's prefix");
    assert_eq!(
        pop(udp(dns.addr, ask("10.1.2.0")).await.unwrap()),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)),
        "private → default"
    );
    // No ECS: the packet's source (127.0.0.1, private) decides: the default PoP.
    let m = udp(dns.addr, query("shop.cdn.test.", RecordType::A, None, false)).await.unwrap();
    assert_eq!(pop(m), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_answers_nxdomain_refused_soa_ns_over_udp_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let m = udp(dns.addr, query("nope.cdn.test.", RecordType::A, None, false)).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "negative answers carry the SOA");
    let m = udp(dns.addr, query("a.b.cdn.test.", RecordType::A, None, false)).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = udp(dns.addr, query("example.org.", RecordType::A, None, false)).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    let m = tcp(dns.addr, query("cdn.test.", RecordType::SOA, None, false)).await;
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = tcp(dns.addr, query("cdn.test.", RecordType::NS, None, false)).await;
    assert_eq!(m.answers[0].record_type(), RecordType::NS);
    let m = tcp(dns.addr, query("SHOP.cdn.test.", RecordType::TXT, None, false)).await;
    assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0), "NODATA");
    let m = tcp(dns.addr, query("shop.cdn.test.", RecordType::A, Some(("8.8.8.0", 24)), true)).await;
    assert_eq!(addrs(&m), vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))]);
    // The same client asking for IPv6 goes to the nearest PoP that has an
    // IPv6 edge (Ashburn has none), over either path.
    let m = udp(dns.addr, query("shop.cdn.test.", RecordType::AAAA, Some(("8.8.8.0", 24)), true)).await.unwrap();
    assert_eq!(addrs(&m), vec!["::11".parse::<IpAddr>().unwrap()]);
    let m = tcp(dns.addr, query("shop.cdn.test.", RecordType::AAAA, Some(("8.8.8.0", 24)), true)).await;
    assert_eq!(addrs(&m), vec!["::11".parse::<IpAddr>().unwrap()]);
    // A literal `*` is no name of the zone (RFC 4592), not its apex.
    for rtype in [RecordType::A, RecordType::SOA] {
        let m = udp(dns.addr, query("*.cdn.test.", rtype, None, false)).await.unwrap();
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NXDomain, 0), "{rtype}");
    }
}

/// Clients that hold TCP connections open are capped per network (64):
/// past it a new connection is closed at once, the held ones are still
/// answered, and a place given back is taken again. Several queries go
/// over one connection, answered in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_capped_per_network_and_each_answers_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let addr = dns.addr;
    tokio::task::spawn_blocking(move || {
        let packet = query("shop.cdn.test.", RecordType::A, Some(("8.8.8.0", 24)), true);
        let ask = |s: &mut TcpStream| addrs(&over_tcp(s, &packet));
        let open = || {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s
        };
        let mut held: Vec<TcpStream> = (0..64).map(|_| open()).collect();
        // Each held connection has its place once it has been answered.
        for s in &mut held {
            assert_eq!(ask(s), [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))]);
        }
        let mut over = open();
        let mut byte = [0u8; 1];
        let closed = over.read(&mut byte);
        assert!(matches!(closed, Ok(0)), "the 65th connection is closed at once: {closed:?}");
        assert_eq!(ask(&mut held[7]), [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))], "a held one still answers");
        // The place is given back once the server has seen the close.
        drop(held.pop());
        let given_back = std::time::Instant::now();
        let mut again = loop {
            let mut s = open();
            // Written into a connection closed at once, the query finds
            // no answer: an end of stream, or a reset.
            let sent = s.write_all(&(packet.len() as u16).to_be_bytes()).and_then(|_| s.write_all(&packet));
            if sent.is_ok() && matches!(s.peek(&mut byte), Ok(n) if n > 0) {
                break s;
            }
            assert!(given_back.elapsed() < Duration::from_secs(10), "the place given back was never taken");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut len = [0u8; 2];
        again.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        again.read_exact(&mut buf).unwrap();
        assert_eq!(
            addrs(&Message::from_vec(&buf).unwrap()),
            [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))],
            "a place given back is taken"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_pop_is_skipped_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let london = || query("shop.cdn.test.", RecordType::A, Some(("81.2.69.0", 24)), true);
    dns.node.steering.set_edges("fra", vec![], vec![]);
    let m = udp(dns.addr, london()).await.unwrap();
    assert_eq!(addrs(&m), vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))], "next nearest to London: Ashburn");
    dns.node.steering.set_edges("fra", vec!["127.0.0.11".parse().unwrap()], vec![]);
    let m = udp(dns.addr, london()).await.unwrap();
    assert_eq!(addrs(&m), vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 100).await;
    let m = udp(dns.addr, query("shop.cdn.test.", RecordType::A, Some(("8.8.8.0", 24)), false)).await.unwrap();
    assert!(m.metadata.truncation, "101 addresses do not fit 512 bytes");
    let m = tcp(dns.addr, query("shop.cdn.test.", RecordType::A, Some(("8.8.8.0", 24)), false)).await;
    assert_eq!(addrs(&m).len(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_do_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    for junk in
        [vec![0u8; 3], vec![0xff; 12], vec![0x12, 0x34, 0x01, 0x00, 0, 5, 0, 0, 0, 0, 0, 0, 1, 2], vec![7u8; 4000]]
    {
        // Answered with FORMERR, or not at all.
        if let Some(b) = udp_within(dns.addr, junk, Duration::from_millis(700)).await {
            assert_eq!(Message::from_vec(&b).unwrap().metadata.response_code, ResponseCode::FormErr);
        }
    }
    let m = udp(dns.addr, query("shop.cdn.test.", RecordType::A, Some(("8.8.8.0", 24)), true)).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "still answering");
}

/// Spoofed queries make the server answer a victim at many times their
/// size: past `rate_limit` answers a second to one client network for one
/// name and type, answers are dropped, every second one sent truncated
/// (TC, no records) so a real resolver asks again over TCP, which is never
/// limited. Another network, and another name, have counts of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_network_is_answered_at_the_rate_limit_and_truncated_past_it() {
    const SENT: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    node_file(dir.path(), 0);
    let file = dir.path().join("dns.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace("[dns]\n", "[dns]\nrate_limit = 10\n");
    std::fs::write(&file, text).unwrap();
    let dns = start_from(dir.path(), NodeConfig::load(&file).unwrap()).await;
    let addr = dns.addr;
    let ask = || query("shop.cdn.test.", RecordType::A, Some(("8.8.8.0", 24)), true);
    let packet = ask();
    let replies = tokio::task::spawn_blocking(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..SENT {
            s.send_to(&packet, addr).unwrap();
        }
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut replies = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = s.recv_from(&mut buf) {
            replies.push(Message::from_vec(&buf[..n]).unwrap());
        }
        replies
    })
    .await
    .unwrap();
    let full = replies.iter().filter(|m| !m.metadata.truncation).count();
    let truncated: Vec<&Message> = replies.iter().filter(|m| m.metadata.truncation).collect();
    // Ten a second: the flood may straddle the turn of a second (or two,
    // on a machine that stalls).
    assert!((10..=30).contains(&full), "{full} full answers of {SENT}");
    let past = (SENT - full) / 2;
    assert!(
        (past - 2..=past + 2).contains(&truncated.len()),
        "every second answer past the limit truncated: {} of {SENT}, {full} full",
        truncated.len()
    );
    for m in &truncated {
        assert_eq!((m.metadata.id, m.answers.len(), m.queries.len()), (4242, 0, 1), "{m:?}");
        assert_eq!(m.queries[0].name().to_ascii(), "shop.cdn.test.");
    }
    assert!(
        replies
            .iter()
            .filter(|m| !m.metadata.truncation)
            .all(|m| addrs(m) == [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))])
    );
    // Over TCP the same client is answered in full.
    assert_eq!(addrs(&tcp(addr, ask()).await), [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))]);
    // Another name from the same network, and the same name from another
    // network (127.0.1.0/24), have counts of their own.
    let m = udp(addr, query("cdn.test.", RecordType::SOA, None, false)).await.unwrap();
    assert!(!m.metadata.truncation && m.answers.len() == 1, "{m:?}");
    let packet = ask();
    let m = tokio::task::spawn_blocking(move || {
        let s = UdpSocket::bind("127.0.1.1:0").unwrap();
        s.set_read_timeout(Some(UDP_WAIT)).unwrap();
        s.send_to(&packet, addr).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = s.recv_from(&mut buf).expect("an answer to another network");
        Message::from_vec(&buf[..n]).unwrap()
    })
    .await
    .unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m), [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_reloads_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let ask = || query("shop.cdn.test.", RecordType::A, Some(("81.2.69.0", 24)), true);
    assert_eq!(addrs(&udp(dns.addr, ask()).await.unwrap()), vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11))]);
    // London moves to Singapore in the new file.
    let moved = SOURCE.replacen("latitude = 51.51\nlongitude = -0.09", "latitude = 1.3\nlongitude = 103.8", 1);
    std::fs::write(dir.path().join("moved.toml"), moved).unwrap();
    build_database(&dir.path().join("moved.toml"), &dir.path().join("new.mmdb")).unwrap();
    std::fs::rename(dir.path().join("new.mmdb"), dir.path().join("geo.mmdb")).unwrap();
    // The server notices the new file within its check interval.
    let in_sin = |got: &Vec<IpAddr>| got.iter().any(|a| ["127.0.0.13", "127.0.0.14"].contains(&a.to_string().as_str()));
    let mut moved_ok = false;
    for _ in 0..100 {
        if in_sin(&addrs(&udp(dns.addr, ask()).await.unwrap())) {
            moved_ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(moved_ok, "the new database went into service");
    // A corrupt replacement is refused and the old database stays.
    let probe = outpost_control::dns::GeoDb::open(&dir.path().join("geo.mmdb")).unwrap();
    std::fs::write(dir.path().join("geo.mmdb"), b"not a maxmind file").unwrap();
    assert!(probe.reload_if_changed().is_err(), "a corrupt file is refused");
    assert!(probe.locate("81.2.69.1".parse().unwrap()).is_some(), "the old one answers");
    assert!(in_sin(&addrs(&udp(dns.addr, ask()).await.unwrap())), "the server keeps answering from the good file");
    // At start, a missing or corrupt file is an error that names it (one
    // broken after the node file was read).
    let cfg = node_file(dir.path(), 0);
    std::fs::write(dir.path().join("geo.mmdb"), b"not a maxmind file").unwrap();
    let err = DnsNode::bind(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("geo.mmdb"), "{err}");
    std::fs::remove_file(dir.path().join("geo.mmdb")).unwrap();
    assert!(DnsNode::bind(&cfg).await.unwrap_err().to_string().contains("geo.mmdb"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hickory_resolver_gets_answers_over_udp_and_tcp() {
    use hickory_resolver::TokioResolver;
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    for mut server in [NameServerConfig::udp(dns.addr.ip()), NameServerConfig::tcp(dns.addr.ip())] {
        for c in &mut server.connections {
            c.port = dns.addr.port();
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![server]);
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build().unwrap();
        let ips: Vec<IpAddr> = resolver.lookup_ip("shop.cdn.test.").await.unwrap().iter().collect();
        // The resolver asks from 127.0.0.1 without ECS: the default PoP.
        assert!(ips.contains(&IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11))), "{ips:?}");
        let nx = resolver.lookup_ip("missing.cdn.test.").await;
        assert!(nx.is_err(), "NXDOMAIN reaches the resolver as an error");
    }
}

#[test]
fn the_committed_sample_database_is_current_and_places_the_sample_networks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/geoip");
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = dir.path().join("sample.mmdb");
    build_database(&root.join("sample.toml"), &rebuilt).unwrap();
    assert_eq!(
        std::fs::read(&rebuilt).unwrap(),
        std::fs::read(root.join("sample.mmdb")).unwrap(),
        "config/geoip/sample.mmdb is stale: rebuild it with the command in README.md"
    );
    let db = outpost_control::dns::GeoDb::open(&root.join("sample.mmdb")).unwrap();
    for (ip, country, (lat, lon)) in [
        ("81.2.69.1", "GB", (51.51, -0.09)),
        ("8.8.8.8", "US", (37.39, -122.08)),
        ("202.12.27.33", "JP", (35.69, 139.69)),
        ("1.0.0.1", "AU", (-33.87, 151.21)),
    ] {
        let place = db.locate(ip.parse().unwrap()).unwrap();
        assert_eq!(place.country.unwrap().as_str(), country);
        let (la, lo) = place.location.unwrap();
        assert!((la - lat).abs() < 0.1 && (lo - lon).abs() < 0.1, "{ip}: {la},{lo}");
        assert_eq!(place.prefix, 24);
    }
    for (ip, country) in [("2a02:c7c::1", "GB"), ("2001:4860:4860::8888", "US"), ("2001:218:1::1", "JP")] {
        let place = db.locate(ip.parse().unwrap()).unwrap();
        assert_eq!((place.country.unwrap().as_str(), place.prefix), (country, 32), "{ip}");
    }
}

fn registry_poll() -> Duration {
    outpost_control::dns::registry::POLL
}

/// The status of a GET with the node token.
async fn status_of(url: &str, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    outpost_testkit::get(url, &[("authorization", &bearer)]).await.status.as_u16()
}

/// Holds an edge's event stream open, as a live edge does, acknowledging
/// what it reads when `acks` (a node that does not is missed after
/// `SILENT_AFTER`): the registry counts it connected until the stream is
/// dropped.
async fn hold_stream(
    control: SocketAddr,
    token: &str,
    (name, pop, addr): (&str, &str, &str),
    acks: bool,
) -> tokio::task::JoinHandle<()> {
    use outpost_net::control::{ControlClient, Token};
    let tls = std::sync::Arc::new(plain_tls());
    let client = ControlClient::new(&[format!("http://{control}")], Token::Value(token.into()), tls);
    let query = outpost_config::api::StreamQuery {
        after: 0,
        node: name.into(),
        role: outpost_config::Role::Edge,
        pop: Some(pop.into()),
        addrs: addr.into(),
        certificates: false,
    };
    let mut stream = client.events(&query).await.unwrap();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {
            if acks {
                let ack = outpost_config::Ack {
                    node: name.clone(),
                    seq: 0,
                    load_rps: None,
                    hit_permille: None,
                    problems: None,
                };
                let _ = client.ack(&ack).await;
            }
        }
    })
}

/// TLS settings that trust nothing: the control plane here is plain HTTP.
fn plain_tls() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A control plane on a redb file in `d`: its address, node token, and
/// what stops it.
async fn start_control(d: &Path) -> (SocketAddr, String, tokio_util::sync::DropGuard) {
    std::fs::write(
        d.join("control.toml"),
        "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
         [store]\npath = \"control.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n",
    )
    .unwrap();
    let cfg = NodeConfig::load(&d.join("control.toml")).unwrap();
    let control = outpost_control::node::ControlNode::bind(&cfg).await.unwrap();
    let control_addr = control.addr();
    let stop = CancellationToken::new();
    tokio::spawn(control.run(stop.clone()));
    let token = std::fs::read_to_string(d.join("node.token")).unwrap();
    (control_addr, token, stop.drop_guard())
}

/// A link that dies without a FIN leaves a stream open; the control plane
/// closes the stream of a node it no longer hears from, and keeps the one
/// of a node that acknowledges its heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fallen_silent_loses_its_stream_and_one_that_acknowledges_keeps_it() {
    use outpost_config::api::{DEAD_AFTER, HEARTBEAT};
    use outpost_net::control::{ControlClient, Token};
    let dir = tempfile::tempdir().unwrap();
    let (control, token, _stop) = start_control(dir.path()).await;
    // Reads its stream and never acknowledges: silent, as seen from the
    // control plane, from the moment it registers (measured from before).
    let started = std::time::Instant::now();
    let silent = hold_stream(control, &token, ("edge-silent", "fra", "127.0.0.11:8080"), false).await;
    let client = ControlClient::new(&[format!("http://{control}")], Token::Value(token.clone()), plain_tls().into());
    let query = outpost_config::api::StreamQuery {
        after: 0,
        node: "edge-chatty".into(),
        role: outpost_config::Role::Edge,
        pop: Some("fra".into()),
        addrs: "127.0.0.12:8080".into(),
        certificates: false,
    };
    let mut stream = client.events(&query).await.unwrap();
    let chatty = tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {
            let ack = outpost_config::Ack {
                node: "edge-chatty".into(),
                seq: 0,
                load_rps: None,
                hit_permille: None,
                problems: None,
            };
            client.ack(&ack).await.unwrap();
        }
    });
    let limit = DEAD_AFTER + 2 * HEARTBEAT + Duration::from_secs(1);
    tokio::time::timeout(limit, silent).await.expect("the silent node's stream stays open").unwrap();
    let closed = started.elapsed();
    assert!(closed >= DEAD_AFTER, "closed after {closed:?}, before the node could have been missed");
    assert!(!chatty.is_finished(), "the stream of a node that acknowledges was closed");
    chatty.abort();
}

/// A site created through the control plane is answered under the zone
/// without touching the DNS node's file, and one deleted there is
/// NXDOMAIN again; the file's own sites are answered throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_created_and_deleted_through_the_control_plane_are_answered_and_withdrawn() {
    use outpost_net::control::{ControlClient, Token};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (control_addr, _token, _stop) = start_control(d).await;
    let link = format!("[control]\nurl = \"http://{control_addr}\"\ntoken_file = \"node.token\"\n");
    let dns = start_from(d, node_file_with(d, 0, &link)).await;
    let rcode = |name: &'static str| async move {
        let q = query(name, RecordType::A, Some(("81.2.69.0", 24)), true);
        let m = udp(dns.addr, q).await.unwrap();
        (m.metadata.response_code, addrs(&m).len())
    };
    let wait_for = |name: &'static str, want: ResponseCode| async move {
        eventually(&format!("{name} answered {want:?}"), || async { rcode(name).await.0 == want }).await;
    };
    assert_eq!(rcode("blog.cdn.test.").await.0, ResponseCode::NXDomain);

    let admin = std::fs::read_to_string(d.join("admin.token")).unwrap();
    let api = ControlClient::new(&[format!("http://{control_addr}")], Token::Value(admin), plain_tls().into());
    let blog = "[site]\nid = \"blog\"\nhosts = [\"blog.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:9\"\n";
    api.push_site(blog).await.unwrap();
    wait_for("BLOG.cdn.test.", ResponseCode::NoError).await;
    assert!(rcode("blog.cdn.test.").await.1 > 0, "the created site is answered with edges");

    api.delete_site("blog").await.unwrap();
    wait_for("blog.cdn.test.", ResponseCode::NXDomain).await;
    let (shop, edges) = rcode("shop.cdn.test.").await;
    assert_eq!((shop, edges > 0), (ResponseCode::NoError, true), "the node file's site stays answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_the_node_registry_when_edges_die_and_return() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (control_addr, token, _stop) = start_control(d).await;

    let link = format!("[control]\nurl = \"http://{control_addr}\"\ntoken_file = \"node.token\"\n");
    let dns = start_from(d, node_file_with(d, 0, &link)).await;
    let london = || query("shop.cdn.test.", RecordType::A, Some(("81.2.69.0", 24)), true);
    let answer = || async { addrs(&udp(dns.addr, london()).await.unwrap()) };
    let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
    let within = |what: &'static str, want: Vec<IpAddr>| {
        let answer = &answer;
        async move {
            let started = std::time::Instant::now();
            loop {
                let got = answer().await;
                if got == want {
                    return started.elapsed();
                }
                assert!(started.elapsed() < Duration::from_secs(5), "{what}: still answering {got:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // Until the registry lists Frankfurt, its static edge is answered.
    assert_eq!(answer().await, ip("127.0.0.11"));
    let fra = hold_stream(control_addr, &token, ("edge-fra", "fra", "127.0.0.31:8080"), true).await;
    within("the registered edge replaces the static one", ip("127.0.0.31")).await;

    // A node token is not enough to steer clients: an address outside the
    // PoP's edges and networks is never answered, and one that is no
    // address is refused at registration.
    let _evil = hold_stream(control_addr, &token, ("edge-evil", "fra", "6.6.6.6:80"), true).await;
    tokio::time::sleep(registry_poll() * 2).await;
    assert_eq!(answer().await, ip("127.0.0.31"), "the registered outsider is not answered");
    // What the DNS node's /metrics says of each registered edge.
    let answerable = |edge: &str, v: u8| {
        let line = format!("outpost_dns_answerable{{node=\"dns-test\",pop=\"fra\",edge=\"{edge}\"}} {v}\n");
        dns.node.answerable_text().contains(&line)
    };
    assert!(answerable("edge-fra", 1) && answerable("edge-evil", 0), "{}", dns.node.answerable_text());
    for bad in ["%3Cscript%3E", "not-an-address", "127.0.0.1"] {
        let url = format!("http://{control_addr}/v1/events?after=0&node=edge-x&role=edge&pop=fra&addrs={bad}");
        let r = status_of(&url, &token).await;
        assert_eq!(r, 400, "{bad}");
    }

    // The edge dies: its stream closes, and London goes to the next PoP
    // (Ashburn, which the registry never listed, so its static edge).
    fra.abort();
    let gone = within("a dead edge leaves the answers", ip("127.0.0.12")).await;
    assert!(gone < Duration::from_secs(3), "withdrawn in {gone:?}, the TTL is 20 s");
    outpost_testkit::eventually("the dead edge no longer answerable", || async { answerable("edge-fra", 0) }).await;

    let _fra = hold_stream(control_addr, &token, ("edge-fra", "fra", "127.0.0.31:8080"), true).await;
    within("a returning edge is answered again", ip("127.0.0.31")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_payload_version_do_bit_and_truncation_follow_rfc_6891() {
    let dir = tempfile::tempdir().unwrap();
    // 41 addresses for a client in the US: about 700 bytes.
    let dns = start(dir.path(), 40).await;
    let subnet = || vec![ecs(1, 24, &[8, 8, 8])];
    // A client that takes 512 bytes gets at most that: truncated, and still
    // with the OPT record and its client subnet.
    let small = Opt { payload: 512, ..Opt::with(subnet()) };
    let bytes = udp_bytes(dns.addr, raw_query("shop.cdn.test.", 1, 1, Some(small))).await.unwrap();
    assert!(bytes.len() <= 512, "{} bytes for a client that takes 512", bytes.len());
    let m = Message::from_vec(&bytes).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some(), "a truncated answer to an EDNS query keeps its OPT");
    assert!(scope(&m).is_some(), "and the client subnet in it");
    // One that takes 1232 gets the whole answer.
    let m = udp(dns.addr, raw_query("shop.cdn.test.", 1, 1, Some(Opt::with(subnet())))).await.unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(addrs(&m).len(), 41);
    // Without EDNS: 512 bytes, truncated.
    let bytes = udp_bytes(dns.addr, raw_query("shop.cdn.test.", 1, 1, None)).await.unwrap();
    assert!(bytes.len() <= 512);
    // EDNS version 1: BADVERS, with our version (0) in the OPT, no answer.
    let v1 = Opt { version: 1, ..Opt::with(subnet()) };
    let m = udp(dns.addr, raw_query("shop.cdn.test.", 1, 1, Some(v1))).await.unwrap();
    // 16 is both BADVERS and BADSIG; a parser cannot tell which is meant.
    assert_eq!(u16::from(m.metadata.response_code), 16, "{:?}", m.metadata.response_code);
    assert_eq!(m.edns.as_ref().map(Edns::version), Some(0));
    assert!(m.answers.is_empty());
    // The DO bit comes back as it was sent.
    for dnssec_ok in [true, false] {
        let opt = Opt { dnssec_ok, ..Opt::with(Vec::new()) };
        let m = udp(dns.addr, raw_query("shop.cdn.test.", 1, 1, Some(opt))).await.unwrap();
        assert_eq!(m.edns.as_ref().map(|e| e.flags().dnssec_ok), Some(dnssec_ok));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_classes_transfers_and_malformed_client_subnets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let code = |m: &Message| (m.metadata.response_code, m.metadata.authoritative, m.answers.len());
    // CHAOS and Hesiod: not served, and not answered as if they were IN.
    for class in [3, 4] {
        let m = udp(dns.addr, raw_query("shop.cdn.test.", 1, class, None)).await.unwrap();
        assert_eq!(code(&m), (ResponseCode::Refused, false, 0), "class {class}");
    }
    // Zone transfers are not offered, over either transport.
    let m = tcp(dns.addr, raw_query("cdn.test.", 252, 1, None)).await;
    assert_eq!(code(&m), (ResponseCode::Refused, false, 0), "AXFR");
    let m = udp(dns.addr, raw_query("cdn.test.", 251, 1, None)).await.unwrap();
    assert_eq!(code(&m), (ResponseCode::Refused, false, 0), "IXFR");
    // RFC 7871 §6: the address has exactly the octets the prefix needs,
    // and nothing set past the prefix; a family we do not know is refused.
    let ask = |option| raw_query("shop.cdn.test.", 1, 1, Some(Opt::with(vec![option])));
    let m = udp(dns.addr, ask(ecs(1, 24, &[81, 2, 69]))).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "well formed");
    for (what, option) in [
        ("an octet too many", ecs(1, 24, &[81, 2, 69, 0])),
        ("an octet too few", ecs(1, 24, &[81, 2])),
        ("bits past the prefix", ecs(1, 20, &[81, 2, 69])),
        ("a prefix longer than the family", ecs(1, 33, &[81, 2, 69, 1, 0])),
        ("an unknown family", ecs(3, 8, &[81])),
    ] {
        let m = udp(dns.addr, ask(option)).await.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr, "{what}");
        assert!(m.answers.is_empty(), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_database_whose_data_section_is_corrupt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let ask = || query("shop.cdn.test.", RecordType::A, Some(("81.2.69.0", 24)), true);
    let fra = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11))];
    assert_eq!(addrs(&udp(dns.addr, ask()).await.unwrap()), fra);
    // A new file whose search tree is intact and whose data section is not:
    // every address still finds its record, and no record decodes.
    let moved = SOURCE.replacen("latitude = 51.51\nlongitude = -0.09", "latitude = 1.3\nlongitude = 103.8", 1);
    std::fs::write(dir.path().join("moved.toml"), moved).unwrap();
    build_database(&dir.path().join("moved.toml"), &dir.path().join("new.mmdb")).unwrap();
    let mut bytes = std::fs::read(dir.path().join("new.mmdb")).unwrap();
    let meta = maxminddb::Reader::from_source(bytes.clone()).unwrap().metadata().clone();
    let data_start = meta.node_count as usize * usize::from(meta.record_size) / 4 + 16;
    let marker: &[u8] = b"\xab\xcd\xefMaxMind.com";
    let data_end = bytes.windows(marker.len()).rposition(|w| w == marker).unwrap();
    bytes[data_start..data_end].fill(0xFF);
    let broken = maxminddb::Reader::from_source(bytes.clone()).unwrap();
    let found = broken.lookup("81.2.69.1".parse().unwrap()).unwrap();
    assert!(found.has_data(), "the search tree still leads to a record");
    assert!(found.decode::<std::collections::BTreeMap<String, String>>().is_err(), "which does not decode");
    std::fs::write(dir.path().join("new.mmdb"), &bytes).unwrap();
    // A database of our own, opened on the good file: the server's check
    // runs on its own clock and may see the replacement first.
    let probe = outpost_control::dns::GeoDb::open(&dir.path().join("geo.mmdb")).unwrap();
    std::fs::rename(dir.path().join("new.mmdb"), dir.path().join("geo.mmdb")).unwrap();
    // Refused, saying why; the old database keeps steering London to fra.
    let err = probe.reload_if_changed().unwrap_err().to_string();
    assert!(err.contains("geo.mmdb") && err.contains("corrupt"), "{err}");
    assert!(probe.locate("81.2.69.1".parse().unwrap()).is_some(), "the old one answers");
    tokio::time::sleep(outpost_control::dns::RELOAD_CHECK * 2).await;
    assert_eq!(addrs(&udp(dns.addr, ask()).await.unwrap()), fra, "the old database stays in service");
    assert!(dns.node.geo.locate("81.2.69.1".parse().unwrap()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zones_own_name_servers_resolve_and_come_as_glue() {
    let dir = tempfile::tempdir().unwrap();
    let glue = "[dns.glue]\n\"ns1.cdn.test.\" = [\"192.0.2.53\", \"2001:db8::53\"]\n";
    let dns = start_from(dir.path(), node_file_with(dir.path(), 0, glue)).await;
    let m = udp(dns.addr, query("ns1.cdn.test.", RecordType::A, None, false)).await.unwrap();
    assert_eq!((m.metadata.response_code, m.metadata.authoritative), (ResponseCode::NoError, true));
    assert_eq!(addrs(&m), vec!["192.0.2.53".parse::<IpAddr>().unwrap()]);
    let m = udp(dns.addr, query("NS1.cdn.test.", RecordType::AAAA, None, false)).await.unwrap();
    assert_eq!(addrs(&m), vec!["2001:db8::53".parse::<IpAddr>().unwrap()]);
    let m = udp(dns.addr, query("ns1.cdn.test.", RecordType::TXT, None, false)).await.unwrap();
    assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0), "NODATA");
    // NS at the apex: both servers, and the in-zone one's addresses as glue.
    let m = tcp(dns.addr, query("cdn.test.", RecordType::NS, None, false)).await;
    assert_eq!(m.answers.len(), 2);
    let glue: Vec<IpAddr> = m
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    assert_eq!(glue.len(), 2, "{:?}", m.additionals);
    // A name between the zone and a deeper glue name exists (NODATA), and
    // one beside it does not.
    let deep = tempfile::tempdir().unwrap();
    node_file(deep.path(), 0);
    let file = deep.path().join("dns.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace("\"ns1.cdn.test.\"", "\"ns1.dns.cdn.test.\"");
    std::fs::write(&file, format!("{text}\n[dns.glue]\n\"ns1.dns.cdn.test.\" = [\"192.0.2.54\"]\n")).unwrap();
    let deeper = start_from(deep.path(), NodeConfig::load(&file).unwrap()).await;
    let m = udp(deeper.addr, query("dns.cdn.test.", RecordType::A, None, false)).await.unwrap();
    assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0), "an empty non-terminal");
    let m = udp(deeper.addr, query("ns1.dns.cdn.test.", RecordType::A, None, false)).await.unwrap();
    assert_eq!(addrs(&m), vec!["192.0.2.54".parse::<IpAddr>().unwrap()]);
    let m = udp(deeper.addr, query("other.dns.cdn.test.", RecordType::A, None, false)).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // A name server outside the zone is not ours to answer.
    let m = udp(dns.addr, query("ns.example.net.", RecordType::A, None, false)).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

/// ISC ednscomp-style probes, with dig and kdig (scripts/dns-conformance.sh):
/// two independent clients find the server compliant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_and_kdig_find_the_server_edns_compliant() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), 0).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dns-conformance.sh");
    let port = dns.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .args(["127.0.0.1", &port, "cdn.test.", "shop.cdn.test."])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    println!("dns conformance: {passed} checks passed");
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(passed >= 20, "{stdout}");
}
