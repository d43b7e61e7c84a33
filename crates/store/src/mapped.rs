//! Read-only memory mappings of committed files, streamed out as `Bytes` windows: the
//! socket write copies straight from the page cache, with no copy into a user-space
//! buffer first. It owns the mappings; it never learns what a socket or a request is.
//!
//! Only published objects are mapped: they are never truncated or rewritten in place
//! (replacement is a rename, which leaves an open mapping intact), which is what makes
//! mapping them safe.
//!
//! Handing the socket the file itself (`sendfile`, or `splice` through a 1 MiB pipe)
//! was measured too and is slower here: on loopback, page-referencing socket buffers
//! cost the kernel more than the copy they save (0.55-0.62 CPU-s/GiB for one client
//! against 0.27 with mapped windows; see docs/bench.md).

use bytes::Bytes;
use futures::StreamExt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use crate::ByteStream;

/// Size of each window of a mapping handed out as one `Bytes`. Its pages are mapped
/// as the socket write copies them and dropped again when the window is, so a download
/// keeps at most a couple of windows resident. Measured on the 2-core reference machine
/// with 8 concurrent 1 GiB downloads, 2 MiB windows cost 0.22 CPU-s/GiB at 37 MiB peak
/// RSS and 8 MiB windows 0.19 at 68 MiB; 2 MiB keeps the resident set small.
const WINDOW: usize = 2 * 1024 * 1024;

/// A read-only shared mapping of part of a file.
struct Mapping {
    map: memmap2::Mmap,
}

impl Mapping {
    #[allow(unsafe_code)] // reason: memmap2's map is unsafe because another process could truncate the file; published objects are immutable and only ever replaced by rename
    fn new(file: &File, range: Range<u64>) -> io::Result<Mapping> {
        // SAFETY: see the module doc: the object is immutable while mapped.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(range.start)
                .len((range.end - range.start) as usize)
                .map(file)?
        };
        Ok(Mapping { map })
    }

    /// Whether every page of `range` (offsets into the mapping) is in the page cache, so
    /// reading it will not wait for the disk.
    #[allow(unsafe_code)] // reason: mincore only reads page-cache state into a vector sized for the range
    fn resident(&self, range: Range<usize>) -> bool {
        let page = page_size();
        let first = self.map.as_ptr() as usize + range.start;
        let start = first / page * page;
        let len = first + range.len() - start;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: memmap2 maps from the page boundary at or before the requested offset,
        // so the pages from `start` to the end of the range are all mapped; `vec` holds
        // one byte per page of it.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
        rc == 0 && vec.iter().all(|b| b & 1 == 1)
    }
}

fn page_size() -> usize {
    rustix::param::page_size()
}

/// Stream `range` of a committed (immutable) file from one mapping, one window at a
/// time. A window whose pages are not all in the page cache is first read in on the
/// blocking pool, so the consumer's page faults do not wait for the disk on an async
/// worker. (Checking first saves a trip to the blocking pool per window in the usual
/// case of a hot blob: 0.27 against 0.30 CPU-s/GiB for one client.)
pub(crate) fn stream(file: File, range: Range<u64>) -> io::Result<ByteStream> {
    let map = Arc::new(Mapping::new(&file, range)?);
    let len = map.map.len();
    Ok(futures::stream::try_unfold(0usize, move |pos| {
        let map = map.clone();
        async move {
            if pos >= len {
                return Ok(None);
            }
            let end = (pos + WINDOW).min(len);
            let window = Window {
                map,
                start: pos,
                len: end - pos,
            };
            let window = if window.map.resident(window.start..end) {
                window
            } else {
                tokio::task::spawn_blocking(move || {
                    window.map.map.advise_range(
                        memmap2::Advice::PopulateRead,
                        window.start,
                        window.len,
                    )?;
                    Ok::<_, io::Error>(window)
                })
                .await
                .map_err(io::Error::other)??
            };
            Ok(Some((Bytes::from_owner(window), end)))
        }
    })
    .boxed())
}

/// A window of a mapping handed out as `Bytes`; any page-table entries it gained are
/// released on drop.
struct Window {
    map: Arc<Mapping>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map.map[self.start..self.start + self.len]
    }
}

impl Drop for Window {
    #[allow(unsafe_code)] // reason: MADV_DONTNEED on a shared read-only file mapping only drops page-table entries; nothing reads the window after this
    fn drop(&mut self) {
        // SAFETY: the mapping is a read-only shared file mapping, so dropping its pages
        // loses no data; this window's bytes are not referenced any more.
        let _ = unsafe {
            self.map.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.start,
                self.len,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn unaligned_ranges_stream_exactly_their_bytes() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..WINDOW * 2 + 7000).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        for range in [0..data.len(), 4097..data.len() - 3, 10..WINDOW + 10, 5..6] {
            let map = Mapping::new(&file, range.start as u64..range.end as u64).unwrap();
            // Just written, so in the page cache, wherever the range starts.
            assert!(map.resident(0..range.len()), "{range:?}");
            let f = file.try_clone().unwrap();
            let got: Vec<Bytes> = stream(f, range.start as u64..range.end as u64)
                .unwrap()
                .map(|b| b.unwrap())
                .collect()
                .await;
            assert!(got.iter().all(|w| w.len() <= WINDOW));
            assert_eq!(got.concat(), data[range.clone()], "{range:?}");
        }
    }

    #[tokio::test]
    async fn cold_windows_are_read_in_first() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..WINDOW + 3).map(|i| (i % 253) as u8).collect();
        file.write_all(&data).unwrap();
        file.sync_all().unwrap();
        // Clean pages leave the page cache on request.
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let map = Mapping::new(&file, 0..data.len() as u64).unwrap();
        if map.resident(0..data.len()) {
            // tmpfs keeps its pages whatever is asked: nothing cold to test here.
            eprintln!("SKIPPED: the temporary directory cannot drop pages from memory");
            return;
        }
        let got: Vec<Bytes> = stream(file, 0..data.len() as u64)
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert_eq!(got.concat(), data);
    }
}
