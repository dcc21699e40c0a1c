//! One sequential pass over the source gives the whole file's MD5 (what the server's
//! `md5sum` of the merged file is compared with) and every part's checksum (what a
//! relay checks its staged copy against). Workers that need a part's checksum take
//! it from here instead of reading the bytes a second time.
//!
//! Part checksums are XXH3-128, not MD5: they only guard the hop from this machine to
//! a peer's disk and back out, the proof is the whole file's MD5 on the server, and
//! a second MD5 of every byte cost as much CPU as the first (a third of this process's
//! CPU with seven peers on two cores).

use super::md5::Md5;
use anyhow::{anyhow, Context, Result};
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use xxhash_rust::xxh3::Xxh3;

use crate::send::plan::Part;
use crate::send::source::Source;

#[derive(Default)]
struct State {
    parts: Vec<Option<String>>,
    /// Every file's MD5 the pass has finished, in order.
    files: Vec<String>,
    /// And its SHA-256, when asked for (a `sha256sum` manifest).
    sha256: Vec<String>,
    failed: Option<String>,
}

pub struct Hashes {
    state: Mutex<State>,
    /// Signalled when a file's MD5 is done or the pass failed.
    file_done: std::sync::Condvar,
    source: Arc<Source>,
    parts: Vec<Part>,
}

impl Hashes {
    /// Starts hashing `source`, whose parts are `parts` (contiguous, in order, none
    /// spanning two files). The thread returns every file's MD5, in order (empty for
    /// a file the server has already, which is not read).
    pub fn spawn(
        source: Arc<Source>,
        parts: Vec<Part>,
    ) -> (Arc<Hashes>, JoinHandle<Result<Vec<String>>>) {
        Hashes::spawn_with(source, parts, false)
    }

