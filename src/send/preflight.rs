//! The pre-flight on the server: the merge login prepares and locks the temp dir
//! while this machine logs into the server; the destination, the room there and the
//! parts an earlier run left are checked before anything is sent.

use anyhow::{anyhow, Context, Result};
use std::fs::File;

use super::hashes::md5_of;
use super::lock::Ids;
use super::peers::Signals;
use super::target::Target;
use crate::config::AssemblyKind;
use crate::error::{with_code, Code};
use crate::events::{self, Event};
use crate::progress::{self, Mode};
use crate::server::assembly::{Assembly, Existing};
use crate::server::direct::{self, DirectWrite};
use crate::server::merge;
use crate::transport::Server;

/// What the server's pre-flight found.
enum Prepared {
    Ready(Box<dyn Assembly>),
    /// The destination exists (and `--overwrite` was not given); its MD5 where the
    /// server could compute it.
    Exists(Option<(String, &'static str)>),
}

/// How the server's pre-flight ended.
pub enum LoggedIn {
    /// The assembly is prepared and locked; this machine's login; a release's files
    /// that are already on the server (by index, with their MD5).
    Ready(Box<dyn Assembly>, Box<Server>, Vec<(usize, String)>),
    /// The destination already holds this very file (its MD5).
    AlreadyThere(String),
}

/// The assembly's pre-flight and this machine's server login, side by side; hands
/// the server to the peers.
pub fn log_in(t: &Target, ids: &Ids, signals: &Signals) -> Result<LoggedIn> {
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
        let m = m
            .join()
            .map_err(|_| anyhow!("server pre-flight panicked"))?;
        let l = l
            .join()
            .map_err(|_| anyhow!("server pre-flight panicked"))?;
        Ok::<_, anyhow::Error>((m?, l))
    })
    .map_err(|e| with_code(e, Code::Connect))?;
    let mut assembly = match prepared {
        Prepared::Ready(a) => a,
        Prepared::Exists(their_md5) => {
            // Not an error if it is this very file.
            return already_there(t, their_md5).map(LoggedIn::AlreadyThere);
        }
    };
    let (local, host_key) = local
        .context("uploading from this machine")
        .map_err(|e| with_code(e, Code::Connect))?;
    let skipped = if t.source.is_release() {
        release_existing(t, assembly.as_mut()).inspect_err(|_| assembly.abandon())?
    } else {
        Vec::new()
    };
    let mut server = settings.server.clone();
    server.host_key = host_key;
    signals.hello.set(Some(server));
    Ok(LoggedIn::Ready(assembly, Box::new(local), skipped))
}

/// The pre-flight of the settings' kind of assembly.
fn prepare(t: &Target, ids: &Ids) -> Result<Prepared> {
    match t.settings.assembly {
        AssemblyKind::Merge => Ok(match prepare_merge(t, ids)? {
            merge::Prepared::Ready(r) => Prepared::Ready(Box::new(r)),
            merge::Prepared::Exists(session, md5) => {
                if let Ok(m) = t.settings.merge_login() {
                    merge::remove_if_empty(&session, &m.dir, &ids.upload);
                }
                Prepared::Exists(Some((md5, "server-md5")))
            }
        }),
        AssemblyKind::Direct => {
            let request = direct::Request {
                spec: &t.settings.server,
                access: crate::transport::Access::of(&t.settings),
                ids,
                dest: &t.dest,
                overwrite: t.overwrite,
                verify: t.verify,
                source: &t.source.files[0].path,
                size: t.source.size,
                peers: !t.settings.peers.is_empty(),
                shell: t.settings.merge.is_some().then_some(&t.settings),
                release: t.source.is_release(),
            };
            Ok(match DirectWrite::prepare(&request)? {
                direct::Prepared::Ready(d) => Prepared::Ready(d),
                direct::Prepared::Exists(md5) => Prepared::Exists(md5),
            })
        }
    }
}

