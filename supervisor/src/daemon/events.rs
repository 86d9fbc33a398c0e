//! The daemon's event bus: what `GET /v1/events` streams ([`crate::daemon::http`]'s
//! `sse`).
//!
//! Each event has an id, `<run>-<n>`: `run` is random per daemon start (so an id from an
//! earlier run is recognised as such), `n` counts up from 1. The bus keeps the last
//! [`MAX_EVENTS`] events, and at most [`MAX_BYTES`] of their data, whichever is reached
//! first (the oldest go); a subscriber that resumes from an id still kept gets every
//! event after it, one that resumes from an id no longer kept (or of another run) is told
//! to start over ([`Reset`]). Live events reach subscribers through a broadcast channel
//! of [`WAKE_CAPACITY`]; a subscriber that falls further behind than that reads the
//! missed events from the ring ([`Cursor`]), and is told to start over only when they are
//! gone too. Everything here is bounded, whatever the readers do.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};

/// Events kept for resuming.
pub const MAX_EVENTS: usize = 4096;
/// Bytes of event data kept for resuming.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Live events a subscriber may be behind before it reads from the ring.
pub const WAKE_CAPACITY: usize = 1024;
/// What an event costs in the ring beyond its data (its id, name, pointers).
const OVERHEAD: usize = 64;

/// One event.
#[derive(Debug)]
pub struct Event {
    /// Its number in this run (from 1, one more per event).
    pub n: u64,
    /// Its name (`task.started`, ...).
    pub name: &'static str,
    /// Its data: one line of JSON.
    pub data: Arc<str>,
}

impl Event {
    fn cost(&self) -> usize {
        self.data.len() + OVERHEAD
    }
}

/// Where a client asks to resume: the id of the last event it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The run the id is from.
    pub run: String,
    /// The event's number.
    pub n: u64,
}

impl Resume {
    /// Reads `<run>-<n>`; `None` when it is not of that form (such an id is unknown: the
    /// client is told to start over).
    pub fn parse(id: &str) -> Option<Resume> {
        let (run, n) = id.trim().rsplit_once('-')?;
        let n = n.parse().ok()?;
        (!run.is_empty()).then(|| Resume { run: run.to_owned(), n })
    }
}

/// Why a subscriber must start over (reload its state): the events after its id are
/// not all here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// They were dropped from the ring (too old, or the reader too slow).
    Evicted,
    /// The id is from an earlier run of the daemon (or not one of its ids).
    Restarted,
}

impl Reset {
    /// What the `reset` event's data says.
    pub fn why(self) -> &'static str {
        match self {
            Reset::Evicted => "the events after this id are no longer kept",
            Reset::Restarted => "the daemon restarted",
        }
    }
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    next: u64,
    /// `None` once the bus is closed: subscribers end after what they were sent.
    wake: Option<broadcast::Sender<Arc<Event>>>,
}

/// The bus.
pub struct Bus {
    run: String,
    ring: Mutex<Ring>,
    streams: AtomicUsize,
}

/// What a new subscriber starts with.
pub struct Subscription {
    /// Events it missed, oldest first.
    pub backlog: Vec<Arc<Event>>,
    /// The live events, from just after the backlog (see [`Cursor`]).
    pub cursor: Cursor,
    /// Set when the events after its id are not all kept: it must reload its state.
    pub reset: Option<Reset>,
}

impl Default for Bus {
    fn default() -> Bus {
        Bus::new()
    }
}

impl Bus {
    /// An empty bus with a new random run id.
    pub fn new() -> Bus {
        Bus::with_run(random_run())
    }

    fn with_run(run: String) -> Bus {
        let (wake, _) = broadcast::channel(WAKE_CAPACITY);
        let ring = Ring { events: VecDeque::new(), bytes: 0, next: 1, wake: Some(wake) };
        Bus { run, ring: Mutex::new(ring), streams: AtomicUsize::new(0) }
    }

    /// This run's id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The id of event `n`, as clients see it.
    pub fn id(&self, n: u64) -> String {
        format!("{}-{n}", self.run)
    }

    /// Publishes an event: kept in the ring (the oldest go past the bounds) and sent to
    /// every subscriber. After [`Bus::close`] nothing is published.
    pub fn publish(&self, name: &'static str, data: &Value) {
        let data: Arc<str> = data.to_string().into();
        let mut ring = self.lock();
        let Some(wake) = ring.wake.clone() else { return };
        let event = Arc::new(Event { n: ring.next, name, data });
        ring.next += 1;
        ring.bytes += event.cost();
        ring.events.push_back(Arc::clone(&event));
        // The newest stays, however large: it is bounded where it is made.
        while ring.events.len() > 1 && (ring.events.len() > MAX_EVENTS || ring.bytes > MAX_BYTES) {
            if let Some(old) = ring.events.pop_front() {
                ring.bytes -= old.cost();
            }
        }
        // Under the lock: subscribers see events in the order of their numbers.
        let _ = wake.send(event);
    }

