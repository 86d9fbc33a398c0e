//! How much a plugin's misbehaviour may put in the log: a budget per plugin.
//!
//! A plugin decides how much it writes to stderr and how many protocol mistakes it makes
//! (stray lines on stdout, answers to unknown ids, requests, bad or unknown notifications,
//! output for tasks that are not running, junk on the log channel), and each of them used
//! to become a log line: an audit wrote 3.5 GB of log in 60 s from a stderr flood, and
//! 100,000 warnings for 100,000 answers with unknown ids. So each plugin gets two token
//! buckets, shared by all its processes ([`for_plugin`]):
//!
//! - its stderr lines: [`STDERR`], a burst of 300 lines, then 30 a second. A line costs a
//!   token per KiB begun (stderr lines are cut at 16 KiB), so bytes are bounded too: about
//!   300 KiB at once, then 30 KiB a second at most;
//! - the supervisor's warnings about its protocol mistakes: [`PROTOCOL`], a burst of 50,
//!   then 5 a second. A few say what the plugin does wrong; the connection's counters
//!   ([`crate::wire::connection::Stats`]) keep the totals.
//!
//! A line over budget is **dropped and counted**, never waited for: the readers go on at
//! full speed, so the plugin's task channel is never slowed. What was held back comes out
//! as one summary line per plugin per [`INTERVAL`] ("N stderr lines and M protocol
//! warnings from plugin X suppressed in the last 10 s"): with the first line after the
//! interval, or from a timer when the flood has stopped, or at once when a process of the
//! plugin ends ([`LogLimiter::flush`]), so a count is never lost at exit.
//!
//! The plugin's own `log` and `progress` notifications are not rate-limited: they are what
//! it means to log, and it can send them on its own channel (fd 3). Only the log's backlog
//! bounds them ([`crate::log::pump`]); the lines the backlog drops are counted here
//! ([`LogLimiter::dropped`]) and reported in the same summary, at most once per interval,
//! not once per gap in the flood.
//!
//! What a plugin keeps for its crash message (its last stderr lines) is taken before this
//! limit: it is always complete.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// What one class of lines may put in the log: `burst` tokens at once, refilled at
/// `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Tokens available at once (and at most).
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: u32,
}

/// A plugin's stderr lines: 300 at once, then 30 a second; a line costs a token per KiB
/// begun. Enough for a stack trace or a chatty start; a plugin that means to log a lot
/// sends `log` notifications.
pub const STDERR: Budget = Budget { burst: 300, per_second: 30 };

/// The supervisor's warnings about a plugin's protocol mistakes: 50 at once, then 5 a
/// second. Each names what was wrong; the same mistake a thousand times says no more.
pub const PROTOCOL: Budget = Budget { burst: 50, per_second: 5 };

/// At most one summary per plugin per interval (except when a process ends).
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The most tokens one stderr line costs (lines are cut at 16 KiB).
const MAX_LINE_COST: usize = 16;

/// What was held back from the log in one interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Stderr lines over the budget.
    pub stderr: u64,
    /// Protocol warnings over the budget.
    pub protocol: u64,
    /// Log lines the log could not take (its backlog was full).
    pub dropped: u64,
    /// How long the interval was.
    pub over: Duration,
}

impl Summary {
    /// The summary as a log message: "N stderr lines and M protocol warnings from plugin
    /// X suppressed in the last 10 s", and how many lines the log dropped.
    pub fn message(&self, plugin: &str) -> String {
        let secs = self.over.as_secs() + u64::from(self.over.subsec_nanos() > 0);
        let secs = secs.max(1);
        let dropped = || {
            format!(
                "{} log lines dropped: the log fell more than {} MiB behind",
                self.dropped,
                crate::log::pump::BUDGET_BYTES >> 20
            )
        };
        if self.stderr + self.protocol == 0 {
            return format!("from plugin {plugin} in the last {secs} s: {}", dropped());
        }
        let mut text = format!(
            "{} stderr lines and {} protocol warnings from plugin {plugin} suppressed in the last {secs} s: over its \
             log rate limit",
            self.stderr, self.protocol
        );
        if self.dropped > 0 {
            text.push_str("; ");
            text.push_str(&dropped());
        }
        text
    }
}

/// Where summaries go: the plugin's name and what was held back.
pub type Report = Arc<dyn Fn(&Arc<str>, &Summary) + Send + Sync>;

