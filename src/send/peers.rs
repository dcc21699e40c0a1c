//! The peers' side of a send, as this machine runs it: each peer logs in, starts its
//! relay and waits for the server (to hand to the relay) and for the transfer (to
//! join it); a peer that fails any of it is left out and the send goes on.

use anyhow::{anyhow, Result};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex};

use super::hashes::Hashes;
use super::health::Health;
use super::hosts;
use super::lock::Ids;
use super::schedule::Scheduler;
use super::source::{Places, Source};
use super::target::Target;
use crate::progress::Progress;
use crate::remote::peer::{self, PeerLink};
use crate::remote::protocol::ServerSpec;

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

/// How a host's part of the send ended.
pub struct HostEnd {
    pub name: String,
    pub result: Result<()>,
    /// It never took part (failed pre-flight), as opposed to dropping out.
    pub left_out: bool,
}

/// What a peer needs once the transfer starts.
#[derive(Clone)]
pub struct Go {
    pub sched: Arc<Scheduler>,
    pub progress: Arc<Progress>,
    pub merged: Sender<usize>,
    pub hashes: Arc<Hashes>,
    /// Staging space a peer needs: two of the plan's largest parts (one uploading,
    /// the next staged).
    pub staging_need: u64,
    /// Whether a failing host fails alone or the server is away.
    pub health: Arc<Health>,
    /// `--stall-timeout`.
    pub stall: std::time::Duration,
    /// What is sent.
    pub source: Arc<Source>,
    /// Where each part goes on the server.
    pub places: Arc<Places>,
}

impl Go {
    /// What host `host`'s loop needs.
    pub fn job(&self, host: usize) -> hosts::Job<'_> {
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
        source: &go.source,
        stage_prefix: &prefix,
        places: &go.places,
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
