use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;

use outpost_testkit::free_addr;

use crate::topology::Process;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn outpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
}

/// What bash offers after `line` (completing its last word), with the
/// completion script `outpost completions bash` prints loaded.
fn bash_completes(script: &Path, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    // As bash calls it: the command, the word being completed, the one before.
    let n = words.len();
    let program = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
         _outpost outpost '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        n - 1,
        line.len(),
        words[n - 1],
        words[n - 2],
    );
    let out = Command::new("bash").args(["-c", &program]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut offered: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    offered.sort();
    offered
}

#[test]
fn bash_completion_offers_commands_and_options() {
    let dir = outpost_testkit::tempdir();
    let out = outpost().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = dir.path().join("outpost.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    assert_eq!(bash_completes(&script, "outpost pu"), ["purge"]);
    assert_eq!(bash_completes(&script, "outpost s"), ["shield", "sites", "status"]);
    assert_eq!(bash_completes(&script, "outpost sites p"), ["push"]);
    assert_eq!(bash_completes(&script, "outpost purge --s"), ["--site", "--soft"]);
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = outpost().args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && out.stdout.windows(7).any(|w| w == b"outpost"), "{shell}");
    }
    let out = outpost().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_pages_cover_every_command_and_render() {
    let dir = outpost_testkit::tempdir();
    let out = outpost().arg("manpages").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    pages.sort();
    // One per command, nested ones included.
    let help = String::from_utf8_lossy(&outpost().arg("--help").output().unwrap().stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 15, "{help}");
    for c in &commands {
        assert!(pages.contains(&format!("outpost-{c}.1")), "no page for {c}: {pages:?}");
    }
    for page in ["outpost.1", "outpost-sites-push.1", "outpost-pops-drain.1", "outpost-lab-cut.1"] {
        assert!(pages.iter().any(|p| p == page), "{page}: {pages:?}");
    }
    for page in &pages {
        let out = Command::new("man").arg("-l").arg(dir.path().join(page)).env("MANPAGER", "cat").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let name = page.trim_end_matches(".1");
        assert!(out.status.success() && out.stderr.is_empty(), "{page}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("NAME") && text.contains("SYNOPSIS") && text.contains(name), "{page}:\n{text}");
    }
    let edge = Command::new("man").arg("-l").arg(dir.path().join("outpost-edge.1")).env("MANPAGER", "cat").output();
    assert!(String::from_utf8_lossy(&edge.unwrap().stdout).contains("The edge's node file"));
}

#[test]
fn version_names_the_revision_built() {
    let out = outpost().arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(version.starts_with(&format!("outpost {} (", env!("CARGO_PKG_VERSION"))), "{version}");
    let head =
        Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    match head {
        Ok(h) if h.status.success() => {
            let head = String::from_utf8_lossy(&h.stdout).trim().to_string();
            assert!(version.contains(&head), "{version} is not built from {head}");
        }
        // Built outside a checkout: the revision is said to be unknown.
        _ => assert!(version.contains("(unknown)"), "{version}"),
    }
}

#[test]
fn check_accepts_the_example_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
    let out = outpost().arg("check").args(&files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: 9 files (8 nodes, 1 site)"), "{stdout}");
}

#[test]
fn config_reference_prints_the_committed_reference() {
    let out = outpost().args(["config", "reference"]).output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed);
}

#[test]
fn check_reports_every_mistake_with_its_position() {
    let dir = outpost_testkit::tempdir();
    let file = dir.path().join("shop.toml");
    std::fs::write(
        &file,
        "[site]\nid = \"Shop\"\nhosts = [\"shop.test\"]\n\n[[origin]]\nurl = \"http://127.0.0.1:9000\"\n\
         connect_timeout = \"2 parsecs\"\n\n[cache]\nmax_object_size = \"-5MiB\"\n",
    )
    .unwrap();
    let out = outpost().arg("check").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with(file.to_str().unwrap())).collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    let f = file.display();
    assert!(lines[0].starts_with(&format!("{f}:2:6: site id `Shop`")), "{stderr}");
    assert!(lines[1].starts_with(&format!("{f}:7:19: `2 parsecs` is not a duration")), "{stderr}");
    assert!(lines[2].starts_with(&format!("{f}:10:19: a size must not be negative")), "{stderr}");
}

