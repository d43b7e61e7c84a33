//! Hashing of upload sessions on a dedicated blocking thread that lives across the
//! requests of one upload. A PATCH returns as soon as its bytes are stored; hashing goes
//! on beside the next chunk's transfer instead of adding its tail to every request.
//! The state is a cache: when it is lost (restart, another replica, idle timeout, a
//! failed append) it is rebuilt by re-reading the stored bytes.

use bytes::Bytes;
use oci::{Algorithm, Hasher};
use std::time::Duration;

/// Chunks queued for a hashing thread; the bound keeps memory per upload small and
/// makes a slow hasher slow the client down instead of buffering.
const HASH_QUEUE: usize = 16;

/// How long a hashing thread waits for the next chunk before giving its thread back.
/// Clients send the chunks of one upload back to back; an upload idle this long is more
/// likely abandoned, and re-hashing it if it does resume costs one read of its bytes.
const HASH_IDLE: Duration = Duration::from_secs(120);

/// A running hash of one upload's bytes.
pub(crate) struct HashWorker {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<Option<Hasher>>,
    /// Bytes fed so far.
    pub offset: u64,
}

impl HashWorker {
    /// Continue hashing from `hasher`, which has seen `offset` bytes.
    pub fn start(mut hasher: Hasher, offset: u64) -> HashWorker {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE);
        let runtime = tokio::runtime::Handle::current();
        let done = tokio::task::spawn_blocking(move || {
            loop {
                match runtime.block_on(tokio::time::timeout(HASH_IDLE, rx.recv())) {
                    Ok(Some(chunk)) => hasher.update(&chunk),
                    Ok(None) => return Some(hasher),
                    Err(_) => return None,
                }
            }
        });
        HashWorker { tx, done, offset }
    }

    /// Can this worker take more bytes of an upload at `size` with `algorithm`?
    pub fn usable_at(&self, size: u64, algorithm: Algorithm, current: Algorithm) -> bool {
        self.offset == size && algorithm == current && !self.tx.is_closed()
    }

    /// A handle to feed chunks in order.
    pub fn feeder(&self) -> tokio::sync::mpsc::Sender<Bytes> {
        self.tx.clone()
    }

    /// Stop feeding and wait for the state; `None` if the thread had given up.
    pub async fn finish(self) -> Option<Hasher> {
        drop(self.tx);
        self.done.await.ok().flatten()
    }
}
