//! A live subscriber's bounded queue: frames the publisher hands it, and control frames (pongs) its
//! reader hands it, taken by its writer.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Poll, Waker};

use bytes::Bytes;
use wire::RelaySeq;

/// Something to write to a subscriber whose stream is ordered by `S` (a [`RelaySeq`] for the
/// firehose, a [`wire::jetstream::JetSeq`] for Jetstream).
#[derive(Debug, Clone)]
pub enum Outgoing<S = RelaySeq> {
    /// An event frame (complete websocket frame) with its position in the subscriber's stream and
    /// when its batch became durable.
    Event(S, Bytes, std::time::Instant),
    /// A control frame (pong), written in order with events.
    Control(Bytes),
}

/// Pongs a subscriber may have waiting; a client that pings faster than it reads is closed.
const MAX_PENDING_CONTROL: usize = 16;

/// A subscriber's queue. Events beyond the capacity are refused (the publisher then marks the
/// subscriber [`Queue::mark_behind`]); control frames have their own small bound.
pub(crate) struct Queue<S = RelaySeq> {
    items: RefCell<VecDeque<Outgoing<S>>>,
    capacity: usize,
    controls: Cell<usize>,
    behind: Cell<bool>,
    closed: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl<S> Queue<S> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: RefCell::new(VecDeque::new()),
            capacity: capacity.max(1),
            controls: Cell::new(0),
            behind: Cell::new(false),
            closed: Cell::new(false),
            waker: Cell::new(None),
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Queues an event; `Err` when the queue is full.
    pub(crate) fn push(&self, item: Outgoing<S>) -> Result<(), Outgoing<S>> {
        let mut items = self.items.borrow_mut();
        if items.len() >= self.capacity {
            return Err(item);
        }
        items.push_back(item);
        drop(items);
        self.wake();
        Ok(())
    }

    /// Queues a control frame; closes the subscriber instead when too many are waiting.
    pub(crate) fn push_control(&self, item: Outgoing<S>) {
        if self.controls.get() >= MAX_PENDING_CONTROL {
            self.close();
            return;
        }
        self.controls.set(self.controls.get() + 1);
        self.items.borrow_mut().push_back(item);
        self.wake();
    }

    /// The subscriber's live queue overflowed: its writer goes back to reading from the store.
    pub(crate) fn mark_behind(&self) {
        self.behind.set(true);
        self.wake();
    }

    /// Whether the queue overflowed since the writer last went live.
    pub(crate) fn is_behind(&self) -> bool {
        self.behind.get()
    }

    /// Back to live: drops the events still queued (the writer replays them from the store) and
    /// keeps the control frames.
    pub(crate) fn reset_events(&self) {
        self.items.borrow_mut().retain(|i| matches!(i, Outgoing::Control(_)));
        self.behind.set(false);
    }

    /// The subscriber went away (or pinged too fast).
    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.wake();
    }

    /// Whether the subscriber went away.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Takes the control frames waiting (pongs), leaving events queued.
    pub(crate) fn take_controls(&self, out: &mut Vec<u8>) {
        let mut items = self.items.borrow_mut();
        if self.controls.get() == 0 {
            return;
        }
        items.retain(|i| match i {
            Outgoing::Control(b) => {
                out.extend_from_slice(b);
                false
            }
            Outgoing::Event(..) => true,
        });
        self.controls.set(0);
    }

    /// How long the oldest queued event has waited since its batch became durable; `None` when no
    /// event is queued.
    pub(crate) fn oldest_wait(&self) -> Option<std::time::Duration> {
        self.items.borrow().iter().find_map(|i| match i {
            Outgoing::Event(_, _, at) => Some(at.elapsed()),
            Outgoing::Control(_) => None,
        })
    }

    /// Wakes the writer waiting in [`Queue::wait_for`] (its condition changed).
    pub(crate) fn notify(&self) {
        self.wake();
    }

    /// Waits until `ready` holds, a control frame (pong) is waiting, or the subscriber is gone; the
    /// code that makes `ready` true calls [`Queue::notify`]. Used before the queue carries events
    /// (Jetstream's `requireHello`), without waking on a timer.
    pub(crate) async fn wait_for(&self, ready: impl Fn() -> bool) {
        std::future::poll_fn(|cx| {
            if self.closed.get() || self.controls.get() > 0 || ready() {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Waits for items and takes up to `max_bytes` of them; `None` once the subscriber is behind or
    /// gone.
    pub(crate) async fn next_batch(&self, out: &mut Vec<Outgoing<S>>, max_bytes: usize) -> Option<()> {
        std::future::poll_fn(|cx| {
            if self.behind.get() || self.closed.get() {
                return Poll::Ready(None);
            }
            let mut items = self.items.borrow_mut();
            if items.is_empty() {
                self.waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            let mut bytes = 0;
            while let Some(item) = items.pop_front() {
                bytes += match &item {
                    Outgoing::Event(_, b, _) => b.len(),
                    Outgoing::Control(b) => {
                        self.controls.set(self.controls.get().saturating_sub(1));
                        b.len()
                    }
                };
                out.push(item);
                if bytes >= max_bytes {
                    break;
                }
            }
            Poll::Ready(Some(()))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Outgoing {
        Outgoing::Event(RelaySeq(seq), Bytes::from(vec![0u8; 10]), std::time::Instant::now())
    }

    #[test]
    fn overflow_marks_behind_and_reset_keeps_pongs() {
        let q: Queue = Queue::new(2);
        assert!(q.push(ev(1)).is_ok() && q.push(ev(2)).is_ok());
        assert!(q.push(ev(3)).is_err());
        q.push_control(Outgoing::Control(Bytes::from_static(b"pong")));
        q.mark_behind();
        assert!(q.is_behind());
        let mut out = Vec::new();
        q.take_controls(&mut out);
        assert_eq!(out, b"pong");
        q.reset_events();
        assert!(!q.is_behind() && q.items.borrow().is_empty());
        for _ in 0..MAX_PENDING_CONTROL {
            q.push_control(Outgoing::Control(Bytes::from_static(b"p")));
        }
        assert!(!q.is_closed());
        q.push_control(Outgoing::Control(Bytes::from_static(b"p")));
        assert!(q.is_closed(), "a client that pings faster than it reads is closed");
    }
}
