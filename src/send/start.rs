//! The transfer: after the pre-flight (`preflight`), the plan (or the journal's
//! plan, when resuming), the scheduler and the assembly on the server are set up, the
//! peers are let in (`peers`), and this machine uploads its own parts until none is
//! left for it.

use anyhow::Result;
use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::hashes::Hashes;
use super::health::Health;
use super::hosts;
use super::journal::Journal;
use super::local::LocalHost;
use super::lock::Ids;
use super::peers::{Go, HostEnd, Signals};
use super::plan::{Plan, SmallFiles, Strategy};
use super::preflight;
use super::schedule::Scheduler;
use super::source::{Places, Source};
use super::target::Target;
use crate::config::AssemblyKind;
use crate::error::{with_code, Code};
use crate::events;
use crate::progress::{self, Mode, Progress};
use crate::server::assembly::{Assembly, Early, Layout};

/// How the pre-flight and this machine's part of the transfer ended.
pub enum Lead {
    /// The transfer ran; the end is left to do.
    Run(Box<Run>),
    /// The destination already holds this very file (its MD5).
    AlreadyThere(String),
}

/// What the transfer left for the end.
pub struct Run {
    pub local: Option<HostEnd>,
    pub plan: Plan,
    pub sched: Arc<Scheduler>,
    pub progress: Arc<Progress>,
    pub hasher: std::thread::JoinHandle<Result<Vec<String>>>,
    /// The pass over the source, for what it computed besides the MD5s.
    pub hashes: Arc<Hashes>,
    /// What this run sends: the target's files without those already on the server.
    pub source: Arc<Source>,
    /// The target's files the server already has (by index), with their MD5 and how
    /// the server's copy was compared.
    pub skipped: Vec<(usize, String)>,
    /// How the parts become one file on the server; holds this run's lock there
    /// until the end of the run.
    pub assembly: Box<dyn Assembly>,
    /// Keeps the journal's list of parts verified on the server; ends after the
    /// assembly's last word.
    pub journal: std::thread::JoinHandle<()>,
    /// The files already announced as published.
    pub published: Arc<Published>,
}

/// Pre-flight of the merge and this machine's login, the plan, and this machine's
/// own uploads. Returns when this machine has nothing more to send.
pub fn lead(
    t: &Target,
    ids: &Ids,
    signals: &Signals,
    ready: mpsc::Receiver<(usize, bool)>,
) -> Result<Lead> {
    let (mut assembly, mut local, skipped) = match preflight::log_in(t, ids, signals)? {
        preflight::LoggedIn::Ready(assembly, local, skipped) => (assembly, *local, skipped),
        preflight::LoggedIn::AlreadyThere(md5) => return Ok(Lead::AlreadyThere(md5)),
    };
    let source = if skipped.is_empty() {
        t.source.clone()
    } else {
        let skip: Vec<usize> = skipped.iter().map(|s| s.0).collect();
        Arc::new(t.source.skipping(&skip))
    };
    let live = live_hosts(t, assembly.as_ref(), ready);
    let id = ids.upload.as_str();
    // How small the last parts may be: how near the server is, seen from here.
    let smallest = super::plan::smallest_part(local.round_trip());
    let (plan, done, journal) =
        plan_and_resume(t, &source, id, assembly.as_mut(), live.len(), smallest)?;
    let progress = start_progress(t, &source, id, &plan, &done);
    let sched = Arc::new(Scheduler::new(
        &plan,
        t.settings.peers.len() + 1,
        &live,
        &not_sent(&source, &plan, &done),
    ));
    sched.limit(t.settings.server.bwlimit, t.settings.bwlimit_total);
    let (verified_tx, verified_rx) = mpsc::channel();
    let (published_tx, published_rx) = mpsc::channel();
    let (hashes, hasher) = Hashes::spawn_with(source.clone(), plan.parts.clone(), t.sha256);
    let layout = Layout {
        parts: plan.parts.clone(),
        source: source.clone(),
        verified: verified_tx,
        hashes: hashes.clone(),
        early: (source.is_release() && !t.atomic).then_some(Early {
            overwrite: t.overwrite,
        }),
        published: published_tx,
    };
    let published = Published::start(
        t.mode == Mode::Json,
        published_rx,
        source.clone(),
        hashes.clone(),
    );
    let merged = assembly
        .start(layout)
        .map_err(|e| with_code(e, Code::Transfer))?;
    let journal = std::thread::spawn(move || keep_verified(journal, verified_rx));
    let mut resumed: Vec<usize> = done.iter().copied().collect();
    resumed.sort_unstable();
    for index in resumed {
        let _ = merged.send(index);
    }
    let places = Arc::new(match t.settings.assembly {
        AssemblyKind::Direct => Places::direct(&source, &plan.parts),
        AssemblyKind::Merge => Places::parts(),
    });
    let shared = Go {
        sched: sched.clone(),
        progress: progress.clone(),
        merged,
        hashes: hashes.clone(),
        staging_need: 2 * plan.parts.iter().map(|p| p.len).max().unwrap_or(0),
        health: Arc::new(Health::new(t.retry_for)),
        stall: t.settings.io_timeout,
        source: source.clone(),
        places,
    };
    signals.go.set(Some(shared.clone()));
    local.pace_with(sched.pace(0));
    let mut me = LocalHost::start(local, source.clone(), hashes.clone(), shared.places.clone());
    let job = shared.job(0);
    let result = hosts::ended(&job, "local", hosts::drive(&mut me, &job));
    Ok(Lead::Run(Box::new(Run {
        plan,
        local: Some(HostEnd {
            name: "local".into(),
            result,
            left_out: false,
        }),
        sched,
        progress,
        hasher,
        hashes,
        assembly,
        journal,
        source,
        skipped,
        published,
    })))
}

