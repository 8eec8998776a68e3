//! Size and time of each coding at each level, on the test origin's text:
//! the measurements behind the levels in `outpost_net::coding`.
//!
//! `cargo run --release -p outpost-net --example codings [SIZE_BYTES]`

use std::io::Write;
use std::time::Instant;

fn time(f: impl Fn() -> usize) -> (usize, f64) {
    let start = Instant::now();
    let mut size = 0;
    let mut runs = 0;
    while runs < 3 || start.elapsed().as_millis() < 300 {
        size = f();
        runs += 1;
    }
    (size, start.elapsed().as_secs_f64() * 1000.0 / f64::from(runs))
}

fn main() {
    let size: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100 << 10);
    let text = outpost_load::content::text(outpost_load::content::seed("/bench.txt", 0, &[]), 0, size);
    println!("{size} bytes of text");
    println!("{:<6} {:>5} {:>9} {:>7} {:>9}", "coding", "level", "bytes", "ratio", "ms");
    let row = |name: &str, level: i64, (bytes, ms): (usize, f64)| {
        println!("{name:<6} {level:>5} {bytes:>9} {:>7.2} {ms:>9.3}", size as f64 / bytes as f64);
    };
    for q in [1, 4, 5, 6, 7, 9, 11] {
        row(
            "br",
            q,
            time(|| {
                let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, q as u32, 22);
                let _ = e.write_all(&text);
                e.into_inner().len()
            }),
        );
    }
    for l in [1, 3, 6, 9, 12, 19] {
        row("zstd", l, time(|| zstd::bulk::compress(&text, l as i32).map_or(0, |v| v.len())));
    }
    for l in [1, 6, 9] {
        row(
            "gzip",
            l,
            time(|| {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(l as u32));
                let _ = e.write_all(&text);
                e.finish().map_or(0, |v| v.len())
            }),
        );
    }
}
