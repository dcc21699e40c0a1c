//! The pre-flight on the server: the merge login prepares and locks the temp dir
//! while this machine logs into the server; the destination, the room there and the
//! parts an earlier run left are checked before anything is sent.

use anyhow::{anyhow, Context, Result};
use std::collections::HashSet;
use std::fs::File;
use std::path::Path;

use super::hashes::{md5_of, md5_range};
use super::lock::Ids;
use super::peers::Signals;
use super::plan::Plan;
use super::target::Target;
use crate::error::{with_code, Code};
use crate::events::{self, Event};
use crate::progress::{self, Mode};
use crate::server::assembly::{Assembly, ServerPart};
use crate::server::merge::{self, Prepared};
use crate::transport::Server;

/// The merge login's pre-flight and this machine's server login, side by side; hands
/// the server to the peers. `None`: the destination already holds this very file.
pub fn log_in(
    t: &Target,
    ids: &Ids,
    signals: &Signals,
) -> Result<Option<(Box<dyn Assembly>, Server)>> {
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
pub fn check_server_space(t: &Target, assembly: &dyn Assembly) -> Result<()> {
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
pub fn resumable(plan: &Plan, existing: &[ServerPart], source: &Path) -> Result<HashSet<usize>> {
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
