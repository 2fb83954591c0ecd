//! Locks `std` mutexes and read-write locks, taking a poisoned lock as it is.
//!
//! A `std` lock is poisoned when a thread panics while holding it, and every later `lock()`
//! returns an error. Our locks guard values that are replaced whole or changed in one step, so
//! a panic leaves nothing half-written; the agent goes on with the value as it is instead of
//! failing every later call. Every crate of the workspace locks through these traits, so that
//! choice is written here once.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Takes a [`Mutex`], whether or not it was poisoned.
pub trait MutexExt<T: ?Sized> {
    /// Locks the mutex, blocking until it is free; a poisoned lock is taken as it is.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> MutexExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes an [`RwLock`] to read or to write, whether or not it was poisoned.
pub trait RwLockExt<T: ?Sized> {
    /// Locks it to read, blocking while a writer holds it.
    fn reading(&self) -> RwLockReadGuard<'_, T>;
    /// Locks it to write, blocking while anyone holds it.
    fn writing(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn reading(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn writing(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_taken_with_its_value() {
        let mutex = Mutex::new(1);
        let rw = RwLock::new(2);
        let _ = std::panic::catch_unwind(|| {
            let _m = mutex.lock().unwrap();
            let _w = rw.write().unwrap();
            panic!("poison both");
        });
        assert!(mutex.is_poisoned() && rw.is_poisoned());
        *mutex.locked() += 1;
        *rw.writing() += 1;
        assert_eq!((*mutex.locked(), *rw.reading()), (2, 3));
    }
}
