//! What the cache stores, and its byte format on disk.
//!
//! Three kinds of entry share one key space: an object (status, headers,
//! timing, tags, and its body inline or as a chunk list), a variant index
//! (the `Vary` names of a resource and its known variant keys), and body
//! chunks. The format starts with a version byte; an entry of another
//! version does not decode and reads as a miss.

use std::any::Any;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foyer::Code;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::Blob;
use crate::key::Key;
use crate::policy::Timing;

const FORMAT: u8 = 1;
/// Variant keys a resource remembers, so a purge by URL can remove them
/// (older ones are caught by the URL purge rule instead).
pub(crate) const MAX_KNOWN_VARIANTS: usize = 64;

/// Where an object's body lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRef {
    Inline(Blob),
    /// `len` bytes in chunks of `chunk_size` under [`crate::key::chunk_key`].
    Chunked {
        len: u64,
        chunk_size: u32,
        generation: u64,
    },
}

impl BodyRef {
    pub fn len(&self) -> u64 {
        match self {
            BodyRef::Inline(b) => b.len() as u64,
            BodyRef::Chunked { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the serving side works out from a copy and keeps with it while
/// the copy is in memory: never written to disk, and never carried over to
/// a copy made from this one with other fields (a clone starts empty).
/// One value of each type. Read on every hit of the copy, from every core
/// at once for a popular one: a read takes no lock (`ArcSwapOption`), and
/// a value made anew replaces the list it is in.
#[derive(Default)]
pub struct Derived(arc_swap::ArcSwapOption<Vec<Arc<dyn Any + Send + Sync>>>);

impl Derived {
    /// The `T` kept, if any.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let kept = self.0.load();
        let found = kept.as_deref()?.iter().find(|v| <dyn Any>::is::<T>(&***v))?;
        Arc::clone(found).downcast().ok()
    }

    /// The `T` kept, if `fits` it; otherwise one `make`s, kept in its place.
    pub fn get_or_make<T: Any + Send + Sync>(&self, fits: impl FnOnce(&T) -> bool, make: impl FnOnce() -> T) -> Arc<T> {
        match self.get::<T>() {
            Some(kept) if fits(&kept) => kept,
            _ => {
                let made = Arc::new(make());
                self.keep(Arc::clone(&made));
                made
            }
        }
    }

    /// Keeps `value` in place of the `T` kept before.
    pub fn keep<T: Any + Send + Sync>(&self, value: Arc<T>) {
        let value: Arc<dyn Any + Send + Sync> = value;
        self.0.rcu(|kept| {
            let mut list: Vec<_> =
                kept.as_deref().into_iter().flatten().filter(|v| !<dyn Any>::is::<T>(&***v)).cloned().collect();
            list.push(Arc::clone(&value));
            Some(Arc::new(list))
        });
    }
}

impl Clone for Derived {
    fn clone(&self) -> Derived {
        Derived::default()
    }
}

/// Not part of what a copy is.
impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

/// A stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub status: StatusCode,
    /// As stored: no hop-by-hop fields, no Age, no Content-Length.
    pub headers: HeaderMap,
    /// Normalised path and shaped query, for purge rules.
    pub url: String,
    /// `Surrogate-Key` / `Cache-Tag` values.
    pub tags: Vec<String>,
    /// When the fetch that produced this copy started: purge rules newer
    /// than this invalidate it (a fetch in flight during a purge does not
    /// survive it).
    pub fetched_at: SystemTime,
    pub timing: Timing,
    pub shareable_with_auth: bool,
    pub body: BodyRef,
    /// What hits of this copy are answered with, worked out once.
    pub derived: Derived,
}

/// A resource whose responses vary: which request fields select a variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variants {
    pub names: Vec<HeaderName>,
    pub known: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Object(Arc<StoredObject>),
    Variants(Arc<Variants>),
    Chunk(Blob),
    /// Written over a removed key. foyer does not cancel a disk write still
    /// queued when a key is removed, so a removal is an overwrite: the newer
    /// write wins in memory, on disk and after a restart.
    Gone,
}

impl Entry {
    /// Bytes this entry costs the memory tier (the weighter's measure).
    pub fn weight(&self) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            + match self {
                Entry::Object(o) => {
                    // The map, and the same fields encoded for hits.
                    let headers: usize = o.headers.iter().map(|(k, v)| 2 * (k.as_str().len() + v.len() + 8)).sum();
                    let inline = match &o.body {
                        BodyRef::Inline(b) => b.len(),
                        BodyRef::Chunked { .. } => 0,
                    };
                    headers + inline + o.url.len() + o.tags.iter().map(String::len).sum::<usize>() + 96
                }
                Entry::Variants(v) => v.names.len() * 24 + v.known.len() * 16,
                Entry::Chunk(b) => b.len(),
                Entry::Gone => 0,
            }
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

fn io<T>(r: std::io::Result<T>) -> foyer::Result<T> {
    r.map_err(foyer::Error::io_error)
}

fn bad(what: &str) -> foyer::Error {
    foyer::Error::io_error(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("cache entry: {what}")))
}

struct W<'a, T: Write>(&'a mut T);

