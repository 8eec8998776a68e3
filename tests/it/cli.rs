use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn outpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
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
fn check_reports_every_mistake_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
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

#[test]
fn up_starts_the_origin_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
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
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
