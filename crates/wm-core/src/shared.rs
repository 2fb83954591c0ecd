//! `Shared<T>`: a group of an entity's fields behind one copy-on-write pointer.
//!
//! The store holds a container once per source that knows it (a pod's containers twice: the
//! kubelet's version and the runtime's), and copies one to make the merged view a reader asks
//! for. A group of fields that is large and seldom changes (a container's four resource
//! figures, its runtime details) costs each copy one pointer this way, and nothing at all while
//! it is empty. Its fields read (`resources.cpu_limit`) and write as the group's own, through
//! `Deref`; a write to a shared group copies it first. `Shared` only shares copies; images are
//! also interned, by [`ContainerImage`](crate::ContainerImage).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// A group of fields that [`Shared`] can hold.
pub trait Parts: Clone + Default + PartialEq + 'static {
    /// The group with every field empty: what an empty `Shared` reads as.
    fn none() -> &'static Self;
}

/// A group of fields behind one copy-on-write pointer (see the module docs).
pub struct Shared<T: Parts>(pub(crate) Option<Arc<T>>);

impl<T: Parts> Shared<T> {
    /// Tells whether both share one allocation (both empty counts as shared).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// Tells whether every field is empty.
    pub fn is_none(&self) -> bool {
        **self == *T::none()
    }
}

impl<T: Parts> Default for Shared<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Parts> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Parts> From<T> for Shared<T> {
    fn from(parts: T) -> Self {
        Self((parts != *T::none()).then(|| Arc::new(parts)))
    }
}

impl<T: Parts> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or_else(|| T::none())
    }
}

impl<T: Parts> DerefMut for Shared<T> {
    /// Returns the fields to write, copying them first when another `Shared` points at them too.
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(self.0.get_or_insert_with(Arc::default))
    }
}

impl<T: Parts> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other) || **self == **other
    }
}

impl<T: Parts + Eq> Eq for Shared<T> {}

impl<T: Parts + Hash> Hash for Shared<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl<T: Parts + fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: Parts + Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}
