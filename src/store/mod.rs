//! Crash-safe metadata of pods and containers: one JSON file per object,
//! name reservations, ID generation and ID-prefix lookup.
//!
//! The store is generic over the record type, so pods and containers share
//! one implementation (each with its own [`Store`] and directory).
//!
//! ## Durability
//! Every record is a file `<dir>/<id>.json`, replaced atomically (temp file,
//! fsync, rename, fsync of the directory; see [`atomic`]). A crash leaves
//! either the old record or the new one; [`Store::open`] sweeps half-written
//! temp files. A caller may answer before the fsyncs
//! ([`Guard::save_unsynced`], then [`Guard::sync`] with the object still
//! locked). What a record *means* after a crash (a pod half made, a
//! container whose monitor died) is for its owner to decide: [`Store::load`]
//! hands every record back and the owner adopts, rewrites or discards it.
//!
//! ## Concurrency
//! One short `std::sync::Mutex` guards the in-memory index (ID → object,
//! name → ID); it is held only for map operations, never across I/O that
//! waits on anything but the local disk, never across an `.await`. Each
//! object has its own `tokio::sync::Mutex`, taken with [`Store::lock`] for
//! the whole of an operation on that object (run, stop, remove...), so
//! operations on one object are serialised while operations on different
//! objects never wait on each other. Readers ([`Store::get`],
//! [`Store::list`]) see the last committed snapshot and never wait on an
//! operation in progress.
//!
//! ## Names
//! A name (`<name>_<namespace>_<uid>_<attempt>` for pods) is reserved before
//! the object is made and stays reserved while its record is in the store.
//! A [`Reservation`] that is dropped without being inserted frees the name,
//! so every failure path of a create releases it without extra code.

pub mod atomic;
pub mod id;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use atomic::{
    AtomicWriteError, remove_durably, sync_dir, sync_file, write_atomic, write_volatile,
};
pub use id::generate_id;

/// Extension of record files.
const RECORD_EXT: &str = "json";

/// Whether a record write must survive a power loss or only a crash of
/// the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    Durable,
    UntilReboot,
}

/// One record file read by [`Store::load`]: the ID its name gives, and
/// the record or why it could not be read.
pub type Loaded<T> = (String, Result<T, StoreError>);

/// A persistent object: serialisable, with an ID and a reserved name.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    fn id(&self) -> &str;
    /// The unique name reserved for this object while it exists.
    fn name(&self) -> &str;
    /// Reads a record file. A record type whose format changed overrides
    /// this to upgrade what older versions wrote.
    fn decode(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }
}

