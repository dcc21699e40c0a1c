//! The server side of the end: over the `[merge]` SSH login, parts are appended to one
//! temp file in index order *as they arrive* and hashed in the same pass, so only the
//! last part is left to merge when the transfer ends. Then the MD5 is compared with the
//! source's and the file is renamed into place.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::Session;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use crate::config::Settings;
use crate::error::Code;
use crate::remote::quote::sh;
use crate::remote::ssh::{self, Trust};
use crate::send::lock::{Ids, Owner};
use crate::server::names::{self, merged as merged_name, temp_dir_name as temp_name};

use crate::send::hashes::Hashes;
use crate::send::source::Source;
pub use crate::server::assembly::ServerPart;
use crate::server::assembly::{Assembled, Assembly, Early, Existing};
use std::sync::Arc;

/// What pre-flight found on the server.
pub enum Prepared {
    /// Ready: the temp dir exists, this run holds its lock, and these parts are
    /// already in it.
    Ready(AppendMerge),
    /// The destination exists (and `--overwrite` was not given); its MD5.
    Exists(Session, String),
}

/// The append-merge [`Assembly`]: a prepared temp dir, locked for this run, whose
/// parts are appended in order over the merge login as they arrive.
pub struct AppendMerge {
    session: Session,
    wire: ssh::Wire,
    /// Held until dropped: the server-side lock of this upload's temp dir.
    _lock: ServerLock,
    /// Parts an earlier run left complete.
    parts: Vec<ServerPart>,
    /// Free bytes in the upload directory, if `df` could tell.
    free: Option<u64>,
    place: RunPlace,
    feeder: Option<Feeder>,
    /// Each file's name on the server, in the layout's order.
    dests: Vec<String>,
}

/// Where a run's files are on the server: `merge.dir`, the upload id (which names the
/// temp dir) and the run's id (which names its merged file).
pub struct RunPlace {
    pub dir: String,
    pub upload_id: String,
    pub run: String,
}

impl Assembly for AppendMerge {
    /// Parts an earlier run left complete in the temp dir: same length as planned and
    /// the same MD5 as that range of the source (hashed here, so the server is trusted
    /// only for what it can prove).
    fn existing(&mut self, files: &[(&str, u64)], hash: bool) -> Result<Vec<Existing>> {
        existing(&self.session, &self.place.dir, files, hash)
    }

    fn abandon(&mut self) {
        let script = format!(
            "cd -- {} || exit 1\n\
             [ -z \"$(ls -A -- {tmp} | grep -v -x -e lock -e owner)\" ] && rm -rf -- {tmp}",
            sh(&self.place.dir),
            tmp = sh(&temp_name(&self.place.upload_id)),
        );
        let _ = ssh::run(&self.session, &script);
    }

    fn resumable(
        &mut self,
        plan: &crate::send::plan::Plan,
        source: &Source,
        _: &std::collections::BTreeSet<usize>,
    ) -> Result<std::collections::HashSet<usize>> {
        let mut done = std::collections::HashSet::new();
        for sp in &self.parts {
            let Some(part) = plan.parts.get(sp.index) else {
                continue;
            };
            if part.len == sp.size && source.md5_range(part.offset, part.len)? == sp.md5 {
                done.insert(part.index);
            }
        }
        Ok(done)
    }

    fn free(&self) -> Option<u64> {
        self.free
    }

    /// The parts still to come and the merged file side by side.
    fn space_needed(&self, size: u64, there: u64) -> u64 {
        size.saturating_sub(there) + size
    }

    fn start(&mut self, layout: crate::server::assembly::Layout) -> Result<Sender<usize>> {
        let files = MergeList::of(&layout.source, &layout.parts, &self.place.run);
        self.dests = layout.source.files.iter().map(|f| f.dest.clone()).collect();
        let trailer = Trailer {
            hashes: layout.hashes.clone(),
            source: layout.source.clone(),
            early: layout.early,
            published: layout.published.clone(),
        };
        let (feeder, tx) = Feeder::start(&self.session, &self.wire, &self.place, files, trailer)?;
        self.feeder = Some(feeder);
        Ok(tx)
    }

    fn finish(&mut self) -> Result<Vec<Assembled>> {
        self.feeder
            .take()
            .ok_or_else(|| anyhow!("the merge was never started"))?
            .finish()
    }

    /// Each part's size and MD5, hashed from the source, against the part files.
    fn remove_bad(&self, plan: &crate::send::plan::Plan, source: &Source) -> Result<Vec<usize>> {
        let expected = plan
            .parts
            .iter()
            .map(|p| Ok((p.len, source.md5_range(p.offset, p.len)?)))
            .collect::<Result<Vec<_>>>()?;
        let bad = remove_bad_parts(
            &self.session,
            &self.place.dir,
            &self.place.upload_id,
            &expected,
        )?;
        // The parts of files the server had already were never sent.
        Ok(bad
            .into_iter()
            .filter(|&i| !source.part_skipped(&plan.parts[i]))
            .collect())
    }

    fn publish(&mut self, files: &[(usize, Assembled)], overwrite: bool, last: bool) -> Result<()> {
        let list: Vec<(&Assembled, &str)> = files
            .iter()
            .map(|(k, f)| (f, self.dests[*k].as_str()))
            .collect();
        commit(&self.session, &self.place, &list, overwrite, last)
    }
}

/// The channel whose remote shell holds the `flock` on the temp dir's lock file. The
/// lock ends when this is dropped, or when the connection dies with this process.
pub struct ServerLock {
    channel: Option<ssh2::Channel>,
}

impl Drop for ServerLock {
    fn drop(&mut self) {
        if let Some(mut ch) = self.channel.take() {
            let _ = ch.send_eof();
            let _ = ch.close();
        }
    }
}

/// Exit statuses of the server-side scripts, one meaning each.
mod status {
    pub const NO_DIR: i32 = 10;
    pub const NOT_WRITABLE: i32 = 11;
    pub const EXISTS: i32 = 12;
    pub const NO_TOOL: i32 = 13;
    pub const NO_TEMP: i32 = 14;
    pub const DEST_SYMLINK: i32 = 16;
    pub const DEST_DIR: i32 = 17;
    pub const DEST_SPECIAL: i32 = 18;
    pub const CHANGED: i32 = 19;
    pub const TEMP_NOT_OURS: i32 = 21;
    pub const BUSY: i32 = 23;
}

/// Shell lines that exit with [`status`] codes when `dest` (quoted) is there but is
/// not a regular file: relayup only ever replaces a regular file.
fn dest_type_checks(dest: &str) -> String {
    format!(
        "if [ -L {dest} ]; then exit {}; elif [ -d {dest} ]; then exit {}; \
         elif [ -e {dest} ] && [ ! -f {dest} ]; then exit {}; fi",
        status::DEST_SYMLINK,
        status::DEST_DIR,
        status::DEST_SPECIAL
    )
}

