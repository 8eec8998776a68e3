//! Response bodies: bytes at hand (most hits, every error and redirect)
//! kept as they are, any other body boxed. A boxed body of bytes at hand
//! would cost an allocation and a dynamic call per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

pub struct Body(Kind);

enum Kind {
    /// The bytes, until sent; `None` for an empty body.
    Full(Option<Bytes>),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// No bytes.
    pub fn empty() -> Body {
        Body(Kind::Full(None))
    }

    /// These bytes, as one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// Any other body.
    pub fn new<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body(Kind::Boxed(body.map_err(Into::into).boxed_unsync()))
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Kind::Full(b) => f.debug_tuple("Body::Full").field(&b.as_ref().map_or(0, Bytes::len)).finish(),
            Kind::Boxed(_) => f.write_str("Body::Boxed"),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Boxed(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn bodies_say_their_length_and_end_as_they_say() {
        let empty = Body::empty();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        assert!(Body::full(Bytes::new()).is_end_stream(), "no bytes is an empty body");

        let mut full = Body::full("four");
        assert!(!full.is_end_stream());
        assert_eq!(full.size_hint().exact(), Some(4));
        let frame = full.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "four");
        assert!(full.is_end_stream());
        assert_eq!(full.size_hint().exact(), Some(0));
        assert!(full.frame().await.is_none());

        let frames = futures_util::stream::iter([
            Ok::<_, std::io::Error>(Frame::data(Bytes::from("a"))),
            Ok(Frame::data(Bytes::from("bc"))),
        ]);
        let streamed = Body::new(http_body_util::StreamBody::new(frames));
        assert!(!streamed.is_end_stream());
        assert_eq!(streamed.size_hint().exact(), None);
        assert_eq!(streamed.collect().await.unwrap().to_bytes(), "abc");
    }
}
