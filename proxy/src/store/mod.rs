//! Object storage on a foyer `HybridCache`: a memory tier and, when the node
//! has a disk size, a disk tier that survives restarts. A removal is written
//! like any entry (see [`Entry::Gone`]), so a purged object stays purged
//! after a restart.
//!
//! Bodies up to [`CHUNK_SIZE`] are stored inline with their object; larger
//! ones as chunks of [`CHUNK_SIZE`] under derived keys, so a range request
//! reads only the chunks it covers and a large body never sits in memory whole.
//! With a disk tier, chunks and every body of [`blob::SEALED_MIN`] or more
//! are plain files beside foyer's device (see [`files`]), sent from the page
//! cache; foyer keeps the heads and the small bodies.

mod blob;
pub(crate) mod entry;
mod files;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy, RecoverMode,
};
use futures_util::Stream;
use outpost_config::CacheStorage;

use crate::key::{Key, KeySecret, chunk_key};
pub(crate) use blob::Blob;
pub(crate) use entry::{BodyRef, Entry, MAX_KNOWN_VARIANTS, StoredObject, Variants};
use files::Files;

/// Chunk size of large bodies and the largest inline body. 1 MiB keeps range
/// reads cheap and a chunk well inside one foyer block.
pub(crate) const CHUNK_SIZE: usize = 1 << 20;
/// Largest foyer disk block; smaller disks get smaller blocks so eviction
/// works on a fine enough grain.
const MAX_BLOCK: u64 = 16 << 20;
/// Smallest block: it must hold a whole chunk and its framing.
const MIN_BLOCK: u64 = 2 << 20;
/// foyer's smallest device: a disk tier smaller than this is foyer's alone.
const MIN_FOYER: u64 = 16 << 20;

/// How a disk tier of `disk` bytes is split between foyer's device (heads
/// and small bodies) and body files, `large` percent going to the files
/// (`[cache] large_bodies`, by default three quarters: most of a
/// static-asset cache's bytes are in large bodies).
fn split_disk(disk: u64, large: u8) -> (u64, u64) {
    let files = (u128::from(disk) * u128::from(large.min(100)) / 100) as u64;
    let foyer = (disk - files).max(MIN_FOYER).min(disk);
    (foyer, disk - foyer)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache folder `{path}`: {source}")]
    Folder { path: PathBuf, source: io::Error },
    #[error("cannot open the disk cache in `{path}`: {source}")]
    Open { path: PathBuf, source: foyer::Error },
    #[error("the cache needs a disk path for a disk tier")]
    NoPath,
    #[error("cannot draw a random secret for the cache's keys: {0}")]
    Random(io::Error),
}

/// The node's object cache. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    cache: HybridCache<Key, Entry>,
    hybrid: bool,
    /// Body chunks as files, with a disk tier large enough.
    files: Option<Arc<Files>>,
    /// The disk tier's folder and capacity (shared: a store is cloned
    /// into every body stream and fetch).
    disk: Option<Arc<(PathBuf, u64)>>,
    /// What this cache's keys are hashed with.
    secret: KeySecret,
}

/// The file beside a disk tier that holds its [`KeySecret`].
const SECRET_FILE: &str = "key-secret";

