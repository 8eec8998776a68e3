//! Response bytes sent from a file by the kernel (`sendfile(2)`), without a
//! copy through user space, on cleartext HTTP/1 connections.
//!
//! hyper writes a response body from `Bytes` frames. A body whose bytes are
//! in a file gives hyper a *stand-in* frame instead: a slice of
//! [`STAND_IN`], a static region no other `Bytes` points into, as long as
//! the file range, queued on the connection when the frame is made. When the
//! connection's writer meets stand-in bytes at the head of a write, it sends
//! the queued range from the file in their place.
//!
//! This holds because hyper, told to write vectored ([`crate::conn`] sets
//! it), queues body frames without copying them and writes them in order,
//! and because bodies make their frames in the order they are written:
//! the queue's head is then always the range the stand-in at the head of a
//! write stands for. Each frame of a connection starts at the next of
//! [`MARKS`] places in [`STAND_IN`], so a frame names its range. Stand-in
//! bytes themselves are never written: a stand-in with no range queued,
//! that starts where another range's does, or whose length does not match
//! the range left, fails the connection instead of sending another range's
//! bytes.
//!
//! Only cleartext HTTP/1 requests get a [`SendFile`] (an extension of the
//! request); TLS and HTTP/2 write every byte themselves.
//!
//! A range of a file on the disk ([`SendFile::disk_frame`]) may not be in
//! the page cache, and a `sendfile` that has to wait for the disk blocks the
//! runtime thread that makes it, with every connection on it. So before its
//! first send the writer asks the kernel, without waiting, for the range's
//! first byte (`preadv2` with `RWF_NOWAIT`). When that byte is not in
//! memory, the blocking pool loads the range into the page cache first
//! (`load`), and the send waits for that as it would for a slow client. The
//! first byte stands for the range: a file the page cache holds in part,
//! beyond its first page, still blocks while the rest is read. A body read
//! into memory instead (TLS, HTTP/2) asks [`cached`] the same question
//! before its read.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use metrics::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Longest range one stand-in frame covers.
pub const MAX_RANGE: usize = 1 << 20;

/// How many places a stand-in frame may start at: consecutive frames of a
/// connection start at consecutive places, so that each frame names the
/// range it stands for.
const MARKS: usize = 4096;

/// Never written, never read: its address marks stand-in frames. Zeroed,
/// so it takes no room in the binary.
static STAND_IN: [u8; MAX_RANGE + MARKS] = [0; MAX_RANGE + MARKS];

/// Where in [`STAND_IN`] this slice starts, when it points into it.
fn stand_in_at(buf: &[u8]) -> Option<usize> {
    let (at, base) = (buf.as_ptr() as usize, STAND_IN.as_ptr() as usize);
    (!buf.is_empty() && at >= base && at < base + STAND_IN.len()).then(|| at - base)
}

/// Does this slice point into [`STAND_IN`]?
pub(crate) fn is_stand_in(buf: &[u8]) -> bool {
    stand_in_at(buf).is_some()
}

/// A file ranges are sent from, told when it holds fewer bytes than a
/// range sent from it.
pub trait SendSource: AsFd + Send + Sync {
    /// The file ended before a range sent from it did: it was cut short
    /// since the range was taken, and what it holds is no longer whole.
    fn cut_short(&self) {}
}

impl SendSource for std::fs::File {}

/// A file whose ranges can be sent: held until its last range is sent.
pub type SharedFile = Arc<dyn SendSource>;

/// A file range waiting to be sent.
struct Pending {
    file: SharedFile,
    offset: u64,
    left: usize,
    /// Where in [`STAND_IN`] the stand-in for the range's next byte is.
    mark: usize,
    residency: Residency,
}

/// Whether a range's bytes are in memory, for all the writer knows.
enum Residency {
    /// In memory (a memfd), or found in the page cache.
    Memory,
    /// In a file on the disk, not yet asked about.
    Unknown,
    /// Being read into the page cache on the blocking pool.
    Loading(tokio::task::JoinHandle<()>),
}

/// Bytes sent from files, by every connection of the process.
static SENT: LazyLock<Counter> = LazyLock::new(|| metrics::counter!("outpost_sendfile_bytes_total"));

/// File ranges read into the page cache on the blocking pool before their
/// send, because their first byte was not in memory.
static COLD: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!("outpost_cold_file_ranges_total", "path" => "sendfile"));

