//! Site-file tests: defaults, every field, and each kind of mistake.

use super::*;

const MINIMAL: &str = r#"
[site]
id = "shop"
hosts = ["shop.test"]

[[origin]]
url = "http://127.0.0.1:9000"
"#;

fn errors(text: &str) -> Vec<String> {
    match Site::from_str(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_site_gets_documented_defaults() {
    let site: Site = MINIMAL.parse().unwrap();
    assert_eq!(site.id, "shop");
    assert!(site.serves("shop.test") && !site.serves("other.test"));
    assert_eq!(site.cache.default_ttl, DEFAULT_TTL);
    assert_eq!(site.cache.query, QueryMode::Keep);
    assert_eq!(site.stale, StalePolicy::default());
    assert_eq!(site.origins[0].connect_timeout, DEFAULT_ORIGIN_CONNECT_TIMEOUT);
    assert_eq!(site.origins[0].link_timeout, DEFAULT_ORIGIN_LINK_TIMEOUT);
    assert_eq!(site.origins[0].body_min_rate, DEFAULT_ORIGIN_BODY_MIN_RATE);
    assert_eq!(site.origins[0].url.port_u16(), Some(9000));
    assert!(site.allow_direct && !site.https_only && site.tls.is_none());
}

/// Values that would time every fetch out, panic a clock, claim a whole
/// top-level domain, hold a huge body in memory or send a header twice.
#[test]
fn values_that_would_break_serving_are_refused_where_they_are() {
    let origin = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000\"",
        "url = \"http://127.0.0.1:9000\"\nconnect_timeout = \"0s\"\nresponse_timeout = \"99999999999999s\"\n\
         [origin.health]\npath = \"/h\"\ntimeout = \"0s\"",
    );
    let e = errors(&origin);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].contains("connect_timeout must be longer than zero") && e[0].contains(":8:"), "{e:?}");
    assert!(e[1].contains("ten years") && e[2].contains("timeout must be longer than zero"), "{e:?}");
    let e = errors(
        &MINIMAL
            .replace("url = \"http://127.0.0.1:9000\"", "url = \"http://127.0.0.1:9000\"\nbody_min_rate = \"2GiB\""),
    );
    assert!(e.len() == 1 && e[0].contains("body_min_rate must be at most 1GiB") && e[0].contains(":8:17:"), "{e:?}");
    let e = errors(&MINIMAL.replace("hosts = [\"shop.test\"]", "hosts = [\"*.com\"]"));
    assert!(e.len() == 1 && e[0].contains("top-level domain"), "{e:?}");
    let e = errors(&format!("{MINIMAL}\n[compress]\nmax_size = \"1TiB\"\n"));
    assert!(e.len() == 1 && e[0].contains("at most 256 MiB"), "{e:?}");
    let e = errors(&format!(
        "{MINIMAL}\n[headers.set]\n\"X-Frame-Options\" = \"DENY\"\n\"x-frame-options\" = \"SAMEORIGIN\"\n"
    ));
    assert!(e.len() == 1 && e[0].contains("set twice") && e[0].contains(":11:1:"), "{e:?}");
}

#[test]
fn full_site_reads_every_field() {
    let site: Site = r#"
[site]
id = "full-1"
hosts = ["www.full.test", "*.cdn.full.test"]
https_only = true
allow_direct = false

[[origin]]
url = "https://origin-a.full.test:8443"
host = "www.full.test"
weight = 3
connect_timeout = "500ms"
response_timeout = "10s"
link_timeout = "4s"
body_min_rate = "0B"
max_connections = 8
[origin.health]
path = "/health"
interval = "2s"
unhealthy_threshold = 2

[[origin]]
url = "http://[::1]:9001"

[cache]
default_ttl = "5m"
max_object_size = "2GiB"
query = "sort"
query_drop = ["utm_source"]
key_headers = ["Accept-Language"]
status_ttl = { 404 = "10s", 301 = "1h" }

[[cache.path]]
pattern = "/static/*"
ttl = "7d"
force = true

[[cache.path]]
pattern = "/api/*"
bypass = true

[stale]
while_revalidate = "30s"
if_error = "1h"
partition_grace = "10m"

[headers]
set = { "x-served-by" = "outpost" }
remove = ["x-powered-by"]
forward = ["X-Forwarded-Host"]
"#
    .parse()
    .unwrap();
    assert_eq!(site.hosts.len(), 2);
    assert!(site.serves("a.cdn.full.test"));
    assert!(site.https_only && !site.allow_direct);
    assert_eq!(site.origins.len(), 2);
    let a = &site.origins[0];
    assert_eq!((a.weight, a.max_connections, a.host.as_deref()), (3, 8, Some("www.full.test")));
    assert_eq!(a.connect_timeout, Duration::from_millis(500));
    assert_eq!(a.link_timeout, Duration::from_secs(4));
    assert_eq!(a.body_min_rate, 0);
    let h = a.health.as_ref().unwrap();
    assert_eq!(
        (h.path.as_str(), h.interval, h.unhealthy_threshold, h.healthy_threshold),
        ("/health", Duration::from_secs(2), 2, 2)
    );
    assert_eq!(site.cache.max_object_size, 2 << 30);
    assert_eq!(site.cache.query, QueryMode::Sort);
    assert_eq!(site.cache.key_headers, vec![HeaderName::from_static("accept-language")]);
    assert_eq!(site.cache.status_ttl[&404], Duration::from_secs(10));
    assert_eq!(site.cache.paths.len(), 2);
    assert!(site.cache.paths[0].force && site.cache.paths[1].bypass);
    assert!(site.cache.paths[0].pattern.matches("/static/app.js"));
    assert_eq!(site.stale.partition_grace, Duration::from_secs(600));
    assert_eq!(site.headers.set[0].0, "x-served-by");
    assert_eq!(site.headers.remove, vec![HeaderName::from_static("x-powered-by")]);
    assert_eq!(site.headers.forward, vec![HeaderName::from_static("x-forwarded-host")]);
}

