//! The open connections, and the signal that tells each to finish its request in flight and
//! close when the server shuts down.
//!
//! Each connection waits on a oneshot of its own. A `watch` receiver shared out to every
//! connection would do the same job, but its `changed()` takes the channel's waiter lock on every
//! poll: every connection task, on every poll (two or more per request), contending for one lock
//! with every other connection of the process. A oneshot receiver polled again by the same task
//! is one atomic load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

#[derive(Default)]
pub struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// the stop signal of every open connection, by its number
    open: HashMap<u64, oneshot::Sender<()>>,
    stopping: bool,
    /// connections not yet closed (those told to stop included)
    live: usize,
}

/// A connection's place among the open ones, given up when it is dropped.
pub struct Open {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut inner = self.connections.lock();
        inner.open.remove(&self.id);
        inner.live -= 1;
    }
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection in. Its receiver completes when the server stops (at once for
    /// a connection that arrives while it is stopping).
    pub fn open(self: &Arc<Self>) -> (Open, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner.live += 1;
        if inner.stopping {
            let _ = tx.send(());
        } else {
            inner.open.insert(id, tx);
        }
        (Open { connections: self.clone(), id }, rx)
    }

    /// Tells every open connection, and every one opened from now on, to close after its
    /// request in flight.
    pub fn stop_all(&self) {
        let open = {
            let mut inner = self.lock();
            inner.stopping = true;
            std::mem::take(&mut inner.open)
        };
        for tx in open.into_values() {
            let _ = tx.send(());
        }
    }

    /// Connections not yet closed.
    pub fn count(&self) -> usize {
        self.lock().live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_open_connection_and_every_later_one_is_told_to_stop() {
        let c = Arc::new(Connections::default());
        let (a, mut rx_a) = c.open();
        let (b, rx_b) = c.open();
        assert_eq!(c.count(), 2);
        drop(b);
        drop(rx_b);
        assert_eq!(c.count(), 1, "a closed connection is no longer counted");
        assert!(rx_a.try_recv().is_err(), "no stop before the server stops");
        c.stop_all();
        assert_eq!(c.count(), 1, "told to stop, still open until it closes");
        assert!(rx_a.await.is_ok());
        let (_late, rx_late) = c.open();
        assert!(rx_late.await.is_ok(), "a connection arriving while the server stops is stopped at once");
        drop(a);
        drop(_late);
        assert_eq!(c.count(), 0);
    }
}
