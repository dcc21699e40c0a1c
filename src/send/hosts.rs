//! One loop for every host of a send. This machine and each peer are two kinds of
//! [`Host`]: this machine uploads parts itself (on a thread of its own), a peer
//! stages each part over SFTP and has its relay upload it. Both take parts from the
//! scheduler, report progress, completion and failure the same way, and fail the same
//! way: a server outage is waited out (see [`crate::send::health`]), a part that fails too
//! often on one host, a host that stalls or says something impossible drops that host,
//! and its parts go back to the others.

use anyhow::{bail, Result};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::progress::Progress;
use crate::send::hashes::Hashes;
use crate::send::health::{Health, Verdict};
use crate::send::plan::Part;
use crate::send::schedule::{Next, Scheduler};

/// What a host says about the parts it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// `bytes` of part `index` are on the server so far (a claim: clamped to the part).
    Progress { index: usize, bytes: u64 },
    /// Part `index` is complete on the server; `checksum` is the XXH3 of what was sent.
    Done {
        index: usize,
        bytes: u64,
        checksum: String,
    },
    /// Part `index` failed; `server`: the upload to the server failed (as opposed to
    /// a problem on the host), which may be the server's fault.
    Failed {
        index: usize,
        message: String,
        server: bool,
    },
}

/// A machine that uploads parts to the server.
pub trait Host {
    /// Its name in messages (`local`, or the peer's name).
    fn name(&self) -> &str;
    /// Whether a part must first be copied to the host (staged), so the next part is
    /// taken while the current one uploads.
    fn stages(&self) -> bool;
    /// How many times a part may fail on this host (not counting server outages)
    /// before the host is dropped.
    fn max_part_failures(&self) -> usize;
    /// Hands over a part to upload. Returns the checksum the host must report for it,
    /// if the host's bytes are to be checked against it.
    fn begin(&mut self, part: &Part, hashes: &Hashes) -> Result<Option<String>>;
    /// Waits for the next report about the parts handed over.
    fn next_report(&mut self) -> Result<Report>;
    /// Called every round of the loop with this host's current rate limit.
    fn tick(&mut self, limit: Option<u64>) -> Result<()>;
    /// The host is done with part `index` (uploaded, or failed).
    fn forget(&mut self, _index: usize) {}
}

/// What every host's loop shares with the rest of the send.
pub struct Job<'a> {
    /// The host's number in the scheduler and the progress display (0 = this machine).
    pub host: usize,
    pub sched: &'a Scheduler,
    pub progress: &'a Progress,
    /// Receives the index of every part that is complete on the server.
    pub merged: &'a std::sync::mpsc::Sender<usize>,
    /// Every part's checksum, from one pass over the source.
    pub hashes: &'a Hashes,
    /// Whether a failing host fails alone or the server is away.
    pub health: &'a Health,
    /// A host whose transfer moves no byte for this long is stalled.
    pub stall: Duration,
}

struct InFlight {
    part: Part,
    /// When the part was handed over.
    sent: Instant,
    /// The checksum the host must report, if checked.
    expected: Option<String>,
    bytes: u64,
}

/// Upload statistics of one host, for when to take its next part.
#[derive(Default)]
struct Pace {
    stage_secs: f64,
    uploaded: u64,
    upload_secs: f64,
}

impl Pace {
    /// Whether a staging host should take its next part now, with `left` bytes of the
    /// current one to go: early enough to stage and verify it, no earlier (a slow host
    /// that takes a part too soon holds it while faster hosts run out of work). Before
    /// the rate is known (the first half second), at once: the start is when uplinks
    /// would otherwise wait.
    fn time_for_next(&self, left: u64) -> bool {
        if self.upload_secs <= 0.5 {
            return true;
        }
        let rate = self.uploaded as f64 / self.upload_secs;
        rate == 0.0 || left as f64 / rate <= self.stage_secs * 2.0 + 0.3
    }
}

/// Runs one host until no part is left for it. On error, returns the parts it held
/// so they can go to other hosts.
pub fn drive(
    host: &mut dyn Host,
    job: &Job<'_>,
) -> std::result::Result<(), (anyhow::Error, Vec<Part>)> {
    let mut d = Driver {
        host,
        job,
        inflight: VecDeque::new(),
        failures: HashMap::new(),
        pace: Pace::default(),
        last_report: Instant::now(),
        last_done: Instant::now(),
        last_move: Instant::now(),
        failed: None,
        pause_until: Instant::now(),
    };
    let result = d.run();
    result.map_err(|e| (e, d.inflight.iter().map(|f| f.part).collect()))
}

