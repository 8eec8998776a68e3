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
//! it), queues body frames without copying them and writes them in order:
//! the queue's head is always the range the stand-in at the head of a write
//! stands for. Stand-in bytes themselves are never written: a stand-in with
//! no range queued, or whose length does not match the range left, fails
//! the connection instead.
//!
//! Only cleartext HTTP/1 requests get a [`SendFile`] (an extension of the
//! request); TLS and HTTP/2 write every byte themselves.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use metrics::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Longest range one stand-in frame covers.
pub const MAX_RANGE: usize = 1 << 20;

/// Never written, never read: its address marks stand-in frames. Zeroed,
/// so it takes no room in the binary.
static STAND_IN: [u8; MAX_RANGE] = [0; MAX_RANGE];

/// Does this slice point into [`STAND_IN`]?
pub(crate) fn is_stand_in(buf: &[u8]) -> bool {
    let (at, base) = (buf.as_ptr() as usize, STAND_IN.as_ptr() as usize);
    !buf.is_empty() && at >= base && at < base + MAX_RANGE
}

/// A file whose ranges can be sent: held until its last range is sent.
pub type SharedFile = Arc<dyn AsFd + Send + Sync>;

/// A file range waiting to be sent.
struct Pending {
    file: SharedFile,
    offset: u64,
    left: usize,
}

/// Bytes sent from files, by every connection of the process.
static SENT: LazyLock<Counter> = LazyLock::new(|| metrics::counter!("outpost_sendfile_bytes_total"));

/// The file ranges a connection has been handed, in body order. Locked by
/// the body when it makes a frame and by the writer when it sends, both on
/// the connection's own task: never contended.
#[derive(Default)]
pub(crate) struct FileQueue {
    ranges: Mutex<VecDeque<Pending>>,
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
        assert!(len <= MAX_RANGE, "a stand-in frame covers at most {MAX_RANGE} bytes");
        if len > 0 {
            let mut q = self.queue.ranges.lock().unwrap_or_else(|p| p.into_inner());
            q.push_back(Pending { file: Arc::clone(file), offset, left: len });
        }
        Bytes::from_static(&STAND_IN[..len])
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

/// Writes `bufs`, the bytes before a stand-in, telling the kernel more
/// follows (`MSG_MORE`): the head then leaves in the same segments as the
/// file's first bytes rather than as a small packet of its own, which the
/// client would have to receive and acknowledge separately.
pub(crate) fn poll_send_before_file(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        let sent = tcp.try_io(Interest::WRITABLE, || {
            sendmsg(tcp, bufs, &mut SendAncillaryBuffer::default(), SendFlags::MORE | SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

impl FileQueue {
    /// Sends from the queue's head range the bytes a stand-in of `len`
    /// bytes at the head of a write stands for.
    pub(crate) fn poll_send(&self, tcp: &TcpStream, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let mut q = self.ranges.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = q.front_mut() else { return Poll::Ready(Err(out_of_step("nothing queued"))) };
        if p.left != len {
            return Poll::Ready(Err(out_of_step("lengths differ")));
        }
        let n = loop {
            std::task::ready!(tcp.poll_write_ready(cx))?;
            let mut at = p.offset;
            match tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(tcp, &*p.file, Some(&mut at), p.left).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "file shorter than its range")));
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        };
        p.offset += n as u64;
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

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        use std::io::Write;
        let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut f = std::fs::File::from(fd);
        f.write_all(data).unwrap();
        f
    }
}