/// The plural of a kind of record: "pod sandboxes", "containers".
fn plural(kind: &str) -> String {
    if kind.ends_with('x') || kind.ends_with('s') || kind.ends_with("sh") || kind.ends_with("ch") {
        format!("{kind}es")
    } else {
        format!("{kind}s")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error(
        "{kind} ID prefix {prefix:?} is ambiguous: it matches {count} {}",
        plural(kind)
    )]
    Ambiguous {
        kind: &'static str,
        prefix: String,
        count: usize,
    },
    #[error("{kind} ID must not be empty")]
    EmptyId { kind: &'static str },
    #[error("{kind} name {name:?} is already reserved for {kind} {id}")]
    NameTaken {
        kind: &'static str,
        name: String,
        id: String,
    },
    #[error("{kind} ID {id} is already in use")]
    IdTaken { kind: &'static str, id: String },
    #[error("{kind} record {id} does not match its reservation ({reason})")]
    Mismatch {
        kind: &'static str,
        id: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Io(#[from] AtomicWriteError),
    #[error("cannot read {kind} record {path}: {source}")]
    Read {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {kind} record {id}: {source}")]
    Encode {
        kind: &'static str,
        id: String,
        source: serde_json::Error,
    },
    #[error("corrupt {kind} record {path}: {source}")]
    Corrupt {
        kind: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot generate a {kind} ID: {source}")]
    Random {
        kind: &'static str,
        #[source]
        source: getrandom::Error,
    },
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// A set of records of one kind in one directory. Cheap to clone.
pub struct Store<T: Record> {
    inner: Arc<Inner<T>>,
}

impl<T: Record> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    /// What the records are, for messages: "pod sandbox", "container".
    kind: &'static str,
    dir: PathBuf,
    index: Mutex<Index<T>>,
}

struct Index<T> {
    objects: BTreeMap<String, Arc<Entry<T>>>,
    /// Reserved name → ID, for objects in `objects` and reservations alike.
    names: HashMap<String, String>,
    /// IDs handed out by reservations not yet inserted.
    reserved_ids: HashSet<String>,
}

struct Entry<T> {
    id: String,
    /// Serialises operations on this object.
    op: Arc<tokio::sync::Mutex<()>>,
    /// The last committed record.
    current: RwLock<Arc<T>>,
    /// Set under `op` when the object leaves the store, for waiters.
    removed: AtomicBool,
}

impl<T> Entry<T> {
    fn snapshot(&self) -> Arc<T> {
        // A poisoned lock still holds a whole Arc: nothing to repair.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl<T> Inner<T> {
    fn index(&self) -> MutexGuard<'_, Index<T>> {
        // Critical sections are plain map operations; a panic inside one
        // cannot leave the maps half-updated in a way worth refusing.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Record> Inner<T> {
    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{RECORD_EXT}"))
    }

    fn resolve(&self, index: &Index<T>, key: &str) -> Result<Arc<Entry<T>>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::EmptyId { kind: self.kind });
        }
        if let Some(entry) = index.objects.get(key) {
            return Ok(entry.clone());
        }
        let mut matches = index
            .objects
            .range(key.to_owned()..)
            .take_while(|(id, _)| id.starts_with(key));
        let Some((_, first)) = matches.next() else {
            return Err(StoreError::NotFound {
                kind: self.kind,
                id: key.to_owned(),
            });
        };
        let others = matches.count();
        if others > 0 {
            return Err(StoreError::Ambiguous {
                kind: self.kind,
                prefix: key.to_owned(),
                count: others + 1,
            });
        }
        Ok(first.clone())
    }

    fn persist(&self, record: &T, durability: Durability) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Encode {
            kind: self.kind,
            id: record.id().to_owned(),
            source,
        })?;
        let path = self.path_of(record.id());
        match durability {
            Durability::Durable => write_atomic(&path, &json, 0o600)?,
            Durability::UntilReboot => write_volatile(&path, &json, 0o600)?,
        }
        Ok(())
    }
}

impl<T: Record> Store<T> {
    /// Opens (creating it if needed) the store in `dir`, empty in memory;
    /// call [`Store::load`] to read what is on disk.
    pub fn open(dir: impl Into<PathBuf>, kind: &'static str) -> Result<Self, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| AtomicWriteError {
                op: "create directory",
                path: dir.clone(),
                source,
            })?;
        let swept = atomic::remove_stale_temp_files(&dir)?;
        if swept > 0 {
            tracing::info!(dir = %dir.display(), swept, "removed temp files of interrupted writes");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                kind,
                dir,
                index: Mutex::new(Index {
                    objects: BTreeMap::new(),
                    names: HashMap::new(),
                    reserved_ids: HashSet::new(),
                }),
            }),
        })
    }

    /// Where the record of `id` lives.
    #[cfg(test)]
    pub fn record_path(&self, id: &str) -> PathBuf {
        self.inner.path_of(id)
    }

    /// Reads every record on disk, sorted by ID: the ID its file name
    /// gives, and the record or why it could not be read. Nothing is
    /// added to the store; the caller adopts what it keeps.
    pub fn load(&self) -> Result<Vec<Loaded<T>>, StoreError> {
        let kind = self.inner.kind;
        let dir = &self.inner.dir;
        let read_dir_err = |source| StoreError::Read {
            kind,
            path: dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir_err)? {
            let entry = entry.map_err(read_dir_err)?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(RECORD_EXT) {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if id.starts_with('.') {
                continue;
            }
            let record = std::fs::read(&path)
                .map_err(|source| StoreError::Read {
                    kind,
                    path: path.clone(),
                    source,
                })
                .and_then(|bytes| {
                    T::decode(&bytes).map_err(|source| StoreError::Corrupt {
                        kind,
                        path: path.clone(),
                        source,
                    })
                });
            out.push((id.to_owned(), record));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Reserves `name` under a fresh ID. Fails with `NameTaken` (naming the
    /// holder's ID) if the name is reserved.
    pub fn reserve(&self, name: &str) -> Result<Reservation<T>, StoreError> {
        let kind = self.inner.kind;
        loop {
            let id = generate_id().map_err(|source| StoreError::Random { kind, source })?;
            match self.reserve_with_id(name, &id) {
                // 256 random bits: a collision is a curiosity, but cheap to survive.
                Err(StoreError::IdTaken { .. }) => continue,
                other => return other,
            }
        }
    }

    /// Reserves `name` under a given `id` (re-adopting a record at start).
    pub fn reserve_with_id(&self, name: &str, id: &str) -> Result<Reservation<T>, StoreError> {
        let kind = self.inner.kind;
        let mut index = self.inner.index();
        if let Some(holder) = index.names.get(name) {
            return Err(StoreError::NameTaken {
                kind,
                name: name.to_owned(),
                id: holder.clone(),
            });
        }
        if index.objects.contains_key(id) || index.reserved_ids.contains(id) {
            return Err(StoreError::IdTaken {
                kind,
                id: id.to_owned(),
            });
        }
        index.names.insert(name.to_owned(), id.to_owned());
        index.reserved_ids.insert(id.to_owned());
        Ok(Reservation {
            inner: self.inner.clone(),
            id: id.to_owned(),
            name: name.to_owned(),
            done: false,
        })
    }

    /// Writes `record` to disk without adding it to the store: for records
    /// of objects still being made (so a crash leaves a trace to clean).
    pub fn persist(&self, record: &T) -> Result<(), StoreError> {
        self.inner.persist(record, Durability::Durable)
    }

    /// Persists `record` and adds it to the store, keeping the name.
    pub fn insert(&self, reservation: Reservation<T>, record: T) -> Result<Arc<T>, StoreError> {
        reservation.check(&record)?;
        self.inner.persist(&record, Durability::Durable)?;
        Ok(self.adopt_checked(reservation, record))
    }

    /// Adds a record already on disk (as it is) to the store.
    pub fn adopt(&self, reservation: Reservation<T>, record: T) -> Result<Arc<T>, StoreError> {
        reservation.check(&record)?;
        Ok(self.adopt_checked(reservation, record))
    }

    fn adopt_checked(&self, mut reservation: Reservation<T>, record: T) -> Arc<T> {
        let record = Arc::new(record);
        let entry = Arc::new(Entry {
            id: reservation.id.clone(),
            op: Arc::new(tokio::sync::Mutex::new(())),
            current: RwLock::new(record.clone()),
            removed: AtomicBool::new(false),
        });
        let mut index = self.inner.index();
        index.reserved_ids.remove(&reservation.id);
        index.objects.insert(reservation.id.clone(), entry);
        reservation.done = true;
        record
    }

    /// Deletes the record file of an object that is not in the store (one
    /// whose making failed, or a leftover found at start).
    pub fn discard(&self, id: &str) -> Result<(), StoreError> {
        if self.inner.index().objects.contains_key(id) {
            return Err(StoreError::IdTaken {
                kind: self.inner.kind,
                id: id.to_owned(),
            });
        }
        remove_durably(&self.inner.path_of(id))?;
        Ok(())
    }

    /// The full ID of `id_or_prefix`.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String, StoreError> {
        let index = self.inner.index();
        Ok(self.inner.resolve(&index, id_or_prefix)?.id.clone())
    }

    /// The last committed record of `id_or_prefix`; never waits.
    pub fn get(&self, id_or_prefix: &str) -> Result<Arc<T>, StoreError> {
        let entry = {
            let index = self.inner.index();
            self.inner.resolve(&index, id_or_prefix)?
        };
        Ok(entry.snapshot())
    }

    /// Takes the object's operation lock (waiting for the operation in
    /// progress, if any). `NotFound` if it is, or meanwhile was, removed.
    pub async fn lock(&self, id_or_prefix: &str) -> Result<Guard<T>, StoreError> {
        let entry = {
            let index = self.inner.index();
            self.inner.resolve(&index, id_or_prefix)?
        };
        let op = entry.op.clone().lock_owned().await;
        if entry.removed.load(Ordering::Acquire) {
            return Err(StoreError::NotFound {
                kind: self.inner.kind,
                id: entry.id.clone(),
            });
        }
        Ok(Guard {
            inner: self.inner.clone(),
            entry,
            _op: op,
        })
    }

    /// Snapshots of every record, sorted by ID; never waits.
    pub fn list(&self) -> Vec<Arc<T>> {
        let entries: Vec<Arc<Entry<T>>> = self.inner.index().objects.values().cloned().collect();
        entries.iter().map(|e| e.snapshot()).collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.inner.index().objects.is_empty()
    }

    /// The ID holding `name`, if reserved.
    #[cfg(test)]
    pub fn name_holder(&self, name: &str) -> Option<String> {
        self.inner.index().names.get(name).cloned()
    }
}

/// A name and ID held for an object being made. Dropping it without
/// [`Store::insert`]/[`Store::adopt`] frees both.
pub struct Reservation<T> {
    inner: Arc<Inner<T>>,
    id: String,
    name: String,
    done: bool,
}

impl<T: Record> Reservation<T> {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, record: &T) -> Result<(), StoreError> {
        let reason = if record.id() != self.id {
            "different ID"
        } else if record.name() != self.name {
            "different name"
        } else {
            return Ok(());
        };
        Err(StoreError::Mismatch {
            kind: self.inner.kind,
            id: record.id().to_owned(),
            reason,
        })
    }
}

impl<T> Drop for Reservation<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut index = self.inner.index();
        index.reserved_ids.remove(&self.id);
        if index.names.get(&self.name) == Some(&self.id) {
            index.names.remove(&self.name);
        }
    }
}

