//! Node-file tests: every role, defaults, and each kind of mistake.

use std::path::Path;
use std::time::Duration;

use crate::*;

const EDGE: &str = r#"
[node]
name = "edge-1"
role = "edge"
pop = "fra"
latitude = 50.11
longitude = 8.68

[listen]
http = ["127.0.0.1:0"]

[cache]
memory = "64MiB"

[upstream]
mode = "origin"
"#;

fn errors(text: &str) -> Vec<String> {
    match NodeConfig::from_str(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

use std::str::FromStr;

/// Parses and then resolves against the file system: the errors of all three stages.
fn resolve_errors(file: &Path, text: &str) -> Vec<String> {
    match NodeConfig::parse(file, text).and_then(|mut n| n.resolve().map(|()| n)) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_edge_uses_safe_defaults() {
    let node: NodeConfig = EDGE.parse().unwrap();
    assert_eq!(node.role(), Role::Edge);
    assert_eq!(node.name, "edge-1");
    assert_eq!(node.limits, Limits::for_role(Role::Edge));
    assert_eq!(node.limits.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
    let RoleConfig::Edge(edge) = &node.role else { panic!() };
    assert_eq!(edge.proxy.cache, CacheStorage { memory: 64 << 20, disk: 0, path: None, large_bodies: 75 });
    assert_eq!(edge.upstream.mode, UpstreamMode::Origin);
    assert_eq!(edge.proxy.access_log, AccessLog::Stdout);
    assert!(node.control.is_none() && node.listen.admin.is_none());
    let off: NodeConfig = EDGE.replace("longitude = 8.68", "longitude = 8.68\naccess_log = \"off\"").parse().unwrap();
    assert_eq!(off.proxy().unwrap().access_log, AccessLog::Off);
    let file = NodeConfig::parse(
        Path::new("/etc/outpost/edge.toml"),
        &EDGE.replace("longitude = 8.68", "longitude = 8.68\naccess_log = \"logs/a.log\""),
    )
    .unwrap();
    assert_eq!(file.proxy().unwrap().access_log, AccessLog::File("/etc/outpost/logs/a.log".into()));
}

/// A shield's clients are edges, each carrying all its misses over one
/// connection: no cap on the fetches one connection leaves running unless
/// the file sets one; an edge has one.
#[test]
fn fetches_per_connection_defaults_by_role() {
    let edge: NodeConfig = EDGE.parse().unwrap();
    assert_eq!(edge.limits.fetches_per_connection, DEFAULT_FETCHES_PER_CONNECTION);
    let shield_text =
        "[node]\nname = \"s\"\nrole = \"shield\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"64MiB\"\n";
    let shield: NodeConfig = shield_text.parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(edge.limits.fetches_per_network, DEFAULT_FETCHES_PER_NETWORK);
    assert_eq!((shield.limits.fetches_per_connection, shield.limits.fetches_per_network), (0, 0));
    let capped: NodeConfig =
        format!("{shield_text}[limits]\nfetches_per_connection = 64\nfetches_per_network = 128\n").parse().unwrap();
    let l = capped.limits;
    assert_eq!((l.fetches_per_connection, l.fetches_per_network, l.max_headers), (64, 128, DEFAULT_MAX_HEADERS));
}

/// A client network may hold a quarter of the connection places, however
/// many there are; a shield's clients (edges) may share one network.
#[test]
fn connections_per_network_defaults_to_a_quarter_of_the_places() {
    let edge: NodeConfig = EDGE.parse().unwrap();
    assert_eq!(edge.limits.connections_per_network, DEFAULT_MAX_CONNECTIONS / 4);
    let more: NodeConfig = format!("{EDGE}\n[limits]\nmax_connections = 101\n").parse().unwrap();
    assert_eq!(more.limits.connections_per_network, 26);
    let set: NodeConfig =
        format!("{EDGE}\n[limits]\nmax_connections = 101\nconnections_per_network = 0\n").parse().unwrap();
    assert_eq!(set.limits.connections_per_network, 0);
    let shield_text = "[node]\nname = \"s\"\nrole = \"shield\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n[cache]\nmemory = \"64MiB\"\n[limits]\nmax_connections = 100\n";
    let shield: NodeConfig = shield_text.parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shield.limits.connections_per_network, 0);
}

#[test]
fn limits_are_read_and_checked() {
    let node: NodeConfig = format!(
        "{EDGE}\n[limits]\nheader_bytes = \"16KiB\"\nheaders = 50\nbody = \"1MiB\"\nheader_read_timeout = \"5s\"\n\
         idle_timeout = \"30s\"\nsend_timeout = \"20s\"\nbody_read_timeout = \"15s\"\nsend_min_rate = \"4KiB\"\nmax_connections = 100\nlisten_backlog = 512\nshutdown_grace = \"3s\"\nquic_streams = 8\nfetches_per_connection = 64\nfetches_per_network = 256\nconnections_per_network = 30\n"
    )
    .parse()
    .unwrap();
    assert_eq!(
        node.limits,
        Limits {
            max_header_bytes: 16 << 10,
            max_headers: 50,
            max_request_body: 1 << 20,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(20),
            body_read_timeout: Duration::from_secs(15),
            send_min_rate: 4096,
            max_connections: 100,
            listen_backlog: 512,
            shutdown_grace: Duration::from_secs(3),
            quic_streams: 8,
            fetches_per_connection: 64,
            fetches_per_network: 256,
            connections_per_network: 30,
        }
    );
    let e = errors(&format!(
        "{EDGE}\n[limits]\nheader_bytes = \"10MiB\"\nheaders = 0\nidle_timeout = \"0s\"\nsend_min_rate = \"2GiB\"\n"
    ));
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].contains("between 1KiB and 1MiB") && e[1].contains("at least 1") && e[2].contains("longer than zero"));
    assert!(e[3].contains("send_min_rate must be at most 1GiB"), "{e:?}");
    // Values that would panic or exhaust memory later are refused here.
    let e = errors(&format!(
        "{}\n[limits]\nheaders = 4000000000\nsend_timeout = \"10000000000000000000s\"\n",
        EDGE.replace("mode = \"origin\"", "mode = \"origin\"\nprobe_interval = \"0s\"")
    ));
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e.iter().any(|e| e.contains("probe_interval must be longer than zero")), "{e:?}");
    assert!(e.iter().any(|e| e.contains("headers must be at most 10000")), "{e:?}");
    assert!(e.iter().any(|e| e.contains("ten years")), "{e:?}");
}