/// Shell functions that put a hashed file in place:
/// - `place M DEST OVERWRITE` renames `M` to `DEST` if `DEST` is free or (with
///   OVERWRITE 1) a regular file, and returns a [`status`] code otherwise. The rename
///   never goes into a directory or through a symlink (`mv -T`), and without
///   OVERWRITE never replaces anything (`ln`, which fails on an existing name); after
///   an `ln`, `linked` names `M`, which the caller removes (a batch removes all of
///   them with one `rm`).
/// - `publish M STAT DEST OVERWRITE` does it if `M` still has the `inode size mtime`
///   STAT it was hashed with, and removes what `place` linked.
fn publish_fn() -> String {
    format!(
        "place() {{\n\
           linked=\n\
           if [ -L \"$2\" ]; then return {link}; elif [ -d \"$2\" ]; then return {dir}; \
           elif [ -e \"$2\" ] && [ ! -f \"$2\" ]; then return {special}; fi\n\
           if [ \"$3\" = 1 ]; then mv -f -T -- \"$1\" \"$2\" || return 1\n\
           elif ln -T -- \"$1\" \"$2\" 2>/dev/null; then linked=$1\n\
           elif [ -e \"$2\" ] || [ -L \"$2\" ]; then return {exists}\n\
           else mv -T -- \"$1\" \"$2\" || return 1; fi\n\
         }}\n\
         publish() {{\n\
           [ \"$(stat -c '%i %s %Y' -- \"$1\")\" = \"$2\" ] || return {changed}\n\
           place \"$1\" \"$3\" \"$4\" || return $?\n\
           [ -z \"$linked\" ] || rm -f -- \"$linked\"\n\
         }}",
        changed = status::CHANGED,
        link = status::DEST_SYMLINK,
        dir = status::DEST_DIR,
        special = status::DEST_SPECIAL,
        exists = status::EXISTS,
    )
}

/// Shell lines that make sure `tmp` (quoted) is a directory of this account, not a
/// symlink, mode 0700, creating it if it is missing; exit [`status::TEMP_NOT_OURS`]
/// otherwise.
fn temp_dir_checks(tmp: &str) -> String {
    format!(
        "mkdir -m 700 -- {tmp} 2>/dev/null\n\
         if [ -L {tmp} ] || [ ! -d {tmp} ] || [ ! -O {tmp} ]; then exit {e}; fi\n\
         case $(ls -ld -- {tmp}) in drwx------*) ;; *) exit {e};; esac",
        e = status::TEMP_NOT_OURS
    )
}

/// Shell lines that take the `flock` on `tmp`/lock (fd 9) for this run and write its
/// owner, or print `busy <owner line>` and exit [`status::BUSY`]. The process group
/// is recorded so that a later run on the owner's machine can end a holder whose
/// client is known dead (see [`take_over`]).
fn lock_lines(tmp: &str, owner: &Owner) -> String {
    format!(
        "command -v flock >/dev/null 2>&1 || {{ echo 'flock (util-linux) is not installed' >&2; exit {no_tool}; }}\n\
         exec 9>>{tmp}/lock || exit {no_temp}\n\
         if ! flock -n 9; then printf 'busy %s\\n' \"$(cat {tmp}/owner 2>/dev/null)\"; exit {busy}; fi\n\
         printf '%s %s\\n' {owner} \"$(ps -o pgid= -p $$ | tr -d ' ')\" > {tmp}/owner",
        no_tool = status::NO_TOOL,
        no_temp = status::NO_TEMP,
        busy = status::BUSY,
        owner = sh(&owner.to_line()),
    )
}

/// The merge login: an SSH session on the server as `merge.user`.
pub fn login(settings: &Settings) -> Result<Session> {
    login_wired(settings).map(|(session, _)| session)
}

/// [`login`], with the session's socket (see [`ssh::Wire`]).
fn login_wired(settings: &Settings) -> Result<(Session, ssh::Wire)> {
    ssh::connect_wired(
        &settings.merge_login()?.login,
        Trust::KnownHosts(&settings.known_hosts),
        None,
        settings.io_timeout,
    )
}

/// Checks the merge login and the upload directory and the destination, creates the
/// temp dir (or checks the one there is ours), locks it for this run, and lists the
/// parts an earlier run left there (with their size and MD5, computed on the server).
/// Also removes, in the background, finished sends' temp dirs whose background
/// removal never ran to the end (see [`commit`]; a server reboot, say).
/// `dest` is `None` for a release, whose destinations are checked one by one
/// ([`existing`]) once the lock is held.
pub fn prepare(
    settings: &Settings,
    dest: Option<&str>,
    ids: &Ids,
    overwrite: bool,
) -> Result<Prepared> {
    let (upload_id, run) = (ids.upload.as_str(), ids.run.as_str());
    let m = settings.merge_login()?;
    let (session, wire) = login_wired(settings)?;
    let script = preflight_script(&m.dir, dest, upload_id, overwrite);
    let who = m.login.describe();
    let mut ch = ssh::start_script(&session, Some(&wire), &script, true)?;
    let (ready, lines) = read_preflight(&mut ch, &who)?;
    if ready {
        return Ok(Prepared::Ready(AppendMerge {
            session,
            wire,
            _lock: ServerLock { channel: Some(ch) },
            parts: parse_parts(&lines.join("\n")),
            free: free_bytes(&lines),
            place: RunPlace {
                dir: m.dir.clone(),
                upload_id: upload_id.to_string(),
                run: run.to_string(),
            },
            feeder: None,
            dests: Vec::new(),
        }));
    }
    ch.wait_close().ok();
    let code = ch.exit_status().unwrap_or(-1);
    let md5 = preflight_stopped(settings, dest.unwrap_or_default(), upload_id, code, &lines)?;
    Ok(Prepared::Exists(session, md5))
}

/// The pre-flight script: checks `dir` and `dest`, creates and locks the temp dir,
/// prints the free space and the parts there, then `ready`, and holds the lock (its
/// shell waits on stdin) until the run ends. Stops with a [`status`] code otherwise.
fn preflight_script(dir: &str, dest: Option<&str>, upload_id: &str, overwrite: bool) -> String {
    let tmp = sh(&temp_name(upload_id));
    let me = Owner::me();
    let dest_checks = match dest {
        Some(dest) => format!(
            "{}\n\
             if [ -e {dest} ] && [ {ow} != 1 ]; then printf 'exists %s\\n' \"$(md5sum < {dest})\"; exit {exists}; fi",
            dest_type_checks(&sh(dest)),
            dest = sh(dest),
            ow = u8::from(overwrite),
            exists = status::EXISTS,
        ),
        None => String::new(),
    };
    format!(
        "cd -- {dir} 2>/dev/null || exit {no_dir}\n\
         [ -w . ] || exit {not_writable}\n\
         {{ rm -rf -- .relayup-*.done.* </dev/null >/dev/null 2>&1 & }}\n\
         command -v md5sum >/dev/null 2>&1 || {{ echo 'md5sum (coreutils) is not installed' >&2; exit {no_tool}; }}\n\
         {dest_checks}\n\
         {temp_checks}\n\
         {lock}\n\
         rm -f -- {tmp}/merged.*.tmp {tmp}/*.part.*\n\
         df -Pk . 2>/dev/null | awk 'NR == 2 {{ print \"free\", $4 }}'\n\
         cd -- {tmp} || exit {no_temp}\n\
         {LIST_PARTS}\
         echo ready\n\
         exec cat >/dev/null",
        dir = sh(dir),
        temp_checks = temp_dir_checks(&tmp),
        lock = lock_lines(&tmp, &me),
        no_dir = status::NO_DIR,
        not_writable = status::NOT_WRITABLE,
        no_tool = status::NO_TOOL,
        no_temp = status::NO_TEMP,
    )
}

