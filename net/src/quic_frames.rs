//! A bound on the HTTP/3 frames a client may make the server hold.
//!
//! The h3 crate reads a frame whole before it looks at it: a HEADERS frame
//! (or an unknown one) that declares a length of 2^40 has it buffer every
//! byte the client sends, however small `max_field_section_size` is, as
//! long as the client goes on sending. [`Bounded`] wraps the QUIC
//! connection h3 reads from and follows the frame headers on each request
//! stream as the bytes pass: a frame other than DATA (whose payload h3
//! streams rather than holds) longer than the bound ends the stream with
//! `H3_EXCESSIVE_LOAD` before its payload is read. The client's control
//! stream is followed too, every frame of it bounded (h3 reads a
//! control-stream frame whole, whatever its type); its other
//! unidirectional streams pass as they are (QPACK's, which h3 does not
//! read here, and unknown ones, which it stops).

use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

/// `H3_EXCESSIVE_LOAD` (RFC 9114 section 8.1).
const EXCESSIVE_LOAD: u64 = 0x107;

/// A QUIC connection whose request streams refuse frames longer than a
/// bound.
pub(crate) struct Bounded<C> {
    inner: C,
    bound: u64,
}

impl<C> Bounded<C> {
    pub(crate) fn new(inner: C, bound: u64) -> Bounded<C> {
        Bounded { inner, bound }
    }
}

impl<C: quic::Connection<B>, B: Buf> quic::Connection<B> for Bounded<C> {
    type RecvStream = Checked<C::RecvStream>;
    type OpenStreams = Bounded<C::OpenStreams>;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Checked<C::RecvStream>, ConnectionErrorIncoming>> {
        self.inner.poll_accept_recv(cx).map_ok(|s| Checked {
            inner: s,
            frames: Frames::unidirectional(self.bound),
            reading: false,
        })
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Checked<Guarded<C::BidiStream, B>>, ConnectionErrorIncoming>> {
        self.inner.poll_accept_bidi(cx).map_ok(|s| Checked::new(Guarded::new(s), self.bound))
    }

    fn opener(&self) -> Bounded<C::OpenStreams> {
        Bounded::new(self.inner.opener(), self.bound)
    }
}

impl<C: quic::OpenStreams<B>, B: Buf> quic::OpenStreams<B> for Bounded<C> {
    type BidiStream = Checked<Guarded<C::BidiStream, B>>;
    type SendStream = C::SendStream;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Checked<Guarded<C::BidiStream, B>>, StreamErrorIncoming>> {
        self.inner.poll_open_bidi(cx).map_ok(|s| Checked::new(Guarded::new(s), self.bound))
    }

    fn poll_open_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<C::SendStream, StreamErrorIncoming>> {
        self.inner.poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        self.inner.close(code, reason)
    }
}

/// A stream whose incoming frame headers are followed as they pass.
pub(crate) struct Checked<S> {
    inner: S,
    frames: Frames,
    /// A read of the inner stream is under way (its last poll was
    /// pending). h3-quinn's stream is inside that read meanwhile, and its
    /// `stop_sending` would panic on finding it gone (h3 can hand out
    /// bytes it holds, and the body be dropped, while its next read
    /// waits).
    reading: bool,
}

impl<S> Checked<S> {
    fn new(inner: S, bound: u64) -> Checked<S> {
        Checked { inner, frames: Frames::new(bound), reading: false }
    }
}

impl<S: quic::SendStream<B>, B: Buf> quic::SendStream<B> for Checked<S> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl<S: quic::RecvStream> quic::RecvStream for Checked<S> {
    type Buf = Bytes;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let polled = self.inner.poll_data(cx);
        self.reading = polled.is_pending();
        let Some(mut buf) = std::task::ready!(polled)? else { return Poll::Ready(Ok(None)) };
        let bytes = buf.copy_to_bytes(buf.remaining());
        if let Err(len) = self.frames.follow(&bytes) {
            self.inner.stop_sending(EXCESSIVE_LOAD);
            let e = format!("a frame of {len} bytes, over the {} a request may send", self.frames.bound);
            return Poll::Ready(Err(StreamErrorIncoming::Unknown(e.into())));
        }
        Poll::Ready(Ok(Some(bytes)))
    }

