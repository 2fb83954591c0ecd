//! `StrMap`: the string-to-string map used for labels, annotations and env vars.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map from string to string kept as one sorted vector.
///
/// Entities hold several of these (labels, annotations, env), mostly with a handful of keys. A
/// sorted vector costs 48 bytes per entry and one allocation, against several hundred bytes
/// per node for a `BTreeMap`, iterates in key order (stable dumps and tags) and compares fast.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct StrMap(Vec<(String, String)>);

impl StrMap {
    /// An empty map.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|i| self.0[i].1.as_str())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`, returning the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let key = key.into();
        let value = value.into();
        match self.position(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.position(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Keeps only the entries for which `keep` says yes.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Adds every entry of `lower` whose key this map lacks: a union in which `self` wins.
    pub fn union_from(&mut self, lower: &StrMap) {
        if self.0.is_empty() {
            self.0.clone_from(&lower.0);
            return;
        }
        for (k, v) in &lower.0 {
            if let Err(i) = self.position(k) {
                self.0.insert(i, (k.clone(), v.clone()));
            }
        }
    }

    /// Releases spare capacity (maps built once and then kept for the entity's life).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl fmt::Debug for StrMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for StrMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<(String, String)> = iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // Stable sort then keep the last of equal keys, as repeated inserts would.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Self(out)
    }
}

impl<'a> IntoIterator for &'a StrMap {
    type Item = (&'a str, &'a str);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> (&'a str, &'a str)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl Serialize for StrMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
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
    fn json_round_trip_and_null_is_empty() {
        let m: StrMap = serde_json::from_str(r#"{"z":"1","a":"2"}"#).unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"a":"2","z":"1"}"#);
        let empty: StrMap = serde_json::from_str("null").unwrap();
        assert!(empty.is_empty());
        assert!(serde_json::from_str::<StrMap>(r#"{"a":1}"#).is_err());
    }
}
