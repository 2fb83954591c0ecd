//! `StrMap`: the string-to-string map used for labels, annotations and env vars.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Id;
use crate::istr::IStr;

/// One entry: key and value, each interned (one copy of each text, however many maps hold it).
type Entry = (IStr, IStr);

/// A map from string to string, held as one sorted slice that copies share.
///
/// Entities hold several of these (labels, annotations, env), mostly with a handful of keys, and
/// are copied whenever the store merges what two sources report about one entity. The entries
/// sit in one allocation shared by every copy: cloning a map only increments a reference count,
/// a merge that takes a map whole takes it without copying, and a change copies the entries
/// first (copy on write). Keys and values are interned ([`IStr`]): the keys repeat in every
/// entity, and so do many values (a deployment's labels on each of its pods).
///
/// A map is one thin pointer (8 bytes), because every entity holds several and most are empty;
/// an empty map allocates nothing. A non-empty map's allocation holds a reference count and a
/// length (16 bytes), then the entries, 16 bytes each beside their text. Iteration is in key
/// order, so dumps and tags are stable.
#[derive(Clone, Default, Eq)]
pub struct StrMap(Option<triomphe::ThinArc<(), Entry>>);

impl StrMap {
    /// Creates an empty map; it allocates nothing.
    pub const fn new() -> Self {
        Self(None)
    }

    fn entries(&self) -> &[Entry] {
        self.0.as_ref().map_or(&[], |entries| &entries.slice)
    }

    /// Applies `change` to a copy of the entries and puts the result in a new allocation.
    ///
    /// It copies even when no other map shares the entries: the slice has a fixed length, so an
    /// insert or a removal cannot be made in place.
    fn edit<T>(&mut self, change: impl FnOnce(&mut Vec<Entry>) -> T) -> T {
        let mut entries: Vec<Entry> = self.entries().to_vec();
        let out = change(&mut entries);
        *self = Self::from_sorted(entries);
        out
    }

    fn from_sorted(entries: Vec<Entry>) -> Self {
        Self((!entries.is_empty()).then(|| triomphe::ThinArc::from_header_and_iter((), entries.into_iter())))
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Tells whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries().binary_search_by(|(k, _)| (**k).cmp(key))
    }

    /// Returns the value of `key`, if the map has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| &*self.entries()[i].1)
    }

    /// Tells whether the map has `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let (key, value) = (IStr::new(&key.into()), IStr::new(&value.into()));
        let at = self.position(&key);
        self.edit(|entries| match at {
            Ok(i) => Some(std::mem::replace(&mut entries[i].1, value).to_string()),
            Err(i) => {
                entries.insert(i, (key, value));
                None
            }
        })
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.position(key).ok()?;
        self.edit(|entries| Some(entries.remove(at).1.to_string()))
    }

    /// Replaces the value of `key` with `text`'s own allocation when the value equals `text`, so
    /// that both share one copy (a container's pod UID label and its owner's id).
    pub(crate) fn share_value(&mut self, key: &str, text: &Id) {
        let Ok(at) = self.position(key) else { return };
        let value = &self.entries()[at].1;
        if **value != **text || value.is_text(&text.0) {
            return;
        }
        self.edit(|entries| entries[at].1 = IStr::adopt(&text.0));
    }

    /// Keeps only the entries for which `keep` returns true; the entries are copied only when
    /// one is removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let kept: Vec<bool> = self.iter().map(|(k, v)| keep(k, v)).collect();
        if kept.iter().all(|k| *k) {
            return;
        }
        let mut verdicts = kept.into_iter();
        self.edit(|entries| entries.retain(|_| verdicts.next().unwrap_or(true)));
    }

    /// Returns the entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.entries().iter().map(|(k, v)| (&**k, &**v))
    }

    /// Adds every entry of `lower` whose key this map lacks: a union in which `self` wins.
    ///
    /// An empty map takes `lower`'s entries whole, sharing them; a map that already has every
    /// key of `lower` is left as it is.
    pub fn union_from(&mut self, lower: &StrMap) {
        if self.is_empty() {
            // Taken whole: shared, not copied.
            self.clone_from(lower);
            return;
        }
        if lower.iter().all(|(k, _)| self.contains_key(k)) {
            return;
        }
        let mut merged: Vec<Entry> = Vec::with_capacity(self.len() + lower.len());
        let (mut mine, mut theirs) = (self.entries().iter().peekable(), lower.entries().iter().peekable());
        loop {
            let next = match (mine.peek(), theirs.peek()) {
                (Some(a), Some(b)) => match a.0.cmp(&b.0) {
                    std::cmp::Ordering::Less => mine.next(),
                    std::cmp::Ordering::Equal => {
                        theirs.next();
                        mine.next()
                    }
                    std::cmp::Ordering::Greater => theirs.next(),
                },
                (Some(_), None) => mine.next(),
                (None, Some(_)) => theirs.next(),
                (None, None) => break,
            };
            merged.extend(next.cloned());
        }
        *self = Self::from_sorted(merged);
    }

    /// Tells whether both share one allocation of entries (two empty maps count as sharing).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => std::ptr::eq(a.as_ptr(), b.as_ptr()),
            (None, None) => true,
            _ => false,
        }
    }
}

