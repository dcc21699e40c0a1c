//! Who sends which part next. Hosts ask for work; parts of a host that fails go back
//! to the front of the queue for the others.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::plan::{Part, Plan, Strategy};

/// What a host should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send this part.
    Part(Part),
    /// Nothing to take now, but parts are in flight elsewhere and may come back.
    Wait,
    /// Nothing left for this host.
    Finished,
}

#[derive(Debug)]
struct State {
    /// Parts any host may take.
    shared: VecDeque<Part>,
    /// Parts reserved for one host (`equal`), by host number.
    reserved: Vec<VecDeque<Part>>,
    alive: Vec<bool>,
    /// Each host's measured upload rate (bytes/s), once it finished a part.
    rates: Vec<Option<f64>>,
    in_flight: usize,
    done: usize,
    total: usize,
    /// Which host reported each part done (by part index), in this run.
    completed_by: Vec<Option<usize>>,
}

impl State {
    /// End game: a host slower than the fastest live one leaves a part alone if the
    /// hosts together would clear the whole remaining queue before it could finish
    /// that one part (the last parts go to whoever finishes them first).
    fn others_finish_sooner(&self, host: usize, len: u64) -> bool {
        let Some(mine) = self.rates[host] else {
            return false;
        };
        let live: Vec<f64> = (0..self.rates.len())
            .filter(|&h| self.alive[h])
            .filter_map(|h| self.rates[h])
            .collect();
        let fastest = live.iter().copied().fold(0.0, f64::max);
        if mine >= fastest * 0.95 {
            return false;
        }
        let total: f64 = live.iter().sum();
        let queued: u64 = self.shared.iter().map(|p| p.len).sum();
        len as f64 / mine > queued as f64 / total
    }

    /// Slower than 3/4 of the median rate of the live hosts that have one.
    fn is_slow(&self, host: usize) -> bool {
        let Some(mine) = self.rates[host] else {
            return false;
        };
        let mut known: Vec<f64> = (0..self.rates.len())
            .filter(|&h| self.alive[h])
            .filter_map(|h| self.rates[h])
            .collect();
        if known.len() < 2 {
            return false;
        }
        known.sort_by(|a, b| a.total_cmp(b));
        mine < 0.75 * known[known.len() / 2]
    }
}

pub struct Scheduler {
    state: Mutex<State>,
    changed: Condvar,
}

