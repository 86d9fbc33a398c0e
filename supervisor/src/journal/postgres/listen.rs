//! What the other daemons do, as PostgreSQL tells it: a thread on a connection of its
//! own `LISTEN`s to the journal's channels and passes each notification on as an
//! [`Event`]. A notification is sent by the transaction that made the change and
//! delivered only after it committed, so whoever looks at the journal after an event
//! sees the change.
//!
//! When the connection is lost, the thread connects again (waiting 1 s, doubling, at
//! most 10 s) and then sends [`Event::Lagged`]: notifications sent meanwhile are lost, so
//! everyone looks again. The thread ends when the last handle on the journal is dropped.

use std::sync::Weak;
use std::time::Duration;

use ::postgres::fallible_iterator::FallibleIterator;
use tokio::sync::broadcast;

use super::connect::Target;
use crate::journal::Event;

/// The channels, and the event each one's notification is.
const CHANNELS: &str = "LISTEN loom_queued; LISTEN loom_done; LISTEN loom_fleet";

/// How often the thread looks whether the journal is still in use while nothing is said.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Starts the listener thread. It runs while `alive` can be upgraded.
///
/// # Errors
/// When the thread cannot be started.
pub(crate) fn start(target: Target, events: broadcast::Sender<Event>, alive: Weak<()>) -> std::io::Result<()> {
    std::thread::Builder::new().name("loom-journal-listen".into()).spawn(move || run(&target, &events, &alive))?;
    Ok(())
}

fn run(target: &Target, events: &broadcast::Sender<Event>, alive: &Weak<()>) {
    let mut wait = Duration::from_secs(1);
    let mut first = true;
    while alive.strong_count() > 0 {
        let connected = target.connect().map_err(|e| (e.is_transient(), e.to_string())).and_then(|mut c| {
            c.batch_execute(CHANNELS).map_err(|e| (true, super::engine::error(&e).message))?;
            Ok(c)
        });
        let mut client = match connected {
            Ok(c) => c,
            Err((transient, e)) => {
                let again = format!("trying again in {} s", wait.as_secs());
                if transient {
                    tracing::warn!("cannot listen to the journal's notifications at {}: {e}; {again}", target.place());
                } else {
                    tracing::error!("cannot listen to the journal's notifications at {}: {e}; {again}", target.place());
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        wait = Duration::from_secs(1);
        if !first {
            tracing::info!("listening to the journal's notifications again");
            let _ = events.send(Event::Lagged);
        }
        first = false;
        while alive.strong_count() > 0 && !client.is_closed() {
            let mut notifications = client.notifications();
            let mut them = notifications.timeout_iter(LOOK_EVERY);
            while let Ok(Some(n)) = them.next() {
                let event = match n.channel() {
                    "loom_done" => Event::Done(n.payload().into()),
                    "loom_fleet" => Event::Fleet,
                    _ => Event::Queued,
                };
                let _ = events.send(event);
            }
        }
    }
}
