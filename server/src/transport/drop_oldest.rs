//! A bounded queue that makes room by dropping its oldest item: for relayed media, where the
//! newest packet is the one worth sending and a producer (a UDP socket, the bridge) must
//! never wait for a slow TCP connection.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct DropOldest<T> {
    state: Mutex<State<T>>,
    ready: Notify,
    capacity: usize,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> DropOldest<T> {
    pub fn new(capacity: usize) -> DropOldest<T> {
        DropOldest {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues `item`, dropping the oldest when full; false when the queue is closed.
    pub fn push(&self, item: T) -> bool {
        {
            let Ok(mut state) = self.state.lock() else {
                return false;
            };
            if state.closed {
                return false;
            }
            if state.items.len() >= self.capacity {
                state.items.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            state.items.push_back(item);
        }
        self.ready.notify_one();
        true
    }

    /// Waits for items and moves all of them into `out`; false once closed and empty.
    pub async fn pop_all(&self, out: &mut Vec<T>) -> bool {
        loop {
            {
                let Ok(mut state) = self.state.lock() else {
                    return false;
                };
                if !state.items.is_empty() {
                    out.extend(state.items.drain(..));
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Moves what is queued now into `out`, without waiting.
    pub fn take_all(&self, out: &mut Vec<T>) {
        if let Ok(mut state) = self.state.lock() {
            out.extend(state.items.drain(..));
        }
    }

    /// No more items: the consumer gets what is queued, then the end.
    pub fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
        self.ready.notify_one();
    }

    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.items.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items dropped to make room, since the queue was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_keeps_the_newest() {
        let q = DropOldest::new(3);
        for i in 0..5 {
            assert!(q.push(i));
        }
        assert_eq!((q.len(), q.dropped()), (3, 2));
        let mut out = Vec::new();
        assert!(q.pop_all(&mut out).await);
        assert_eq!(out, vec![2, 3, 4]);
        q.push(9);
        q.close();
        assert!(!q.push(10), "closed");
        out.clear();
        assert!(q.pop_all(&mut out).await, "what was queued still comes out");
        assert_eq!(out, vec![9]);
        assert!(!q.pop_all(&mut out).await);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_for_a_push() {
        let q = std::sync::Arc::new(DropOldest::new(4));
        let consumer = tokio::spawn({
            let q = q.clone();
            async move {
                let mut out = Vec::new();
                q.pop_all(&mut out).await;
                out
            }
        });
        tokio::task::yield_now().await;
        q.push(1);
        assert_eq!(consumer.await.unwrap(), vec![1]);
    }
}
