//! Bodies as they are received, as the connection they came on delivers
//! them: hyper's for HTTP/1, an h2 stream's for HTTP/2, an h3 stream's for
//! HTTP/3. A request's body at a server, and an upstream's answer's at the
//! proxy's client.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::BoxError;

/// A received body: a request's, or an upstream's answer's.
pub struct RecvBody(Kind);

enum Kind {
    Empty,
    Hyper(Incoming),
    H2 {
        recv: h2::RecvStream,
        /// The length the request declared, less what has come of it.
        left: Option<u64>,
        /// Every data frame has come; trailers may follow.
        data_done: bool,
        /// Kept until the body ends or is dropped (what counts the
        /// stream open).
        held: Option<Held>,
        /// Data taken by [`RecvBody::settle`], given out first.
        taken: Option<Bytes>,
    },
    /// Boxed: an h3 stream is large, and HTTP/3 requests few.
    H3(Box<H3>),
    /// A body and what it keeps until it is done ([`RecvBody::holding`]).
    Holding(Box<RecvBody>, Option<Held>),
    /// A body that fails when its sender goes quiet ([`RecvBody::idle_limit`]).
    Idle(Box<RecvBody>, Box<Quiet>),
}

/// How long a body may wait for its sender, and since when it waits.
struct Quiet {
    limit: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The timer runs: the body has waited since its last frame.
    armed: bool,
    sender: &'static str,
}

/// Something a body keeps while its stream is open.
type Held = Box<dyn std::any::Any + Send + Sync>;

/// The receiving half of an HTTP/3 request's stream.
pub(crate) type H3Recv = h3::server::RequestStream<crate::quic_frames::Checked<h3_quinn::RecvStream>, Bytes>;

struct H3 {
    recv: H3Recv,
    left: Option<u64>,
    data_done: bool,
    /// The stream's end has been read (trailers or not).
    ended: bool,
}

