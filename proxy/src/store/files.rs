//! Large bodies on the disk tier as plain files.
//!
//! A body chunk of [`super::blob::SEALED_MIN`] bytes or more is a file of
//! its own under `<cache path>/bodies/`, named by its chunk key, rather than
//! an entry in foyer's device: a hit opens it and the kernel sends it from
//! the page cache (`sendfile`), as nginx serves its cache files. foyer keeps
//! the objects' heads and the small bodies.
//!
//! - **Written off the request path.** A chunk is readable at once from
//!   memory (`pending`) while a writer thread of the store's own writes it
//!   under a temporary name, syncs it to the disk and renames it into
//!   place, so a file at its final name is always whole, even after
//!   `kill -9` or a power loss (about 0.5 ms more per 100 KiB file, on
//!   the writer thread). Past
//!   [`MAX_PENDING`] bytes waiting, a chunk is dropped rather than held: a
//!   body missing a chunk is fetched again (`Store::has_body`).
//! - **Never changed.** A chunk key names one copy's bytes (its generation
//!   is in the key), so a file is written once and only ever removed; a
//!   file removed while a send is in flight keeps its pages until the send
//!   is done.
//! - **Bounded.** The files take at most their share of the disk; past it
//!   the least recently used go (down to nine tenths). Recency is a counter
//!   bumped by each hit, in the index's lock (a hash lookup, nothing read).
//! - **Kept open.** A file a hit opened stays open in the index (up to a
//!   quarter of the open-file limit), so a hot body costs no `open` per hit;
//!   it is closed when it leaves the index and no send holds it.
//! - **Recovered.** At start the folder is listed once: whole files are
//!   indexed (oldest first by modification time), temporary ones removed.
//!   A file whose object is gone (evicted from foyer, or written just before
//!   a crash) is never asked for again and ages out.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};

use bytes::Bytes;

use super::Blob;
use crate::key::Key;

/// Chunk bytes that may wait for the writer; past this a chunk is dropped.
const MAX_PENDING: u64 = 64 << 20;
/// The folder under the cache path.
pub(crate) const FOLDER: &str = "bodies";
const TEMPORARY: &str = "tmp";

#[derive(Debug, Clone)]
struct Indexed {
    len: u64,
    used_at: u64,
    /// The file, kept open once a hit opened it (up to [`open_cap`] files):
    /// a hot body costs no `open` per hit, as a memfd costs none.
    open: Option<Blob>,
}

/// How many body files the index keeps open: a quarter of the process's
/// open-file limit (memfds take at most half, connections the rest).
fn open_cap() -> usize {
    static CAP: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        limit.map_or(usize::MAX, |n| usize::try_from(n / 4).unwrap_or(usize::MAX))
    });
    *CAP
}

#[derive(Debug, Default)]
struct State {
    index: HashMap<Key, Indexed>,
    /// Bytes of the indexed files.
    used: u64,
    /// Chunks handed to the writer and not yet in place.
    pending: HashMap<Key, Bytes>,
    pending_bytes: u64,
    clock: u64,
    /// Index entries holding their file open.
    open: usize,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn forget(&mut self, key: Key) {
        if let Some(b) = self.pending.remove(&key) {
            self.pending_bytes -= b.len() as u64;
        }
        if let Some(i) = self.index.remove(&key) {
            self.drop_entry(&i);
        }
    }

    fn drop_entry(&mut self, i: &Indexed) {
        self.used -= i.len;
        self.open -= usize::from(i.open.is_some());
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    /// Failed writes so far: a full disk fails every one, and the log
    /// hears of the 1st, 2nd, 4th, 8th…
    failed_writes: std::sync::atomic::AtomicU64,
}

enum Job {
    Write(Key, Bytes),
    Unlink(Key),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The body files of one disk tier.
#[derive(Debug)]
pub(crate) struct Files {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Write(k, b) => write!(f, "Write({k:032x}, {})", b.len()),
            Job::Unlink(k) => write!(f, "Unlink({k:032x})"),
            Job::Flush(_) => f.write_str("Flush"),
        }
    }
}

