//! Who sends which part next. Hosts ask for work; parts of a host that fails go back
//! to the front of the queue for the others.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::send::plan::{Part, Plan, Strategy};
use crate::transport::Rate;

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
    /// Which host holds each part in flight, and its length, by part index.
    holders: HashMap<usize, (usize, u64)>,
    /// Hosts uploading now: from the first part they take until they hold none and
    /// there is none for them (waiting at the end, finished, or failed).
    uploading: Vec<bool>,
    /// `--bwlimit` and `--bwlimit-total`, bytes per second.
    per_host: Option<u64>,
    total_limit: Option<u64>,
    /// Each host's live rate limit, which its uploads follow.
    paces: Vec<Rate>,
}

/// One uploading host's rate limit: `total` split equally among the `hosts` uploading
/// now, and never above `per_host`. Equally, because the hosts' uplinks are separate
/// and usually alike, the shared queue already gives a faster host more parts, and an
/// equal split is what a user can predict; weighting by measured rates would feed back
/// on itself, as a paced host measures exactly its share. (A host whose own uplink is
/// below its share leaves the difference unused.)
pub fn share(per_host: Option<u64>, total: Option<u64>, hosts: usize) -> Option<u64> {
    let split = total.map(|t| (t / hosts.max(1) as u64).max(1));
    match (per_host, split) {
        (Some(mine), Some(split)) => Some(mine.min(split)),
        (mine, split) => mine.or(split),
    }
}

impl State {
    /// Sets every host's rate to its share. A host that is not uploading gets the share
    /// it will have once it starts, so it never starts above it.
    fn reshare(&self) {
        let busy = self.uploading.iter().filter(|u| **u).count();
        for (host, pace) in self.paces.iter().enumerate() {
            let hosts = busy + usize::from(!self.uploading[host]);
            pace.set(share(self.per_host, self.total_limit, hosts));
        }
    }

    /// Follows what `next` told `host`: a part makes it an uploading host; nothing,
    /// while it holds nothing, ends that, and its share goes to the others.
    fn follow(&mut self, host: usize, next: &Next) {
        let uploading = match next {
            Next::Part(p) => {
                self.holders.insert(p.index, (host, p.len));
                true
            }
            _ => self.holders.values().any(|h| h.0 == host),
        };
        if self.uploading[host] != uploading {
            self.uploading[host] = uploading;
            self.reshare();
        }
    }

