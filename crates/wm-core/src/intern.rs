//! `Interner`: one copy of each distinct value, for as long as anything uses it.
//!
//! A node's entities repeat a lot: the same label keys and values on every pod of a deployment,
//! the same image on many containers, the same image and pod-template tags in the tagger, the
//! same tag lists in a remote tagger's replica. Each of those four keeps one copy of each
//! distinct value in an `Interner` and hands out reference-counted handles to it:
//!
//! | values | handle | interner |
//! |---|---|---|
//! | label, annotation and other texts | [`IStr`](crate::IStr) | wm-core, process-wide |
//! | container images | [`ContainerImage`](crate::ContainerImage) | wm-core, process-wide |
//! | tags many entities share | the tagger's `SharedPart` | tagger, process-wide |
//! | a replica's tag lists | wm-ipc's `TagList` | wm-ipc, process-wide |
//!
//! # The one rule: a value leaves when its last user drops it
//!
//! Every handle type calls [`Interner::release`] from its `Drop`, and that is the only way a
//! value leaves the set. `release` takes the lock of the value's shard, and if the reference
//! it drops and the set's own are the only two left, removes the value before dropping it.
//!
//! Why a count of two is safe to act on: the count rises in two ways, by a lookup in the set
//! (which clones the set's reference) or by cloning a handle that exists. A lookup holds the
//! shard's lock, which `release` holds too; a clone needs a handle other than the two counted,
//! and there is none. So nothing can add a reference between the check and the removal.
//!
//! A handle whose value is not the set's copy (a copy made for a write, or a text that shares an
//! entity id's allocation) passes through `release` too: the set's copy is a different
//! allocation, so nothing is removed.
//!
//! # Shards and the hash seed
//!
//! The set is split into 16 shards, each behind its own mutex, so that threads interning
//! different values seldom wait on each other. Values come from workloads: with a hash seed
//! known in advance, a workload could pick labels that all land in one shard and one probe
//! sequence and slow every insert. The seed is drawn once per process, from std's randomly keyed
//! hasher, so there is nothing to aim at; one seed per process keeps a value in the same shard
//! every time.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sync::MutexExt;

const SHARDS: usize = 16;

/// Describes a handle an [`Interner`] can keep: reference counted, and found in the set by its
/// key (the value it points at).
pub trait Kept: Borrow<Self::Key> + Hash + Eq {
    /// What the set is searched by: the value itself, or a view of it that hashes and compares
    /// the same way.
    type Key: ?Sized + Hash + Eq;

    /// Returns the number of references to the value, the set's own included.
    fn references(&self) -> usize;

    /// Tells whether both point at the same allocation.
    fn is(&self, other: &Self) -> bool;

    /// Returns its key.
    fn key(&self) -> &Self::Key {
        self.borrow()
    }
}

impl<T: ?Sized + Hash + Eq> Kept for Arc<T> {
    type Key = T;

    fn references(&self) -> usize {
        Arc::strong_count(self)
    }

    fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
}

type Set<K> = HashSet<K, foldhash::fast::FixedState>;

/// Keeps one copy of each distinct value for as long as some handle to it exists (see the
/// module docs for the rule).
///
/// Meant to live in a `static`: [`Interner::new`] is `const`.
pub struct Interner<K: Kept> {
    shards: [Mutex<Option<Set<K>>>; SHARDS],
}

impl<K: Kept> std::fmt::Debug for Interner<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner").field("len", &self.len()).finish()
    }
}

impl<K: Kept> Default for Interner<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// Returns the hash seed of every interner's shards and sets, drawn once per process.
fn seed() -> u64 {
    static SEED: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64));
    *SEED
}

impl<K: Kept> Interner<K> {
    /// Creates an empty interner. It allocates nothing until the first value comes.
    pub const fn new() -> Self {
        Self { shards: [const { Mutex::new(None) }; SHARDS] }
    }

