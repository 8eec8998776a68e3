//! `103 Early Hints` from the test origin (`early=LINK`), which hyper's
//! server cannot send itself: the request's handler queues the interim
//! response in its connection's [`Early`], and the connection's I/O writes
//! it before any later byte, at hyper's next read (hyper reads while it
//! waits on an answer, to notice a close) or its next write.
//!
//! The queue belongs to the connection, so a hinted request must not be
//! pipelined behind another whose answer is still being written: its 103
//! would land inside that answer. Over HTTP/2 nothing is queued.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's queued interim responses.
#[derive(Debug, Default)]
pub(super) struct Early {
    queued: Mutex<Vec<u8>>,
    waker: AtomicWaker,
}

impl Early {
    /// Queues a `103 Early Hints` with a `Link` field for each of `links`.
    pub(super) fn hint(&self, links: &[HeaderValue]) {
        let mut head = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
        for link in links {
            head.extend_from_slice(b"link: ");
            head.extend_from_slice(link.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        super::lock(&self.queued).extend_from_slice(&head);
        self.waker.wake();
    }
}

/// A connection's I/O that writes what its [`Early`] queues first.
pub(super) struct EarlyIo<S> {
    pub(super) inner: S,
    pub(super) early: Arc<Early>,
    /// Taken from the queue, not yet all written.
    owed: Bytes,
}

impl<S> EarlyIo<S> {
    pub(super) fn new(inner: S, early: Arc<Early>) -> Self {
        EarlyIo { inner, early, owed: Bytes::new() }
    }
}

impl<S: AsyncWrite + Unpin> EarlyIo<S> {
    /// Writes what is queued: ready once nothing is.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.early.waker.register(cx.waker());
        if self.owed.is_empty() {
            let mut q = super::lock(&self.early.queued);
            if q.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.owed = Bytes::from(std::mem::take(&mut *q));
        }
        while !self.owed.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.owed))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.owed.advance(n);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for EarlyIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.poll_owed(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EarlyIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_owed(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_owed(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_owed(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
