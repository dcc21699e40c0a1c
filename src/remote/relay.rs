//! `relayup relay`: the peer side. The client starts it over SSH; it reads requests
//! on stdin, uploads staged parts to the server, and reports on stdout (DESIGN.md).
//! Server credentials arrive on stdin and stay in memory. It exits when stdin closes,
//! removing whatever it had staged, so a dead client never leaves it running.

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::remote::protocol::{self, Event, Hello, Request, PROTOCOL};
use crate::transport::pace::Rate;
use crate::transport::{Access, Place, Server, ServerTrust};

/// Progress events are sent at most this often per part.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone)]
struct Out(Arc<Mutex<std::io::Stdout>>);

impl Out {
    fn send(&self, ev: &Event) {
        let mut out = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // If the client is gone the write fails and stdin will close too: nothing to do.
        let _ = out.write_all(protocol::to_line(ev).as_bytes());
        let _ = out.flush();
    }

    fn error(&self, index: Option<usize>, err: &anyhow::Error) {
        self.send(&Event::Error {
            index,
            message: format!("{err:#}"),
            server: false,
        });
    }

    /// An upload to the server failed.
    fn server_error(&self, index: usize, err: &anyhow::Error) {
        self.send(&Event::Error {
            index: Some(index),
            message: format!("{err:#}"),
            server: true,
        });
    }
}

struct Job {
    index: usize,
    path: PathBuf,
    size: u64,
    xxh3: String,
    /// Direct writes: where the part goes in the upload's one file.
    offset: Option<u64>,
    /// Direct writes: the file in the temp dir it goes to.
    into: Option<String>,
}

/// A line from stdin as the reader thread passes it on (`None`: stdin closed).
type Line = Result<Option<String>>;

pub fn run() -> Result<()> {
    // Before the password arrives: no core dump or same-user ptrace can show it.
    crate::secret::no_core_dumps();
    let out = Out(Arc::new(Mutex::new(std::io::stdout())));
    out.send(&Event::Relay {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL,
        platform: crate::commands::deploy::local_os(),
    });
    let mut input = BufReader::new(std::io::stdin());
    let Some(hello) = read_hello(&mut input, &out)? else {
        return Ok(());
    };
    let (staging, uploader) = set_up(&hello, &out)?;

    // The uploader paces by this; `limit` requests change it, also mid-part.
    let rate = uploader.rate();
    let pipeline = Pipeline::start(uploader, &out);

    // Requests arrive through a thread, so that silence can be timed: a client that
    // says nothing (not even a ping) for the idle limit is gone, even if the network
    // never tells (a peer cut off keeps its half of the TCP connection for hours).
    let idle = protocol::relay_idle_limit(hello.stall_timeout);
    let lines = spawn_reader(input);
    let to = Dispatch {
        staging: &staging,
        staged: &pipeline.staged,
        verify: &pipeline.verify,
        rate: &rate,
    };
    let result = serve(&lines, idle, &to);
    let prefix = crate::server::names::staged_prefix(&hello.upload_id, &hello.run);
    pipeline.stop(&result, &staging, &prefix, idle);
    result.map(|_| ())
}

/// Reads the client's hello and checks it: the protocol, the ids and the host name
/// that go into file names. Pings before it are let pass; a `clean` instead of it is
/// done here. `None`: nothing more to do (stdin closed before a hello, or cleaned).
fn read_hello(input: &mut impl BufRead, out: &Out) -> Result<Option<Hello>> {
    let hello = loop {
        let request = match protocol::read_line(input)? {
            Some(mut line) => {
                let parsed = protocol::parse_request(&line);
                // The line holds the server password in clear: wipe it before it is freed.
                zeroize::Zeroize::zeroize(&mut line);
                parsed?
            }
            None => return Ok(None),
        };
        match request {
            Request::Ping => continue,
            Request::Hello(hello) => break hello,
            Request::Clean { upload_id, staging } => {
                let removed = clean(&upload_id, staging.as_deref())?;
                out.send(&Event::Cleaned { removed });
                return Ok(None);
            }
            _ => bail!("the first request must be hello"),
        }
    };
    let theirs = hello.protocol;
    if theirs != PROTOCOL {
        let err = anyhow!(
            "relayup {} on this peer speaks protocol {PROTOCOL}, the sender speaks {theirs}: run `relayup peers deploy` on the sending machine to install its relayup here",
            env!("CARGO_PKG_VERSION")
        );
        out.error(None, &err);
        return Err(err);
    }
    for id in [&hello.upload_id, &hello.run] {
        if !valid_id(id) {
            bail!("bad upload or run id {id:?}");
        }
    }
    if !valid_file_name(&hello.host) {
        bail!("bad host name {:?}", hello.host);
    }
    Ok(Some(hello))
}