    /// Subscribes from just after `since` (`None`: from now). The backlog and the live
    /// events meet without a gap or a repeat.
    pub fn subscribe(&self, since: Option<&Resume>) -> Subscription {
        let ring = self.lock();
        let last = ring.next - 1;
        let (backlog, reset) = match since {
            None => (Vec::new(), None),
            Some(r) if r.run != self.run || r.n > last => (Vec::new(), Some(Reset::Restarted)),
            Some(r) => match after(&ring, r.n) {
                Some(events) => (events, None),
                None => (Vec::new(), Some(Reset::Evicted)),
            },
        };
        let rx = match &ring.wake {
            Some(wake) => wake.subscribe(),
            // Closed: a receiver that ends at once.
            None => broadcast::channel(1).1,
        };
        Subscription { backlog, cursor: Cursor { last, rx, pending: VecDeque::new() }, reset }
    }

    /// The events after number `n`, if the ring still has them all.
    fn after(&self, n: u64) -> Option<Vec<Arc<Event>>> {
        after(&self.lock(), n)
    }

    /// The newest event's number (0: none yet).
    fn newest(&self) -> u64 {
        self.lock().next - 1
    }

    /// Closes the bus (the daemon drains): subscribers get what was published before,
    /// then their stream ends; nothing more is published.
    pub fn close(&self) {
        self.lock().wake = None;
    }

    /// Takes one of `max` stream places; `None` when all are taken. The place is given
    /// back when the guard is dropped.
    pub fn open_stream(self: &Arc<Self>, max: usize) -> Option<StreamPlace> {
        let taken = self.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        taken.ok().map(|_| StreamPlace(Arc::clone(self)))
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Nothing under the lock panics half-way; a poisoned ring is still consistent.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn after(ring: &Ring, n: u64) -> Option<Vec<Arc<Event>>> {
    let oldest = ring.events.front().map_or(ring.next, |e| e.n);
    if n + 1 < oldest {
        return None;
    }
    Some(ring.events.iter().filter(|e| e.n > n).cloned().collect())
}

/// One of the bus's stream places ([`Bus::open_stream`]).
pub struct StreamPlace(Arc<Bus>);

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a subscriber reads next.
#[derive(Debug)]
pub enum Next {
    /// An event.
    Event(Arc<Event>),
    /// It fell so far behind that events it missed are gone: it must reload its state;
    /// it goes on from the newest event.
    Reset(Reset),
    /// The bus was closed and everything published before was read.
    Closed,
}

/// A subscriber's place in the live events.
pub struct Cursor {
    /// The number of the last event it was given.
    last: u64,
    rx: broadcast::Receiver<Arc<Event>>,
    /// Events read back from the ring after it lagged (at most the ring's).
    pending: VecDeque<Arc<Event>>,
}

impl Cursor {
    /// The next event, in order, none twice. After a lag (more than [`WAKE_CAPACITY`]
    /// events behind) the missed events come from `bus`'s ring; when the ring no longer
    /// has them, [`Next::Reset`] (once) and then the newest events.
    ///
    /// # Cancellation
    /// Dropping the future loses nothing: an event is taken only when it is returned.
    pub async fn next(&mut self, bus: &Bus) -> Next {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return self.give(event);
            }
            match self.rx.recv().await {
                Ok(event) if event.n <= self.last => {}
                Ok(event) => return self.give(event),
                Err(RecvError::Closed) => return Next::Closed,
                Err(RecvError::Lagged(_)) => match bus.after(self.last) {
                    Some(events) => self.pending = events.into(),
                    None => {
                        self.last = bus.newest();
                        return Next::Reset(Reset::Evicted);
                    }
                },
            }
        }
    }

    fn give(&mut self, event: Arc<Event>) -> Next {
        self.last = event.n;
        Next::Event(event)
    }

