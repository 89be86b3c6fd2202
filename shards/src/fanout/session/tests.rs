//! The replay-to-live hand-over, without sockets: a model store and publisher driven step by step
//! around [`after_chunk`], for both wires' positions, with publishes landing at every point of a
//! chunk (before its read, between its read and the decision), gaps in the stored seqs (a
//! splitter's upstream), full and short chunks, and overflows back to the store.

use proptest::prelude::*;

use super::*;

/// What a subscriber of wire `P` is sent for stored event `relay` with `ops` ops: one item for the
/// firehose, one per op for Jetstream.
trait Items: Positions {
    fn items(relay: RelaySeq, ops: u8) -> Vec<Self::Seq>;
}

impl Items for RelayPositions {
    fn items(relay: RelaySeq, _: u8) -> Vec<RelaySeq> {
        vec![relay]
    }
}

impl Items for JetPositions {
    fn items(relay: RelaySeq, ops: u8) -> Vec<JetSeq> {
        (0..ops.max(1)).map(|i| JetSeq::new(relay, i)).collect()
    }
}

/// One step of the model.
#[derive(Debug, Clone)]
enum Step {
    /// The sequencer stores and publishes events: `(relay seq gap before it, ops)` each.
    Publish(Vec<(u8, u8)>),
    /// The subscriber's writer runs: a replay chunk (while replaying), with `before` of the
    /// publishes landing after the head is sampled and before the read, and `after` between the
    /// read and the decision; or, while live, it writes its queue.
    Write { before: Vec<(u8, u8)>, after: Vec<(u8, u8)> },
    /// The live queue overflows: back to the store.
    Overflow,
}

fn batch() -> impl Strategy<Value = Vec<(u8, u8)>> {
    proptest::collection::vec((0u8..3, 1u8..4), 0..4)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => batch().prop_map(Step::Publish),
        4 => (batch(), batch()).prop_map(|(before, after)| Step::Write { before, after }),
        1 => Just(Step::Overflow),
    ]
}

/// Stored events: relay seq and what a subscriber gets of it.
type Stored<S> = Vec<(RelaySeq, Vec<S>)>;

/// The rule deciding what replay does after a chunk (the shape of [`after_chunk`]).
type Decide<S> = fn(S, Option<RelaySeq>, bool, RelaySeq, RelaySeq) -> (S, bool);

/// The store and the shard's head.
struct Model<P: Items> {
    stored: Stored<P::Seq>,
    head: RelaySeq,
}

impl<P: Items> Model<P> {
    fn publish(&mut self, events: &[(u8, u8)], live: Option<&mut Vec<P::Seq>>) {
        let mut queued = Vec::new();
        for (gap, ops) in events {
            let seq = RelaySeq(self.head.0 + 1 + u64::from(*gap));
            let items = P::items(seq, *ops);
            queued.extend(items.iter().copied());
            self.stored.push((seq, items));
            self.head = seq;
        }
        if let Some(queue) = live {
            queue.extend(queued);
        }
    }

    /// `Store::replay`: up to `max` events after `after`.
    fn read(&self, after: RelaySeq, max: usize) -> (Stored<P::Seq>, Option<RelaySeq>, bool) {
        let chunk: Vec<_> = self.stored.iter().filter(|(s, _)| *s > after).take(max).cloned().collect();
        let last = chunk.last().map(|(s, _)| *s);
        let full = chunk.len() >= max;
        (chunk, last, full)
    }
}

/// Writes enough for any replay to catch up after `steps`: one chunk per `max` events stored, and
/// one more write to go live and one to drain the queue.
fn quiet_writes(initial: &[(u8, u8)], steps: &[Step], max: usize) -> usize {
    let published: usize = steps
        .iter()
        .map(|s| match s {
            Step::Publish(b) => b.len(),
            Step::Write { before, after } => before.len() + after.len(),
            Step::Overflow => 0,
        })
        .sum();
    (initial.len() + published) / max.max(1) + 3
}

