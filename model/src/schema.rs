//! Every section and key of node and site files, declared once.
//!
//! The readers in `node/read.rs` and `site/read.rs` ask for keys by name; a key they
//! ask for that is not declared here fails every test that reads it (a
//! debug assertion in `Table`), and a test writes a file with every key
//! declared here and checks that each is read. Which sections and
//! listeners a role uses comes from here too, and so does the reference
//! of every key: `outpost config reference`, committed as `docs/config.md`
//! (a test fails when that copy is stale).

use std::fmt::Write as _;
use std::time::Duration;

use crate::Role;
use crate::node::*;
use crate::site::*;

/// The two kinds of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Node,
    Site,
}

/// How a section is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `[name]`, once.
    Table,
    /// `[[name]]`, any number of times.
    Array,
    /// `[name]` whose keys are data (codes, header names), not settings.
    Map,
}

#[derive(Debug)]
pub struct Section {
    pub file: FileKind,
    /// Dotted for sub-tables: `dns.pop`, `origin.health`.
    pub name: &'static str,
    pub shape: Shape,
    /// Node sections: the roles that use it. Site sections: empty.
    pub roles: &'static [Role],
    pub doc: &'static str,
    pub keys: &'static [Key],
}

#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    /// What is written: "duration", "size", "list of addresses", …
    pub kind: &'static str,
    pub default: DefaultValue,
    /// The roles that use the key, when fewer than the section's.
    pub roles: &'static [Role],
    pub doc: &'static str,
    /// A valid value, as TOML.
    pub example: &'static str,
}

/// What a key is when a file leaves it out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefaultValue {
    /// The file must give it.
    Required,
    /// Nothing: the feature it configures is off (the doc says what that means).
    Unset,
    Time(Duration),
    Bytes(u64),
    Int(u64),
    Bool(bool),
    /// A string value, or a description of a computed default.
    Text(&'static str),
}

const fn key(
    name: &'static str,
    kind: &'static str,
    default: DefaultValue,
    doc: &'static str,
    example: &'static str,
) -> Key {
    Key { name, kind, default, roles: &[], doc, example }
}

impl Key {
    const fn only(self, roles: &'static [Role]) -> Key {
        Key { roles, ..self }
    }

    /// Does a node of `role` read this key (in a section that role uses)?
    pub fn used_by(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }
}

impl Section {
    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// `[name]` or `[[name]]`.
    pub fn header(&self) -> String {
        match self.shape {
            Shape::Array => format!("[[{}]]", self.name),
            _ => format!("[{}]", self.name),
        }
    }
}

use DefaultValue::*;
use Role::{Control as C, Dns as D, Edge as E, Origin as O, Shield as S};

const PROXIES: &[Role] = &[E, S];
const ALL: &[Role] = &[E, S, C, D, O];