    /// End game: a host slower than the fastest live one leaves a part alone if the
    /// hosts together would clear the whole remaining queue before it could finish
    /// that part after the ones it holds (a peer takes its next part while it still
    /// uploads one, to stage it): the last parts go to whoever finishes them first.
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
        let held: u64 = self
            .holders
            .values()
            .filter(|(h, _)| *h == host)
            .map(|(_, len)| len)
            .sum();
        (held + len) as f64 / mine > queued as f64 / total
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
                holders: HashMap::new(),
                uploading: vec![false; hosts],
                per_host: None,
                total_limit: None,
                // One rate each: a cloned `Rate` is the same rate.
                paces: (0..hosts).map(|_| Rate::default()).collect(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Upload limits in bytes per second: `per_host` for every host, `total` shared
    /// among the hosts uploading at the time (see [`share`]).
    pub fn limit(&self, per_host: Option<u64>, total: Option<u64>) {
        let mut s = self.lock();
        s.per_host = per_host;
        s.total_limit = total;
        s.reshare();
    }

    /// `host`'s live rate limit, kept at its share as hosts start and stop uploading.
    pub fn pace(&self, host: usize) -> Rate {
        self.lock().paces[host].clone()
    }

    pub fn next(&self, host: usize) -> Next {
        let mut s = self.lock();
        let next = Self::pick(&mut s, host);
        s.follow(host, &next);
        next
    }

    fn pick(s: &mut State, host: usize) -> Next {
        if !s.alive[host] || s.done == s.total {
            return Next::Finished;
        }
        // Every host takes the next part in order, a slow one too: the append-merge
        // goes on as the parts come, and the guided plan's parts shrink along the
        // queue, so the last ones are small for everyone. (A slow host that took the
        // small parts from the back left the fast ones the big middle parts to end on,
        // and the merge everything after them to append at the end: 0.4 s in lab (b).)
        let part = s.reserved[host].pop_front().or_else(|| {
            let candidate = s.shared.front()?;
            if s.others_finish_sooner(host, candidate.len) {
                return None;
            }
            s.shared.pop_front()
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
        s.holders.remove(&part.index);
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
            s.holders.remove(&p.index);
            s.shared.push_front(*p);
        }
        self.changed.notify_all();
    }

    /// The host is out: its unfinished and reserved parts go to the others.
    pub fn host_failed(&self, host: usize, unfinished: &[Part]) {
        self.give_back(unfinished);
        let mut s = self.lock();
        s.alive[host] = false;
        if s.uploading[host] {
            s.uploading[host] = false;
            s.reshare();
        }
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
        Plan::new(
            parts as u64 * 10,
            parts,
            strategy,
            Some(10),
            crate::send::plan::MIN_GUIDED_PART,
        )
    }

    /// An adaptive plan of `mib` parts of 1 MiB, for `hosts` hosts.
    fn mib_parts(mib: u64, hosts: usize) -> Plan {
        Plan::new(
            mib << 20,
            hosts,
            Strategy::Adaptive,
            Some(1 << 20),
            crate::send::plan::MIN_GUIDED_PART,
        )
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
    fn a_slow_host_takes_the_next_part_and_counts_what_it_holds_at_the_end() {
        let plan = mib_parts(40, 3);
        let s = Scheduler::new(&plan, 3, &ALL[..3], &Default::default());
        for (host, secs) in [(0, 0.1), (1, 0.1), (2, 0.5)] {
            let Next::Part(p) = s.next(host) else {
                panic!()
            };
            s.complete(&p, host, secs);
        }
        let Next::Part(p) = s.next(2) else { panic!() };
        assert_eq!(p.index, 3, "the slow host takes the next part too");
        let Next::Part(p) = s.next(0) else { panic!() };
        assert_eq!(p.index, 4);
        // The fast hosts take all but 16 of the rest, 1 MiB each.
        for i in 5..24 {
            let Next::Part(p) = s.next(i % 2) else {
                panic!()
            };
            s.complete(&p, i % 2, 0.1);
        }
        // 16 MiB queued clear in 16 / 22 s; the slow host needs 0.5 s a part, but
        // holding part 3 it would finish part 24 after 1 s: it leaves it.
        assert_eq!(s.next(2), Next::Wait, "it still holds part 3");
        let Next::Part(p) = s.next(0) else { panic!() };
        assert_eq!(p.index, 24);
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
        let plan = mib_parts(4, 2);
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
    fn shares_of_the_limits() {
        let mib = 1 << 20;
        for (per_host, total, hosts, want) in [
            (None, None, 3, None),
            (Some(5 * mib), None, 3, Some(5 * mib)),
            (None, Some(9 * mib), 3, Some(3 * mib)),
            (None, Some(9 * mib), 1, Some(9 * mib)),
            (None, Some(9 * mib), 0, Some(9 * mib)),
            (Some(2 * mib), Some(9 * mib), 3, Some(2 * mib)),
            (Some(4 * mib), Some(9 * mib), 3, Some(3 * mib)),
            (None, Some(10), 3, Some(3)),
            (None, Some(2), 5, Some(1)),
        ] {
            assert_eq!(
                share(per_host, total, hosts),
                want,
                "{per_host:?} {total:?} {hosts}"
            );
        }
    }

    fn rates(s: &Scheduler, hosts: usize) -> Vec<Option<u64>> {
        (0..hosts).map(|h| s.pace(h).get()).collect()
    }

    #[test]
    fn the_total_is_split_among_the_hosts_uploading_now() {
        let s = Scheduler::new(
            &plan(6, Strategy::Adaptive),
            3,
            &ALL[..3],
            &Default::default(),
        );
        assert_eq!(rates(&s, 3), [None, None, None], "no limit until set");
        s.limit(None, Some(900));
        // Nobody uploads yet: whoever starts first may use it all.
        assert_eq!(rates(&s, 3), [Some(900); 3]);
        let pace0 = s.pace(0);
        let Next::Part(a) = s.next(0) else { panic!() };
        assert_eq!(rates(&s, 3), [Some(900), Some(450), Some(450)]);
        let Next::Part(b) = s.next(1) else { panic!() };
        assert_eq!(rates(&s, 3), [Some(450), Some(450), Some(300)]);
        let Next::Part(c) = s.next(2) else { panic!() };
        assert_eq!(rates(&s, 3), [Some(300); 3]);
        assert_eq!(pace0.get(), Some(300), "a handle follows the share");
        // Between finishing a part and taking the next, a host keeps its share.
        s.complete(&a, 0, 1.0);
        assert_eq!(rates(&s, 3), [Some(300); 3]);
        let Next::Part(d) = s.next(0) else { panic!() };
        // A host that drops out leaves its share to the others.
        s.host_failed(2, &[c]);
        assert_eq!(rates(&s, 3)[..2], [Some(450), Some(450)]);
        // So does one that has nothing to do (parts in flight elsewhere may come back).
        s.complete(&b, 1, 1.0);
        let mut rest = vec![d];
        while let Next::Part(p) = s.next(0) {
            rest.push(p);
        }
        assert_eq!(s.next(1), Next::Wait);
        assert_eq!(rates(&s, 3)[..2], [Some(900), Some(450)]);
        for p in &rest {
            s.complete(p, 0, 1.0);
        }
        assert_eq!(s.next(0), Next::Finished);
        assert_eq!(rates(&s, 3)[..2], [Some(900), Some(900)]);
    }

    #[test]
    fn each_host_gets_the_smaller_of_its_limit_and_its_share() {
        let s = Scheduler::new(
            &plan(4, Strategy::Adaptive),
            2,
            &ALL[..2],
            &Default::default(),
        );
        s.limit(Some(600), Some(1000));
        let Next::Part(_) = s.next(0) else { panic!() };
        assert_eq!(rates(&s, 2), [Some(600), Some(500)]);
        let Next::Part(_) = s.next(1) else { panic!() };
        assert_eq!(rates(&s, 2), [Some(500), Some(500)]);
        s.limit(Some(600), None);
        assert_eq!(rates(&s, 2), [Some(600), Some(600)]);
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