/// Runs `steps` for a subscriber starting at relay seq `cursor` of a store holding `initial`
/// events, and returns what it was sent and what it should have been sent.
fn run<P: Items>(
    initial: &[(u8, u8)],
    cursor: u64,
    max: usize,
    steps: &[Step],
    decide: Decide<P::Seq>,
) -> (Vec<P::Seq>, Vec<P::Seq>) {
    let mut m = Model::<P> { stored: Vec::new(), head: RelaySeq(0) };
    m.publish(initial, None);
    let cursor = RelaySeq(cursor.min(m.head.0));
    let mut pos = P::end_of(cursor);
    let mut sent = Vec::new();
    // `Some`: live, with the queue the publisher fills.
    let mut live: Option<Vec<P::Seq>> = None;
    let quiet = Step::Write { before: vec![], after: vec![] };
    // The steps, then writes with nothing published until the subscriber is live and has written
    // its queue (replay catches up with a quiet publisher: every chunk moves the position).
    let tail = std::iter::from_fn(|| Some(&quiet)).take(quiet_writes(initial, steps, max));
    for step in steps.iter().chain(tail) {
        match step {
            Step::Publish(events) => m.publish(events, live.as_mut()),
            Step::Overflow => live = None,
            Step::Write { before, after } => match live.as_mut() {
                Some(queue) => {
                    for item in queue.drain(..) {
                        if item > pos {
                            sent.push(item);
                            pos = item;
                        }
                    }
                }
                None => {
                    let head_at_read = m.head;
                    m.publish(before, None);
                    let (chunk, last, full) = m.read(P::read_after(pos), max);
                    m.publish(after, None);
                    for (_, items) in chunk {
                        for item in items.into_iter().filter(|i| *i > pos) {
                            sent.push(item);
                        }
                    }
                    let (next, go_live) = decide(pos, last, !full, head_at_read, m.head);
                    pos = next;
                    if go_live {
                        live = Some(Vec::new());
                    }
                }
            },
        }
    }
    assert!(live.is_some(), "replay never caught up with a quiet publisher");
    let expected = m.stored.iter().filter(|(s, _)| *s > cursor).flat_map(|(_, items)| items.clone()).collect();
    (sent, expected)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every stored event after the cursor is sent exactly once and in order, however the
    /// publishes fall around the replay's reads and the hand-over to live.
    #[test]
    fn the_firehose_gets_every_event_once_in_order(
        initial in proptest::collection::vec((0u8..3, 1u8..4), 0..20),
        cursor in 0u64..30,
        max in 1usize..5,
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let (sent, expected) = run::<RelayPositions>(&initial, cursor, max, &steps, after_chunk::<RelayPositions>);
        prop_assert_eq!(sent, expected);
    }

    /// The same for Jetstream, whose positions fall inside commits.
    #[test]
    fn jetstream_gets_every_op_once_in_order(
        initial in proptest::collection::vec((0u8..3, 1u8..4), 0..20),
        cursor in 0u64..30,
        max in 1usize..5,
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let (sent, expected) = run::<JetPositions>(&initial, cursor, max, &steps, after_chunk::<JetPositions>);
        prop_assert_eq!(sent, expected);
    }
}

/// The rule Jetstream's replay had before the two replays became one session: a short chunk with
/// nothing stored after the position moved the position to the head *after* the chunk and went
/// live, so an event published while the chunk was read was skipped.
fn old_jetstream_rule(
    pos: JetSeq,
    last: Option<RelaySeq>,
    short: bool,
    _head_at_read: RelaySeq,
    head_now: RelaySeq,
) -> (JetSeq, bool) {
    let pos = last.map_or(pos, |l| pos.max(JetSeq::end_of(l)));
    if short && pos >= JetSeq::end_of(head_now) {
        return (pos, true);
    }
    if short && last.is_none() {
        return (pos.max(JetSeq::end_of(head_now)), true);
    }
    (pos, false)
}

#[test]
fn the_old_jetstream_rule_skipped_an_event_published_during_the_read() {
    // One stored event, a subscriber at it; an event lands between the read and the decision.
    let steps = [Step::Write { before: vec![], after: vec![(0, 1)] }];
    let (sent, expected) = run::<JetPositions>(&[(0, 1)], 1, 4, &steps, old_jetstream_rule);
    assert_eq!(expected, [JetSeq::new(RelaySeq(2), 0)]);
    assert!(sent.is_empty(), "the old rule went live past seq 2");
    let (sent, expected) = run::<JetPositions>(&[(0, 1)], 1, 4, &steps, after_chunk::<JetPositions>);
    assert_eq!(sent, expected);
}

#[test]
fn a_short_chunk_passes_the_gaps_up_to_the_head_it_was_read_at() {
    // Position 3, nothing stored after it, head 9 when read (seqs 4-9 never stored: a splitter's
    // upstream gap), 10 published since: the position moves to 9, not past 10.
    let (pos, live) = after_chunk::<RelayPositions>(RelaySeq(3), None, true, RelaySeq(9), RelaySeq(10));
    assert_eq!((pos, live), (RelaySeq(9), false));
    let (pos, live) = after_chunk::<RelayPositions>(RelaySeq(3), Some(RelaySeq(10)), true, RelaySeq(9), RelaySeq(10));
    assert_eq!((pos, live), (RelaySeq(10), true));
    // A full chunk never goes live, and never passes what it did not read.
    let (pos, live) = after_chunk::<JetPositions>(JetSeq(3), Some(RelaySeq(5)), false, RelaySeq(9), RelaySeq(9));
    assert_eq!((pos, live), (JetSeq::end_of(RelaySeq(5)), false));
    // Jetstream: the store is read after the relay seq before the position's next op.
    assert_eq!(JetPositions::read_after(JetSeq::new(RelaySeq(7), 1)), RelaySeq(6));
    assert_eq!(JetPositions::read_after(JetSeq::end_of(RelaySeq(7))), RelaySeq(7));
}
