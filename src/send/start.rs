//! The start of a send: pre-flight on every host at once, the plan, and the transfer.
//! Peers log in while the merge login prepares the server and this machine logs into
//! it; with `adaptive` the transfer starts without waiting for the peers, and each
//! joins when it is ready. A peer that fails is reported and left out. The server
//! spec reaches peers as soon as it is known (for `sftp://` that is once this machine
//! has verified the server's host key).

use anyhow::{anyhow, Context, Result};
use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};

use super::hashes::{md5_of, md5_range, Hashes};
use super::health::Health;
use super::hosts;
use super::journal::Journal;
use super::local::LocalHost;
use super::lock::Ids;
use super::plan::{Plan, Strategy};
use super::schedule::Scheduler;
use super::target::Target;
use crate::error::{with_code, Code};
use crate::events::{self, Event};
use crate::progress::{self, Mode, Progress};
use crate::remote::peer::{self, PeerLink};
use crate::remote::protocol::ServerSpec;
use crate::server::assembly::{Assembly, ServerPart};
use crate::server::merge::{self, Prepared};
use crate::transport::Server;

/// A value set once by one thread and waited for by others.
pub struct Latch<T> {
    value: Mutex<Option<T>>,
    set: Condvar,
}

impl<T: Clone> Latch<T> {
    pub fn new() -> Latch<T> {
        Latch {
            value: Mutex::new(None),
            set: Condvar::new(),
        }
    }

    /// Sets the value unless it is set already.
    pub fn set(&self, v: T) {
        let mut g = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(v);
            self.set.notify_all();
        }
    }

    pub fn wait(&self) -> T {
        let mut g = self.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = g.as_ref() {
                return v.clone();
            }
            g = self.set.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What the peers wait for: the server (to log into) and the transfer (to join).
/// `None` in either means the send stopped before that point.
pub struct Signals {
    pub hello: Latch<Option<ServerSpec>>,
    pub go: Latch<Option<Go>>,
}

/// What a peer needs once the transfer starts.
#[derive(Clone)]
pub struct Go {
    sched: Arc<Scheduler>,
    progress: Arc<Progress>,
    merged: Sender<usize>,
    hashes: Arc<Hashes>,
    /// Staging space a peer needs: two of the plan's largest parts (one uploading,
    /// the next staged).
    staging_need: u64,
    /// Whether a failing host fails alone or the server is away.
    health: Arc<Health>,
    /// `--stall-timeout`.
    stall: std::time::Duration,
}

impl Go {
    /// What host `host`'s loop needs.
    fn job(&self, host: usize) -> hosts::Job<'_> {
        hosts::Job {
            host,
            sched: &self.sched,
            progress: &self.progress,
            merged: &self.merged,
            hashes: &self.hashes,
            health: &self.health,
            stall: self.stall,
        }
    }
}

/// How a host's part of the send ended.
pub struct HostEnd {
    pub name: String,
    pub result: Result<()>,
    /// It never took part (failed pre-flight), as opposed to dropping out.
    pub left_out: bool,
}

/// How the pre-flight and this machine's part of the transfer ended.
pub enum Lead {
    /// The transfer ran; the end is left to do.
    Run(Box<Run>),
    /// The destination already holds this very file.
    AlreadyThere,
}

/// What the transfer left for the end.
pub struct Run {
    pub local: Option<HostEnd>,
    pub plan: Plan,
    pub sched: Arc<Scheduler>,
    pub progress: Arc<Progress>,
    pub hasher: std::thread::JoinHandle<Result<String>>,
    /// How the parts become one file on the server; holds this run's lock there
    /// until the end of the run.
    pub assembly: Box<dyn Assembly>,
}