/// What happens next in a host's loop.
enum Step {
    /// Go round again.
    Again,
    /// Wait for the host's next report.
    Listen,
    /// No part is left for this host.
    Finished,
}

/// One host's loop and what it keeps track of.
struct Driver<'h, 'j> {
    host: &'h mut dyn Host,
    job: &'j Job<'j>,
    /// The parts handed over and not yet done, oldest first.
    inflight: VecDeque<InFlight>,
    /// Failures per part on this host (not counting server outages).
    failures: HashMap<usize, usize>,
    pace: Pace,
    last_report: Instant,
    /// A host uploads one part at a time: a part's upload starts when it was handed
    /// over or when the one before it finished, whichever is later.
    last_done: Instant,
    /// When a byte last moved: a host that keeps reporting without moving a byte is
    /// stalled all the same.
    last_move: Instant,
    /// When this host's last upload to the server failed (no success since), and until
    /// when it pauses because the server seems away.
    failed: Option<Instant>,
    pause_until: Instant,
}

impl Driver<'_, '_> {
    fn run(&mut self) -> Result<()> {
        loop {
            self.host.tick(self.job.sched.pace(self.job.host).get())?;
            if self.inflight.is_empty() {
                self.last_move = Instant::now();
            }
            match self.take()? {
                Step::Again => continue,
                Step::Finished => return Ok(()),
                Step::Listen => {}
            }
            let report = self.host.next_report()?;
            self.on_report(report)?;
        }
    }