/// One plugin's log budget. Cheap to consult: one uncontended lock per line.
pub struct LogLimiter {
    plugin: Arc<str>,
    interval: Duration,
    state: Mutex<State>,
    report: Report,
}

#[derive(Debug, Clone, Copy)]
enum Class {
    Stderr,
    Protocol,
}

struct State {
    stderr: Bucket,
    protocol: Bucket,
    /// What was held back since the last summary, and since when.
    pending: Option<(Instant, Summary)>,
}

#[derive(Debug)]
struct Bucket {
    budget: Budget,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(budget: Budget, now: Instant) -> Bucket {
        Bucket { budget, tokens: f64::from(budget.burst), at: now }
    }

    /// Takes `cost` tokens if there are that many, after refilling for the time passed.
    fn take(&mut self, cost: u32, now: Instant) -> bool {
        let passed = now.saturating_duration_since(self.at).as_secs_f64();
        let full = f64::from(self.budget.burst);
        self.tokens = (self.tokens + passed * f64::from(self.budget.per_second)).min(full);
        self.at = self.at.max(now);
        if self.tokens >= f64::from(cost) {
            self.tokens -= f64::from(cost);
            true
        } else {
            false
        }
    }
}

/// The limiter of plugin `plugin`, shared by all its processes: the one already in use,
/// or a new one with the default budgets that logs its summaries through
/// [`crate::log::pump`]. It lives as long as a connection of the plugin holds it.
pub fn for_plugin(plugin: &Arc<str>) -> Arc<LogLimiter> {
    static ALL: Mutex<BTreeMap<Arc<str>, Weak<LogLimiter>>> = Mutex::new(BTreeMap::new());
    let mut all = ALL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    all.retain(|_, l| l.strong_count() > 0);
    if let Some(limiter) = all.get(plugin).and_then(Weak::upgrade) {
        return limiter;
    }
    let report: Report =
        Arc::new(|plugin: &Arc<str>, s: &Summary| crate::log::pump::summary(plugin, s.message(plugin)));
    let limiter = LogLimiter::new(Arc::clone(plugin), STDERR, PROTOCOL, INTERVAL, report);
    all.insert(Arc::clone(plugin), Arc::downgrade(&limiter));
    limiter
}

