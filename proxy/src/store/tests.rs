//! One battery of store tests, run against the memory-only and the hybrid
//! (memory + disk) store.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use outpost_config::CacheStorage;

use super::entry::tests::sample;
use super::*;

async fn memory_store() -> Store {
    Store::open(&CacheStorage { memory: 64 << 20, disk: 0, path: None, large_bodies: 75 }).await.unwrap()
}

async fn hybrid_store(dir: &std::path::Path) -> Store {
    let cfg = CacheStorage { memory: 16 << 20, disk: 64 << 20, path: Some(dir.to_path_buf()), large_bodies: 75 };
    Store::open(&cfg).await.unwrap()
}

async fn read_all(store: &Store, key: Key, body: &BodyRef, start: u64, end: u64) -> Vec<u8> {
    let parts: Vec<Bytes> = store.read(key, body, start, end).try_collect().await.unwrap();
    parts.concat()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn battery(store: &Store) {
    // Insert, get, remove.
    let e = sample(BodyRef::Inline(Bytes::from_static(b"inline body").into()));
    store.insert(1, e.clone());
    assert_eq!(store.get(1).await, Some(e));
    store.remove(1);
    assert_eq!(store.get(1).await, None);
    assert_eq!(store.get(999).await, None);

    // A small body stays inline; a large one is chunked and reads back by range.
    let mut w = store.body_writer(2);
    w.push(b"small");
    assert_eq!(w.finish(), BodyRef::Inline(Bytes::from_static(b"small").into()));

    let data = pattern(3 * CHUNK_SIZE + 12345);
    let mut w = store.body_writer(3);
    for piece in data.chunks(70_000) {
        w.push(piece);
    }
    assert_eq!(w.stored_through(), 3 * CHUNK_SIZE as u64);
    let body = w.finish();
    assert_eq!(body.len(), data.len() as u64);
    let BodyRef::Chunked { chunk_size, .. } = body else { panic!("expected chunks") };
    assert_eq!(chunk_size as usize, CHUNK_SIZE);
    assert_eq!(read_all(store, 3, &body, 0, data.len() as u64).await, data);
    let (a, b) = (CHUNK_SIZE as u64 - 10, 2 * CHUNK_SIZE as u64 + 10);
    assert_eq!(read_all(store, 3, &body, a, b).await, &data[a as usize..b as usize]);
    assert_eq!(read_all(store, 3, &body, 5, 6).await, &data[5..6]);
    // Exactly one chunk is inline-sized: inline in memory, a file with body
    // files, as is any body from `SEALED_MIN` up; below that, inline.
    let mut w = store.body_writer(4);
    w.push(&pattern(CHUNK_SIZE));
    let files = store.files.is_some();
    match w.finish() {
        BodyRef::Inline(b) => assert!(!files && b.len() == CHUNK_SIZE),
        BodyRef::Chunked { len, .. } => assert!(files && len == CHUNK_SIZE as u64),
    }
    let mut w = store.body_writer(6);
    w.push(&pattern(blob::SEALED_MIN));
    let sixty_four = w.finish();
    assert_eq!(matches!(sixty_four, BodyRef::Chunked { .. }), files, "{sixty_four:?}");
    assert_eq!(read_all(store, 6, &sixty_four, 0, sixty_four.len()).await, pattern(blob::SEALED_MIN));
    let mut w = store.body_writer(7);
    w.push(&pattern(blob::SEALED_MIN - 1));
    assert!(matches!(w.finish(), BodyRef::Inline(_)));

    // Removing the object removes its chunks: reading them is an error.
    let obj = StoredObject { body: body.clone(), ..object_of(sample(BodyRef::Inline(Bytes::new().into()))) };
    store.insert(3, Entry::Object(Arc::new(obj.clone())));
    store.remove_object(3, &obj);
    assert_eq!(store.get(3).await, None);
    let r: Result<Vec<Bytes>, _> = store.read(3, &body, 0, 10).try_collect().await;
    assert!(r.is_err(), "chunks are gone with their object");

    // An abandoned body leaves nothing behind.
    let mut w = store.body_writer(5);
    w.push(&pattern(2 * CHUNK_SIZE + 1));
    let generation = w.generation;
    w.abandon();
    assert_eq!(store.get(chunk_key(5, generation, 0)).await, None);
}

fn object_of(e: Entry) -> StoredObject {
    match e {
        Entry::Object(o) => (*o).clone(),
        _ => panic!("not an object"),
    }
}

#[tokio::test]
async fn battery_memory_only() {
    let store = memory_store().await;
    assert!(!store.is_hybrid());
    battery(&store).await;
}

#[tokio::test]
async fn battery_hybrid() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    assert!(store.is_hybrid());
    assert!(store.files.is_some(), "64 MiB of disk has room for body files");
    battery(&store).await;
    store.close().await;
}

