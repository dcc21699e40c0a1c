//! Direct writes: every host writes its parts at their offsets into one file,
//! `.relayup-<id>/file`, over its own FTP, FTPS or SFTP login, so the server needs no
//! shell login, no second copy of the file and no merge. Each part is verified once
//! it is in (the server's `XMD5` of its range where `FEAT` offers it, else its bytes
//! read back and compared with the source), and the file is renamed to its name
//! only when every part has passed.
//!
//! One run at a time: the run creates the directory `.relayup-<id>/lock` (creating a
//! directory is atomic on every server kind) and writes its owner into it. A lock left
//! by a dead run of this machine is taken over; any other is respected.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Code;
use crate::remote::protocol::ServerSpec;
use crate::send::lock::{Ids, Owner};
use crate::send::plan::{Part, Plan};
use crate::send::source::Source;
use crate::server::assembly::{Assembled, Assembly, Existing, Layout};
use crate::server::merge::MergeFailed;
use crate::server::names;
use crate::transport::{self, Access, Kind, Uploader};

/// `--verify`: how the parts written into the file are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// The server's hash where it offers one, else reading the parts back.
    Auto,
    /// The server hashes each part's range (FTP `XMD5`); an error if it cannot.
    Server,
    /// Each part is read back from the server and compared with the source.
    ReadBack,
    /// Not verified: only the sizes are checked.
    None,
}

/// The verification a run does, as the final message and `--json` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `md5sum` of each part's range, run over the `[merge]` SSH login.
    ShellMd5,
    /// The server's MD5 of each part's range.
    ServerRanges,
    /// Each part's bytes read back and compared with the source.
    ReadBack,
    /// Nothing beyond the sizes (`--verify none`).
    Unchecked,
}

impl Check {
    pub fn label(self) -> &'static str {
        match self {
            Check::ShellMd5 => "server-md5",
            Check::ServerRanges => "server-hash-ranges",
            Check::ReadBack => "read-back",
            Check::Unchecked => "none",
        }
    }
}

