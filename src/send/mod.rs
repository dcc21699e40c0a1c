//! `relayup send`: settings → pre-flight → plan → parallel transfer with the merge
//! running alongside → verify → rename into place → report.

pub mod hashes;
pub mod health;
pub mod hosts;
pub mod journal;
pub mod local;
pub mod lock;
pub mod plan;
pub mod schedule;

use anyhow::{anyhow, bail, Context, Result};
use md5::{Digest, Md5};
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use crate::cli::{SendArgs, StrategyArg};
use crate::config::{self, Settings};
use crate::error::{with_code, Code};
use crate::events::{self, Event};
use crate::interrupt;
use crate::progress::{self, Mode, Progress};
use crate::remote::peer::{self, PeerLink};
use crate::remote::protocol::ServerSpec;
use crate::server::assembly::Assembly;
use crate::server::merge::{self, MergeFailed, Prepared};
use crate::size::{parse_rate, parse_size};
use crate::transport::Server;
use hashes::{md5_of, md5_range, Hashes};
use health::Health;
use journal::Journal;
use local::LocalHost;
use lock::LocalLock;
use plan::{Plan, Strategy};
use schedule::Scheduler;

/// A value set once by one thread and waited for by others.
struct Latch<T> {
    value: Mutex<Option<T>>,
    set: Condvar,
}

impl<T: Clone> Latch<T> {
    fn new() -> Latch<T> {
        Latch {
            value: Mutex::new(None),
            set: Condvar::new(),
        }
    }

    /// Sets the value unless it is set already.
    fn set(&self, v: T) {
        let mut g = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(v);
            self.set.notify_all();
        }
    }

    fn wait(&self) -> T {
        let mut g = self.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = g.as_ref() {
                return v.clone();
            }
            g = self.set.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// How one run of a send ended, when it did not fail.
enum Outcome {
    /// `--dry-run`: the plan is printed, nothing sent.
    Planned,
    /// The file is on the server under its name, verified.
    Sent,
    /// The destination already holds this very file: nothing was sent.
    AlreadyThere,
    /// Parts were missing or corrupt on the server at the merge and have been removed
    /// there: `run` sends them again (once).
    Resend(CorruptParts),
}

/// Parts missing or corrupt on the server at the merge, and the peers that reported
/// them done (a relay that lies, or whose uploads go bad, is not asked again).
#[derive(Debug, Clone)]
struct CorruptParts {
    count: usize,
    /// Peers that reported one of those parts done in this run.
    suspects: Vec<String>,
}

impl std::fmt::Display for CorruptParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} part(s) were missing or corrupt on the server at the merge",
            self.count
        )?;
        if !self.suspects.is_empty() {
            write!(f, " (reported done by {})", self.suspects.join(", "))?;
        }
        Ok(())
    }
}

/// Each part's expected size and MD5, hashed from the source.
fn run_plan_md5s(plan: &Plan, source: &Path) -> Result<Vec<(u64, String)>> {
    plan.parts
        .iter()
        .map(|p| Ok((p.len, md5_range(source, p.offset, p.len)?)))
        .collect()
}

use crate::send::lock::Ids;

/// What a peer needs once the transfer starts.
#[derive(Clone)]
struct Go {
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
struct HostEnd {
    name: String,
    result: Result<()>,
    /// It never took part (failed pre-flight), as opposed to dropping out.
    left_out: bool,
}

/// What the source looked like when the send started; checked again before the rename.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    size: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot read it", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(Stamp {
        size: meta.len(),
        mtime: meta.modified().ok(),
    })
}

