//! One sequential pass over the source gives the whole file's MD5 and every part's.
//! Workers that need a part's MD5 (to hand to a relay, or to report) take it from here
//! instead of hashing the bytes a second time: on a small machine every pass counts.

use anyhow::{anyhow, Context, Result};
use md5::{Digest, Md5};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::plan::Part;

#[derive(Default)]
struct State {
    parts: Vec<Option<String>>,
    failed: Option<String>,
}

pub struct Hashes {
    state: Mutex<State>,
    source: PathBuf,
    parts: Vec<Part>,
}

impl Hashes {
    /// Starts hashing `source`, whose parts are `parts` (contiguous, in order). The
    /// thread returns the whole file's MD5.
    pub fn spawn(source: PathBuf, parts: Vec<Part>) -> (Arc<Hashes>, JoinHandle<Result<String>>) {
        let hashes = Arc::new(Hashes {
            state: Mutex::new(State {
                parts: vec![None; parts.len()],
                failed: None,
            }),
            source: source.clone(),
            parts: parts.clone(),
        });
        let shared = hashes.clone();
        let handle = std::thread::spawn(move || {
            let result = shared.run(&source, &parts);
            if let Err(e) = &result {
                shared.lock().failed = Some(format!("{e:#}"));
            }
            result
        });
        (hashes, handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, source: &std::path::Path, parts: &[Part]) -> Result<String> {
        let mut f = File::open(source).with_context(|| format!("opening {}", source.display()))?;
        let mut whole = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        for part in parts {
            let mut hash = Md5::new();
            let mut left = part.len;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = f
                    .read(&mut buf[..want])
                    .with_context(|| format!("reading {}", source.display()))?;
                if n == 0 {
                    return Err(anyhow!(
                        "{} became shorter while being read",
                        source.display()
                    ));
                }
                whole.update(&buf[..n]);
                hash.update(&buf[..n]);
                left -= n as u64;
            }
            self.lock().parts[part.index] = Some(format!("{:x}", hash.finalize()));
        }
        // Anything after the last part (the file grew) still counts: the caller compares
        // against the server's MD5 and the size check catches the rest.
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            whole.update(&buf[..n]);
        }
        Ok(format!("{:x}", whole.finalize()))
    }

    /// Part `index`'s MD5: from the pass if it got there, else hashed here and now
    /// (with `equal`, peers start in the middle of the file, long before the pass
    /// reaches their share; waiting would delay them).
    pub fn part(&self, index: usize) -> Result<String> {
        {
            let s = self.lock();
            if let Some(Some(md5)) = s.parts.get(index) {
                return Ok(md5.clone());
            }
            if let Some(e) = &s.failed {
                return Err(anyhow!("hashing the source failed: {e}"));
            }
        }
        let part = self
            .parts
            .get(index)
            .ok_or_else(|| anyhow!("no part {index}"))?;
        md5_range(&self.source, part.offset, part.len)
    }
}

/// MD5 of everything `r` yields, read in 1 MiB pieces.
pub fn md5_of(r: &mut dyn Read) -> Result<String> {
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(format!("{:x}", h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// MD5 of `len` bytes of `path` from `offset`; a file shorter than that is an error.
pub fn md5_range(path: &Path, offset: u64, len: u64) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(offset))?;
    let mut range = f.take(len);
    let md5 = md5_of(&mut range)?;
    if range.limit() != 0 {
        return Err(anyhow!(
            "{} became shorter while being read",
            path.display()
        ));
    }
    Ok(md5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixed;

    #[test]
    fn one_pass_gives_every_part_and_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let parts = fixed(data.len() as u64, 1 << 20);
        let (h, t) = Hashes::spawn(path, parts.clone());
        for p in parts.iter().rev() {
            let want = format!(
                "{:x}",
                Md5::digest(&data[p.offset as usize..(p.offset + p.len) as usize])
            );
            assert_eq!(h.part(p.index).unwrap(), want);
        }
        assert_eq!(
            t.join().unwrap().unwrap(),
            format!("{:x}", Md5::digest(&data))
        );
        assert!(h.part(99).is_err());
    }

    #[test]
    fn a_missing_file_fails_every_caller() {
        let (h, t) = Hashes::spawn("/nonexistent/file".into(), fixed(10, 5));
        assert!(t.join().unwrap().is_err());
        assert!(h.part(1).is_err());
    }
}
