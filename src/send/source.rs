//! What a send reads: one file, or a release's files laid end to end as one stream
//! of bytes. Parts are byte ranges of that stream, so the plan, the scheduler, the
//! hosts and the journal work the same for one file and for a thousand. A part of a
//! release is either a piece of one file or several small files whole (see
//! [`crate::send::plan::Plan::for_source`]).

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a source file looked like when the send started; checked again before its
/// rename.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stamp {
    pub size: u64,
    pub mtime: Option<SystemTime>,
}

/// The stamp of `path`, which must be a regular file.
pub fn stamp(path: &Path) -> Result<Stamp> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot read it", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(Stamp {
        size: meta.len(),
        mtime: meta.modified().ok(),
    })
}

/// One file of the source.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Its name on the server, relative to the upload directory (`/`-separated).
    pub dest: String,
    pub stamp: Stamp,
    /// Where its bytes start in the source's stream.
    pub start: u64,
    /// Its index among the files of the send as given, which names its temp file on
    /// the server.
    pub key: usize,
    /// The server has this very file already: its parts are not sent, it is not
    /// assembled or published. (It stays in the stream, so that a resumed run has
    /// the same plan whichever files the first published.)
    pub skip: bool,
}

impl SourceFile {
    pub fn size(&self) -> u64 {
        self.stamp.size
    }
}

/// The files a send reads, end to end.
#[derive(Clone, Debug)]
pub struct Source {
    pub files: Vec<SourceFile>,
    /// All their bytes.
    pub size: u64,
    release: bool,
}

impl Source {
    /// One file, sent under `dest`.
    pub fn single(path: &Path, dest: &str) -> Result<Source> {
        let stamp = stamp(path)?;
        Ok(Source {
            files: vec![SourceFile {
                path: path.to_path_buf(),
                dest: dest.to_string(),
                stamp,
                start: 0,
                key: 0,
                skip: false,
            }],
            size: stamp.size,
            release: false,
        })
    }

    /// A single file that need not exist (tests of what is recorded about a send).
    #[cfg(test)]
    pub fn unchecked(path: &Path, dest: &str, size: u64) -> Source {
        Source {
            files: vec![SourceFile {
                path: path.to_path_buf(),
                dest: dest.to_string(),
                stamp: Stamp { size, mtime: None },
                start: 0,
                key: 0,
                skip: false,
            }],
            size,
            release: false,
        }
    }

    /// A release: `(path, dest)` pairs, in the order they are sent.
    pub fn release(items: &[(PathBuf, String)]) -> Result<Source> {
        let mut files = Vec::with_capacity(items.len());
        let mut start = 0;
        for (key, (path, dest)) in items.iter().enumerate() {
            let stamp = stamp(path)?;
            files.push(SourceFile {
                path: path.clone(),
                dest: dest.clone(),
                stamp,
                start,
                key,
                skip: false,
            });
            start += stamp.size;
        }
        Ok(Source {
            files,
            size: start,
            release: true,
        })
    }

    /// The same source with the files `skip` (by index) marked as already on the
    /// server.
    pub fn skipping(&self, skip: &[usize]) -> Source {
        let mut s = self.clone();
        for &k in skip {
            s.files[k].skip = true;
        }
        s
    }

    /// Whether this is a release (many files, each under its own temp name on the
    /// server), not the send of one file.
    pub fn is_release(&self) -> bool {
        self.release
    }

    /// The file that holds the byte at `offset` of the stream (empty files hold
    /// none).
    pub fn locate(&self, offset: u64) -> usize {
        self.files
            .partition_point(|f| f.start + f.size() <= offset)
            .min(self.files.len().saturating_sub(1))
    }

    /// The files with bytes in `part`: one, or several small files packed whole.
    /// Empty files are in no part.
    pub fn files_in(&self, part: &crate::send::plan::Part) -> std::ops::Range<usize> {
        let first = self.locate(part.offset);
        let end = self
            .files
            .partition_point(|f| f.start < part.offset + part.len);
        first..end.max(first + 1)
    }

    /// Whether every file in `part` is on the server already, so it is not sent.
    pub fn part_skipped(&self, part: &crate::send::plan::Part) -> bool {
        self.files[self.files_in(part)]
            .iter()
            .all(|f| f.skip || f.size() == 0)
    }