/// The operation lock of one object, with its committed record.
pub struct Guard<T> {
    inner: Arc<Inner<T>>,
    entry: Arc<Entry<T>>,
    _op: tokio::sync::OwnedMutexGuard<()>,
}

impl<T: Record> Guard<T> {
    /// The committed record.
    pub fn get(&self) -> Arc<T> {
        self.entry.snapshot()
    }

    /// Persists `record` and makes it the committed one.
    pub fn save(&mut self, record: T) -> Result<Arc<T>, StoreError> {
        self.save_with(record, Durability::Durable)
    }

    /// Persists `record` and makes it the committed one, leaving the
    /// fsyncs to [`Guard::sync`]: the record is in place at once (a killed
    /// daemon finds it: the page cache outlives the process), durable once
    /// `sync` returns. For a record whose news a power loss makes moot (a
    /// started container: its processes die with the host), so that the
    /// caller answers first and syncs after, keeping the guard until then:
    /// the next operation on the object finds the record durable.
    pub fn save_unsynced(&mut self, record: T) -> Result<Arc<T>, StoreError> {
        self.save_with(record, Durability::UntilReboot)
    }

    /// Makes the record on disk durable: fsyncs the file and its directory.
    pub fn sync(&self) -> Result<(), StoreError> {
        sync_file(&self.inner.path_of(&self.entry.id))?;
        Ok(())
    }