    /// [`Hashes::spawn`], computing every file's SHA-256 in the same pass too
    /// (`sha256`; see [`Hashes::sha256`]).
    pub fn spawn_with(
        source: Arc<Source>,
        parts: Vec<Part>,
        sha256: bool,
    ) -> (Arc<Hashes>, JoinHandle<Result<Vec<String>>>) {
        let hashes = Arc::new(Hashes {
            state: Mutex::new(State {
                parts: vec![None; parts.len()],
                files: Vec::new(),
                sha256: Vec::new(),
                failed: None,
            }),
            file_done: std::sync::Condvar::new(),
            source: source.clone(),
            parts: parts.clone(),
        });
        let shared = hashes.clone();
        let handle = std::thread::spawn(move || {
            let result = shared.run(&source, &parts, sha256);
            if let Err(e) = &result {
                shared.lock().failed = Some(format!("{e:#}"));
                shared.file_done.notify_all();
            }
            result
        });
        (hashes, handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, source: &Source, parts: &[Part], sha256: bool) -> Result<Vec<String>> {
        let mut buf = vec![0u8; 1 << 20];
        let mut next = parts.iter().peekable();
        // The part being hashed and its bytes still to come: a part of several small
        // files goes on from one file into the next.
        let mut current: Option<(usize, Xxh3, u64)> = None;
        let mut sums = Vec::with_capacity(source.files.len());
        for file in &source.files {
            let end = file.start + file.size();
            let shares = next.peek().is_some_and(|p| p.offset + p.len > end);
            if file.skip && !sha256 && !shares && current.is_none() {
                // The server has it: its MD5 is known from the pre-flight, and its
                // parts are not sent. Not read a second time.
                while next.next_if(|p| p.offset < end).is_some() {}
                sums.push(String::new());
                self.lock().files.push(String::new());
                continue;
            }
            let path = &file.path;
            let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let mut whole = Md5::new();
            let mut sha = sha256.then(<sha2::Sha256 as sha2::Digest>::new);
            let mut in_file = file.size();
            while in_file > 0 {
                if current.is_none() {
                    let Some(part) = next.next_if(|p| p.offset < end) else {
                        break;
                    };
                    current = Some((part.index, Xxh3::new(), part.len));
                }
                let (index, sum, left) = current.as_mut().expect("a part is being hashed");
                let want = (buf.len() as u64).min(*left).min(in_file) as usize;
                let n = f
                    .read(&mut buf[..want])
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    return Err(anyhow!(
                        "{} became shorter while being read",
                        path.display()
                    ));
                }
                whole.update(&buf[..n]);
                if let Some(h) = &mut sha {
                    sha2::Digest::update(h, &buf[..n]);
                }
                sum.update(&buf[..n]);
                *left -= n as u64;
                in_file -= n as u64;
                if *left == 0 {
                    self.lock().parts[*index] = Some(hex128(sum.digest128()));
                    current = None;
                }
            }
            // Anything after the last part (the file grew) still counts: the caller
            // compares against the server's MD5 and the size check catches the rest.
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                whole.update(&buf[..n]);
                if let Some(h) = &mut sha {
                    sha2::Digest::update(h, &buf[..n]);
                }
            }
            let sum = whole.hex();
            sums.push(sum.clone());
            let mut state = self.lock();
            state.files.push(sum);
            if let Some(h) = sha {
                state
                    .sha256
                    .push(format!("{:x}", sha2::Digest::finalize(h)));
            }
            self.file_done.notify_all();
        }
        Ok(sums)
    }

    /// File `k`'s SHA-256, if the pass computed it and is past the file.
    pub fn sha256(&self, k: usize) -> Option<String> {
        self.lock().sha256.get(k).cloned()
    }

    /// File `k`'s MD5, once the pass has read all of it (waits for it).
    pub fn file(&self, k: usize) -> Result<String> {
        let mut s = self.lock();
        loop {
            if let Some(sum) = s.files.get(k) {
                return Ok(sum.clone());
            }
            if let Some(e) = &s.failed {
                return Err(anyhow!("hashing the source failed: {e}"));
            }
            s = self.file_done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Part `index`'s checksum: from the pass if it got there, else computed now
    /// (with `equal`, peers start in the middle of the file, long before the pass
    /// reaches their share; waiting would delay them).
    pub fn part(&self, index: usize) -> Result<String> {
        {
            let s = self.lock();
            if let Some(Some(sum)) = s.parts.get(index) {
                return Ok(sum.clone());
            }
            if let Some(e) = &s.failed {
                return Err(anyhow!("hashing the source failed: {e}"));
            }
        }
        let part = self
            .parts
            .get(index)
            .ok_or_else(|| anyhow!("no part {index}"))?;
        let mut r = self.source.reader(part.offset, part.len)?;
        let sum = checksum_of(&mut r)?;
        r.complete()?;
        Ok(sum)
    }
}

fn hex128(v: u128) -> String {
    format!("{v:032x}")
}

/// XXH3-128 of everything `r` yields, as 32 hex digits: a part's checksum.
/// A reader that hashes what passes through it with XXH3-128, as [`checksum_of`]
/// would: the checksum of the bytes that were actually read (and sent on).
pub struct ChecksumReader<R> {
    pub inner: R,
    pub sum: Arc<Mutex<Xxh3>>,
}

impl<R: Read> Read for ChecksumReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sum
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(&buf[..n]);
        Ok(n)
    }
}

/// The hex form of a [`ChecksumReader`]'s sum so far.
pub fn checksum_hex(sum: &Mutex<Xxh3>) -> String {
    hex128(sum.lock().unwrap_or_else(|e| e.into_inner()).digest128())
}

pub fn checksum_of(r: &mut dyn Read) -> Result<String> {
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex128(h.digest128()));
        }
        h.update(&buf[..n]);
    }
}

