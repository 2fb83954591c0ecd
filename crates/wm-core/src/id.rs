//! `Id`: an entity's id, one allocation shared by everything that names the entity.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// Names an entity within its kind: a container id, a pod UID, a task ARN.
///
/// One thin pointer (8 bytes) to a reference count, a length and the text in one allocation.
/// Cloning it shares the text: the store keys its records by an entity's `Id` and hands the
/// same allocation to every version and owner reference that names the entity, so each id is
/// held once. It reads, hashes, compares and serializes as the `str` it holds, so a map keyed
/// by `Id` can be searched with a `&str`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(pub(crate) arcstr::ArcStr);

impl Id {
    /// Returns the text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Tells whether both share one allocation.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        arcstr::ArcStr::ptr_eq(&a.0, &b.0)
    }

    /// Tells whether another `Id` shares this one's allocation (the empty id, which is static,
    /// never does).
    pub fn is_shared(&self) -> bool {
        arcstr::ArcStr::strong_count(&self.0).is_some_and(|n| n > 1)
    }
}

impl Deref for Id {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Id {
    fn from(text: &str) -> Self {
        Self(arcstr::ArcStr::from(text))
    }
}

impl From<String> for Id {
    fn from(text: String) -> Self {
        Self(arcstr::ArcStr::from(text))
    }
}

impl From<&String> for Id {
    fn from(text: &String) -> Self {
        Self(arcstr::ArcStr::from(text.as_str()))
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Id {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn an_id_is_found_by_its_text_and_shared_by_cloning() {
        let id = Id::from("c1");
        let map: HashMap<Id, u8> = HashMap::from([(id.clone(), 1)]);
        assert_eq!(map.get("c1"), Some(&1));
        assert!(Id::ptr_eq(&id, &id.clone()) && id.is_shared());
        assert!(!Id::ptr_eq(&id, &Id::from("c1")), "an equal text made anew is another allocation");
        assert_eq!(id, "c1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""c1""#);
        assert_eq!(serde_json::from_str::<Id>(r#""c1""#).unwrap(), id);
        assert!(!Id::default().is_shared());
        assert_eq!(std::mem::size_of::<Id>(), 8);
    }
}
