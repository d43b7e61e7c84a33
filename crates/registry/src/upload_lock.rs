//! One lock per upload session in this process, so that the requests of one upload
//! (PATCH, PUT, DELETE) run one after another: the offset a request checks, the bytes
//! it appends, the hash state it continues and the commit it makes all belong to one
//! request at a time. Across processes the store's own conditional append and commit
//! keep the same order; this lock only makes the common case wait instead of fail.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use store::UploadId;

/// The locks of uploads with a request in flight; an entry lives only while someone
/// holds or waits for it.
#[derive(Default)]
pub(crate) struct UploadLocks {
    held: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a request works on an upload.
pub(crate) struct UploadGuard {
    locks: Arc<UploadLocks>,
    id: UploadId,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl UploadLocks {
    /// Wait until no other request of this process works on upload `id`.
    pub(crate) async fn lock(self: &Arc<Self>, id: &UploadId) -> UploadGuard {
        let entry = self.held.lock().entry(id.clone()).or_default().clone();
        UploadGuard {
            locks: self.clone(),
            id: id.clone(),
            lock: Some(entry.lock_owned().await),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.lock().len()
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock();
        self.lock = None;
        // New waiters clone the entry under `held`'s lock, so a count of one (the map's
        // own) means nobody holds or waits for it any more.
        if held
            .get(&self.id)
            .is_some_and(|e| Arc::strong_count(e) == 1)
        {
            held.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_of_one_upload_take_turns_and_entries_go_away() {
        let locks = Arc::new(UploadLocks::default());
        let (a, b) = (UploadId::random(), UploadId::random());
        let first = locks.lock(&a).await;
        // Another upload is not held up.
        let other = locks.lock(&b).await;
        drop(other);
        let l2 = locks.clone();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(&a2).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "a second request waits for the first"
        );
        drop(first);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }
}
