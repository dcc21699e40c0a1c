//! `relayup send`: settings (`target`) → pre-flight, plan and the transfer on every
//! host at once (`start`, driving `hosts` through `schedule`) → verify and publish
//! (`finish`) → report. A second round sends again parts found bad on the server.

mod finish;
pub mod hashes;
pub mod health;
pub mod hosts;
pub mod journal;
pub mod local;
pub mod lock;
pub mod md5;
mod peers;
pub mod plan;
mod preflight;
pub mod release;
pub mod schedule;
pub mod source;
mod start;
mod target;

use anyhow::{anyhow, Context, Result};
use std::process::ExitCode;
use std::sync::mpsc;

use crate::cli::SendArgs;
use crate::error::{with_code, Code};
use crate::interrupt;
use crate::progress;
use lock::{Ids, LocalLock};
use peers::{HostEnd, Latch, Signals};
use start::Lead;
use target::Target;

/// How one run of a send ended, when it did not fail.
enum Outcome {
    /// `--dry-run`: the plan is printed, nothing sent.
    Planned,
    /// The files are on the server under their names, verified.
    Sent(Vec<FileReport>),
    /// The destination already holds this very file (this MD5): nothing was sent.
    AlreadyThere(String),
    /// Parts were missing or corrupt on the server at the merge and have been removed
    /// there: `run` sends them again (once).
    Resend(CorruptParts),
}

/// Parts missing or corrupt on the server at the merge, and the peers that reported
/// them done (a relay that lies, or whose uploads go bad, is not asked again).
#[derive(Debug, Clone)]
struct CorruptParts {
    count: usize,
    /// Peers that reported one of those parts done in this run.
    suspects: Vec<String>,
}

impl std::fmt::Display for CorruptParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} part(s) were missing or corrupt on the server",
            self.count
        )?;
        if !self.suspects.is_empty() {
            write!(f, " (reported done by {})", self.suspects.join(", "))?;
        }
        Ok(())
    }
}

/// One file on the server after a send.
#[derive(Clone, Debug)]
pub struct FileReport {
    /// Its path on the server, relative to the upload directory.
    pub dest: String,
    pub source: std::path::PathBuf,
    pub bytes: u64,
    pub md5: String,
    /// The destination already held this very file: it was not sent.
    pub already_there: bool,
    /// Its SHA-256, when asked for.
    pub sha256: Option<String>,
    /// Its `file_done` event went out when it was published, before the end.
    pub announced: bool,
}

pub fn run(args: SendArgs) -> Result<ExitCode> {
    interrupt::install();
    let one_file = args.paths.len() == 1
        && args.manifest.is_none()
        && std::fs::metadata(&args.paths[0]).is_ok_and(|m| m.is_file());
    if one_file || (args.paths.len() == 1 && std::fs::metadata(&args.paths[0]).is_err()) {
        let mut one = args.clone();
        one.file = args.paths[0].clone();
        return send_files(&one).map(|_| ExitCode::SUCCESS);
    }
    release::run(&args)
}

/// Sends one file (`args.file`) or a release (`args.items`), with a second round
/// for parts found bad. Nothing for `--dry-run`.
pub fn send_files(args: &SendArgs) -> Result<Vec<FileReport>> {
    let result = match send(args, &[]) {
        Ok(Outcome::Resend(c)) => {
            // Once: the resume path finds every good part on the server and sends the
            // rest.
            let without = if c.suspects.is_empty() {
                String::new()
            } else {
                format!(" without {}", c.suspects.join(", "))
            };
            progress::warn(&format!("{c}; sending them again{without}"));
            send(args, &c.suspects)
        }
        other => other,
    };
    let result = match result {
        Ok(Outcome::Planned) => Ok(Vec::new()),
        Ok(Outcome::Sent(files)) => Ok(files),
        Ok(Outcome::AlreadyThere(md5)) => Ok(vec![FileReport {
            dest: args.dest_path.clone().unwrap_or_default(),
            source: args.file.clone(),
            bytes: std::fs::metadata(&args.file).map_or(0, |m| m.len()),
            md5,
            already_there: true,
            sha256: None,
            announced: false,
        }]),
        Ok(Outcome::Resend(c)) => Err(with_code(
            anyhow!("{c} twice; nothing was renamed into place"),
            Code::Verify,
        )),
        Err(e) => Err(e),
    };
    if let Some(reason) = interrupt::reason() {
        return Err(anyhow!(
            "{reason}; the send stopped before anything went to that host (parts already on the server are kept for a re-run)"
        ))
        .context(Code::Connect);
    }
    match result {
        Err(e) if interrupt::interrupted() && e.downcast_ref::<Code>() != Some(&Code::Usage) => Err(anyhow!(
            "interrupted; staged parts on the peers are removed, the parts already on the server are kept. \
             Run the same command again to resume: {}",
            resume_command()
        ))
        .context(Code::Interrupted),
        other => other,
    }
}