/// The files of a release published before the end of the send (see
/// [`Layout::published`]), each announced with its `file_done` event (`--json`) as
/// soon as it is in place, so a script that follows the events can take it at once.
pub struct Published {
    json: bool,
    /// The files announced, and whether the end has come (then the rest are
    /// announced with the send's report).
    state: Mutex<(HashSet<usize>, bool)>,
}

impl Published {
    /// Announces each file told on `rx` (by index) until the assembly, which holds
    /// the sender, is gone.
    fn start(
        json: bool,
        rx: mpsc::Receiver<usize>,
        source: Arc<Source>,
        hashes: Arc<Hashes>,
    ) -> Arc<Published> {
        let published = Arc::new(Published {
            json,
            state: Mutex::new((HashSet::new(), false)),
        });
        let announcer = published.clone();
        std::thread::spawn(move || {
            for k in rx {
                announcer.announce(k, &source, &hashes);
            }
        });
        published
    }

    fn announce(&self, k: usize, source: &Source, hashes: &Hashes) {
        let Ok(md5) = hashes.file(k) else { return };
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.1 || !s.0.insert(k) {
            return;
        }
        if self.json {
            let f = &source.files[k];
            progress::emit(&events::Event::FileDone {
                path: f.dest.clone(),
                source: f.path.display().to_string(),
                bytes: f.size(),
                md5,
                already_there: false,
            });
        }
    }

    /// Stops announcing; the files announced so far.
    pub fn close(&self) -> HashSet<usize> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 = true;
        s.0.clone()
    }
}

/// The parts not to send: those on the server from an earlier run (`done`) and
/// those of the files the server has already.
fn not_sent(source: &Source, plan: &Plan, done: &HashSet<usize>) -> HashSet<usize> {
    plan.parts
        .iter()
        .filter(|p| source.part_skipped(p))
        .map(|p| p.index)
        .chain(done.iter().copied())
        .collect()
}