#[test]
fn a_shield_routed_edge_needs_shields() {
    let text = EDGE.replace("mode = \"origin\"", "mode = \"shield\"\nshields = []");
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("upstream.shields is empty but mode is \"shield\""), "{e:?}");
    let text = EDGE.replace("mode = \"origin\"", "shields = [\"http://127.0.0.1:8101\", \"http://[::1]:8102\"]");
    let node: NodeConfig = text.parse().unwrap();
    let RoleConfig::Edge(edge) = &node.role else { panic!() };
    assert_eq!(edge.upstream.mode, UpstreamMode::Shield, "shield is the default mode");
    assert_eq!(edge.upstream.shields.len(), 2);
    assert_eq!(edge.upstream.shields[1].name, "[::1]:8102", "a shield is named by its address by default");
    // Named shields: edges reaching one shield by different addresses still
    // agree which shield owns a key.
    let text = EDGE.replace(
        "mode = \"origin\"",
        "shields = [{ name = \"shield-1\", url = \"http://10.1.0.5:8101\" }, \"http://127.0.0.1:8102\"]",
    );
    let node: NodeConfig = text.parse().unwrap();
    let RoleConfig::Edge(edge) = &node.role else { panic!() };
    assert_eq!(edge.upstream.shields[0].name, "shield-1");
    assert_eq!(edge.upstream.shields[0].url.to_string(), "http://10.1.0.5:8101/");
    let e = errors(&EDGE.replace("mode = \"origin\"", "shields = [{ url = \"http://10.1.0.5:8101\", nmae = \"x\" }]"));
    assert!(e.iter().any(|m| m.contains("name")), "{e:?}");
}