/// What the direct-write pre-flight found.
pub enum Prepared {
    /// The temp dir exists, this run holds its lock, and the file is there to write
    /// into.
    Ready(Box<DirectWrite>),
    /// The destination exists (and `--overwrite` was not given); its MD5 where it
    /// could be had, and how (`server-md5` or `read-back`).
    Exists(Option<(String, &'static str)>),
}

/// A direct-write [`Assembly`], prepared and locked for this run.
pub struct DirectWrite {
    /// The login that holds the lock and publishes.
    conn: Box<dyn Uploader>,
    spec: ServerSpec,
    access: Access,
    upload_id: String,
    /// The temp dir, the file in it, the lock dir.
    tmp: String,
    file: String,
    lock: String,
    dir: String,
    run: String,
    check: Check,
    /// The settings with the `[merge]` login, for [`Check::ShellMd5`].
    shell: Option<crate::config::Settings>,
    free: Option<u64>,
    /// Whether several hosts can write into the file at once (vsftpd, by default,
    /// makes each upload wait for the others: `lock_upload_files`).
    parallel: bool,
    verifier: Option<JoinHandle<Result<Verified>>>,
    bad: Vec<usize>,
    locked: bool,
    /// This run created the temp dir and nothing has been sent yet: a run that ends
    /// before its transfer starts (no room on the server, say) leaves nothing there.
    fresh: bool,
    /// A release: every file has a temp file of its own, `<k>.file`.
    release: bool,
    /// What is sent, once the transfer starts.
    source: Option<Arc<Source>>,
}

/// Everything the pre-flight needs to know about the send.
pub struct Request<'a> {
    pub spec: &'a ServerSpec,
    pub access: Access,
    pub ids: &'a Ids,
    pub dest: &'a str,
    pub overwrite: bool,
    pub verify: Verify,
    pub source: &'a Path,
    pub size: u64,
    /// Whether other hosts will write too (then parallel writes are probed).
    pub peers: bool,
    /// The settings, when they have a `[merge]` SSH login: its `md5sum` then hashes
    /// the parts on the server.
    pub shell: Option<&'a crate::config::Settings>,
    /// A release: the destinations are checked file by file ([`Assembly::existing`]),
    /// and each file gets its temp file when the transfer starts.
    pub release: bool,
}

impl DirectWrite {
    /// Logs in, checks the destination, takes the lock and makes sure the file is
    /// there (created with the source's first byte: see [`Uploader::write_at`]).
    pub fn prepare(r: &Request<'_>) -> Result<Prepared> {
        let (mut conn, _) = transport::open(r.spec, &r.ids.upload, &r.access)?;
        let offers = conn.offers();
        let dir = r.spec.dir.trim_end_matches('/').to_string();
        let dir = if dir.is_empty() { "/".to_string() } else { dir };
        let dest = format!("{}/{}", dir.trim_end_matches('/'), r.dest);
        let what = conn.what().to_string();
        let check = choose_check(r, &offers, &what)?;
        if !r.release {
            if let Some(exists) = existing_dest(conn.as_mut(), r, &dest)? {
                return Ok(exists);
            }
        }
        let tmp = names::temp_dir(&dir, &r.ids.upload);
        let fresh = conn.make_dir(&tmp)?;
        if conn.kind(&tmp)? != Kind::Dir {
            bail!("{what}: {tmp} is not a directory; remove it there (`relayup clean`)");
        }
        let lock = format!("{tmp}/{}", names::LOCK);
        take_lock(conn.as_mut(), &lock)?;
        let mut me = DirectWrite {
            conn,
            spec: r.spec.clone(),
            access: r.access.clone(),
            upload_id: r.ids.upload.clone(),
            file: names::direct_file(&dir, &r.ids.upload),
            tmp,
            lock,
            dir,
            run: r.ids.run.clone(),
            check,
            shell: r.shell.cloned(),
            free: None,
            parallel: true,
            verifier: None,
            bad: Vec::new(),
            locked: true,
            fresh,
            release: r.release,
            source: None,
        };
        if r.release {
            me.free = me.conn.free(&me.dir);
            if r.peers {
                let probe = format!("{}/probe", me.tmp);
                me.conn.write_small(&probe, b"p")?;
                me.parallel =
                    transport::parallel_writes(&me.spec, &me.upload_id, &me.access, &probe)?;
                let _ = me.conn.remove_file(&probe);
            }
            return Ok(Prepared::Ready(Box::new(me)));
        }
        if me.conn.kind(&me.file)? == Kind::Missing {
            let mut first = Vec::new();
            File::open(r.source)
                .with_context(|| format!("{}: cannot open it", r.source.display()))?
                .take(1)
                .read_to_end(&mut first)?;
            me.conn.write_small(&me.file, &first)?;
        }
        me.free = me.conn.free(&me.dir);
        if r.peers && r.size > 1 {
            me.parallel =
                transport::parallel_writes(&me.spec, &me.upload_id, &me.access, &me.file)?;
        }
        Ok(Prepared::Ready(Box::new(me)))
    }