/// The server-side name: one plain file name inside the upload directory.
pub fn validate_dest(name: &std::ffi::OsStr) -> Result<String> {
    let s = name.to_str().ok_or_else(|| {
        anyhow!("destination name {name:?} is not valid UTF-8; pass --dest with a UTF-8 name")
    })?;
    let bad = |why: &str| {
        Err(anyhow!(
            "destination name {s:?} {why}; pass --dest NAME with a plain file name"
        ))
    };
    if s.is_empty() {
        return bad("is empty");
    }
    if s == "." || s == ".." || s.contains('/') {
        return bad("must stay inside the upload directory (no '/', '.' or '..')");
    }
    if s.contains(['\r', '\n', '\0']) {
        return bad("contains a line break or NUL");
    }
    if s.starts_with(crate::server::names::TEMP_PREFIX) {
        return bad("uses relayup's own temp prefix");
    }
    if s.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    Ok(s.to_string())
}

/// Same source, destination and server give the same id, so a re-run finds its parts.
fn upload_id(source: &Path, st: &Stamp, dest: &str, settings: &Settings) -> String {
    let mut h = Md5::new();
    let canonical = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    h.update(canonical.as_os_str().as_encoded_bytes());
    h.update(st.size.to_le_bytes());
    if let Some(t) = st
        .mtime
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
    {
        h.update(t.as_nanos().to_le_bytes());
    }
    for s in [
        dest,
        &settings.server.host,
        &settings.server.dir,
        &settings.merge.dir,
    ] {
        h.update(s.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

pub fn run(args: SendArgs) -> Result<ExitCode> {
    interrupt::install();
    let result = match send(&args, &[]) {
        Ok(Outcome::Resend(c)) => {
            // Once: the resume path finds every good part on the server and sends the
            // rest.
            let without = if c.suspects.is_empty() {
                String::new()
            } else {
                format!(" without {}", c.suspects.join(", "))
            };
            progress::warn(&format!("{c}; sending them again{without}"));
            send(&args, &c.suspects)
        }
        other => other,
    };
    let result = match result {
        Ok(Outcome::Planned | Outcome::Sent | Outcome::AlreadyThere) => Ok(ExitCode::SUCCESS),
        Ok(Outcome::Resend(c)) => Err(with_code(
            anyhow!("{c} twice; nothing was renamed into place"),
            Code::Verify,
        )),
        Err(e) => Err(e),
    };
    if let Some(reason) = interrupt::reason() {
        return Err(anyhow!(
            "{reason}; the send stopped before anything went to that host (parts already on the server are kept for a re-run)"
        ))
        .context(Code::Connect);
    }
    match result {
        Err(e) if interrupt::interrupted() && e.downcast_ref::<Code>() != Some(&Code::Usage) => Err(anyhow!(
            "interrupted; staged parts on the peers are removed, the parts already on the server are kept. \
             Run the same command again to resume: {}",
            resume_command()
        ))
        .context(Code::Interrupted),
        other => other,
    }
}

/// The command line that was run, quoted for a POSIX shell; arguments need not be UTF-8.
fn resume_command() -> String {
    std::env::args_os()
        .map(|a| match a.to_str() {
            Some(s)
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c)) =>
            {
                s.to_string()
            }
            _ => crate::remote::quote::sh_os(&a),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One run of the send, leaving out the peers named in `exclude`.
fn send(args: &SendArgs, exclude: &[String]) -> Result<Outcome> {
    // Stage 1: everything that can be wrong without the network. Exit 2.
    let (settings, source, st, dest, strategy, part_size) =
        resolve(args, exclude).map_err(|e| with_code(e, Code::Usage))?;
    let mut hosts = vec!["local".to_string()];
    hosts.extend(settings.peers.iter().map(|p| p.login.name.clone()));
    let id = upload_id(&source, &st, &dest, &settings);
    if args.dry_run {
        let plan = Plan::new(st.size, hosts.len(), strategy, part_size);
        let server = &settings.server;
        let temp_dir = crate::transport::temp_dir(&server.dir, &id);
        if args.json {
            progress::emit(&Event::Plan(events::PlanEvent {
                file: source.display().to_string(),
                dest,
                dir: server.dir.clone(),
                server: format!("{}://{}:{}", server.scheme, server.host, server.port),
                bytes: st.size,
                upload_id: id,
                temp_dir,
                strategy: plan.strategy,
                parts: events::PlanPart::list(&plan, &hosts),
                hosts,
            }));
            return Ok(Outcome::Planned);
        }
        print!("{}", plan.describe(&hosts));
        println!(
            "destination: {}/{dest} on {}://{}:{}",
            server.dir, server.scheme, server.host, server.port
        );
        println!("upload id: {id} (temp dir {temp_dir})");
        return Ok(Outcome::Planned);
    }
    // One run of this send at a time on this machine; the server lock (pre-flight)
    // covers runs elsewhere.
    let _lock = LocalLock::acquire(&id).map_err(|e| with_code(e, Code::Busy))?;
    let ids = Ids {
        upload: id.clone(),
        run: lock::new_run_id(),
    };
    let id = &ids;
    let mode = Mode::choose(args.json, args.no_progress);
    if settings.server.scheme == "ftp" {
        progress::warn(
            "ftp:// sends the password and the data in clear text; prefer ftps:// or sftp://",
        );
    }

    // Stage 2: pre-flight. Peers start logging in at once, in parallel with the merge
    // login and this machine's own server login; with `adaptive` the transfer starts
    // without waiting for them, and each peer joins when it is ready. A peer that fails
    // is reported and left out. The server spec reaches peers as soon as it is known
    // (for sftp:// that is once this machine has verified the server's host key).
    let hello: Latch<Option<ServerSpec>> = Latch::new();
    let go: Latch<Option<Go>> = Latch::new();
    if settings.server.scheme != "sftp" {
        hello.set(Some(settings.server.clone()));
    }
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, bool)>();
    std::thread::scope(|s| {
        let peer_threads: Vec<_> = settings
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ready = ready_tx.clone();
                let (hello, go, settings, source) = (&hello, &go, &settings, &source);
                s.spawn(move || peer_thread(i + 1, p, settings, source, id, hello, go, ready))
            })
            .collect();
        drop(ready_tx);
        let lead = lead(
            args, &settings, &source, st, &dest, strategy, part_size, id, mode, &hello, &go,
            ready_rx,
        );
        // However the lead ended, nobody may wait for it any more.
        hello.set(None);
        go.set(None);
        let mut ends: Vec<HostEnd> = peer_threads
            .into_iter()
            .map(|h| h.join().expect("peer threads do not panic"))
            .collect();
        let mut run = match lead {
            Ok(Lead::AlreadyThere) => return Ok(Outcome::AlreadyThere),
            Ok(Lead::Run(run)) => *run,
            Err(e) => return Err(e),
        };
        ends.insert(0, run.local.take().expect("local result is set"));
        finish(
            run,
            ends,
            &settings,
            &source,
            st,
            &dest,
            id,
            mode,
            args.overwrite,
        )
    })
}

/// How the pre-flight and this machine's part of the transfer ended.
enum Lead {
    /// The transfer ran; the end is left to do.
    Run(Box<Run>),
    /// The destination already holds this very file.
    AlreadyThere,
}

/// What the transfer left for the end.
struct Run {
    local: Option<HostEnd>,
    plan: Plan,
    sched: Arc<Scheduler>,
    progress: Arc<Progress>,
    hasher: std::thread::JoinHandle<Result<String>>,
    /// How the parts become one file on the server; holds this run's lock there
    /// until the end of the run.
    assembly: Box<dyn Assembly>,
}

/// Pre-flight of the merge and this machine's login, the plan, and this machine's
/// own uploads. Returns when this machine has nothing more to send.
#[allow(clippy::too_many_arguments)]
fn lead(
    args: &SendArgs,
    settings: &Settings,
    source: &Path,
    st: Stamp,
    dest: &str,
    strategy: Strategy,
    part_size: Option<u64>,
    ids: &Ids,
    mode: Mode,
    hello: &Latch<Option<ServerSpec>>,
    go: &Latch<Option<Go>>,
    ready: mpsc::Receiver<(usize, bool)>,
) -> Result<Lead> {
    let id = ids.upload.as_str();
    let (prepared, local) = std::thread::scope(|s| {
        let m = s.spawn(|| prepare(settings, dest, ids, args.overwrite));
        let l = s.spawn(|| {
            Server::connect(
                &settings.server,
                id,
                &format!("local.{}", ids.run),
                settings.server_access(),
            )
        });
        let m = m.join().map_err(|_| anyhow!("merge pre-flight panicked"))?;
        let l = l
            .join()
            .map_err(|_| anyhow!("server pre-flight panicked"))?;
        Ok::<_, anyhow::Error>((m?, l))
    })
    .map_err(|e| with_code(e, Code::Connect))?;
    let mut assembly: Box<dyn Assembly> = match prepared {
        Prepared::Ready(r) => Box::new(r),
        Prepared::Exists(session, their_md5) => {
            merge::remove_if_empty(&session, &settings.merge.dir, id);
            // Not an error if it is this very file.
            already_there(source, dest, settings, &their_md5, mode)?;
            return Ok(Lead::AlreadyThere);
        }
    };
    let (local, host_key) = local
        .context("uploading from this machine")
        .map_err(|e| with_code(e, Code::Connect))?;
    let mut server = settings.server.clone();
    server.host_key = host_key;
    hello.set(Some(server));

    // With `equal` the plan needs to know who is there: wait for every peer's pre-flight.
    let all: Vec<usize> = (0..=settings.peers.len()).collect();
    let live: Vec<usize> = match strategy {
        Strategy::Adaptive => all.clone(),
        Strategy::Equal => {
            let mut up: Vec<usize> = ready.iter().filter(|r| r.1).map(|r| r.0).collect();
            up.sort_unstable();
            std::iter::once(0).chain(up).collect()
        }
    };
    let names: Vec<String> = std::iter::once("local".to_string())
        .chain(settings.peers.iter().map(|p| p.login.name.clone()))
        .collect();

    // Stage 3: plan (or the journal's plan, when resuming) and transfer, with the merge
    // following on the server.
    let plan = Journal::load(id)
        .and_then(|j| j.plan(st.size))
        .unwrap_or_else(|| Plan::new(st.size, live.len(), strategy, part_size));
    check_server_space(settings, st.size, assembly.as_ref())?;
    Journal::new(id, source, dest, &settings.path, &plan)
        .save()
        .map_err(|e| with_code(e, Code::Transfer))?;
    let done =
        resumable(&plan, assembly.existing(), source).map_err(|e| with_code(e, Code::Transfer))?;
    let resumed_bytes: u64 = plan
        .parts
        .iter()
        .filter(|p| done.contains(&p.index))
        .map(|p| p.len)
        .sum();
    if !done.is_empty() && mode != Mode::Json {
        progress::note(&format!(
            "resuming: {} of {} parts ({}) are already on the server",
            done.len(),
            plan.parts.len(),
            crate::size::human(resumed_bytes)
        ));
    }
    let start = events::Start {
        file: source.display().to_string(),
        dest: dest.to_string(),
        bytes: st.size,
        parts: plan.parts.len(),
        hosts: names.clone(),
        upload_id: id.to_string(),
        resumed_parts: done.len(),
        resumed_bytes,
        strategy: plan.strategy,
    };
    let progress = Progress::start(mode, st.size - resumed_bytes, &names, start);
    let sched = Arc::new(Scheduler::new(&plan, names.len(), &live, &done));
    sched.limit(settings.server.bwlimit, settings.bwlimit_total);
    let merged = assembly
        .start(plan.parts.len(), st.size)
        .map_err(|e| with_code(e, Code::Transfer))?;
    let mut resumed: Vec<usize> = done.iter().copied().collect();
    resumed.sort_unstable();
    for index in resumed {
        let _ = merged.send(index);
    }
    let (hashes, hasher) = Hashes::spawn(source.to_path_buf(), plan.parts.clone());
    let health = Arc::new(Health::new(std::time::Duration::from_secs(args.retry_for)));
    let shared = Go {
        sched: sched.clone(),
        progress: progress.clone(),
        merged: merged.clone(),
        hashes: hashes.clone(),
        staging_need: 2 * plan.parts.iter().map(|p| p.len).max().unwrap_or(0),
        health: health.clone(),
        stall: settings.io_timeout,
    };
    go.set(Some(shared.clone()));
    let mut local = local;
    local.pace_with(sched.pace(0));
    let mut me = LocalHost::start(local, source.to_path_buf(), hashes.clone());
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

/// The merge pre-flight; a lock on the server left by a run of this machine that is
/// dead (its connection still lingers there) is taken over, once.
fn prepare(settings: &Settings, dest: &str, ids: &Ids, overwrite: bool) -> Result<Prepared> {
    match merge::prepare(settings, dest, ids, overwrite) {
        Err(e) => match e.downcast_ref::<merge::Busy>() {
            Some(busy) if busy.0.as_ref().is_some_and(|o| o.is_dead_here()) => {
                merge::take_over(settings, &ids.upload, busy)
                    .context("taking over the lock of a dead run on the server")?;
                merge::prepare(settings, dest, ids, overwrite).map_err(busy_code)
            }
            _ => Err(busy_code(e)),
        },
        ok => ok,
    }
}

/// A lock held by another run exits 6.
fn busy_code(e: anyhow::Error) -> anyhow::Error {
    if e.is::<merge::Busy>() {
        with_code(e, Code::Busy)
    } else {
        e
    }
}

/// The merge needs the remaining parts and the merged file side by side on the
/// server: fail now, not at the end, when they cannot fit.
fn check_server_space(settings: &Settings, size: u64, assembly: &dyn Assembly) -> Result<()> {
    let Some(free) = assembly.free() else {
        progress::warn(&format!(
            "could not read the free space in {} on the server (df); not checked",
            settings.merge.dir
        ));
        return Ok(());
    };
    let there: u64 = assembly.existing().iter().map(|p| p.size).sum();
    let need = assembly.space_needed(size, there);
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

/// One peer, from login to its last part.
#[allow(clippy::too_many_arguments)]
fn peer_thread(
    host: usize,
    p: &crate::config::Peer,
    settings: &Settings,
    source: &Path,
    ids: &Ids,
    hello: &Latch<Option<ServerSpec>>,
    go: &Latch<Option<Go>>,
    ready: mpsc::Sender<(usize, bool)>,
) -> HostEnd {
    let name = p.login.name.clone();
    let opened =
        PeerLink::connect(p, &settings.known_hosts, settings.io_timeout).and_then(|mut link| {
            let Some(server) = hello.wait() else {
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
            // Not a peer to leave out quietly: a wrong host key may be an attack.
            interrupt::stop(format!("{e:#}"));
        }
    }
    let _ = ready.send((host, opened.is_ok()));
    drop(ready);
    let Some(go) = go.wait() else {
        if let Ok(link) = opened {
            link.close();
        }
        return HostEnd {
            name,
            result: Ok(()),
            left_out: true,
        };
    };
    let opened = opened.and_then(|link| match link.staging_free {
        Some(free) if free < go.staging_need => {
            let e = anyhow!(
                "staging dir {} has {} free, this send stages up to {} there at once (two parts); \
                 free space there or point the peer's `staging` elsewhere",
                link.staging,
                crate::size::human(free),
                crate::size::human(go.staging_need)
            );
            link.close();
            Err(e)
        }
        _ => Ok(link),
    });
    let mut link = match opened {
        Ok(link) => link,
        Err(e) => {
            go.sched.host_failed(host, &[]);
            go.progress.host_state(host, "left out");
            if !interrupt::interrupted() {
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
        source,
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

/// After the transfer: the server finishes the merge; compare and rename into place.
#[allow(clippy::too_many_arguments)]
fn finish(
    run: Run,
    ends: Vec<HostEnd>,
    settings: &Settings,
    source: &Path,
    st: Stamp,
    dest: &str,
    ids: &Ids,
    mode: Mode,
    overwrite: bool,
) -> Result<Outcome> {
    let id = ids.upload.as_str();
    // The server lock is released when this returns, after the rename.
    let Run {
        plan,
        sched,
        progress,
        hasher,
        mut assembly,
        ..
    } = run;
    if !sched.all_done() {
        progress.stop();
        let why: Vec<String> = ends
            .iter()
            .filter_map(|h| {
                h.result
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e:#}", h.name))
            })
            .collect();
        return Err(with_code(
            anyhow!(
                "no host could finish the upload ({}); the parts already on the server are kept in {}: \
                 run the same command again to resume, or `relayup clean` to remove them",
                why.join("; "),
                crate::server::names::temp_dir(&settings.server.dir, id)
            ),
            Code::Transfer,
        ));
    }
    let transfer_end = Instant::now();
    let merged = match assembly.finish() {
        Ok(m) => m,
        Err(e) if e.is::<MergeFailed>() => {
            // A part missing or unreadable at the merge: the same path as a corrupt one.
            progress.stop();
            let expected: Vec<(u64, String)> = run_plan_md5s(&plan, source)?;
            let bad = assembly.remove_bad(&expected).unwrap_or_default();
            if !bad.is_empty() {
                return Ok(Outcome::Resend(corrupt(&bad, &sched, &ends)));
            }
            return Err(with_code(e, Code::Transfer));
        }
        Err(e) => return Err(with_code(e, Code::Transfer)),
    };
    let (server_md5, server_size) = (merged.md5.clone(), merged.size);
    progress.merged(&server_md5, transfer_end.elapsed().as_secs_f64());
    let source_md5 = hasher
        .join()
        .map_err(|_| anyhow!("hashing thread panicked"))?
        .with_context(|| format!("hashing {}", source.display()))
        .map_err(|e| with_code(e, Code::Transfer))?;
    let (summary, seconds) = progress.stop();
    if stamp(source)? != st {
        return Err(with_code(
            anyhow!(
                "{} changed during the send; nothing was renamed into place. Send it again once it is stable",
                source.display()
            ),
            Code::Verify,
        ));
    }
    if server_md5 != source_md5 || server_size != st.size {
        // Every part was size-checked when it landed, so a part changed on the server
        // afterwards. Find the bad ones by their own MD5s; the re-run sends only those.
        let expected: Vec<(u64, String)> = run_plan_md5s(&plan, source)?;
        let bad = assembly.remove_bad(&expected).unwrap_or_default();
        if !bad.is_empty() {
            return Ok(Outcome::Resend(corrupt(&bad, &sched, &ends)));
        }
        return Err(with_code(
            anyhow!(
                "verification failed: the server's merged file has md5 {server_md5} and {server_size} bytes, \
                 the source has md5 {source_md5} and {} bytes; nothing was renamed into place",
                st.size
            ),
            Code::Verify,
        ));
    }
    assembly
        .publish(&merged, dest, overwrite)
        .map_err(|e| with_code(e, Code::Transfer))?;
    Journal::remove(id);
    for h in ends.iter().filter(|h| !h.left_out) {
        if let Err(e) = &h.result {
            progress.warn(&format!("{} dropped out during the send: {e:#}", h.name));
        }
    }
    progress::report_done(mode, st.size, seconds, &source_md5, dest, &summary);
    Ok(Outcome::Sent)
}

/// The [`CorruptParts`] for the parts `bad`, naming the peers that reported
/// them done.
fn corrupt(bad: &[usize], sched: &Scheduler, ends: &[HostEnd]) -> CorruptParts {
    let mut suspects: Vec<String> = bad
        .iter()
        .filter_map(|&i| sched.completed_by(i))
        .filter(|&h| h != 0)
        .filter_map(|h| ends.get(h).map(|e| e.name.clone()))
        .collect();
    suspects.sort();
    suspects.dedup();
    CorruptParts {
        count: bad.len(),
        suspects,
    }
}

#[allow(clippy::type_complexity)]
fn resolve(
    args: &SendArgs,
    exclude: &[String],
) -> Result<(Settings, PathBuf, Stamp, String, Strategy, Option<u64>)> {
    let path = config::config_path(args.config.as_deref())?;
    let settings = config::load(&path)?;
    let st = stamp(&args.file)?;
    File::open(&args.file)
        .with_context(|| format!("{}: cannot open it for reading", args.file.display()))?;
    let dest =
        match &args.dest {
            Some(d) => validate_dest(d)?,
            None => validate_dest(args.file.file_name().ok_or_else(|| {
                anyhow!("{} has no file name; pass --dest", args.file.display())
            })?)?,
        };
    let strategy = match args.strategy {
        StrategyArg::Adaptive => Strategy::Adaptive,
        StrategyArg::Equal => Strategy::Equal,
    };
    let part_size = match &args.part_size {
        Some(s) => {
            let v = parse_size(s).context("--part-size")?;
            if v == 0 {
                bail!("--part-size must be at least 1 byte");
            }
            if strategy == Strategy::Equal {
                bail!("--part-size applies to --strategy adaptive; equal makes one part per host");
            }
            Some(v)
        }
        None => None,
    };
    let mut settings = settings;
    if args.no_peers {
        settings.peers.clear();
    }
    if let Some(names) = &args.peers {
        settings.keep_peers(names)?;
    }
    settings.peers.retain(|p| !exclude.contains(&p.login.name));
    settings.io_timeout = std::time::Duration::from_secs(args.stall_timeout);
    settings.known_hosts.accept_new = args.accept_new_host_keys;
    let rate = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| parse_rate(t).with_context(|| format!("{flag} {t}")))
            .transpose()
    };
    settings.server.bwlimit = rate("--bwlimit", &args.bwlimit)?;
    settings.bwlimit_total = rate("--bwlimit-total", &args.bwlimit_total)?;
    Ok((settings, args.file.clone(), st, dest, strategy, part_size))
}

/// Parts an earlier run left complete on the server: same length as planned and the
/// same MD5 as that range of the source (hashed here, so the server is trusted only
/// for what it can prove).
fn resumable(plan: &Plan, existing: &[merge::ServerPart], source: &Path) -> Result<HashSet<usize>> {
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
fn already_there(
    source: &Path,
    dest: &str,
    settings: &Settings,
    their_md5: &str,
    mode: Mode,
) -> Result<()> {
    let ours = file_md5(source).with_context(|| format!("hashing {}", source.display()))?;
    if ours == their_md5 {
        if mode == Mode::Json {
            progress::emit(&Event::Done(events::Done::already_there(&ours, dest)));
        }
        eprintln!(
            "relayup: {}/{dest} is already on the server with the same md5 {ours}; nothing to send",
            settings.merge.dir
        );
        return Ok(());
    }
    Err(anyhow!(
        "{}/{dest} already exists on the server with different content (md5 {their_md5}); pass --overwrite to replace it, or --dest to choose another name",
        settings.merge.dir
    ))
    .context(Code::Usage)
}

fn file_md5(path: &Path) -> Result<String> {
    md5_of(&mut File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn destination_names() {
        for ok in [
            "a.iso",
            "with space",
            "it's",
            "$(x)",
            "`id`",
            "a;b",
            "-leading",
            "ünï",
        ] {
            assert_eq!(validate_dest(OsStr::new(ok)).unwrap(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/abs",
            "../up",
            "new\nline",
            "cr\r",
            ".relayup-x",
        ] {
            assert!(validate_dest(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        use std::os::unix::ffi::OsStrExt;
        let err = validate_dest(OsStr::from_bytes(b"bad\xff")).unwrap_err();
        assert!(format!("{err}").contains("UTF-8"));
    }
}