/// Reads the pre-flight's lines up to `ready`: whether it got there, and the lines
/// before (all of them, if it stopped).
fn read_preflight(ch: &mut ssh2::Channel, who: &str) -> Result<(bool, Vec<String>)> {
    let mut reader = std::io::BufReader::new(ch);
    let mut lines = Vec::new();
    let ready = loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line)
            .with_context(|| format!("{who}: reading the pre-flight on the server"))?;
        if n == 0 {
            break false;
        }
        let line = line.trim_end().to_string();
        if line == "ready" {
            break true;
        }
        lines.push(line);
    };
    Ok((ready, lines))
}

/// The free bytes the pre-flight's `free` line reports.
fn free_bytes(lines: &[String]) -> Option<u64> {
    // `df -Pk` counts KiB (awk would print a product in floating point).
    lines
        .iter()
        .find_map(|l| l.strip_prefix("free ")?.trim().parse::<u64>().ok())
        .map(|kib| kib.saturating_mul(1024))
}

/// The pre-flight stopped before `ready` with exit status `code`, having printed
/// `lines`: the destination's MD5 if the destination is there (and `--overwrite` was
/// not given), or the error that says what stopped it.
fn preflight_stopped(
    settings: &Settings,
    dest: &str,
    upload_id: &str,
    code: i32,
    lines: &[String],
) -> Result<String> {
    let m = settings.merge_login()?;
    let who = m.login.describe();
    let diag: String = lines
        .iter()
        .filter(|l| !l.starts_with("part ") && !l.starts_with("free "))
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let place = format!("{}/{dest}", m.dir.trim_end_matches('/'));
    let temp = crate::server::names::temp_dir(&m.dir, upload_id);
    match code {
        status::NO_DIR => Err(anyhow!(
            "{who}: merge.dir {} does not exist there; fix merge.dir in {}",
            m.dir,
            settings.path.display()
        ))
        .context(Code::Usage),
        status::NOT_WRITABLE => Err(anyhow!(
            "{who}: {} is not writable by {}; fix its permissions or merge.user",
            m.dir,
            m.login.user
        ))
        .context(Code::Transfer),
        status::EXISTS => {
            let md5 = lines
                .iter()
                .find_map(|l| l.strip_prefix("exists "))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_default()
                .to_string();
            if md5.len() != 32 {
                bail!("{who}: cannot read {place} to compare it: {diag}");
            }
            Ok(md5)
        }
        status::NO_TOOL => bail!("{who}: {diag}; relayup needs it on the server"),
        status::DEST_SYMLINK | status::DEST_DIR | status::DEST_SPECIAL => {
            Err(anyhow!("{}", dest_type_message(code, &place))).context(Code::Usage)
        }
        status::TEMP_NOT_OURS => Err(anyhow!(
            "{who}: {temp} is not a directory of {} with mode 0700 (a symlink, another account's, or open to others); \
             relayup writes nothing into it: remove it on the server, then send again",
            m.login.user
        ))
        .context(Code::Transfer),
        status::BUSY => {
            let line = lines.iter().find_map(|l| l.strip_prefix("busy "));
            Err(anyhow::Error::new(Busy::read(line.unwrap_or_default())).context(Code::Busy))
        }
        status::NO_TEMP => bail!("{who}: cannot create or lock the temp dir {temp}: {diag}"),
        s => bail!("{who}: preparing {} failed (exit {s}): {diag}", m.dir),
    }
}

/// The server lock is held by another run: its owner line (if readable) and the
/// process group of the shell that holds the lock there.
#[derive(Debug, thiserror::Error)]
#[error("{}", crate::send::lock::busy(.0.as_ref(), "lock on the server"))]
pub struct Busy(pub Option<Owner>, pub Option<u32>);

impl Busy {
    /// From the server's `owner` file as the scripts print it: the owner line, then
    /// the holder's process group. Either may be missing or unreadable.
    fn read(line: &str) -> Busy {
        // No group after the owner line (`ps` missing there): the whole is the line.
        if let Some(o) = Owner::parse(line) {
            return Busy(Some(o), None);
        }
        let (owner, group) = line.rsplit_once(' ').unwrap_or((line, ""));
        Busy(Owner::parse(owner), group.parse().ok())
    }
}

/// The lock on the server is held by a run of this machine that is dead (its
/// connection lingers on the server: the network went away before it could close).
/// Ends that holder's processes there, if they are still the ones `busy` names.
pub fn take_over(settings: &Settings, upload_id: &str, busy: &Busy) -> Result<()> {
    let (Some(owner), Some(group)) = (&busy.0, busy.1) else {
        bail!("the lock's owner is unknown");
    };
    if group <= 1 {
        bail!("bad process group {group}");
    }
    let m = settings.merge_login()?;
    let session = login(settings)?;
    let tmp = sh(&temp_name(upload_id));
    let script = format!(
        "cd -- {dir} || exit 1\n\
         [ \"$(cat {tmp}/owner 2>/dev/null)\" = {line} ] || exit 0\n\
         kill -15 -{group} 2>/dev/null\n\
         i=0; while [ $i -lt 50 ]; do flock -n {tmp}/lock true && exit 0; sleep 0.1; i=$((i + 1)); done",
        dir = sh(&m.dir),
        line = sh(&format!("{} {group}", owner.to_line())),
    );
    ssh::run(&session, &script)?;
    Ok(())
}

/// What the user reads when the destination is not a regular file.
fn dest_type_message(code: i32, place: &str) -> String {
    let what = match code {
        status::DEST_SYMLINK => "a symbolic link",
        status::DEST_DIR => "a directory",
        _ => "not a regular file",
    };
    format!(
        "{place} on the server is {what}; relayup only ever replaces a regular file (--overwrite too): \
         remove it there or choose another --dest"
    )
}

/// Prints `part <n>.part <size> <md5>` for every part in the current directory.
const LIST_PARTS: &str = "for f in *.part; do\n\
       [ -f \"$f\" ] || continue\n\
       s=$(wc -c < \"$f\") && m=$(md5sum < \"$f\") && echo \"part $f $s ${m%% *}\"\n\
     done\n";

/// After a whole-file mismatch: removes every part whose size or MD5 on the server is
/// not what `expected` (index -> (size, md5)) says, so a re-run sends exactly those.
/// Returns the indexes of the parts removed.
pub fn remove_bad_parts(
    session: &Session,
    dir: &str,
    upload_id: &str,
    expected: &[(u64, String)],
) -> Result<Vec<usize>> {
    let tmp = sh(&crate::server::names::temp_dir(dir, upload_id));
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
    let bad: Vec<usize> = (0..expected.len()).filter(|i| !good.contains(i)).collect();
    if !bad.is_empty() {
        let names: Vec<String> = bad
            .iter()
            .map(|&i| sh(&crate::server::names::part(i)))
            .collect();
        let script = format!("cd -- {tmp} && rm -f -- {} merged.*.tmp", names.join(" "));
        let out = ssh::run(session, &script)?;
        if out.status != 0 {
            bail!(
                "removing corrupt parts on the server failed: {}",
                out.stderr.trim()
            );
        }
    }
    Ok(bad)
}

