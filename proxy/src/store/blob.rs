//! A stored body's bytes (an inline body, or one chunk of a large one).
//!
//! From [`SEALED_MIN`] bytes up they live in a file rather than on the heap:
//! a sealed memfd in a memory-only cache, a plain file of the disk tier's
//! (`super::files`) otherwise. The kernel sends a file's pages to a
//! cleartext client (`sendfile`, see `outpost_net::sendfile`), without the
//! copy a write from user memory costs. Neither kind changes once written
//! (a memfd is sealed; a body file is written under a temporary name and
//! never written again), so a range handed to the kernel is the bytes it
//! will send, and a file freed while a send is in flight keeps its pages
//! until the send is done.
//!
//! Each memfd is a file descriptor, and a server needs descriptors for its
//! connections first: memfds live at most [`memfd_cap`] at once, and a body
//! past that stays on the heap.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use bytes::{Bytes, BytesMut};
use rustix::fs::{MemfdFlags, OFlags, SealFlags};

/// Smallest body kept in a memfd: below this a copy costs less than the
/// extra system call and the file.
pub(crate) const SEALED_MIN: usize = 64 << 10;

/// Memfds open now.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many memfds may be open at once: half the process's open-file limit
/// (as it stands when the first body is kept), the rest for connections,
/// listeners and the disk tier.
fn memfd_cap() -> usize {
    static CAP: LazyLock<usize> = LazyLock::new(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        limit.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX))
    });
    *CAP
}

/// An open file holding exactly `len` bytes from its start: a sealed memfd
/// (its slot under the cap is given back when the last holder drops it) or
/// a body file of the disk tier.
#[derive(Debug)]
pub struct BodyFile {
    file: File,
    len: usize,
    memfd: bool,
    /// Found shorter than `len` by a send or a read since it was opened
    /// (a disk tier's file cut short by a hand or a failing disk): the
    /// store lets go of it, and of the object it belongs to.
    spoiled: AtomicBool,
}

impl BodyFile {
    fn new(file: File, len: usize, memfd: bool) -> BodyFile {
        BodyFile { file, len, memfd, spoiled: AtomicBool::new(false) }
    }

    /// Is this a file of the disk tier's, whose pages the page cache may
    /// not hold (rather than a memfd)?
    pub fn on_disk(&self) -> bool {
        !self.memfd
    }

    /// Was it found cut short since it was opened?
    pub fn spoiled(&self) -> bool {
        self.spoiled.load(Ordering::Relaxed)
    }

    fn spoil(&self) {
        if !self.spoiled.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                len = self.len,
                "a body file was cut short after it was opened; its object is fetched again"
            );
            metrics::counter!("outpost_cache_body_file_errors_total", "op" => "short").increment(1);
        }
    }

    /// `read_exact_at`, which notes a file that ends too soon.
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        let read = self.file.read_exact_at(buf, at);
        if read.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::UnexpectedEof) {
            self.spoil();
        }
        read
    }
}

impl outpost_net::sendfile::SendSource for BodyFile {
    fn cut_short(&self) {
        self.spoil();
    }
}

impl AsFd for BodyFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for BodyFile {
    fn drop(&mut self) {
        if self.memfd {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Clone)]
pub enum Blob {
    Heap(Bytes),
    File(Arc<BodyFile>),
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blob::Heap(b) => f.debug_tuple("Heap").field(&b.len()).finish(),
            Blob::File(s) => f.debug_tuple(if s.memfd { "Sealed" } else { "File" }).field(&s.len).finish(),
        }
    }
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Blob {
        Blob::Heap(b)
    }
}

/// Two blobs are equal when they hold the same bytes.
impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        self.len() == other.len()
            && match (self.read(0, self.len()), other.read(0, other.len())) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
    }
}

impl Eq for Blob {}

fn seal(data: &[u8]) -> io::Result<File> {
    let fd = rustix::fs::memfd_create("outpost-body", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = File::from(fd);
    file.write_all(data)?;
    rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL)?;
    without_atime(&file);
    Ok(file)
}

/// Has reads of `file` (each hit's `sendfile`) leave its access time alone:
/// nothing reads it, and checking whether it is due costs every send. Where
/// the process may not (a file someone else owns), reads go on as before.
fn without_atime(file: &File) {
    if let Ok(flags) = rustix::fs::fcntl_getfl(file) {
        let _ = rustix::fs::fcntl_setfl(file, flags | OFlags::NOATIME);
    }
}