fn path_of(dir: &Path, key: Key) -> PathBuf {
    let name = format!("{key:032x}");
    dir.join(&name[..2]).join(name)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, key: Key, bytes: &Bytes) {
        let path = path_of(&self.dir, key);
        let temporary = path.with_extension(TEMPORARY);
        // On the disk before the name: after a power loss a file at its
        // final name holds its bytes, not zeros of the same length.
        let written = File::create(&temporary)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_data()))
            .and_then(|()| std::fs::rename(&temporary, &path));
        let mut st = self.lock();
        let wanted = st.pending.remove(&key).is_some();
        if wanted {
            st.pending_bytes -= bytes.len() as u64;
        }
        match written {
            Ok(()) if wanted => {
                let used_at = st.tick();
                st.index.insert(key, Indexed { len: bytes.len() as u64, used_at, open: None });
                st.used += bytes.len() as u64;
                let over = st.used > self.capacity;
                drop(st);
                if over {
                    self.evict();
                }
            }
            // Removed while it was being written.
            Ok(()) => {
                drop(st);
                unlink(&path);
            }
            Err(e) => {
                drop(st);
                unlink(&temporary);
                let failed = self.failed_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if failed.is_power_of_two() {
                    tracing::warn!(error = %e, path = %path.display(), failed, "writing a body file failed; the chunk is not stored");
                }
                metrics::counter!("outpost_cache_body_file_errors_total", "op" => "write").increment(1);
            }
        }
    }

    /// Removes the least recently used files until nine tenths of the
    /// capacity is used.
    fn evict(&self) {
        let target = self.capacity / 10 * 9;
        let mut st = self.lock();
        let mut by_age: Vec<(u64, Key)> = st.index.iter().map(|(k, i)| (i.used_at, *k)).collect();
        by_age.sort_unstable();
        let mut gone = Vec::new();
        for (_, key) in by_age {
            if st.used <= target {
                break;
            }
            if let Some(i) = st.index.remove(&key) {
                st.drop_entry(&i);
            }
            gone.push(key);
        }
        drop(st);
        metrics::counter!("outpost_cache_body_files_evicted_total").increment(gone.len() as u64);
        for key in gone {
            unlink(&path_of(&self.dir, key));
        }
    }

    fn run(&self, jobs: &mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Write(key, bytes) => self.write(key, &bytes),
                Job::Unlink(key) => unlink(&path_of(&self.dir, key)),
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

fn unlink(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "removing a body file failed");
            metrics::counter!("outpost_cache_body_file_errors_total", "op" => "remove").increment(1);
        }
    }
}

/// Lists the folder: whole files by age, temporary ones removed.
fn recover(dir: &Path) -> io::Result<State> {
    let mut found = Vec::new();
    for fan in 0..=255u8 {
        let sub = dir.join(format!("{fan:02x}"));
        std::fs::create_dir_all(&sub)?;
        for entry in std::fs::read_dir(&sub)? {
            let entry = entry?;
            let path = entry.path();
            // Only a name this store writes, in the folder it writes it to:
            // anything else would be indexed under a path that is not its own.
            let key = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Key::from_str_radix(n, 16).ok())
                .filter(|k| path_of(dir, *k) == path);
            let meta = entry.metadata()?;
            match key {
                Some(key) if meta.is_file() => {
                    found.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), key, meta.len()));
                }
                // Temporary files (a write a crash cut short), and anything else.
                _ if meta.is_file() => unlink(&path),
                _ => {}
            }
        }
    }
    found.sort_unstable();
    let mut st = State::default();
    for (_, key, len) in found {
        let used_at = st.tick();
        st.index.insert(key, Indexed { len, used_at, open: None });
        st.used += len;
    }
    Ok(st)
}

impl Files {
    /// Opens (and recovers) the body files under `dir`, taking at most
    /// `capacity` bytes. Blocks while it lists the folder.
    pub(crate) fn open(dir: PathBuf, capacity: u64) -> io::Result<Files> {
        let state = recover(&dir)?;
        let over = state.used > capacity;
        tracing::debug!(files = state.index.len(), bytes = state.used, "body files recovered");
        let shared = Arc::new(Shared { dir, capacity, state: Mutex::new(state), failed_writes: Default::default() });
        if over {
            shared.evict();
        }
        let (jobs, rx) = mpsc::channel();
        let writer = Arc::clone(&shared);
        std::thread::Builder::new().name("outpost-bodies".into()).spawn(move || writer.run(&rx))?;
        Ok(Files { shared, jobs })
    }

    /// Stores a chunk: readable at once, on disk soon after. Dropped when
    /// too much is already waiting. A chunk already stored or waiting is
    /// left as it is: a key names one copy's bytes, and a second write
    /// would count them twice (and, while the first waited, remove the
    /// file it put in place).
    pub(crate) fn put(&self, key: Key, bytes: Bytes) {
        let mut st = self.shared.lock();
        if st.pending.contains_key(&key) || st.index.contains_key(&key) {
            return;
        }
        if st.pending_bytes + bytes.len() as u64 > MAX_PENDING {
            drop(st);
            metrics::counter!("outpost_cache_body_file_errors_total", "op" => "queue_full").increment(1);
            return;
        }
        st.pending_bytes += bytes.len() as u64;
        st.pending.insert(key, bytes.clone());
        drop(st);
        if self.jobs.send(Job::Write(key, bytes)).is_err() {
            self.shared.lock().forget(key);
        }
    }