/// Parses `part <n>.part <size> <md5>` lines; anything else is ignored.
fn parse_parts(out: &str) -> Vec<ServerPart> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            if f.next()? != "part" {
                return None;
            }
            let index = crate::server::names::part_index(f.next()?)?;
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
        sh(&temp_name(upload_id))
    );
    let _ = ssh::run(session, &script);
}

/// Creates an empty temp dir for `upload_id` (the `peers check` rate probe).
pub fn create_temp(session: &Session, dir: &str, upload_id: &str) -> Result<()> {
    let script = format!(
        "cd -- {} && mkdir -m 700 -- {}",
        sh(dir),
        sh(&temp_name(upload_id))
    );
    let out = ssh::run(session, &script)?;
    if out.status != 0 {
        bail!(
            "creating {} failed: {}",
            crate::server::names::temp_dir(dir, upload_id),
            out.stderr.trim()
        );
    }
    Ok(())
}

/// Removes an upload's temp dir on the server (`relayup clean`), unless a running send
/// holds its lock.
pub fn remove_temp(session: &Session, dir: &str, upload_id: &str) -> Result<()> {
    let tmp = sh(&temp_name(upload_id));
    let script = format!(
        "cd -- {} || exit 1\n\
         [ -e {tmp} ] || [ -L {tmp} ] || exit 0\n\
         if [ -d {tmp} ] && [ ! -L {tmp} ] && command -v flock >/dev/null 2>&1; then\n\
           exec 9>>{tmp}/lock && {{ flock -n 9 || {{ printf 'busy %s\\n' \"$(cat {tmp}/owner 2>/dev/null)\"; exit {busy}; }}; }}\n\
         fi\n\
         rm -rf -- {tmp}",
        sh(dir),
        busy = status::BUSY,
    );
    let out = ssh::run(session, &script)?;
    match out.status {
        0 => Ok(()),
        status::BUSY => {
            let line = out.stdout.trim().strip_prefix("busy ").unwrap_or_default();
            Err(anyhow::Error::new(Busy::read(line)).context(Code::Busy))
        }
        _ => bail!(
            "removing {dir}/{} failed: {}",
            temp_name(upload_id),
            out.stderr.trim()
        ),
    }
}

/// Appends parts in order on the server while the transfer goes on.
pub struct Feeder {
    tx: Sender<usize>,
    handle: JoinHandle<Result<Vec<Assembled>>>,
}

/// How the merge makes one file of the send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Making {
    /// Its parts are appended, in order, into this file.
    Append(String),
    /// Its only part is hashed and published where it lies, not copied.
    InPlace,
    /// It shares its part with other small files: it is cut out of it into this file.
    Cut(String),
}

/// One file's parts as the merge takes them: its index, its parts in order, and how
/// the merge makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileParts {
    pub file: usize,
    pub parts: Vec<usize>,
    pub making: Making,
}

/// What the merge makes of a send: its files, and the parts that hold several small
/// files, each with the lengths and the names the merge cuts them into (every file
/// of the part, also those the server has already, in order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeList {
    pub files: Vec<FileParts>,
    pub cuts: BTreeMap<usize, Vec<(u64, String)>>,
}

impl MergeList {
    /// The files of `source` and the parts (of `parts`) in each. One file's send is
    /// merged into `merged.<run>.tmp`; a release's file of several parts (or none)
    /// into `merged.<run>.<k>.tmp`, a file that shares its part with others is cut
    /// out of it into `cut.<run>.<k>.tmp`.
    pub fn of(source: &Source, parts: &[crate::send::plan::Part], run: &str) -> MergeList {
        let mut files: Vec<FileParts> = (0..source.files.len())
            .map(|k| FileParts {
                file: k,
                parts: Vec::new(),
                making: Making::InPlace,
            })
            .collect();
        let mut cuts = BTreeMap::new();
        for p in parts {
            let within = source.files_in(p);
            if within.len() > 1 {
                let pieces = within
                    .clone()
                    .map(|k| (source.files[k].size(), names::cut_file(run, k)))
                    .collect();
                cuts.insert(p.index, pieces);
            }
            for k in within {
                files[k].parts.push(p.index);
            }
        }
        files.retain(|f| !source.files[f.file].skip);
        for f in &mut files {
            f.making = if !source.is_release() {
                Making::Append(merged_name(run))
            } else if f.parts.len() != 1 {
                Making::Append(names::merged_file(run, f.file))
            } else if cuts.contains_key(&f.parts[0]) {
                Making::Cut(names::cut_file(run, f.file))
            } else {
                Making::InPlace
            };
        }
        MergeList { files, cuts }
    }
}

impl Feeder {
    /// Starts the merge of `files` (`size` bytes in all) on its own channel of
    /// `session`. The merged files are created here and must not exist.
    pub fn start(
        session: &Session,
        wire: &ssh::Wire,
        place: &RunPlace,
        files: MergeList,
        trailer: Trailer,
    ) -> Result<(Feeder, Sender<usize>)> {
        let mut ch = start_merge(session, wire, place)?;
        let session = session.clone();
        let (tx, rx): (Sender<usize>, Receiver<usize>) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || -> Result<Vec<Assembled>> {
            let mut heard = Heard::default();
            let mut listen = |ch: &mut ssh2::Channel| {
                if trailer.early.is_some() {
                    heard.listen(ch, &session, &trailer.published);
                }
            };
            feed(&mut ch, &rx, &files, &trailer, &mut listen)?;
            merge_result(&mut ch, &session, &trailer.source, heard)
        });
        Ok((
            Feeder {
                tx: tx.clone(),
                handle,
            },
            tx,
        ))
    }

    /// Waits for the last parts to be appended; returns the server's MD5, size and
    /// name of every merged file.
    pub fn finish(self) -> Result<Vec<Assembled>> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| anyhow!("merge thread panicked"))?
    }
}