/// MD5 of everything `r` yields, read in 1 MiB pieces.
pub fn md5_of(r: &mut dyn Read) -> Result<String> {
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.hex());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::plan::fixed;

    #[test]
    fn one_pass_gives_every_part_checksum_and_the_whole_md5() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let parts = fixed(data.len() as u64, 1 << 20);
        let source = Arc::new(Source::single(&path, "f").unwrap());
        let (h, t) = Hashes::spawn(source, parts.clone());
        for p in parts.iter().rev() {
            let want = format!(
                "{:032x}",
                xxhash_rust::xxh3::xxh3_128(&data[p.offset as usize..(p.offset + p.len) as usize])
            );
            assert_eq!(h.part(p.index).unwrap(), want);
        }
        assert_eq!(
            t.join().unwrap().unwrap(),
            [format!("{:x}", <md5::Md5 as md5::Digest>::digest(&data))]
        );
        assert!(h.part(99).is_err());
    }

    #[test]
    fn a_file_gone_fails_every_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 10]).unwrap();
        let source = Arc::new(Source::single(&path, "f").unwrap());
        std::fs::remove_file(&path).unwrap();
        let (h, t) = Hashes::spawn(source, fixed(10, 5));
        assert!(t.join().unwrap().is_err());
        assert!(h.part(1).is_err());
    }

    #[test]
    fn a_part_of_several_small_files_is_hashed_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut items = Vec::new();
        for (name, body) in [("a", &b"0123456789"[..]), ("b", b"ab"), ("c", b"cde")] {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            items.push((p, name.to_string()));
        }
        let source = Source::release(&items).unwrap();
        let plan = crate::send::plan::Plan::for_source(
            &source,
            1,
            crate::send::plan::Strategy::Adaptive,
            Some(8),
            crate::send::plan::SmallFiles::Together,
            crate::send::plan::MIN_GUIDED_PART,
        );
        assert_eq!(plan.parts.len(), 3);
        let xxh = |b: &[u8]| format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b));
        // The server has "b": it is read all the same, as its part is sent for "c".
        let skipping = Arc::new(source.skipping(&[1]));
        let (h, t) = Hashes::spawn(skipping, plan.parts.clone());
        let md5 = |b: &[u8]| format!("{:x}", <md5::Md5 as md5::Digest>::digest(b));
        assert_eq!(
            t.join().unwrap().unwrap(),
            [md5(b"0123456789"), md5(b"ab"), md5(b"cde")]
        );
        assert_eq!(h.part(2).unwrap(), xxh(b"abcde"));
        assert_eq!(h.part(1).unwrap(), xxh(b"89"));
    }

    #[test]
    fn a_release_gives_each_file_its_md5() {
        let dir = tempfile::tempdir().unwrap();
        let mut items = Vec::new();
        for (name, body) in [("a", &b"hello"[..]), ("e", b""), ("b", b"world!")] {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            items.push((p, name.to_string()));
        }
        let source = Arc::new(Source::release(&items).unwrap());
        let plan = crate::send::plan::Plan::for_source(
            &source,
            2,
            crate::send::plan::Strategy::Adaptive,
            Some(4),
            crate::send::plan::SmallFiles::Apart,
            crate::send::plan::MIN_GUIDED_PART,
        );
        assert_eq!(
            plan.parts
                .iter()
                .map(|p| (p.offset, p.len))
                .collect::<Vec<_>>(),
            [(0, 4), (4, 1), (5, 4), (9, 2)]
        );
        let (h, t) = Hashes::spawn(source, plan.parts.clone());
        let md5 = |b: &[u8]| format!("{:x}", <md5::Md5 as md5::Digest>::digest(b));
        assert_eq!(
            t.join().unwrap().unwrap(),
            [md5(b"hello"), md5(b""), md5(b"world!")]
        );
        assert_eq!(
            h.part(3).unwrap(),
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"d!"))
        );
        assert_eq!(h.file(2).unwrap(), md5(b"world!"));
        // A file the server has already is not read (its MD5 came from there).
        let skipping = Arc::new(Source::release(&items).unwrap().skipping(&[0]));
        let (h, t) = Hashes::spawn(skipping, plan.parts.clone());
        assert_eq!(t.join().unwrap().unwrap(), ["", &md5(b""), &md5(b"world!")]);
        assert_eq!(
            h.part(3).unwrap(),
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"d!"))
        );
        assert_eq!(h.sha256(0), None, "not asked for");
        let source = Arc::new(Source::release(&items).unwrap());
        let (h, t) = Hashes::spawn_with(source, plan.parts.clone(), true);
        t.join().unwrap().unwrap();
        assert_eq!(
            h.sha256(2).unwrap(),
            format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(b"world!"))
        );
    }
}
