//! Compact sets and maps of digests for walks over a whole store (garbage collection's
//! mark set, fsck's list of stored content): 32 bytes of key per digest in one sorted
//! array, instead of a hash map of strings at several times that. It only holds and
//! looks up keys; it never reads a store.

use crate::Digest;

/// The 32-byte key of a digest: the raw SHA-256 hash, or the first half of a SHA-512
/// one. Two digests share a key only through a 256-bit collision.
pub type DigestKey = [u8; 32];

/// The key of `d`.
pub fn digest_key(d: &Digest) -> DigestKey {
    let mut key = [0u8; 32];
    // A validated digest's hex is lowercase and at least 64 characters long.
    let _ = hex::decode_to_slice(&d.hex()[..64], &mut key);
    key
}

/// Collects digests (each with a small value), then [`build`](Self::build)s the
/// immutable [`DigestTable`]. Inserting is a push; whenever the unsorted tail has grown
/// to a quarter of the sorted part, the whole is compacted in place (sorted, duplicates
/// dropped), and the array grows by a quarter at a time, so a builder holds at most
/// about 1.6 entries per distinct digest however often digests repeat.
pub struct DigestTableBuilder<V> {
    entries: Vec<(DigestKey, V)>,
    sorted: usize,
}

impl<V: Copy> Default for DigestTableBuilder<V> {
    fn default() -> Self {
        DigestTableBuilder {
            entries: Vec::new(),
            sorted: 0,
        }
    }
}

/// Entries below which a builder never compacts: sorting tiny tails often costs more
/// than the memory it saves.
const COMPACT_MIN: usize = 4096;

impl<V: Copy> DigestTableBuilder<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `d` with `value`; for a digest added twice with different values, one of
    /// them is kept.
    pub fn insert(&mut self, d: &Digest, value: V) {
        let tail = self.entries.len() - self.sorted;
        if tail >= COMPACT_MIN && tail >= self.sorted / 4 {
            self.compact();
        }
        if self.entries.len() == self.entries.capacity() {
            // Not the doubling of `push`: a quarter more at a time.
            let more = (self.entries.len() / 4).max(COMPACT_MIN);
            self.entries.reserve_exact(more);
        }
        self.entries.push((digest_key(d), value));
    }

    fn compact(&mut self) {
        // In place: no second array while sorting.
        self.entries.sort_unstable_by_key(|e| e.0);
        self.entries.dedup_by(|later, first| later.0 == first.0);
        self.sorted = self.entries.len();
    }

    pub fn build(mut self) -> DigestTable<V> {
        self.compact();
        self.entries.shrink_to_fit();
        DigestTable {
            entries: self.entries,
        }
    }
}

/// An immutable sorted table of digests with a value each; lookups are binary searches.
pub struct DigestTable<V> {
    entries: Vec<(DigestKey, V)>,
}

impl<V: Copy> DigestTable<V> {
    /// Distinct digests held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `d`, when held.
    pub fn get(&self, d: &Digest) -> Option<V> {
        let key = digest_key(d);
        self.entries
            .binary_search_by(|e| e.0.cmp(&key))
            .ok()
            .map(|i| self.entries[i].1)
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.get(d).is_some()
    }

    /// The values, in key order.
    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.entries.iter().map(|e| e.1)
    }
}

/// A set of digests: a table without values.
pub type DigestSet = DigestTable<()>;
/// Builds a [`DigestSet`].
pub type DigestSetBuilder = DigestTableBuilder<()>;

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u32) -> Digest {
        Digest::sha256_of(&i.to_be_bytes())
    }

    #[test]
    fn holds_what_was_inserted_once_and_nothing_else() {
        let mut b = DigestTableBuilder::new();
        // Enough to compact several times, each digest inserted three times.
        for round in 0..3u64 {
            for i in 0..10_000 {
                b.insert(&d(i), u64::from(i) * 10 + round);
            }
        }
        let t = b.build();
        assert_eq!(t.len(), 10_000);
        for i in 0..10_000 {
            let v = t.get(&d(i)).unwrap();
            assert_eq!(v / 10, u64::from(i), "one of its values");
        }
        for i in 10_000..10_100 {
            assert!(!t.contains(&d(i)));
        }
        assert_eq!(t.values().count(), 10_000);
    }

    #[test]
    fn sha512_digests_are_keyed_by_their_first_half() {
        let s512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        let other: Digest = format!("sha512:{}{}", "ab".repeat(32), "cd".repeat(32))
            .parse()
            .unwrap();
        let mut b = DigestSetBuilder::new();
        b.insert(&s512, ());
        let t = b.build();
        assert!(t.contains(&s512));
        // Sharing the first 256 bits is the documented (and practically impossible)
        // collision; it only ever makes a set keep more.
        assert!(t.contains(&other));
        assert!(!t.contains(&Digest::sha256_of(b"x")));
    }
}