impl<T: Write> W<'_, T> {
    fn u8(&mut self, v: u8) -> foyer::Result<()> {
        io(self.0.write_all(&[v]))
    }
    fn u32(&mut self, v: u32) -> foyer::Result<()> {
        io(self.0.write_all(&v.to_le_bytes()))
    }
    fn u64(&mut self, v: u64) -> foyer::Result<()> {
        io(self.0.write_all(&v.to_le_bytes()))
    }
    fn bytes(&mut self, b: &[u8]) -> foyer::Result<()> {
        let len = u32::try_from(b.len()).map_err(|_| bad("field too long"))?;
        self.u32(len)?;
        io(self.0.write_all(b))
    }
    /// Laid out as [`W::bytes`].
    fn blob(&mut self, b: &Blob) -> foyer::Result<()> {
        let len = u32::try_from(b.len()).map_err(|_| bad("field too long"))?;
        self.u32(len)?;
        io(b.write_to(self.0))
    }
}

struct R<'a, T: Read>(&'a mut T);

/// Longest single field a decoder accepts: a corrupt length must not
/// allocate gigabytes.
const MAX_FIELD: usize = 64 << 20;

impl<T: Read> R<'_, T> {
    fn u8(&mut self) -> foyer::Result<u8> {
        let mut b = [0; 1];
        io(self.0.read_exact(&mut b))?;
        Ok(b[0])
    }
    fn u32(&mut self) -> foyer::Result<u32> {
        let mut b = [0; 4];
        io(self.0.read_exact(&mut b))?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> foyer::Result<u64> {
        let mut b = [0; 8];
        io(self.0.read_exact(&mut b))?;
        Ok(u64::from_le_bytes(b))
    }
    fn u128(&mut self) -> foyer::Result<u128> {
        let mut b = [0; 16];
        io(self.0.read_exact(&mut b))?;
        Ok(u128::from_le_bytes(b))
    }
    fn bytes(&mut self) -> foyer::Result<Vec<u8>> {
        let len = self.u32()? as usize;
        if len > MAX_FIELD {
            return Err(bad("field length out of range"));
        }
        let mut v = vec![0; len];
        io(self.0.read_exact(&mut v))?;
        Ok(v)
    }
    fn string(&mut self) -> foyer::Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| bad("text is not UTF-8"))
    }
    fn count(&mut self) -> foyer::Result<usize> {
        let n = self.u32()? as usize;
        if n > 1 << 16 {
            return Err(bad("count out of range"));
        }
        Ok(n)
    }
}

const TAG_OBJECT: u8 = 1;
const TAG_VARIANTS: u8 = 2;
const TAG_CHUNK: u8 = 3;
const TAG_GONE: u8 = 4;

