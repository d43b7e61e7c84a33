//! The local filesystem backend. Objects are files under the root named by their key;
//! every write goes to a temporary file under `.tmp/` (or `.uploads/` for upload
//! sessions) and becomes visible by one `rename`, after an `fsync` when durability is on.
//! It never interprets keys beyond mapping them to paths.

use crate::{
    ByteStream, Entry, Key, ObjectDeleter, ObjectLister, ObjectMeta, ObjectReader, ObjectStatter,
    ObjectWriter, Result, Store, StoreError, UploadId, UploadStore,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How many times a write retries when a concurrent delete pruned the folder it was
/// creating or renaming into. Each retry follows a lost race, not a fault. With fsync on,
/// creating a folder takes milliseconds, and in a busy repository uploads finishing (and
/// pruning `_uploads/`) race uploads starting all the time: a budget of 8 was once
/// exhausted in ten minutes of the soak (a 500 `ENOENT` on an upload start), so this one
/// is generous.
const PRUNE_RACE_RETRIES: u32 = 256;
/// Size of each chunk read from a file when streaming it out. Large enough that the
/// per-chunk overhead (a channel hop and a syscall) is noise next to the copy, small
/// enough that eight concurrent readers hold only a few MiB.
const READ_CHUNK: usize = 512 * 1024;
/// Chunks read ahead of the consumer per stream; bounds memory per reader.
const READ_AHEAD: usize = 4;
/// Chunks queued between a request body and the writer thread; bounds memory per upload.
const WRITE_QUEUE: usize = 16;
/// After this many bytes are written, start their writeback so the fsync at commit
/// waits only for the tail instead of the whole blob.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// Options for [`FsStore`].
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// The directory that holds everything.
    pub root: PathBuf,
    /// fsync files and directories before a write is acknowledged. Turning it off keeps
    /// crash safety against a killed process (renames still publish only complete
    /// files) but not against power loss.
    pub fsync: bool,
    /// Write upload data with `O_DIRECT` from reused buffers instead of through the
    /// page cache (see [`crate::direct`]); filesystems that refuse it are written the
    /// ordinary way.
    pub direct_io: bool,
}

/// A store in a local directory.
pub struct FsStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    fsync: bool,
    direct_io: bool,
    /// Aligned buffers for direct appends, reused across uploads.
    buffers: crate::direct::BufferPool,
    /// Folder creation and the write into the new folder hold it shared; pruning empty
    /// folders holds it exclusively. In one process a prune therefore never lands
    /// between a writer's mkdir and its rename (under heavy load the retries alone were
    /// once exhausted); across processes the retries still cover the race.
    folders: parking_lot::RwLock<()>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("storage task failed: {e}"))))
}

fn meta_of(m: &fs::Metadata) -> ObjectMeta {
    ObjectMeta {
        size: m.len(),
        modified: m.modified().unwrap_or(std::time::UNIX_EPOCH),
    }
}

impl Inner {
    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.root.join(".uploads").join(id.as_str())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Create `dir` and its missing ancestors, making each new directory entry durable
    /// (fsync of the parent it was created in).
    fn create_dirs(&self, dir: &Path) -> io::Result<()> {
        // A delete pruning empty folders may remove one we just made before its child
        // is created (the child then fails with NotFound): start over a few times.
        let mut attempts = 0;
        loop {
            match self.create_dirs_once(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < PRUNE_RACE_RETRIES => {
                    attempts += 1
                }
                r => return r,
            }
        }
    }

