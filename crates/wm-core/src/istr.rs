//! `IStr`: a string kept once however many maps hold it.
//!
//! Label and annotation keys repeat in every entity, and many values do too (a deployment's
//! labels on each of its pods, a pod's name and UID in each of its containers' labels), as do a
//! pod's namespace, phase, QoS class, node, owners and the names of its containers. Each
//! distinct text is allocated once, in a process-wide [`Interner`], and lives while any `IStr`
//! points at it. An `IStr` is 8 bytes. (A text that is an entity's id too, a pod's UID in its
//! containers' labels, may instead point at that id's own allocation, which is never in the
//! set: see `IStr::adopt`.)

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::ops::Deref;

use crate::intern::{Interner, Kept};

/// One reference to a text, as the set and every `IStr` hold it: a thin pointer (8 bytes) to the
/// reference count and the text in one allocation, found in the set by its text.
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
}

static TEXTS: Interner<Text> = Interner::new();

/// An interned string (see the module docs). Reads as a `&str`; 8 bytes.
#[derive(Default)]
pub struct IStr(Option<Text>);

impl IStr {
    /// Returns the interner's copy of `text`, adding it when it is new.
    pub fn new(text: &str) -> Self {
        if text.is_empty() {
            return Self(None);
        }
        Self(Some(TEXTS.get_or_insert_with(text, || Text(arcstr::ArcStr::from(text)))))
    }

    /// Returns an `IStr` that points at `text`'s own allocation, not at the interner's copy.
    ///
    /// Used for a text that is an entity id too (a pod's UID in its containers' labels), so that
    /// it is allocated once. The interner never keeps this allocation, so dropping the `IStr`
    /// removes nothing from it.
    pub(crate) fn adopt(text: &arcstr::ArcStr) -> Self {
        if text.is_empty() {
            return Self(None);
        }
        Self(Some(Text(text.clone())))
    }

    /// Tells whether it points at `text`'s allocation.
    pub(crate) fn is_text(&self, text: &arcstr::ArcStr) -> bool {
        self.0.as_ref().is_some_and(|t| arcstr::ArcStr::ptr_eq(&t.0, text))
    }

    /// Returns the text.
    pub fn as_str(&self) -> &str {
        self.0.as_ref().map_or("", |t| &t.0)
    }

    /// Counts the distinct texts interned now (for tests).
    pub fn interned_count() -> usize {
        TEXTS.len()
    }
}

impl Drop for IStr {
    fn drop(&mut self) {
        if let Some(text) = self.0.take() {
            TEXTS.release(text);
        }
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
    use super::*;

    #[test]
    fn one_copy_per_text_while_held_and_none_after() {
        // Texts no other test uses: the set is process-wide.
        let a = IStr::new("intern-test/a");
        let b = IStr::new("intern-test/a");
        let c = a.clone();
        assert!(a.0.as_ref().zip(b.0.as_ref()).is_some_and(|(x, y)| x.is(y)));
        let held = |t: &str| TEXTS.contains(t);
        assert!(held("intern-test/a"));
        drop((a, b));
        assert!(held("intern-test/a"), "one reference is left");
        drop(c);
        assert!(!held("intern-test/a"));
        assert_eq!(IStr::new("").as_str(), "");
        assert_eq!(std::mem::size_of::<IStr>(), 8, "an IStr is one thin pointer");
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
    fn references_dropped_on_many_threads_leave_nothing_behind() {
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
            assert!(!TEXTS.contains(t.as_str()), "{t} was left in the set");
        }
    }
}
