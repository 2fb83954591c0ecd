//! A cancellation token: one `cancel()` wakes every task waiting on `cancelled()`.
//!
//! The agent's single shutdown path: the store hands one to each collector (in its
//! [`CollectorContext`](crate::CollectorContext)), the agent one to each of its tasks. Written
//! here on `std` alone because this crate starts no runtime; it works on any executor.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::sync::MutexExt;

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    next_key: u64,
    wakers: Vec<(u64, Waker)>,
    children: Vec<CancellationToken>,
}

/// Signals cancellation to every task that holds a clone.
///
/// Cheap to clone; clones share one state. Once cancelled, it stays cancelled.
#[derive(Clone, Default)]
pub struct CancellationToken {
    inner: Arc<Inner>,
}

impl fmt::Debug for CancellationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancellationToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl CancellationToken {
    /// Creates a token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a child token: cancelling this token cancels the child, but cancelling the child
    /// leaves this one alone.
    ///
    /// A child of a cancelled token starts cancelled.
    pub fn child(&self) -> Self {
        let child = Self::new();
        let mut waiters = self.inner.waiters.locked();
        if self.is_cancelled() {
            drop(waiters);
            child.cancel();
        } else {
            waiters.children.retain(|c| !c.is_cancelled());
            waiters.children.push(child.clone());
        }
        child
    }

    /// Cancels the token and its children: every `cancelled()` future, pending or made later,
    /// completes. Calling it again does nothing.
    pub fn cancel(&self) {
        if self.inner.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (wakers, children) = {
            let mut waiters = self.inner.waiters.locked();
            (std::mem::take(&mut waiters.wakers), std::mem::take(&mut waiters.children))
        };
        for (_, waker) in wakers {
            waker.wake();
        }
        for child in children {
            child.cancel();
        }
    }

    /// Tells whether the token was cancelled, by its own `cancel` or a parent's.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Returns a future that completes once the token is cancelled (at once if it already is).
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled { token: self, key: None }
    }
}

/// The future [`CancellationToken::cancelled`] returns.
///
/// Dropping it removes its waker from the token, so waiting in a loop (a `select!` on a new one
/// each turn) does not grow the token's list of wakers.
#[derive(Debug)]
pub struct Cancelled<'a> {
    token: &'a CancellationToken,
    key: Option<u64>,
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        let mut waiters = self.token.inner.waiters.locked();
        // Checked again under the lock: `cancel` sets the flag before it takes the wakers under
        // this lock, so a waker pushed after this check is still taken and woken.
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        match self.key {
            Some(key) => {
                if let Some((_, waker)) = waiters.wakers.iter_mut().find(|(k, _)| *k == key) {
                    waker.clone_from(cx.waker());
                }
            }
            None => {
                let key = waiters.next_key;
                waiters.next_key += 1;
                waiters.wakers.push((key, cx.waker().clone()));
                drop(waiters);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut waiters = self.token.inner.waiters.locked();
            waiters.wakers.retain(|(k, _)| *k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(fut: &mut Cancelled<'_>, waker: &Waker) -> Poll<()> {
        Pin::new(fut).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn cancel_wakes_every_waiter_and_later_waits_complete_at_once() {
        let token = CancellationToken::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let clone = token.clone();
        let mut a = token.cancelled();
        let mut b = clone.cancelled();
        assert!(poll(&mut a, &waker).is_pending());
        assert!(poll(&mut b, &waker).is_pending());
        assert!(poll(&mut a, &waker).is_pending(), "a second poll registers nothing new");
        assert_eq!(token.inner.waiters.lock().unwrap().wakers.len(), 2);
        clone.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(poll(&mut a, &waker).is_ready() && poll(&mut b, &waker).is_ready());
        assert!(poll(&mut token.cancelled(), &waker).is_ready());
        assert!(token.is_cancelled());
    }

    #[test]
    fn a_dropped_wait_leaves_nothing_behind() {
        let token = CancellationToken::new();
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        for _ in 0..1000 {
            let mut wait = token.cancelled();
            assert!(poll(&mut wait, &waker).is_pending());
        }
        assert!(token.inner.waiters.lock().unwrap().wakers.is_empty());
    }

    #[test]
    fn a_child_is_cancelled_with_its_parent_but_not_the_other_way() {
        let parent = CancellationToken::new();
        let child = parent.child();
        let other = parent.child();
        other.cancel();
        assert!(!parent.is_cancelled() && !child.is_cancelled());
        parent.cancel();
        assert!(child.is_cancelled());
        assert!(parent.child().is_cancelled(), "a child of a cancelled token starts cancelled");
    }
}