/// The merge script's part for a batch of `$n` files of one part each (see
/// [`batch_lines`]): one `md5sum` and one `stat` for them all, then each file whose
/// MD5 is the source's put in place by `place` (see [`publish_fn`]) and the linked
/// names removed by one `rm`: a file costs its `ln` only (a few processes per file
/// made 10,000 small files take a minute on the server).
fn batch_script() -> String {
    format!(
        "keys=; names=; i=0\n\
         while [ \"$i\" -lt \"$n\" ] && IFS=' ' read -r k2 p w o && IFS= read -r d; do\n\
           eval \"p_$k2=\\$p w_$k2=\\$w o_$k2=\\$o d_$k2=\\$d\"\n\
           keys=\"$keys $k2\"; names=\"$names $p\"; i=$((i + 1))\n\
         done\n\
         md5sum -- $names > .batch.md5 || exit 1\n\
         stat -c '%i %s %Y' -- $names > .batch.stat || exit 1\n\
         pub=; pubnames=\n\
         {{ for k2 in $keys; do\n\
             IFS=' ' read -r h f <&3; IFS= read -r st <&4\n\
             eval \"p=\\$p_$k2 w=\\$w_$k2 st_$k2=\\$st\"\n\
             printf 'md5 %s %s\\nstat %s %s %s\\n' \"$k2\" \"$h\" \"$k2\" \"$p\" \"$st\"\n\
             if [ \"$w\" = \"$h\" ]; then pub=\"$pub $k2\"; pubnames=\"$pubnames $p\"; fi\n\
           done; }} 3< .batch.md5 4< .batch.stat\n\
         if [ -n \"$pub\" ]; then\n\
           stat -c '%i %s %Y' -- $pubnames > .batch.stat || exit 1\n\
           gone=\n\
           {{ for k2 in $pub; do\n\
               IFS= read -r now <&4\n\
               eval \"p=\\$p_$k2 o=\\$o_$k2 d=../\\$d_$k2 st=\\$st_$k2\"\n\
               if [ \"$now\" != \"$st\" ]; then r={changed}\n\
               else place \"$p\" \"$d\" \"$o\"; r=$?; gone=\"$gone $linked\"; fi\n\
               if [ \"$r\" = 0 ]; then echo \"published $k2\"; else echo \"kept $k2 $r\"; fi\n\
             done; }} 4< .batch.stat\n\
           [ -z \"${{gone# }}\" ] || rm -f -- $gone\n\
         fi",
        changed = status::CHANGED,
    )
}

/// The merge script's part for a part of several small files, `c <count> <part
/// name>` and a line `<length> <name>` for each file in it, in order: each file is
/// cut out of the part into its name (made here, `set -C`), one `head -c` after
/// another on one open file (a utility that stops before the end of a seekable
/// input leaves its offset just past what it used, as POSIX asks). The part stays:
/// if a file turns out wrong, the part is what is checked and sent again.
const CUT_SCRIPT: &str = "exec 3< \"$m\" || exit 1\n\
    i=0\n\
    while [ \"$i\" -lt \"$n\" ] && IFS=' ' read -r len cn; do\n\
      set -C; head -c \"$len\" <&3 > \"$cn\" || exit 1; set +C\n\
      i=$((i + 1))\n\
    done\n\
    exec 3<&-";

/// Starts the merge script and waits for its `ready`. It reads a header per file,
/// `<k> <parts> <merged name>`, then that many part names as they arrive and the
/// trailer (see [`Trailer`]), or a batch of files of one part (`b <count> -`, see
/// [`batch_lines`]), or a part to cut into small files (see [`CUT_SCRIPT`]); it prints `md5 <k> <md5>` and `stat <k> <name> <inode size
/// mtime>` for each file, then `published <k>` or `kept <k> <status>` for a file it
/// was told to publish.
fn start_merge(session: &Session, wire: &ssh::Wire, place: &RunPlace) -> Result<ssh2::Channel> {
    let tmp = crate::server::names::temp_dir(&place.dir, &place.upload_id);
    // Names come from us (`<n>.part`, `merged.<run>…`). `set -C` creates a merged
    // file only if no other writer has that name. A file of one part is not copied:
    // its part is hashed and published where it lies (in a batch). `tee -a`, not a
    // truncating open of the empty file: on ext4 a file truncated on open is flushed
    // to disk when it is closed (auto_da_alloc), which made the merge's end wait
    // ~150 ms per 300 MiB after the last part.
    let script = format!(
        "cd -- {} || exit 1\n\
         {publish}\n\
         echo ready\n\
         while IFS=' ' read -r k n m; do\n\
           if [ \"$k\" = b ]; then\n\
             {batch}\n\
             continue\n\
           fi\n\
           if [ \"$k\" = c ]; then\n\
             {cut}\n\
             continue\n\
           fi\n\
           set -C; : > \"$m\" || exit 1; set +C\n\
           s=$(i=0; while [ \"$i\" -lt \"$n\" ] && IFS= read -r p; do cat -- \"$p\" || exit 1; i=$((i + 1)); done \
             | tee -a -- \"$m\" | md5sum) || exit 1\n\
           got=${{s%% *}}\n\
           printf 'md5 %s %s\\n' \"$k\" \"$got\"\n\
           st=$(stat -c '%i %s %Y' -- \"$m\")\n\
           printf 'stat %s %s %s\\n' \"$k\" \"$m\" \"$st\"\n\
           IFS=' ' read -r want ow || exit 1\n\
           IFS= read -r d || exit 1\n\
           if [ \"$ow\" != - ] && [ \"$want\" = \"$got\" ]; then\n\
             if publish \"$m\" \"$st\" \"../$d\" \"$ow\"; then echo \"published $k\"; else echo \"kept $k $?\"; fi\n\
           fi\n\
         done\n",
        sh(&tmp),
        publish = publish_fn(),
        batch = batch_script(),
        cut = CUT_SCRIPT,
    );
    let mut ch =
        ssh::start_script(session, Some(wire), &script, true).context("starting the merge")?;
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut ch), &mut first)
        .context("starting the merge")?;
    if first.trim_end() != "ready" {
        bail!("the merge on the server did not start: {}", first.trim());
    }
    Ok(ch)
}

/// What the merge is told after a file's parts: the source's MD5 and whether to
/// publish the file as soon as its merged MD5 is that (`-`: not now).
pub struct Trailer {
    pub hashes: Arc<Hashes>,
    pub source: Arc<Source>,
    pub early: Option<Early>,
    /// Told each file the merge says it published.
    pub published: Sender<usize>,
}

impl Trailer {
    /// The lines after file `k`'s parts: `<md5> <overwrite 0|1>` (or `- -`), then
    /// its destination. Waits for the pass over the source to have hashed the file.
    fn lines(&self, k: usize) -> String {
        format!("{}\n{}\n", self.want(k), self.source.files[k].dest)
    }

    /// `<md5> <overwrite 0|1>`, or `- -` for a file not to publish now.
    fn want(&self, k: usize) -> String {
        let f = &self.source.files[k];
        let publish = self.early.and_then(|e| {
            let md5 = self.hashes.file(k).ok()?;
            // A file that changed since the send started is not published now.
            (crate::send::source::stamp(&f.path).ok() == Some(f.stamp))
                .then(|| format!("{md5} {}", u8::from(e.overwrite)))
        });
        publish.unwrap_or_else(|| "- -".into())
    }
}

/// Files of one part each that the merge takes in one go (see [`start_merge`]).
const BATCH: usize = 256;

/// How often the feed looks for what the merge published while no part comes.
const LISTEN_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// One line of what the merge is fed.
enum Feed {
    /// A file of one part, not copied (file, part, its name in the temp dir): fed in
    /// batches.
    Single(usize, usize, String),
    /// A part of several small files, to cut into them.
    Cut(usize),
    /// A file's header.
    Header(String),
    /// A part's name, fed once the part is in.
    Part(usize),
    /// After file k's parts.
    Trailer(usize),
}

/// What the merge has said while it was being fed.
#[derive(Default)]
struct Heard {
    bytes: Vec<u8>,
    /// How much of it has been read for `published` lines.
    seen: usize,
}