    /// Takes the next part if this host is ready for one (or pauses, or waits for the
    /// queue).
    fn take(&mut self) -> Result<Step> {
        let want_next = match self.inflight.front() {
            None => true,
            Some(f) if self.inflight.len() == 1 && self.host.stages() => {
                self.pace.time_for_next(f.part.len - f.bytes)
            }
            Some(_) => false,
        };
        if !want_next {
            return Ok(Step::Listen);
        }
        let job = self.job;
        if Instant::now() < self.pause_until {
            if !self.inflight.is_empty() {
                return Ok(Step::Listen);
            }
            job.health.pause(
                self.pause_until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200)),
            );
            if job.health.is_up_since(self.failed) {
                self.pause_until = Instant::now();
            }
            return Ok(Step::Again);
        }
        match job.sched.next(job.host) {
            Next::Part(part) => {
                self.begin(part)?;
                Ok(Step::Again)
            }
            Next::Finished if self.inflight.is_empty() => {
                job.progress.host_state(job.host, "done");
                Ok(Step::Finished)
            }
            Next::Wait if self.inflight.is_empty() => {
                job.progress.host_state(job.host, "idle");
                job.sched.wait(Duration::from_millis(200));
                Ok(Step::Again)
            }
            _ => Ok(Step::Listen),
        }
    }

    /// Hands part `part` to the host (a staging host copies it there first).
    fn begin(&mut self, part: Part) -> Result<()> {
        let job = self.job;
        let what = if self.host.stages() {
            "staging"
        } else {
            "uploading"
        };
        job.progress.host_state(
            job.host,
            &format!("{what} {}", job.progress.part_label(part.index)),
        );
        let t = Instant::now();
        self.inflight.push_back(InFlight {
            part,
            sent: Instant::now(),
            expected: None,
            bytes: 0,
        });
        let expected = self.host.begin(&part, job.hashes)?;
        self.inflight.back_mut().expect("just pushed").expected = expected;
        if self.host.stages() {
            self.pace.stage_secs = t.elapsed().as_secs_f64();
        }
        self.last_move = Instant::now();
        job.progress.host_state(
            job.host,
            &format!("uploading part {}", self.inflight[0].part.index),
        );
        Ok(())
    }

    /// What the host said: progress, a part done, or a part failed.
    fn on_report(&mut self, report: Report) -> Result<()> {
        let now = Instant::now();
        let dt = now.duration_since(self.last_report).as_secs_f64();
        self.last_report = now;
        let index = match &report {
            Report::Progress { index, .. }
            | Report::Done { index, .. }
            | Report::Failed { index, .. } => *index,
        };
        let Some(pos) = self.inflight.iter().position(|f| f.part.index == index) else {
            bail!(
                "{} reported on part {index}, which it was not given",
                self.host.name()
            );
        };
        match self.checked(report, pos) {
            Report::Progress { bytes, .. } => self.on_progress(pos, bytes, dt, now),
            Report::Done {
                bytes, checksum, ..
            } => {
                self.on_done(pos, bytes, &checksum, dt, now);
                Ok(())
            }
            Report::Failed {
                message, server, ..
            } => self.on_failed(pos, message, server),
        }
    }

    /// A part uploaded other than it was given (a staged copy that changed after the
    /// relay checked it, a relay that lies) is a failure of that part on this host,
    /// sent again; a host that keeps doing it is dropped.
    fn checked(&self, report: Report, pos: usize) -> Report {
        let f = &self.inflight[pos];
        match report {
            Report::Done {
                index,
                bytes,
                checksum,
            } if bytes != f.part.len || f.expected.as_ref().is_some_and(|x| *x != checksum) => {
                Report::Failed {
                    index,
                    message: format!(
                        "uploaded as {bytes} bytes with checksum {checksum}, which is not what it was given"
                    ),
                    server: false,
                }
            }
            r => r,
        }
    }

    fn on_progress(&mut self, pos: usize, bytes: u64, dt: f64, now: Instant) -> Result<()> {
        let job = self.job;
        let f = &mut self.inflight[pos];
        // A host's count is a claim: never more than the part.
        let bytes = bytes.min(f.part.len);
        if bytes > f.bytes {
            self.last_move = now;
        } else if self.last_move.elapsed() > job.stall {
            bail!(
                "{}: no byte moved for {} s (--stall-timeout)",
                self.host.name(),
                job.stall.as_secs()
            );
        }
        self.pace.uploaded += bytes.saturating_sub(f.bytes);
        self.pace.upload_secs += dt;
        f.bytes = bytes;
        job.progress.part_progress(job.host, f.part.index, bytes);
        Ok(())
    }

    fn on_done(&mut self, pos: usize, bytes: u64, checksum: &str, dt: f64, now: Instant) {
        let job = self.job;
        let f = self.inflight.remove(pos).expect("position is valid");
        let index = f.part.index;
        self.host.forget(index);
        self.pace.uploaded += bytes.saturating_sub(f.bytes);
        self.pace.upload_secs += dt;
        self.last_move = now;
        self.failed = None;
        job.health.success(job.progress);
        let began = f.sent.max(self.last_done);
        self.last_done = now;
        job.sched
            .complete(&f.part, job.host, began.elapsed().as_secs_f64());
        job.progress.part_done(job.host, index, bytes, checksum);
        let _ = job.merged.send(index);
        if let Some(next) = self.inflight.front() {
            job.progress.host_state(
                job.host,
                &format!("uploading {}", job.progress.part_label(next.part.index)),
            );
        }
    }

    /// A part failed: a server outage is waited out, a failure of this host counts, and
    /// too many drop the host.
    fn on_failed(&mut self, pos: usize, message: String, server: bool) -> Result<()> {
        let job = self.job;
        let f = self.inflight.remove(pos).expect("position is valid");
        let index = f.part.index;
        self.host.forget(index);
        job.progress.part_failed(index);
        if server && !crate::interrupt::interrupted() {
            match job.health.failure(self.failed, job.progress) {
                Verdict::Retry(pause) => {
                    // The server may be away: keep this host, try again later.
                    self.failed = Some(Instant::now());
                    self.pause_until = Instant::now() + pause;
                    self.last_move = Instant::now() + pause;
                    job.progress.host_state(job.host, "waiting for the server");
                    job.sched.give_back(&[f.part]);
                    return Ok(());
                }
                Verdict::GiveUp(away) => {
                    self.inflight.push_back(f);
                    bail!(
                        "{message}; the server has been unreachable for {} s (--retry-for)",
                        away.as_secs()
                    );
                }
                Verdict::Alone => {}
            }
        }
        let n = self.failures.entry(index).or_default();
        *n += 1;
        if *n >= self.host.max_part_failures() {
            let n = *n;
            self.inflight.push_back(f);
            if self.host.max_part_failures() == 1 {
                bail!("{message}");
            }
            bail!("part {index} failed {n} times: {message}");
        }
        job.progress.warn(&format!(
            "{}: part {index}: {message}; sending it again",
            self.host.name()
        ));
        job.sched.give_back(&[f.part]);
        Ok(())
    }
}