/// Pre-flight of the merge and this machine's login, the plan, and this machine's
/// own uploads. Returns when this machine has nothing more to send.
pub fn lead(
    t: &Target,
    ids: &Ids,
    signals: &Signals,
    ready: mpsc::Receiver<(usize, bool)>,
) -> Result<Lead> {
    let Some((mut assembly, local)) = log_in(t, ids, signals)? else {
        return Ok(Lead::AlreadyThere);
    };
    // With `equal` the plan needs to know who is there: wait for every peer's pre-flight.
    let live: Vec<usize> = match t.strategy {
        Strategy::Adaptive => (0..=t.settings.peers.len()).collect(),
        Strategy::Equal => {
            let mut up: Vec<usize> = ready.iter().filter(|r| r.1).map(|r| r.0).collect();
            up.sort_unstable();
            std::iter::once(0).chain(up).collect()
        }
    };
    // The plan (or the journal's plan, when resuming), then the transfer, with the
    // assembly following on the server.
    let id = ids.upload.as_str();
    let plan = Journal::load(id)
        .and_then(|j| j.plan(t.stamp.size))
        .unwrap_or_else(|| Plan::new(t.stamp.size, live.len(), t.strategy, t.part_size));
    check_server_space(t, assembly.as_ref())?;
    Journal::new(id, &t.source, &t.dest, &t.settings.path, &plan)
        .save()
        .map_err(|e| with_code(e, Code::Transfer))?;
    let done = resumable(&plan, assembly.existing(), &t.source)
        .map_err(|e| with_code(e, Code::Transfer))?;
    let progress = start_progress(t, id, &plan, &done);
    let sched = Arc::new(Scheduler::new(
        &plan,
        t.settings.peers.len() + 1,
        &live,
        &done,
    ));
    sched.limit(t.settings.server.bwlimit, t.settings.bwlimit_total);
    let merged = assembly
        .start(plan.parts.len(), t.stamp.size)
        .map_err(|e| with_code(e, Code::Transfer))?;
    let mut resumed: Vec<usize> = done.iter().copied().collect();
    resumed.sort_unstable();
    for index in resumed {
        let _ = merged.send(index);
    }
    let (hashes, hasher) = Hashes::spawn(t.source.clone(), plan.parts.clone());
    let shared = Go {
        sched: sched.clone(),
        progress: progress.clone(),
        merged,
        hashes: hashes.clone(),
        staging_need: 2 * plan.parts.iter().map(|p| p.len).max().unwrap_or(0),
        health: Arc::new(Health::new(t.retry_for)),
        stall: t.settings.io_timeout,
    };
    signals.go.set(Some(shared.clone()));
    let mut local = local;
    local.pace_with(sched.pace(0));
    let mut me = LocalHost::start(local, t.source.clone(), hashes);
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
        assembly,
    })))
}

/// The merge login's pre-flight and this machine's server login, side by side; hands
/// the server to the peers. `None`: the destination already holds this very file.
fn log_in(t: &Target, ids: &Ids, signals: &Signals) -> Result<Option<(Box<dyn Assembly>, Server)>> {
    let settings = &t.settings;
    let (prepared, local) = std::thread::scope(|s| {
        let m = s.spawn(|| prepare(t, ids));
        let l = s.spawn(|| {
            let tag = format!("local.{}", ids.run);
            Server::connect(
                &settings.server,
                &ids.upload,
                &tag,
                crate::transport::Access::of(settings),
            )
        });
        let m = m.join().map_err(|_| anyhow!("merge pre-flight panicked"))?;
        let l = l
            .join()
            .map_err(|_| anyhow!("server pre-flight panicked"))?;
        Ok::<_, anyhow::Error>((m?, l))
    })
    .map_err(|e| with_code(e, Code::Connect))?;
    let assembly: Box<dyn Assembly> = match prepared {
        Prepared::Ready(r) => Box::new(r),
        Prepared::Exists(session, their_md5) => {
            merge::remove_if_empty(&session, &settings.merge.dir, &ids.upload);
            // Not an error if it is this very file.
            already_there(t, &their_md5)?;
            return Ok(None);
        }
    };
    let (local, host_key) = local
        .context("uploading from this machine")
        .map_err(|e| with_code(e, Code::Connect))?;
    let mut server = settings.server.clone();
    server.host_key = host_key;
    signals.hello.set(Some(server));
    Ok(Some((assembly, local)))
}

/// The progress display, with its `start` event; says when parts are resumed.
fn start_progress(t: &Target, id: &str, plan: &Plan, done: &HashSet<usize>) -> Arc<Progress> {
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
        file: t.source.display().to_string(),
        dest: t.dest.clone(),
        bytes: t.stamp.size,
        parts: plan.parts.len(),
        hosts: names.clone(),
        upload_id: id.to_string(),
        resumed_parts: done.len(),
        resumed_bytes,
        strategy: plan.strategy,
    };
    Progress::start(t.mode, t.stamp.size - resumed_bytes, &names, start)
}

/// The merge pre-flight; a lock on the server left by a run of this machine that is
/// dead (its connection still lingers there) is taken over, once.
fn prepare(t: &Target, ids: &Ids) -> Result<Prepared> {
    let (settings, dest, overwrite) = (&t.settings, t.dest.as_str(), t.overwrite);
    match merge::prepare(settings, dest, ids, overwrite) {
        Err(e) => match e.downcast_ref::<merge::Busy>() {
            Some(busy) if busy.0.as_ref().is_some_and(|o| o.is_dead_here()) => {
                merge::take_over(settings, &ids.upload, busy)
                    .context("taking over the lock of a dead run on the server")?;
                merge::prepare(settings, dest, ids, overwrite)
            }
            _ => Err(e),
        },
        ok => ok,
    }
}

/// The assembly needs room on the server (the merge: the remaining parts and the
/// merged file side by side): fail now, not at the end, when they cannot fit.
fn check_server_space(t: &Target, assembly: &dyn Assembly) -> Result<()> {
    let settings = &t.settings;
    let Some(free) = assembly.free() else {
        progress::warn(&format!(
            "could not read the free space in {} on the server (df); not checked",
            settings.merge.dir
        ));
        return Ok(());
    };
    let there: u64 = assembly.existing().iter().map(|p| p.size).sum();
    let need = assembly.space_needed(t.stamp.size, there);
    if free < need {
        return Err(with_code(
            anyhow!(
                "{}: {} has {} free, this send needs {} there (the parts and the merged file side by side); \
                 free space on the server or choose another directory",
                settings.merge.login.describe(),
                settings.merge.dir,
                crate::size::human(free),
                crate::size::human(need)
            ),
            Code::Transfer,
        ));
    }
    Ok(())
}