/// Keeps the journal's list of parts verified on the server (`verified`: each
/// part's index and whether it passed) until the sender is gone. Saved at most once
/// a second, and at the end: a save writes the whole journal and syncs it to disk,
/// and once per part made a release of 10,000 small files spend minutes of CPU
/// there. A resume after a crash checks again what the last second verified.
fn keep_verified(mut journal: Journal, verified: mpsc::Receiver<(usize, bool)>) {
    let every = std::time::Duration::from_secs(1);
    let mut saved = std::time::Instant::now();
    let mut dirty = false;
    loop {
        match verified.recv_timeout(every) {
            Ok((index, ok)) => {
                if ok {
                    journal.verified.insert(index);
                } else {
                    journal.verified.remove(&index);
                }
                dirty = true;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if dirty && saved.elapsed() >= every {
            let _ = journal.save();
            (saved, dirty) = (std::time::Instant::now(), false);
        }
    }
    if dirty {
        let _ = journal.save();
    }
}

/// The hosts the plan is for: this machine and the peers (with `equal`, those whose
/// pre-flight worked, waited for); this machine alone where the server makes writes
/// into one file take turns.
fn live_hosts(
    t: &Target,
    assembly: &dyn Assembly,
    ready: mpsc::Receiver<(usize, bool)>,
) -> Vec<usize> {
    let peers = if assembly.parallel() {
        t.settings.peers.len()
    } else {
        progress::warn(
            "the server makes every upload into one file wait for the others (vsftpd: lock_upload_files=YES), \
             so the peers would take turns: sending from this machine only. \
             Set lock_upload_files=NO there, or add a [merge] login, to use the peers",
        );
        0
    };
    match t.strategy {
        Strategy::Adaptive => (0..=peers).collect(),
        Strategy::Equal if peers == 0 => vec![0],
        Strategy::Equal => {
            let mut up: Vec<usize> = ready.iter().filter(|r| r.1).map(|r| r.0).collect();
            up.sort_unstable();
            std::iter::once(0).chain(up).collect()
        }
    }
}

/// The plan (or the journal's, when resuming), the parts already on the server, the
/// room there checked, and the journal saved for this run.
fn plan_and_resume(
    t: &Target,
    source: &Source,
    id: &str,
    assembly: &mut dyn Assembly,
    hosts: usize,
    smallest: u64,
) -> Result<(Plan, HashSet<usize>, Journal)> {
    let (plan, verified) = Journal::load(id)
        .and_then(|j| Some((j.plan(source)?, j.verified)))
        // Parts of small files packed together are cut apart by the append-merge
        // only: an earlier run's plan with them does not do for direct writes.
        .filter(|(plan, _)| {
            t.small_files() == SmallFiles::Together
                || plan.parts.iter().all(|p| source.files_in(p).len() == 1)
        })
        .unwrap_or_else(|| (t.plan(hosts, smallest), Default::default()));
    let mut done = assembly
        .resumable(&plan, source, &verified)
        .map_err(|e| with_code(e, Code::Transfer))?;
    done.retain(|&i| !source.part_skipped(&plan.parts[i]));
    let there = plan
        .parts
        .iter()
        .filter(|p| done.contains(&p.index))
        .map(|p| p.len)
        .sum();
    preflight::check_server_space(
        t,
        assembly,
        source.size - source.skipped_bytes(&plan.parts),
        there,
    )?;
    let mut journal = Journal::new(id, source, &t.settings.path, &plan);
    journal.verified = verified.into_iter().filter(|i| done.contains(i)).collect();
    journal.save().map_err(|e| with_code(e, Code::Transfer))?;
    Ok((plan, done, journal))
}

/// The progress display, with its `start` event (and, for a release, each part's
/// file); says when parts are resumed.
fn start_progress(
    t: &Target,
    source: &Source,
    id: &str,
    plan: &Plan,
    done: &HashSet<usize>,
) -> Arc<Progress> {
    let skipped = source.skipped_bytes(&plan.parts);
    let resumed_bytes: u64 = plan
        .parts
        .iter()
        .filter(|p| done.contains(&p.index))
        .map(|p| p.len)
        .sum();
    if !done.is_empty() && t.mode != Mode::Json {
        progress::note(&format!(
            "resuming: {} of {} parts ({}) are already on the server",
            done.len(),
            plan.parts.len(),
            crate::size::human(resumed_bytes)
        ));
    }
    let names = t.host_names();
    let start = events::Start {
        file: source
            .files
            .first()
            .map(|f| f.path.display().to_string())
            .unwrap_or_default(),
        dest: t.dest.clone(),
        bytes: source.size - skipped,
        parts: plan.parts.len(),
        hosts: names.clone(),
        upload_id: id.to_string(),
        resumed_parts: done.len(),
        resumed_bytes,
        strategy: plan.strategy,
    };
    let progress = Progress::start(t.mode, source.size - resumed_bytes - skipped, &names, start);
    if source.is_release() {
        progress.name_parts(
            plan.parts
                .iter()
                .map(|p| match source.files_in(p) {
                    r if r.len() > 1 => {
                        format!("{} and {} more", source.files[r.start].dest, r.len() - 1)
                    }
                    r => source.files[r.start].dest.clone(),
                })
                .collect(),
        );
    }
    progress
}