#[tokio::test]
async fn battery_hybrid_without_body_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = Some(dir.path().to_path_buf());
    let cfg = CacheStorage { memory: 16 << 20, disk: MIN_FOYER, path: path.clone(), large_bodies: 75 };
    let store = Store::open(&cfg).await.unwrap();
    assert!(store.files.is_none(), "a disk tier of foyer's minimum is foyer's alone");
    battery(&store).await;
    store.close().await;
    drop(store);
    let cfg = CacheStorage { memory: 16 << 20, disk: 64 << 20, path, large_bodies: 0 };
    let store = Store::open(&cfg).await.unwrap();
    assert!(store.files.is_none(), "large_bodies = 0: every body in foyer");
    battery(&store).await;
    store.close().await;
}

#[test]
fn the_disk_is_split_by_the_large_bodies_share_leaving_foyer_its_minimum() {
    assert_eq!(split_disk(1000 << 20, 75), (250 << 20, 750 << 20));
    assert_eq!(split_disk(1000 << 20, 60), (400 << 20, 600 << 20));
    assert_eq!(split_disk(1000 << 20, 0), (1000 << 20, 0));
    assert_eq!(split_disk(32 << 20, 90), (MIN_FOYER, 16 << 20));
    assert_eq!(split_disk(MIN_FOYER, 75), (MIN_FOYER, 0));
}

/// Writes a body of `len` under `key` and returns where it is.
async fn stored_body(store: &Store, key: Key, len: usize) -> StoredObject {
    let mut w = store.body_writer(key);
    w.push(&pattern(len));
    let obj = StoredObject { body: w.finish(), ..object_of(sample(BodyRef::Inline(Bytes::new().into()))) };
    store.insert(key, Entry::Object(Arc::new(obj.clone())));
    obj
}

fn body_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for fan in std::fs::read_dir(dir.join(files::FOLDER)).unwrap().flatten() {
        found.extend(std::fs::read_dir(fan.path()).unwrap().flatten().map(|e| e.path()));
    }
    found
}

