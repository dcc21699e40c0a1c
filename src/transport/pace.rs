//! Upload pacing: a token bucket per host, so a host never sends faster than its rate
//! for longer than a fifth of a second, even right after a stall, and a rate that
//! can change while a part is in flight (a share of `--bwlimit-total` changes when a
//! host joins or drops).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seconds' worth of bytes the bucket holds: the largest burst above the rate. Small,
/// so a stall is not made up for by sending above the limit afterwards (pacing by the
/// average since the start would, until it had caught up); big enough that one
/// scheduling hiccup of the sending thread does not cost throughput.
const BURST_SECS: f64 = 0.2;

/// How often a limited host writes: about ten writes a second keeps the rate smooth
/// and progress moving (the stall watchdog sees bytes), whatever the rate.
const WRITES_PER_SEC: u64 = 10;

/// Longest single sleep: a rate that rises mid-part is followed within this time.
const MAX_NAP: Duration = Duration::from_millis(100);

/// A rate limit shared between a pacer and whoever sets it (the scheduler, a relay's
/// request reader): bytes per second, `None` for no limit.
#[derive(Clone, Debug, Default)]
pub struct Rate(Arc<AtomicU64>);

impl Rate {
    pub fn new(limit: Option<u64>) -> Rate {
        let rate = Rate::default();
        rate.set(limit);
        rate
    }

    pub fn set(&self, limit: Option<u64>) {
        // 0 stands for no limit: a limit is at least 1 byte per second.
        self.0.store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&r| r > 0)
    }
}

/// What a pacer allows now.
#[derive(Debug, PartialEq)]
pub enum Grant {
    /// Send this many bytes now.
    Send(usize),
    /// Nothing yet: ask again after this long.
    Wait(Duration),
}

/// A token bucket of [`BURST_SECS`] worth of bytes at the current rate, filled at that
/// rate. Bytes are taken before they are written, so the bytes sent in any span of
/// time never exceed one bucket plus the rate times the span. It lives as long as the
/// host's login on the server, so the bucket carries over from one part to the next
/// and a new part brings no fresh burst.
#[derive(Debug)]
pub struct Pacer {
    rate: Rate,
    tokens: f64,
    /// When the bucket was last filled; `None` while there is no limit.
    last: Option<Instant>,
}

impl Pacer {
    pub fn new(rate: Rate) -> Pacer {
        Pacer {
            rate,
            tokens: 0.0,
            last: None,
        }
    }

    /// The live rate this pacer follows (setting it takes effect at the next write).
    pub fn rate(&self) -> Rate {
        self.rate.clone()
    }

    /// Follows `rate` from now on instead of its own.
    pub fn follow(&mut self, rate: Rate) {
        self.rate = rate;
    }