/// The secret of the disk tier in `dir`: the one it was written with, or a
/// new one. A folder that holds copies but no readable secret (written
/// before keys had one, or the file damaged) starts afresh: its copies are
/// under keys no request has any more, left to eviction, and fetched again.
fn disk_secret(dir: &std::path::Path) -> io::Result<KeySecret> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = dir.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match parse_secret(&bytes) {
            Some(s) => {
                // Its owner's alone, even if someone loosened it (where the
                // node may: a file it does not own is read as it is).
                let loose = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
                if loose && let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
                    tracing::warn!(path = %path.display(), error = %e, "the cache's key secret is readable by others and cannot be made its owner's alone");
                }
                return Ok(s);
            }
            None => {
                tracing::warn!(path = %path.display(), "the cache's key secret does not read; a new one is made and stored copies are fetched again")
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A disk tier written before keys had a secret: foyer's files,
            // or body files.
            let cache = std::fs::read_dir(dir)?.flatten().any(|e| {
                let name = e.file_name();
                name == files::FOLDER || name.to_string_lossy().starts_with("foyer")
            });
            if cache {
                tracing::warn!(path = %dir.display(), "the disk cache has no key secret (written by an earlier version); a new one is made and stored copies are fetched again");
            }
        }
        Err(e) => return Err(e),
    }
    let secret = KeySecret::random()?;
    let hex: String = secret.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    // Whole or not at all: written aside, then renamed over.
    let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
    let written = (|| {
        let mut f = std::fs::File::options().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(format!("{hex}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| secret)
}

fn parse_secret(bytes: &[u8]) -> Option<KeySecret> {
    let hex = std::str::from_utf8(bytes).ok()?.trim().as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (b, pair) in bytes.iter_mut().zip(hex.chunks(2)) {
        *b = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(KeySecret::from_bytes(bytes))
}

/// A cache filesystem with less free than this (and than
/// [`MIN_FREE_SHARE`] of its size) is full: foyer's files are sparse, so
/// writes into them start failing.
const MIN_FREE_BYTES: u64 = 16 << 20;
const MIN_FREE_SHARE: u64 = 50;

/// Why a filesystem of `total` bytes with `free` available counts as full
/// for a cache that may still grow by `growth` bytes: a warm cache that has
/// all its room already writes over its own blocks and needs no more.
fn full_disk(free: u64, total: u64, growth: u64) -> Option<String> {
    (free < MIN_FREE_BYTES.max(total / MIN_FREE_SHARE) && free < growth)
        .then(|| format!("the cache disk is full: {} MiB free of {} MiB", free >> 20, total >> 20))
}

/// Bytes foyer's files under `dir` take on disk (their allocated blocks);
/// the body files are counted by their index instead of listed.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name() != files::FOLDER)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("hybrid", &self.hybrid).finish()
    }
}

/// An entry as a lookup sees it: a removal reads as nothing.
fn live(e: &Entry) -> Option<Entry> {
    match e {
        Entry::Gone => None,
        v => Some(v.clone()),
    }
}

impl Store {
    /// Opens the cache the node config describes; with a disk tier, what a
    /// previous run stored is recovered.
    pub async fn open(cfg: &CacheStorage) -> Result<Store, StoreError> {
        let memory = HybridCacheBuilder::new()
            .with_name("outpost")
            // Written to disk as soon as it is stored: a crash loses only
            // what was in flight, not everything still in memory.
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .with_flush_on_close(true)
            .memory(cfg.memory as usize)
            .with_weighter(|_k: &Key, v: &Entry| v.weight());
        if cfg.disk == 0 {
            let secret = KeySecret::random().map_err(StoreError::Random)?;
            let cache =
                memory.storage().build().await.map_err(|source| StoreError::Open { path: PathBuf::new(), source })?;
            return Ok(Store { cache, hybrid: false, files: None, disk: None, secret });
        }
        let path = cfg.path.clone().ok_or(StoreError::NoPath)?;
        std::fs::create_dir_all(&path).map_err(|source| StoreError::Folder { path: path.clone(), source })?;
        let secret =
            disk_secret(&path).map_err(|source| StoreError::Folder { path: path.join(SECRET_FILE), source })?;
        let (device_size, files_size) = split_disk(cfg.disk, cfg.large_bodies);
        let files = if files_size == 0 {
            None
        } else {
            let dir = path.join(files::FOLDER);
            let opened = tokio::task::spawn_blocking(move || Files::open(dir, files_size))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            Some(Arc::new(opened.map_err(|source| StoreError::Folder { path: path.join(files::FOLDER), source })?))
        };
        let device = FsDeviceBuilder::new(&path)
            .with_capacity(device_size as usize)
            .build()
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        let block = (device_size / 32).clamp(MIN_BLOCK, MAX_BLOCK) as usize;
        let engine = BlockEngineConfig::new(device)
            .with_block_size(block)
            .with_buffer_pool_size(block * 2)
            // Room for a burst of writes: past this, foyer drops entries
            // instead of writing them.
            .with_submit_queue_size_threshold(block * 4)
            // Removals are written as `Entry::Gone` overwrites, which recover in
            // order after a restart; foyer's tombstone log is not needed (and its
            // flush can panic when a runtime stops mid-write).
            .with_tombstone_log(false);
        let cache = memory
            .storage()
            .with_engine_config(engine)
            .with_recover_mode(RecoverMode::Quiet)
            .build()
            .await
            .map_err(|source| StoreError::Open { path: path.clone(), source })?;
        Ok(Store { cache, hybrid: true, files, disk: Some(Arc::new((path, cfg.disk))), secret })
    }

    /// What this cache's keys are hashed with.
    pub fn key_secret(&self) -> &KeySecret {
        &self.secret
    }

    pub fn is_hybrid(&self) -> bool {
        self.hybrid
    }

    /// What is wrong with the disk tier's filesystem: full, or unreadable.
    pub fn disk_problem(&self) -> Option<String> {
        let (path, capacity) = &**self.disk.as_ref()?;
        match rustix::fs::statvfs(path) {
            Ok(s) => {
                let growth = capacity.saturating_sub(allocated(path) + self.body_file_bytes());
                full_disk(s.f_bavail.saturating_mul(s.f_frsize), s.f_blocks.saturating_mul(s.f_frsize), growth)
            }
            Err(e) => Some(format!("the cache disk cannot be read: {e}")),
        }
    }

    /// The entry under `key` if the memory tier holds it, without waiting.
    pub fn get_in_memory(&self, key: Key) -> Option<Entry> {
        self.cache.memory().get(&key).and_then(|e| live(e.value()))
    }

    /// The entry under `key`, from memory or disk. A disk error or an entry
    /// that does not decode reads as a miss.
    pub async fn get(&self, key: Key) -> Option<Entry> {
        // Memory hits answer at once, without the hybrid read machinery.
        if let Some(e) = self.cache.memory().get(&key) {
            return live(e.value());
        }
        match self.cache.get(&key).await {
            Ok(e) => e.and_then(|e| live(e.value())),
            Err(e) => {
                tracing::warn!(error = %e, "cache read failed; treating as a miss");
                None
            }
        }
    }

    pub fn insert(&self, key: Key, entry: Entry) {
        self.cache.insert(key, entry);
    }

    /// Removes an entry from both tiers, durably.
    pub fn remove(&self, key: Key) {
        self.cache.insert(key, Entry::Gone);
    }

    /// Are all of an object's body chunks there? After a crash the disk
    /// can hold an object's head without every chunk (writes still queued
    /// were lost); such an object must not be served, or its body would
    /// break off mid-stream. Index lookups only: nothing is read.
    pub fn has_body(&self, key: Key, object: &StoredObject) -> bool {
        match object.body {
            BodyRef::Chunked { len, chunk_size, generation } => {
                let size = u64::from(chunk_size.max(1));
                let mut chunks = (0..chunk_count(len, chunk_size))
                    .map(|i| (chunk_key(key, generation, i), size.min(len - u64::from(i) * size)));
                match &self.files {
                    // Each file as long as its chunk: one cut short (a full
                    // disk, a crash, a hand) would end the answer early.
                    Some(files) => files.contains_all(chunks),
                    None => chunks.all(|(k, _)| self.cache.contains(&k)),
                }
            }
            _ => true,
        }
    }

    fn has_chunk(&self, key: Key) -> bool {
        match &self.files {
            Some(files) => files.contains(key),
            None => self.cache.contains(&key),
        }
    }

    fn put_chunk(&self, key: Key, bytes: Bytes) {
        match &self.files {
            Some(files) => files.put(key, bytes),
            None => self.insert(key, Entry::Chunk(Blob::keep(bytes))),
        }
    }

    /// A chunk at hand without waiting: its body file, or the memory tier.
    fn chunk_now(&self, key: Key) -> Option<Blob> {
        match &self.files {
            Some(files) => files.get(key),
            None => match self.get_in_memory(key)? {
                Entry::Chunk(blob) => Some(blob),
                _ => None,
            },
        }
    }

    async fn chunk(&self, key: Key) -> Option<Blob> {
        if let Some(blob) = self.chunk_now(key) {
            return Some(blob);
        }
        // Only foyer's disk tier is worth waiting for.
        match self.files {
            Some(_) => None,
            None => match self.get(key).await {
                Some(Entry::Chunk(blob)) => Some(blob),
                _ => None,
            },
        }
    }

    fn remove_chunk(&self, key: Key) {
        match &self.files {
            Some(files) => files.remove(key),
            None => self.remove(key),
        }
    }

    /// The first chunk of the body under `key` (`generation`) from index
    /// `first` that is stored, among those that start before `before`.
    pub fn next_stored_chunk(&self, key: Key, generation: u64, first: u32, before: u64) -> Option<u32> {
        (first..)
            .take_while(|i| u64::from(*i) * (CHUNK_SIZE as u64) < before)
            .find(|i| self.has_chunk(chunk_key(key, generation, *i)))
    }

    /// Puts back a chunk of a stored body that was fetched again after it
    /// left the store (see `engine::refill`); one still there is left be.
    pub fn restore_chunk(&self, key: Key, generation: u64, index: u32, bytes: Bytes) {
        let key = chunk_key(key, generation, index);
        if !self.has_chunk(key) {
            self.put_chunk(key, bytes);
        }
    }

    /// Removes an object and its body chunks.
    pub fn remove_object(&self, key: Key, object: &StoredObject) {
        self.remove(key);
        if let BodyRef::Chunked { len, chunk_size, generation } = object.body {
            for i in 0..chunk_count(len, chunk_size) {
                self.remove_chunk(chunk_key(key, generation, i));
            }
        }
    }

    /// Bytes held by the memory tier.
    pub fn memory_usage(&self) -> usize {
        self.cache.memory().usage()
    }

    /// Bytes of the disk tier's body files (0 without them).
    pub fn body_file_bytes(&self) -> u64 {
        self.files.as_ref().map_or(0, |f| f.used())
    }

    /// Flushes to disk and closes; called on shutdown.
    pub async fn close(&self) {
        if let Some(files) = &self.files {
            files.flush().await;
        }
        if let Err(e) = self.cache.close().await {
            tracing::warn!(error = %e, "closing the cache failed");
        }
    }

    /// A writer for the body of a new object stored under `key`.
    pub fn body_writer(&self, key: Key) -> BodyWriter {
        BodyWriter { store: self.clone(), key, generation: new_generation(), buf: BytesMut::new(), index: 0, len: 0 }
    }

    /// The bytes `start..end` of an object's body, read chunk by chunk.
    pub fn read(
        &self,
        key: Key,
        body: &BodyRef,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        use futures_util::StreamExt;
        self.pieces(key, body, start, end).map(|p| p.and_then(|p| p.blob.read(p.start, p.end)))
    }

    /// The bytes `start..end` of a chunked body, when one chunk holds them
    /// all and it is at hand without waiting (a body file, or in memory):
    /// the usual hit. `None` sends the reader to [`Store::pieces`], which
    /// also says what is wrong with a chunk that is missing or short.
    pub fn piece_now(&self, key: Key, body: &BodyRef, start: u64, end: u64) -> Option<Piece> {
        let BodyRef::Chunked { len, chunk_size, generation } = *body else { return None };
        let (end, size) = (end.min(len), u64::from(chunk_size.max(1)));
        if start >= end || start / size != (end - 1) / size {
            return None;
        }
        let index = (start / size) as u32;
        let blob = self.chunk_now(chunk_key(key, generation, index))?;
        let base = u64::from(index) * size;
        let (from, to) = ((start - base) as usize, (end - base) as usize);
        (to <= blob.len()).then_some(Piece { blob, start: from, end: to })
    }

    /// Where the bytes `start..end` of an object's body are, chunk by
    /// chunk: each the blob that holds them and the range within it.
    pub fn pieces(
        &self,
        key: Key,
        body: &BodyRef,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = io::Result<Piece>> + Send + 'static {
        let store = self.clone();
        let body = body.clone();
        let end = end.min(body.len());
        futures_util::stream::unfold(start, move |pos| {
            let store = store.clone();
            let body = body.clone();
            async move {
                if pos >= end {
                    return None;
                }
                match body {
                    BodyRef::Inline(b) => Some((Ok(Piece { blob: b, start: pos as usize, end: end as usize }), end)),
                    BodyRef::Chunked { chunk_size, generation, .. } => {
                        let size = u64::from(chunk_size);
                        let index = (pos / size) as u32;
                        let chunk_start = u64::from(index) * size;
                        let ck = chunk_key(key, generation, index);
                        match store.chunk(ck).await {
                            // Shorter than its place in the body: not this
                            // copy's chunk any more. Removed, so it reads as
                            // missing, here (a refill fetches it again when a
                            // validator pins the copy) and for every later
                            // request (fetched whole, or refilled).
                            Some(blob) if (blob.len() as u64) < size.min(body.len() - chunk_start) => {
                                store.remove_chunk(ck);
                                metrics::counter!("outpost_cache_body_file_errors_total", "op" => "short").increment(1);
                                let e =
                                    io::Error::new(io::ErrorKind::NotFound, format!("cached chunk {index} is short"));
                                Some((Err(e), end))
                            }
                            Some(blob) => {
                                let from = (pos - chunk_start) as usize;
                                let to = ((end - chunk_start) as usize).min(blob.len());
                                Some((Ok(Piece { blob, start: from, end: to }), chunk_start + to as u64))
                            }
                            None => {
                                let e =
                                    io::Error::new(io::ErrorKind::NotFound, format!("cached chunk {index} is missing"));
                                Some((Err(e), end))
                            }
                        }
                    }
                }
            }
        })
    }
}

/// Part of a body: the bytes `start..end` of `blob`.
#[derive(Debug, Clone)]
pub struct Piece {
    pub blob: Blob,
    pub start: usize,
    pub end: usize,
}

pub(crate) fn chunk_count(len: u64, chunk_size: u32) -> u32 {
    len.div_ceil(u64::from(chunk_size.max(1))) as u32
}

pub(crate) fn new_generation() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes(), n.to_le_bytes()].concat())
}