    /// Lets go of the lock: the owner file, then its directory.
    fn unlock(&mut self) {
        if self.locked {
            self.locked = false;
            let owner = format!("{}/{}", self.lock, names::OWNER);
            let _ = self.conn.remove_file(&owner);
            let _ = self.conn.remove_dir(&self.lock);
        }
    }
}

impl Drop for DirectWrite {
    fn drop(&mut self) {
        let fresh = self.fresh && self.locked;
        if fresh && !self.release {
            let _ = self.conn.remove_file(&self.file);
        }
        self.unlock();
        if fresh {
            let _ = self.conn.remove_dir(&self.tmp);
        }
    }
}

/// Where a run's files are on the server, as the upload login sees them.
#[derive(Clone, Debug)]
struct Spot {
    dir: String,
    tmp: String,
    run: String,
    /// The server speaks SFTP, whose rename never replaces a file.
    sftp: bool,
}

/// Renames `file` to `dest` (relative to the upload directory). Without `overwrite`
/// the name must be free (SFTP's rename fails if it is not; over FTP it is checked
/// right before). With it, a regular file there is replaced: over FTP by the rename
/// itself; over SFTP (whose version 3 rename never replaces) the old file is moved
/// aside first and put back if the rename fails.
fn rename_into_place(
    conn: &mut dyn Uploader,
    spot: &Spot,
    file: &str,
    dest: &str,
    overwrite: bool,
) -> Result<()> {
    let what = conn.what().to_string();
    let target = format!("{}/{dest}", spot.dir.trim_end_matches('/'));
    let there = conn.kind(&target)?;
    match there {
        Kind::Missing => {}
        Kind::File(_) if overwrite => {}
        Kind::File(_) => {
            return Err(anyhow!(
                "{what}: {target} appeared on the server during the send; nothing was renamed into place \
                 (pass --overwrite to replace it)"
            ))
            .context(Code::Usage)
        }
        Kind::Dir | Kind::Other => {
            return Err(anyhow!(
                "{what}: {target} is {} now; relayup only ever replaces a regular file: nothing was renamed into place",
                if there == Kind::Dir { "a directory" } else { "not a regular file" }
            ))
            .context(Code::Usage)
        }
    }
    if there == Kind::Missing || !spot.sftp {
        return conn.move_to(file, &target);
    }
    let name = file.rsplit('/').next().unwrap_or(file);
    let aside = format!("{}/{}", spot.tmp, names::replaced(&spot.run, name));
    conn.move_to(&target, &aside)?;
    match conn.move_to(file, &target) {
        Ok(()) => {
            let _ = conn.remove_file(&aside);
            Ok(())
        }
        Err(e) => {
            let _ = conn.move_to(&aside, &target);
            Err(e)
        }
    }
}

/// The verification `--verify` asks for, as far as the server allows it.
fn choose_check(r: &Request<'_>, offers: &crate::transport::Offers, what: &str) -> Result<Check> {
    Ok(match r.verify {
        Verify::None => Check::Unchecked,
        Verify::ReadBack => Check::ReadBack,
        Verify::Auto | Verify::Server if r.shell.is_some() => Check::ShellMd5,
        Verify::Auto if offers.xmd5 => Check::ServerRanges,
        Verify::Auto => Check::ReadBack,
        Verify::Server if offers.xmd5 => Check::ServerRanges,
        Verify::Server => {
            return Err(anyhow!(
                "{what}: --verify server: the server offers no hash of a byte range (FTP XMD5); \
                 use --verify read-back"
            ))
            .context(Code::Usage)
        }
    })
}

/// What is under the destination's name: nothing (`None`), a regular file
/// ([`Prepared::Exists`] without `--overwrite`, with its MD5 where it can be had), or
/// something relayup never replaces (an error).
fn existing_dest(conn: &mut dyn Uploader, r: &Request<'_>, dest: &str) -> Result<Option<Prepared>> {
    let what = conn.what().to_string();
    let hash = !r.overwrite && r.verify != Verify::None;
    match examine(conn, dest, r.size, hash)? {
        Existing::Missing => Ok(None),
        Existing::File(..) if r.overwrite => Ok(None),
        Existing::File(_, md5) => Ok(Some(Prepared::Exists(md5))),
        Existing::NotAFile(kind) => Err(anyhow!(
            "{what}: {dest} is {kind}; relayup only ever replaces a regular file (--overwrite too): \
             remove it there or choose another --dest"
        ))
        .context(Code::Usage),
    }
}

/// What is at `path` on the server; for a regular file of `size` bytes, with `hash`,
/// its MD5, to tell whether it is this very file: from the server where it can hash,
/// else read back (the download is rarely the capped way).
fn examine(conn: &mut dyn Uploader, path: &str, size: u64, hash: bool) -> Result<Existing> {
    Ok(match conn.kind(path)? {
        Kind::Missing => Existing::Missing,
        Kind::Dir => Existing::NotAFile("a directory"),
        Kind::Other => Existing::NotAFile("not a regular file (a symbolic link?)"),
        Kind::File(theirs) => {
            let md5 = if theirs != size || !hash {
                None
            } else {
                match conn.md5_at(path, 0, theirs).ok().flatten() {
                    Some(md5) => Some((md5, "server-md5")),
                    None => md5_back(conn, path, theirs).ok().map(|m| (m, "read-back")),
                }
            };
            Existing::File(theirs, md5)
        }
    })
}

/// Takes the lock directory `lock`, or takes over one left by a dead run of this
/// machine. Anything else holding it: [`crate::send::lock::Busy`] (exit 6).
fn take_lock(conn: &mut dyn Uploader, lock: &str) -> Result<()> {
    let owner_file = format!("{lock}/{}", names::OWNER);
    if !conn.make_dir(lock)? {
        // Written right after the directory is made: give a starting run a moment.
        let mut owner = read_owner(conn, &owner_file);
        if owner.is_none() {
            std::thread::sleep(Duration::from_secs(1));
            owner = read_owner(conn, &owner_file);
        }
        match owner {
            Some(o) if o.is_dead_here() => {}
            other => {
                return Err(anyhow!(crate::send::lock::busy(
                    other.as_ref(),
                    "lock on the server"
                )))
                .context(Code::Busy)
            }
        }
    }
    conn.write_small(
        &owner_file,
        format!("{}\n", Owner::me().to_line()).as_bytes(),
    )
}

fn read_owner(conn: &mut dyn Uploader, path: &str) -> Option<Owner> {
    let bytes = conn.read_small(path).ok()?;
    Owner::parse(String::from_utf8_lossy(&bytes).trim())
}

impl DirectWrite {
    fn spot(&self) -> Spot {
        Spot {
            dir: self.dir.clone(),
            tmp: self.tmp.clone(),
            run: self.run.clone(),
            sftp: self.spec.scheme == "sftp",
        }
    }

