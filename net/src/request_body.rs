//! Request bodies, as the connection they came on delivers them: hyper's
//! for HTTP/1 (and HTTP/3's bridge), an h2 stream's for HTTP/2.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::BoxError;

/// A request's body.
pub struct RequestBody(Kind);

enum Kind {
    Empty,
    Hyper(Incoming),
    H2 {
        recv: h2::RecvStream,
        /// The length the request declared, less what has come of it.
        left: Option<u64>,
        /// Every data frame has come; trailers may follow.
        data_done: bool,
    },
}

impl RequestBody {
    /// No bytes.
    pub fn empty() -> RequestBody {
        RequestBody(Kind::Empty)
    }

    pub(crate) fn hyper(body: Incoming) -> RequestBody {
        RequestBody(Kind::Hyper(body))
    }

    /// An HTTP/2 stream's body, of `declared` bytes if the request said.
    pub(crate) fn h2(recv: h2::RecvStream, declared: Option<u64>) -> RequestBody {
        RequestBody(Kind::H2 { recv, left: declared, data_done: false })
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Empty => "RequestBody::Empty",
            Kind::Hyper(_) => "RequestBody::Hyper",
            Kind::H2 { .. } => "RequestBody::H2",
        })
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Empty => Poll::Ready(None),
            Kind::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::H2 { recv, left, data_done } => {
                if !*data_done {
                    match ready!(recv.poll_data(cx)) {
                        Some(Ok(bytes)) => {
                            // The window opens again as the handler takes
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
                match ready!(recv.poll_trailers(cx)) {
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
            Kind::H2 { recv, .. } => recv.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Hyper(body) => body.size_hint(),
            Kind::H2 { left: Some(left), .. } => SizeHint::with_exact(*left),
            Kind::H2 { .. } => SizeHint::default(),
        }
    }
}