    fn save_with(&mut self, record: T, durability: Durability) -> Result<Arc<T>, StoreError> {
        if record.id() != self.entry.id {
            return Err(StoreError::Mismatch {
                kind: self.inner.kind,
                id: record.id().to_owned(),
                reason: "saved over another object",
            });
        }
        self.inner.persist(&record, durability)?;
        let record = Arc::new(record);
        *self
            .entry
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = record.clone();
        Ok(record)
    }

    /// Deletes the record durably, then drops the object from the store
    /// and frees its name. On error the object stays as it was.
    pub fn remove(self) -> Result<(), StoreError> {
        remove_durably(&self.inner.path_of(&self.entry.id))?;
        self.entry.removed.store(true, Ordering::Release);
        let name = self.entry.snapshot().name().to_owned();
        let mut index = self.inner.index();
        index.objects.remove(&self.entry.id);
        if index.names.get(&name) == Some(&self.entry.id) {
            index.names.remove(&name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::id::is_full_id;
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Thing {
        id: String,
        name: String,
        value: u32,
    }

    impl Record for Thing {
        fn id(&self) -> &str {
            &self.id
        }
        fn name(&self) -> &str {
            &self.name
        }
    }

    fn store() -> (tempfile::TempDir, Store<Thing>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("things"), "thing").unwrap();
        (dir, store)
    }

    fn make(store: &Store<Thing>, name: &str) -> String {
        let r = store.reserve(name).unwrap();
        let id = r.id().to_owned();
        let thing = Thing {
            id: id.clone(),
            name: name.into(),
            value: 1,
        };
        store.insert(r, thing).unwrap();
        id
    }

    fn with_id(store: &Store<Thing>, name: &str, id: &str) {
        let r = store.reserve_with_id(name, id).unwrap();
        let thing = Thing {
            id: id.into(),
            name: name.into(),
            value: 0,
        };
        store.insert(r, thing).unwrap();
    }

    #[test]
    fn insert_persists_and_load_reads_back() {
        let (_dir, store) = store();
        let id = make(&store, "a");
        assert!(is_full_id(&id));
        assert!(store.record_path(&id).exists());
        let again = Store::<Thing>::open(store.inner.dir.clone(), "thing").unwrap();
        let loaded = again.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].0, id);
        let thing = loaded[0].1.as_ref().unwrap();
        assert_eq!(thing.name, "a");
        assert!(again.is_empty(), "load adopts nothing by itself");
    }