    /// File `k`'s temp file on the server.
    fn temp_file(&self, source: &Source, k: usize) -> String {
        format!("{}/{}", self.tmp, source.temp_name(k))
    }

    /// A release's temp files as the transfer needs them: an empty file made empty,
    /// a file of several parts made with its first byte (its parts are written at
    /// their offsets).
    fn make_temp_files(&mut self, source: &Source, parts: &[Part]) -> Result<()> {
        let count = source.parts_per_file(parts);
        for (k, f) in source.files.iter().enumerate() {
            if f.skip || (f.size() > 0 && count[k] < 2) {
                continue;
            }
            let path = self.temp_file(source, k);
            let mut first = Vec::new();
            source
                .reader(f.start, f.size().min(1))?
                .read_to_end(&mut first)?;
            // A file an earlier run left must start with this byte: part 0 is
            // written from byte 1 on (a write at 0 would cut the file short).
            match self.conn.kind(&path)? {
                Kind::File(0) if first.is_empty() => continue,
                Kind::File(n) if n > 0 && !first.is_empty() => {
                    let mut theirs = Vec::new();
                    self.conn.read_at(&path, 0, 1, &mut |b: &[u8]| {
                        theirs.extend_from_slice(b);
                        Ok(())
                    })?;
                    if theirs == first {
                        continue;
                    }
                }
                _ => {}
            }
            self.conn.write_small(&path, &first)?;
        }
        Ok(())
    }
}

impl Assembly for DirectWrite {
    fn existing(&mut self, files: &[(&str, u64)], hash: bool) -> Result<Vec<Existing>> {
        let hash = hash && self.check != Check::Unchecked;
        files
            .iter()
            .map(|(dest, size)| {
                let path = format!("{}/{dest}", self.dir.trim_end_matches('/'));
                examine(self.conn.as_mut(), &path, *size, hash)
            })
            .collect()
    }