    /// The number of the last event given (or where it started).
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// 12 hex digits from the system's random source; the time and pid when it cannot be
/// read (ids of two runs then still differ).
fn random_run() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 6];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        let t = crate::journal::now_ms().unsigned_abs() ^ (u64::from(std::process::id()) << 20);
        bytes.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn numbers(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.n).collect()
    }

    async fn next_n(cursor: &mut Cursor, bus: &Bus) -> u64 {
        match cursor.next(bus).await {
            Next::Event(e) => e.n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_read_back_and_other_forms_are_unknown() {
        let bus = Bus::with_run("abc".into());
        assert_eq!(Resume::parse(&bus.id(7)), Some(Resume { run: "abc".into(), n: 7 }));
        assert_eq!(Resume::parse("a-b-12"), Some(Resume { run: "a-b".into(), n: 12 }));
        for bad in ["", "7", "-7", "abc-", "abc-x", "abc-+"] {
            assert_eq!(Resume::parse(bad), None, "{bad}");
        }
        assert_eq!(Bus::new().run().len(), 12);
        assert_ne!(Bus::new().run(), Bus::new().run());
    }

    #[test]
    fn the_ring_keeps_the_newest_by_count() {
        let bus = Bus::with_run("r".into());
        for i in 0..MAX_EVENTS + 10 {
            bus.publish("e", &json!(i));
        }
        let ring = bus.lock();
        assert_eq!(ring.events.len(), MAX_EVENTS);
        assert_eq!(ring.events.front().map(|e| e.n), Some(11));
    }

    #[test]
    fn the_ring_keeps_the_newest_by_bytes() {
        let bus = Bus::with_run("r".into());
        let big = "x".repeat(100 * 1024);
        for _ in 0..100 {
            bus.publish("e", &json!(big));
        }
        let ring = bus.lock();
        assert!(ring.bytes <= MAX_BYTES, "{}", ring.bytes);
        assert_eq!(ring.events.len(), MAX_BYTES / (big.len() + 2 + OVERHEAD));
        assert_eq!(ring.events.back().map(|e| e.n), Some(100));
    }

    #[tokio::test]
    async fn a_resume_gets_exactly_what_was_missed_then_the_live_events() {
        let bus = Bus::with_run("r".into());
        for i in 1..=5 {
            bus.publish("e", &json!(i));
        }
        let mut sub = bus.subscribe(Resume::parse("r-3").as_ref());
        assert_eq!(sub.reset, None);
        assert_eq!(numbers(&sub.backlog), [4, 5]);
        bus.publish("e", &json!(6));
        assert_eq!(next_n(&mut sub.cursor, &bus).await, 6);
        let fresh = bus.subscribe(None);
        assert!(fresh.backlog.is_empty() && fresh.reset.is_none());
        let caught_up = bus.subscribe(Resume::parse("r-6").as_ref());
        assert!(caught_up.backlog.is_empty() && caught_up.reset.is_none());
    }

    #[test]
    fn an_unknown_or_evicted_id_resets() {
        let bus = Bus::with_run("r".into());
        for i in 0..MAX_EVENTS + 10 {
            bus.publish("e", &json!(i));
        }
        let reset = |id: &str| bus.subscribe(Resume::parse(id).as_ref()).reset;
        assert_eq!(reset("other-5"), Some(Reset::Restarted), "an earlier run");
        assert_eq!(reset("r-999999"), Some(Reset::Restarted), "not issued by this run");
        assert_eq!(reset("r-5"), Some(Reset::Evicted));
        assert_eq!(reset("r-10"), None, "11, the oldest kept, is next");
        assert_eq!(Reset::Evicted.why(), "the events after this id are no longer kept");
        assert_eq!(Reset::Restarted.why(), "the daemon restarted");
    }

    #[tokio::test]
    async fn a_lagged_reader_catches_up_from_the_ring() {
        let bus = Bus::with_run("r".into());
        let mut sub = bus.subscribe(None);
        let total = WAKE_CAPACITY as u64 + 100;
        for i in 0..total {
            bus.publish("e", &json!(i));
        }
        for want in 1..=total {
            assert_eq!(next_n(&mut sub.cursor, &bus).await, want);
        }
    }

    #[tokio::test]
    async fn a_reader_behind_the_ring_is_reset_and_goes_on_from_the_newest() {
        let bus = Bus::with_run("r".into());
        let mut sub = bus.subscribe(None);
        for i in 0..MAX_EVENTS + 10 {
            bus.publish("e", &json!(i));
        }
        assert!(matches!(sub.cursor.next(&bus).await, Next::Reset(Reset::Evicted)));
        bus.publish("e", &json!("new"));
        assert_eq!(next_n(&mut sub.cursor, &bus).await, MAX_EVENTS as u64 + 11);
    }

    #[tokio::test]
    async fn a_closed_bus_ends_its_streams_after_what_was_published() {
        let bus = Arc::new(Bus::with_run("r".into()));
        let mut sub = bus.subscribe(None);
        bus.publish("e", &json!(1));
        bus.close();
        bus.publish("e", &json!(2));
        assert_eq!(next_n(&mut sub.cursor, &bus).await, 1);
        assert!(matches!(sub.cursor.next(&bus).await, Next::Closed));
        assert!(matches!(bus.subscribe(None).cursor.next(&bus).await, Next::Closed));
        let a = bus.open_stream(1).unwrap();
        assert!(bus.open_stream(1).is_none());
        drop(a);
        assert!(bus.open_stream(1).is_some());
    }
}