    /// How much of `want` bytes may be sent at `now`. Time comes in as an argument so
    /// the arithmetic is tested without sleeping.
    pub fn grant(&mut self, want: usize, now: Instant) -> Grant {
        let Some(rate) = self.rate.get() else {
            self.last = None;
            return Grant::Send(want);
        };
        let rate = rate as f64;
        let step = (rate / WRITES_PER_SEC as f64).clamp(1.0, super::CHUNK as f64);
        let bucket = (rate * BURST_SECS).max(step);
        self.tokens = match self.last {
            // Starting (or a limit just set): one write's worth, so the first write goes
            // at once, but hosts starting together do not each add a bucket to the total.
            None => step,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                (self.tokens + rate * elapsed).min(bucket)
            }
        };
        self.last = Some(now);
        let n = (want as f64).min(step).floor().max(1.0);
        if self.tokens >= n {
            self.tokens -= n;
            Grant::Send(n as usize)
        } else {
            // Rounded up, so the bucket holds `n` once the wait is over.
            let nanos = ((n - self.tokens) / rate * 1e9).ceil() as u64;
            Grant::Wait(Duration::from_nanos(nanos.max(1)).min(MAX_NAP))
        }
    }

    /// Gives back bytes granted but not sent (the source returned fewer).
    pub fn refund(&mut self, bytes: usize) {
        if self.last.is_some() {
            self.tokens += bytes as f64;
        }
    }

    /// Blocks until some of `want` bytes may go, and returns how many.
    pub fn take(&mut self, want: usize) -> usize {
        loop {
            match self.grant(want, Instant::now()) {
                Grant::Send(n) => return n,
                Grant::Wait(d) => std::thread::sleep(d),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender on a fake clock that always wants a full chunk: returns every write as
    /// (seconds since start, bytes). `stall` is (at second, for seconds): the write in
    /// progress then blocks that long (a network hiccup). `at` runs before each write.
    fn simulate(
        pacer: &mut Pacer,
        until: f64,
        stall: Option<(f64, f64)>,
        mut at: impl FnMut(f64),
    ) -> Vec<(f64, usize)> {
        let t0 = Instant::now();
        let mut now = Duration::ZERO;
        let mut sent = Vec::new();
        let mut stall = stall.map(|(at, secs)| (Duration::from_secs_f64(at), secs));
        while now.as_secs_f64() < until {
            at(now.as_secs_f64());
            match pacer.grant(crate::transport::CHUNK, t0 + now) {
                Grant::Send(n) => {
                    sent.push((now.as_secs_f64(), n));
                    if let Some((_, secs)) = stall.filter(|s| s.0 <= now) {
                        now += Duration::from_secs_f64(secs);
                        stall = None;
                    }
                    // A write takes a little time even on a fast link.
                    now += Duration::from_micros(300);
                }
                Grant::Wait(d) => {
                    assert!(d > Duration::ZERO && d <= MAX_NAP, "{d:?}");
                    now += d;
                }
            }
        }
        sent
    }

    /// The most bytes sent in any span [from, to] minus rate × (to - from), over all
    /// spans that start at or after `after`.
    fn worst_excess(sent: &[(f64, usize)], rate: f64, after: f64) -> f64 {
        let mut worst = f64::MIN;
        for (i, &(from, _)) in sent.iter().enumerate().filter(|(_, s)| s.0 >= after) {
            let mut bytes = 0.0;
            for &(to, n) in &sent[i..] {
                bytes += n as f64;
                worst = worst.max(bytes - rate * (to - from));
            }
        }
        worst
    }

    #[test]
    fn a_stall_is_not_made_up_for_with_a_burst() {
        let rate = 1_000_000.0;
        let mut pacer = Pacer::new(Rate::new(Some(rate as u64)));
        let sent = simulate(&mut pacer, 10.0, Some((3.0, 4.0)), |_| {});
        let bucket = rate * BURST_SECS;
        // After the stall (3 s to 7 s), never more than one bucket above the rate.
        let resumed = sent
            .iter()
            .find(|s| s.0 >= 7.0)
            .expect("sends after the stall")
            .0;
        assert!(worst_excess(&sent, rate, resumed) <= bucket + 1.0);
        // Nor anywhere else; and the stall is not made up for: 6 s of sending at the
        // rate and a bucket before and after it, not 10 s worth.
        assert!(worst_excess(&sent, rate, 0.0) <= bucket + 1.0);
        let total: usize = sent.iter().map(|s| s.1).sum();
        assert!(total as f64 <= 2.0 * bucket + rate * 6.0 + 1.0, "{total}");
        assert!(total as f64 >= rate * 5.5, "the rate is reached: {total}");
    }

    #[test]
    fn writes_are_a_tenth_of_a_second_worth() {
        let mut pacer = Pacer::new(Rate::new(Some(2_000_000)));
        let sent = simulate(&mut pacer, 2.0, None, |_| {});
        assert!(sent.iter().all(|s| s.1 == 200_000), "{sent:?}");
        // Fast rates write a chunk at a time at most.
        let mut fast = Pacer::new(Rate::new(Some(1 << 40)));
        assert_eq!(
            fast.grant(4 * crate::transport::CHUNK, Instant::now()),
            Grant::Send(crate::transport::CHUNK)
        );
    }

    #[test]
    fn a_rate_set_mid_part_takes_effect_at_the_next_write() {
        let rate = Rate::new(Some(4_000_000));
        let mut pacer = Pacer::new(rate.clone());
        // At 2 s the share drops to a quarter, at 4 s it rises again.
        let sent = simulate(&mut pacer, 6.0, None, |now| {
            rate.set(Some(if (2.0..4.0).contains(&now) {
                1_000_000
            } else {
                4_000_000
            }))
        });
        let slow: Vec<_> = sent
            .iter()
            .copied()
            .filter(|s| (2.0..4.0).contains(&s.0))
            .collect();
        let bytes: usize = slow.iter().map(|s| s.1).sum();
        // The bucket shrinks with the rate: one new bucket plus the new rate.
        assert!(
            bytes as f64 <= 200_000.0 + 1_000_000.0 * 2.0 + 1.0,
            "{bytes}"
        );
        let fast: usize = sent.iter().filter(|s| s.0 >= 4.0).map(|s| s.1).sum();
        assert!(
            fast as f64 >= 4_000_000.0 * 1.9,
            "the higher rate is used: {fast}"
        );
    }

    #[test]
    fn no_limit_sends_at_once_and_a_new_limit_starts_with_one_write() {
        let rate = Rate::new(None);
        let mut pacer = Pacer::new(rate.clone());
        let t = Instant::now();
        assert_eq!(pacer.grant(123, t), Grant::Send(123));
        rate.set(Some(1000));
        // One 100-byte write at once, then wait for the rate.
        assert_eq!(pacer.grant(1 << 20, t), Grant::Send(100));
        assert_eq!(
            pacer.grant(1 << 20, t),
            Grant::Wait(Duration::from_millis(100))
        );
        assert_eq!(
            pacer.grant(1 << 20, t + Duration::from_millis(100)),
            Grant::Send(100)
        );
        // An idle minute refills one bucket, no more.
        let later = t + Duration::from_secs(60);
        assert_eq!(pacer.grant(1 << 20, later), Grant::Send(100));
        assert_eq!(pacer.grant(1 << 20, later), Grant::Send(100));
        assert!(matches!(pacer.grant(1 << 20, later), Grant::Wait(_)));
    }

    #[test]
    fn unsent_bytes_are_given_back() {
        let mut pacer = Pacer::new(Rate::new(Some(1000)));
        let t = Instant::now();
        assert_eq!(pacer.grant(1 << 20, t), Grant::Send(100));
        pacer.refund(60);
        assert_eq!(pacer.grant(50, t), Grant::Send(50));
        assert!(matches!(pacer.grant(50, t), Grant::Wait(_)));
    }

    #[test]
    fn tiny_rates_still_make_progress() {
        let mut pacer = Pacer::new(Rate::new(Some(5)));
        let sent = simulate(&mut pacer, 10.0, None, |_| {});
        assert!(sent.iter().all(|s| s.1 == 1));
        let total: usize = sent.iter().map(|s| s.1).sum();
        assert!((50..=52).contains(&total), "{total}");
    }
}