    /// How many of `parts` hold bytes of each file.
    pub fn parts_per_file(&self, parts: &[crate::send::plan::Part]) -> Vec<usize> {
        let mut count = vec![0usize; self.files.len()];
        for p in parts {
            for k in self.files_in(p) {
                count[k] += 1;
            }
        }
        count
    }

    /// File `k`'s name inside the upload's temp dir on the server, with direct
    /// writes: `file` for the one file of a send, `<key>.file` in a release.
    pub fn temp_name(&self, k: usize) -> String {
        if self.release {
            crate::server::names::release_file(self.files[k].key)
        } else {
            crate::server::names::DIRECT_FILE.to_string()
        }
    }

    /// `len` bytes of the stream from `offset`, read straight from the files.
    pub fn reader(&self, offset: u64, len: u64) -> Result<RangeReader> {
        let mut pieces = Vec::new();
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let k = self.locate(at);
            let f = &self.files[k];
            if f.start + f.size() <= at {
                bail!("offset {at} is past the end of the source");
            }
            let n = (f.start + f.size()).min(end) - at;
            pieces.push((f.path.clone(), at - f.start, n));
            at += n;
        }
        pieces.reverse();
        Ok(RangeReader {
            pieces,
            current: None,
        })
    }

    /// MD5 of `len` bytes of the stream from `offset`.
    pub fn md5_range(&self, offset: u64, len: u64) -> Result<String> {
        let mut r = self.reader(offset, len)?;
        let sum = crate::send::hashes::md5_of(&mut r)?;
        r.complete()?;
        Ok(sum)
    }

    /// The first file that is not what it was when the send started.
    pub fn changed(&self) -> Option<&SourceFile> {
        self.files
            .iter()
            .find(|f| stamp(&f.path).ok() != Some(f.stamp))
    }

    /// A release's files as the journal records them (name on the server, size);
    /// nothing for one file's send.
    pub fn layout(&self) -> Vec<(String, u64)> {
        if !self.release {
            return Vec::new();
        }
        self.files
            .iter()
            .map(|f| (f.dest.clone(), f.size()))
            .collect()
    }

    /// Bytes of `parts` not sent, as the server has every file in them already (a
    /// file it has that shares its part with one it lacks is sent all the same).
    pub fn skipped_bytes(&self, parts: &[crate::send::plan::Part]) -> u64 {
        parts
            .iter()
            .filter(|p| self.part_skipped(p))
            .map(|p| p.len)
            .sum()
    }

    /// How the send is named in messages: the file, or the number of files.
    pub fn label(&self) -> String {
        match (self.release, self.files.first()) {
            (false, Some(f)) => f.dest.clone(),
            _ => format!("{} files", self.files.len()),
        }
    }
}

/// Where each part goes on the server: its own part file (`<n>.part`, the
/// append-merge), or, with direct writes, a file in the temp dir whole or at an
/// offset.
#[derive(Clone, Debug, Default)]
pub struct Places {
    /// By part index: the file in the temp dir and the offset there; empty for the
    /// append-merge.
    by_part: Vec<(String, Option<u64>)>,
}

impl Places {
    /// Every part as its own part file.
    pub fn parts() -> Places {
        Places::default()
    }

    /// Direct writes: a file's only part is uploaded whole as that file; a file of
    /// several parts has each written at its offset (the file is made beforehand
    /// with its first byte, see [`crate::transport::Uploader::write_at`]). One
    /// file's send writes every part at its offset, as it always has.
    pub fn direct(source: &Source, parts: &[crate::send::plan::Part]) -> Places {
        let count = source.parts_per_file(parts);
        let by_part = parts
            .iter()
            .map(|p| {
                let k = source.locate(p.offset);
                let at = p.offset - source.files[k].start;
                let whole = source.is_release() && count[k] == 1;
                (source.temp_name(k), (!whole).then_some(at))
            })
            .collect();
        Places { by_part }
    }

    /// Part `index`'s file in the temp dir (none: its own part file) and offset.
    pub fn of(&self, index: usize) -> (Option<&str>, Option<u64>) {
        match self.by_part.get(index) {
            Some((name, at)) => (Some(name.as_str()), *at),
            None => (None, None),
        }
    }
}