impl Blob {
    /// Keeps `data` for the cache: in a sealed memfd when it is large
    /// enough and the cap allows, on the heap otherwise (or when no memfd can
    /// be had).
    pub fn keep(data: Bytes) -> Blob {
        Blob::keep_within(data, memfd_cap())
    }

    fn keep_within(data: Bytes, cap: usize) -> Blob {
        if data.len() < SEALED_MIN {
            return Blob::Heap(data);
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= cap {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("outpost_cache_memfd_fallbacks_total", "reason" => "cap").increment(1);
            return Blob::Heap(data);
        }
        match seal(&data) {
            Ok(file) => Blob::File(Arc::new(BodyFile::new(file, data.len(), true))),
            Err(e) => {
                LIVE.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "no memfd for a body; keeping it on the heap");
                metrics::counter!("outpost_cache_memfd_fallbacks_total", "reason" => "error").increment(1);
                Blob::Heap(data)
            }
        }
    }

    /// The first `len` bytes of a body file of the disk tier's.
    pub(crate) fn disk_file(file: File, len: usize) -> Blob {
        without_atime(&file);
        Blob::File(Arc::new(BodyFile::new(file, len, false)))
    }

    pub fn len(&self) -> usize {
        match self {
            Blob::Heap(b) => b.len(),
            Blob::File(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A file found cut short since it was opened (`BodyFile::spoiled`).
    pub(crate) fn spoiled(&self) -> bool {
        matches!(self, Blob::File(f) if f.spoiled())
    }

    /// The bytes `start..end` (clamped to the blob) in memory.
    pub fn read(&self, start: usize, end: usize) -> io::Result<Bytes> {
        let end = end.min(self.len());
        let start = start.min(end);
        match self {
            Blob::Heap(b) => Ok(b.slice(start..end)),
            Blob::File(s) => {
                let mut buf = BytesMut::zeroed(end - start);
                s.read_exact_at(&mut buf, start as u64)?;
                Ok(buf.freeze())
            }
        }
    }

    /// Writes every byte to `w` (encoding for the disk tier).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Blob::Heap(b) => w.write_all(b),
            Blob::File(s) => {
                let len = s.len;
                let mut buf = vec![0; len.min(256 << 10)];
                let mut at = 0;
                while at < len {
                    let n = buf.len().min(len - at);
                    s.read_exact_at(&mut buf[..n], at as u64)?;
                    w.write_all(&buf[..n])?;
                    at += n;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blobs_are_sealed_small_ones_are_not() {
        let small = Blob::keep(Bytes::from(vec![1u8; SEALED_MIN - 1]));
        assert!(matches!(small, Blob::Heap(_)));
        let data: Vec<u8> = (0..SEALED_MIN * 2).map(|i| (i % 251) as u8).collect();
        let large = Blob::keep(Bytes::from(data.clone()));
        let Blob::File(sealed) = &large else { panic!("a large blob is sealed: {large:?}") };
        assert!(sealed.memfd);
        assert_eq!(sealed.len, data.len());
        assert_eq!(large.read(0, usize::MAX).unwrap(), data);
        assert_eq!(large.read(100, 200).unwrap(), data[100..200]);
        assert_eq!(large.read(5, 2).unwrap(), Bytes::new());
        let mut out = Vec::new();
        large.write_to(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(large, Blob::Heap(Bytes::from(data)));
        // Sealed: neither writes nor a new size are allowed.
        assert!(sealed.file.write_at(b"x", 0).is_err());
        assert!(sealed.file.set_len(1).is_err());
        assert!(rustix::fs::fcntl_getfl(&sealed.file).unwrap().contains(OFlags::NOATIME), "sends leave no access time");
    }

    #[test]
    fn disk_tier_files_are_read_without_access_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        std::fs::write(&path, b"bytes").unwrap();
        let blob = Blob::disk_file(File::open(&path).unwrap(), 5);
        let Blob::File(f) = &blob else { panic!("{blob:?}") };
        assert!(rustix::fs::fcntl_getfl(&f.file).unwrap().contains(OFlags::NOATIME));
        assert_eq!(blob.read(0, 5).unwrap(), &b"bytes"[..]);
    }

    #[test]
    fn past_the_cap_large_blobs_stay_on_the_heap() {
        let data = Bytes::from(vec![3u8; SEALED_MIN]);
        assert!(matches!(Blob::keep_within(data.clone(), 0), Blob::Heap(_)));
        assert!(matches!(Blob::keep_within(data.clone(), usize::MAX), Blob::File(_)));
        let cap = memfd_cap();
        assert!((1..usize::MAX).contains(&cap), "half a finite open-file limit: {cap}");
    }
}