impl Drop for H3 {
    /// A request body not read to its end (an answer that did not need it,
    /// as a GET's does not wait for the client's end of stream) asks the
    /// client to stop sending with H3_NO_ERROR, as RFC 9114 section 4.1
    /// says; quinn's own would send code 0, which HTTP/3 does not define.
    fn drop(&mut self) {
        if !self.ended {
            self.recv.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

impl RecvBody {
    /// No bytes.
    pub fn empty() -> RecvBody {
        RecvBody(Kind::Empty)
    }

    /// hyper's body of an HTTP/1 message.
    pub fn hyper(body: Incoming) -> RecvBody {
        RecvBody(Kind::Hyper(body))
    }

    /// An HTTP/2 stream's body, of `declared` bytes if its head said (a
    /// stream already ended is empty). Its window opens as it is read.
    pub fn h2(recv: h2::RecvStream, declared: Option<u64>) -> RecvBody {
        let left = declared.or_else(|| recv.is_end_stream().then_some(0));
        RecvBody(Kind::H2 { recv, left, data_done: false, held: None, taken: None })
    }

    /// Takes what has already come of an HTTP/2 body that declared no
    /// length, without waiting: a stream its client ended with an empty
    /// DATA frame, rather than with its HEADERS, then reads as empty
    /// (`size_hint` exactly 0), and so can be sent upstream again.
    pub fn settle(&mut self) {
        if let Kind::Holding(body, _) | Kind::Idle(body, _) = &mut self.0 {
            return body.settle();
        }
        let Kind::H2 { recv, left: left @ None, data_done: data_done @ false, taken: taken @ None, .. } = &mut self.0
        else {
            return;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            match recv.poll_data(&mut cx) {
                Poll::Ready(Some(Ok(bytes))) if bytes.is_empty() => continue,
                Poll::Ready(Some(Ok(bytes))) => {
                    let _ = recv.flow_control().release_capacity(bytes.len());
                    *taken = Some(bytes);
                    return;
                }
                Poll::Ready(None) => {
                    *data_done = true;
                    if recv.is_end_stream() {
                        *left = Some(0);
                    }
                    return;
                }
                // An error is met again by the reader; nothing has come.
                Poll::Ready(Some(Err(_))) | Poll::Pending => return,
            }
        }
    }

    /// [`RecvBody::h2`], keeping `held` until the body ends or is dropped.
    pub fn h2_holding(
        recv: h2::RecvStream,
        declared: Option<u64>,
        held: Box<dyn std::any::Any + Send + Sync>,
    ) -> RecvBody {
        let mut body = RecvBody::h2(recv, declared);
        if let Kind::H2 { held: slot, .. } = &mut body.0 {
            *slot = Some(held);
        }
        body
    }
}

impl RecvBody {
    /// An HTTP/3 stream's body, of `declared` bytes if the request said.
    pub(crate) fn h3(recv: H3Recv, declared: Option<u64>) -> RecvBody {
        RecvBody(Kind::H3(Box::new(H3 { recv, left: declared, data_done: false, ended: false })))
    }

    /// This body, keeping `held` until it ends, fails or is dropped (a
    /// permit that counts the exchange against a cap, which must count it
    /// until its last byte, not only until its head).
    pub fn holding(self, held: Box<dyn std::any::Any + Send + Sync>) -> RecvBody {
        RecvBody(Kind::Holding(Box::new(self), Some(held)))
    }

    /// This body, failing (and letting go of what it came on) once its
    /// sender has sent nothing for `limit` while it was waited on. Only
    /// waits count: a reader that takes its time between frames (a slow
    /// client of an answer passed through) does not use it up.
    /// `sender` names it in the error ("the upstream", "the client").
    pub fn idle_limit(self, limit: std::time::Duration, sender: &'static str) -> RecvBody {
        let timer = Box::pin(tokio::time::sleep(limit));
        RecvBody(Kind::Idle(Box::new(self), Box::new(Quiet { limit, timer, armed: false, sender })))
    }
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Empty => "RecvBody::Empty",
            Kind::Hyper(_) => "RecvBody::Hyper",
            Kind::H2 { .. } => "RecvBody::H2",
            Kind::H3(_) => "RecvBody::H3",
            Kind::Holding(..) => "RecvBody::Holding",
            Kind::Idle(..) => "RecvBody::Idle",
        })
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::H2 { recv, left, data_done, held, taken } => {
                if let Some(bytes) = taken.take() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if !*data_done {
                    match ready!(recv.poll_data(cx)) {
                        Some(Ok(bytes)) => {
                            // The window opens again as the reader takes
                            // the bytes, so a slow reader is not sent more.
                            let _ = recv.flow_control().release_capacity(bytes.len());
                            if let Some(left) = left {
                                *left = left.saturating_sub(bytes.len() as u64);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => *data_done = true,
                    }
                }
                let end = ready!(recv.poll_trailers(cx));
                *held = None;
                match end {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            Kind::Holding(body, held) => {
                let frame = ready!(Pin::new(&mut **body).poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    *held = None;
                }
                Poll::Ready(frame)
            }
            Kind::Idle(body, quiet) => {
                if let Poll::Ready(frame) = Pin::new(&mut **body).poll_frame(cx) {
                    quiet.armed = false;
                    return Poll::Ready(frame);
                }
                if !std::mem::replace(&mut quiet.armed, true) {
                    let at = tokio::time::Instant::now() + quiet.limit;
                    quiet.timer.as_mut().reset(at);
                }
                ready!(quiet.timer.as_mut().poll(cx));
                **body = RecvBody::empty();
                let secs = quiet.limit.as_secs_f64();
                let sender = quiet.sender;
                Poll::Ready(Some(Err(format!("{sender} sent nothing of the body for {secs} s").into())))
            }
            Kind::H3(h3) => {
                if !h3.data_done {
                    match ready!(h3.recv.poll_recv_data(cx)) {
                        Ok(Some(mut buf)) => {
                            let bytes = buf.copy_to_bytes(buf.remaining());
                            if let Some(left) = &mut h3.left {
                                // More than `Content-Length` said: malformed
                                // (RFC 9114 §4.1.2), not cut to fit.
                                let Some(now) = left.checked_sub(bytes.len() as u64) else {
                                    return Poll::Ready(Some(Err(
                                        "an HTTP/3 body longer than its Content-Length".into()
                                    )));
                                };
                                *left = now;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                        Ok(None) => {
                            h3.data_done = true;
                            if h3.left.is_some_and(|left| left > 0) {
                                return Poll::Ready(Some(Err("an HTTP/3 body shorter than its Content-Length".into())));
                            }
                        }
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
                let end = ready!(h3.recv.poll_recv_trailers(cx));
                h3.ended = true;
                match end {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Empty => true,
            Kind::Hyper(body) => body.is_end_stream(),
            // Bytes `settle` took are still to come, whatever h2 says.
            Kind::H2 { recv, taken, .. } => taken.is_none() && recv.is_end_stream(),
            // h3 tells only when read: a declared length of 0 is the end.
            Kind::H3(h3) => h3.left == Some(0),
            Kind::Holding(body, _) | Kind::Idle(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Hyper(body) => body.size_hint(),
            Kind::H2 { left: Some(left), .. } => SizeHint::with_exact(*left),
            Kind::H2 { .. } => SizeHint::default(),
            Kind::H3(h3) => h3.left.map_or_else(SizeHint::default, SizeHint::with_exact),
            Kind::Holding(body, _) | Kind::Idle(body, _) => body.size_hint(),
        }
    }
}
