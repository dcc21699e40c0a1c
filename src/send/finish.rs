//! The end of a send: the assembly finishes on the server, its MD5 and size are
//! compared with the source's, and only then is the file published under its name.
//! Parts found missing or corrupt there are removed and named for a second round.

use anyhow::{anyhow, Context, Result};
use std::time::Instant;

use super::journal::Journal;
use super::lock::Ids;
use super::peers::HostEnd;
use super::schedule::Scheduler;
use super::source::{Source, SourceFile};
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
        hashes,
        mut assembly,
        journal,
        source,
        skipped,
        published,
        ..
    } = run;
    if !sched.all_done() {
        progress.stop();
        return Err(no_host_finished(&ends, t, &ids.upload));
    }
    let transfer_end = Instant::now();
    let files = match assembly.finish() {
        Ok(m) => m,
        Err(e) if e.is::<MergeFailed>() => {
            // A part missing or unreadable at the merge: the same path as a corrupt one.
            progress.stop();
            let bad = assembly.remove_bad(&plan, &source).unwrap_or_default();
            if !bad.is_empty() {
                return Ok(Outcome::Resend(corrupt(&bad, &sched, &ends)));
            }
            return Err(with_code(e, Code::Transfer));
        }
        Err(e) => return Err(with_code(e, Code::Transfer)),
    };
    if let (false, Some(md5)) = (
        source.is_release(),
        files.first().and_then(|f| f.md5.as_ref()),
    ) {
        progress.merged(md5, transfer_end.elapsed().as_secs_f64());
    }
    let sums = hasher
        .join()
        .map_err(|_| anyhow!("hashing thread panicked"))?
        .context("hashing the source")
        .map_err(|e| with_code(e, Code::Transfer))?;
    let (summary, seconds) = progress.stop();
    let Verdict {
        good,
        changed,
        differ,
    } = judge(&source, &files, &sums);
    if let Some((k, file)) = differ {
        // Every part was size-checked when it landed, so a part changed on the server
        // afterwards. Find the bad ones by their own MD5s; the re-run sends only those.
        let bad = assembly.remove_bad(&plan, &source).unwrap_or_default();
        if !bad.is_empty() {
            return Ok(Outcome::Resend(corrupt(&bad, &sched, &ends)));
        }
        let f = &source.files[k];
        return Err(mismatch(file, &f.dest, &sums[k], f.size()));
    }
    if let Some(f) = changed.first() {
        return Err(held_back(f, &good, &files, assembly.as_mut(), t));
    }
    assembly
        .publish(&good, t.overwrite, true)
        .map_err(|e| with_code(e, Code::Transfer))?;
    // The journal's last save is done before it goes.
    let _ = journal.join();
    Journal::remove(&ids.upload);
    for h in ends.iter().filter(|h| !h.left_out) {
        if let Err(e) = &h.result {
            progress.warn(&format!("{} dropped out during the send: {e:#}", h.name));
        }
    }
    let verification = files.first().map_or("server-md5", |f| f.verification);
    if !t.source.is_release() {
        progress::report_done(
            t.mode,
            source.size,
            seconds,
            &sums[0],
            &t.dest,
            &summary,
            verification,
        );
    }
    let announced = published.close();
    let mut reports = reports(&source, &sums, &skipped);
    for (k, r) in reports.iter_mut().enumerate() {
        r.sha256 = hashes.sha256(k);
        r.announced = announced.contains(&k);
    }
    Ok(Outcome::Sent(reports))
}

/// How the files of a finished transfer compare with the source.
struct Verdict<'a> {
    /// Verified and not yet published (by index).
    good: Vec<(usize, Assembled)>,
    /// Changed here since the send started: not published.
    changed: Vec<&'a SourceFile>,
    /// The first whose MD5 or size on the server is not the source's.
    differ: Option<(usize, &'a Assembled)>,
}

/// Compares every file on the server (`files`, by index) with the source (`sums`:
/// each file's MD5 from the pass over it); files published during the transfer were
/// verified then.
fn judge<'a>(source: &'a Source, files: &'a [Assembled], sums: &[String]) -> Verdict<'a> {
    let mut v = Verdict {
        good: Vec::new(),
        changed: Vec::new(),
        differ: None,
    };
    for (k, (f, file)) in source.files.iter().zip(files).enumerate() {
        if file.published {
            continue;
        }
        if stamp(&f.path).ok() != Some(f.stamp) {
            v.changed.push(f);
        } else if file.md5.as_ref().is_some_and(|m| *m != sums[k]) || file.size != f.size() {
            v.differ.get_or_insert((k, file));
        } else {
            v.good.push((k, file.clone()));
        }
    }
    v
}

/// `f` changed during the send: the error that says so. A release publishes its
/// verified files first (not with `--atomic-release`).
fn held_back(
    f: &SourceFile,
    good: &[(usize, Assembled)],
    files: &[Assembled],
    assembly: &mut dyn crate::server::assembly::Assembly,
    t: &Target,
) -> anyhow::Error {
    let published = if t.source.is_release() && !t.atomic {
        if let Err(e) = assembly.publish(good, t.overwrite, false) {
            return with_code(e, Code::Transfer);
        }
        format!(
            "the other {} file(s) are published",
            files.iter().filter(|f| f.published).count() + good.len()
        )
    } else {
        "nothing was renamed into place".to_string()
    };
    with_code(
        anyhow!(
            "{} changed during the send; {published}. Send it again once it is stable",
            f.path.display()
        ),
        Code::Verify,
    )
}

/// Every file of the target, in order, as sent in this run or found on the server.
fn reports(
    source: &Source,
    sums: &[String],
    skipped: &[(usize, String)],
) -> Vec<super::FileReport> {
    source
        .files
        .iter()
        .zip(sums)
        .enumerate()
        .map(|(k, (f, sum))| {
            let there = skipped.iter().find(|s| s.0 == k).map(|s| s.1.clone());
            super::FileReport {
                dest: f.dest.clone(),
                source: f.path.clone(),
                bytes: f.size(),
                already_there: there.is_some(),
                sha256: None,
                announced: false,
                md5: there.unwrap_or_else(|| sum.clone()),
            }
        })
        .collect()
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
fn mismatch(file: &Assembled, dest: &str, source_md5: &str, size: u64) -> anyhow::Error {
    with_code(
        anyhow!(
            "verification failed: the server's file for {dest} has md5 {} and {} bytes, \
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
