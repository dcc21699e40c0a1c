//! Is it the host or the server? A host whose upload fails is not dropped at once:
//! when every host fails against the server alike, the server is away (restarted,
//! its link down), and dropping the hosts would turn a short outage into a slow or
//! failed send. A failing host waits and tries again, with a growing pause (capped
//! at 30 s), for up to `--retry-for` since the outage began; a host that fails again
//! while another host has uploaded a part in the meantime fails alone, and is dropped
//! as before.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::progress::Progress;

/// Longest pause between two tries against an unreachable server.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// How often the outage is announced while it lasts.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(10);

/// What a host that just failed should do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Pause this long, then try again (give its part back meanwhile).
    Retry(Duration),
    /// Others reach the server and this host does not: drop it as before.
    Alone,
    /// The server has been away longer than `--retry-for`: stop trying.
    GiveUp(Duration),
}

#[derive(Default)]
struct State {
    /// When a host last finished a part.
    last_success: Option<Instant>,
    /// When the current run of failures began (no success since).
    outage_since: Option<Instant>,
    /// When the outage was last announced.
    announced: Option<Instant>,
    /// Counts successes, so a pause can end at the first one.
    successes: u64,
}

pub struct Health {
    state: Mutex<State>,
    back: Condvar,
    retry_for: Duration,
}

impl Health {
    pub fn new(retry_for: Duration) -> Health {
        Health {
            state: Mutex::default(),
            back: Condvar::new(),
            retry_for,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A host finished a part: the server is there.
    pub fn success(&self, progress: &Progress) {
        self.success_at(Instant::now(), progress);
    }

    fn success_at(&self, now: Instant, progress: &Progress) {
        let mut s = self.lock();
        s.last_success = Some(now);
        s.successes += 1;
        self.back.notify_all();
        if let Some(since) = s.outage_since.take() {
            if s.announced.take().is_some() {
                progress.server_back(now.duration_since(since).as_secs_f64());
            }
        }
    }

    /// A host failed to upload a part. `previous` is when that host last failed
    /// without succeeding since (`None` after a success).
    pub fn failure(&self, previous: Option<Instant>, progress: &Progress) -> Verdict {
        let now = Instant::now();
        let verdict = self.judge(now, previous);
        if let Verdict::Retry(_) = verdict {
            let mut s = self.lock();
            let since = s.outage_since.unwrap_or(now);
            let away = now.duration_since(since);
            let due = s
                .announced
                .is_none_or(|t| now.duration_since(t) >= ANNOUNCE_EVERY);
            // The first failure may be one host's alone: say nothing for a moment.
            if due && away >= Duration::from_secs(2) {
                s.announced = Some(now);
                progress.server_unreachable(away.as_secs_f64());
            }
        }
        verdict
    }

    /// Waits `d`, or less: until some host gets through to the server again (then the
    /// others go back to work at once) or the send is interrupted.
    pub fn pause(&self, d: Duration) {
        let end = Instant::now() + d;
        let mut s = self.lock();
        let seen = s.successes;
        while s.successes == seen && !crate::interrupt::interrupted() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self
                .back
                .wait_timeout(s, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether some host got through to the server after `failed`.
    pub fn is_up_since(&self, failed: Option<Instant>) -> bool {
        let s = self.lock();
        matches!((failed, s.last_success), (Some(f), Some(ok)) if ok > f)
    }

    fn judge(&self, now: Instant, previous: Option<Instant>) -> Verdict {
        let mut s = self.lock();
        if let (Some(prev), Some(ok)) = (previous, s.last_success) {
            if ok > prev {
                return Verdict::Alone;
            }
        }
        let since = *s.outage_since.get_or_insert(now);
        let away = now.duration_since(since);
        if away > self.retry_for {
            return Verdict::GiveUp(away);
        }
        // Short outages (a server restart) come back fast: start at 1 s and grow with
        // the outage's length, so a long one costs few tries.
        Verdict::Retry((away / 2).clamp(Duration::from_secs(1), MAX_PAUSE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> std::sync::Arc<Progress> {
        Progress::quiet()
    }

    #[test]
    fn all_failing_is_an_outage_with_growing_pauses_then_it_gives_up() {
        let h = Health::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(h.judge(t0, None), Verdict::Retry(Duration::from_secs(1)));
        // Another host fails, then the first again: nobody succeeded in between.
        assert_eq!(
            h.judge(t0 + Duration::from_secs(1), None),
            Verdict::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            h.judge(t0 + Duration::from_secs(20), Some(t0)),
            Verdict::Retry(Duration::from_secs(10))
        );
        assert_eq!(
            h.judge(t0 + Duration::from_secs(60), Some(t0)),
            Verdict::Retry(MAX_PAUSE)
        );
        assert_eq!(
            h.judge(t0 + Duration::from_secs(61), Some(t0)),
            Verdict::GiveUp(Duration::from_secs(61))
        );
    }

    #[test]
    fn a_host_that_fails_again_after_another_succeeded_fails_alone() {
        let h = Health::new(Duration::from_secs(60));
        let p = quiet();
        let t0 = Instant::now();
        assert!(matches!(h.judge(t0, None), Verdict::Retry(_)));
        h.success_at(t0 + Duration::from_secs(2), &p);
        assert_eq!(
            h.judge(t0 + Duration::from_secs(3), Some(t0)),
            Verdict::Alone
        );
        // A host whose last failure came after that success is not judged by it.
        assert!(matches!(
            h.judge(
                t0 + Duration::from_secs(4),
                Some(t0 + Duration::from_secs(3))
            ),
            Verdict::Retry(_)
        ));
    }

    #[test]
    fn a_success_ends_the_outage() {
        let h = Health::new(Duration::from_secs(5));
        let p = quiet();
        let t0 = Instant::now();
        h.judge(t0, None);
        h.success_at(t0 + Duration::from_secs(4), &p);
        // A new failure long after the first starts a new outage, not a give-up.
        assert!(matches!(
            h.judge(t0 + Duration::from_secs(10), None),
            Verdict::Retry(_)
        ));
    }
}