/// Reads a range of a [`Source`], across files where it spans them.
pub struct RangeReader {
    /// What is left: (file, offset, len), the next one last.
    pieces: Vec<(PathBuf, u64, u64)>,
    current: Option<(PathBuf, std::io::Take<File>)>,
}

impl RangeReader {
    /// An error if a file ended before its piece was read (it became shorter).
    pub fn complete(&self) -> Result<()> {
        match &self.current {
            Some((path, t)) if t.limit() > 0 => Err(anyhow!(
                "{} became shorter while being read",
                path.display()
            )),
            _ if !self.pieces.is_empty() => Err(anyhow!("the source ended early")),
            _ => Ok(()),
        }
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((path, t)) = &mut self.current {
                let n = t.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if t.limit() > 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} became shorter while being read", path.display()),
                    ));
                }
                self.current = None;
            }
            let Some((path, offset, len)) = self.pieces.pop() else {
                return Ok(0);
            };
            let mut f = File::open(&path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: cannot open it: {e}", path.display()))
            })?;
            f.seek(SeekFrom::Start(offset))?;
            self.current = Some((path, f.take(len)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_reads_as_one_stream() {
        let d = tempfile::tempdir().unwrap();
        let mut items = Vec::new();
        for (name, body) in [("a", &b"abc"[..]), ("e", b""), ("b", b"defg"), ("c", b"h")] {
            let p = d.path().join(name);
            std::fs::write(&p, body).unwrap();
            items.push((p, name.to_string()));
        }
        let s = Source::release(&items).unwrap();
        assert_eq!(s.size, 8);
        assert_eq!(
            s.files.iter().map(|f| f.start).collect::<Vec<_>>(),
            [0, 3, 3, 7]
        );
        assert_eq!(
            (0..8).map(|o| s.locate(o)).collect::<Vec<_>>(),
            [0, 0, 0, 2, 2, 2, 2, 3]
        );
        let mut all = String::new();
        s.reader(1, 7).unwrap().read_to_string(&mut all).unwrap();
        assert_eq!(all, "bcdefgh");
        assert_eq!(
            s.md5_range(3, 4).unwrap(),
            format!("{:x}", <md5::Md5 as md5::Digest>::digest(b"defg"))
        );
        assert!(s.reader(5, 10).is_err());
        assert_eq!(s.temp_name(2), "2.file");
        assert!(s.changed().is_none());
        std::fs::write(d.path().join("b"), b"xy").unwrap();
        assert_eq!(s.changed().map(|f| f.dest.as_str()), Some("b"));
        assert!(s.md5_range(3, 4).is_err());
    }

    #[test]
    fn direct_writes_put_a_one_part_file_whole_and_the_others_at_offsets() {
        let d = tempfile::tempdir().unwrap();
        let mut items = Vec::new();
        for (name, n) in [("a", 10usize), ("b", 3)] {
            let p = d.path().join(name);
            std::fs::write(&p, vec![1u8; n]).unwrap();
            items.push((p, name.to_string()));
        }
        let s = Source::release(&items).unwrap();
        let plan = crate::send::plan::Plan::for_source(
            &s,
            1,
            crate::send::plan::Strategy::Adaptive,
            Some(4),
            crate::send::plan::SmallFiles::Apart,
            crate::send::plan::MIN_GUIDED_PART,
        );
        let places = Places::direct(&s, &plan.parts);
        let got: Vec<_> = (0..plan.parts.len()).map(|i| places.of(i)).collect();
        assert_eq!(
            got,
            [
                (Some("0.file"), Some(0)),
                (Some("0.file"), Some(4)),
                (Some("0.file"), Some(8)),
                (Some("1.file"), None)
            ]
        );
        assert_eq!(Places::parts().of(0), (None, None));
        let one = Source::single(&items[0].0, "a").unwrap();
        let plan = crate::send::plan::Plan::new(
            10,
            1,
            crate::send::plan::Strategy::Adaptive,
            Some(4),
            crate::send::plan::MIN_GUIDED_PART,
        );
        assert_eq!(
            Places::direct(&one, &plan.parts).of(1),
            (Some("file"), Some(4))
        );
    }
}
