//! How the parts that reached the server become the one file under its name: the seam
//! between the transfer and the server's side of the end. The send holds an
//! [`Assembly`] and does not know how it works. Two kinds:
//! [`crate::server::merge::AppendMerge`] (parts in a temp dir, appended in order over an
//! SSH login as they arrive, hashed in the same pass, then renamed into place) and
//! [`crate::server::direct::DirectWrite`] (every host writes its parts into one file at
//! their offsets over its own FTP/SFTP login; each part verified, then renamed).

use anyhow::Result;
use std::collections::{BTreeSet, HashSet};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::send::hashes::Hashes;
use crate::send::plan::{Part, Plan};
use crate::send::source::Source;

/// A part already complete on the server from an earlier, interrupted run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPart {
    pub index: usize,
    pub size: u64,
    pub md5: String,
}

/// The assembled file, as the server reports it, and how it was verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    /// The whole file's MD5, where the server computed it (append-merge); direct
    /// writes verify part by part instead.
    pub md5: Option<String>,
    pub size: u64,
    /// The server's `inode size mtime` of the file, checked again before the rename
    /// (append-merge).
    pub stat: String,
    /// Its name in the temp dir, renamed to the destination when it is published.
    pub name: String,
    /// How it was verified, as the final message and `--json` say: `server-md5`,
    /// `server-hash-ranges`, `read-back` or `none`.
    pub verification: &'static str,
    /// Already published during the transfer (see [`Layout::early`]).
    pub published: bool,
}

/// What an assembly needs to know about the transfer it follows.
pub struct Layout {
    /// Every part of the plan, by index.
    pub parts: Vec<Part>,
    /// What is sent (one file or a release's), for the checks that compare with it
    /// and for where each file goes.
    pub source: Arc<Source>,
    /// Told the index of every part checked on the server and whether it passed
    /// (direct writes; the journal keeps the verified ones for a resume).
    pub verified: Sender<(usize, bool)>,
    /// Every file's MD5 from the one pass over the source, as it gets there.
    pub hashes: Arc<Hashes>,
    /// A release's files are published one by one as soon as each is verified,
    /// replacing a regular file only with `overwrite` (`None`: all at the end, by
    /// [`Assembly::publish`]: `--atomic-release`, or the send of one file).
    pub early: Option<Early>,
    /// Told the index of each file published early, as soon as it is in place.
    pub published: Sender<usize>,
}

/// How files are published as soon as they are verified.
#[derive(Clone, Copy, Debug)]
pub struct Early {
    pub overwrite: bool,
}

/// What is on the server under a release file's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Existing {
    Missing,
    /// A regular file of this size, and its MD5 (and how it was had) where the size
    /// is the source's and the server could tell.
    File(u64, Option<(String, &'static str)>),
    /// A directory, a symbolic link or another special file: never replaced.
    NotAFile(&'static str),
}

/// One upload's assembly on the server, prepared and locked for this run.
pub trait Assembly: Send {
    /// What is under each release file's name (`dest`, `size` of the source file) on
    /// the server.
    fn existing(&mut self, files: &[(&str, u64)], hash: bool) -> Result<Vec<Existing>>;
    /// Which parts of `plan` need not be sent again: complete on the server from an
    /// earlier run (`verified`: those the journal says were verified then).
    fn resumable(
        &mut self,
        plan: &Plan,
        source: &Source,
        verified: &BTreeSet<usize>,
    ) -> Result<HashSet<usize>>;
    /// The send stops before its transfer: a temp dir that holds nothing of an
    /// earlier run goes (the lock goes when the assembly is dropped).
    fn abandon(&mut self) {}
    /// Free bytes where the file is assembled, if the server could tell.
    fn free(&self) -> Option<u64>;
    /// Bytes this kind needs on the server for a file of `size` when `there` bytes of
    /// parts are there already.
    fn space_needed(&self, size: u64, there: u64) -> u64;
    /// Whether several hosts can write to the server at once.
    fn parallel(&self) -> bool {
        true
    }
    /// Starts assembling the parts of `layout` as they arrive: the index of every part
    /// complete on the server goes to the returned sender.
    fn start(&mut self, layout: Layout) -> Result<Sender<usize>>;
    /// Waits until the last part is in; every assembled file, in the layout's
    /// order. An error of type [`crate::server::merge::MergeFailed`] means a part
    /// was missing, unreadable or different from the source.
    fn finish(&mut self) -> Result<Vec<Assembled>>;
    /// Removes every part of `plan` that differs from that range of `source` (or
    /// forgets it), so a second round sends exactly those; returns their indexes.
    fn remove_bad(&self, plan: &Plan, source: &Source) -> Result<Vec<usize>>;
    /// Puts the verified files (by their index in the layout) under their names
    /// (replacing a regular file there only with `overwrite`) and, with `last`, lets
    /// go of the temp data.
    fn publish(&mut self, files: &[(usize, Assembled)], overwrite: bool, last: bool) -> Result<()>;
}
