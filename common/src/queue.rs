//! A fixed-capacity queue between threads, with an eventfd that a `poll()` loop can wait on.
//!
//! Capacity is allocated once; a full queue is reported to the producer (`Full`), never grown.

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Why an item could not be queued; the item is handed back.
pub enum PushError<T> {
    /// The queue held `capacity` items for the whole wait.
    Full(T),
    /// The consumer closed the queue.
    Closed(T),
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => write!(f, "Full"),
            PushError::Closed(_) => write!(f, "Closed"),
        }
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full(_) => write!(f, "queue full"),
            PushError::Closed(_) => write!(f, "queue closed"),
        }
    }
}

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Sum of the items' weights (see `with_byte_budget`).
    bytes: usize,
}

/// A bound on the bytes queued besides the number of items.
struct ByteBudget<T> {
    max: usize,
    weigh: fn(&T) -> usize,
}

/// Bounded multi-producer queue whose consumer waits with `poll()` on [`BoundedQueue::wake_fd`].
// [impl->req~bounds.queues~1]
pub struct BoundedQueue<T> {
    inner: Mutex<Inner<T>>,
    not_full: Condvar,
    capacity: usize,
    budget: Option<ByteBudget<T>>,
    wake: EventFd,
}

impl<T> BoundedQueue<T> {
    pub fn new(capacity: usize) -> nix::Result<Self> {
        Ok(BoundedQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(capacity),
                closed: false,
                bytes: 0,
            }),
            not_full: Condvar::new(),
            capacity,
            budget: None,
            wake: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
        })
    }

    /// A queue bounded in items and in bytes: `weigh` says what an item holds. An item
    /// heavier than the whole budget still goes into an empty queue (one at a time), so
    /// nothing the bounds allow elsewhere can block for ever.
    // [impl->req~bounds.core-queue-bytes~1]
    pub fn with_byte_budget(
        capacity: usize,
        max_bytes: usize,
        weigh: fn(&T) -> usize,
    ) -> nix::Result<Self> {
        let mut q = Self::new(capacity)?;
        q.budget = Some(ByteBudget {
            max: max_bytes,
            weigh,
        });
        Ok(q)
    }

    fn weight(&self, item: &T) -> usize {
        self.budget.as_ref().map_or(0, |b| (b.weigh)(item))
    }

    /// Whether `inner` has room for one more item of `weight` bytes.
    fn has_room(&self, inner: &Inner<T>, weight: usize) -> bool {
        inner.items.len() < self.capacity
            && self
                .budget
                .as_ref()
                .is_none_or(|b| inner.bytes == 0 || inner.bytes.saturating_add(weight) <= b.max)
    }

    /// Bytes queued (0 without a byte budget).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    // A producer that panicked mid-push cannot leave the deque inconsistent (push_back is
    // atomic from our point of view), so a poisoned lock is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an item, or reports `Full` at once.
    pub fn try_push(&self, item: T) -> Result<(), PushError<T>> {
        self.push_timeout(item, Duration::ZERO)
    }

    /// Queues an item, waiting at most `timeout` for room.
    pub fn push_timeout(&self, item: T, timeout: Duration) -> Result<(), PushError<T>> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return Err(PushError::Closed(item));
            }
            let weight = self.weight(&item);
            if self.has_room(&inner, weight) {
                inner.bytes += weight;
                inner.items.push_back(item);
                drop(inner);
                // A failed eventfd write can only mean the counter is saturated: already woken.
                let _ = self.wake.write(1);
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PushError::Full(item));
            }
            inner = self
                .not_full
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Takes the oldest item, if any.
    pub fn try_pop(&self) -> Option<T> {
        let mut inner = self.lock();
        let item = inner.items.pop_front();
        if let Some(item) = &item {
            inner.bytes = inner.bytes.saturating_sub(self.weight(item));
            drop(inner);
            // Room in bytes may fit any waiting producer, not just one.
            if self.budget.is_some() {
                self.not_full.notify_all();
            } else {
                self.not_full.notify_one();
            }
        }
        item
    }

    /// Clears the wake-up counter; call after `poll()` reported the fd readable, before draining.
    pub fn clear_wake(&self) {
        let _ = self.wake.read();
    }

    /// Wakes the consumer without queueing anything (e.g. to make it look at a flag).
    pub fn wake_only(&self) {
        let _ = self.wake.write(1);
    }

    /// The fd that becomes readable when items are pushed.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Refuses further pushes (the consumer is gone) and wakes waiting producers.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_full.notify_all();
        let _ = self.wake.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    // [utest->req~bounds.queues~1]
    #[test]
    fn full_queue_is_reported_not_grown() {
        let q = BoundedQueue::new(2).unwrap();
        q.try_push(1).unwrap();
        q.try_push(2).unwrap();
        assert!(matches!(q.try_push(3), Err(PushError::Full(3))));
        assert!(matches!(
            q.push_timeout(4, Duration::from_millis(20)),
            Err(PushError::Full(4))
        ));
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop(), Some(1));
        q.try_push(5).unwrap();
        assert_eq!(q.try_pop(), Some(2));
        assert_eq!(q.try_pop(), Some(5));
        assert_eq!(q.try_pop(), None);
    }

    #[test]
    fn waiting_producer_gets_room() {
        let q = Arc::new(BoundedQueue::new(1).unwrap());
        q.try_push(1).unwrap();
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.push_timeout(2, Duration::from_secs(5)).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.try_pop(), Some(1));
        assert!(t.join().unwrap());
        assert_eq!(q.try_pop(), Some(2));
    }

    // [utest->req~bounds.core-queue-bytes~1]
    #[test]
    fn a_byte_budget_bounds_what_is_queued() {
        let q = BoundedQueue::with_byte_budget(100, 10, Vec::<u8>::len).unwrap();
        // Larger than the budget: only into an empty queue.
        q.try_push(vec![0; 25]).unwrap();
        assert!(matches!(q.try_push(vec![1]), Err(PushError::Full(_))));
        assert_eq!(q.try_pop().map(|v| v.len()), Some(25));
        q.try_push(vec![0; 6]).unwrap();
        q.try_push(vec![0; 4]).unwrap();
        assert!(matches!(q.try_push(vec![0; 1]), Err(PushError::Full(_))));
        assert!(q.try_push(Vec::new()).is_ok());
        assert_eq!(q.bytes(), 10);
        q.try_pop();
        q.try_push(vec![0; 6]).unwrap();
        assert_eq!((q.len(), q.bytes()), (3, 10));
    }

    #[test]
    fn closed_queue_refuses() {
        let q = BoundedQueue::new(1).unwrap();
        q.close();
        assert!(matches!(q.try_push(1), Err(PushError::Closed(1))));
    }
}