    fn create_dirs_once(&self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut cur = dir;
        while !cur.exists() && cur != self.root {
            missing.push(cur.to_owned());
            cur = match cur.parent() {
                Some(p) => p,
                None => break,
            };
        }
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if let Some(p) = d.parent() {
                self.sync_dir(p)?;
            }
        }
        Ok(())
    }

    /// Remove the folders above a deleted object that it left empty, up to the root, so
    /// a store that shrinks does not keep a skeleton of dead folders (and a repository
    /// whose last tag, manifest and blob are gone stops being listed). A writer racing
    /// with this finds its folder gone and creates it again (see [`Inner::publish`]).
    fn prune_empty_parents(&self, path: &Path) {
        let _exclusive = self.folders.write();
        let mut cur = path.parent();
        while let Some(dir) = cur {
            if dir == self.root || !dir.starts_with(&self.root) {
                break;
            }
            // Fails (and stops the climb) as soon as a folder still holds something.
            if fs::remove_dir(dir).is_err() {
                break;
            }
            cur = dir.parent();
        }
    }

    /// Rename `from` to `to`, creating `to`'s parents, and make the rename durable.
    fn publish(&self, from: &Path, to: &Path) -> io::Result<()> {
        let parent = to
            .parent()
            .ok_or_else(|| io::Error::other("key without parent"))?;
        // A missing folder is created; a delete may prune it again before the rename
        // lands, so try a few times.
        let mut attempts = 0;
        loop {
            match fs::rename(from, to) {
                Ok(()) => break,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        && from.exists()
                        && attempts < PRUNE_RACE_RETRIES =>
                {
                    attempts += 1;
                    // Create the folder and rename into it with no prune in between.
                    let _shared = self.folders.read();
                    self.create_dirs(parent)?;
                    match fs::rename(from, to) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        match self.sync_dir(parent) {
            // A delete of this very key, right after the rename, pruned the folder:
            // that delete came later, and there is nothing left to make durable.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

impl FsStore {
    /// Open (creating if needed) a store rooted at `options.root`. Temporary files left by
    /// a crash are removed; upload sessions are kept so clients can resume them.
    pub async fn open(options: FsOptions) -> Result<FsStore> {
        let inner = Arc::new(Inner {
            root: options.root,
            fsync: options.fsync,
            direct_io: options.direct_io,
            buffers: Default::default(),
            folders: parking_lot::RwLock::new(()),
        });
        let i = inner.clone();
        blocking(move || {
            fs::create_dir_all(&i.root)?;
            let tmp = i.root.join(".tmp");
            if tmp.exists() {
                fs::remove_dir_all(&tmp)?;
            }
            fs::create_dir_all(&tmp)?;
            fs::create_dir_all(i.root.join(".uploads"))?;
            Ok(())
        })
        .await?;
        Ok(FsStore { inner })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Prove the store can be written: a small file created, synced and removed in its
    /// temporary folder. The error names the path (a read-only mount, a directory
    /// owned by someone else, a full disk).
    pub async fn check_writable(&self) -> Result<()> {
        let i = self.inner.clone();
        blocking(move || {
            let probe = i.root.join(".tmp").join("startup-check");
            let write = || -> io::Result<()> {
                let mut f = fs::File::create(&probe)?;
                io::Write::write_all(&mut f, b"berth")?;
                f.sync_all()
            };
            let written = write().map_err(|e| at(&probe, e));
            let _ = fs::remove_file(&probe);
            written
        })
        .await
        .map_err(StoreError::from)
    }
}

#[async_trait]
impl ObjectStatter for FsStore {
    async fn stat(&self, key: &Key) -> Result<Option<ObjectMeta>> {
        let path = self.inner.path(key);
        blocking(move || match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(meta_of(&m))),
            Ok(_) => Ok(None),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        })
        .await
        .map_err(Into::into)
    }
}

/// `e` with the path it happened at, for the log (the kind is kept).
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn not_found(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// An entry's type; `None` when it vanished since the folder was read (a concurrent
/// delete), which listings treat as never there.
fn file_type(entry: &fs::DirEntry) -> io::Result<Option<fs::FileType>> {
    match entry.file_type() {
        Ok(t) => Ok(Some(t)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An entry's size and time; `None` when it vanished since the folder was read.
fn entry_meta(entry: &fs::DirEntry) -> io::Result<Option<ObjectMeta>> {
    match entry.metadata() {
        Ok(m) => Ok(Some(meta_of(&m))),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The entries of `dir` that are part of the store: UTF-8 names not starting with `.`
/// (temporary and upload folders). A folder that is gone (pruned by a concurrent delete)
/// or never existed has none.
fn visible_entries(dir: &Path) -> io::Result<Vec<(String, fs::DirEntry)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry?;
        if let Ok(name) = entry.file_name().into_string()
            && !name.starts_with('.')
        {
            out.push((name, entry));
        }
    }
    Ok(out)
}

/// The whole file at `path`; `None` when there is none (or a folder is there).
fn read_whole(path: &Path) -> io::Result<Option<Bytes>> {
    match fs::read(path) {
        Ok(v) => Ok(Some(Bytes::from(v))),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stream `range` of an open file from a dedicated blocking task, `READ_AHEAD` chunks ahead.
fn stream_file(mut file: File, range: Range<u64>) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(range.start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = range.end - range.start;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64) as usize;
            // read_to_end fills spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want);
            if let Err(e) = (&mut file).take(want as u64).read_to_end(&mut buf) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            let filled = buf.len();
            if filled < want {
                let _ = tx.blocking_send(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "object shrank while being read",
                )));
                return;
            }
            left -= filled as u64;
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // the reader went away
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[async_trait]
impl ObjectReader for FsStore {
    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        let path = self.inner.path(key);
        blocking(move || read_whole(&path))
            .await
            .map_err(Into::into)
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.inner.path(k)).collect();
        blocking(move || paths.iter().map(|p| read_whole(p)).collect())
            .await
            .map_err(Into::into)
    }

    async fn read(&self, key: &Key, range: Range<u64>) -> Result<ByteStream> {
        let path = self.inner.path(key);
        let opened = blocking(move || {
            let f = File::open(&path)?;
            let size = f.metadata()?.len();
            Ok((f, size))
        })
        .await;
        let (file, size) = match opened {
            Ok(x) => x,
            Err(e) if not_found(&e) => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        crate::check_range(&range, size)?;
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        Ok(crate::mapped::stream(file, range)?)
    }
}

#[async_trait]
impl ObjectWriter for FsStore {
    async fn put(&self, key: &Key, bytes: Bytes) -> Result<()> {
        let inner = self.inner.clone();
        let to = inner.path(key);
        blocking(move || {
            let tmp = inner
                .root
                .join(".tmp")
                .join(uuid::Uuid::new_v4().to_string());
            let result = (|| {
                let mut f = File::create(&tmp).map_err(|e| at(&tmp, e))?;
                f.write_all(&bytes).map_err(|e| at(&tmp, e))?;
                if inner.fsync {
                    f.sync_data().map_err(|e| at(&tmp, e))?;
                }
                drop(f);
                inner.publish(&tmp, &to).map_err(|e| at(&to, e))
            })();
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            result
        })
        .await
        .map_err(Into::into)
    }

    async fn touch(&self, key: &Key) -> Result<bool> {
        let path = self.inner.path(key);
        blocking(move || {
            let f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if not_found(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
            f.set_modified(std::time::SystemTime::now())?;
            Ok(true)
        })
        .await
        .map_err(Into::into)
    }
}

#[async_trait]
impl ObjectDeleter for FsStore {
    async fn delete(&self, key: &Key) -> Result<bool> {
        let inner = self.inner.clone();
        let path = inner.path(key);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => {
                inner.prune_empty_parents(&path);
                Ok(true)
            }
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        })
        .await
        .map_err(Into::into)
    }
}

#[async_trait]
impl ObjectLister for FsStore {
    async fn list(&self, prefix: &Key) -> Result<Vec<Entry>> {
        let path = self.inner.path(prefix);
        blocking(move || {
            let mut out = Vec::new();
            for (name, entry) in visible_entries(&path)? {
                let Some(ft) = file_type(&entry)? else {
                    continue;
                };
                if ft.is_dir() {
                    out.push(Entry::Prefix(name));
                } else {
                    out.push(Entry::Object(name));
                }
            }
            out.sort_by(|a, b| a.name().cmp(b.name()));
            Ok(out)
        })
        .await
        .map_err(Into::into)
    }

    async fn walk(&self, prefix: &Key) -> Result<crate::Walk> {
        let path = self.inner.path(prefix);
        let (tx, rx) = tokio::sync::mpsc::channel::<WalkBatch>(WALK_BATCHES);
        tokio::task::spawn_blocking(move || {
            let end = match walk_tree(path, &tx) {
                Ok(()) => WalkBatch::End,
                Err(e) => WalkBatch::Failed(e),
            };
            let _ = tx.blocking_send(end);
        });
        // A walk that stops without saying so (its thread panicked) is an error, never
        // a short listing that looks complete.
        let mut rx = rx;
        let mut ended = false;
        Ok(futures::stream::poll_fn(move |cx| {
            if ended {
                return std::task::Poll::Ready(None);
            }
            match rx.poll_recv(cx) {
                std::task::Poll::Pending => std::task::Poll::Pending,
                std::task::Poll::Ready(Some(WalkBatch::Objects(v))) => {
                    std::task::Poll::Ready(Some(Ok(v)))
                }
                std::task::Poll::Ready(Some(WalkBatch::End)) => {
                    ended = true;
                    std::task::Poll::Ready(None)
                }
                std::task::Poll::Ready(Some(WalkBatch::Failed(e))) => {
                    ended = true;
                    std::task::Poll::Ready(Some(Err(e.into())))
                }
                std::task::Poll::Ready(None) => {
                    ended = true;
                    std::task::Poll::Ready(Some(Err(StoreError::Io(io::Error::other(
                        "the walk of the store stopped part way",
                    )))))
                }
            }
        })
        .flat_map(|b: Result<Vec<(String, ObjectMeta)>>| {
            let items: Vec<Result<(String, ObjectMeta)>> = match b {
                Ok(v) => v.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        })
        .boxed())
    }
}

/// What the walking thread sends: objects, then how it ended.
enum WalkBatch {
    Objects(Vec<(String, ObjectMeta)>),
    End,
    Failed(io::Error),
}

/// Objects a walk hands over at once, and batches it reads ahead of its consumer: at
/// about 100 bytes an entry, the walk holds well under a megabyte whatever the store's
/// size, and the reading thread rarely waits.
const WALK_BATCH: usize = 1024;
const WALK_BATCHES: usize = 8;

/// Depth first below `root`, one folder read at a time: each folder's files (sorted),
/// then each subfolder whole, in name order. Stops when the receiver is gone.
fn walk_tree(root: PathBuf, tx: &tokio::sync::mpsc::Sender<WalkBatch>) -> io::Result<()> {
    let mut batch = Vec::with_capacity(WALK_BATCH);
    let mut stack = vec![(root, String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries = visible_entries(&dir)?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, entry) in entries {
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Some(ft) = file_type(&entry)? else {
                continue;
            };
            if ft.is_dir() {
                subdirs.push((entry.path(), child));
            } else if let Some(m) = entry_meta(&entry)? {
                batch.push((child, m));
                if batch.len() == WALK_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(WALK_BATCH));
                    if tx.blocking_send(WalkBatch::Objects(full)).is_err() {
                        return Ok(());
                    }
                }
            }
        }
        // Popped in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(WalkBatch::Objects(batch));
    }
    Ok(())
}

/// What the request side of an append hands its writer thread.
enum Feed {
    Chunk(Bytes),
    /// The whole body arrived: keep it.
    Done,
    /// The body failed: roll back.
    Fail,
}

/// The size of the upload open (and locked) as `file`, after checking that `path` still
/// names that file: a commit or abort that won the lock first has renamed or removed
/// it, and the upload is over (`NotFound`).
fn open_upload_size(file: &File, path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let open = file.metadata()?;
    let named = fs::metadata(path)?;
    if open.ino() != named.ino() || open.dev() != named.dev() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "upload ended"));
    }
    Ok(open.len())
}

/// Open the upload at `path` and wait for its lock (commit and abort; an append only
/// tries it): the locked file and the upload's size, or `NotFound` once it has ended.
fn lock_upload(path: &Path) -> io::Result<(File, u64)> {
    let file = File::open(path)?;
    file.lock()?;
    let size = open_upload_size(&file, path)?;
    Ok((file, size))
}

/// Start writeback of `len` bytes at `offset` without waiting for it.
#[allow(unsafe_code)] // reason: sync_file_range has no safe wrapper in std; the fd is owned and open
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a valid, open file descriptor; no memory is shared.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[async_trait]
impl UploadStore for FsStore {
    async fn upload_create(&self, id: &UploadId) -> Result<()> {
        let path = self.inner.upload_path(id);
        blocking(move || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| at(&path, e))?;
            Ok(())
        })
        .await
        .map_err(Into::into)
    }

    async fn upload_stat(&self, id: &UploadId) -> Result<Option<ObjectMeta>> {
        let path = self.inner.upload_path(id);
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(meta_of(&m))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(Into::into)
    }

    async fn upload_append(&self, id: &UploadId, offset: u64, mut data: ByteStream) -> Result<u64> {
        let path = self.inner.upload_path(id);
        let inner = self.inner.clone();
        // Open and lock before reading a byte of the body: a second append finds the
        // lock held and is refused at once, with where the upload stands.
        let opened = blocking(move || {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            Ok(match file.try_lock() {
                Ok(()) => {
                    let current = open_upload_size(&file, &path)?;
                    Ok((file, path, current))
                }
                Err(fs::TryLockError::WouldBlock) => Err(file.metadata()?.len()),
                Err(fs::TryLockError::Error(e)) => return Err(e),
            })
        })
        .await;
        let (file, path, current) = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(busy_at)) => return Err(StoreError::OffsetMismatch { current: busy_at }),
            Err(e) if not_found(&e) => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        if current != offset {
            return Err(StoreError::OffsetMismatch { current });
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Feed>(WRITE_QUEUE);
        // The writer owns the locked file until the append has ended either way; a
        // rollback happens under the same lock, so no other append sees the cut.
        let writer = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let written = (|| -> io::Result<Option<u64>> {
                let mut out = crate::direct::Appender::new(
                    &file,
                    &path,
                    offset,
                    &inner.buffers,
                    inner.direct_io,
                )?;
                let mut flushed = offset;
                // A request dropped mid-body closes the channel without `Done`: that
                // is a failure too, so a cancelled append leaves nothing behind.
                while let Some(feed) = rx.blocking_recv() {
                    let chunk = match feed {
                        Feed::Chunk(chunk) => chunk,
                        Feed::Done => return out.finish().map(Some),
                        Feed::Fail => return Ok(None),
                    };
                    out.write(&chunk)?;
                    let pos = out.position();
                    // Only bytes written through the page cache start writeback here
                    // (a direct write is on the device already; this is then a no-op).
                    if inner.fsync && pos - flushed >= WRITEBACK_EVERY {
                        start_writeback(&file, flushed, pos - flushed);
                        flushed = pos;
                    }
                }
                Ok(None)
            })();
            match written {
                Ok(Some(pos)) => Ok(pos),
                failed => {
                    // All or nothing: cut the upload back to where this append started.
                    file.set_len(offset)?;
                    match failed {
                        Err(e) => Err(e),
                        _ => Err(io::Error::other("append abandoned")),
                    }
                }
            }
        });
        let mut failure: Option<io::Error> = None;
        while let Some(item) = data.next().await {
            match item {
                Ok(chunk) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    if tx.send(Feed::Chunk(chunk)).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let _ = tx
            .send(if failure.is_none() {
                Feed::Done
            } else {
                Feed::Fail
            })
            .await;
        drop(tx);
        let written = writer
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("writer task failed: {e}"))));
        match (failure, written) {
            (None, Ok(pos)) => Ok(pos),
            (Some(e), _) | (None, Err(e)) => Err(e.into()),
        }
    }

    async fn upload_read(&self, id: &UploadId, range: Option<Range<u64>>) -> Result<ByteStream> {
        let path = self.inner.upload_path(id);
        let opened = blocking(move || {
            let f = File::open(&path)?;
            let size = f.metadata()?.len();
            Ok((f, size))
        })
        .await;
        match opened {
            Ok((f, size)) => {
                let range = range.unwrap_or(0..size);
                crate::check_range(&range, size)?;
                Ok(stream_file(f, range))
            }
            Err(e) if not_found(&e) => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_commit(&self, id: &UploadId, dest: &Key, size: u64) -> Result<()> {
        let inner = self.inner.clone();
        let from = inner.upload_path(id);
        let to = inner.path(dest);
        let r = blocking(move || {
            // Under the upload's lock: an append in flight finishes (or is cut back)
            // first, and one that starts later finds the file renamed away.
            let (file, current) = lock_upload(&from)?;
            if current != size {
                return Ok(Err(current));
            }
            if inner.fsync {
                file.sync_data()?;
            }
            inner.publish(&from, &to).map(Ok)
        })
        .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(current)) => Err(StoreError::OffsetMismatch { current }),
            Err(e) if not_found(&e) => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_abort(&self, id: &UploadId) -> Result<bool> {
        let path = self.inner.upload_path(id);
        blocking(move || {
            // Taken like a commit: an append in flight ends before the bytes go.
            let _locked = match lock_upload(&path) {
                Ok(l) => l,
                Err(e) if not_found(&e) => return Ok(false),
                Err(e) => return Err(e),
            };
            match fs::remove_file(&path) {
                Ok(()) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(Into::into)
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, ObjectMeta)>> {
        let dir = self.inner.root.join(".uploads");
        blocking(move || {
            let mut out = Vec::new();
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| UploadId::parse(n).ok())
                else {
                    continue;
                };
                // None: committed or aborted while we listed, so no longer in progress.
                if let Some(m) = entry_meta(&entry)? {
                    out.push((id, m));
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
        .await
        .map_err(Into::into)
    }
}

#[async_trait]
impl crate::Leaser for FsStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let dir = self.inner.root.join(".leases");
        let (name, holder) = (name.to_owned(), holder.to_owned());
        Ok(blocking(move || {
            fs::create_dir_all(&dir)?;
            // Processes on one directory take turns through an OS file lock.
            let guard = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{name}.lock")))?;
            guard.lock()?;
            let path = dir.join(&name);
            let held: Option<crate::LeaseRecord> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if held.is_some_and(|l| !l.yields_to(&holder)) {
                return Ok(false);
            }
            let tmp = dir.join(format!("{name}.new"));
            fs::write(
                &tmp,
                serde_json::to_vec(&crate::LeaseRecord::new(&holder, ttl)).unwrap_or_default(),
            )?;
            fs::rename(&tmp, &path)?;
            Ok(true)
        })
        .await?)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let path = self.inner.root.join(".leases").join(name);
        let holder = holder.to_owned();
        blocking(move || {
            let held: Option<crate::LeaseRecord> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if held.is_some_and(|l| l.holder == holder) {
                let _ = fs::remove_file(&path);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}

impl Store for FsStore {
    fn kind(&self) -> &'static str {
        "fs"
    }

    fn space(&self) -> Option<crate::Space> {
        let st = rustix::fs::statvfs(&self.inner.root).ok()?;
        Some(crate::Space {
            total: st.f_blocks.saturating_mul(st.f_frsize),
            available: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conformance_in(dir: &Path, direct_io: bool) {
        let store = FsStore::open(FsOptions {
            root: dir.to_owned(),
            fsync: true,
            direct_io,
        })
        .await
        .unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn conformance_fs() {
        conformance_in(tempfile::tempdir().unwrap().path(), false).await;
    }

    #[tokio::test]
    async fn conformance_fs_direct_io() {
        conformance_in(tempfile::tempdir().unwrap().path(), true).await;
    }

    /// tmpfs refuses `O_DIRECT` (or, on newer kernels, accepts it without alignment
    /// rules): either way the store works there with `direct_io` on.
    #[tokio::test]
    async fn conformance_fs_direct_io_on_tmpfs() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("skipped: no /dev/shm (tmpfs) on this machine");
            return;
        }
        conformance_in(tempfile::tempdir_in(shm).unwrap().path(), true).await;
    }

    #[tokio::test]
    async fn temporary_files_are_cleared_on_open_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(".tmp")).unwrap();
        fs::write(dir.path().join(".tmp/partial"), b"half a blob").unwrap();
        let store = FsStore::open(FsOptions {
            root: dir.path().to_owned(),
            fsync: false,
            direct_io: false,
        })
        .await
        .unwrap();
        assert!(!dir.path().join(".tmp/partial").exists());
        store
            .put(&Key::new("a").unwrap(), Bytes::from_static(b"x"))
            .await
            .unwrap();
        let names: Vec<_> = store.list(&Key::new("a").unwrap()).await.unwrap();
        assert!(names.is_empty());
    }
}

#[cfg(test)]
mod prune_race {
    use super::*;

    /// Writers and deleters of neighbouring keys race folder creation against the
    /// pruning of folders a delete leaves empty: every put must succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn puts_racing_deletes_in_one_folder_never_fail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            FsStore::open(FsOptions {
                root: dir.path().to_owned(),
                fsync: true,
                direct_io: false,
            })
            .await
            .unwrap(),
        );
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..300 {
                        let key = Key::new(format!("repos/a/b/_uploads/{t}-{i}/link")).unwrap();
                        store.put(&key, Bytes::from_static(b"x")).await.unwrap();
                        store.delete(&key).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