/// Writes a body as it arrives: whole chunks go to the cache at once, so
/// only the chunk being filled is held here.
#[derive(Debug)]
pub struct BodyWriter {
    store: Store,
    key: Key,
    generation: u64,
    buf: BytesMut,
    index: u32,
    len: u64,
}

impl BodyWriter {
    pub fn push(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK_SIZE - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == CHUNK_SIZE && (!data.is_empty() || self.index > 0) {
                self.flush_chunk();
            }
        }
    }

    fn flush_chunk(&mut self) {
        let chunk = self.buf.split().freeze();
        self.store.put_chunk(chunk_key(self.key, self.generation, self.index), chunk);
        self.index += 1;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinguishes this copy's chunks from any other copy's.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes already stored as whole chunks (readable through the store).
    pub fn stored_through(&self) -> u64 {
        u64::from(self.index) * CHUNK_SIZE as u64
    }

    /// Ends the body: small bodies become inline, large ones get their last
    /// chunk. With body files, a body of [`blob::SEALED_MIN`] or more is one
    /// chunk however short, so it is a file too.
    pub fn finish(mut self) -> BodyRef {
        let to_file = self.store.files.is_some() && self.buf.len() >= blob::SEALED_MIN;
        if self.index == 0 && !to_file {
            return BodyRef::Inline(Blob::keep(self.buf.split().freeze()));
        }
        if !self.buf.is_empty() {
            self.flush_chunk();
        }
        BodyRef::Chunked { len: self.len, chunk_size: CHUNK_SIZE as u32, generation: self.generation }
    }

    /// Drops a body that will not be stored, with any chunks already written.
    pub fn abandon(self) {
        for i in 0..self.index {
            self.store.remove_chunk(chunk_key(self.key, self.generation, i));
        }
    }
}

#[cfg(test)]
mod tests;