    /// Locks the shard that keeps `key`.
    fn shard(&self, key: &K::Key) -> MutexGuard<'_, Option<Set<K>>> {
        let at = foldhash::fast::FixedState::with_seed(seed()).hash_one(key) as usize % SHARDS;
        // A set is never left half-changed: a panic while it was held changed nothing.
        self.shards[at].locked()
    }

    /// Returns the set's copy of `key`, first adding the handle `make` builds when there is none.
    ///
    /// `make` runs only for a new value, under the shard's lock; it must return a handle whose
    /// key equals `key`.
    pub fn get_or_insert_with(&self, key: &K::Key, make: impl FnOnce() -> K) -> K
    where
        K: Clone,
    {
        let mut guard = self.shard(key);
        let set = guard.get_or_insert_with(|| Set::with_hasher(foldhash::fast::FixedState::with_seed(seed())));
        if let Some(kept) = set.get(key) {
            return kept.clone();
        }
        let made = make();
        set.insert(made.clone());
        made
    }

    /// Returns the set's copy of `value`'s key, adding `value` itself when there is none.
    pub fn intern(&self, value: K) -> K
    where
        K: Clone,
    {
        let mut guard = self.shard(value.key());
        let set = guard.get_or_insert_with(|| Set::with_hasher(foldhash::fast::FixedState::with_seed(seed())));
        if let Some(kept) = set.get(value.key()) {
            return kept.clone();
        }
        set.insert(value.clone());
        value
    }

    /// Drops the reference `held`, first removing its value from the set when the set holds the
    /// only other reference.
    ///
    /// Handle types call this from their `Drop`, and nothing else removes a value: that is what
    /// keeps the set exactly the values in use.
    pub fn release(&self, held: K) {
        let mut guard = self.shard(held.key());
        if held.references() == 2
            && let Some(set) = guard.as_mut()
            && set.get(held.key()).is_some_and(|kept| kept.is(&held))
        {
            set.remove(held.key());
        }
        drop(held);
        drop(guard);
    }

    /// Counts the distinct values kept now (for tests and telemetry).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.locked().as_ref().map_or(0, Set::len)).sum()
    }

    /// Tells whether no value is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells whether a value equal to `key` is kept.
    pub fn contains(&self, key: &K::Key) -> bool {
        self.shard(key).as_ref().is_some_and(|set| set.contains(key))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_hash_seed_is_drawn_per_process_not_fixed() {
        // Two processes differ; within one, the seed stays put. A second process is this test
        // binary run again for just this test.
        let mine = super::seed();
        assert_eq!(mine, super::seed());
        if std::env::var_os("WM_PRINT_INTERN_SEED").is_some() {
            println!("seed={mine}");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let other = std::process::Command::new(exe)
            .args(["--exact", "intern::tests::the_hash_seed_is_drawn_per_process_not_fixed", "--nocapture"])
            .env("WM_PRINT_INTERN_SEED", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&other.stdout);
        let theirs: u64 = text.split("seed=").nth(1).and_then(|t| t.split_whitespace().next()?.parse().ok()).unwrap();
        assert_ne!(mine, theirs, "another process drew the same seed");
    }

    /// A handle as the users write one: it gives its reference back to the interner on drop.
    struct Handle(Option<Arc<str>>);

    static NUMBERS: Interner<Arc<str>> = Interner::new();

    impl Handle {
        fn new(text: &str) -> Self {
            Self(Some(NUMBERS.get_or_insert_with(text, || Arc::from(text))))
        }
    }

    impl Clone for Handle {
        fn clone(&self) -> Self {
            Self(self.0.clone())
        }
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            if let Some(held) = self.0.take() {
                NUMBERS.release(held);
            }
        }
    }

    #[test]
    fn a_value_is_kept_once_while_used_and_leaves_with_its_last_handle() {
        let a = Handle::new("one");
        let b = Handle::new("one");
        assert!(a.0.as_ref().zip(b.0.as_ref()).is_some_and(|(x, y)| Arc::ptr_eq(x, y)));
        let c = b.clone();
        let own: Arc<str> = Arc::from("one");
        let kept = NUMBERS.intern(own.clone());
        assert!(!Arc::ptr_eq(&kept, &own), "the set's copy wins");
        NUMBERS.release(kept);
        NUMBERS.release(own);
        assert!(NUMBERS.contains("one"), "an unkept copy takes nothing out");
        drop((a, b));
        assert!(NUMBERS.contains("one"), "one handle is left");
        drop(c);
        assert!(!NUMBERS.contains("one"));
        let fresh: Arc<str> = Arc::from("two");
        let kept = NUMBERS.intern(fresh.clone());
        assert!(Arc::ptr_eq(&kept, &fresh), "a new value is kept as given");
        NUMBERS.release(kept);
        NUMBERS.release(fresh);
        assert!(!NUMBERS.contains("two"));
    }

    #[test]
    fn handles_dropped_on_many_threads_leave_nothing_behind() {
        let texts: Vec<String> = (0..64).map(|i| format!("threads/{i}")).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let held: Vec<Handle> = texts.iter().map(|t| Handle::new(t)).collect();
                        let copies = held.clone();
                        drop(held);
                        drop(copies);
                    }
                });
            }
        });
        for t in &texts {
            assert!(!NUMBERS.contains(t.as_str()), "{t} was left in the set");
        }
    }
}