    /// The chunk under `key`, if stored: from memory while it waits to be
    /// written, the open file after.
    pub(crate) fn get(&self, key: Key) -> Option<Blob> {
        let mut st = self.shared.lock();
        if let Some(b) = st.pending.get(&key) {
            return Some(Blob::Heap(b.clone()));
        }
        let used_at = st.tick();
        let indexed = st.index.get_mut(&key)?;
        indexed.used_at = used_at;
        if let Some(open) = &indexed.open {
            if open.spoiled() {
                // Under the lock that found it: a chunk stored again since
                // is not forgotten, nor its file unlinked after its write,
                // by a reader that saw the old one.
                st.forget(key);
                let _ = self.jobs.send(Job::Unlink(key));
                return None;
            }
            return Some(open.clone());
        }
        let len = indexed.len;
        drop(st);
        let path = path_of(&self.shared.dir, key);
        match File::open(&path) {
            // Cut short since it was written or listed: its bytes are not the
            // chunk's any more, and reading them would end an answer early.
            Ok(f) if f.metadata().is_ok_and(|m| m.len() < len) => {
                tracing::warn!(path = %path.display(), "a body file is shorter than it was written; treating it as a miss");
                metrics::counter!("outpost_cache_body_file_errors_total", "op" => "short").increment(1);
                self.remove(key);
                None
            }
            Ok(f) => {
                let blob = Blob::disk_file(f, len as usize);
                let mut st = self.shared.lock();
                let room = st.open < open_cap();
                if let Some(indexed) = st.index.get_mut(&key).filter(|i| room && i.open.is_none()) {
                    indexed.open = Some(blob.clone());
                    st.open += 1;
                }
                Some(blob)
            }
            Err(e) => {
                // Gone from under the index (removed by hand): a miss.
                tracing::warn!(error = %e, "a body file cannot be opened; treating it as a miss");
                metrics::counter!("outpost_cache_body_file_errors_total", "op" => "open").increment(1);
                self.shared.lock().forget(key);
                None
            }
        }
    }

    pub(crate) fn contains(&self, key: Key) -> bool {
        let st = self.shared.lock();
        st.pending.contains_key(&key) || st.index.contains_key(&key)
    }

    /// Are all of `chunks` stored, each `(key, length)` at its length? One
    /// lock for all.
    pub(crate) fn contains_all(&self, mut chunks: impl Iterator<Item = (Key, u64)>) -> bool {
        let st = self.shared.lock();
        chunks.all(|(k, want)| match st.pending.get(&k) {
            Some(b) => b.len() as u64 == want,
            // A file a send or read found cut short is missing.
            None => st.index.get(&k).is_some_and(|i| i.len == want && !i.open.as_ref().is_some_and(Blob::spoiled)),
        })
    }

    pub(crate) fn remove(&self, key: Key) {
        // The unlink is queued under the lock that forgot the file: a chunk
        // stored again in between queues its write after it, never before.
        let mut st = self.shared.lock();
        st.forget(key);
        let _ = self.jobs.send(Job::Unlink(key));
    }

    /// Bytes of the files in place.
    pub(crate) fn used(&self) -> u64 {
        self.shared.lock().used
    }

    /// Waits until every chunk handed over so far is written.
    pub(crate) async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_chunk_stored_twice_is_kept_once_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::open(dir.path().to_path_buf(), 64 << 20).unwrap();
        let (key, bytes) = (7 as Key, Bytes::from(vec![3u8; 100 << 10]));
        // Twice while the first waits for the writer (a refill racing the
        // fetch that stores the same copy), then again once it is in place.
        files.put(key, bytes.clone());
        files.put(key, bytes.clone());
        files.flush().await;
        files.put(key, bytes.clone());
        files.flush().await;
        let st = files.shared.lock();
        assert_eq!((st.used, st.pending_bytes, st.pending.len()), (bytes.len() as u64, 0, 0));
        drop(st);
        assert_eq!(std::fs::read(path_of(dir.path(), key)).unwrap(), bytes, "the file the index names is there");
        assert!(files.get(key).is_some());
    }
}