/// Sets up the staging directory and logs in to the server, then tells the client
/// `ready`; a failure is reported to the client as well as returned.
fn set_up(hello: &Hello, out: &Out) -> Result<(PathBuf, Server)> {
    let staging = match staging_dir(hello.staging.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            out.error(None, &e);
            return Err(e);
        }
    };
    let server = &hello.server;
    let trust = match &server.host_key {
        Some(k) => ServerTrust::Exact(k.clone()),
        None if server.scheme == "sftp" => {
            let e = anyhow!("no server host key handed over for sftp://");
            out.error(None, &e);
            return Err(e);
        }
        None => ServerTrust::Exact(String::new()),
    };
    let tag = format!("{}.{}", hello.host, hello.run);
    let access = Access {
        trust,
        identity: None,
        io_timeout: Duration::from_secs(hello.stall_timeout),
    };
    let uploader = match Server::connect(server, &hello.upload_id, &tag, access) {
        Ok((u, _)) => u,
        Err(e) => {
            let e = e.context("this peer cannot log in to the server");
            out.error(None, &e);
            return Err(e);
        }
    };
    out.send(&Event::Ready {
        version: env!("CARGO_PKG_VERSION").into(),
        protocol: PROTOCOL,
        staging: staging_for_sftp(hello.staging.as_deref(), &staging),
        staging_free: crate::platform::free_space(&staging),
    });
    Ok((staging, uploader))
}

/// Staged files not yet removed: the request loop adds them, the uploader removes
/// them, and whatever is left when the relay stops is removed then.
#[derive(Clone, Default)]
struct Staged(Arc<Mutex<Vec<PathBuf>>>);

impl Staged {
    fn lock(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, path: PathBuf) {
        self.lock().push(path);
    }

    fn forget(&self, path: &Path) {
        self.lock().retain(|p| p != path);
    }

    fn remove_all(&self) {
        for path in self.lock().drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Three stages, so part k+1 is verified while part k uploads:
/// stdin reader (the relay's main thread) -> verifier -> uploader.
struct Pipeline {
    /// Set when the relay stops: neither thread starts another part.
    cancel: Arc<AtomicBool>,
    staged: Staged,
    /// The verifier's queue; closing it ends both threads.
    verify: mpsc::Sender<Job>,
    verifier: JoinHandle<()>,
    uploader: JoinHandle<()>,
}

impl Pipeline {
    fn start(server: Server, out: &Out) -> Pipeline {
        let cancel = Arc::new(AtomicBool::new(false));
        let staged = Staged::default();
        let (verify, verify_rx) = mpsc::channel::<Job>();
        let (upload_tx, upload_rx) = mpsc::channel::<Job>();
        let verifier = spawn_verifier(verify_rx, upload_tx, out.clone(), cancel.clone());
        let uploader = spawn_uploader(
            server,
            upload_rx,
            out.clone(),
            cancel.clone(),
            staged.clone(),
        );
        Pipeline {
            cancel,
            staged,
            verify,
            verifier,
            uploader,
        }
    }

    /// The clean-up, once the request loop has ended with `result`: stops both
    /// threads and removes this run's staged files (names starting with `prefix`).
    fn stop(self, result: &Result<bool>, staging: &Path, prefix: &str, idle: Duration) {
        if result
            .as_ref()
            .is_err_and(|e| e.downcast_ref::<ClientSilent>().is_some())
        {
            // The client is unreachable: stop uploading, leave nothing staged, and exit
            // without waiting for threads that may be blocked on the dead connection.
            self.cancel.store(true, Ordering::Relaxed);
            self.staged.remove_all();
            sweep_staging(staging, prefix);
            eprintln!(
                "relayup relay: no word from the client for {} s; stopped and removed what was staged",
                idle.as_secs()
            );
            std::process::exit(3);
        }
        // Stdin closed or broke: the client is finished (it says bye, with nothing in
        // flight) or gone. Either way stop now, and leave nothing staged behind.
        self.cancel.store(true, Ordering::Relaxed);
        drop(self.verify);
        let _ = self.verifier.join();
        let _ = self.uploader.join();
        self.staged.remove_all();
        let sweep = || sweep_staging(staging, prefix);
        sweep();
        if !matches!(result, Ok(true)) {
            // The client went away without a bye, perhaps while staging a part: the SFTP
            // server of the same connection may still create or write that file after
            // this sweep. Nobody waits for this process any more; sweep a while longer.
            for _ in 0..5 {
                std::thread::sleep(Duration::from_secs(1));
                sweep();
            }
        }
    }
}

/// Checks each staged part against the checksum the client sent and passes it on to
/// the uploader; a corrupt or missing one is removed and reported.
fn spawn_verifier(
    jobs: mpsc::Receiver<Job>,
    upload: mpsc::Sender<Job>,
    out: Out,
    cancel: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for job in jobs {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            match file_checksum(&job.path, job.size) {
                Ok(sum) if sum == job.xxh3 => {
                    let _ = upload.send(job);
                }
                Ok(sum) => {
                    let _ = std::fs::remove_file(&job.path);
                    out.error(
                        Some(job.index),
                        &anyhow!(
                            "staged part {} is corrupt (xxh3 {sum}, expected {}); stage it again",
                            job.index,
                            job.xxh3
                        ),
                    );
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&job.path);
                    out.error(Some(job.index), &e);
                }
            }
        }
    })
}