#[tokio::test]
async fn large_bodies_are_plain_files_sent_from_disk_and_recovered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    let obj = stored_body(&store, 1, 100 << 10).await;
    store.close().await;
    // One whole file holding the body's bytes, nothing temporary.
    let files = body_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).unwrap(), pattern(100 << 10));
    // A crash's leftovers: a temporary file, and one that is not ours.
    let fan = files[0].parent().unwrap();
    std::fs::write(fan.join("0123.tmp"), b"cut short").unwrap();
    std::fs::write(fan.join("stray"), b"x").unwrap();
    // Names that parse as a key yet are not where this store writes it.
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(fan.join(format!("+{}", &name[1..])), b"x").unwrap();
    let other_fan = dir.path().join(files::FOLDER).join(if name.starts_with("00") { "01" } else { "00" });
    std::fs::write(other_fan.join(&name), b"misplaced").unwrap();
    drop(store);

    let store = hybrid_store(dir.path()).await;
    assert_eq!(body_files(dir.path()), files, "leftovers removed at start");
    let Some(Entry::Object(o)) = store.get(1).await else { panic!("the head is back") };
    assert!(store.has_body(1, &o));
    assert_eq!(read_all(&store, 1, &o.body, 0, o.body.len()).await, pattern(100 << 10));
    // What a hit sends from: the file itself.
    let pieces: Vec<Piece> = store.pieces(1, &o.body, 10, 20).try_collect().await.unwrap();
    assert!(matches!(&pieces[..], [Piece { blob: Blob::File(_), start: 10, end: 20 }]), "{pieces:?}");
    // Kept open: the next hit opens nothing.
    let again: Vec<Piece> = store.pieces(1, &o.body, 0, 1).try_collect().await.unwrap();
    match (&pieces[0].blob, &again[0].blob) {
        (Blob::File(a), Blob::File(b)) => assert!(Arc::ptr_eq(a, b), "the same open file"),
        other => panic!("{other:?}"),
    }
    // Removed with its object, on disk too.
    store.remove_object(1, &obj);
    assert!(!store.has_body(1, &obj));
    store.close().await;
    assert_eq!(body_files(dir.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn a_body_file_cut_short_on_disk_is_an_error_never_short_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    stored_body(&store, 1, 200 << 10).await;
    store.close().await;
    drop(store);
    let files = body_files(dir.path());
    std::fs::OpenOptions::new().write(true).open(&files[0]).unwrap().set_len(1000).unwrap();

    let store = hybrid_store(dir.path()).await;
    let Some(Entry::Object(o)) = store.get(1).await else { panic!("the head is back") };
    assert!(!store.has_body(1, &o), "a body with a chunk cut short is not whole");
    // Read anyway (as a refill-backed hit would): an error before any byte
    // of the short chunk, one that reads as the chunk missing.
    let whole: Result<Vec<Bytes>, _> = store.read(1, &o.body, 0, o.body.len()).try_collect().await;
    let e = whole.expect_err("a short file is an error");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    // And the chunk leaves the store, on disk too, so a refill can put it
    // back and later requests do not meet it again.
    store.files.as_ref().unwrap().flush().await;
    assert_eq!(body_files(dir.path()), Vec::<std::path::PathBuf>::new());
    assert_eq!(store.files.as_ref().unwrap().used(), 0);
}

#[tokio::test]
async fn a_body_file_cut_short_while_the_node_runs_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    let o = stored_body(&store, 1, 200 << 10).await;
    store.files.as_ref().unwrap().flush().await;
    assert!(store.has_body(1, &o));
    let files = body_files(dir.path());
    std::fs::OpenOptions::new().write(true).open(&files[0]).unwrap().set_len(1000).unwrap();
    // Not yet opened for a read: opening it finds it short.
    let whole: Result<Vec<Bytes>, _> = store.read(1, &o.body, 0, o.body.len()).try_collect().await;
    assert_eq!(whole.expect_err("a short file is an error").kind(), std::io::ErrorKind::NotFound);
    assert!(!store.has_body(1, &o), "the short chunk is gone from the index");
    store.files.as_ref().unwrap().flush().await;
    assert_eq!(body_files(dir.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn a_body_file_that_cannot_be_written_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    // Every fan-out folder replaced by a plain file: no write can succeed.
    for fan in 0..=255u8 {
        let sub = dir.path().join(files::FOLDER).join(format!("{fan:02x}"));
        std::fs::remove_dir(&sub).unwrap();
        std::fs::write(&sub, b"").unwrap();
    }
    let obj = stored_body(&store, 1, 100 << 10).await;
    store.files.as_ref().unwrap().flush().await;
    assert!(!store.has_body(1, &obj), "a failed write leaves no body to serve");
    assert_eq!(store.files.as_ref().unwrap().used(), 0);
}

#[tokio::test]
async fn body_files_keep_to_their_share_of_the_disk_dropping_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    let (_, share) = split_disk(64 << 20, 75);
    let each = CHUNK_SIZE;
    let count = (share / each as u64) as u128 + 8;
    let mut objects = Vec::new();
    for key in 0..count {
        objects.push(stored_body(&store, key, each).await);
        store.files.as_ref().unwrap().flush().await;
        // Key 0 stays in use: read again after every write.
        assert!(store.has_body(0, &objects[0]));
        let _ = store.chunk(chunk_key(0, generation(&objects[0]), 0)).await.expect("key 0 stays");
    }
    let files = store.files.as_ref().unwrap();
    assert!(files.used() <= share, "{} bytes in files over a share of {share}", files.used());
    let on_disk: u64 = body_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert_eq!(on_disk, files.used(), "the index counts what is on disk");
    assert!(store.has_body(0, &objects[0]), "the most recently used stays");
    assert!(!store.has_body(1, &objects[1]), "the least recently used went");
    assert!(store.has_body(count - 1, &objects[count as usize - 1]), "the newest stays");
}

fn generation(o: &StoredObject) -> u64 {
    match o.body {
        BodyRef::Chunked { generation, .. } => generation,
        BodyRef::Inline(_) => panic!("inline"),
    }
}

#[tokio::test]
async fn a_body_removed_while_its_file_is_written_does_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    let mut objects = Vec::new();
    for key in 0..20u128 {
        let obj = stored_body(&store, key, 200 << 10).await;
        store.remove_object(key, &obj);
        objects.push(obj);
    }
    store.close().await;
    for (key, obj) in objects.iter().enumerate() {
        assert!(!store.has_body(key as u128, obj), "body {key} came back");
    }
    assert_eq!(body_files(dir.path()), Vec::<std::path::PathBuf>::new());
    drop(store);
    let store = hybrid_store(dir.path()).await;
    assert!(!store.has_body(3, &objects[3]), "nor after a restart");
}

#[tokio::test]
async fn a_removal_wins_over_a_write_still_queued_for_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    for k in 0..50u128 {
        store.insert(k, Entry::Chunk(Bytes::from_static(b"x").into()));
        store.remove(k);
    }
    for k in 0..50u128 {
        assert_eq!(store.get(k).await, None, "key {k} came back");
    }
    store.close().await;
    let store = hybrid_store(dir.path()).await;
    for k in 0..50u128 {
        assert_eq!(store.get(k).await, None, "key {k} came back after a restart");
    }
}

