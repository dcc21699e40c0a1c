//! The server side of the end: over the `[merge]` SSH login, parts are appended to one
//! temp file in index order *as they arrive* and hashed in the same pass, so only the
//! last part is left to merge when the transfer ends. Then the MD5 is compared with the
//! source's and the file is renamed into place.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::Session;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use crate::config::Settings;
use crate::quote::sh;
use crate::ssh::{self, Trust};

/// A part already complete on the server from an earlier, interrupted run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPart {
    pub index: usize,
    pub size: u64,
    pub md5: String,
}

/// What pre-flight found on the server.
pub enum Prepared {
    /// Ready: the temp dir exists; these parts are already in it.
    Ready(Session, Vec<ServerPart>),
    /// The destination exists (and `--overwrite` was not given); its MD5.
    Exists(Session, String),
}

/// Checks the merge login and the upload directory, creates the temp dir, and lists
/// the parts an earlier run left there (with their size and MD5, computed on the server).
/// Also removes, in the background, finished sends' temp dirs whose background
/// removal never ran to the end (see [`commit`]; a server reboot, say).
pub fn prepare(
    settings: &Settings,
    dest: &str,
    upload_id: &str,
    overwrite: bool,
) -> Result<Prepared> {
    let m = &settings.merge;
    let session = ssh::connect(&m.login, Trust::KnownHosts(&settings.known_hosts), None)?;
    let script = format!(
        "cd -- {dir} 2>/dev/null || exit 10\n\
         [ -w . ] || exit 11\n\
         {{ rm -rf -- .relayup-*.done.* </dev/null >/dev/null 2>&1 & }}\n\
         command -v md5sum >/dev/null 2>&1 || exit 13\n\
         if [ -e {dest} ] && [ {ow} != 1 ]; then md5sum < {dest} || exit 15; exit 12; fi\n\
         mkdir -p -m 700 {tmp} || exit 14\n\
         cd {tmp} || exit 14\n\
         {LIST_PARTS}",
        dir = sh(&m.dir),
        dest = sh(dest),
        ow = u8::from(overwrite),
        tmp = sh(&format!(".relayup-{upload_id}")),
    );
    let out = ssh::run(&session, &script)?;
    let who = m.login.describe();
    match out.status {
        0 => Ok(Prepared::Ready(session, parse_parts(&out.stdout))),
        10 => bail!(
            "{who}: merge.dir {} does not exist there; fix merge.dir in {}",
            m.dir,
            settings.path.display()
        ),
        11 => Err(anyhow!(
            "{who}: {} is not writable by {}; fix its permissions or merge.user",
            m.dir,
            m.login.user
        ))
        .context(crate::error::Code::Transfer),
        12 => {
            let md5 = out
                .stdout
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            Ok(Prepared::Exists(session, md5))
        }
        13 => bail!("{who}: md5sum is not installed on the server (coreutils)"),
        14 => bail!(
            "{who}: cannot create the temp dir in {}: {}",
            m.dir,
            out.stderr.trim()
        ),
        s => bail!(
            "{who}: preparing {} failed (exit {s}): {}",
            m.dir,
            out.stderr.trim()
        ),
    }
}

/// Prints `part <n>.part <size> <md5>` for every part in the current directory.
const LIST_PARTS: &str = "for f in *.part; do\n\
       [ -f \"$f\" ] || continue\n\
       s=$(wc -c < \"$f\") && m=$(md5sum < \"$f\") && echo \"part $f $s ${m%% *}\"\n\
     done\n";