/// Is the byte at `offset` of `file` in memory? Asked without waiting for
/// the disk; a no also starts the kernel reading ahead from there, so the
/// disk is already busy when the blocking pool asks for the range. (That
/// read is started inside the call: on a fast disk it now and then ends
/// before the kernel looks at the page, and the answer is yes. The byte
/// is in memory by then, so the answer holds; only the wait for it fell
/// on the caller's thread.) A file
/// system that cannot answer is taken to say yes: the send then behaves as
/// it did before the question was asked.
pub fn cached(file: &dyn AsFd, offset: u64) -> bool {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut byte = [0u8; 1];
    !matches!(preadv2(file, &mut [io::IoSliceMut::new(&mut byte)], offset, ReadWriteFlags::NOWAIT), Err(Errno::AGAIN))
}

/// Reads `len` bytes of `file` from `offset` into the page cache: sent to
/// `/dev/null` by the kernel, which fills the cache without a copy into
/// user space. Blocks until the disk has answered: call it off the
/// runtime's threads. Errors are left for the send or read that follows to
/// meet (it then waits for the disk itself).
pub fn load(file: &dyn AsFd, mut offset: u64, mut len: usize) {
    static NULL: LazyLock<Option<std::fs::File>> =
        LazyLock::new(|| std::fs::File::options().write(true).open("/dev/null").ok());
    let Some(null) = &*NULL else { return };
    while len > 0 {
        match rustix::fs::sendfile(null, file, Some(&mut offset), len) {
            Ok(0) | Err(_) => return,
            Ok(n) => len -= n,
        }
    }
}

impl Pending {
    /// Ready once the range can be sent without waiting for the disk: at
    /// once for memory and for a range whose first byte is cached; after a
    /// read on the blocking pool otherwise.
    fn poll_in_memory(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.residency {
                Residency::Memory => return Poll::Ready(()),
                Residency::Unknown if cached(&*self.file, self.offset) => self.residency = Residency::Memory,
                Residency::Unknown => {
                    COLD.increment(1);
                    let (file, offset, len) = (Arc::clone(&self.file), self.offset, self.left);
                    self.residency = Residency::Loading(tokio::task::spawn_blocking(move || load(&*file, offset, len)));
                }
                Residency::Loading(read) => {
                    // A read that panicked or was cancelled loaded nothing;
                    // the send then waits for the disk itself.
                    let _ = std::task::ready!(Pin::new(read).poll(cx));
                    self.residency = Residency::Memory;
                }
            }
        }
    }
}

/// The file ranges a connection has been handed, in body order. Locked by
/// the body when it makes a frame and by the writer when it sends, both on
/// the connection's own task: never contended.
#[derive(Default)]
pub(crate) struct FileQueue {
    ranges: Mutex<VecDeque<Pending>>,
    /// Frames made so far: the next one starts at this place (modulo
    /// [`MARKS`]) in [`STAND_IN`].
    made: std::sync::atomic::AtomicUsize,
}

/// Lets a response body on a cleartext HTTP/1 connection have bytes sent
/// straight from a file. Found in the request's extensions.
#[derive(Debug, Clone)]
pub struct SendFile {
    queue: Arc<FileQueue>,
}

impl SendFile {
    pub(crate) fn new(queue: Arc<FileQueue>) -> SendFile {
        SendFile { queue }
    }

    /// A body frame standing for `len` bytes of `file` from `offset`,
    /// which the connection sends from the file. Make it when the body is
    /// polled for it, not before: frames must be made in the order they are
    /// written. `len` is at most [`MAX_RANGE`] and the range must lie inside
    /// a file that does not change (a sealed memfd, a file renamed into
    /// place), or the client gets what the file holds when it is sent.
    pub fn frame(&self, file: &SharedFile, offset: u64, len: usize) -> Bytes {
        self.queue_frame(file, offset, len, Residency::Memory)
    }

    /// [`SendFile::frame`] for a file on the disk, whose pages the page
    /// cache may not hold: the range is read off the runtime's threads
    /// first when its first byte is not in memory.
    pub fn disk_frame(&self, file: &SharedFile, offset: u64, len: usize) -> Bytes {
        self.queue_frame(file, offset, len, Residency::Unknown)
    }