/// The sections of node and site files, in the order the reference lists them.
pub static SECTIONS: &[Section] = &[
    Section {
        file: FileKind::Node,
        name: "node",
        shape: Shape::Table,
        roles: ALL,
        doc: "Who this process is and what it does.",
        keys: &[
            key("name", "string", Required, "Unique among the CDN's nodes: lower-case letters, digits and inner hyphens. Names the node in `Cache-Status`, metrics, logs and the registry.", "\"edge-fra-1\""),
            key("role", "string", Required, "`edge`, `shield`, `control`, `dns` or `origin`.", "\"edge\""),
            key("pop", "string", Unset, "The PoP the node serves; DNS steers clients to a PoP's edges. Required for an edge.", "\"fra\"").only(PROXIES),
            key("latitude", "number", Unset, "Where the PoP is, from -90 to 90. Required for an edge (DNS picks the nearest PoP).", "50.11").only(PROXIES),
            key("longitude", "number", Unset, "Where the PoP is, from -180 to 180. Required for an edge.", "8.68").only(PROXIES),
            key("sites", "list of paths", Text("[]"), "Site files served before (or without) the control plane; relative to this file.", "[\"example.site.toml\"]").only(PROXIES),
            key("access_log", "string", Text("\"stdout\""), "JSON lines, one per request: `\"stdout\"`, `\"off\"` or a file path (reopened on SIGHUP, after a log rotation).", "\"off\"").only(PROXIES),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "listen",
        shape: Shape::Table,
        roles: ALL,
        doc: "Where the node accepts connections. Port 0 picks a free port (reported at start).",
        keys: &[
            key("http", "list of addresses", Text("[]"), "Plain-HTTP listeners. A node that serves HTTP needs one here or in `https`.", "[\"127.0.0.1:8080\"]").only(&[E, S, C, O]),
            key("https", "list of addresses", Text("[]"), "TLS listeners (HTTP/1.1 and HTTP/2 by ALPN).", "[\"127.0.0.1:8443\"]").only(&[E, S, C]),
            key("quic", "list of addresses", Text("[]"), "HTTP/3 listeners (QUIC over UDP), with the same certificates as `https`; sites with `http3 = true` advertise the first one in `Alt-Svc`. Usually the `https` addresses.", "[\"127.0.0.1:8443\"]").only(PROXIES),
            key("admin", "address", Unset, "`/metrics` and `/healthz`; no admin listener when unset.", "\"127.0.0.1:9100\"").only(&[E, S, D]),
            key("dns", "address", Required, "UDP and TCP port of the DNS server.", "\"127.0.0.1:5353\"").only(&[D]),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "limits",
        shape: Shape::Table,
        roles: &[E, S, C],
        doc: "What one client may cost the node.",
        keys: &[
            key("header_bytes", "size", Bytes(DEFAULT_MAX_HEADER_BYTES), "Largest request head (request line and headers), from 1KiB to 1MiB; larger gets 431.", "\"32KiB\""),
            key("headers", "integer", Int(DEFAULT_MAX_HEADERS as u64), "Most request header fields, up to 10000.", "100"),
            key("body", "size", Bytes(DEFAULT_MAX_REQUEST_BODY), "Largest request body forwarded upstream; larger gets 413.", "\"16MiB\""),
            key("header_read_timeout", "duration", Time(DEFAULT_HEADER_READ_TIMEOUT), "Time a client has to send a whole request head.", "\"10s\""),
            key("idle_timeout", "duration", Time(DEFAULT_IDLE_TIMEOUT), "An idle keep-alive connection is closed after this long.", "\"60s\""),
            key("send_timeout", "duration", Time(DEFAULT_SEND_TIMEOUT), "A response the client takes no byte of for this long is dropped with its connection (over HTTP/2 and HTTP/3, a stream the client gives no room is reset).", "\"30s\""),
            key("body_read_timeout", "duration", Time(DEFAULT_BODY_READ_TIMEOUT), "A request body forwarded upstream (a POST's, a PUT's) that the client sends no byte of for this long fails, and so does the exchange with the upstream; only time spent waiting on the client counts.", "\"30s\"").only(PROXIES),
            key("send_min_rate", "size", Bytes(DEFAULT_SEND_MIN_RATE), "Bytes a second a client must take, on average over each `send_timeout`, once the node's writes to it wait; less, and the response is dropped with its connection, as for a client that takes nothing (a slow-read attack takes a byte now and then). 0: any byte taken restarts `send_timeout`. Only time spent waiting on the client counts. Over HTTP/1.1 per connection, over HTTP/2 and HTTP/3 per stream (the rate shared among the connection's open streams); up to 1GiB.", "\"1KiB\""),
            key("shutdown_grace", "duration", Time(DEFAULT_SHUTDOWN_GRACE), "How long a stopping node lets responses in flight finish.", "\"30s\""),
            key("max_connections", "integer", Int(DEFAULT_MAX_CONNECTIONS as u64), "Open client connections; at the cap the longest-idle one is closed to make room.", "10000"),
            key("quic_streams", "integer", Int(DEFAULT_QUIC_STREAMS as u64), "Requests one HTTP/3 connection may have open at once; the client waits for more.", "100").only(PROXIES),
            key("fetches_per_connection", "integer", Text("512 on edges, 0 on shields"), "Upstream fetches one client connection may have running at once, counting those its requests left behind (a stream reset before its answer, a revalidation in the background); past it, a request that would start another gets 429. A request forwarded with its body (a POST's) counts as one until its answer ends. Requests that wait on a fetch already running do not count. 0: no cap, a shield's default, whose clients are edges each carrying all its misses over a few connections.", "512").only(PROXIES),
            key("fetches_per_network", "integer", Text("2048 on edges, 0 on shields"), "The same cap for all the connections of one client network together (IPv4 /24, IPv6 /56), so a client that opens many connections leaves no more fetches running than a few would; past it, a request that would start another gets 429. 0: no cap, a shield's default.", "2048").only(PROXIES),
            key("connections_per_network", "integer", Text("a quarter of max_connections on edges, 0 elsewhere"), "Open connections from one client network (IPv4 /24, IPv6 /56); past it a new connection from there is closed at once, and none is closed to make room for it, so one network cannot hold every place of `max_connections`. 0: no cap, the default but on edges (a shield's edges, or a control plane's operators, may share a network).", "2500").only(PROXIES),
            key("listen_backlog", "integer", Int(DEFAULT_LISTEN_BACKLOG as u64), "Connections the kernel queues on each listener before the node accepts them; Linux caps it at net.core.somaxconn.", "4096"),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "tls",
        shape: Shape::Table,
        roles: &[E, S, C],
        doc: "The node's own certificates. Sites bring theirs in their own `[tls]`.",
        keys: &[
            key("cert", "path", Unset, "PEM certificate chain: the control plane's API certificate, or an edge's default certificate. Needs `key`.", "\"node.pem\""),
            key("key", "path", Unset, "PEM private key of `cert`.", "\"node.key\""),
            key("unknown_sni", "string", Text("\"reject\""), "A client asking for a name no site serves: `\"reject\"` fails the handshake, `\"default\"` presents `cert`.", "\"reject\"").only(PROXIES),
            key("client_ca", "path", Unset, "Clients must present a certificate from this CA (shields requiring it of edges), on the HTTPS and the HTTP/3 (`quic`) listeners alike; a shield with it cannot also have `listen.http`, where any client would pass for an edge.", "\"edges-ca.pem\"").only(PROXIES),
            key("upstream_ca", "path", Unset, "Trusted besides the public roots when verifying https upstreams.", "\"private-ca.pem\"").only(PROXIES),
            key("upstream_cert", "path", Unset, "Client certificate presented to https upstreams that ask. Needs `upstream_key`.", "\"edge-client.pem\"").only(PROXIES),
            key("upstream_key", "path", Unset, "PEM private key of `upstream_cert`.", "\"edge-client.key\"").only(PROXIES),
            key("site_cert_dirs", "list of paths", Text("the node file's folder"), "The only folders sites' certificate files and origins' `ca` files may be read from; listed folders add to the default.", "[\"certs\"]").only(PROXIES),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "cache",
        shape: Shape::Table,
        roles: PROXIES,
        doc: "The object cache.",
        keys: &[
            key("memory", "size", Required, "In-memory cache, at least 1MiB.", "\"512MiB\""),
            key("disk", "size", Bytes(0), "On-disk cache below memory: 0 (memory only) or at least 16MiB. Needs `path`.", "\"10GiB\""),
            key("large_bodies", "integer", Int(DEFAULT_LARGE_BODIES as u64), "Percent of `disk` (0 to 90) for bodies of 64KiB and more, kept as plain files in `path/bodies` and sent from the page cache; the rest (at least 16MiB) holds object heads and smaller bodies. 0: every body in the rest.", "60"),
            key("path", "path", Unset, "Folder of the disk cache; must be writable (created if missing). Holds `key-secret`, what its keys are hashed with: without it, its copies are fetched again.", "\"cache\""),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "upstream",
        shape: Shape::Table,
        roles: &[E],
        doc: "Where an edge's misses go.",
        keys: &[
            key("mode", "string", Text("\"shield\""), "`\"shield\"`: to the shield that owns the key (rendezvous hash); `\"origin\"`: straight to the site's origin.", "\"shield\""),
            key("shields", "list", Text("[]"), "Each a URL (`\"http://10.0.0.5:8101\"`) or `{ name, url }` when edges reach one shield by different addresses. Every edge must name a shield the same way. Required with mode `\"shield\"`.", "[\"http://127.0.0.1:8101\", { name = \"shield-2\", url = \"http://127.0.0.1:8102\" }]"),
            key("probe_interval", "duration", Time(DEFAULT_SHIELD_PROBE_INTERVAL), "How often a shield marked down is probed; longer than zero.", "\"1s\""),
            key("http2", "boolean", Bool(true), "Speak HTTP/2 to shields (from the first byte over `http://`, offered by ALPN over `https://`): every miss to a shield shares one connection. A shield that does not speak HTTP/2 is asked in HTTP/1.1 for five minutes.", "true"),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "control",
        shape: Shape::Table,
        roles: &[E, S, D],
        doc: "The control plane this node follows. Without it the node serves its own site files.",
        keys: &[
            key("url", "URL", Unset, "The control plane's API; this or `urls` is required.", "\"http://127.0.0.1:7000\""),
            key("urls", "list of URLs", Unset, "One URL per control-plane replica, instead of `url`: a node that loses one follows the next, resuming where it was.", "[\"http://10.0.0.11:7000\", \"http://10.0.0.12:7000\"]"),
            key("token_file", "path", Required, "Holds the node's own credential (`outpost node-token NAME`), or the node token itself while the control plane accepts it; read for each call, never logged.", "\"node.token\""),
            key("ca", "path", Unset, "Trusted besides the public roots when `url` is https.", "\"control-ca.pem\""),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "store",
        shape: Shape::Table,
        roles: &[C],
        doc: "Where the control plane keeps sites, the event log, purges and the node registry: one redb file for one control-plane process, or an etcd cluster that any number of control-plane replicas share.",
        keys: &[
            key("backend", "string", Text("\"redb\""), "`\"redb\"` (one file on this machine) or `\"etcd\"` (a cluster shared by replicas).", "\"etcd\""),
            key("path", "path", Unset, "The database file, required with `redb`; its folder must be writable.", "\"data/control.redb\""),
            key("endpoints", "list of URLs", Unset, "etcd members' client URLs (`http://` or `https://`), required with `etcd`.", "[\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\", \"http://10.0.0.3:2379\"]"),
            key("prefix", "string", Text("\"/outpost/\""), "With `etcd`: every key the control plane writes starts with this, so clusters can be shared.", "\"/outpost/\""),
            key("ca", "path", Unset, "With `etcd`: CA certificate (PEM) trusted for `https` endpoints.", "\"etcd-ca.pem\""),
            key("cert", "path", Unset, "With `etcd`: client certificate (PEM) for members that require one; needs `key`.", "\"etcd-client.pem\""),
            key("key", "path", Unset, "With `etcd`: the client certificate's private key (PEM).", "\"etcd-client.key\""),
            key("user", "string", Unset, "With `etcd`: user name when the cluster has authentication on; needs `password_file`.", "\"outpost\""),
            key("password_file", "path", Unset, "With `etcd`: file holding the user's password; read at start, never logged.", "\"etcd.password\""),
            key("compact_every", "duration", Time(DEFAULT_ETCD_COMPACT_EVERY), "With `etcd`: how often a replica compacts the cluster's history to where it stood the time before (every acknowledgement writes a revision; a history never compacted fills etcd's space quota, and etcd then refuses every write). `\"0s\"` leaves it to etcd's own `--auto-compaction-*`, for a cluster other applications share.", "\"5m\""),
            key("log_retention", "integer", Int(DEFAULT_LOG_RETENTION), "Events kept before compacting; a node further behind takes a snapshot.", "100000"),
            key("node_expiry", "duration", Time(DEFAULT_NODE_EXPIRY), "A node silent this long leaves the registry (it registers again when it reconnects).", "\"24h\""),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "auth",
        shape: Shape::Table,
        roles: &[C],
        doc: "Bearer tokens of the control plane's API, each read from a file.",
        keys: &[
            key("admin_token_file", "path", Required, "Operators' token: sites, purges, status.", "\"admin.token\""),
            key(
                "node_token_file",
                "path",
                Required,
                "The secret nodes' credentials derive from (`outpost node-token NAME` prints a node's: it opens that node's event stream and acknowledges for it alone). Created with a random token when missing.",
                "\"node.token\"",
            ),
            key(
                "shared_node_token",
                "bool",
                Bool(true),
                "Whether the node token itself is accepted from nodes, for any node name. Set to false once every node has its own credential: a node then cannot speak for another; the node token then no longer opens the console either.",
                "false",
            ),
            key(
                "viewer_token_file",
                "path",
                Unset,
                "A read-only token, created with a random one when missing: it signs in to the console read-only and reads the API (sites, their versions, purges, nodes, PoPs), changing nothing. Hand it to people and dashboards rather than the node token.",
                "\"viewer.token\"",
            ),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "acme",
        shape: Shape::Table,
        roles: &[C],
        doc: "The ACME directory (RFC 8555) the control plane orders certificates from, for sites with `[tls] acme = true`. Orders, the account and the certificates are kept in the store, so replicas share them and a restart orders nothing new.",
        keys: &[
            key("directory", "URL", Required, "The directory, `https://`.", "\"https://acme-v02.api.letsencrypt.org/directory\""),
            key("contact", "list of URLs", Text("[]"), "Account contacts, `mailto:` URLs.", "[\"mailto:ops@example.com\"]"),
            key("ca", "path", Unset, "CA certificates (PEM) trusted for the directory's HTTPS besides the system's, for a private or test CA.", "\"pebble.minica.pem\""),
            key("check_every", "duration", Time(DEFAULT_ACME_CHECK), "How often certificates are checked for renewal and failed orders retried.", "\"1h\""),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "dns",
        shape: Shape::Table,
        roles: &[D],
        doc: "The geo-DNS zone: each site is `<id>.<zone>`, answered with the nearest healthy PoP's edges.",
        keys: &[
            key("zone", "string", Required, "The zone served, such as `cdn.example.test`.", "\"cdn.example.test\""),
            key("ttl", "duration", Time(DEFAULT_DNS_TTL), "TTL of answers, from 1s to a day.", "\"30s\""),
            key("geoip", "path", Required, "MaxMind-format database mapping client networks to locations.", "\"geoip/test.mmdb\""),
            key("nameservers", "list of names", Text("[]"), "NS records of the zone.", "[\"ns1.cdn.example.test\"]"),
            key("sites", "list of site ids", Text("[]"), "Sites always answered. With `[control]`, the sites the control plane stores are answered too (read every 3 s), and a site deleted there is NXDOMAIN again.", "[\"shop\"]"),
            key("default_pop", "string", Required, "The PoP for clients the database does not place; one of the `[[dns.pop]]` names.", "\"fra\""),
            key("rate_limit", "integer", Int(DEFAULT_DNS_RATE_LIMIT as u64), "UDP answers per second to one client network (IPv4 /24, IPv6 /56) for one name and type (a NODATA, for one name whatever the type), or for one kind of error (NXDOMAIN, REFUSED…); past it, answers are dropped and every second one is sent truncated (empty, TC set) so a real resolver asks again over TCP, which spoofed queries cannot. 0 turns it off. TCP is never limited.", "100"),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "dns.pop",
        shape: Shape::Array,
        roles: &[D],
        doc: "A PoP DNS can send clients to.",
        keys: &[
            key("name", "string", Required, "As edges name it in `[node] pop`.", "\"fra\""),
            key("latitude", "number", Required, "From -90 to 90.", "50.11"),
            key("longitude", "number", Required, "From -180 to 180.", "8.68"),
            key("edges", "list of IP addresses", Text("[]"), "Static edge addresses, answered until (or without) the registry. Required without `[control]`.", "[\"127.0.0.11\"]"),
            key("networks", "list of networks", Text("[]"), "Networks the PoP's edges may register addresses in, besides `edges`: DNS answers only with addresses these allow.", "[\"10.1.0.0/16\"]"),
        ],
    },
    Section {
        file: FileKind::Node,
        name: "dns.countries",
        shape: Shape::Map,
        roles: &[D],
        doc: "ISO country code (upper case) → PoP name, for clients the database places in a country but not a location.",
        keys: &[],
    },
    Section {
        file: FileKind::Node,
        name: "dns.continents",
        shape: Shape::Map,
        roles: &[D],
        doc: "Continent code (`AF`, `AN`, `AS`, `EU`, `NA`, `OC`, `SA`) → PoP name, when the country has no entry.",
        keys: &[],
    },
    Section {
        file: FileKind::Node,
        name: "dns.glue",
        shape: Shape::Map,
        roles: &[D],
        doc: "A name server of `nameservers` inside the zone → its addresses (a list of IPs), answered as its A and AAAA records and as glue beside the zone's NS records, so resolvers can reach it.",
        keys: &[],
    },
    Section {
        file: FileKind::Node,
        name: "origin",
        shape: Shape::Table,
        roles: &[O],
        doc: "The test origin.",
        keys: &[key("dir", "path", Unset, "A folder served under `/files/`; none when unset.", "\"www\"")],
    },
    Section {
        file: FileKind::Site,
        name: "site",
        shape: Shape::Table,
        roles: &[],
        doc: "The site's identity.",
        keys: &[
            key("id", "string", Required, "A DNS label (the site is also `<id>.<zone>`): 1 to 63 lower-case letters, digits or inner hyphens.", "\"shop\""),
            key("hosts", "list of host names", Required, "Names the site answers for: exact, or `*.suffix` for one or more labels in front of the suffix (itself of two labels or more: `*.com` is refused). No two may overlap.", "[\"shop.example.test\", \"*.static.example.test\"]"),
            key("https_only", "boolean", Bool(false), "Plain-HTTP clients get a 308 to the HTTPS URL.", "false"),
            key("http3", "boolean", Bool(false), "Advertise HTTP/3 (`Alt-Svc`) on responses over HTTP/1.1 and HTTP/2 from nodes with `listen.quic`.", "true"),
            key("allow_direct", "boolean", Bool(true), "Edges may go to the origin directly when every shield is down.", "true"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "origin",
        shape: Shape::Array,
        roles: &[],
        doc: "Where the site's content comes from; at least one. Misses are spread by weight over healthy origins.",
        keys: &[
            key("url", "URL", Required, "`http://` or `https://`, host and port, no path.", "\"http://127.0.0.1:9000\""),
            key("host", "host name", Unset, "Host header sent to the origin; the client's when unset (then the host is part of the cache key).", "\"origin.example.test\""),
            key("weight", "integer", Int(1), "Share of requests, at least 1.", "1"),
            key("connect_timeout", "duration", Time(DEFAULT_ORIGIN_CONNECT_TIMEOUT), "Time to connect; longer than zero.", "\"2s\""),
            key("response_timeout", "duration", Time(DEFAULT_ORIGIN_RESPONSE_TIMEOUT), "Time for the response head (a wait for a place under `max_connections` counts in it), and the longest the origin may then send nothing of the body before the answer is given up (an event stream passed through with pauses longer than this is cut); longer than zero.", "\"30s\""),
            key("link_timeout", "duration", Time(DEFAULT_ORIGIN_LINK_TIMEOUT), "Time the origin has to acknowledge what was sent to it (`TCP_USER_TIMEOUT`, on Linux); past it the link counts as cut, as a failed connect does, instead of waiting out `response_timeout`. An origin that stops reading a request body for as long is given up too. At least 1s.", "\"10s\""),
            key("body_min_rate", "size", Bytes(DEFAULT_ORIGIN_BODY_MIN_RATE), "Bytes a second the origin must send of a body the node shares with waiting requests or stores, on average over each `response_timeout` spent waiting for it (time the node waits for its own slow readers does not count); less, and the body is given up as stalled, as one that sends nothing is: a body that trickles in a byte now and then would hold the fetch, every request waiting on it and a place under `max_connections` for as long as it pleased. 0: none. Bodies passed through to one client (`no-store`) and event streams (`text/event-stream`) have `response_timeout` alone. Up to 1GiB.", "\"1KiB\""),
            key("max_connections", "integer", Int(DEFAULT_ORIGIN_MAX_CONNECTIONS as u64), "Requests one node sends this origin at once, each counted until its answer's last byte; more wait, at most `response_timeout`, then get 504.", "64"),
            key("ca", "path", Unset, "A private CA trusted besides the public roots; only with an https `url`. Read, as site certificates are, only from the node's `site_cert_dirs`.", "\"origin-ca.pem\""),
            key("http2", "boolean", Bool(true), "Offer HTTP/2 beside HTTP/1.1 in the TLS handshake of an https `url`, and speak what the origin picks: every miss to it shares one connection. `false`: HTTP/1.1 only. An `http://` origin is always asked in HTTP/1.1.", "true"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "origin.health",
        shape: Shape::Table,
        roles: &[],
        doc: "Active health checks of one origin; without them an origin is taken out only by failing requests.",
        keys: &[
            key("path", "path", Required, "Requested with GET; a 2xx or 3xx is healthy. Starts with `/`.", "\"/healthz\""),
            key("interval", "duration", Time(DEFAULT_HEALTH_INTERVAL), "Between checks; longer than zero.", "\"5s\""),
            key("timeout", "duration", Time(DEFAULT_HEALTH_TIMEOUT), "Time one check may take; longer than zero.", "\"2s\""),
            key("healthy_threshold", "integer", Int(DEFAULT_HEALTHY_THRESHOLD as u64), "Consecutive successes that bring a down origin back.", "2"),
            key("unhealthy_threshold", "integer", Int(DEFAULT_UNHEALTHY_THRESHOLD as u64), "Consecutive failures that take an origin out.", "3"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "cache",
        shape: Shape::Table,
        roles: &[],
        doc: "How the site's responses are keyed and kept. The origin's `Cache-Control` decides first (RFC 9111); these fill in.",
        keys: &[
            key("default_ttl", "duration", Time(DEFAULT_TTL), "Freshness of a cacheable response that states none; at most 365 days.", "\"60s\""),
            key("heuristic_max", "duration", Time(DEFAULT_HEURISTIC_MAX), "With `default_ttl = \"0s\"`, a response that states no freshness but has `Last-Modified` is fresh for a tenth of the time since then (RFC 9111 §4.2.2), at most this; `\"0s\"`: never guess.", "\"6h\""),
            key("max_object_size", "size", Bytes(DEFAULT_MAX_OBJECT_SIZE), "Larger responses stream through uncached.", "\"1GiB\""),
            key("query", "string", Text("\"keep\""), "The query in the key: `\"keep\"` as sent, `\"sort\"` by name, `\"ignore\"` (dropped from the key and the upstream request).", "\"sort\""),
            key("query_drop", "list of names", Text("[]"), "Parameters removed from the key and the upstream request (tracking tags).", "[\"utm_source\"]"),
            key("key_headers", "list of header names", Text("[]"), "Request headers whose values are part of every key.", "[\"accept-language\"]"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "cache.status_ttl",
        shape: Shape::Map,
        roles: &[],
        doc: "Status code (200–599, not 206 or 304) → TTL, which also makes that status cacheable (negative caching): `404 = \"30s\"`.",
        keys: &[],
    },
    Section {
        file: FileKind::Site,
        name: "cache.path",
        shape: Shape::Array,
        roles: &[],
        doc: "Per-path rules; the first whose pattern matches wins.",
        keys: &[
            key("pattern", "path pattern", Required, "An exact path, or a prefix ending in `*`; its literal parts are normalised as request paths are (`/%7Euser/*` matches `/~user/a`, `/café/*` matches `/caf%C3%A9/a`), and one with a dot segment is refused.", "\"/static/*\""),
            key("ttl", "duration", Unset, "Freshness for responses that state none (all responses, with `force`); the site's `default_ttl` when unset.", "\"1h\""),
            key("force", "boolean", Bool(false), "Use `ttl` whatever the origin's headers say (but `private`), for statuses cacheable by default (not 5xx, 206 or 304) and those with a `status_ttl`: a forced rule never pins an error a client provoked or a passing outage. Needs `ttl`.", "false"),
            key("bypass", "boolean", Bool(false), "Never cache this path. Not with `ttl` or `force`.", "false"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "early_hints",
        shape: Shape::Array,
        roles: &[],
        doc: "`103 Early Hints` (RFC 8297): `Link` fields an edge sends before it answers a GET for a matching path that it cannot answer at once from memory (a miss, a disk read), so the browser fetches or connects meanwhile. The first rule whose pattern matches wins. Sent to HTTP/1.1, HTTP/2 and HTTP/3 clients, over cleartext and TLS, before the 1xx the origin sends (which are passed on too).",
        keys: &[
            key("pattern", "path pattern", Required, "An exact path, or a pattern with `*`, matched against the normalised path (as `[[cache.path]]`).", "\"/\""),
            key("link", "list of strings", Required, "`Link` field values, 1 to 32, each a target in angle brackets and its parameters.", "[\"</app.css>; rel=preload; as=style\", \"<https://img.example.com>; rel=preconnect\"]"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "stale",
        shape: Shape::Table,
        roles: &[],
        doc: "When a stale object may be served, if the origin's `Cache-Control` does not say.",
        keys: &[
            key("while_revalidate", "duration", Time(DEFAULT_STALE_WHILE_REVALIDATE), "Served stale while one background request revalidates it.", "\"30s\""),
            key("if_error", "duration", Time(DEFAULT_STALE_IF_ERROR), "Served stale when the upstream fails or is unreachable.", "\"1d\""),
            key("partition_grace", "duration", Time(DEFAULT_PARTITION_GRACE), "How long a node cut off from the control plane trusts its objects before revalidating every hit (a purge may have been missed).", "\"5m\""),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "compress",
        shape: Shape::Table,
        roles: &[],
        doc: "Compressed representations for clients that accept them (`Accept-Encoding`), made once by the tier that stores the origin's response and stored beside it. Responses with `Cache-Control: no-transform` or a `Content-Encoding` of their own are left as they are; clients that accept none of the stored codings get the body decoded.",
        keys: &[
            key("codings", "list of codings", Text("[\"br\", \"zstd\", \"gzip\"]"), "Codings made, the first preferred when a client weighs several the same; `[]`: none, and `Accept-Encoding` passes through untouched.", "[\"br\", \"gzip\"]"),
            key("types", "list of media types", Text("text and text-like types"), "Media types compressed; `text/*` covers a top-level type. The default covers `text/*`, JavaScript, JSON, XML, SVG, WebAssembly and fonts.", "[\"text/*\", \"application/json\"]"),
            key("min_size", "size", Bytes(DEFAULT_COMPRESS_MIN_SIZE), "Smaller bodies are sent as they are.", "\"1KiB\""),
            key("max_size", "size", Bytes(DEFAULT_COMPRESS_MAX_SIZE), "Larger bodies are sent as they are (a representation is made in memory), and a stored coding that decodes to more is sent as stored; at most 256MiB.", "\"16MiB\""),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "tls",
        shape: Shape::Table,
        roles: &[],
        doc: "The certificate edges and shields present for the site's hosts: files each node reads from its `site_cert_dirs`, or one the control plane obtains by ACME.",
        keys: &[
            key("cert", "path", Unset, "PEM: the leaf certificate, then its intermediates. Required unless `acme = true`.", "\"certs/shop.pem\""),
            key("key", "path", Unset, "PEM private key (PKCS#8, PKCS#1 or SEC1). Required with `cert`.", "\"certs/shop.key\""),
            key("acme", "boolean", Bool(false), "Get the certificate from the control plane's `[acme]` directory instead of files: ordered by HTTP-01 (every node answers the challenge), renewed with a third of its lifetime left, sent to every node with its key sealed. Exact host names only.", "true"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "headers",
        shape: Shape::Table,
        roles: &[],
        doc: "Changes to every response sent to clients, and request fields the origin needs. A shield leaves `Cache-Status` as it is whatever `remove` and `set` say (its edges read its member there, to tell an origin's error passed on from the shield's own); the edge applies them to what clients get.",
        keys: &[
            key("remove", "list of header names", Text("[]"), "Response fields removed.", "[\"server\"]"),
            key("forward", "list of header names", Text("[]"), "Request fields nodes withhold from upstreams (`X-Forwarded-Host` and other URL-changing fields) that this origin needs; each becomes part of every key.", "[\"x-forwarded-host\"]"),
        ],
    },
    Section {
        file: FileKind::Site,
        name: "headers.set",
        shape: Shape::Map,
        roles: &[],
        doc: "Response field → value, set on every response (replacing the origin's). Framing and hop-by-hop fields (`content-length`, `transfer-encoding`, `connection`, `keep-alive`, `upgrade`, `te`, `trailer`) cannot be set: the node writes them.",
        keys: &[],
    },
];

/// The section `name` of a file kind.
pub fn section(file: FileKind, name: &str) -> Option<&'static Section> {
    SECTIONS.iter().find(|s| s.file == file && s.name == name)
}

/// A file kind's sections.
pub fn sections(file: FileKind) -> impl Iterator<Item = &'static Section> {
    SECTIONS.iter().filter(move |s| s.file == file)
}

/// The top-level sections a node of `role` may have besides `[node]`.
pub fn role_sections(role: Role) -> impl Iterator<Item = &'static Section> {
    sections(FileKind::Node).filter(move |s| s.name != "node" && !s.name.contains('.') && s.roles.contains(&role))
}

/// `60s`, `5m`, `24h`: the largest unit that divides the duration.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `32KiB`, `1GiB`: the largest binary unit that divides the size.
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

impl std::fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Required => f.write_str("required"),
            Unset => f.write_str("unset"),
            Time(d) => write!(f, "`\"{}\"`", format_duration(*d)),
            Bytes(n) => write!(f, "`\"{}\"`", format_size(*n)),
            Int(n) => write!(f, "`{n}`"),
            Bool(b) => write!(f, "`{b}`"),
            Text(t) if t.starts_with(['"', '[']) => write!(f, "`{t}`"),
            Text(t) => f.write_str(t),
        }
    }
}

/// The reference of every section and key, as Markdown.
pub fn reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the declarations in `model/src/schema.rs` by `outpost config reference`; \
         do not edit by hand. `outpost check FILE…` checks files against it.\n\n\
         Sizes are written `\"512MiB\"`, `\"64KiB\"`, `\"1GB\"` or as a number of bytes; durations \
         `\"250ms\"`, `\"30s\"`, `\"5m\"`, `\"1h 30m\"`, `\"7d\"`, at most ten years. Relative paths are relative to the \
         file that names them.\n",
    );
    for (file, title, intro) in [
        (FileKind::Node, "Node files", "One per process: what role it plays and where it listens."),
        (FileKind::Site, "Site files", "One per site: its hosts, its origins and how its objects are cached."),
    ] {
        let _ = write!(out, "\n## {title}\n\n{intro}\n");
        for s in sections(file) {
            let _ = write!(out, "\n### `{}`\n\n", s.header());
            if file == FileKind::Node {
                let roles: Vec<&str> = s.roles.iter().map(|r| r.as_str()).collect();
                let _ = write!(out, "Roles: {}.\n\n", roles.join(", "));
            }
            let _ = writeln!(out, "{}", s.doc);
            if !s.keys.is_empty() {
                out.push('\n');
            }
            for k in s.keys {
                let _ = write!(out, "- **`{}`** ({}; default: {}", k.name, k.kind, k.default);
                if !k.roles.is_empty() && k.roles != s.roles {
                    let roles: Vec<&str> = k.roles.iter().map(|r| r.as_str()).collect();
                    let _ = write!(out, "; {} only", roles.join(", "));
                }
                let _ = writeln!(out, "). {} Example: `{} = {}`", k.doc, k.name, k.example);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