impl Heard {
    /// Takes what the merge has printed so far, without waiting, and tells
    /// `published` of every file it says it published.
    fn listen(&mut self, ch: &mut ssh2::Channel, session: &Session, published: &Sender<usize>) {
        session.set_blocking(false);
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = ch.read(&mut buf) {
            self.bytes.extend_from_slice(&buf[..n]);
        }
        session.set_blocking(true);
        while let Some(end) = self.bytes[self.seen..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.bytes[self.seen..self.seen + end]);
            if let Some(k) = line.strip_prefix("published ").and_then(|k| k.parse().ok()) {
                let _ = published.send(k);
            }
            self.seen += end + 1;
        }
    }
}

/// Hands the merge each file's header, part names and trailer in order as the parts
/// arrive (in any order) on `rx`, files of one part in batches, then ends its input.
/// While it waits for parts, `listen` hears what the merge says.
fn feed(
    ch: &mut ssh2::Channel,
    rx: &Receiver<usize>,
    list: &MergeList,
    trailer: &Trailer,
    listen: &mut dyn FnMut(&mut ssh2::Channel),
) -> Result<()> {
    let mut ready = BTreeSet::new();
    let mut order = feed_order(list).into_iter().peekable();
    let total = list.files.iter().map(|f| f.parts.len()).sum::<usize>();
    let mut out = String::new();
    loop {
        // Everything that can go now: headers, parts that are in, trailers, and the
        // files of one part that are in, together.
        let mut batch = Vec::new();
        while let Some(line) = order.next_if(|l| match l {
            Feed::Part(i) | Feed::Single(_, i, _) | Feed::Cut(i) => ready.contains(i),
            _ => batch.is_empty(),
        }) {
            match line {
                Feed::Single(k, _, name) => {
                    batch.push((k, name));
                    if batch.len() == BATCH {
                        out.push_str(&batch_lines(&batch, trailer));
                        batch.clear();
                    }
                }
                // Before the batch its files are in.
                Feed::Cut(i) => out.push_str(&cut_lines(i, &list.cuts[&i])),
                Feed::Header(h) => out.push_str(&h),
                Feed::Part(i) => {
                    out.push_str(&names::part(i));
                    out.push('\n');
                }
                Feed::Trailer(k) => {
                    // What waits for the hash goes first.
                    ch.write_all(out.as_bytes())
                        .context("feeding the merge on the server")?;
                    out.clear();
                    out.push_str(&trailer.lines(k));
                }
            }
        }
        if !batch.is_empty() {
            out.push_str(&batch_lines(&batch, trailer));
        }
        if !out.is_empty() {
            ch.write_all(out.as_bytes())
                .context("feeding the merge on the server")?;
            out.clear();
        }
        match order.peek() {
            None => break,
            // After a batch: a header or trailer can go at once.
            Some(Feed::Header(_) | Feed::Trailer(_)) => continue,
            Some(_) => {}
        }
        // Stop as soon as every part is in: the senders may outlive the transfer.
        listen(ch);
        let index = loop {
            match rx.recv_timeout(LISTEN_EVERY) {
                Ok(index) => break Some(index),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => listen(ch),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            }
        };
        let Some(index) = index else { break };
        ready.insert(index);
    }
    if let Some(Feed::Part(i) | Feed::Single(_, i, _) | Feed::Cut(i)) = order.peek() {
        bail!(
            "merge stopped: part {i} never arrived ({} of {total} parts did)",
            ready.len()
        );
    }
    ch.send_eof()?;
    Ok(())
}

/// The merge's input for `list`, in order: per file its header, parts and trailer,
/// or its one part (after the cut of that part, for small files that share it).
fn feed_order(list: &MergeList) -> Vec<Feed> {
    let mut cut = BTreeSet::new();
    let mut order = Vec::new();
    for f in &list.files {
        match &f.making {
            Making::InPlace => {
                order.push(Feed::Single(f.file, f.parts[0], names::part(f.parts[0])))
            }
            Making::Cut(name) => {
                let i = f.parts[0];
                if cut.insert(i) {
                    order.push(Feed::Cut(i));
                }
                order.push(Feed::Single(f.file, i, name.clone()));
            }
            Making::Append(merged) => {
                order.push(Feed::Header(format!(
                    "{} {} {merged}\n",
                    f.file,
                    f.parts.len()
                )));
                order.extend(f.parts.iter().map(|&i| Feed::Part(i)));
                order.push(Feed::Trailer(f.file));
            }
        }
    }
    order
}

/// A part of several small files for the merge to cut: `c <count> <part name>`, then
/// `<length> <name>` for each of its files.
fn cut_lines(index: usize, pieces: &[(u64, String)]) -> String {
    let mut out = format!("c {} {}\n", pieces.len(), names::part(index));
    for (len, name) in pieces {
        out.push_str(&format!("{len} {name}\n"));
    }
    out
}

/// A batch of files of one part each for the merge: `b <count> -`, then per file
/// `<k> <name> <md5|-> <overwrite|->` and its destination; the name is its part, or
/// what a part of several files was cut into.
fn batch_lines(batch: &[(usize, String)], trailer: &Trailer) -> String {
    let mut out = format!("b {} -\n", batch.len());
    for (k, name) in batch {
        let k = *k;
        out.push_str(&format!(
            "{k} {name} {}\n{}\n",
            trailer.want(k),
            trailer.source.files[k].dest
        ));
    }
    out
}