/// Uploads each verified part to the server, removes its staged file and reports.
fn spawn_uploader(
    mut server: Server,
    jobs: mpsc::Receiver<Job>,
    out: Out,
    cancel: Arc<AtomicBool>,
    staged: Staged,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for job in jobs {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            let result = upload(&mut server, &job, &out, &cancel);
            let _ = std::fs::remove_file(&job.path);
            staged.forget(&job.path);
            match result {
                Ok(xxh3) => out.send(&Event::PartDone {
                    index: job.index,
                    bytes: job.size,
                    xxh3,
                }),
                Err(e) => out.server_error(job.index, &e),
            }
        }
    })
}

/// Reads requests from stdin on a thread of its own, until stdin closes or breaks.
fn spawn_reader(mut input: impl BufRead + Send + 'static) -> mpsc::Receiver<Line> {
    let (line_tx, lines) = mpsc::sync_channel::<Line>(16);
    std::thread::spawn(move || loop {
        let line = protocol::read_line(&mut input);
        let end = !matches!(line, Ok(Some(_)));
        if line_tx.send(line).is_err() || end {
            break;
        }
    });
    lines
}

/// Where the request loop sends what the client asks for.
struct Dispatch<'a> {
    /// The staging directory, where the client's staged files are.
    staging: &'a Path,
    staged: &'a Staged,
    /// The verifier's queue.
    verify: &'a mpsc::Sender<Job>,
    /// The uploader's pace.
    rate: &'a Rate,
}

/// The request loop: until stdin closes (`Ok(false)`), the client says bye
/// (`Ok(true)`), or it says nothing for `idle` (an error of [`ClientSilent`]).
fn serve(lines: &mpsc::Receiver<Line>, idle: Duration, to: &Dispatch) -> Result<bool> {
    loop {
        let line = match lines.recv_timeout(idle) {
            Ok(line) => line?,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(anyhow!(
                    "no word from the client for {} s: it is gone",
                    idle.as_secs()
                ))
                .context(ClientSilent)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        };
        let Some(line) = line else { break };
        match protocol::parse_request(&line)? {
            Request::Upload {
                index,
                file,
                size,
                xxh3,
                offset,
                into,
            } => {
                if !valid_file_name(&file) {
                    bail!("refusing staged file name {file:?}");
                }
                if into.as_deref().is_some_and(|n| !valid_file_name(n)) {
                    bail!("refusing server file name {into:?}");
                }
                let path = to.staging.join(&file);
                to.staged.add(path.clone());
                let _ = to.verify.send(Job {
                    index,
                    path,
                    size,
                    xxh3,
                    offset,
                    into,
                });
            }
            Request::Limit { bytes_per_sec } => {
                if bytes_per_sec == 0 {
                    bail!("a limit of 0 bytes per second");
                }
                to.rate.set(Some(bytes_per_sec));
            }
            Request::Hello(_) | Request::Clean { .. } => bail!("hello or clean after hello"),
            Request::Ping => {}
            Request::Bye => return Ok(true),
        }
    }
    Ok(false)
}

/// Marks the error of a client that went silent for the idle limit.
#[derive(Debug, thiserror::Error)]
#[error("client silent")]
struct ClientSilent;

/// Removes the staged files whose names start with `prefix` (files or links, never
/// what a link points to); how many.
fn sweep_staging(staging: &Path, prefix: &str) -> usize {
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(staging) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix)
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

/// `clean`: removes every run's staged parts of `upload_id` from the staging dir
/// (`requested`, or the default); a staging dir that is not there holds none.
fn clean(upload_id: &str, requested: Option<&str>) -> Result<usize> {
    if !valid_id(upload_id) {
        bail!("bad upload id {upload_id:?}");
    }
    let dir = staging_path(requested)?;
    if !dir.is_dir() {
        return Ok(0);
    }
    Ok(sweep_staging(&dir, &format!("{upload_id}-")))
}

