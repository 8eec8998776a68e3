//! Reading a site file's tables into a [`Site`]: each section's keys,
//! values and the rules between them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The largest body `[compress] max_size` may allow: each representation is
/// made whole in memory.
const MAX_COMPRESS_SIZE: u64 = 256 << 20;

use http::{HeaderName, HeaderValue, Uri};
use toml::Spanned;

use super::*;
use crate::decode::{ByteSize, Decode, Table, Val, parse_str, positive, string};
use crate::diag::{Located, Sink};
use crate::units::{HostPattern, PathPattern};

pub(super) fn decode_site(s: &mut Sink<'_>, root: &mut Table<'_, '_>, base: &Path) -> Option<Site> {
    let mut head = match root.table(s, "site") {
        Some(t) => t,
        None => {
            s.error(&root.span.clone(), "missing table [site] (a site file starts with [site] id = \"…\")");
            return None;
        }
    };
    let id: Option<Spanned<String>> = head.req(s, "id");
    if let Some(id) = &id
        && let Err(msg) = check_site_id(id.get_ref())
    {
        s.error(&id.span(), msg);
    }
    let hosts = decode_hosts(s, &mut head);
    let https_only = head.or(s, "https_only", false);
    let http3 = head.or(s, "http3", false);
    let allow_direct = head.or(s, "allow_direct", true);
    head.finish(s);

    let origin_tables = root.tables(s, "origin");
    if origin_tables.is_empty() {
        s.error(&root.span.clone(), "a site needs at least one [[origin]] with a url");
    }
    let origins: Vec<Origin> = origin_tables.into_iter().filter_map(|mut t| decode_origin(s, &mut t, base)).collect();

    let cache = match root.table(s, "cache") {
        Some(mut t) => decode_cache(s, &mut t),
        None => Some(CacheRules::default()),
    };
    let stale = match root.table(s, "stale") {
        Some(mut t) => decode_stale(s, &mut t),
        None => StalePolicy::default(),
    };
    let tls = root.table(s, "tls").and_then(|mut t| decode_tls(s, &mut t, base, hosts.as_deref()));
    let headers = match root.table(s, "headers") {
        Some(mut t) => decode_header_rules(s, &mut t),
        None => HeaderRules::default(),
    };
    let compress = match root.table(s, "compress") {
        Some(mut t) => decode_compress(s, &mut t),
        None => Compression::default(),
    };
    let early_hints =
        root.tables(s, "early_hints").into_iter().filter_map(|mut t| decode_early_hints(s, &mut t)).collect();
    Some(Site {
        compress,
        early_hints,
        id: id?.into_inner(),
        hosts: hosts?,
        https_only,
        http3,
        allow_direct,
        origins,
        cache: cache?,
        stale,
        tls,
        headers,
    })
}

/// `[tls]`: certificate files, or `acme = true` (which covers exact host
/// names only: HTTP-01 cannot prove a wildcard).
fn decode_tls(
    s: &mut Sink<'_>,
    t: &mut Table<'_, '_>,
    base: &Path,
    hosts: Option<&[Located<HostPattern>]>,
) -> Option<SiteTls> {
    let acme = t.opt::<Spanned<bool>>(s, "acme");
    if let Some(acme) = acme.filter(|a| *a.get_ref()) {
        for key in ["cert", "key"] {
            if let Some(v) = t.opt::<Spanned<String>>(s, key) {
                s.error(
                    &v.span(),
                    format!(
                        "`{key}` and `acme = true` exclude each other: the certificate comes from files or from ACME"
                    ),
                );
            }
        }
        if let Some(wild) = hosts.into_iter().flatten().find(|h| !matches!(h.value, HostPattern::Exact(_))) {
            s.error(
                &acme.span(),
                format!(
                    "ACME proves names by HTTP-01, which cannot cover `{}`; give this site certificate files",
                    wild.value
                ),
            );
        }
        t.finish(s);
        return Some(SiteTls::Acme);
    }
    let mut path =
        |s: &mut Sink<'_>, key| t.req::<Spanned<String>>(s, key).map(|p| s.located(&p.span(), base.join(p.get_ref())));
    let cert = path(s, "cert");
    let key = path(s, "key");
    t.finish(s);
    Some(SiteTls::Files { cert: cert?, key: key? })
}