#[test]
fn disk_path_must_be_writable() {
    let dir = tempfile::tempdir().unwrap();
    let ok = EDGE.replace(
        "memory = \"64MiB\"",
        &format!("memory = \"64MiB\"\ndisk = \"1GiB\"\npath = \"{}\"", dir.path().join("new/sub").display()),
    );
    let mut node: NodeConfig = ok.parse().unwrap();
    node.resolve().unwrap();
    assert_eq!(node.proxy().unwrap().cache.disk, 1 << 30);
    for (share, fine) in [("0", true), ("90", true), ("91", false), ("-1", false), ("\"half\"", false)] {
        let text = ok.replace("disk = \"1GiB\"", &format!("disk = \"1GiB\"\nlarge_bodies = {share}"));
        let e = errors(&text);
        assert_eq!(e.is_empty(), fine, "large_bodies = {share}: {e:?}");
        if !fine {
            assert!(e.len() == 1 && e[0].starts_with("<inline>:15:16: "), "at the value: {e:?}");
        }
    }
    // /proc refuses new files even to root; a regular file cannot hold a folder.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    for bad in ["/proc/outpost-cache".to_string(), file.join("cache").display().to_string()] {
        let text =
            EDGE.replace("memory = \"64MiB\"", &format!("memory = \"64MiB\"\ndisk = \"1GiB\"\npath = \"{bad}\""));
        assert!(errors(&text).is_empty(), "parsing does not touch the disk");
        let e = resolve_errors(Path::new("edge.toml"), &text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("not writable") || e[0].contains("not a directory"), "{e:?}");
    }
    let e = errors(&EDGE.replace("memory = \"64MiB\"", "memory = \"64MiB\"\ndisk = \"1GiB\""));
    assert!(e[0].contains("cache.path is missing"), "{e:?}");
    // An access log's folder too, at its line.
    let text =
        EDGE.replace("role = \"edge\"", &format!("role = \"edge\"\naccess_log = \"{}\"", file.join("a.log").display()));
    let e = resolve_errors(Path::new("edge.toml"), &text);
    assert!(e.len() == 1 && e[0].starts_with("edge.toml:5:14:") && e[0].contains("access log folder"), "{e:?}");
}

