//! How the parts that reached the server become the one file under its name: the seam
//! between the transfer and the server's side of the end. The send holds an
//! [`Assembly`] and does not know how it works. Today's kind is
//! [`crate::server::merge::AppendMerge`]: parts in a temp dir, appended in order over an SSH
//! login as they arrive, hashed in the same pass, then renamed into place.

use anyhow::Result;
use std::sync::mpsc::Sender;

/// A part already complete on the server from an earlier, interrupted run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPart {
    pub index: usize,
    pub size: u64,
    pub md5: String,
}

/// The assembled file, as the server reports it: its MD5 and size, and what is needed
/// to check, right before it is published, that it is still that file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    pub md5: String,
    pub size: u64,
    /// The server's `inode size mtime` of the file, checked again before the rename.
    pub stat: String,
}

/// One upload's assembly on the server, prepared and locked for this run.
pub trait Assembly: Send {
    /// Parts an earlier run left complete there (size and MD5 computed there).
    fn existing(&self) -> &[ServerPart];
    /// Free bytes where the file is assembled, if the server could tell.
    fn free(&self) -> Option<u64>;
    /// Bytes this kind needs on the server for a file of `size` when `there` bytes of
    /// parts are there already.
    fn space_needed(&self, size: u64, there: u64) -> u64;
    /// Starts assembling `parts` parts (`size` bytes in all) as they arrive: the index
    /// of every part complete on the server goes to the returned sender.
    fn start(&mut self, parts: usize, size: u64) -> Result<Sender<usize>>;
    /// Waits until the last part is in; the assembled file's MD5 and size. An error
    /// of type [`crate::server::merge::MergeFailed`] means a part was missing or unreadable.
    fn finish(&mut self) -> Result<Assembled>;
    /// Removes every part whose size or MD5 differs from `expected` (by index), so a
    /// second round sends exactly those; returns their indexes.
    fn remove_bad(&self, expected: &[(u64, String)]) -> Result<Vec<usize>>;
    /// Puts the verified file under `dest` (replacing a regular file there only with
    /// `overwrite`) and lets go of the temp data.
    fn publish(&self, file: &Assembled, dest: &str, overwrite: bool) -> Result<()>;
}
