//! The end of a send: the assembly finishes on the server, its MD5 and size are
//! compared with the source's, and only then is the file published under its name.
//! Parts found missing or corrupt there are removed and named for a second round.

use anyhow::{anyhow, Context, Result};
use std::time::Instant;

use super::journal::Journal;
use super::lock::Ids;
use super::peers::HostEnd;
use super::schedule::Scheduler;
use super::start::Run;
use super::target::{stamp, Target};
use super::{CorruptParts, Outcome};
use crate::error::{with_code, Code};
use crate::progress;
use crate::server::assembly::Assembled;
use crate::server::merge::MergeFailed;

/// After the transfer: the server finishes the assembly; compare and publish.
pub fn finish(run: Run, ends: Vec<HostEnd>, t: &Target, ids: &Ids) -> Result<Outcome> {
    // The server lock is released when this returns, after the rename.
    let Run {
        plan,
        sched,
        progress,
        hasher,
        mut assembly,
        journal,
        ..
    } = run;
    if !sched.all_done() {
        progress.stop();
        return Err(no_host_finished(&ends, t, &ids.upload));
    }
    let transfer_end = Instant::now();
    let file = match assembly.finish() {
        Ok(m) => m,
        Err(e) if e.is::<MergeFailed>() => {
            // A part missing or unreadable at the merge: the same path as a corrupt one.
            progress.stop();
            let bad = assembly.remove_bad(&plan, &t.source).unwrap_or_default();
            if !bad.is_empty() {
                return Ok(Outcome::Resend(corrupt(&bad, &sched, &ends)));
            }
            return Err(with_code(e, Code::Transfer));
        }
        Err(e) => return Err(with_code(e, Code::Transfer)),
    };
    if let Some(md5) = &file.md5 {
        progress.merged(md5, transfer_end.elapsed().as_secs_f64());
    }
    let source_md5 = hasher
        .join()
        .map_err(|_| anyhow!("hashing thread panicked"))?
        .with_context(|| format!("hashing {}", t.source.display()))
        .map_err(|e| with_code(e, Code::Transfer))?;
    let (summary, seconds) = progress.stop();
    if stamp(&t.source)? != t.stamp {
        return Err(with_code(
            anyhow!(
                "{} changed during the send; nothing was renamed into place. Send it again once it is stable",
                t.source.display()
            ),
            Code::Verify,
        ));
    }
    let md5_differs = file.md5.as_ref().is_some_and(|m| *m != source_md5);
    if md5_differs || file.size != t.stamp.size {
        // Every part was size-checked when it landed, so a part changed on the server
        // afterwards. Find the bad ones by their own MD5s; the re-run sends only those.
        let bad = assembly.remove_bad(&plan, &t.source).unwrap_or_default();
        if !bad.is_empty() {
            return Ok(Outcome::Resend(corrupt(&bad, &sched, &ends)));
        }
        return Err(mismatch(&file, &source_md5, t.stamp.size));
    }
    assembly
        .publish(&file, &t.dest, t.overwrite)
        .map_err(|e| with_code(e, Code::Transfer))?;
    // The journal's last save is done before it goes.
    let _ = journal.join();
    Journal::remove(&ids.upload);
    for h in ends.iter().filter(|h| !h.left_out) {
        if let Err(e) = &h.result {
            progress.warn(&format!("{} dropped out during the send: {e:#}", h.name));
        }
    }
    progress::report_done(
        t.mode,
        t.stamp.size,
        seconds,
        &source_md5,
        &t.dest,
        &summary,
        file.verification,
    );
    Ok(Outcome::Sent(source_md5))
}

/// Every host failed: what each said, and where the parts wait for a resume.
fn no_host_finished(ends: &[HostEnd], t: &Target, upload_id: &str) -> anyhow::Error {
    let why: Vec<String> = ends
        .iter()
        .filter_map(|h| {
            h.result
                .as_ref()
                .err()
                .map(|e| format!("{}: {e:#}", h.name))
        })
        .collect();
    with_code(
        anyhow!(
            "no host could finish the upload ({}); the parts already on the server are kept in {}: \
             run the same command again to resume, or `relayup clean` to remove them",
            why.join("; "),
            crate::server::names::temp_dir(&t.settings.server.dir, upload_id)
        ),
        Code::Transfer,
    )
}

/// The assembled file is not the source, and no part is to blame.
fn mismatch(file: &Assembled, source_md5: &str, size: u64) -> anyhow::Error {
    with_code(
        anyhow!(
            "verification failed: the server's file has md5 {} and {} bytes, \
             the source has md5 {source_md5} and {size} bytes; nothing was renamed into place",
            file.md5.as_deref().unwrap_or("(not computed)"),
            file.size
        ),
        Code::Verify,
    )
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