/// How a host's loop ended, as the send reports it: a dropped host's parts go back to
/// the others at once (they may be waiting for them), and the drop is said once.
pub fn ended(
    job: &Job<'_>,
    name: &str,
    result: std::result::Result<(), (anyhow::Error, Vec<Part>)>,
) -> Result<()> {
    result.map_err(|(e, parts)| {
        for p in &parts {
            job.progress.part_failed(p.index);
        }
        job.sched.host_failed(job.host, &parts);
        job.progress.host_state(job.host, "dropped");
        if !crate::interrupt::interrupted() {
            let rest = if job.host == 0 {
                "its parts go to the peers"
            } else {
                "its parts go to the other hosts"
            };
            job.progress.warn(&format!("{name} dropped: {e:#}; {rest}"));
        }
        e
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::plan::{Plan, Strategy};
    use anyhow::anyhow;
    use std::collections::HashSet;
    use std::sync::mpsc;

    type Script = Box<dyn FnMut(&Part) -> Vec<Report>>;

    /// A host that plays back a script: for each part handed over, the reports the
    /// script gives for it.
    struct Fake {
        stages: bool,
        script: Script,
        queue: VecDeque<Report>,
        given: Vec<usize>,
        /// `begin N` and `report` in the order the loop called them.
        log: Vec<String>,
    }

    impl Host for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn stages(&self) -> bool {
            self.stages
        }
        fn max_part_failures(&self) -> usize {
            3
        }
        fn begin(&mut self, part: &Part, _: &Hashes) -> Result<Option<String>> {
            self.given.push(part.index);
            self.log.push(format!("begin {}", part.index));
            let reports = (self.script)(part);
            self.queue.extend(reports);
            Ok(Some(format!("sum{}", part.index)))
        }
        fn next_report(&mut self) -> Result<Report> {
            self.log.push("report".into());
            self.queue
                .pop_front()
                .ok_or_else(|| anyhow!("the fake has nothing more to say"))
        }
        fn tick(&mut self, _: Option<u64>) -> Result<()> {
            Ok(())
        }
    }

    /// Runs `fake` as the only host of a 4-part plan; returns its result, the parts
    /// reported merged and whether the scheduler finished.
    fn run(fake: &mut Fake) -> (bool, Vec<usize>, bool) {
        run_with(fake, Duration::from_secs(1))
    }

    fn run_with(fake: &mut Fake, retry_for: Duration) -> (bool, Vec<usize>, bool) {
        let plan = Plan::new(
            4 << 20,
            1,
            Strategy::Adaptive,
            Some(1 << 20),
            crate::send::plan::MIN_GUIDED_PART,
        );
        let sched = Scheduler::new(&plan, 1, &[0], &HashSet::new());
        let progress = Progress::quiet();
        let (tx, rx) = mpsc::channel();
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, vec![0u8; 4 << 20]).unwrap();
        let source = std::sync::Arc::new(crate::send::source::Source::single(&src, "src").unwrap());
        let (hashes, _h) = Hashes::spawn(source, plan.parts.clone());
        let health = Health::new(retry_for);
        let job = Job {
            host: 0,
            sched: &sched,
            progress: &progress,
            merged: &tx,
            hashes: &hashes,
            health: &health,
            stall: Duration::from_secs(30),
        };
        let ok = ended(&job, "fake", drive(fake, &job)).is_ok();
        drop(tx);
        (ok, rx.iter().collect(), sched.all_done())
    }

    fn done(p: &Part) -> Report {
        Report::Done {
            index: p.index,
            bytes: p.len,
            checksum: format!("sum{}", p.index),
        }
    }

    #[test]
    fn a_good_host_sends_every_part_in_order() {
        for stages in [false, true] {
            let mut fake = Fake {
                stages,
                script: Box::new(|p| {
                    vec![
                        Report::Progress {
                            index: p.index,
                            bytes: p.len / 2,
                        },
                        done(p),
                    ]
                }),
                queue: VecDeque::new(),
                given: Vec::new(),
                log: Vec::new(),
            };
            let (ok, merged, all) = run(&mut fake);
            assert!(ok && all);
            assert_eq!(merged, vec![0, 1, 2, 3]);
        }
    }

    #[test]
    fn a_part_that_fails_on_the_host_is_sent_again_and_a_third_failure_drops_it() {
        // (failures of part 1 before it goes through, whether the host survives)
        for (fails, survives) in [(2, true), (3, false)] {
            let mut failed = 0;
            let mut fake = Fake {
                stages: false,
                script: Box::new(move |p| {
                    if p.index == 1 && failed < fails {
                        failed += 1;
                        vec![Report::Failed {
                            index: 1,
                            message: "disk".into(),
                            server: false,
                        }]
                    } else {
                        vec![done(p)]
                    }
                }),
                queue: VecDeque::new(),
                given: Vec::new(),
                log: Vec::new(),
            };
            let (ok, merged, all) = run(&mut fake);
            assert_eq!(ok && all, survives, "{fails} failures");
            if !survives {
                assert_eq!(merged, vec![0]);
            }
        }
    }

    #[test]
    fn server_failures_are_waited_out_and_never_counted_against_the_host() {
        // Three server failures of one part would drop the host if they counted; as an
        // outage they are waited out, until --retry-for.
        for (fails, retry_for, survives) in [(3, 60, true), (1000, 1, false)] {
            let mut failed = 0;
            let mut fake = Fake {
                stages: false,
                script: Box::new(move |p| {
                    if p.index == 2 && failed < fails {
                        failed += 1;
                        vec![Report::Failed {
                            index: 2,
                            message: "connection refused".into(),
                            server: true,
                        }]
                    } else {
                        vec![done(p)]
                    }
                }),
                queue: VecDeque::new(),
                given: Vec::new(),
                log: Vec::new(),
            };
            let (ok, _, all) = run_with(&mut fake, Duration::from_secs(retry_for));
            assert_eq!(ok && all, survives, "{fails} server failures");
        }
    }

    #[test]
    fn a_lying_host_is_dropped_and_its_parts_go_back() {
        let mut fake = Fake {
            stages: true,
            script: Box::new(|p| {
                vec![Report::Done {
                    index: p.index,
                    bytes: p.len,
                    checksum: "not-the-sum".into(),
                }]
            }),
            queue: VecDeque::new(),
            given: Vec::new(),
            log: Vec::new(),
        };
        let (ok, merged, all) = run(&mut fake);
        assert!(!ok && !all);
        assert!(merged.is_empty());
    }

    #[test]
    fn a_report_on_a_part_never_given_drops_the_host() {
        let mut fake = Fake {
            stages: false,
            script: Box::new(|_| {
                vec![Report::Progress {
                    index: 99,
                    bytes: 1,
                }]
            }),
            queue: VecDeque::new(),
            given: Vec::new(),
            log: Vec::new(),
        };
        let (ok, _, _) = run(&mut fake);
        assert!(!ok);
    }

    #[test]
    fn counts_above_the_part_are_clamped() {
        let mut fake = Fake {
            stages: false,
            script: Box::new(|p| {
                vec![
                    Report::Progress {
                        index: p.index,
                        bytes: u64::MAX,
                    },
                    done(p),
                ]
            }),
            queue: VecDeque::new(),
            given: Vec::new(),
            log: Vec::new(),
        };
        let (ok, merged, _) = run(&mut fake);
        assert!(ok);
        assert_eq!(merged.len(), 4);
    }

    #[test]
    fn a_staging_host_takes_the_next_part_before_the_first_is_done() {
        for (stages, second) in [(true, "begin 1"), (false, "report")] {
            let mut fake = Fake {
                stages,
                script: Box::new(|p| vec![done(p)]),
                queue: VecDeque::new(),
                given: Vec::new(),
                log: Vec::new(),
            };
            run(&mut fake);
            // Before any rate is known a staging host stages the next part at once; a
            // host that does not stage takes one part at a time.
            assert_eq!(fake.log[..2], ["begin 0".to_string(), second.to_string()]);
        }
    }
}