/// After a whole-file mismatch: removes every part whose size or MD5 on the server is
/// not what `expected` (index -> (size, md5)) says, so a re-run sends exactly those.
/// Returns how many were removed.
pub fn remove_bad_parts(
    session: &Session,
    dir: &str,
    upload_id: &str,
    expected: &[(u64, String)],
) -> Result<usize> {
    let tmp = sh(&format!(
        "{}/.relayup-{upload_id}",
        dir.trim_end_matches('/')
    ));
    let out = ssh::run(session, &format!("cd -- {tmp} || exit 1\n{LIST_PARTS}"))?;
    if out.status != 0 {
        bail!(
            "listing the parts on the server failed: {}",
            out.stderr.trim()
        );
    }
    let good: std::collections::HashSet<usize> = parse_parts(&out.stdout)
        .into_iter()
        .filter(|p| {
            expected
                .get(p.index)
                .is_some_and(|(size, md5)| *size == p.size && *md5 == p.md5)
        })
        .map(|p| p.index)
        .collect();
    let bad: Vec<String> = (0..expected.len())
        .filter(|i| !good.contains(i))
        .map(|i| sh(&format!("{i}.part")))
        .collect();
    if !bad.is_empty() {
        let script = format!("cd -- {tmp} && rm -f -- {} merged.tmp", bad.join(" "));
        let out = ssh::run(session, &script)?;
        if out.status != 0 {
            bail!(
                "removing corrupt parts on the server failed: {}",
                out.stderr.trim()
            );
        }
    }
    Ok(bad.len())
}

/// Parses `part <n>.part <size> <md5>` lines; anything else is ignored.
fn parse_parts(out: &str) -> Vec<ServerPart> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            if f.next()? != "part" {
                return None;
            }
            let index = f.next()?.strip_suffix(".part")?.parse().ok()?;
            let size = f.next()?.parse().ok()?;
            let md5 = f.next()?;
            (md5.len() == 32).then(|| ServerPart {
                index,
                size,
                md5: md5.to_string(),
            })
        })
        .collect()
}

/// Removes the temp dir if it is empty (a send that stopped before any part landed).
pub fn remove_if_empty(session: &Session, dir: &str, upload_id: &str) {
    let script = format!(
        "cd -- {} && rmdir -- {} 2>/dev/null",
        sh(dir),
        sh(&format!(".relayup-{upload_id}"))
    );
    let _ = ssh::run(session, &script);
}

/// Creates an empty temp dir for `upload_id` (the `peers check` rate probe).
pub fn create_temp(session: &Session, dir: &str, upload_id: &str) -> Result<()> {
    let script = format!(
        "cd -- {} && mkdir -m 700 -- {}",
        sh(dir),
        sh(&format!(".relayup-{upload_id}"))
    );
    let out = ssh::run(session, &script)?;
    if out.status != 0 {
        bail!(
            "creating {dir}/.relayup-{upload_id} failed: {}",
            out.stderr.trim()
        );
    }
    Ok(())
}

/// Removes an upload's temp dir on the server (`relayup clean`).
pub fn remove_temp(session: &Session, dir: &str, upload_id: &str) -> Result<()> {
    let script = format!(
        "cd -- {} && rm -rf -- {}",
        sh(dir),
        sh(&format!(".relayup-{upload_id}"))
    );
    let out = ssh::run(session, &script)?;
    if out.status != 0 {
        bail!(
            "removing {dir}/.relayup-{upload_id} failed: {}",
            out.stderr.trim()
        );
    }
    Ok(())
}

/// Appends parts in order on the server while the transfer goes on.
pub struct Feeder {
    tx: Sender<usize>,
    handle: JoinHandle<Result<(Session, String, u64)>>,
}