impl Code for Entry {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        let mut w = W(writer);
        w.u8(FORMAT)?;
        match self {
            Entry::Gone => w.u8(TAG_GONE),
            Entry::Chunk(b) => {
                w.u8(TAG_CHUNK)?;
                w.blob(b)
            }
            Entry::Variants(v) => {
                w.u8(TAG_VARIANTS)?;
                w.u32(v.names.len() as u32)?;
                for n in &v.names {
                    w.bytes(n.as_str().as_bytes())?;
                }
                w.u32(v.known.len() as u32)?;
                for k in &v.known {
                    io(w.0.write_all(&k.to_le_bytes()))?;
                }
                Ok(())
            }
            Entry::Object(o) => {
                w.u8(TAG_OBJECT)?;
                w.u32(u32::from(o.status.as_u16()))?;
                w.bytes(o.url.as_bytes())?;
                w.u64(micros(o.fetched_at))?;
                let t = &o.timing;
                w.u64(micros(t.response_time))?;
                for d in [t.lifetime, t.initial_age, t.stale_while_revalidate, t.stale_if_error] {
                    w.u64(d.as_millis() as u64)?;
                }
                w.u8(u8::from(t.always_revalidate) | (u8::from(o.shareable_with_auth) << 1))?;
                w.u32(o.tags.len() as u32)?;
                for tag in &o.tags {
                    w.bytes(tag.as_bytes())?;
                }
                w.u32(o.headers.len() as u32)?;
                for (k, v) in &o.headers {
                    w.bytes(k.as_str().as_bytes())?;
                    w.bytes(v.as_bytes())?;
                }
                match &o.body {
                    BodyRef::Inline(b) => {
                        w.u8(0)?;
                        w.blob(b)
                    }
                    BodyRef::Chunked { len, chunk_size, generation } => {
                        w.u8(1)?;
                        w.u64(*len)?;
                        w.u32(*chunk_size)?;
                        w.u64(*generation)
                    }
                }
            }
        }
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let mut r = R(reader);
        if r.u8()? != FORMAT {
            return Err(bad("unknown format version"));
        }
        match r.u8()? {
            TAG_CHUNK => Ok(Entry::Chunk(Blob::keep(Bytes::from(r.bytes()?)))),
            TAG_GONE => Ok(Entry::Gone),
            TAG_VARIANTS => {
                let n = r.count()?;
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(HeaderName::from_bytes(&r.bytes()?).map_err(|_| bad("header name"))?);
                }
                let n = r.count()?;
                let mut known = Vec::with_capacity(n);
                for _ in 0..n {
                    known.push(r.u128()?);
                }
                Ok(Entry::Variants(Arc::new(Variants { names, known })))
            }
            TAG_OBJECT => {
                let status = StatusCode::from_u16(r.u32()? as u16).map_err(|_| bad("status"))?;
                let url = r.string()?;
                let fetched_at = from_micros(r.u64()?);
                let response_time = from_micros(r.u64()?);
                let mut d = [Duration::ZERO; 4];
                for slot in &mut d {
                    *slot = Duration::from_millis(r.u64()?);
                }
                let flags = r.u8()?;
                let n = r.count()?;
                let mut tags = Vec::with_capacity(n);
                for _ in 0..n {
                    tags.push(r.string()?);
                }
                let n = r.count()?;
                let mut headers = HeaderMap::with_capacity(n);
                for _ in 0..n {
                    let name = HeaderName::from_bytes(&r.bytes()?).map_err(|_| bad("header name"))?;
                    let value = HeaderValue::from_bytes(&r.bytes()?).map_err(|_| bad("header value"))?;
                    headers.append(name, value);
                }
                let body = match r.u8()? {
                    0 => BodyRef::Inline(Blob::keep(Bytes::from(r.bytes()?))),
                    1 => BodyRef::Chunked { len: r.u64()?, chunk_size: r.u32()?, generation: r.u64()? },
                    _ => return Err(bad("body kind")),
                };
                Ok(Entry::Object(Arc::new(StoredObject {
                    status,
                    headers,
                    url,
                    tags,
                    fetched_at,
                    timing: Timing {
                        lifetime: d[0],
                        initial_age: d[1],
                        response_time,
                        stale_while_revalidate: d[2],
                        stale_if_error: d[3],
                        always_revalidate: flags & 1 != 0,
                    },
                    shareable_with_auth: flags & 2 != 0,
                    body,
                    derived: Derived::default(),
                })))
            }
            _ => Err(bad("unknown entry kind")),
        }
    }

    fn estimated_size(&self) -> usize {
        self.weight()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(body: BodyRef) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Entry::Object(Arc::new(StoredObject {
            status: StatusCode::NOT_FOUND,
            headers,
            url: "/a?b=1".into(),
            tags: vec!["t1".into(), "t2".into()],
            fetched_at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            timing: Timing {
                lifetime: Duration::from_secs(60),
                initial_age: Duration::from_secs(3),
                response_time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_223_456),
                stale_while_revalidate: Duration::from_secs(5),
                stale_if_error: Duration::from_secs(3600),
                always_revalidate: true,
            },
            shareable_with_auth: true,
            body,
            derived: Derived::default(),
        }))
    }

    fn round_trip(e: &Entry) -> Entry {
        let mut buf = Vec::new();
        e.encode(&mut buf).unwrap();
        Entry::decode(&mut buf.as_slice()).unwrap()
    }

    #[test]
    fn what_is_derived_from_a_copy_stays_with_it_and_never_passes_to_another() {
        let Entry::Object(o) = sample(BodyRef::Inline(Bytes::from_static(b"x").into())) else { unreachable!() };
        assert!(o.derived.get::<String>().is_none());
        o.derived.keep(Arc::new(String::from("made from these fields")));
        assert_eq!(o.derived.get::<String>().as_deref().map(String::as_str), Some("made from these fields"));
        assert!(o.derived.get::<u64>().is_none(), "only as the type it was kept as");
        o.derived.keep(Arc::new(7u64));
        o.derived.keep(Arc::new(String::from("made again")));
        assert_eq!(o.derived.get::<u64>().as_deref(), Some(&7), "one of each type");
        assert_eq!(o.derived.get::<String>().as_deref().map(String::as_str), Some("made again"));
        let other = StoredObject { headers: HeaderMap::new(), ..(*o).clone() };
        assert!(other.derived.get::<String>().is_none(), "a copy with other fields starts without");
        assert_eq!(other.derived, o.derived, "not part of what a copy is");
        let Entry::Object(decoded) = round_trip(&Entry::Object(Arc::clone(&o))) else { unreachable!() };
        assert!(decoded.derived.get::<String>().is_none(), "never stored");
    }

    #[test]
    fn every_kind_round_trips() {
        for e in [
            sample(BodyRef::Inline(Bytes::from_static(b"hello").into())),
            sample(BodyRef::Chunked { len: 5 << 20, chunk_size: 1 << 20, generation: 42 }),
            Entry::Variants(Arc::new(Variants {
                names: vec![HeaderName::from_static("accept")],
                known: vec![1, u128::MAX],
            })),
            Entry::Chunk(Bytes::from(vec![7u8; 1000]).into()),
            Entry::Chunk(Blob::keep(Bytes::from(vec![9u8; 300 << 10]))),
            sample(BodyRef::Inline(Blob::keep(Bytes::from(vec![8u8; 200 << 10])))),
            Entry::Gone,
        ] {
            assert_eq!(round_trip(&e), e);
        }
    }

    #[test]
    fn corrupt_entries_are_errors_not_panics() {
        let mut buf = Vec::new();
        sample(BodyRef::Inline(Bytes::from_static(b"hello").into())).encode(&mut buf).unwrap();
        for cut in 0..buf.len() {
            assert!(Entry::decode(&mut &buf[..cut]).is_err(), "truncated at {cut}");
        }
        let mut other_version = buf.clone();
        other_version[0] = 99;
        assert!(Entry::decode(&mut other_version.as_slice()).is_err());
        let huge = [FORMAT, TAG_CHUNK, 0xff, 0xff, 0xff, 0xff];
        assert!(Entry::decode(&mut &huge[..]).is_err(), "a huge length is refused before allocating");
    }
}