impl Scheduler {
    /// `hosts` hosts, numbered 0..hosts; with `equal`, part i is reserved for host i.
    /// Parts in `done` are already on the server (a resumed send) and are not handed out.
    /// Only hosts in `live` take part; with `equal`, part k is reserved for `live[k]`.
    pub fn new(
        plan: &Plan,
        hosts: usize,
        live: &[usize],
        done: &std::collections::HashSet<usize>,
    ) -> Scheduler {
        let mut reserved = vec![VecDeque::new(); hosts];
        let mut shared = VecDeque::new();
        for part in plan.parts.iter().filter(|p| !done.contains(&p.index)) {
            let owner = plan.owners.get(part.index).and_then(|o| live.get(*o));
            match (plan.strategy, owner) {
                (Strategy::Equal, Some(&host)) => reserved[host].push_back(*part),
                _ => shared.push_back(*part),
            }
        }
        Scheduler {
            state: Mutex::new(State {
                shared,
                reserved,
                alive: (0..hosts).map(|h| live.contains(&h)).collect(),
                rates: vec![None; hosts],
                in_flight: 0,
                done: plan
                    .parts
                    .iter()
                    .filter(|p| done.contains(&p.index))
                    .count(),
                total: plan.parts.len(),
                completed_by: vec![None; plan.parts.len()],
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next(&self, host: usize) -> Next {
        let mut s = self.lock();
        if !s.alive[host] || s.done == s.total {
            return Next::Finished;
        }
        // Parts shrink along the queue (guided plan): a host clearly slower than the
        // others takes from the back, so no slow host is left with a big part at the end.
        let slow = s.is_slow(host);
        let part = s.reserved[host].pop_front().or_else(|| {
            let candidate = if slow {
                s.shared.back()
            } else {
                s.shared.front()
            }?;
            if s.others_finish_sooner(host, candidate.len) {
                return None;
            }
            if slow {
                s.shared.pop_back()
            } else {
                s.shared.pop_front()
            }
        });
        match part {
            Some(p) => {
                s.in_flight += 1;
                Next::Part(p)
            }
            None if s.in_flight > 0
                || !s.shared.is_empty()
                || s.reserved.iter().any(|r| !r.is_empty()) =>
            {
                Next::Wait
            }
            None => Next::Finished,
        }
    }

    /// Blocks until something changes or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let s = self.lock();
        let _ = self.changed.wait_timeout(s, timeout);
    }

    /// The part is on the server; `secs` is how long `host` took to upload it.
    pub fn complete(&self, part: &Part, host: usize, secs: f64) {
        let mut s = self.lock();
        if part.len >= 1 << 20 && secs > 0.0 {
            let rate = part.len as f64 / secs;
            // Smooth, so one lucky or unlucky part does not flip a host's standing.
            s.rates[host] = Some(s.rates[host].map_or(rate, |r| 0.5 * r + 0.5 * rate));
        }
        s.in_flight -= 1;
        s.done += 1;
        if let Some(slot) = s.completed_by.get_mut(part.index) {
            *slot = Some(host);
        }
        self.changed.notify_all();
    }

    /// The host that reported part `index` done in this run, if one did.
    pub fn completed_by(&self, index: usize) -> Option<usize> {
        self.lock().completed_by.get(index).copied().flatten()
    }

    /// Puts parts a host took but did not finish back at the front of the queue.
    pub fn give_back(&self, parts: &[Part]) {
        let mut s = self.lock();
        for p in parts.iter().rev() {
            s.in_flight -= 1;
            s.shared.push_front(*p);
        }
        self.changed.notify_all();
    }

    /// The host is out: its unfinished and reserved parts go to the others.
    pub fn host_failed(&self, host: usize, unfinished: &[Part]) {
        self.give_back(unfinished);
        let mut s = self.lock();
        s.alive[host] = false;
        let mine: Vec<Part> = s.reserved[host].drain(..).collect();
        for p in mine.into_iter().rev() {
            s.shared.push_front(p);
        }
        // Without the host, reserved parts of others stay reserved; shared parts are for all.
        self.changed.notify_all();
    }

    pub fn all_done(&self) -> bool {
        let s = self.lock();
        s.done == s.total
    }

    #[cfg(test)]
    pub fn hosts_alive(&self) -> usize {
        self.lock().alive.iter().filter(|a| **a).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [usize; 4] = [0, 1, 2, 3];

    fn plan(parts: usize, strategy: Strategy) -> Plan {
        Plan::new(parts as u64 * 10, parts, strategy, Some(10))
    }

    #[test]
    fn adaptive_hands_out_in_order_then_finishes() {
        let s = Scheduler::new(
            &plan(3, Strategy::Adaptive),
            2,
            &ALL[..2],
            &Default::default(),
        );
        let Next::Part(a) = s.next(0) else { panic!() };
        let Next::Part(b) = s.next(1) else { panic!() };
        let Next::Part(c) = s.next(0) else { panic!() };
        assert_eq!((a.index, b.index, c.index), (0, 1, 2));
        assert_eq!(s.next(1), Next::Wait, "parts still in flight may come back");
        s.complete(&a, 0, 1.0);
        s.complete(&b, 1, 1.0);
        s.complete(&c, 0, 1.0);
        assert_eq!(s.next(1), Next::Finished);
        assert!(s.all_done());
    }

    #[test]
    fn equal_reserves_one_part_per_host() {
        let s = Scheduler::new(&plan(3, Strategy::Equal), 3, &ALL[..3], &Default::default());
        let Next::Part(p) = s.next(2) else { panic!() };
        assert_eq!(p.index, 2);
        s.complete(&p, 0, 1.0);
        assert_eq!(s.next(2), Next::Wait, "others still hold their parts");
    }

    #[test]
    fn failed_host_parts_go_to_others() {
        let s = Scheduler::new(&plan(3, Strategy::Equal), 3, &ALL[..3], &Default::default());
        let Next::Part(p1) = s.next(1) else { panic!() };
        s.host_failed(1, &[p1]);
        assert_eq!(s.next(1), Next::Finished, "a failed host gets nothing more");
        let Next::Part(own) = s.next(0) else { panic!() };
        assert_eq!(own.index, 0);
        let Next::Part(taken) = s.next(0) else {
            panic!()
        };
        assert_eq!(taken.index, 1, "the failed host's part is reassigned");
        assert_eq!(s.hosts_alive(), 2);
    }

    #[test]
    fn reserved_but_untaken_parts_move_on_failure() {
        let s = Scheduler::new(&plan(2, Strategy::Equal), 2, &ALL[..2], &Default::default());
        s.host_failed(1, &[]);
        let Next::Part(a) = s.next(0) else { panic!() };
        let Next::Part(b) = s.next(0) else { panic!() };
        assert_eq!((a.index, b.index), (0, 1));
    }

    #[test]
    fn given_back_parts_come_first() {
        let s = Scheduler::new(
            &plan(4, Strategy::Adaptive),
            2,
            &ALL[..2],
            &Default::default(),
        );
        let Next::Part(a) = s.next(0) else { panic!() };
        let Next::Part(_b) = s.next(1) else { panic!() };
        s.give_back(&[a]);
        let Next::Part(again) = s.next(1) else {
            panic!()
        };
        assert_eq!(again.index, 0);
    }

    #[test]
    fn a_slow_host_takes_the_small_parts_from_the_back() {
        let plan = Plan::new(40 << 20, 3, Strategy::Adaptive, Some(1 << 20));
        let s = Scheduler::new(&plan, 3, &ALL[..3], &Default::default());
        for (host, secs) in [(0, 0.1), (1, 0.1), (2, 1.0)] {
            let Next::Part(p) = s.next(host) else {
                panic!()
            };
            s.complete(&p, host, secs);
        }
        let Next::Part(p) = s.next(2) else { panic!() };
        assert_eq!(p.index, 39, "the slow host takes from the back");
        let Next::Part(p) = s.next(0) else { panic!() };
        assert_eq!(p.index, 3, "a fast host takes from the front");
    }

    #[test]
    fn equal_reserves_parts_for_live_hosts_only() {
        let s = Scheduler::new(&plan(2, Strategy::Equal), 3, &[0, 2], &Default::default());
        assert_eq!(s.next(1), Next::Finished, "host 1 is not live");
        let Next::Part(p) = s.next(2) else { panic!() };
        assert_eq!(
            p.index, 1,
            "the second part belongs to the second live host"
        );
    }

    #[test]
    fn at_the_end_a_slow_host_leaves_the_last_part_to_a_fast_one() {
        let plan = Plan::new(4 << 20, 2, Strategy::Adaptive, Some(1 << 20));
        let s = Scheduler::new(&plan, 2, &ALL[..2], &Default::default());
        for (host, secs) in [(0, 0.1), (1, 2.0)] {
            let Next::Part(p) = s.next(host) else {
                panic!()
            };
            s.complete(&p, host, secs);
        }
        let Next::Part(p) = s.next(0) else { panic!() };
        assert_eq!(p.index, 2);
        assert_eq!(
            s.next(1),
            Next::Wait,
            "2 s for the slow host, 0.1 s for the fast one"
        );
        let Next::Part(p) = s.next(0) else { panic!() };
        assert_eq!(p.index, 3, "the fast host takes it");
    }

    #[test]
    fn parts_already_done_are_skipped() {
        let done = [0, 2].into_iter().collect();
        let s = Scheduler::new(&plan(3, Strategy::Adaptive), 1, &ALL[..1], &done);
        let Next::Part(p) = s.next(0) else { panic!() };
        assert_eq!(p.index, 1);
        s.complete(&p, 0, 1.0);
        assert!(s.all_done());
    }

    #[test]
    fn empty_plan_is_finished() {
        let s = Scheduler::new(
            &plan(0, Strategy::Adaptive),
            2,
            &ALL[..2],
            &Default::default(),
        );
        assert_eq!(s.next(0), Next::Finished);
        assert!(s.all_done());
    }
}