/// Upload and run ids go into file names: letters and digits only, 1 to 64 of them.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The staging dir the client asked for (`~` expanded), or the default.
fn staging_path(requested: Option<&str>) -> Result<PathBuf> {
    match requested {
        Some(s) => crate::config::expand(s),
        None => crate::platform::default_staging(),
    }
}

/// Staged names are generated by the client (`<id>-<index>.part`): nothing else passes.
fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// The staging dir as the client names it over SFTP: an absolute `/…` path as the
/// client gave it (to a Windows relay under Wine `/tmp/x` is `Z:\tmp\x`, but the
/// peer's SSH server is Linux's, where it is `/tmp/x`), else where it is, in the
/// platform's SFTP form (`/C:/Users/…` on Windows).
fn staging_for_sftp(requested: Option<&str>, staging: &Path) -> String {
    match requested {
        Some(r) if r.starts_with('/') && r.len() > 1 => r.trim_end_matches('/').to_string(),
        _ => crate::platform::sftp_path(staging),
    }
}

/// Returns the staging directory's absolute path. A missing one is created with mode
/// 0700. One that is there already is used only if it is this account's and nobody
/// else can write into it, and it is never chmod-ed: a directory relayup did not
/// create is not relayup's to change.
fn staging_dir(requested: Option<&str>) -> Result<PathBuf> {
    let dir = staging_path(requested)?;
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create staging dir {}", dir.display()))?;
            }
            crate::platform::create_private_dir(&dir)
                .with_context(|| format!("cannot create staging dir {}", dir.display()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("staging dir {}", dir.display()));
        }
        Ok(meta) => {
            if !meta.is_dir() {
                bail!("staging dir {} is not a directory", dir.display());
            }
            if let Some(problem) = crate::platform::private_dir_problem(&meta) {
                bail!(
                    "staging dir {} {problem}; relayup stages only in a directory of this account that others cannot write: \
                     point `staging` at one, or remove it so that relayup creates it (mode 0700)",
                    dir.display(),
                );
            }
        }
    }
    std::fs::canonicalize(&dir).with_context(|| format!("staging dir {}", dir.display()))
}

fn file_checksum(path: &Path, size: u64) -> Result<String> {
    let mut f =
        File::open(path).with_context(|| format!("staged file {} is missing", path.display()))?;
    let actual = f.metadata()?.len();
    if actual != size {
        bail!(
            "staged file {} is {actual} bytes, expected {size}",
            path.display()
        );
    }
    crate::send::hashes::checksum_of(&mut f)
}

/// Uploads one staged part, whose checksum the verifier has just checked, and
/// returns the checksum of the bytes that went to the server (hashed on their way
/// there): what the client compares is what was uploaded, not what was asked for.
fn upload(server: &mut Server, job: &Job, out: &Out, cancel: &AtomicBool) -> Result<String> {
    let mut last = Instant::now();
    let index = job.index;
    let path = job.path.clone();
    let sum = Arc::new(Mutex::new(xxhash_rust::xxh3::Xxh3::new()));
    let name = crate::server::names::part(index);
    let place = Place::of(&name, job.into.as_deref(), job.offset);
    server.put_part(
        place,
        job.size,
        &mut || {
            let f = File::open(&path)
                .with_context(|| format!("staged file {} is missing", path.display()))?;
            // Each attempt starts over: only the last one's bytes are on the server.
            sum.lock().unwrap_or_else(|e| e.into_inner()).reset();
            Ok(Box::new(crate::send::hashes::ChecksumReader {
                inner: f,
                sum: sum.clone(),
            }) as Box<dyn Read>)
        },
        &mut |bytes| {
            if last.elapsed() >= PROGRESS_EVERY {
                last = Instant::now();
                out.send(&Event::Progress { index, bytes });
            }
        },
        cancel,
    )?;
    Ok(crate::send::hashes::checksum_hex(&sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_named_over_sftp_as_the_client_gave_it() {
        let here = Path::new("/somewhere/else");
        assert_eq!(staging_for_sftp(Some("/tmp/stage/"), here), "/tmp/stage");
        assert_eq!(
            staging_for_sftp(Some("~/stage"), here),
            crate::platform::sftp_path(here)
        );
        assert_eq!(
            staging_for_sftp(None, here),
            crate::platform::sftp_path(here)
        );
    }

    #[test]
    fn staged_names() {
        for ok in ["abc-1.part", "0123abcd-99.part"] {
            assert!(valid_file_name(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b", "x\n", &"a".repeat(200)] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
    }
}