/// The command line that was run, quoted for a POSIX shell; arguments need not be UTF-8.
fn resume_command() -> String {
    std::env::args_os()
        .map(|a| match a.to_str() {
            Some(s)
                if !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c)) =>
            {
                s.to_string()
            }
            _ => crate::remote::quote::sh_os(&a),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One run of the send, leaving out the peers named in `exclude`.
fn send(args: &SendArgs, exclude: &[String]) -> Result<Outcome> {
    // Everything that can be wrong without the network first: exit 2.
    let t = Target::resolve(args, exclude).map_err(|e| with_code(e, Code::Usage))?;
    let id = t.upload_id();
    if args.dry_run {
        t.print_plan(&id);
        return Ok(Outcome::Planned);
    }
    // One run of this send at a time on this machine; the server lock (pre-flight)
    // covers runs elsewhere.
    let _lock = LocalLock::acquire(&id)?;
    let ids = Ids {
        upload: id,
        run: lock::new_run_id(),
    };
    if t.settings.server.scheme == "ftp" {
        progress::warn(
            "ftp:// sends the password and the data in clear text; prefer ftps:// or sftp://",
        );
    }
    let signals = Signals {
        hello: Latch::new(),
        go: Latch::new(),
    };
    if t.settings.server.scheme != "sftp" {
        signals.hello.set(Some(t.settings.server.clone()));
    }
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, bool)>();
    std::thread::scope(|s| {
        let peer_threads: Vec<_> = (1..=t.settings.peers.len())
            .map(|host| {
                let ready = ready_tx.clone();
                let (t, ids, signals) = (&t, &ids, &signals);
                s.spawn(move || peers::peer_thread(host, t, ids, signals, ready))
            })
            .collect();
        drop(ready_tx);
        let lead = start::lead(&t, &ids, &signals, ready_rx);
        // However the lead ended, nobody may wait for it any more.
        signals.hello.set(None);
        signals.go.set(None);
        let mut ends: Vec<HostEnd> = peer_threads
            .into_iter()
            .map(|h| h.join().expect("peer threads do not panic"))
            .collect();
        let mut run = match lead? {
            Lead::AlreadyThere(md5) => return Ok(Outcome::AlreadyThere(md5)),
            Lead::Run(run) => *run,
        };
        ends.insert(0, run.local.take().expect("local result is set"));
        finish::finish(run, ends, &t, &ids)
    })
}

#[cfg(test)]
mod tests {
    use super::target::validate_dest;
    use std::ffi::OsStr;

    #[test]
    fn destination_names() {
        for ok in [
            "a.iso",
            "with space",
            "it's",
            "$(x)",
            "`id`",
            "a;b",
            "-leading",
            "ünï",
        ] {
            assert_eq!(validate_dest(OsStr::new(ok)).unwrap(), ok);
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/abs",
            "../up",
            "new\nline",
            "cr\r",
            ".relayup-x",
        ] {
            assert!(validate_dest(OsStr::new(bad)).is_err(), "{bad:?}");
        }
        let err = validate_dest(&crate::platform::not_unicode("bad")).unwrap_err();
        assert!(format!("{err}").contains("UTF-8"));
    }
}