#[test]
fn sections_and_listeners_must_fit_the_role() {
    let e = errors(
        "[node]\nname = \"c\"\nrole = \"control\"\n[listen]\nhttp = [\"127.0.0.1:1\"]\ndns = \"127.0.0.1:53\"\n[cache]\nmemory = \"1GiB\"\n[store]\npath = \"x.redb\"\n[auth]\nadmin_token_file = \"a\"\nnode_token_file = \"n\"\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().any(|m| m.contains("[cache] is not used by a control node")));
    assert!(e.iter().any(|m| m.contains("listen.dns is not used by a control node")));
    assert!(errors("[node]\nname = \"x\"\nrole = \"router\"\n")[0].contains("role must be one of"));
    assert!(errors("[listen]\n")[0].contains("missing table [node]"));
}

#[test]
fn edge_location_is_range_checked() {
    let e = errors(
        &EDGE.replace("latitude = 50.11", "latitude = 91.0").replace("longitude = 8.68", "longitude = \"east\""),
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("latitude must be between -90 and 90"));
    assert!(e[1].contains("expected a number, found string"));
    assert!(errors(&EDGE.replace("pop = \"fra\"\n", ""))[0].contains("missing key `pop`"));
}

#[test]
fn an_etcd_store_names_its_members_and_credentials() {
    let head = "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"127.0.0.1:7000\"]\n\
                [auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n[store]\nbackend = \"etcd\"\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("control.toml");
    let full = format!(
        "{head}endpoints = [\"https://10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\nprefix = \"/cdn/\"\nca = \"ca.pem\"\n\
         cert = \"c.pem\"\nkey = \"c.key\"\nuser = \"outpost\"\npassword_file = \"pw\"\n"
    );
    let node = NodeConfig::parse(&file, &full).unwrap();
    let RoleConfig::Control(c) = &node.role else { panic!() };
    let d = dir.path();
    assert_eq!(
        c.store,
        StoreBackend::Etcd(EtcdStore {
            endpoints: vec!["https://10.0.0.1:2379".into(), "https://10.0.0.2:2379".into()],
            prefix: "/cdn/".into(),
            ca: Some(d.join("ca.pem")),
            identity: Some((d.join("c.pem"), d.join("c.key"))),
            user: Some(("outpost".into(), d.join("pw"))),
            compact_every: DEFAULT_ETCD_COMPACT_EVERY,
        })
    );
    let minimal = NodeConfig::parse(&file, &format!("{head}endpoints = [\"http://127.0.0.1:2379\"]\n")).unwrap();
    let RoleConfig::Control(c) = &minimal.role else { panic!() };
    let StoreBackend::Etcd(e) = &c.store else { panic!("{:?}", c.store) };
    assert_eq!((e.prefix.as_str(), &e.ca, &e.identity, &e.user), (DEFAULT_ETCD_PREFIX, &None, &None, &None));
    let wrong = |extra: &str| errors(&format!("{head}{extra}"));
    assert!(wrong("")[0].contains("missing key `endpoints`"));
    assert!(wrong("endpoints = []\n")[0].contains("at least one etcd member"));
    assert!(wrong("endpoints = [\"10.0.0.1:2379\"]\n")[0].contains("must start with http:// or https://"));
    let e = wrong("endpoints = [\"http://a:2379\"]\npath = \"c.redb\"\ncert = \"c.pem\"\nuser = \"u\"\n");
    assert_eq!(e.len(), 3, "{e:?}");
    for want in ["path is for backend = \"redb\"", "cert and key go together", "user and password_file go together"] {
        assert!(e.iter().any(|m| m.contains(want)), "{want}: {e:?}");
    }
    let e = errors(&head.replace("\"etcd\"", "\"zookeeper\""));
    assert!(e[0].contains("store backend must be \"redb\" or \"etcd\", found `zookeeper`"), "{e:?}");
    assert!(e[0].contains(":10:11:"), "the error points at the value: {e:?}");
}

#[test]
fn control_and_origin_roles() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"127.0.0.1:7000\"]\n\
                [store]\npath = \"data/c.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n";
    let file = dir.path().join("control.toml");
    let node = NodeConfig::parse(&file, text).unwrap();
    let RoleConfig::Control(c) = &node.role else { panic!() };
    assert_eq!(c.store, StoreBackend::Redb { path: dir.path().join("data/c.redb") }, "relative paths follow the file");
    assert_eq!(c.log_retention, DEFAULT_LOG_RETENTION);
    assert_eq!(c.acme, None);
    let acme = "[acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"mailto:ops@example.test\"]\nca = \"pebble.pem\"\n";
    let node = NodeConfig::parse(&file, &format!("{text}{acme}check_every = \"2s\"\n")).unwrap();
    let RoleConfig::Control(c) = &node.role else { panic!() };
    let want = AcmeConfig {
        directory: "https://127.0.0.1:14000/dir".into(),
        contact: vec!["mailto:ops@example.test".into()],
        ca: Some(dir.path().join("pebble.pem")),
        check_every: Duration::from_secs(2),
    };
    assert_eq!(c.acme.as_ref(), Some(&want));
    let e = errors(&format!("{text}{}", acme.replace("https://", "http://").replace("mailto:ops", "ops")));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains(":12:13:") && e[0].contains("must be an https:// URL"), "{e:?}");
    assert!(e[1].contains("must be a mailto: URL"), "{e:?}");
    let edge = errors(&format!("{}{acme}", include_str!("../../../config/edge-fra.toml")));
    assert!(edge.iter().any(|m| m.contains("acme")), "only a control plane orders certificates: {edge:?}");
    let origin: NodeConfig =
        "[node]\nname = \"o\"\nrole = \"origin\"\n[listen]\nhttp = [\"127.0.0.1:9000\"]\n".parse().unwrap();
    assert_eq!(origin.role, RoleConfig::Origin(OriginNode { dir: None }));
    let bad = "[node]\nname = \"o\"\nrole = \"origin\"\n[listen]\nhttp = []\n[origin]\ndir = \"/nonexistent/dir\"\n";
    assert_eq!(errors(bad).len(), 1, "the empty listener list is a parse error");
    let e = resolve_errors(Path::new("o.toml"), &bad.replace("http = []", "http = [\"127.0.0.1:9000\"]"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("/nonexistent/dir"), "{e:?}");
}

#[test]
fn dns_glue_gives_addresses_to_the_zones_own_name_servers_only() {
    let text = r#"
[node]
name = "dns"
role = "dns"
[listen]
dns = "127.0.0.1:5353"
[dns]
zone = "cdn.example.test"
geoip = "x.mmdb"
default_pop = "fra"
nameservers = ["NS1.cdn.example.test", "ns.example.net."]
[[dns.pop]]
name = "fra"
latitude = 50.1
longitude = 8.7
edges = ["127.0.0.11"]
[dns.glue]
"ns1.cdn.example.test." = ["192.0.2.53", "2001:db8::53"]
"ns.example.net." = ["192.0.2.54"]
"ns9.cdn.example.test." = ["192.0.2.55"]
"ns1.cdn.example.test" = []
"#;
    let e = errors(text);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].contains(":19:1: `ns.example.net.` is outside the zone"), "{}", e[0]);
    assert!(e[1].contains(":20:1: `ns9.cdn.example.test.` is not one of dns.nameservers"), "{}", e[1]);
    assert!(e[2].contains(":21:1: `ns1.cdn.example.test.` needs at least one address"), "{}", e[2]);
    let fixed = text
        .replace("\"ns.example.net.\" = [\"192.0.2.54\"]\n", "")
        .replace("\"ns9.cdn.example.test.\" = [\"192.0.2.55\"]\n", "")
        .replace("\"ns1.cdn.example.test\" = []\n", "");
    let node: NodeConfig = fixed.parse().unwrap();
    let RoleConfig::Dns(d) = &node.role else { panic!() };
    assert_eq!(d.nameservers, ["ns1.cdn.example.test.", "ns.example.net."]);
    assert_eq!(d.glue["ns1.cdn.example.test."].len(), 2);
}