/// Waits for the merge of `files` files (`size` bytes) to end and reads each one's
/// MD5 and `stat`.
fn merge_result(
    ch: &mut ssh2::Channel,
    session: &Session,
    source: &Source,
    heard: Heard,
) -> Result<Vec<Assembled>> {
    let size = source.size;
    // The server still has to append the parts that came last: allow for a slow disk.
    let secs = (size / (20 << 20)).max(120);
    let before = session.timeout();
    session.set_timeout((secs * 1000).min(u32::MAX as u64) as u32);
    let mut all = heard.bytes;
    let read = ch.read_to_end(&mut all);
    session.set_timeout(before);
    read.context("reading the merge result")?;
    ch.wait_close().ok();
    let out = String::from_utf8_lossy(&all);
    parse_merged(&out, source).ok_or_else(|| {
        let other: Vec<&str> = out
            .lines()
            .filter(|l| {
                !["md5 ", "stat ", "published ", "kept "]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        anyhow::Error::new(MergeFailed(other.join(" ")))
    })
}

/// The merge's `md5 <k> <md5>` and `stat <k> <name> <inode size mtime>` lines, one
/// pair per file; `None` if any is missing or anything else was printed.
fn parse_merged(out: &str, source: &Source) -> Option<Vec<Assembled>> {
    let files = source.files.len();
    let mut md5s = vec![None; files];
    let mut stats = vec![None; files];
    let mut published = vec![false; files];
    for line in out.lines() {
        let mut f = line.split_whitespace();
        match f.next()? {
            "md5" => {
                let k: usize = f.next()?.parse().ok()?;
                let m = f.next()?;
                (m.len() == 32).then_some(())?;
                *md5s.get_mut(k)? = Some(m.to_string());
            }
            "published" => {
                let k: usize = f.next()?.parse().ok()?;
                *published.get_mut(k)? = true;
            }
            // Left for the publish at the end, which says why.
            "kept" => {}
            "stat" => {
                let k: usize = f.next()?.parse().ok()?;
                let name = f.next()?.to_string();
                let rest: Vec<&str> = f.collect();
                (rest.len() == 3).then_some(())?;
                let size: u64 = rest[1].parse().ok()?;
                *stats.get_mut(k)? = Some((name, rest.join(" "), size));
            }
            _ => return None,
        }
    }
    md5s.into_iter()
        .zip(stats)
        .zip(published)
        .zip(&source.files)
        .map(|(((m, s), published), f)| {
            if f.skip {
                // On the server already, not merged.
                return Some(Assembled {
                    md5: None,
                    size: f.size(),
                    stat: String::new(),
                    name: String::new(),
                    verification: "server-md5",
                    published: true,
                });
            }
            let (name, stat, size) = s?;
            Some(Assembled {
                md5: Some(m?),
                size,
                stat,
                name,
                verification: "server-md5",
                published,
            })
        })
        .collect()
}

/// The merge ran but could not read every part (a part missing or unreadable on the
/// server): like a corrupt part, found by listing the parts and sent again.
#[derive(Debug, thiserror::Error)]
#[error("the merge on the server failed: {0}")]
pub struct MergeFailed(pub String);

/// Where a here-document of file names ends: a line no name can be, since no path
/// component may start with relayup's temp prefix.
const END_OF_NAMES: &str = ".relayup-end";

/// A here-document of `lines`, for a script's loop to read.
fn here_doc(lines: impl IntoIterator<Item = String>) -> String {
    let mut out = format!("<<'{END_OF_NAMES}'\n");
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out.push_str(END_OF_NAMES);
    out
}

/// What is under each of `files` (`dest`, source size) in `dir` on the server; the
/// MD5 of a regular file of the source's size, with `hash`.
pub fn existing(
    session: &Session,
    dir: &str,
    files: &[(&str, u64)],
    hash: bool,
) -> Result<Vec<Existing>> {
    let list = files
        .iter()
        .enumerate()
        .flat_map(|(k, (d, size))| [k.to_string(), size.to_string(), d.to_string()]);
    let script = format!(
        "cd -- {dir} || exit {no_dir}\n\
         while IFS= read -r k && IFS= read -r sz && IFS= read -r d; do\n\
           if [ -L \"$d\" ]; then echo \"x $k link\"\n\
           elif [ -d \"$d\" ]; then echo \"x $k dir\"\n\
           elif [ -e \"$d\" ] && [ ! -f \"$d\" ]; then echo \"x $k special\"\n\
           elif [ -f \"$d\" ]; then\n\
             s=$(wc -c < \"$d\") || exit 1; s=$((s + 0))\n\
             if [ \"$s\" = \"$sz\" ] && [ {hash} = 1 ]; then m=$(md5sum < \"$d\") || exit 1; echo \"f $k $s ${{m%% *}}\"\n\
             else echo \"f $k $s\"; fi\n\
           fi\n\
         done {list}",
        dir = sh(dir),
        no_dir = status::NO_DIR,
        hash = u8::from(hash),
        list = here_doc(list),
    );
    let out = ssh::run(session, &script)?;
    if out.status != 0 {
        bail!(
            "checking the destinations in {dir} on the server failed (exit {}): {}",
            out.status,
            out.stderr.trim()
        );
    }
    let mut found = vec![Existing::Missing; files.len()];
    for line in out.stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(k) = f.get(1).and_then(|k| k.parse::<usize>().ok()) else {
            continue;
        };
        let Some(slot) = found.get_mut(k) else {
            continue;
        };
        *slot = match (f[0], &f[2..]) {
            ("x", ["link"]) => Existing::NotAFile("a symbolic link"),
            ("x", ["dir"]) => Existing::NotAFile("a directory"),
            ("x", _) => Existing::NotAFile("not a regular file"),
            ("f", [size]) => Existing::File(size.parse().unwrap_or(0), None),
            ("f", [size, md5]) if md5.len() == 32 => Existing::File(
                size.parse().unwrap_or(0),
                Some((md5.to_string(), "server-md5")),
            ),
            _ => continue,
        };
    }
    Ok(found)
}

/// Moves the verified files (each with its name on the server) into place and, with
/// `last`, removes the temp dir. Right before its rename each merged file must
/// still be the one the merge wrote (same inode, size and mtime), and the
/// destination, if there, a regular file: the rename never goes into a directory or
/// through a symlink (`mv -T`), and without `--overwrite` it never replaces anything
/// (`ln`, which fails on an existing name). The temp dir's removal runs in the
/// background on the server: freeing a file's worth of parts took ~0.4 s of a 13 s
/// send in the lab. The dir is renamed first, so a new send of the same file never
/// meets it.
pub fn commit(
    session: &Session,
    place: &RunPlace,
    files: &[(&Assembled, &str)],
    overwrite: bool,
    last: bool,
) -> Result<()> {
    let dir = place.dir.as_str();
    let tmp = temp_name(&place.upload_id);
    let list = files
        .iter()
        .flat_map(|(f, d)| [f.name.clone(), f.stat.clone(), d.to_string()]);
    let cleanup = if last {
        format!(
            "trash={tmp}.done.$$\n\
             mv -- {tmp} \"$trash\" && {{ rm -rf -- \"$trash\" </dev/null >/dev/null 2>&1 & }}",
            tmp = sh(&tmp)
        )
    } else {
        String::new()
    };
    let script = format!(
        "cd -- {dir} || exit 1\n\
         {publish}\n\
         while IFS= read -r m && IFS= read -r st && IFS= read -r d; do\n\
           printf 'at %s\\n' \"$d\"\n\
           publish {tmp}/\"$m\" \"$st\" \"$d\" {ow} || exit $?\n\
         done {list}\n\
         {cleanup}",
        dir = sh(dir),
        publish = publish_fn(),
        ow = u8::from(overwrite),
        tmp = sh(&tmp),
        list = here_doc(list),
    );
    let out = ssh::run(session, &script)?;
    let at = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("at "))
        .next_back()
        .unwrap_or_default();
    let place = format!("{}/{at}", dir.trim_end_matches('/'));
    match out.status {
        0 => Ok(()),
        status::EXISTS => Err(anyhow!(
            "{place} appeared on the server during the send; pass --overwrite to replace it"
        ))
        .context(Code::Usage),
        status::DEST_SYMLINK | status::DEST_DIR | status::DEST_SPECIAL => {
            Err(anyhow!("{}", dest_type_message(out.status, &place))).context(Code::Usage)
        }
        status::CHANGED => Err(anyhow!(
            "the merged file for {place} changed on the server after it was hashed (another writer?); it was not renamed into place"
        ))
        .context(Code::Verify),
        s => bail!(
            "moving the merged file into place as {place} failed (exit {s}): {}",
            out.stderr.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lock_owner_the_server_prints() {
        let b = Busy::read("build-7 42 1795000000 0123456789abcdef 4242");
        assert_eq!(
            b.0.as_ref().map(|o| (o.pid, o.machine.clone())),
            Some((42, Some("0123456789abcdef".into())))
        );
        assert_eq!(b.1, Some(4242));
        let older = Busy::read("build-7 42 1795000000 4242");
        assert_eq!(
            (older.0.map(|o| o.machine), older.1),
            (Some(None), Some(4242))
        );
        let no_ps = Busy::read("build-7 42 1795000000 0123456789abcdef");
        assert_eq!((no_ps.0.is_some(), no_ps.1), (true, None));
        let junk = Busy::read("");
        assert!(junk.0.is_none() && junk.1.is_none());
    }

    fn release(sizes: &[usize]) -> (tempfile::TempDir, Source) {
        let d = tempfile::tempdir().unwrap();
        let items: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let p = d.path().join(format!("f{k}"));
                std::fs::write(&p, vec![7u8; n]).unwrap();
                (p, format!("d/f{k}"))
            })
            .collect();
        let s = Source::release(&items).unwrap();
        (d, s)
    }

    #[test]
    fn a_release_is_merged_file_by_file_and_a_one_part_file_is_not_copied() {
        let (_d, s) = release(&[10, 0, 3]);
        let plan = crate::send::plan::Plan::for_source(
            &s,
            2,
            crate::send::plan::Strategy::Adaptive,
            Some(4),
            crate::send::plan::SmallFiles::Apart,
            crate::send::plan::MIN_GUIDED_PART,
        );
        let list = MergeList::of(&s, &plan.parts, "r1");
        assert_eq!(
            list.files,
            [
                FileParts {
                    file: 0,
                    parts: vec![0, 1, 2],
                    making: Making::Append("merged.r1.0.tmp".into())
                },
                FileParts {
                    file: 1,
                    parts: vec![],
                    making: Making::Append("merged.r1.1.tmp".into())
                },
                FileParts {
                    file: 2,
                    parts: vec![3],
                    making: Making::InPlace
                },
            ]
        );
        assert!(list.cuts.is_empty());
        // A file the server has already is not merged at all.
        let skipping = s.skipping(&[0]);
        let list = MergeList::of(&skipping, &plan.parts, "r1");
        assert_eq!(
            list.files.iter().map(|f| f.file).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn small_files_that_share_a_part_are_cut_out_of_it_before_their_batch() {
        // A big file, then three small ones that share a part, then an empty one.
        let (_d, s) = release(&[10, 2, 1, 3, 0]);
        let plan = crate::send::plan::Plan::for_source(
            &s,
            1,
            crate::send::plan::Strategy::Adaptive,
            Some(8),
            crate::send::plan::SmallFiles::Together,
            crate::send::plan::MIN_GUIDED_PART,
        );
        assert_eq!(
            plan.parts
                .iter()
                .map(|p| (p.offset, p.len))
                .collect::<Vec<_>>(),
            [(0, 8), (8, 2), (10, 6)]
        );
        // The server has the second small file: it is cut out all the same (the
        // part holds it), but not merged.
        let s = s.skipping(&[2]);
        let list = MergeList::of(&s, &plan.parts, "r1");
        assert_eq!(
            list.cuts,
            BTreeMap::from([(
                2,
                vec![
                    (2, "cut.r1.1.tmp".to_string()),
                    (1, "cut.r1.2.tmp".to_string()),
                    (3, "cut.r1.3.tmp".to_string())
                ]
            )])
        );
        let making: Vec<_> = list
            .files
            .iter()
            .map(|f| (f.file, f.making.clone()))
            .collect();
        assert_eq!(
            making,
            [
                (0, Making::Append("merged.r1.0.tmp".into())),
                (1, Making::Cut("cut.r1.1.tmp".into())),
                (3, Making::Cut("cut.r1.3.tmp".into())),
                (4, Making::Append("merged.r1.4.tmp".into())),
            ]
        );
        assert_eq!(
            cut_lines(2, &list.cuts[&2]),
            "c 3 2.part\n2 cut.r1.1.tmp\n1 cut.r1.2.tmp\n3 cut.r1.3.tmp\n"
        );
        // The cut goes once, before the files it makes.
        let order: Vec<String> = feed_order(&list)
            .iter()
            .map(|f| match f {
                Feed::Single(k, i, name) => format!("single {k} {i} {name}"),
                Feed::Cut(i) => format!("cut {i}"),
                Feed::Header(h) => format!("header {}", h.trim()),
                Feed::Part(i) => format!("part {i}"),
                Feed::Trailer(k) => format!("trailer {k}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "header 0 2 merged.r1.0.tmp",
                "part 0",
                "part 1",
                "trailer 0",
                "cut 2",
                "single 1 2 cut.r1.1.tmp",
                "single 3 2 cut.r1.3.tmp",
                "header 4 0 merged.r1.4.tmp",
                "trailer 4",
            ]
        );
    }

    #[test]
    fn files_of_one_part_go_to_the_merge_in_batches() {
        let (_d, s) = release(&[3, 4]);
        let s = Arc::new(s);
        let plan = crate::send::plan::Plan::for_source(
            &s,
            1,
            crate::send::plan::Strategy::Adaptive,
            Some(4),
            crate::send::plan::SmallFiles::Apart,
            crate::send::plan::MIN_GUIDED_PART,
        );
        let (hashes, t) = Hashes::spawn(s.clone(), plan.parts.clone());
        t.join().unwrap().unwrap();
        let trailer = Trailer {
            hashes,
            source: s.clone(),
            early: Some(Early { overwrite: false }),
            published: std::sync::mpsc::channel().0,
        };
        let md5 = |n: usize| format!("{:x}", <md5::Md5 as md5::Digest>::digest(vec![7u8; n]));
        assert_eq!(
            batch_lines(&[(0, "0.part".into()), (1, "1.part".into())], &trailer),
            format!(
                "b 2 -\n0 0.part {} 0\nd/f0\n1 1.part {} 0\nd/f1\n",
                md5(3),
                md5(4)
            )
        );
        let atomic = Trailer {
            early: None,
            ..trailer
        };
        assert_eq!(
            batch_lines(&[(1, "1.part".into())], &atomic),
            "b 1 -\n1 1.part - -\nd/f1\n"
        );
    }

    #[test]
    fn reads_what_the_merge_says_of_each_file() {
        let (_d, s) = release(&[10, 3]);
        let s = s.skipping(&[]);
        let m = "0123456789abcdef0123456789abcdef";
        let out = format!(
            "md5 0 {m}\nstat 0 merged.r.0.tmp 12 10 99\nkept 0 12\nmd5 1 {m}\nstat 1 3.part 13 3 99\npublished 1\n"
        );
        let files = parse_merged(&out, &s).unwrap();
        assert_eq!(
            files
                .iter()
                .map(|f| (f.name.as_str(), f.size, f.published))
                .collect::<Vec<_>>(),
            [("merged.r.0.tmp", 10, false), ("3.part", 3, true)]
        );
        assert_eq!(files[0].stat, "12 10 99");
        // A file without its lines, or anything else said: the merge failed.
        assert!(parse_merged(&format!("md5 0 {m}\nstat 0 x 1 10 9\n"), &s).is_none());
        assert!(parse_merged(&format!("{out}cat: 9.part: No such file\n"), &s).is_none());
        // A skipped file needs no lines.
        let skipping = s.skipping(&[1]);
        let files = parse_merged(&format!("md5 0 {m}\nstat 0 x 1 10 9\n"), &skipping).unwrap();
        assert!(files[1].published && files[1].md5.is_none());
    }

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