fn decode_hosts(s: &mut Sink<'_>, head: &mut Table<'_, '_>) -> Option<Vec<Located<HostPattern>>> {
    let raw: Vec<Spanned<String>> = head.req(s, "hosts")?;
    if raw.is_empty() {
        s.error(&head.span_of("hosts"), "a site needs at least one host");
        return None;
    }
    let mut hosts: Vec<Located<HostPattern>> = Vec::new();
    for h in &raw {
        match HostPattern::parse(h.get_ref()) {
            Ok(p) => {
                if let Some(prev) = hosts.iter().find(|q| q.overlaps(&p)) {
                    s.error(&h.span(), format!("host `{p}` overlaps `{}` at {}", prev.value, prev.loc));
                }
                hosts.push(s.located(&h.span(), p));
            }
            Err(msg) => s.error(&h.span(), msg),
        }
    }
    Some(hosts)
}

impl Decode for Uri {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a URL such as \"http://127.0.0.1:9000\"", parse_base_url)
    }
}

fn ttl(s: &mut Sink<'_>, t: &mut Table<'_, '_>, key: &'static str, default: Duration) -> Duration {
    match t.opt::<Spanned<Duration>>(s, key) {
        Some(d) if *d.get_ref() > MAX_TTL => {
            s.error(&d.span(), format!("{key} is out of range: at most 365 days"));
            default
        }
        Some(d) => d.into_inner(),
        None => default,
    }
}

fn decode_origin(s: &mut Sink<'_>, t: &mut Table<'_, '_>, base: &Path) -> Option<Origin> {
    let url: Option<Uri> = t.req(s, "url");
    let ca = t.opt::<Spanned<String>>(s, "ca").map(|p| {
        if url.as_ref().is_some_and(|u| u.scheme_str() != Some("https")) {
            s.error(&p.span(), "origin ca is only used with an https url");
        }
        base.join(p.get_ref())
    });
    let host = t.opt::<Spanned<String>>(s, "host").and_then(|h| match HostPattern::parse(h.get_ref()) {
        Ok(HostPattern::Exact(name)) => Some(name),
        _ => {
            s.error(&h.span(), format!("origin host `{}` must be a plain host name", h.get_ref()));
            None
        }
    });
    let weight = positive(s, t, "weight", 1);
    let connect_timeout = t.or(s, "connect_timeout", DEFAULT_ORIGIN_CONNECT_TIMEOUT);
    let response_timeout = t.or(s, "response_timeout", DEFAULT_ORIGIN_RESPONSE_TIMEOUT);
    for (key, value) in [("connect_timeout", connect_timeout), ("response_timeout", response_timeout)] {
        if value.is_zero() {
            s.error(&t.span_of(key), format!("{key} must be longer than zero: every fetch would time out"));
        }
    }
    let link_timeout = t.or(s, "link_timeout", DEFAULT_ORIGIN_LINK_TIMEOUT);
    if link_timeout < Duration::from_secs(1) {
        s.error(
            &t.span_of("link_timeout"),
            "link_timeout must be at least 1s: shorter gives up on links that only lost a packet",
        );
    }
    let body_min_rate = match t.opt::<Spanned<ByteSize>>(s, "body_min_rate") {
        Some(b) if b.get_ref().0 > MAX_BODY_MIN_RATE => {
            s.error(&b.span(), "body_min_rate must be at most 1GiB (a second)");
            DEFAULT_ORIGIN_BODY_MIN_RATE
        }
        Some(b) => b.get_ref().0,
        None => DEFAULT_ORIGIN_BODY_MIN_RATE,
    };
    let max_connections = positive(s, t, "max_connections", DEFAULT_ORIGIN_MAX_CONNECTIONS);
    let http2 = t.or(s, "http2", true);
    let health = t.table(s, "health").and_then(|mut h| {
        let path: Option<Spanned<String>> = h.req(s, "path");
        let path = path.and_then(|p| {
            if p.get_ref().starts_with('/') {
                Some(p.into_inner())
            } else {
                s.error(&p.span(), "a health-check path starts with `/`");
                None
            }
        });
        let interval = h.or(s, "interval", DEFAULT_HEALTH_INTERVAL);
        let timeout = h.or(s, "timeout", DEFAULT_HEALTH_TIMEOUT);
        let healthy_threshold = positive(s, &mut h, "healthy_threshold", DEFAULT_HEALTHY_THRESHOLD);
        let unhealthy_threshold = positive(s, &mut h, "unhealthy_threshold", DEFAULT_UNHEALTHY_THRESHOLD);
        if interval.is_zero() {
            s.error(&h.span_of("interval"), "interval must be longer than zero");
        }
        if timeout.is_zero() {
            s.error(&h.span_of("timeout"), "timeout must be longer than zero: every check would fail");
        }
        h.finish(s);
        Some(HealthCheck { path: path?, interval, timeout, healthy_threshold, unhealthy_threshold })
    });
    t.finish(s);
    Some(Origin {
        url: url?,
        host,
        weight,
        connect_timeout,
        response_timeout,
        link_timeout,
        body_min_rate,
        max_connections,
        health,
        ca,
        http2,
    })
}