impl LogLimiter {
    /// A limiter with the given budgets, reporting at most once per `interval` to `report`.
    pub fn new(plugin: Arc<str>, stderr: Budget, protocol: Budget, interval: Duration, report: Report) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(LogLimiter {
            plugin,
            interval,
            state: Mutex::new(State {
                stderr: Bucket::new(stderr, now),
                protocol: Bucket::new(protocol, now),
                pending: None,
            }),
            report,
        })
    }

    /// Whether a stderr line of `bytes` may be logged; if not, it is counted.
    pub fn allow_stderr(self: &Arc<Self>, bytes: usize) -> bool {
        let cost = bytes.div_ceil(1024).clamp(1, MAX_LINE_COST);
        self.allow_at(Class::Stderr, u32::try_from(cost).unwrap_or(u32::MAX), Instant::now())
    }

    /// Whether a warning about a protocol mistake may be logged; if not, it is counted.
    pub fn allow_protocol(self: &Arc<Self>) -> bool {
        self.allow_at(Class::Protocol, 1, Instant::now())
    }

    /// Counts `lines` of the plugin's that the log could not take, for the next summary.
    pub fn dropped(self: &Arc<Self>, lines: u64) {
        self.dropped_at(lines, Instant::now());
    }

    /// Reports what is held back now, whether or not the interval has passed. Called when
    /// a process of the plugin ends, so that nothing counted goes unreported at exit.
    pub fn flush(&self) {
        let now = Instant::now();
        let summary =
            self.lock().pending.take().map(|(since, s)| Summary { over: now.saturating_duration_since(since), ..s });
        if let Some(s) = summary {
            (self.report)(&self.plugin, &s);
        }
    }

    fn allow_at(self: &Arc<Self>, class: Class, cost: u32, now: Instant) -> bool {
        let (allowed, armed, due) = {
            let mut st = self.lock();
            let bucket = match class {
                Class::Stderr => &mut st.stderr,
                Class::Protocol => &mut st.protocol,
            };
            let allowed = bucket.take(cost, now);
            let armed = if allowed {
                None
            } else {
                st.count(now, |s| match class {
                    Class::Stderr => s.stderr += 1,
                    Class::Protocol => s.protocol += 1,
                })
            };
            (allowed, armed, self.take_due(&mut st, now))
        };
        self.after(armed, due);
        allowed
    }

    fn dropped_at(self: &Arc<Self>, lines: u64, now: Instant) {
        let (armed, due) = {
            let mut st = self.lock();
            let armed = st.count(now, |s| s.dropped += lines);
            (armed, self.take_due(&mut st, now))
        };
        self.after(armed, due);
    }

    /// The summary, if its interval has passed.
    fn take_due(&self, st: &mut State, now: Instant) -> Option<Summary> {
        match st.pending {
            Some((since, _)) if now.saturating_duration_since(since) >= self.interval => {
                st.pending.take().map(|(since, s)| Summary { over: now.saturating_duration_since(since), ..s })
            }
            _ => None,
        }
    }

    fn after(self: &Arc<Self>, armed: Option<Instant>, due: Option<Summary>) {
        if let Some(since) = armed {
            self.arm(since);
        }
        if let Some(s) = due {
            (self.report)(&self.plugin, &s);
        }
    }

    /// Reports the interval that began at `since` when it has passed, if nothing else has
    /// by then (a flood that stopped sends no next line). Outside a tokio runtime there is
    /// no timer: the next line or [`LogLimiter::flush`] reports it.
    fn arm(self: &Arc<Self>, since: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let limiter = Arc::downgrade(self);
        let interval = self.interval;
        runtime.spawn(async move {
            tokio::time::sleep(interval).await;
            let Some(limiter) = limiter.upgrade() else { return };
            let summary = {
                let mut st = limiter.lock();
                match st.pending {
                    Some((started, _)) if started == since => {
                        st.pending.take().map(|(since, s)| Summary { over: since.elapsed(), ..s })
                    }
                    _ => None,
                }
            };
            if let Some(s) = summary {
                (limiter.report)(&limiter.plugin, &s);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters and buckets stay consistent between statements; recover from a poison.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Counts one held-back line; returns when a new interval began (to arm its timer).
    fn count(&mut self, now: Instant, count: impl FnOnce(&mut Summary)) -> Option<Instant> {
        match &mut self.pending {
            Some((_, s)) => {
                count(s);
                None
            }
            None => {
                let mut s = Summary::default();
                count(&mut s);
                self.pending = Some((now, s));
                Some(now)
            }
        }
    }
}

impl Drop for LogLimiter {
    /// The plugin's last process is gone: whatever is still counted is reported.
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<Summary>>>;

    fn limiter(stderr: Budget, protocol: Budget, interval: Duration) -> (Arc<LogLimiter>, Seen) {
        let seen: Seen = Arc::default();
        let sink = Arc::clone(&seen);
        let report: Report = Arc::new(move |_: &Arc<str>, s: &Summary| sink.lock().unwrap().push(s.clone()));
        (LogLimiter::new(Arc::from("p"), stderr, protocol, interval, report), seen)
    }

    fn counts(seen: &Seen) -> Vec<(u64, u64, u64)> {
        seen.lock().unwrap().iter().map(|s| (s.stderr, s.protocol, s.dropped)).collect()
    }

    #[test]
    fn a_burst_passes_then_the_rate_and_the_rest_is_counted() {
        let (l, seen) = limiter(Budget { burst: 10, per_second: 2 }, PROTOCOL, Duration::from_secs(3600));
        let t0 = Instant::now();
        let passed = (0..1000).filter(|_| l.allow_at(Class::Stderr, 1, t0)).count();
        assert_eq!(passed, 10, "the burst");
        // Five seconds later: ten more tokens, at 2 a second.
        let later = t0 + Duration::from_secs(5);
        let passed = (0..1000).filter(|_| l.allow_at(Class::Stderr, 1, later)).count();
        assert_eq!(passed, 10, "the rate");
        // Never more than the burst, however long it was quiet.
        let much_later = t0 + Duration::from_secs(3000);
        let passed = (0..1000).filter(|_| l.allow_at(Class::Stderr, 1, much_later)).count();
        assert_eq!(passed, 10);
        l.flush();
        assert_eq!(counts(&seen), [(2970, 0, 0)], "every line held back is counted");
    }

    #[test]
    fn long_stderr_lines_cost_a_token_per_kib() {
        let (l, _) = limiter(Budget { burst: 64, per_second: 1 }, PROTOCOL, INTERVAL);
        assert!(l.allow_stderr(16 * 1024));
        assert!(l.allow_stderr(16 * 1024));
        assert!(l.allow_stderr(16 * 1024));
        assert!(l.allow_stderr(15 * 1024 + 1));
        assert!(!l.allow_stderr(1), "64 tokens spent");
    }

    #[test]
    fn stderr_and_protocol_warnings_have_their_own_budgets() {
        let (l, seen) =
            limiter(Budget { burst: 3, per_second: 0 }, Budget { burst: 1, per_second: 0 }, Duration::from_secs(3600));
        let stderr = (0..10).filter(|_| l.allow_stderr(10)).count();
        let protocol = (0..10).filter(|_| l.allow_protocol()).count();
        assert_eq!((stderr, protocol), (3, 1));
        l.dropped(4);
        l.flush();
        assert_eq!(counts(&seen), [(7, 9, 4)]);
        l.flush();
        assert_eq!(seen.lock().unwrap().len(), 1, "nothing new, nothing reported");
    }

    #[test]
    fn one_summary_per_interval_however_the_flood_is_shaped() {
        let (l, seen) = limiter(Budget { burst: 1, per_second: 1 }, PROTOCOL, Duration::from_secs(10));
        let t0 = Instant::now() + Duration::from_secs(1);
        // A line every 100 ms: about one a second passes and the rest are held back; and
        // the log drops one line in two. Per-line reports would give hundreds of lines.
        let mut passed = 0;
        for i in 0..300u32 {
            let now = t0 + Duration::from_millis(100) * i;
            passed += u64::from(l.allow_at(Class::Stderr, 1, now));
            if i % 2 == 0 {
                l.dropped_at(1, now);
            }
        }
        l.flush();
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "30 s of flood, one summary per 10 s: {got:?}");
        assert!((27..=31).contains(&passed), "about one a second: {passed}");
        let held: u64 = got.iter().map(|s| s.stderr).sum();
        let dropped: u64 = got.iter().map(|s| s.dropped).sum();
        assert_eq!((held, dropped), (300 - passed, 150), "{got:?}");
        assert!(got[..2].iter().all(|s| s.over >= Duration::from_secs(10)), "{got:?}");
    }

    #[tokio::test]
    async fn the_summary_comes_when_the_flood_stops_without_a_next_line() {
        let (l, seen) = limiter(Budget { burst: 1, per_second: 0 }, PROTOCOL, Duration::from_millis(50));
        for _ in 0..5 {
            l.allow_stderr(1);
        }
        // No further line: the interval's timer reports it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "no summary came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(counts(&seen), [(4, 0, 0)]);
    }

    #[test]
    fn the_last_summary_comes_out_when_the_limiter_goes() {
        let (l, seen) = limiter(Budget { burst: 0, per_second: 0 }, PROTOCOL, Duration::from_secs(3600));
        l.allow_stderr(1);
        drop(l);
        assert_eq!(counts(&seen), [(1, 0, 0)]);
    }

    #[test]
    fn the_summary_says_what_was_held_back() {
        let s = Summary { stderr: 199_700, protocol: 19_950, dropped: 0, over: Duration::from_millis(9_200) };
        assert_eq!(
            s.message("flooder"),
            "199700 stderr lines and 19950 protocol warnings from plugin flooder suppressed in the last 10 s: over its \
             log rate limit"
        );
        let s = Summary { dropped: 311_557, over: Duration::from_secs(10), ..Summary::default() };
        assert_eq!(
            s.message("flooder"),
            "from plugin flooder in the last 10 s: 311557 log lines dropped: the log fell more than 32 MiB behind"
        );
        let s = Summary { stderr: 1, dropped: 2, over: Duration::from_secs(1), ..Summary::default() };
        assert!(s.message("x").ends_with("rate limit; 2 log lines dropped: the log fell more than 32 MiB behind"));
    }

    #[test]
    fn processes_of_one_plugin_share_its_limiter() {
        let a = for_plugin(&Arc::from("loglimit-test-shared"));
        let b = for_plugin(&Arc::from("loglimit-test-shared"));
        let other = for_plugin(&Arc::from("loglimit-test-other"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
    }
}