impl Feeder {
    pub fn start(
        session: Session,
        dir: &str,
        upload_id: &str,
        parts: usize,
        size: u64,
    ) -> Result<(Feeder, Sender<usize>)> {
        let tmp = format!("{}/.relayup-{upload_id}", dir.trim_end_matches('/'));
        // Names come from us (`<n>.part`), one per line, in index order.
        let script = format!(
            "cd -- {} || exit 1\n\
             while IFS= read -r n; do cat -- \"$n\" || exit 1; done | tee merged.tmp | md5sum\n\
             wc -c < merged.tmp\n",
            sh(&tmp)
        );
        let mut ch = session
            .channel_session()
            .context("opening the merge channel")?;
        ch.exec(&format!("sh -c {}", sh(&script)))
            .context("starting the merge")?;
        let (tx, rx): (Sender<usize>, Receiver<usize>) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || -> Result<(Session, String, u64)> {
            let mut ready = BTreeSet::new();
            let mut next = 0usize;
            // Stop as soon as every part is in: the senders may outlive the transfer.
            while next < parts {
                let Ok(index) = rx.recv() else { break };
                ready.insert(index);
                while ready.remove(&next) {
                    ch.write_all(format!("{next}.part\n").as_bytes())
                        .context("feeding the merge on the server")?;
                    next += 1;
                }
            }
            if next != parts {
                bail!("merge stopped: only {next} of {parts} parts arrived");
            }
            ch.send_eof()?;
            // The server still has to append the parts that came last: allow for a slow disk.
            let secs = (size / (20 << 20)).max(120);
            session.set_timeout((secs * 1000).min(u32::MAX as u64) as u32);
            let mut out = String::new();
            let mut err = String::new();
            ch.read_to_string(&mut out)
                .context("reading the merge result")?;
            ch.stderr().read_to_string(&mut err).ok();
            ch.wait_close().ok();
            let mut lines = out.lines();
            let md5 = lines
                .next()
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_default()
                .to_string();
            let merged_size: u64 = lines
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(u64::MAX);
            if md5.len() != 32 {
                bail!("merge on the server failed: {}", err.trim());
            }
            if !err.trim().is_empty() {
                bail!("merge on the server failed: {}", err.trim());
            }
            session.set_timeout(ssh::io_timeout().as_millis() as u32);
            Ok((session, md5, merged_size))
        });
        Ok((
            Feeder {
                tx: tx.clone(),
                handle,
            },
            tx,
        ))
    }

    /// Waits for the last parts to be appended; returns the session, the server's MD5
    /// and size of the merged file.
    pub fn finish(self) -> Result<(Session, String, u64)> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| anyhow!("merge thread panicked"))?
    }
}

/// Moves the verified file into place and removes the temp dir. The removal runs in
/// the background on the server: freeing a file's worth of parts took ~0.4 s of a
/// 13 s send in the lab, and the parts are of no use once the file is in place. The
/// dir is renamed first, so a new send of the same file never meets it.
pub fn commit(
    session: &Session,
    dir: &str,
    upload_id: &str,
    dest: &str,
    overwrite: bool,
) -> Result<()> {
    let tmp = format!(".relayup-{upload_id}");
    let script = format!(
        "cd -- {dir} || exit 1\n\
         if [ -e {dest} ] && [ {ow} != 1 ]; then exit 12; fi\n\
         mv -f -- {merged} {dest} || exit 1\n\
         trash={tmp}.done.$$\n\
         mv -- {tmp} \"$trash\" && {{ rm -rf -- \"$trash\" </dev/null >/dev/null 2>&1 & }}\n",
        dir = sh(dir),
        dest = sh(dest),
        ow = u8::from(overwrite),
        merged = sh(&format!("{tmp}/merged.tmp")),
        tmp = sh(&tmp),
    );
    let out = ssh::run(session, &script)?;
    match out.status {
        0 => Ok(()),
        12 => Err(anyhow!(
            "{dir}/{dest} appeared on the server during the send; pass --overwrite to replace it"
        ))
        .context(crate::error::Code::Usage),
        s => bail!(
            "moving the merged file into place failed (exit {s}): {}",
            out.stderr.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_part_listing() {
        let out = "part 0.part 10 0123456789abcdef0123456789abcdef\npart x.part 1 0123456789abcdef0123456789abcdef\njunk\npart 7.part 5 short\npart 12.part 0 d41d8cd98f00b204e9800998ecf8427e\n";
        assert_eq!(
            parse_parts(out),
            vec![
                ServerPart {
                    index: 0,
                    size: 10,
                    md5: "0123456789abcdef0123456789abcdef".into()
                },
                ServerPart {
                    index: 12,
                    size: 0,
                    md5: "d41d8cd98f00b204e9800998ecf8427e".into()
                },
            ]
        );
    }
}