impl Decode for QueryMode {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "\"keep\", \"sort\" or \"ignore\"", |t| match t {
            "keep" => Ok(QueryMode::Keep),
            "sort" => Ok(QueryMode::Sort),
            "ignore" => Ok(QueryMode::Ignore),
            _ => Err(format!("query must be \"keep\", \"sort\" or \"ignore\", found `{t}`")),
        })
    }
}

impl Decode for HeaderName {
    fn decode(s: &mut Sink<'_>, v: &Val<'_>) -> Option<Self> {
        parse_str(s, v, "a header name", |t| {
            HeaderName::from_bytes(t.as_bytes()).map_err(|_| format!("`{t}` is not a valid header name"))
        })
    }
}

fn decode_cache(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> Option<CacheRules> {
    let default_ttl = ttl(s, t, "default_ttl", DEFAULT_TTL);
    let heuristic_max = ttl(s, t, "heuristic_max", DEFAULT_HEURISTIC_MAX);
    let max_object_size = match t.opt::<Spanned<ByteSize>>(s, "max_object_size") {
        Some(b) if b.get_ref().0 == 0 => {
            s.error(&b.span(), "max_object_size must be larger than zero");
            DEFAULT_MAX_OBJECT_SIZE
        }
        Some(b) => b.get_ref().0,
        None => DEFAULT_MAX_OBJECT_SIZE,
    };
    let query = t.or(s, "query", QueryMode::Keep);
    let query_drop: Vec<String> = t.or(s, "query_drop", Vec::new());
    if query == QueryMode::Ignore && !query_drop.is_empty() {
        s.error(&t.span_of("query_drop"), "query_drop has no effect with query = \"ignore\"");
    }
    let key_headers: Vec<Spanned<HeaderName>> = t.or(s, "key_headers", Vec::new());
    for h in &key_headers {
        if h.get_ref() == http::header::HOST {
            s.error(&h.span(), "the host is already in every key (as the site id)");
        }
    }
    let mut status_ttl = BTreeMap::new();
    if let Some(codes) = t.table(s, "status_ttl") {
        for (code, v) in codes.entries() {
            let status = code.get_ref().parse::<u16>().ok().filter(|c| (200..=599).contains(c));
            let Some(status) = status else {
                s.error(&code.span(), format!("`{}` is not an HTTP status code from 200 to 599", code.get_ref()));
                continue;
            };
            if status == 206 || status == 304 {
                // Kept, either would answer every later request for the
                // object with a part of it, or with no body at all.
                s.error(
                    &code.span(),
                    format!("`{status}` answers one request's range or condition; it is never stored as the object"),
                );
                continue;
            }
            match Duration::decode(s, v) {
                Some(d) if d > MAX_TTL => s.error(&v.span(), "TTL is out of range: at most 365 days"),
                Some(d) => {
                    status_ttl.insert(status, d);
                }
                None => {}
            }
        }
    }
    let paths = t
        .tables(s, "path")
        .into_iter()
        .filter_map(|mut p| {
            let pattern = p
                .req::<Spanned<String>>(s, "pattern")
                .and_then(|x| PathPattern::parse(x.get_ref()).map_err(|m| s.error(&x.span(), m)).ok());
            let rule_ttl = if p.has("ttl") { Some(ttl(s, &mut p, "ttl", DEFAULT_TTL)) } else { None };
            let force = p.or(s, "force", false);
            let bypass = p.or(s, "bypass", false);
            if force && rule_ttl.is_none() {
                s.error(&p.span_of("force"), "force = true needs a ttl to force");
            }
            if bypass && (rule_ttl.is_some() || force) {
                s.error(&p.span_of("bypass"), "bypass = true cannot be combined with ttl or force");
            }
            p.finish(s);
            Some(PathRule { pattern: pattern?, ttl: rule_ttl, force, bypass })
        })
        .collect();
    t.finish(s);
    Some(CacheRules {
        default_ttl,
        heuristic_max,
        max_object_size,
        query,
        query_drop,
        key_headers: key_headers.into_iter().map(Spanned::into_inner).collect(),
        status_ttl,
        paths,
    })
}

fn decode_compress(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> Compression {
    let d = Compression::default();
    let codings: Vec<Spanned<String>> = t.or(s, "codings", Vec::new());
    let codings = if t.has("codings") {
        let mut out = Vec::new();
        for c in &codings {
            match crate::coding::Coding::parse(c.get_ref()).filter(|c| *c != crate::coding::Coding::Identity) {
                Some(coding) if out.contains(&coding) => {
                    s.error(&c.span(), format!("`{}` is listed twice", c.get_ref()))
                }
                Some(coding) => out.push(coding),
                None => s.error(
                    &c.span(),
                    format!("`{}` is not a coding Outpost makes: \"br\", \"zstd\" or \"gzip\"", c.get_ref()),
                ),
            }
        }
        out
    } else {
        d.codings
    };
    let types: Vec<Spanned<String>> = t.or(s, "types", Vec::new());
    let types = if t.has("types") {
        let mut out = Vec::new();
        for ty in &types {
            let v = ty.get_ref().trim().to_ascii_lowercase();
            let valid = v.split_once('/').is_some_and(|(a, b)| {
                let token = |x: &str| {
                    !x.is_empty() && x.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(a) && (b == "*" || token(b))
            });
            if valid {
                out.push(v);
            } else {
                s.error(
                    &ty.span(),
                    format!("`{}` is not a media type such as \"text/html\" or \"text/*\"", ty.get_ref()),
                );
            }
        }
        out
    } else {
        d.types
    };
    let size =
        |s: &mut Sink<'_>, t: &mut Table<'_, '_>, key, default| t.opt::<ByteSize>(s, key).map_or(default, |b| b.0);
    let min_size = size(s, t, "min_size", d.min_size);
    let max_size = size(s, t, "max_size", d.max_size);
    if max_size > MAX_COMPRESS_SIZE {
        s.error(
            &t.span_of("max_size"),
            format!("max_size must be at most {} MiB: a representation is made in memory", MAX_COMPRESS_SIZE >> 20),
        );
    }
    if min_size > max_size {
        s.error(&t.span_of("min_size"), "min_size is larger than max_size");
    }
    t.finish(s);
    Compression { codings, types, min_size, max_size }
}

/// `[[early_hints]]`: a path pattern and the `Link` values sent for it.
fn decode_early_hints(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> Option<EarlyHints> {
    let pattern = t
        .req::<Spanned<String>>(s, "pattern")
        .and_then(|x| PathPattern::parse(x.get_ref()).map_err(|m| s.error(&x.span(), m)).ok());
    let raw: Option<Vec<Spanned<String>>> = t.req(s, "link");
    let mut links = Vec::new();
    if let Some(raw) = &raw {
        if raw.is_empty() || raw.len() > MAX_EARLY_HINT_LINKS {
            s.error(&t.span_of("link"), format!("link lists 1 to {MAX_EARLY_HINT_LINKS} values"));
        }
        for v in raw {
            match link_value(v.get_ref()) {
                Ok(value) => links.push(value),
                Err(msg) => s.error(&v.span(), msg),
            }
        }
    }
    t.finish(s);
    (raw.is_some() && !links.is_empty()).then_some(EarlyHints { pattern: pattern?, links })
}

/// A `Link` field value (RFC 8288): `<URI-reference>`, then parameters,
/// in visible ASCII.
fn link_value(text: &str) -> Result<HeaderValue, String> {
    let target = text.trim_start().strip_prefix('<').and_then(|rest| rest.split_once('>'));
    match (target, HeaderValue::from_str(text)) {
        (Some((uri, _)), Ok(value)) if !uri.is_empty() && !uri.contains(['<', ' ']) => Ok(value),
        _ => Err(format!(
            "`{text}` is not a Link value such as \"</app.css>; rel=preload; as=style\" (visible ASCII, the target in angle brackets)"
        )),
    }
}

fn decode_stale(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> StalePolicy {
    let d = StalePolicy::default();
    let policy = StalePolicy {
        while_revalidate: ttl(s, t, "while_revalidate", d.while_revalidate),
        if_error: ttl(s, t, "if_error", d.if_error),
        partition_grace: ttl(s, t, "partition_grace", d.partition_grace),
    };
    t.finish(s);
    policy
}

/// Fields of the message's framing or of one connection, which the node
/// writes itself.
const CONNECTION_FIELDS: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "proxy-connection"];

fn decode_header_rules(s: &mut Sink<'_>, t: &mut Table<'_, '_>) -> HeaderRules {
    let mut rules = HeaderRules::default();
    if let Some(set) = t.table(s, "set") {
        for (name, v) in set.entries() {
            let Ok(n) = HeaderName::from_bytes(name.get_ref().as_bytes()) else {
                s.error(&name.span(), format!("`{}` is not a valid header name", name.get_ref()));
                continue;
            };
            if CONNECTION_FIELDS.contains(&n.as_str()) {
                // The node frames every response itself: a set framing or
                // hop-by-hop field would contradict it.
                s.error(
                    &name.span(),
                    format!("`{n}` frames the response or concerns one connection; it cannot be set"),
                );
                continue;
            }
            if rules.set.iter().any(|(seen, _)| *seen == n) {
                s.error(&name.span(), format!("`{n}` is set twice (names are not case-sensitive)"));
                continue;
            }
            let Some(text) = string(s, v, "a header value") else { continue };
            match HeaderValue::from_str(text) {
                Ok(value) => rules.set.push((n, value)),
                Err(_) => s.error(&v.span(), "header values must be visible ASCII"),
            }
        }
    }
    rules.remove = t.or(s, "remove", Vec::new());
    let forward: Vec<Spanned<HeaderName>> = t.or(s, "forward", Vec::new());
    for name in forward {
        if WITHHELD_REQUEST_HEADERS.contains(&name.get_ref().as_str()) {
            rules.forward.push(name.into_inner());
        } else {
            let msg = format!(
                "`{}` is forwarded anyway; `forward` lists withheld fields: {}",
                name.get_ref(),
                WITHHELD_REQUEST_HEADERS.join(", ")
            );
            s.error(&name.span(), msg);
        }
    }
    t.finish(s);
    rules
}