/// The merge pre-flight; a lock on the server left by a run of this machine that is
/// dead (its connection still lingers there) is taken over, once.
fn prepare_merge(t: &Target, ids: &Ids) -> Result<merge::Prepared> {
    let (settings, overwrite) = (&t.settings, t.overwrite);
    // A release's destinations are checked file by file once the lock is held.
    let dest = (!t.source.is_release()).then_some(t.dest.as_str());
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
pub fn check_server_space(
    t: &Target,
    assembly: &dyn Assembly,
    size: u64,
    there: u64,
) -> Result<()> {
    let settings = &t.settings;
    let (who, dir, what) = match (settings.assembly, &settings.merge) {
        (AssemblyKind::Merge, Some(m)) => (
            m.login.describe(),
            m.dir.as_str(),
            " (the parts and the merged file side by side)",
        ),
        _ => (settings.server.url(), settings.server.dir.as_str(), ""),
    };
    let Some(free) = assembly.free() else {
        // FTP never tells; a server that does not is not a reason to warn every time.
        if settings.assembly == AssemblyKind::Merge {
            progress::warn(&format!(
                "could not read the free space in {dir} on the server (df); not checked"
            ));
        }
        return Ok(());
    };
    let need = assembly.space_needed(size, there);
    if free < need {
        return Err(with_code(
            anyhow!(
                "{who}: {dir} has {} free, this send needs {} there{what}; \
                 free space on the server or choose another directory",
                crate::size::human(free),
                crate::size::human(need)
            ),
            Code::Transfer,
        ));
    }
    Ok(())
}

/// A release's destinations, checked once this run holds the lock: a file the
/// server has already (same size and MD5) is not sent again; anything else under a
/// file's name stops the send before a byte is sent (exit 2), unless it is a regular
/// file and `--overwrite` was given.
fn release_existing(t: &Target, assembly: &mut dyn Assembly) -> Result<Vec<(usize, String)>> {
    let files: Vec<(&str, u64)> = t
        .source
        .files
        .iter()
        .map(|f| (f.dest.as_str(), f.size()))
        .collect();
    let found = assembly
        .existing(&files, true)
        .map_err(|e| with_code(e, Code::Connect))?;
    let dir = match (&t.settings.merge, t.settings.assembly) {
        (Some(m), AssemblyKind::Merge) => m.dir.as_str(),
        _ => t.settings.server.dir.as_str(),
    };
    let place = |d: &str| format!("{}/{d}", dir.trim_end_matches('/'));
    let (mut skipped, mut differ) = (Vec::new(), Vec::new());
    for (k, (f, there)) in t.source.files.iter().zip(found).enumerate() {
        match there {
            Existing::Missing => {}
            Existing::NotAFile(what) => {
                return Err(anyhow!(
                    "{} on the server is {what}; relayup only ever replaces a regular file (--overwrite too): \
                     remove it there or leave {} out",
                    place(&f.dest),
                    f.path.display()
                ))
                .context(Code::Usage)
            }
            Existing::File(size, Some((theirs, _))) if size == f.size() => {
                let ours = md5_of(&mut File::open(&f.path)?)
                    .with_context(|| format!("hashing {}", f.path.display()))?;
                if ours == theirs {
                    skipped.push((k, ours));
                } else {
                    differ.push(f.dest.as_str());
                }
            }
            Existing::File(..) => differ.push(f.dest.as_str()),
        }
    }
    if !differ.is_empty() && !t.overwrite {
        let more = match differ.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        return Err(anyhow!(
            "{} already exists on the server with different content{more}; \
             pass --overwrite to replace what differs, or send under another name",
            place(differ[0])
        ))
        .context(Code::Usage);
    }
    if !skipped.is_empty() && t.mode != Mode::Json {
        progress::note(&format!(
            "{} of {} files are already on the server with the same md5; not sent again",
            skipped.len(),
            t.source.files.len()
        ));
    }
    Ok(skipped)
}

/// The destination already exists: fine if it is this very file (nothing to send).
fn already_there(t: &Target, theirs: Option<(String, &'static str)>) -> Result<String> {
    let (source, dest) = (&t.source.files[0].path, &t.dest);
    let dir = match (&t.settings.merge, t.settings.assembly) {
        (Some(m), AssemblyKind::Merge) => m.dir.as_str(),
        _ => t.settings.server.dir.as_str(),
    };
    let Some((their_md5, how)) = theirs else {
        return Err(anyhow!(
            "{dir}/{dest} already exists on the server (another size, or it could not be compared); \
             pass --overwrite to replace it, or --dest to choose another name"
        ))
        .context(Code::Usage);
    };
    let ours = md5_of(&mut File::open(source)?)
        .with_context(|| format!("hashing {}", source.display()))?;
    if ours == their_md5 {
        if t.mode == Mode::Json {
            progress::emit(&Event::Done(events::Done::already_there(&ours, dest, how)));
        }
        eprintln!(
            "relayup: {dir}/{dest} is already on the server with the same md5 {ours}; nothing to send"
        );
        return Ok(ours);
    }
    Err(anyhow!(
        "{dir}/{dest} already exists on the server with different content (md5 {their_md5}); pass --overwrite to replace it, or --dest to choose another name"
    ))
    .context(Code::Usage)
}