    /// Not while a read is under way ([`Checked::reading`]): the stream,
    /// dropped inside that read, then asks the client to stop with code 0
    /// rather than `error_code`.
    fn stop_sending(&mut self, error_code: u64) {
        if !self.reading {
            self.inner.stop_sending(error_code)
        }
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<S: quic::BidiStream<B>, B: Buf> quic::BidiStream<B> for Checked<S> {
    type SendStream = S::SendStream;
    type RecvStream = Checked<S::RecvStream>;

    fn split(self) -> (S::SendStream, Checked<S::RecvStream>) {
        let (send, recv) = self.inner.split();
        (send, Checked { inner: recv, frames: self.frames, reading: self.reading })
    }
}

/// `H3_INTERNAL_ERROR` (RFC 9114 section 8.1).
const INTERNAL_ERROR: u64 = 0x102;

/// A request stream, or its sending half, reset with `H3_INTERNAL_ERROR`
/// when it is dropped neither finished nor reset: quinn finishes a stream
/// dropped as it is, and the client would take an answer cut short (by a
/// failed body, a failed send, a panic), or none at all, for whole.
pub(crate) struct Guarded<S: quic::SendStream<B>, B: Buf> {
    /// `None` once split in two, each half guarded on its own.
    inner: Option<S>,
    done: bool,
    _buf: std::marker::PhantomData<fn() -> B>,
}

impl<S: quic::SendStream<B>, B: Buf> Guarded<S, B> {
    fn new(inner: S) -> Guarded<S, B> {
        Guarded { inner: Some(inner), done: false, _buf: std::marker::PhantomData }
    }

    fn get(&mut self) -> Result<&mut S, StreamErrorIncoming> {
        self.inner.as_mut().ok_or_else(|| StreamErrorIncoming::Unknown("a stream used after it was split".into()))
    }
}

impl<S: quic::SendStream<B>, B: Buf> Drop for Guarded<S, B> {
    fn drop(&mut self) {
        if !self.done
            && let Some(s) = &mut self.inner
        {
            s.reset(INTERNAL_ERROR);
        }
    }
}

impl<S: quic::SendStream<B>, B: Buf> quic::SendStream<B> for Guarded<S, B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.get()?.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.get()?.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        let finished = std::task::ready!(self.get()?.poll_finish(cx));
        self.done |= finished.is_ok();
        Poll::Ready(finished)
    }

    fn reset(&mut self, reset_code: u64) {
        self.done = true;
        if let Some(s) = &mut self.inner {
            s.reset(reset_code);
        }
    }

    fn send_id(&self) -> StreamId {
        match &self.inner {
            Some(s) => s.send_id(),
            None => unreachable!("a stream's id asked after it was split"),
        }
    }
}

impl<S: quic::SendStream<B> + quic::RecvStream, B: Buf> quic::RecvStream for Guarded<S, B> {
    type Buf = S::Buf;

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<S::Buf>, StreamErrorIncoming>> {
        self.get()?.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        if let Some(s) = &mut self.inner {
            s.stop_sending(error_code);
        }
    }

    fn recv_id(&self) -> StreamId {
        match &self.inner {
            Some(s) => s.recv_id(),
            None => unreachable!("a stream's id asked after it was split"),
        }
    }
}

impl<S: quic::BidiStream<B>, B: Buf> quic::BidiStream<B> for Guarded<S, B> {
    type SendStream = Guarded<S::SendStream, B>;
    type RecvStream = S::RecvStream;

    fn split(mut self) -> (Guarded<S::SendStream, B>, S::RecvStream) {
        let Some(inner) = self.inner.take() else { unreachable!("a stream split twice") };
        let (send, recv) = inner.split();
        let mut send = Guarded::new(send);
        send.done = self.done;
        (send, recv)
    }
}

/// Where a stream's bytes stand among its frames: in a frame's type, its
/// length, or its payload.
#[derive(Debug, Clone, Copy)]
enum At {
    /// A unidirectional stream's type.
    StreamType(Varint),
    /// Not followed (a unidirectional stream other than control).
    Free,
    Type(Varint),
    Length(u64, Varint),
    Payload(u64),
    /// A frame of this length was refused: the stream goes no further.
    Refused(u64),
}

/// A variable-length integer (RFC 9000 section 16) read byte by byte.
#[derive(Debug, Clone, Copy, Default)]
struct Varint {
    /// Bytes it takes; 0 before its first.
    len: u8,
    got: u8,
    value: u64,
}

impl Varint {
    /// Takes one byte; the value once whole.
    fn push(&mut self, b: u8) -> Option<u64> {
        if self.got == 0 {
            self.len = 1 << (b >> 6);
            self.value = u64::from(b & 0x3f);
        } else {
            self.value = self.value << 8 | u64::from(b);
        }
        self.got += 1;
        (self.got == self.len).then_some(self.value)
    }
}

