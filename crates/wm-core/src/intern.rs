//! `IStr`: a string kept once however many maps hold it.
//!
//! Label and annotation keys repeat in every entity, and many values do too (a deployment's
//! labels on each of its pods, a pod's name and UID in each of its containers' labels), as do a
//! pod's namespace, phase, QoS class, node, owners and the names of its containers. Each
//! distinct text is allocated once, in a process-wide set, and lives while any `IStr` points at
//! it; dropping the last `IStr` removes it from the set. An `IStr` is 8 bytes. (A text that is
//! an entity's id too, a pod's UID in its containers' labels, may instead point at that id's
//! own allocation, which is never in the set: see `IStr::adopt`.)
//!
//! # When a text leaves the set
//!
//! The set is split into shards, each behind a mutex. Two things change a text's reference
//! count: looking a text up in the set (which clones the set's reference) and dropping an
//! `IStr`. Both happen under the shard's lock. Cloning an `IStr` also adds one, but only from
//! an `IStr` that already exists, so it cannot bring a count back up from "the set alone".
//! Hence, when a dropping `IStr` sees a count of two under the lock, the two are itself and
//! the set, nobody can take a new reference meanwhile, and it removes the text.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sync::MutexExt;

const SHARDS: usize = 16;

/// One text as the set keeps it, and as each holder holds it: a thin pointer (8 bytes) to the
/// count and the text in one allocation, found in the set by its text.
#[derive(Clone)]
struct Text(arcstr::ArcStr);

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Text {}

impl Kept for Text {
    type Key = str;

    fn references(&self) -> usize {
        // `None` is a static text, never made here.
        arcstr::ArcStr::strong_count(&self.0).unwrap_or(usize::MAX)
    }

    fn is(&self, other: &Self) -> bool {
        arcstr::ArcStr::ptr_eq(&self.0, &other.0)
    }

    fn key(&self) -> &str {
        &self.0
    }
}

type Set = HashSet<Text, foldhash::fast::FixedState>;

static TEXTS: [Mutex<Option<Set>>; SHARDS] = [const { Mutex::new(None) }; SHARDS];

/// The hash seed of the shards and their sets, drawn once per process.
///
/// Label texts come from workloads. With a seed known in advance, a workload could choose
/// labels that all fall in one shard and one probe sequence, and slow every insert; a seed
/// drawn at start (from std's randomly keyed hasher) leaves it nothing to aim at. One seed for
/// the whole process keeps a text in the same shard every time it is looked up.
fn seed() -> u64 {
    static SEED: std::sync::LazyLock<u64> =
        std::sync::LazyLock::new(|| std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64));
    *SEED
}

fn new_set() -> Set {
    Set::with_hasher(foldhash::fast::FixedState::with_seed(seed()))
}

/// The shard that keeps `text`.
fn shard(text: &str) -> MutexGuard<'static, Option<Set>> {
    let at = foldhash::fast::FixedState::with_seed(seed()).hash_one(text) as usize % SHARDS;
    // A set is never left half-changed: a panic while it was held changed nothing.
    TEXTS[at].locked()
}

/// An interned string (see the module docs). Reads as a `&str`; 8 bytes.
#[derive(Default)]
pub struct IStr(Option<Text>);

impl IStr {
    /// The one copy of `text`, shared with every other holder of it.
    pub fn new(text: &str) -> Self {
        if text.is_empty() {
            return Self(None);
        }
        let mut guard = shard(text);
        let set = guard.get_or_insert_with(new_set);
        if let Some(kept) = set.get(text) {
            return Self(Some(kept.clone()));
        }
        let kept = Text(arcstr::ArcStr::from(text));
        set.insert(kept.clone());
        Self(Some(kept))
    }

    /// A holder of `text`'s own allocation, not of the set's copy: one copy for a text that is
    /// an id too (a pod's UID in its containers' labels). The set never keeps it, so letting
    /// go of it takes nothing out: the set's rule looks only at its own copy.
    pub(crate) fn adopt(text: &arcstr::ArcStr) -> Self {
        if text.is_empty() {
            return Self(None);
        }
        Self(Some(Text(text.clone())))
    }