    #[test]
    fn duplicate_name_names_the_holder_and_is_free_after_removal() {
        let (_dir, store) = store();
        let id = make(&store, "web_default_uid_0");
        match store.reserve("web_default_uid_0") {
            Err(StoreError::NameTaken { id: holder, .. }) => assert_eq!(holder, id),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("name reserved twice"),
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            store.lock(&id).await.unwrap().remove().unwrap();
        });
        assert!(!store.record_path(&id).exists());
        assert!(store.name_holder("web_default_uid_0").is_none());
        make(&store, "web_default_uid_0");
    }

    #[test]
    fn dropped_reservation_frees_the_name() {
        let (_dir, store) = store();
        let r = store.reserve("x").unwrap();
        let id = r.id().to_owned();
        assert_eq!(store.name_holder("x"), Some(id));
        assert!(store.reserve("x").is_err());
        drop(r);
        assert!(store.name_holder("x").is_none());
        let _r = store.reserve("x").unwrap();
    }

    #[test]
    fn prefix_lookup_exact_unique_ambiguous_missing() {
        let (_dir, store) = store();
        let a = format!("abc1{}", "0".repeat(60));
        let b = format!("abc2{}", "0".repeat(60));
        let c = format!("ffff{}", "0".repeat(60));
        with_id(&store, "a", &a);
        with_id(&store, "b", &b);
        with_id(&store, "c", &c);
        assert_eq!(store.resolve(&a).unwrap(), a);
        assert_eq!(store.resolve("abc1").unwrap(), a);
        assert_eq!(store.resolve("f").unwrap(), c);
        match store.resolve("abc") {
            Err(e @ StoreError::Ambiguous { count: 2, .. }) => {
                assert!(e.to_string().contains("ambiguous"), "{e}");
                assert!(e.to_string().contains("\"abc\""), "{e}");
            }
            other => panic!("expected ambiguous, got {other:?}"),
        }
        let pods = StoreError::Ambiguous {
            kind: "pod sandbox",
            prefix: "ab".into(),
            count: 3,
        };
        assert!(
            pods.to_string().ends_with("it matches 3 pod sandboxes"),
            "{pods}"
        );
        match store.resolve("abd") {
            Err(e @ StoreError::NotFound { .. }) => assert!(e.to_string().contains("abd")),
            other => panic!("expected not found, got {other:?}"),
        }
        assert!(matches!(store.resolve(""), Err(StoreError::EmptyId { .. })));
        assert_eq!(store.get("ff").unwrap().name, "c");
    }

    #[test]
    fn reserve_with_taken_id_fails() {
        let (_dir, store) = store();
        let id = make(&store, "a");
        assert!(matches!(
            store.reserve_with_id("b", &id),
            Err(StoreError::IdTaken { .. })
        ));
        // The failed reservation must not have kept the name.
        assert!(store.name_holder("b").is_none());
    }

    #[test]
    fn insert_refuses_a_record_of_another_reservation() {
        let (_dir, store) = store();
        let r = store.reserve("a").unwrap();
        let thing = Thing {
            id: "0".repeat(64),
            name: "a".into(),
            value: 0,
        };
        assert!(matches!(
            store.insert(r, thing),
            Err(StoreError::Mismatch { .. })
        ));
        assert!(store.is_empty());
        assert!(store.name_holder("a").is_none());
    }

    #[test]
    fn corrupt_record_is_reported_not_fatal() {
        let (_dir, store) = store();
        let good = make(&store, "good");
        let bad = "b".repeat(64);
        std::fs::write(store.record_path(&bad), b"{ not json").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), 2);
        let (bad_id, bad_result) = loaded.iter().find(|(id, _)| *id == bad).unwrap();
        assert_eq!(bad_id, &bad);
        let err = bad_result.as_ref().unwrap_err().to_string();
        assert!(err.contains(&bad), "{err}");
        assert!(loaded.iter().any(|(id, r)| *id == good && r.is_ok()));
    }

    #[test]
    fn persist_and_discard_leave_the_index_alone() {
        let (_dir, store) = store();
        let r = store.reserve("half").unwrap();
        let thing = Thing {
            id: r.id().into(),
            name: "half".into(),
            value: 0,
        };
        store.persist(&thing).unwrap();
        assert!(store.is_empty());
        assert_eq!(store.load().unwrap().len(), 1);
        store.discard(r.id()).unwrap();
        assert!(store.load().unwrap().is_empty());
    }

    #[tokio::test]
    async fn save_updates_snapshot_and_disk() {
        let (_dir, store) = store();
        let id = make(&store, "a");
        let mut guard = store.lock(&id[..8]).await.unwrap();
        let mut next = (*guard.get()).clone();
        next.value = 42;
        guard.save(next).unwrap();
        drop(guard);
        assert_eq!(store.get(&id).unwrap().value, 42);
        let on_disk: Thing =
            serde_json::from_slice(&std::fs::read(store.record_path(&id)).unwrap()).unwrap();
        assert_eq!(on_disk.value, 42);
    }

    #[tokio::test]
    async fn an_unsynced_save_is_read_back_after_a_restart_and_syncs_later() {
        let (_dir, store) = store();
        let id = make(&store, "a");
        let mut guard = store.lock(&id).await.unwrap();
        let mut next = (*guard.get()).clone();
        next.value = 7;
        guard.save_unsynced(next).unwrap();
        assert_eq!(store.get(&id).unwrap().value, 7, "committed at once");
        let files = std::fs::read_dir(&store.inner.dir).unwrap().count();
        assert_eq!(files, 1, "the record alone, no temp file");
        let again = Store::<Thing>::open(store.inner.dir.clone(), "thing").unwrap();
        let loaded = again.load().unwrap();
        assert_eq!(loaded[0].1.as_ref().unwrap().value, 7);
        guard.sync().unwrap();
        drop(guard);
        // A sync of a record that is gone says so.
        let guard = store.lock(&id).await.unwrap();
        std::fs::remove_file(store.inner.path_of(&id)).unwrap();
        let err = guard.sync().unwrap_err().to_string();
        assert!(err.contains(&id), "{err}");
    }

    #[tokio::test]
    async fn per_object_locks_are_independent_and_readers_never_wait() {
        let (_dir, store) = store();
        let a = make(&store, "a");
        let b = make(&store, "b");
        let _held = store.lock(&a).await.unwrap();
        // Another object locks at once, and a reader of the locked one too.
        tokio::time::timeout(Duration::from_secs(1), store.lock(&b))
            .await
            .expect("lock on b waited for a")
            .unwrap();
        assert_eq!(store.get(&a).unwrap().name, "a");
        assert_eq!(store.list().len(), 2);
        // The same object waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), store.lock(&a))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn waiter_sees_not_found_after_removal() {
        let (_dir, store) = store();
        let id = make(&store, "a");
        let guard = store.lock(&id).await.unwrap();
        let waiter = {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move { store.lock(&id).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        guard.remove().unwrap();
        let result = waiter.await.unwrap();
        assert!(matches!(result, Err(StoreError::NotFound { .. })));
    }
}