/// Follows the frames of one stream.
#[derive(Debug)]
struct Frames {
    at: At,
    bound: u64,
    /// DATA frames bounded too (on the control stream, where h3 holds
    /// every frame whole).
    all_bounded: bool,
}

/// HTTP/3's DATA frame type, whose payload h3 streams.
const DATA: u64 = 0x0;
/// The control stream's type.
const CONTROL: u64 = 0x0;

impl Frames {
    fn new(bound: u64) -> Frames {
        Frames { at: At::Type(Varint::default()), bound, all_bounded: false }
    }

    /// For a unidirectional stream, which starts with its type.
    fn unidirectional(bound: u64) -> Frames {
        Frames { at: At::StreamType(Varint::default()), bound, all_bounded: true }
    }

    /// Follows `bytes`; the length of a frame past the bound, if one begins.
    fn follow(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while let Some((&b, rest)) = bytes.split_first() {
            match &mut self.at {
                At::Payload(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.at = At::Type(Varint::default());
                    }
                    continue;
                }
                At::Refused(len) => return Err(*len),
                At::Free => return Ok(()),
                At::StreamType(v) => {
                    if let Some(ty) = v.push(b) {
                        self.at = if ty == CONTROL { At::Type(Varint::default()) } else { At::Free };
                    }
                }
                At::Type(v) => {
                    if let Some(ty) = v.push(b) {
                        self.at = At::Length(ty, Varint::default());
                    }
                }
                At::Length(ty, v) => {
                    if let Some(len) = v.push(b) {
                        if (*ty != DATA || self.all_bounded) && len > self.bound {
                            self.at = At::Refused(len);
                            return Err(len);
                        }
                        self.at = if len == 0 { At::Type(Varint::default()) } else { At::Payload(len) };
                    }
                }
            }
            bytes = rest;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: type and length as varints of `width` bytes.
    fn header(ty: u64, len: u64, width: u8) -> Vec<u8> {
        let varint = |v: u64| -> Vec<u8> {
            let tag = u64::from(width.trailing_zeros() as u8) << (8 * u64::from(width) - 2);
            (v | tag).to_be_bytes()[8 - width as usize..].to_vec()
        };
        [varint(ty), varint(len)].concat()
    }

    #[test]
    fn frames_over_the_bound_are_refused_as_their_header_passes_whatever_the_pieces() {
        let mut stream = header(0x1, 100, 2);
        stream.extend(vec![7u8; 100]);
        stream.extend(header(0x0, (1 << 30) - 1, 4)); // DATA: streamed, not held
        stream.extend(vec![1u8; 5000]);
        for piece in [1, 2, 3, 7, 4096, usize::MAX] {
            let mut f = Frames::new(1024);
            for chunk in stream.chunks(piece.min(stream.len())) {
                assert_eq!(f.follow(chunk), Ok(()), "pieces of {piece}");
            }
        }
        for (ty, width) in [(0x1, 8), (0x21, 8), (0x5, 8)] {
            let mut stream = header(0x1, 10, 1);
            stream.extend(vec![0u8; 10]);
            stream.extend(header(ty, 1 << 40, width));
            for piece in [1, 3, usize::MAX] {
                let mut f = Frames::new(1024);
                let refused = stream.chunks(piece.min(stream.len())).map(|c| f.follow(c)).find(Result::is_err);
                assert_eq!(refused, Some(Err(1 << 40)), "type {ty:#x} in pieces of {piece}");
            }
        }
        // The control stream: every frame bounded, DATA's and SETTINGS'
        // (0x4) too; another unidirectional stream passes as it is.
        for ty in [0x4, 0x0, 0x21] {
            let mut f = Frames::unidirectional(1024);
            assert_eq!(f.follow(&[0x00]), Ok(()), "the control stream's type");
            assert_eq!(f.follow(&header(0x4, 8, 1)), Ok(()));
            assert_eq!(f.follow(&[0u8; 8]), Ok(()));
            assert_eq!(f.follow(&header(ty, 1 << 60, 8)), Err(1 << 60), "type {ty:#x}");
        }
        let mut qpack = Frames::unidirectional(1024);
        assert_eq!(qpack.follow(&[0x02]), Ok(()));
        assert_eq!(qpack.follow(&header(0x1, 1 << 40, 8)), Ok(()), "not frames: not followed");
        let mut f = Frames::new(1024);
        assert_eq!(f.follow(&header(0x1, 1024, 2)), Ok(()), "at the bound");
        let mut f = Frames::new(1024);
        assert_eq!(f.follow(&header(0x1, 1025, 2)), Err(1025));
        assert_eq!(f.follow(&[0xff; 64]), Err(1025), "refused for good");
    }
}
