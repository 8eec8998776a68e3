//! The benchmarks' load client (`load-tests/bench/compare.py --client`):
//! keep-alive GETs whose response bodies the kernel discards
//! ([`outpost_load::sink`]), one thread, bounded by time.
//!
//!     sink_load [--objects N [--once]] [--header 'NAME: VALUE']... ADDR HOST PATH CONNECTIONS SECONDS [CA_PEM]
//!
//! With `--objects N`, `{n}` in `PATH` stands for a number below `N`,
//! drawn at random for each request; with `--once` as well, each number is
//! asked for once, in a shuffled order, and the load ends when all have
//! been answered (or at SECONDS). Each `--header` adds a field to every
//! request.
//!
//! With `CA_PEM` it speaks HTTPS (TLS 1.3), trusting the certificates in
//! that file for `HOST`, and discards bodies unread there too.
//!
//! Prints what `wrk --latency` prints, in its words, so the bench scripts
//! read either: the latency distribution, requests, req/s and, when there
//! were any, socket errors and responses that were not 2xx or 3xx.

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: sink_load [--objects N [--once]] [--header 'NAME: VALUE']... ADDR HOST PATH CONNECTIONS SECONDS [CA_PEM]";
    let (mut objects, mut once, mut fields, mut args) = (0, false, Vec::new(), Vec::new());
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--objects" => objects = given.next().ok_or("--objects takes a number")?.parse()?,
            "--once" => once = true,
            "--header" => fields.push(given.next().ok_or("--header takes a `NAME: VALUE` field")?),
            _ if arg.starts_with("--") => return Err(format!("{arg}: no such option; {USAGE}").into()),
            _ => args.push(arg),
        }
    }
    let (addr, host, path, conns, secs, ca) = match args.as_slice() {
        [addr, host, path, conns, secs] => (addr, host, path, conns, secs, None),
        [addr, host, path, conns, secs, ca] => (addr, host, path, conns, secs, Some(ca)),
        _ => return Err(USAGE.into()),
    };
    if once && objects == 0 {
        return Err("--once needs --objects".into());
    }
    let ask = outpost_load::sink::Ask { host: host.clone(), path: path.clone(), objects, once, fields };
    let tls = ca.map(|ca| outpost_load::sink::Tls::new(host, std::path::Path::new(ca))).transpose()?;
    let (addr, conns): (std::net::SocketAddr, usize) = (addr.parse()?, conns.parse()?);
    let seconds: u64 = secs.parse()?;
    let started = Instant::now();
    let total = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(outpost_load::sink::load_asking(addr, &ask, tls.as_ref(), conns, Duration::from_secs(seconds)))?;
    let elapsed = started.elapsed().min(Duration::from_secs(seconds)).as_secs_f64();
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("Running {seconds}s test @ {scheme}://{addr}{path}");
    println!("  1 threads and {conns} connections");
    println!("  Latency Distribution");
    for q in [50.0, 75.0, 90.0, 99.0] {
        println!("     {q:.0}%  {:.2}ms", total.latency.value_at_percentile(q) as f64 / 1000.0);
    }
    println!("  {} requests in {elapsed:.2}s, {:.2}MB read", total.done, total.bytes as f64 / (1 << 20) as f64);
    if total.connect_errors + total.read_errors + total.timeouts > 0 {
        println!(
            "  Socket errors: connect {}, read {}, write 0, timeout {}",
            total.connect_errors, total.read_errors, total.timeouts
        );
    }
    if total.non_2xx_3xx > 0 {
        println!("  Non-2xx or 3xx responses: {}", total.non_2xx_3xx);
    }
    println!("Requests/sec: {:.2}", total.done as f64 / elapsed);
    Ok(())
}