#[test]
fn three_mistakes_give_three_located_errors() {
    let e = errors(
        "[site]\nid = \"Bad_Id\"\nhosts = [\"a.test\"]\n\n[[origin]]\nurl = \"ftp://x\"\n\n[cache]\ndefault_ttl = \"soon\"\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert_eq!(e[0], "<inline>:2:6: site id `Bad_Id` must be 1 to 63 lower-case letters, digits or inner hyphens");
    assert_eq!(e[1], "<inline>:6:7: `ftp://x` must start with http:// or https://");
    assert!(e[2].starts_with("<inline>:9:15: `soon` is not a duration such as \"30s\""), "{e:?}");
}

#[test]
fn bad_values_are_rejected() {
    let with = |extra: &str| errors(&format!("{MINIMAL}{extra}"));
    assert!(with("[cache]\nmax_object_size = \"-1MiB\"")[0].contains("must not be negative"));
    assert!(with("[cache]\nmax_object_size = -1")[0].contains("must not be negative"));
    assert!(with("[cache]\ndefault_ttl = \"400d\"")[0].contains("out of range"));
    assert!(with("[cache]\nstatus_ttl = { 99 = \"1s\" }")[0].contains("not an HTTP status code"));
    for partial in ["206", "304"] {
        let errors = with(&format!("[cache]\nstatus_ttl = {{ {partial} = \"1h\" }}"));
        assert!(errors[0].contains("never stored as the object"), "{partial}: {errors:?}");
    }
    assert!(with("[cache]\nquery = \"shuffle\"")[0].contains("query must be"));
    assert!(with("[cache]\nquery = \"ignore\"\nquery_drop = [\"a\"]")[0].contains("no effect"));
    assert!(with("[cache]\nkey_headers = [\"host\"]")[0].contains("already in every key"));
    assert!(with("[[cache.path]]\npattern = \"/a/*\"\nforce = true")[0].contains("needs a ttl"));
    assert!(with("[stale]\nif_error = \"forever\"")[0].contains("not a duration"));
    let short = errors(
        "[site]\nid = \"a\"\nhosts = [\"a.test\"]\n[[origin]]\nurl = \"http://o.test:1\"\nlink_timeout = \"200ms\"\n",
    );
    assert_eq!(short.len(), 1, "{short:?}");
    assert!(short[0].starts_with("<inline>:6:16: link_timeout must be at least 1s"), "{short:?}");
    assert_eq!(with("[tls]\ncert = \"site.pem\"").len(), 1, "a certificate needs its key");
    assert!(with("[cache]\ndefualt_ttl = \"1s\"")[0].contains("did you mean `default_ttl`"));
    assert!(with("[headers]\nset = { \"bad header\" = \"x\" }")[0].contains("not a valid header name"));
    assert!(with("[headers]\nforward = [\"accept\"]")[0].contains("forwarded anyway"));
    for name in ["Transfer-Encoding", "content-length", "connection", "upgrade"] {
        let e = with(&format!("[headers]\nset = {{ \"{name}\" = \"gzip\" }}"));
        assert!(e[0].contains("cannot be set"), "{name}: {e:?}");
    }
}

#[test]
fn overlapping_hosts_in_one_site_are_rejected() {
    let e =
        errors("[site]\nid = \"a\"\nhosts = [\"*.a.test\", \"x.a.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:1\"\n");
    assert_eq!(e, ["<inline>:3:22: host `x.a.test` overlaps `*.a.test` at <inline>:3:10"]);
}

#[test]
fn structure_errors() {
    assert!(errors("")[0].contains("missing table [site]"));
    let e = errors("[site]\nid = \"a\"\nhosts = []\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e.iter().any(|m| m.contains("at least one host")));
    assert!(e.iter().any(|m| m.contains("at least one [[origin]]")));
    assert!(errors(&format!("{MINIMAL}[[origin]]\nurl = \"http://h:1/path\""))[0].contains("must not have a path"));
    assert!(errors(&format!("{MINIMAL}bogus = 1"))[0].contains("unknown key `bogus` in [[origin]]"));
}

#[test]
fn syntax_errors_carry_their_position() {
    let e = errors("[site]\nid = \"a\nhosts = [\"a.test\"]\n");
    assert!(e.iter().any(|m| m.starts_with("<inline>:2:8: invalid basic string")), "{e:?}");
}

#[test]
fn acme_replaces_certificate_files_for_exact_hosts_only() {
    let site: Site = format!("{MINIMAL}[tls]\nacme = true\n").parse().unwrap();
    assert_eq!(site.tls, Some(SiteTls::Acme));
    let both = errors(&format!("{MINIMAL}[tls]\nacme = true\ncert = \"a.pem\"\nkey = \"a.key\"\n"));
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both[0].contains("10:8") && both[0].contains("exclude each other"), "{both:?}");
    let wild =
        errors(&(MINIMAL.replace("[\"shop.test\"]", "[\"shop.test\", \"*.shop.test\"]") + "[tls]\nacme = true\n"));
    assert!(wild[0].contains("9:8") && wild[0].contains("cannot cover `*.shop.test`"), "{wild:?}");
    let off = errors(&format!("{MINIMAL}[tls]\nacme = false\n"));
    assert!(off.iter().any(|e| e.contains("cert")), "acme = false still needs files: {off:?}");
}

#[test]
fn compression_covers_media_types_by_name_or_top_level_type() {
    let c = Compression::default();
    assert!(c.covers("Text/HTML; charset=utf-8"), "a top-level wildcard, any case, parameters ignored");
    assert!(c.covers(" application/json "));
    assert!(!c.covers("application/json-seq"), "a name is matched whole");
    assert!(!c.covers("image/png"));
    assert!(!c.covers("application/octet-stream"));
    assert!(!c.covers("text"), "no top-level type without a subtype");
    assert!(!c.covers(""));
    assert!(c.covers("  text/plain ;q"), "space around it");
    assert!(!c.covers("text;charset=x/y"), "a slash among the parameters is not the type's");
    assert!(!c.covers("/plain") && !c.covers("textual/plain"));
    let only = Compression { types: vec!["image/*".into()], ..Compression::default() };
    assert!(only.covers("image/svg+xml") && !only.covers("text/html"));
}

#[test]
fn early_hints_are_read_in_order_and_bad_links_are_located() {
    let site: Site = format!(
        "{MINIMAL}[[early_hints]]\npattern = \"/shop/*\"\nlink = [\"</shop.css>; rel=preload; as=style\", \
         \"<https://img.shop.test>; rel=preconnect\"]\n[[early_hints]]\npattern = \"/\"\nlink = [\"</home.css>; rel=preload\"]\n"
    )
    .parse()
    .unwrap();
    assert_eq!(site.early_hints.len(), 2);
    assert!(site.early_hints[0].pattern.matches("/shop/cart") && !site.early_hints[0].pattern.matches("/"));
    assert_eq!(site.early_hints[0].links[1], "<https://img.shop.test>; rel=preconnect");
    assert!(MINIMAL.parse::<Site>().unwrap().early_hints.is_empty());

    let with = |extra: &str| errors(&format!("{MINIMAL}[[early_hints]]\n{extra}"));
    let e = with("pattern = \"/\"\nlink = [\"</a.css>; rel=preload\", \"/b.css; rel=preload\"]");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("<inline>:10:34: `/b.css; rel=preload` is not a Link value"), "{e:?}");
    assert!(with("pattern = \"/\"\nlink = [\"</a.css>\\r\\nset-cookie: x=1\"]")[0].contains("is not a Link value"));
    assert!(with("pattern = \"/\"\nlink = [\"<>; rel=preload\"]")[0].contains("is not a Link value"));
    assert!(with("pattern = \"/\"\nlink = []")[0].contains("1 to 32 values"));
    assert!(with("pattern = \"shop\"\nlink = [\"</a.css>\"]")[0].contains("must start with `/`"));
    assert!(with("link = [\"</a.css>\"]")[0].contains("pattern"));
}