/// `check` refuses node files the node would not start with: a DNS node
/// whose geo-IP database is not there, and an edge whose own sites name a
/// certificate outside the folders it reads them from (the node would
/// serve them without HTTPS).
#[test]
fn check_refuses_what_a_node_would_not_start_with() {
    let dir = outpost_testkit::tempdir();
    let dns = dir.path().join("dns.toml");
    std::fs::write(
        &dns,
        "[node]\nname = \"dns\"\nrole = \"dns\"\n[listen]\ndns = \"127.0.0.1:5353\"\n[dns]\nzone = \"cdn.test.\"\n\
         geoip = \"missing.mmdb\"\ndefault_pop = \"fra\"\n[[dns.pop]]\nname = \"fra\"\nlatitude = 50.1\nlongitude = 8.7\n\
         edges = [\"127.0.0.11\"]\n",
    )
    .unwrap();
    let out = outpost().arg("check").arg(&dns).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}:8:9: file `", dns.display())) && stderr.contains("missing.mmdb"), "{stderr}");

    let (node_dir, elsewhere) = (dir.path().join("node"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&node_dir).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (origin, edge) = (free_addr(), free_addr());
    edge_files(&node_dir, origin, edge, "off", "");
    let site = node_dir.join("site.toml");
    let cert = elsewhere.join("c.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(&site, format!("{text}[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), cert.display()))
        .unwrap();
    let out = outpost().arg("check").arg(node_dir.join("edge.toml")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("outside the folders this node reads site certificates from"), "{stderr}");
    assert!(stderr.contains(&format!("{}:", site.display())), "{stderr}");

    // The node's own [tls] files, there but not usable: the node would
    // not start, so check says so, naming the node file and the key.
    std::fs::write(&site, text).unwrap();
    let junk = node_dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let node_file = node_dir.join("edge.toml");
    let node_text = std::fs::read_to_string(&node_file).unwrap();
    for (tls, what) in [
        ("client_ca = \"junk.pem\"\n", "[tls] client_ca: "),
        ("upstream_ca = \"junk.pem\"\n", "[tls] upstream_ca / upstream_cert: "),
        ("cert = \"junk.pem\"\nkey = \"junk.pem\"\n", "[tls] cert: "),
    ] {
        std::fs::write(&node_file, format!("{node_text}[tls]\n{tls}")).unwrap();
        let out = outpost().arg("check").arg(&node_file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tls}: {stderr}");
        assert!(
            stderr.contains(&format!("{}: {what}", node_file.display())) && stderr.contains("junk.pem"),
            "{stderr}"
        );
    }
}

#[test]
fn up_starts_the_origin_and_stops_cleanly_on_sigterm() {
    let dir = outpost_testkit::tempdir();
    std::fs::write(
        dir.path().join("origin.toml"),
        "[node]\nname = \"origin\"\nrole = \"origin\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let mut child = outpost()
        .args(["up", "--config-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = loop {
        assert!(Instant::now() < deadline, "up printed no origin endpoint");
        let line = lines.next().expect("up exited early").unwrap();
        if let Some(rest) = line.trim().strip_prefix("origin") {
            break rest.split_whitespace().last().unwrap().to_string();
        }
    };
    let addr = endpoint.strip_prefix("http://").unwrap();
    let body = http_get(addr, "/hi?size=10");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.to_ascii_lowercase().contains("content-length: 10\r\n"), "{body}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "up exits 0 after SIGTERM, got {exit}");
}

fn http_get(addr: &str, path: &str) -> String {
    http_get_host(addr, path, "x")
}

/// Writes `site.toml` (site `s`, host `s.test`, in front of `origin`) and
/// `edge.toml` (edge `edge-x` on `edge`, with this access log and extra
/// `[cache]` lines) into `dir`.
fn edge_files(dir: &Path, origin: SocketAddr, edge: SocketAddr, access_log: &str, cache: &str) {
    std::fs::write(
        dir.join("site.toml"),
        format!("[site]\nid = \"s\"\nhosts = [\"s.test\"]\n[[origin]]\nurl = \"http://{origin}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("edge.toml"),
        format!(
            "[node]\nname = \"edge-x\"\nrole = \"edge\"\npop = \"x\"\nlatitude = 1.0\nlongitude = 2.0\nsites = [\"site.toml\"]\n\
             access_log = \"{access_log}\"\n[listen]\nhttp = [\"{edge}\"]\n[cache]\nmemory = \"16MiB\"\n{cache}\n\
             [upstream]\nmode = \"origin\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn an_edge_stopped_with_sigterm_serves_its_old_objects_as_hits() {
    let dir = outpost_testkit::tempdir();
    let (origin_addr, edge_addr) = (free_addr(), free_addr());
    let mut origin =
        outpost().args(["origin", "--listen", &origin_addr.to_string()]).stderr(Stdio::null()).spawn().unwrap();
    edge_files(dir.path(), origin_addr, edge_addr, "off", "disk = \"64MiB\"\npath = \"cache\"");
    let start_edge = || {
        outpost().arg("edge").arg("--config").arg(dir.path().join("edge.toml")).stderr(Stdio::null()).spawn().unwrap()
    };
    let request = |path: &str| {
        wait_for_listener(edge_addr, "the edge");
        http_get_host(&edge_addr.to_string(), path, "s.test")
    };
    let mut edge = start_edge();
    let first = request("/kept?size=2000000&cc=max-age%3D600");
    assert!(first.contains("fwd=uri-miss"), "{}", &first[..first.len().min(400)]);
    let term = |child: &std::process::Child| {
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    };
    term(&edge);
    assert!(edge.wait().unwrap().success(), "the edge exits 0 on SIGTERM");
    let mut edge = start_edge();
    let again = request("/kept?size=2000000&cc=max-age%3D600");
    assert!(again.contains("cache-status: edge-x; hit"), "{}", &again[..again.len().min(400)]);
    term(&edge);
    edge.wait().unwrap();
    origin.kill().unwrap();
    origin.wait().unwrap();
}

/// Rotation as logrotate does it: the file is renamed, SIGHUP makes the
/// edge open a new one at the configured path, nothing is lost or written
/// twice, and the edge goes on serving.
#[test]
fn sighup_reopens_the_access_log_after_rotation() {
    let dir = outpost_testkit::tempdir();
    let (origin_addr, edge_addr) = (free_addr(), free_addr());
    let _origin = Process::spawn(&["origin", "--listen", &origin_addr.to_string()]);
    edge_files(dir.path(), origin_addr, edge_addr, "logs/access.log", "");
    let mut edge = Process::spawn(&["edge", "--config", dir.path().join("edge.toml").to_str().unwrap()]);
    wait_for_listener(edge_addr, "the edge");
    let (log, rotated) = (dir.path().join("logs/access.log"), dir.path().join("logs/access.log.1"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let pid = edge.child.id().to_string();
    let hup = || signal("-HUP", &pid);
    for i in 0..3 {
        http_get_host(&edge_addr.to_string(), &format!("/before{i}"), "s.test");
    }
    wait_until("three lines logged", &|| read(&log).lines().count() == 3);
    std::fs::rename(&log, &rotated).unwrap();
    http_get_host(&edge_addr.to_string(), "/between", "s.test");
    hup();
    wait_until("a new file after SIGHUP", &|| log.exists());
    http_get_host(&edge_addr.to_string(), "/after", "s.test");
    wait_until("the line after rotation", &|| read(&log).contains("/after"));
    let old = read(&rotated);
    assert_eq!(old.lines().count(), 4, "{old}");
    assert!(old.contains("/before2") && old.contains("/between") && !old.contains("/after"), "{old}");
    assert_eq!(read(&log).lines().count(), 1);
    // A SIGHUP without a rotation appends to the same file.
    hup();
    http_get_host(&edge_addr.to_string(), "/again", "s.test");
    wait_until("the line after a second SIGHUP", &|| read(&log).contains("/again"));
    assert_eq!(read(&log).lines().count(), 2);
    assert!(edge.child.try_wait().unwrap().is_none(), "SIGHUP must not end the edge");
    signal("-TERM", &pid);
    assert!(edge.child.wait().unwrap().success());
}

/// SIGHUP reloads the site files of a node without a control plane: a
/// site changed on disk is served as it now reads; one with a mistake is
/// refused with its `file:line:column`, and the sites loaded before keep
/// serving.
#[test]
fn sighup_reloads_the_site_files_and_a_broken_one_changes_nothing() {
    let dir = outpost_testkit::tempdir();
    let (origin_addr, edge_addr) = (free_addr(), free_addr());
    let _origin = Process::spawn(&["origin", "--listen", &origin_addr.to_string()]);
    edge_files(dir.path(), origin_addr, edge_addr, "off", "");
    let log = dir.path().join("edge.log");
    let child = outpost()
        .arg("edge")
        .arg("--config")
        .arg(dir.path().join("edge.toml"))
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut edge = Process::adopt(child);
    wait_for_listener(edge_addr, "the edge");
    let status = |host: &str| {
        let r = http_get_host(&edge_addr.to_string(), "/hello", host);
        r.split(' ').nth(1).unwrap_or_default().to_string()
    };
    let pid = edge.child.id().to_string();
    let hup = || signal("-HUP", &pid);
    assert_eq!((status("s.test").as_str(), status("t.test").as_str()), ("200", "421"));
    let site = dir.path().join("site.toml");
    let text = std::fs::read_to_string(&site).unwrap();
    std::fs::write(&site, text.replace("hosts = [\"s.test\"]", "hosts = [\"s.test\", \"t.test\"]")).unwrap();
    hup();
    wait_until("the new host served", &|| status("t.test") == "200");
    // A mistake on line 3: nothing changes, and the log says where.
    std::fs::write(&site, text.replace("hosts = [\"s.test\"]", "hosts = [\"s.test\"]\nttl = ")).unwrap();
    hup();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the refusal logged", &|| read().contains("the sites were not reloaded"));
    assert!(read().contains("site.toml:4:"), "{}", read());
    assert_eq!((status("s.test").as_str(), status("t.test").as_str()), ("200", "200"), "the old sites serve");
    assert!(edge.child.try_wait().unwrap().is_none(), "a bad reload must not end the edge");
}

/// Sends `signal` (such as `-HUP`) to the process `pid`.
fn signal(signal: &str, pid: &str) {
    assert!(Command::new("kill").args([signal, pid]).status().unwrap().success());
}

/// Waits (at most 10 s) until `f` holds, naming `what` when it never does.
fn wait_until(what: &str, f: &dyn Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get_host(addr: &str, path: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A control plane run as its own process (`outpost control`) on a port of
/// its own, with its files in `dir`.
/// Waits (at most 30 s) until something listens on `addr`.
fn wait_for_listener(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct ControlProcess<'a> {
    dir: &'a Path,
    addr: SocketAddr,
}

impl ControlProcess<'_> {
    fn new(dir: &Path) -> ControlProcess<'_> {
        let addr = free_addr();
        std::fs::write(
            dir.join("control.toml"),
            format!(
                "[node]\nname = \"control\"\nrole = \"control\"\n[listen]\nhttp = [\"{addr}\"]\n\
                 [store]\npath = \"c.redb\"\n[auth]\nadmin_token_file = \"admin.token\"\nnode_token_file = \"node.token\"\n"
            ),
        )
        .unwrap();
        ControlProcess { dir, addr }
    }

    /// Starts the process and waits for its port.
    fn start(&self) -> std::process::Child {
        let child = outpost()
            .arg("control")
            .arg("--config")
            .arg(self.dir.join("control.toml"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_listener(self.addr, "the control plane");
        child
    }

    /// The raw answer to an API call with the admin token.
    fn api(&self, method: &str, path: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let token = std::fs::read_to_string(self.dir.join("admin.token")).unwrap();
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

#[test]
fn a_control_plane_killed_with_sigkill_keeps_what_it_acknowledged() {
    let dir = outpost_testkit::tempdir();
    let cp = ControlProcess::new(dir.path());
    let mut control = cp.start();
    let site = "[site]\nid = \"keep\"\nhosts = [\"keep.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:9\"\n";
    assert!(cp.api("POST", "/v1/sites", site).starts_with("HTTP/1.1 201"));
    assert!(cp.api("POST", "/v1/purge", r#"{"site": "keep", "all": true}"#).starts_with("HTTP/1.1 202"));
    control.kill().unwrap(); // SIGKILL
    control.wait().unwrap();
    let mut control = cp.start();
    let sites = cp.api("GET", "/v1/sites", "");
    assert!(sites.contains("\"id\":\"keep\""), "{sites}");
    let purge = cp.api("GET", "/v1/purges/p1", "");
    assert!(purge.starts_with("HTTP/1.1 200") && purge.contains("\"seq\":2"), "{purge}");
    let health = cp.api("GET", "/healthz", "");
    assert!(health.contains("\"seq\":2"), "the log is whole: {health}");
    control.kill().unwrap();
    control.wait().unwrap();
}

#[test]
fn a_control_plane_process_exports_its_metrics() {
    let dir = outpost_testkit::tempdir();
    let cp = ControlProcess::new(dir.path());
    let mut control = cp.start();
    let site = "[site]\nid = \"m\"\nhosts = [\"m.test\"]\n[[origin]]\nurl = \"http://127.0.0.1:9\"\n";
    assert!(cp.api("POST", "/v1/sites", site).starts_with("HTTP/1.1 201"));
    let metrics = cp.api("GET", "/metrics", "");
    control.kill().unwrap();
    control.wait().unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for want in [
        "outpost_control_last_seq 1",
        "outpost_control_sites 1",
        "outpost_control_nodes{state=\"connected\"} 0",
        "outpost_control_requests_total{route=\"/v1/sites\",status=\"201\"} 1",
    ] {
        assert!(metrics.contains(want), "no `{want}` in:\n{metrics}");
    }
}

#[test]
fn up_ha_without_etcd_says_what_to_install_and_starts_nothing() {
    let dir = outpost_testkit::tempdir();
    let empty = dir.path().join("no-programs");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(
        dir.path().join("origin.toml"),
        "[node]\nname = \"origin\"\nrole = \"origin\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let out = outpost()
        .env("PATH", &empty)
        .args(["up", "--ha", "--config-dir"])
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("install Debian's etcd-server"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("origin"), "nothing started");
}