    /// Parts that an earlier run verified (by the journal) and that their file is
    /// long enough to hold: they are verified again in this run before they count.
    fn resumable(
        &mut self,
        plan: &Plan,
        source: &Source,
        verified: &BTreeSet<usize>,
    ) -> Result<HashSet<usize>> {
        let mut sizes: HashMap<usize, u64> = HashMap::new();
        let mut done = HashSet::new();
        for p in plan.parts.iter().filter(|p| verified.contains(&p.index)) {
            let k = source.locate(p.offset);
            let size = match sizes.get(&k) {
                Some(s) => *s,
                None => {
                    let s = match self.conn.kind(&self.temp_file(source, k))? {
                        Kind::File(size) => size,
                        _ => 0,
                    };
                    sizes.insert(k, s);
                    s
                }
            };
            if p.offset - source.files[k].start + p.len <= size {
                done.insert(p.index);
            }
        }
        Ok(done)
    }

    fn free(&self) -> Option<u64> {
        self.free
    }

    /// The file itself, once: the parts still to come.
    fn space_needed(&self, size: u64, there: u64) -> u64 {
        size.saturating_sub(there)
    }

    fn start(&mut self, layout: Layout) -> Result<Sender<usize>> {
        self.fresh = false;
        if self.release {
            self.make_temp_files(&layout.source, &layout.parts)?;
        }
        self.source = Some(layout.source.clone());
        let (tx, rx) = mpsc::channel();
        let job = VerifyJob {
            spec: self.spec.clone(),
            access: self.access.clone(),
            upload_id: self.upload_id.clone(),
            spot: self.spot(),
            tmp: self.tmp.clone(),
            check: self.check,
            shell: self.shell.clone(),
            layout,
        };
        self.verifier = Some(std::thread::spawn(move || job.run(rx)));
        Ok(tx)
    }

    fn finish(&mut self) -> Result<Vec<Assembled>> {
        // The login that took the lock sat idle through the transfer, longer than
        // many servers keep an idle control connection (vsftpd: 300 s): the end, the
        // rename and letting go of the lock, runs on a new one.
        if let Ok((fresh, _)) = transport::open(&self.spec, &self.upload_id, &self.access) {
            self.conn = fresh;
        }
        let Verified { bad, published } = self
            .verifier
            .take()
            .ok_or_else(|| anyhow!("the verification was never started"))?
            .join()
            .map_err(|_| anyhow!("the verifying thread panicked"))??;
        if !bad.is_empty() {
            self.bad = bad.clone();
            return Err(anyhow!(MergeFailed(format!(
                "{} part(s) differ from the source on the server",
                bad.len()
            ))));
        }
        let source = self
            .source
            .clone()
            .ok_or_else(|| anyhow!("the transfer never started"))?;
        (0..source.files.len())
            .map(|k| {
                let published = published.contains(&k) || source.files[k].skip;
                let size = if published {
                    source.files[k].size()
                } else {
                    let path = self.temp_file(&source, k);
                    match self.conn.kind(&path)? {
                        Kind::File(size) => size,
                        _ => bail!("{}: {path} is gone", self.conn.what()),
                    }
                };
                Ok(Assembled {
                    md5: None,
                    size,
                    stat: String::new(),
                    name: source.temp_name(k),
                    verification: self.check.label(),
                    published,
                })
            })
            .collect()
    }

    fn remove_bad(&self, _: &Plan, _: &Source) -> Result<Vec<usize>> {
        // The verifier found them already; nothing to remove: a part sent again
        // overwrites its range.
        Ok(self.bad.clone())
    }

    fn publish(&mut self, files: &[(usize, Assembled)], overwrite: bool, last: bool) -> Result<()> {
        let source = self
            .source
            .clone()
            .ok_or_else(|| anyhow!("the transfer never started"))?;
        let spot = self.spot();
        for (k, file) in files {
            let from = format!("{}/{}", self.tmp, file.name);
            rename_into_place(
                self.conn.as_mut(),
                &spot,
                &from,
                &source.files[*k].dest,
                overwrite,
            )?;
        }
        if last {
            self.unlock();
            // What an earlier run's other plan left there goes too.
            let tmp = self.tmp.clone();
            let _ = remove_all(self.conn.as_mut(), &tmp);
        }
        Ok(())
    }

