//! Compact sets and maps of digests for walks over a whole store (garbage collection's
//! mark set, fsck's list of stored content): 32 bytes of key per digest in one sorted
//! array, instead of a hash map of strings at several times that. It only holds and
//! looks up keys; it never reads a store.

use crate::Digest;

/// The 32-byte key of a SHA-256 digest: its raw hash. (SHA-512 digests, rare, are held
/// whole beside the array: half of one could be written as a SHA-256 reference.)
pub type DigestKey = [u8; 32];

/// The key of `d` (for SHA-512, the first half of its hash).
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
    /// Digests of other algorithms than SHA-256, whole.
    other: std::collections::HashMap<Digest, V>,
    /// The value of a digest inserted twice, from the one held and the new one.
    merge: fn(V, V) -> V,
}

impl<V: Copy> Default for DigestTableBuilder<V> {
    fn default() -> Self {
        DigestTableBuilder::merging(|held, _| held)
    }
}

/// Entries below which a builder never compacts: sorting tiny tails often costs more
/// than the memory it saves.
const COMPACT_MIN: usize = 4096;

impl<V: Copy> DigestTableBuilder<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder whose digests inserted more than once get `merge` of their values (in
    /// no particular order: `merge` should not care), e.g. the union of bit masks.
    pub fn merging(merge: fn(V, V) -> V) -> Self {
        DigestTableBuilder {
            entries: Vec::new(),
            sorted: 0,
            other: std::collections::HashMap::new(),
            merge,
        }
    }

    /// Add `d` with `value`; for a digest added twice with different values, one of
    /// them is kept (or, built with [`Self::merging`], their merge).
    pub fn insert(&mut self, d: &Digest, value: V) {
        if d.algorithm() != crate::Algorithm::Sha256 {
            let merge = self.merge;
            self.other
                .entry(d.clone())
                .and_modify(|held| *held = merge(*held, value))
                .or_insert(value);
            return;
        }
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
        let merge = self.merge;
        self.entries.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1 = merge(first.1, later.1);
            }
            same
        });
        self.sorted = self.entries.len();
    }

    pub fn build(mut self) -> DigestTable<V> {
        self.compact();
        self.entries.shrink_to_fit();
        DigestTable {
            entries: self.entries,
            other: self.other,
        }
    }
}

/// An immutable sorted table of digests with a value each; lookups are binary searches.
pub struct DigestTable<V> {
    entries: Vec<(DigestKey, V)>,
    other: std::collections::HashMap<Digest, V>,
}

impl<V: Copy> DigestTable<V> {
    /// Distinct digests held.
    pub fn len(&self) -> usize {
        self.entries.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `d`, when held.
    pub fn get(&self, d: &Digest) -> Option<V> {
        if d.algorithm() != crate::Algorithm::Sha256 {
            return self.other.get(d).copied();
        }
        let key = digest_key(d);
        self.entries
            .binary_search_by(|e| e.0.cmp(&key))
            .ok()
            .map(|i| self.entries[i].1)
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.get(d).is_some()
    }

    /// The values (SHA-256 digests' in key order, then the others').
    pub fn values(&self) -> impl Iterator<Item = V> + '_ {
        self.entries
            .iter()
            .map(|e| e.1)
            .chain(self.other.values().copied())
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
    fn a_merging_builder_keeps_the_merge_of_every_value_a_digest_was_given() {
        let mut b = DigestTableBuilder::merging(|a: u64, b| a | b);
        // Across several compactions, digest i gets bit `round` in three rounds.
        for round in 0..3u32 {
            for i in 0..10_000 {
                b.insert(&d(i), 1 << round);
            }
        }
        let s512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        b.insert(&s512, 1);
        b.insert(&s512, 4);
        let t = b.build();
        assert_eq!(t.len(), 10_001);
        for i in 0..10_000 {
            assert_eq!(t.get(&d(i)), Some(0b111), "digest {i}");
        }
        assert_eq!(t.get(&s512), Some(0b101));
    }

    #[test]
    fn sha512_digests_are_held_whole_and_never_match_a_sha256_one() {
        let s512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        let same_half: Digest = format!("sha512:{}{}", "ab".repeat(32), "cd".repeat(32))
            .parse()
            .unwrap();
        let as_256: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let mut b = DigestSetBuilder::new();
        b.insert(&s512, ());
        let t = b.build();
        assert!(t.contains(&s512));
        assert!(!t.contains(&same_half));
        assert!(
            !t.contains(&as_256),
            "a SHA-256 reference written as its half"
        );
        assert_eq!(t.len(), 1);
        let mut b = DigestSetBuilder::new();
        b.insert(&as_256, ());
        assert!(!b.build().contains(&s512));
    }
}