impl PartialEq for StrMap {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other) || self.entries() == other.entries()
    }
}

impl std::hash::Hash for StrMap {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.entries().hash(state);
    }
}

impl fmt::Debug for StrMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for StrMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<Entry> =
            iter.into_iter().map(|(k, v)| (IStr::new(k.as_ref()), IStr::new(v.as_ref()))).collect();
        // Stable sort then keep the last of equal keys, as repeated inserts would.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Self::from_sorted(out)
    }
}

impl<'a> IntoIterator for &'a StrMap {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, Entry>, fn(&'a Entry) -> (&'a str, &'a str)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries().iter().map(|(k, v)| (&**k, &**v))
    }
}

impl Serialize for StrMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StrMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = StrMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<StrMap, E> {
                Ok(StrMap::new())
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<StrMap, E> {
                Ok(StrMap::new())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<StrMap, D::Error> {
                d.deserialize_map(MapVisitor)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrMap, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some((k, v)) = access.next_entry::<String, String>()? {
                    entries.push((k, v));
                }
                Ok(entries.into_iter().collect())
            }
        }
        d.deserialize_option(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_one_thin_pointer_and_an_entry_two() {
        assert_eq!(std::mem::size_of::<StrMap>(), 8);
        assert_eq!(std::mem::size_of::<Entry>(), 16);
        let m: StrMap = [("a", "1")].into_iter().collect();
        let copy = m.clone();
        assert!(m.ptr_eq(&copy), "a copy shares the entries");
        assert!(StrMap::new().ptr_eq(&StrMap::default()));
    }

    #[test]
    fn entries_stay_sorted_and_unique() {
        let mut m: StrMap = [("b", "1"), ("a", "2"), ("b", "3")].into_iter().collect();
        assert_eq!(m.iter().collect::<Vec<_>>(), [("a", "2"), ("b", "3")]);
        assert_eq!(m.insert("c", "4"), None);
        assert_eq!(m.insert("a", "5"), Some("2".to_owned()));
        assert_eq!(m.get("a"), Some("5"));
        assert_eq!(m.remove("b"), Some("3".to_owned()));
        assert_eq!(m.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn union_keeps_own_value_on_shared_key() {
        let mut high: StrMap = [("a", "2"), ("b", "x")].into_iter().collect();
        let low: StrMap = [("a", "1"), ("c", "y")].into_iter().collect();
        high.union_from(&low);
        assert_eq!(high.iter().collect::<Vec<_>>(), [("a", "2"), ("b", "x"), ("c", "y")]);
    }

    #[test]
    fn copies_share_their_entries_until_one_changes() {
        let original: StrMap = [("a", "1"), ("b", "2")].into_iter().collect();
        let mut copy = original.clone();
        assert!(copy.ptr_eq(&original));
        // A union that adds nothing, or that takes the lower map whole, copies nothing.
        copy.union_from(&[("a", "9")].into_iter().collect());
        assert!(copy.ptr_eq(&original));
        let mut empty = StrMap::new();
        empty.union_from(&original);
        assert!(empty.ptr_eq(&original));
        // A change is made on a copy: the original keeps its entries.
        copy.insert("c", "3");
        copy.retain(|k, _| k != "a");
        assert!(!copy.ptr_eq(&original));
        assert_eq!(copy.iter().collect::<Vec<_>>(), [("b", "2"), ("c", "3")]);
        assert_eq!(original.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "2")]);
        // Equal maps compare equal whether or not they share.
        assert_eq!(copy, [("c", "3"), ("b", "2")].into_iter().collect::<StrMap>());
        copy.remove("b");
        copy.remove("c");
        assert!(copy.is_empty() && copy == StrMap::new());
    }

    #[test]
    fn json_round_trip_and_null_is_empty() {
        let m: StrMap = serde_json::from_str(r#"{"z":"1","a":"2"}"#).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":"2","z":"1"}"#);
        let empty: StrMap = serde_json::from_str("null").unwrap();
        assert!(empty.is_empty());
        assert!(serde_json::from_str::<StrMap>(r#"{"a":1}"#).is_err());
    }
}