    /// Whether it holds `text`'s allocation.
    pub(crate) fn is_text(&self, text: &arcstr::ArcStr) -> bool {
        self.0.as_ref().is_some_and(|t| arcstr::ArcStr::ptr_eq(&t.0, text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_ref().map_or("", |t| &t.0)
    }

    /// How many distinct texts are kept now (for tests).
    pub fn interned_count() -> usize {
        TEXTS.iter().map(|s| s.locked().as_ref().map_or(0, Set::len)).sum()
    }
}

/// Describes a value an interner's set keeps: reference counted, and found in the set by its
/// key.
pub(crate) trait Kept: Borrow<Self::Key> + Hash + Eq {
    /// What the set is searched by.
    type Key: ?Sized + Hash + Eq;
    /// Returns the reference count, the set's own reference included.
    fn references(&self) -> usize;
    /// Tells whether both point at the same allocation.
    fn is(&self, other: &Self) -> bool;
    /// Returns its key.
    fn key(&self) -> &Self::Key;
}

impl<T: Hash + Eq> Kept for Arc<T> {
    type Key = T;

    fn references(&self) -> usize {
        Arc::strong_count(self)
    }

    fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }

    fn key(&self) -> &T {
        self
    }
}

/// Drops the reference `held`, removing its value from the interner's `set` when the set's
/// reference is the only other one.
///
/// Call it with the set's lock held. Every lookup in the set and every drop of a reference
/// takes that lock, and a clone can only come from a live reference; so a count of two seen
/// here means `held` and the set, and no other thread can add a reference before the removal
/// (the module docs say more).
pub(crate) fn let_go_under_lock<K: Kept, S: BuildHasher>(set: Option<&mut HashSet<K, S>>, held: K) {
    if held.references() == 2
        && let Some(set) = set
        && set.get(held.key()).is_some_and(|kept| kept.is(&held))
    {
        set.remove(held.key());
    }
    drop(held);
}

impl Drop for IStr {
    fn drop(&mut self) {
        let Some(text) = self.0.take() else { return };
        let mut guard = shard(text.key());
        let_go_under_lock(guard.as_mut(), text);
        drop(guard);
    }
}

impl Clone for IStr {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Deref for IStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for IStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for IStr {
    fn eq(&self, other: &Self) -> bool {
        // One copy per text: equal texts are the same allocation.
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => a.is(b) || a == b,
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for IStr {}

impl PartialOrd for IStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for IStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for IStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for IStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for IStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl From<&str> for IStr {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for IStr {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl From<&String> for IStr {
    fn from(text: &String) -> Self {
        Self::new(text)
    }
}

impl serde::Serialize for IStr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for IStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = IStr;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<IStr, E> {
                Ok(IStr::new(text))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

impl fmt::Debug for IStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for IStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
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

    use super::*;

    #[test]
    fn one_copy_per_text_while_held_and_none_after() {
        // Texts no other test uses: the set is process-wide.
        let a = IStr::new("intern-test/a");
        let b = IStr::new("intern-test/a");
        let c = a.clone();
        assert!(a.0.as_ref().zip(b.0.as_ref()).is_some_and(|(x, y)| x.is(y)));
        let held = |t: &str| shard(t).as_ref().is_some_and(|s| s.contains(t));
        assert!(held("intern-test/a"));
        drop((a, b));
        assert!(held("intern-test/a"), "one holder is left");
        drop(c);
        assert!(!held("intern-test/a"));
        assert_eq!(IStr::new("").as_str(), "");
        assert_eq!(std::mem::size_of::<IStr>(), 8, "a holder is one thin pointer");
    }

    #[test]
    fn a_deserialized_text_is_the_one_copy_and_serializes_as_a_string() {
        let held = IStr::from("intern-test/serde");
        let read: IStr = serde_json::from_str("\"intern-test/serde\"").unwrap_or_default();
        assert!(held.0.as_ref().zip(read.0.as_ref()).is_some_and(|(x, y)| x.is(y)));
        assert_eq!(read, "intern-test/serde");
        assert_eq!(serde_json::to_string(&read).ok().as_deref(), Some("\"intern-test/serde\""));
        assert!(serde_json::from_str::<IStr>("7").is_err(), "not a string");
    }

    #[test]
    fn holders_letting_go_on_many_threads_leave_nothing_behind() {
        let texts: Vec<String> = (0..64).map(|i| format!("intern-test/threads/{i}")).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let held: Vec<IStr> = texts.iter().map(|t| IStr::new(t)).collect();
                        let copies = held.clone();
                        drop(held);
                        drop(copies);
                    }
                });
            }
        });
        for t in &texts {
            assert!(!shard(t).as_ref().is_some_and(|s| s.contains(t.as_str())), "{t} was left in the set");
        }
    }
}