    fn queue_frame(&self, file: &SharedFile, offset: u64, len: usize, residency: Residency) -> Bytes {
        assert!(len <= MAX_RANGE, "a stand-in frame covers at most {MAX_RANGE} bytes");
        if len == 0 {
            return Bytes::new();
        }
        let mark = self.queue.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % MARKS;
        let mut q = self.queue.ranges.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(Pending { file: Arc::clone(file), offset, left: len, mark, residency });
        Bytes::from_static(&STAND_IN[mark..mark + len])
    }
}

impl std::fmt::Debug for FileQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued = self.ranges.lock().map_or(0, |q| q.len());
        f.debug_struct("FileQueue").field("queued", &queued).finish()
    }
}

fn out_of_step(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("file range out of step with the response: {what}"))
}

impl FileQueue {
    /// Sends from the queue's head range the bytes `stand_in`, at the head
    /// of a write, stands for: it must be that range's, by where it starts
    /// in [`STAND_IN`] and by its length.
    pub(crate) fn poll_send(&self, tcp: &TcpStream, cx: &mut Context<'_>, stand_in: &[u8]) -> Poll<io::Result<usize>> {
        let mut q = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = q.front_mut() else { return Poll::Ready(Err(out_of_step("nothing queued"))) };
        if stand_in_at(stand_in) != Some(p.mark) {
            return Poll::Ready(Err(out_of_step("the frame stands for another range")));
        }
        if p.left != stand_in.len() {
            return Poll::Ready(Err(out_of_step("lengths differ")));
        }
        std::task::ready!(p.poll_in_memory(cx));
        let n = loop {
            std::task::ready!(tcp.poll_write_ready(cx))?;
            let mut at = p.offset;
            match tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(tcp, &*p.file, Some(&mut at), p.left).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    p.file.cut_short();
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "file shorter than its range")));
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
        p.offset += n as u64;
        p.mark += n;
        p.left -= n;
        if p.left == 0 {
            q.pop_front();
        }
        SENT.increment(n as u64);
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stand_in_frames_are_recognised() {
        let tx = SendFile::new(Arc::default());
        let file: SharedFile = Arc::new(tempfile_with(b"0123456789"));
        let frame = tx.frame(&file, 2, 5);
        assert_eq!(frame.len(), 5);
        assert!(is_stand_in(&frame));
        assert!(is_stand_in(&frame[4..]));
        assert!(!is_stand_in(&frame[5..]), "an empty slice stands for nothing");
        let zeros = Bytes::from(vec![0u8; 5]);
        assert!(!is_stand_in(&zeros), "zeros elsewhere are data");
        assert!(!is_stand_in(b"hello"));
        assert_eq!(tx.queue.ranges.lock().unwrap().len(), 1);
        assert!(tx.frame(&file, 0, 0).is_empty());
        assert_eq!(tx.queue.ranges.lock().unwrap().len(), 1, "an empty frame queues nothing");
    }

    /// A file on the disk that is not in the page cache: written with
    /// `O_DIRECT`, which bypasses the cache, so that no page of it can be
    /// left behind (telling the kernel to drop pages is only advice, and
    /// it may keep one still queued for its lists); then told to drop its
    /// pages, for a file system that takes `O_DIRECT` and caches anyway or
    /// refuses it. (On tmpfs, whose pages are the file, nothing is cold.)
    fn evicted_file(len: usize) -> (std::path::PathBuf, std::fs::File) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let page = 4096;
        assert_eq!(len % page, 0, "O_DIRECT writes whole pages");
        let path = std::env::temp_dir().join(format!("outpost-cold-{}-{len}", std::process::id()));
        let open = || std::fs::File::options().create(true).truncate(true).read(true).write(true).clone();
        let direct = open().custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32).open(&path);
        let f = match direct {
            Ok(mut direct) => {
                // O_DIRECT wants its buffer aligned too: a page-aligned
                // window of a larger buffer.
                let buf = vec![7u8; len + page];
                let at = buf.as_ptr().align_offset(page);
                direct.write_all(&buf[at..at + len]).unwrap();
                std::fs::File::open(&path).unwrap()
            }
            Err(_) => {
                let mut f = open().open(&path).unwrap();
                f.write_all(&vec![7u8; len]).unwrap();
                f
            }
        };
        // Some file systems take O_DIRECT and write through the cache all
        // the same: dropped after, whichever way it was written.
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        (path, f)
    }

    /// How many fresh cold files a test may take before one is found cold:
    /// the question itself starts the kernel reading ahead, and on a fast
    /// disk that read now and then finishes before the kernel looks at the
    /// page (a few asks in a thousand here). The answer is then yes, and
    /// true: the byte is in memory, read while the call was made.
    const COLD_TRIES: usize = 5;

    #[test]
    fn a_file_the_page_cache_let_go_of_is_cold_until_loaded() {
        let len = 300 << 10;
        let cold = (0..COLD_TRIES).find_map(|_| {
            let (path, f) = evicted_file(len);
            // The last byte first: asking starts the kernel reading ahead
            // from where it is asked, which would warm what follows.
            if cached(&f, len as u64 - 1) || cached(&f, 0) {
                std::fs::remove_file(&path).unwrap();
                return None;
            }
            Some((path, f))
        });
        let (path, f) = cold.expect("a synced file dropped from the page cache reads as cold");
        load(&f, 0, len);
        let warm = (cached(&f, 0), cached(&f, len as u64 - 1));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(warm, (true, true), "a loaded range reads as cached, first byte to last");
        assert!(cached(&tempfile_with(b"0123456789"), 3), "a memfd is memory");
    }

    #[tokio::test]
    async fn a_cold_range_is_sent_whole() {
        use tokio::io::AsyncReadExt;
        let len = 600 << 10;
        for _ in 0..COLD_TRIES {
            let (path, f) = evicted_file(len);
            let file: SharedFile = Arc::new(f);
            let queue = Arc::new(FileQueue::default());
            let frame = SendFile::new(Arc::clone(&queue)).disk_frame(&file, 100, len - 200);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                let mut client = client;
                client.read_to_end(&mut got).await.unwrap();
                got
            });
            // The first ask finds the range cold and has it read in first
            // (unless the ask's own read-ahead won: another file).
            let first = std::future::poll_fn(|cx| Poll::Ready(queue.poll_send(&server, cx, &frame))).await;
            if !first.is_pending() {
                std::fs::remove_file(&path).unwrap();
                continue;
            }
            let loading =
                matches!(queue.ranges.lock().unwrap().front().map(|p| &p.residency), Some(Residency::Loading(_)));
            assert!(loading, "the range is being read into the page cache");
            // What is left of the frame after each send, as hyper advances it.
            let mut sent = 0;
            while sent < frame.len() {
                sent += std::future::poll_fn(|cx| queue.poll_send(&server, cx, &frame[sent..])).await.unwrap();
            }
            drop(server);
            let got = reader.await.unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(got.len(), len - 200);
            assert!(got.iter().all(|&b| b == 7), "the file's bytes, whole");
            assert!(queue.ranges.lock().unwrap().is_empty(), "the range is done");
            return;
        }
        panic!("a cold range waits for its read: none of {COLD_TRIES} cold files did");
    }

    #[tokio::test]
    async fn a_frame_sent_out_of_turn_fails_rather_than_sending_another_range() {
        let file: SharedFile = Arc::new(tempfile_with(b"aaaaabbbbb"));
        let queue = Arc::new(FileQueue::default());
        let tx = SendFile::new(Arc::clone(&queue));
        // Two ranges of one length: only where a frame starts tells them apart.
        let (first, second) = (tx.frame(&file, 0, 5), tx.frame(&file, 5, 5));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let send = |frame: &[u8]| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            queue.poll_send(&server, &mut cx, frame)
        };
        let Poll::Ready(Err(e)) = send(&second) else { panic!("the second frame was sent first") };
        assert!(e.to_string().contains("another range"), "{e}");
        assert!(matches!(send(&first[..4]), Poll::Ready(Err(_))), "a frame's length must be the range's");
        // In turn, and a frame advanced past what was sent, both go.
        assert!(matches!(send(&first), Poll::Ready(Ok(5))));
        assert!(matches!(send(&second[2..]), Poll::Ready(Err(_))), "not past bytes unsent");
        assert!(matches!(send(&second), Poll::Ready(Ok(5))));
        assert!(queue.ranges.lock().unwrap().is_empty());
    }

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        use std::io::Write;
        let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(data).unwrap();
        f
    }
}