    fn parallel(&self) -> bool {
        self.parallel
    }
}

/// What the verifying thread needs.
struct VerifyJob {
    spec: ServerSpec,
    access: Access,
    upload_id: String,
    spot: Spot,
    /// The temp dir, as the upload login sees it.
    tmp: String,
    check: Check,
    shell: Option<crate::config::Settings>,
    layout: Layout,
}

/// What the verifying threads found: the parts that differ from the source, and
/// the files they published as soon as all their parts had passed.
#[derive(Default)]
struct Verified {
    bad: Vec<usize>,
    published: HashSet<usize>,
}

/// How many parts are checked at once, each on a login of its own.
const VERIFIERS: usize = 3;

fn lock_tally(t: &std::sync::Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// The verifying threads' shared count.
#[derive(Default)]
struct Tally {
    /// Per file, its parts not yet passed (`usize::MAX`: one failed).
    left: Vec<usize>,
    found: Verified,
}

/// The parts that landed and wait for a verifying thread, and whether more can come.
#[derive(Default)]
struct Queue {
    parts: std::collections::VecDeque<Part>,
    closed: bool,
}

/// Hands landed parts to the verifying threads: one receiver, many takers. A thread
/// waits on the condition until a part comes or the queue is closed, so the last
/// check's end is the threads' end (a thread polling the receiver kept the publish
/// waiting up to 100 ms per thread).
#[derive(Default)]
struct Handout {
    queue: std::sync::Mutex<Queue>,
    ready: std::sync::Condvar,
}

impl Handout {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give(&self, part: Part) {
        self.lock().parts.push_back(part);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next part to check; `None` once the queue is closed and empty.
    fn take(&self) -> Option<Part> {
        let mut q = self.lock();
        loop {
            if let Some(p) = q.parts.pop_front() {
                return Some(p);
            }
            if q.closed {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl VerifyJob {
    /// Where `part` is on the server: its file's name in the temp dir and its offset
    /// there.
    fn at(&self, part: Part) -> (String, u64) {
        let source = &self.layout.source;
        let k = source.locate(part.offset);
        (source.temp_name(k), part.offset - source.files[k].start)
    }

    /// Verifies each part whose index arrives on `rx` (once each), telling the
    /// layout's `verified` about every one that passes; a release's file whose
    /// parts have all passed is published at once (see [`Layout::early`]). Ends
    /// when every part has been seen or the senders are gone.
    fn run(self, rx: Receiver<usize>) -> Result<Verified> {
        let source = self.layout.source.clone();
        // Parts not yet passed, per file; a file with a bad part is never early.
        // The server's own copies of files (skipped) have none to check.
        let mut left = source.parts_per_file(&self.layout.parts);
        for (n, f) in left.iter_mut().zip(&source.files) {
            if f.skip {
                *n = 0;
            }
        }
        let needed: usize = left.iter().sum();
        let tally = Tally {
            left,
            found: Verified::default(),
        };
        if needed == 0 {
            return Ok(tally.found);
        }
        // Checks run side by side, each on a login of its own: one read-back or
        // server hash at a time left the last parts' checks behind the transfer.
        let job = std::sync::Arc::new(self);
        let tally = std::sync::Arc::new(std::sync::Mutex::new(tally));
        let handout = std::sync::Arc::new(Handout::default());
        let workers: Vec<_> = (0..VERIFIERS)
            .map(|_| {
                let (job, tally, handout) = (job.clone(), tally.clone(), handout.clone());
                std::thread::spawn(move || {
                    let result = job.work(&handout, &tally);
                    if result.is_err() {
                        // The others finish what is queued; no more is taken.
                        handout.close();
                    }
                    result
                })
            })
            .collect();
        // Each part once; the parts of files the server has already are not checked.
        let mut seen = HashSet::new();
        while seen.len() < needed {
            let Ok(index) = rx.recv() else { break };
            let Some(part) = job.layout.parts.get(index).copied() else {
                continue;
            };
            if !source.files[source.locate(part.offset)].skip && seen.insert(index) {
                handout.give(part);
            }
        }
        handout.close();
        let mut first_error = None;
        for w in workers {
            let result = w
                .join()
                .unwrap_or_else(|_| Err(anyhow!("a verifying thread panicked")));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if seen.len() < needed {
            bail!(
                "the transfer ended with {} of {needed} parts in",
                seen.len()
            );
        }
        let mut tally = std::mem::take(&mut *lock_tally(&tally));
        tally.found.bad.sort_unstable();
        Ok(tally.found)
    }

    /// One verifying thread: checks the parts handed out until there are no more,
    /// and publishes a file early when its part was the file's last.
    fn work(&self, handout: &Handout, tally: &std::sync::Mutex<Tally>) -> Result<()> {
        let source = &self.layout.source;
        let (mut conn, mut session) = (None, None);
        while let Some(part) = handout.take() {
            let (index, k) = (part.index, source.locate(part.offset));
            let ok = match &self.shell {
                Some(settings) if self.check == Check::ShellMd5 => {
                    self.md5sum_part(settings, &mut session, part)?
                }
                _ => self.verify_part(&mut conn, part)?,
            };
            let _ = self.layout.verified.send((index, ok));
            let last = {
                let mut t = lock_tally(tally);
                if !ok {
                    t.found.bad.push(index);
                    t.left[k] = usize::MAX;
                    false
                } else if t.left[k] != usize::MAX {
                    t.left[k] -= 1;
                    t.left[k] == 0
                } else {
                    false
                }
            };
            if last && self.publish_early(&mut conn, k) {
                lock_tally(tally).found.published.insert(k);
            }
        }
        Ok(())
    }

    /// Publishes file `k`, all of whose parts have passed, if the release publishes
    /// files as they are verified and the file has not changed since the send
    /// started. Anything in the way is left for the publish at the end, which says
    /// what it is.
    fn publish_early(&self, conn: &mut Option<Box<dyn Uploader>>, k: usize) -> bool {
        let Some(early) = self.layout.early else {
            return false;
        };
        let source = &self.layout.source;
        let f = &source.files[k];
        if crate::send::source::stamp(&f.path).ok() != Some(f.stamp) {
            return false;
        }
        if conn.is_none() {
            *conn = transport::open(&self.spec, &self.upload_id, &self.access)
                .ok()
                .map(|c| c.0);
        }
        let Some(c) = conn.as_mut() else {
            return false;
        };
        let from = format!("{}/{}", self.tmp, source.temp_name(k));
        let done =
            rename_into_place(c.as_mut(), &self.spot, &from, &f.dest, early.overwrite).is_ok();
        if done {
            let _ = self.layout.published.send(k);
        }
        done
    }

    /// Whether `part` is in the file as in the source, by `md5sum` over the shell
    /// login; a broken login is opened again once.
    fn md5sum_part(
        &self,
        settings: &crate::config::Settings,
        session: &mut Option<ssh2::Session>,
        part: Part,
    ) -> Result<bool> {
        let m = settings.merge_login()?;
        let (name, at) = self.at(part);
        let file = format!("{}/{name}", names::temp_dir(&m.dir, &self.upload_id));
        // GNU tail seeks to the offset in a regular file: only the range is read.
        let script = format!(
            "tail -c +{} -- {} | head -c {} | md5sum",
            at + 1,
            crate::remote::quote::sh(&file),
            part.len
        );
        let ours = self.layout.source.md5_range(part.offset, part.len)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = (|| -> Result<String> {
                if session.is_none() {
                    *session = Some(crate::server::merge::login(settings)?);
                }
                let out =
                    crate::remote::ssh::run(session.as_ref().expect("logged in above"), &script)?;
                if out.status != 0 {
                    bail!("md5sum failed (exit {}): {}", out.status, out.stderr.trim());
                }
                Ok(out
                    .stdout
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string())
            })();
            match result {
                Ok(theirs) => return Ok(theirs == ours),
                Err(_) if attempt < 2 => *session = None,
                Err(e) => return Err(e.context(format!("verifying part {}", part.index))),
            }
        }
    }

    /// Whether `part` is in the file as in the source; a broken login is opened again
    /// once.
    fn verify_part(&self, conn: &mut Option<Box<dyn Uploader>>, part: Part) -> Result<bool> {
        if self.check == Check::Unchecked {
            return Ok(true);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = (|| -> Result<bool> {
                if conn.is_none() {
                    *conn = Some(transport::open(&self.spec, &self.upload_id, &self.access)?.0);
                }
                let c = conn.as_mut().expect("opened above").as_mut();
                let (name, at) = self.at(part);
                let file = format!("{}/{name}", self.tmp);
                let source = &self.layout.source;
                match self.check {
                    Check::ServerRanges => match c.md5_at(&file, at, part.len)? {
                        Some(theirs) => Ok(theirs == source.md5_range(part.offset, part.len)?),
                        // A path the command cannot carry (a space in it, for XMD5).
                        None => read_back(c, (&file, at), source, part),
                    },
                    Check::ReadBack | Check::ShellMd5 => read_back(c, (&file, at), source, part),
                    Check::Unchecked => Ok(true),
                }
            })();
            match result {
                Err(_) if attempt < 2 => *conn = None,
                other => return other.with_context(|| format!("verifying part {}", part.index)),
            }
        }
    }
}

/// The MD5 of the first `len` bytes of `path` on the server, hashed here as they are
/// read.
fn md5_back(conn: &mut dyn Uploader, path: &str, len: u64) -> Result<String> {
    let mut h = crate::send::md5::Md5::new();
    conn.read_at(path, 0, len, &mut |bytes: &[u8]| {
        h.update(bytes);
        Ok(())
    })?;
    Ok(h.hex())
}

/// Reads `part` back from the server (from `file` at `at`) and compares it with the
/// source, byte for byte.
fn read_back(
    conn: &mut dyn Uploader,
    (file, at): (&str, u64),
    source: &Source,
    part: Part,
) -> Result<bool> {
    let mut src = source.reader(part.offset, part.len)?;
    let mut same = true;
    let mut ours = vec![0u8; transport::CHUNK];
    conn.read_at(file, at, part.len, &mut |theirs: &[u8]| {
        if same {
            let ours = &mut ours[..theirs.len()];
            src.read_exact(ours).context("reading the source")?;
            same = ours == theirs;
        }
        Ok(())
    })?;
    Ok(same)
}

/// A temp dir `tmp` of this upload, made over a file login (the rate probe's).
pub fn create_temp(conn: &mut dyn Uploader, tmp: &str) -> Result<()> {
    conn.make_dir(tmp).map(|_| ())
}

/// Removes the temp dir `tmp` over a file login, with everything in it (the file, a
/// lock and its owner, part files). A lock held by a run that may still be alive (of
/// another machine, or a living process of this one) is respected:
/// [`crate::send::lock::Busy`].
pub fn remove_temp(conn: &mut dyn Uploader, tmp: &str) -> Result<()> {
    if conn.kind(tmp)? == Kind::Missing {
        return Ok(());
    }
    let lock = format!("{tmp}/{}", names::LOCK);
    if conn.kind(&lock)? == Kind::Dir {
        match read_owner(conn, &format!("{lock}/{}", names::OWNER)) {
            Some(o) if !o.is_dead_here() => {
                return Err(anyhow!(crate::send::lock::busy(
                    Some(&o),
                    "lock on the server"
                )))
                .context(Code::Busy)
            }
            _ => remove_all(conn, &lock)?,
        }
    }
    remove_all(conn, tmp)
}

/// Removes the directory `dir` and what is in it, one level of subdirectories deep
/// (all relayup makes there).
fn remove_all(conn: &mut dyn Uploader, dir: &str) -> Result<()> {
    for name in conn.list(dir)? {
        let path = format!("{dir}/{name}");
        match conn.kind(&path)? {
            Kind::Dir => {
                for inner in conn.list(&path)? {
                    conn.remove_file(&format!("{path}/{inner}"))?;
                }
                conn.remove_dir(&path)?;
            }
            Kind::Missing => {}
            _ => conn.remove_file(&path)?,
        }
    }
    conn.remove_dir(dir)
}
