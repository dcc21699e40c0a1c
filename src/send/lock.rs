//! One run of a send at a time. Two runs of the same send (a double start, a CI retry
//! while the first is still going) would share the server's temp dir and the peers'
//! staging names, so each run takes two locks before it writes anything: a file lock
//! next to its journal entry on this machine, and a `flock` on the server held by the
//! merge login for the whole run (see `merge::prepare`). Both are released by the
//! kernel when the run dies, however it dies. A run that finds either lock taken
//! stops at once with [`Busy`] (exit 6) and names the other run.

use anyhow::{Context, Result};

use crate::error::Code;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::time::{Duration, SystemTime};

/// Who holds a lock: written into the lock by its holder, shown to the next run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub host: String,
    pub pid: u32,
    /// Seconds since the epoch when the run started.
    pub since: u64,
    /// The machine's id ([`crate::platform::machine_id`]), where it has one: host
    /// names repeat (containers, CI runners), and only a run of this very machine may
    /// be judged dead by its pid.
    pub machine: Option<String>,
}

impl Owner {
    /// This process.
    pub fn me() -> Owner {
        Owner {
            host: hostname(),
            pid: std::process::id(),
            since: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            machine: machine_id(),
        }
    }

    /// `host pid since [machine]`, the form kept in lock files. Host names hold no
    /// spaces.
    pub fn to_line(&self) -> String {
        match &self.machine {
            Some(m) => format!("{} {} {} {m}", self.host, self.pid, self.since),
            None => format!("{} {} {}", self.host, self.pid, self.since),
        }
    }

    /// The inverse of [`Owner::to_line`]; `None` for anything else (a lock file is
    /// read back from disk and is not trusted).
    pub fn parse(line: &str) -> Option<Owner> {
        let mut f = line.split_whitespace();
        let host = f.next()?;
        let pid = f.next()?.parse().ok()?;
        let since = f.next()?.parse().ok()?;
        let machine = match f.next() {
            Some(m) if m.len() == 16 && m.chars().all(|c| c.is_ascii_hexdigit()) => {
                Some(m.to_string())
            }
            Some(_) => return None,
            None => None,
        };
        let host_ok = host.len() <= 255
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        (host_ok && f.next().is_none()).then(|| Owner {
            host: host.to_string(),
            pid,
            since,
            machine,
        })
    }

    /// Whether this owner is a process of this machine that no longer runs.
    pub fn is_dead_here(&self) -> bool {
        if self.host != hostname() || self.pid == 0 {
            return false;
        }
        // A lock written without a machine id is judged by the host name alone.
        if self.machine.is_some() && self.machine != machine_id() {
            return false;
        }
        !crate::platform::may_be_running(self.pid)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(self.since);
        write!(
            f,
            "on {} since {}; pid {}",
            self.host,
            humantime::format_rfc3339_seconds(since),
            self.pid
        )
    }
}

/// Another run of the same send holds the lock. Carries the whole message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// The message for a lock held by `owner` (or by an unknown holder).
pub fn busy(owner: Option<&Owner>, what: &str) -> Busy {
    Busy(match owner {
        Some(o) => format!(
            "another send of this file is running {o} ({what}); wait for it to finish, then run this command again"
        ),
        None => format!(
            "another send of this file is running ({what}); wait for it to finish, then run this command again"
        ),
    })
}

/// This machine's lock on one upload id, held until dropped.
#[derive(Debug)]
pub struct LocalLock {
    _file: File,
}

impl LocalLock {
    /// Takes the lock for `upload_id` next to the journal, or fails with [`Busy`].
    /// The file is never removed: removing a lock file while another process has it
    /// open lets two runs each lock a different file.
    pub fn acquire(upload_id: &str) -> Result<LocalLock> {
        let dir = crate::send::journal::dir()?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let path = dir.join(format!("{upload_id}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let owner = Owner::parse(text.trim());
                let what = format!("lock {}", path.display());
                return Err(anyhow::Error::new(busy(owner.as_ref(), &what)).context(Code::Busy));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", Owner::me().to_line())?;
        Ok(LocalLock { _file: file })
    }

    /// Whether some process holds the lock for `upload_id` now (`relayup clean`).
    pub fn held(upload_id: &str) -> Option<Busy> {
        match LocalLock::acquire(upload_id) {
            Err(e) => e.downcast::<Busy>().ok(),
            Ok(_) => None,
        }
    }
}

/// The names of one run: the upload id (the same for every run of a send, so a re-run
/// finds its temp dir) and the run's own id (in every name the run writes).
#[derive(Clone, Debug)]
pub struct Ids {
    pub upload: String,
    pub run: String,
}

/// A name for one run, different for every run: it goes into every name a run writes
/// (merged file, temporary upload names, staged parts), so two runs never write the
/// same file even where no lock can reach (a relay cut off from its client).
pub fn new_run_id() -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(std::process::id().to_le_bytes());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update(hostname().as_bytes());
    format!("{:x}", h.finalize())[..8].to_string()
}

/// An id of this machine for relayup's lock files, if it has one
/// ([`crate::platform::machine_id`]): derived from it, not the id itself, which is not
/// to be shown to others.
fn machine_id() -> Option<String> {
    use md5::{Digest, Md5};
    let id = crate::platform::machine_id()?;
    let id = id.trim();
    if id.is_empty() {
        return None;
    }
    let mut h = Md5::new();
    h.update(b"relayup lock owner\0");
    h.update(id.as_bytes());
    Some(format!("{:x}", h.finalize())[..16].to_string())
}

/// This machine's host name (`localhost` if it has none).
pub fn hostname() -> String {
    match crate::platform::hostname() {
        Some(name) if !name.is_empty() && Owner::parse(&format!("{name} 0 0")).is_some() => name,
        _ => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_lines_round_trip_and_junk_is_refused() {
        let o = Owner {
            host: "build-7.example".into(),
            pid: 4242,
            since: 1_795_000_000,
            machine: Some("0123456789abcdef".into()),
        };
        assert_eq!(Owner::parse(&o.to_line()), Some(o.clone()));
        let old = Owner {
            machine: None,
            ..o.clone()
        };
        assert_eq!(Owner::parse("build-7.example 4242 1795000000"), Some(old));
        let shown = o.to_string();
        assert!(
            shown.starts_with("on build-7.example since 2026-"),
            "{shown}"
        );
        assert!(shown.ends_with("; pid 4242"), "{shown}");
        for bad in [
            "",
            "h",
            "h x 1",
            "h 1 x",
            "h;rm 1 1",
            "h$(x) 1 1",
            "h 1 1 nothex",
            "h 1 1 ab cd",
        ] {
            assert_eq!(Owner::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn run_ids_differ() {
        let a = new_run_id();
        std::thread::sleep(Duration::from_millis(1));
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(a.len() == 8 && a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn this_process_is_alive_and_a_foreign_host_is_never_called_dead() {
        let me = Owner::me();
        assert!(!me.is_dead_here());
        let other = Owner {
            host: "not-this-host-x".into(),
            ..me.clone()
        };
        assert!(!other.is_dead_here());
        // The same host name on another machine (a container, a CI runner): never
        // judged by a pid of this one, even one that does not run here.
        // A process that has just ended: this test program listing its tests.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--list")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let twin = Owner {
            pid: dead,
            machine: Some("ffffffffffffffff".into()),
            ..me.clone()
        };
        assert!(machine_id().is_none() || !twin.is_dead_here());
        let gone_here = Owner { pid: dead, ..me };
        assert!(gone_here.is_dead_here());
    }
}