/// Parts an earlier run left complete on the server: same length as planned and the
/// same MD5 as that range of the source (hashed here, so the server is trusted only
/// for what it can prove).
fn resumable(plan: &Plan, existing: &[ServerPart], source: &Path) -> Result<HashSet<usize>> {
    let mut done = HashSet::new();
    for sp in existing {
        let Some(part) = plan.parts.get(sp.index) else {
            continue;
        };
        if part.len != sp.size {
            continue;
        }
        if md5_range(source, part.offset, part.len)? == sp.md5 {
            done.insert(part.index);
        }
    }
    Ok(done)
}

/// The destination already exists: fine if it is this very file (nothing to send).
fn already_there(t: &Target, their_md5: &str) -> Result<()> {
    let (source, dest, dir) = (&t.source, &t.dest, &t.settings.merge.dir);
    let ours = md5_of(&mut File::open(source)?)
        .with_context(|| format!("hashing {}", source.display()))?;
    if ours == their_md5 {
        if t.mode == Mode::Json {
            progress::emit(&Event::Done(events::Done::already_there(&ours, dest)));
        }
        eprintln!(
            "relayup: {dir}/{dest} is already on the server with the same md5 {ours}; nothing to send"
        );
        return Ok(());
    }
    Err(anyhow!(
        "{dir}/{dest} already exists on the server with different content (md5 {their_md5}); pass --overwrite to replace it, or --dest to choose another name"
    ))
    .context(Code::Usage)
}

/// One peer, from login to its last part. `host` is its number (peers from 1).
pub fn peer_thread(
    host: usize,
    t: &Target,
    ids: &Ids,
    signals: &Signals,
    ready: mpsc::Sender<(usize, bool)>,
) -> HostEnd {
    let p = &t.settings.peers[host - 1];
    let name = p.login.name.clone();
    let opened = open_peer(p, t, ids, signals);
    let _ = ready.send((host, opened.is_ok()));
    drop(ready);
    let Some(go) = signals.go.wait() else {
        if let Ok(link) = opened {
            link.close();
        }
        return HostEnd {
            name,
            result: Ok(()),
            left_out: true,
        };
    };
    let mut link = match opened.and_then(|link| room_to_stage(link, go.staging_need)) {
        Ok(link) => link,
        Err(e) => {
            go.sched.host_failed(host, &[]);
            go.progress.host_state(host, "left out");
            if !crate::interrupt::interrupted() {
                go.progress.warn(&format!(
                    "peer {name} left out: {}",
                    format!("{e:#}").replace('\n', " ")
                ));
            }
            return HostEnd {
                name,
                result: Err(e),
                left_out: true,
            };
        }
    };
    let job = go.job(host);
    let prefix = crate::server::names::staged_prefix(&ids.upload, &ids.run);
    let mut peer = peer::PeerHost {
        link: &mut link,
        source: &t.source,
        stage_prefix: &prefix,
    };
    let result = hosts::ended(&job, &name, hosts::drive(&mut peer, &job));
    link.close();
    HostEnd {
        name,
        result,
        left_out: false,
    }
}

/// Logs into a peer, starts its relay and, once the server is known, hands it over.
/// A wrong host key stops the whole send: it may be an attack.
fn open_peer(
    p: &crate::config::Peer,
    t: &Target,
    ids: &Ids,
    signals: &Signals,
) -> Result<PeerLink> {
    let settings = &t.settings;
    let opened =
        PeerLink::connect(p, &settings.known_hosts, settings.io_timeout).and_then(|mut link| {
            let Some(server) = signals.hello.wait() else {
                link.close();
                return Err(anyhow!("the send stopped before this peer started"));
            };
            link.hello(&ids.upload, &ids.run, server)?;
            Ok(link)
        });
    if let Err(e) = &opened {
        if e.downcast_ref::<crate::remote::ssh::HostKeyProblem>()
            .is_some()
        {
            crate::interrupt::stop(format!("{e:#}"));
        }
    }
    opened
}

/// A peer whose staging dir cannot hold two of the send's largest parts is left out.
fn room_to_stage(link: PeerLink, need: u64) -> Result<PeerLink> {
    match link.staging_free {
        Some(free) if free < need => {
            let e = anyhow!(
                "staging dir {} has {} free, this send stages up to {} there at once (two parts); \
                 free space there or point the peer's `staging` elsewhere",
                link.staging,
                crate::size::human(free),
                crate::size::human(need)
            );
            link.close();
            Err(e)
        }
        _ => Ok(link),
    }
}