#[tokio::test]
async fn hybrid_survives_a_restart_and_removals_stay_removed() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(2 * CHUNK_SIZE + 77);
    let body = {
        let store = hybrid_store(dir.path()).await;
        store.insert(10, sample(BodyRef::Inline(Bytes::from_static(b"kept").into())));
        store.insert(11, sample(BodyRef::Inline(Bytes::from_static(b"removed").into())));
        let mut w = store.body_writer(12);
        w.push(&data);
        let body = w.finish();
        store.insert(
            12,
            Entry::Object(Arc::new(StoredObject {
                body: body.clone(),
                ..object_of(sample(BodyRef::Inline(Bytes::new().into())))
            })),
        );
        store.close().await;
        // Removed after being written to disk, in a second run.
        let store = hybrid_store(dir.path()).await;
        assert!(store.get(11).await.is_some(), "written before the first close");
        store.remove(11);
        store.close().await;
        body
    };
    let store = hybrid_store(dir.path()).await;
    assert_eq!(store.get(10).await, Some(sample(BodyRef::Inline(Bytes::from_static(b"kept").into()))));
    assert_eq!(store.get(11).await, None, "the tombstone survived the restart");
    assert!(matches!(store.get(12).await, Some(Entry::Object(_))));
    assert_eq!(read_all(&store, 12, &body, 0, data.len() as u64).await, data);
    store.close().await;
}

#[tokio::test]
async fn overwritten_values_recover_as_the_newest_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = hybrid_store(dir.path()).await;
        for k in 0..200u128 {
            store.insert(k, Entry::Chunk(Bytes::from_static(b"old").into()));
        }
        store.close().await;
        let store = hybrid_store(dir.path()).await;
        for k in 0..200u128 {
            store.insert(k, Entry::Chunk(Bytes::from_static(b"new").into()));
            if k % 2 == 0 {
                store.remove(k);
            }
        }
        store.close().await;
    }
    let store = hybrid_store(dir.path()).await;
    for k in 0..200u128 {
        let want = if k % 2 == 0 { None } else { Some(Entry::Chunk(Bytes::from_static(b"new").into())) };
        assert_eq!(store.get(k).await, want, "key {k}");
    }
}

#[test]
fn a_disk_is_full_below_sixteen_mib_or_two_percent_free_while_the_cache_must_grow() {
    let growing = u64::MAX;
    assert!(full_disk(15 << 20, 100 << 20, growing).is_some());
    assert!(full_disk(17 << 20, 100 << 20, growing).is_none());
    assert!(full_disk(19 << 30, 1000 << 30, growing).is_some(), "under 2 % of a big disk");
    assert!(full_disk(21 << 30, 1000 << 30, growing).is_none());
    let why = full_disk(1 << 20, 64 << 20, growing).unwrap();
    assert!(why.contains("1 MiB free of 64 MiB"), "{why}");
    // A warm cache that already holds all its room writes over its own
    // blocks: a nearly full disk is no problem for it.
    assert!(full_disk(1 << 20, 100 << 20, 0).is_none());
    assert!(full_disk(1 << 20, 100 << 20, 1 << 20).is_none(), "room for what it still needs");
    assert!(full_disk(1 << 20, 100 << 20, 2 << 20).is_some());
}

#[tokio::test]
async fn the_disk_tier_reports_its_filesystem_and_a_memory_store_nothing() {
    assert_eq!(memory_store().await.disk_problem(), None);
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    // The temporary folder's filesystem has room (the tests need it), so
    // any problem here is a wrong reading.
    assert_eq!(store.disk_problem(), None);
    std::fs::remove_dir_all(dir.path()).unwrap();
    let gone = store.disk_problem().expect("a folder that vanished is a problem");
    assert!(gone.contains("cannot be read"), "{gone}");
}

/// A disk tier's key secret is kept beside it, readable by its owner
/// alone, so the same keys find its copies after a restart; a damaged or
/// missing one is made anew, and a memory-only store draws its own.
#[tokio::test]
async fn the_key_secret_is_kept_with_the_disk_tier() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = hybrid_store(dir.path()).await;
    let secret = *store.key_secret();
    store.close().await;
    let file = dir.path().join(SECRET_FILE);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let again = hybrid_store(dir.path()).await;
    assert_eq!(*again.key_secret(), secret, "the same secret after a restart");
    again.close().await;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loosened = hybrid_store(dir.path()).await;
    assert_eq!(*loosened.key_secret(), secret);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "tightened again");
    loosened.close().await;
    let mut made = secret;
    for damage in [&b"not a secret\n"[..], &[0xff, 0xfe, 0x00][..]] {
        std::fs::write(&file, damage).unwrap();
        let damaged = hybrid_store(dir.path()).await;
        assert_ne!(*damaged.key_secret(), made, "{damage:?}");
        made = *damaged.key_secret();
        damaged.close().await;
        assert_eq!(*hybrid_store(dir.path()).await.key_secret(), made, "the new secret is kept");
    }
    assert_ne!(*memory_store().await.key_secret(), *memory_store().await.key_secret());
}