#[test]
fn dns_role_checks_its_pops() {
    let text = r#"
[node]
name = "dns"
role = "dns"
[listen]
dns = "127.0.0.1:5353"
[dns]
zone = "CDN.Example.test"
geoip = "x.mmdb"
default_pop = "lhr"
[[dns.pop]]
name = "fra"
latitude = 50.1
longitude = 8.7
edges = ["127.0.0.11", "::1"]
[dns.countries]
gb = "fra"
US = "iad"
[dns.continents]
EU = "fra"
XX = "fra"
"#;
    let e = errors(text);
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].contains("default_pop `lhr` is not one of the [[dns.pop]] names"));
    assert!(e[1].contains("`gb` is not a code for dns.countries"));
    assert!(e[2].contains("no [[dns.pop]] is named `iad`"));
    assert!(e[3].contains("`XX` is not a code for dns.continents"));
    let fixed = text
        .replace("\"lhr\"", "\"fra\"")
        .replace("gb =", "GB =")
        .replace("US = \"iad\"\n", "")
        .replace("XX = \"fra\"\n", "");
    let node: NodeConfig = fixed.parse().unwrap();
    let RoleConfig::Dns(d) = &node.role else { panic!() };
    assert_eq!(d.zone, "cdn.example.test.");
    assert_eq!(d.ttl, DEFAULT_DNS_TTL);
    assert_eq!(d.pops[0].edges.len(), 2);
    assert_eq!(d.countries["GB"], "fra");
}

#[test]
fn static_site_errors_point_into_the_site_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.site.toml"),
        "[site]\nid = \"b\"\nhosts = [\"b.test\"]\n[[origin]]\nurl = \"b\"\n",
    )
    .unwrap();
    let edge = EDGE.replace("longitude = 8.68", "longitude = 8.68\nsites = [\"bad.site.toml\", \"gone.toml\"]");
    let lines = resolve_errors(&dir.path().join("edge.toml"), &edge);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("edge.toml:8:27:") && l.contains("gone.toml` does not exist")));
    assert!(lines.iter().any(|l| l.contains("bad.site.toml:5:7:")));
}

#[test]
fn a_node_follows_one_control_plane_url_or_a_list_of_replicas() {
    let with = |control: &str| format!("{EDGE}[control]\n{control}\ntoken_file = \"node.token\"\n");
    let one: NodeConfig = with("url = \"http://10.0.0.1:7000\"").parse().unwrap();
    let urls = |n: &NodeConfig| n.control.as_ref().unwrap().urls.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(urls(&one), ["http://10.0.0.1:7000/"]);
    let two: NodeConfig = with("urls = [\"http://10.0.0.1:7000\", \"http://10.0.0.2:7000\"]").parse().unwrap();
    assert_eq!(urls(&two), ["http://10.0.0.1:7000/", "http://10.0.0.2:7000/"]);
    assert!(errors(&with("url = \"http://a:1\"\nurls = [\"http://b:1\"]"))[0].contains("`url` or `urls`, not both"));
    assert!(errors(&with("urls = []"))[0].contains("at least one control-plane replica"));
    assert!(errors(&with(""))[0].contains("missing key `url` (or `urls`"));
}

#[test]
fn a_shield_that_requires_edges_certificates_has_no_plain_http_listener() {
    let shield = |listen: &str| {
        format!(
            "[node]\nname = \"s\"\nrole = \"shield\"\n[listen]\n{listen}\n[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n\
             client_ca = \"edges.pem\"\n[cache]\nmemory = \"64MiB\"\n"
        )
    };
    let e = errors(&shield("http = [\"127.0.0.1:0\"]"));
    assert!(e.iter().any(|e| e.contains("cannot also listen on listen.http")), "{e:?}");
    let e = errors(&shield("https = [\"127.0.0.1:0\"]"));
    assert!(!e.iter().any(|e| e.contains("listen.http")), "{e:?}");
}
