//! Uploading parts to the central server, over FTP or SFTP. The client and every relay
//! use the same code, so a part travels the same way whoever sends it.

mod ftp;
pub mod offers;
pub mod pace;
pub mod sftp;

use anyhow::Result;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::remote::protocol::ServerSpec;
pub use offers::Offers;
pub use pace::{Pacer, Rate};

/// Bytes per write to the server. Big writes matter: libssh2 pipelines only within one
/// write call, and suppaftp's own copy uses 8 KiB.
pub const CHUNK: usize = 1 << 20;

pub use crate::server::names::temp_dir;

/// An open, logged-in connection to the server.
pub trait Uploader: Send {
    /// Uploads `len` bytes from `src` as `name` inside the upload's temp dir, no faster
    /// than `pace` allows, calling `progress` with the running byte count, then checks
    /// the size the server reports.
    fn put(&mut self, name: &str, body: Body<'_>) -> Result<()>;

    /// Renames `from` to `to` inside the temp dir, replacing `to` if it exists.
    fn rename(&mut self, from: &str, to: &str) -> Result<()>;

    /// Asks what the server offers (FTP `FEAT`). A server that does not answer offers
    /// nothing known: that is no reason to fail a login that uploads fine.
    fn offers(&mut self) -> Offers;

    // Direct writes: every host writes its parts into one file at their offsets. Paths
    // are absolute, as the server shows them.

    /// Writes `body` into `path` at `offset`, leaving the rest of the file as it is
    /// (creating the file if needed), then checks that the file reaches that far.
    fn write_at(&mut self, path: &str, offset: u64, body: Body<'_>) -> Result<()>;
    /// Reads `len` bytes of `path` from `offset`, handing them to `sink` in pieces.
    fn read_at(
        &mut self,
        path: &str,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()>;
    /// The server's MD5 of `len` bytes of `path` from `offset`, hex, lower case;
    /// `None` when the server cannot compute it.
    fn md5_at(&mut self, path: &str, offset: u64, len: u64) -> Result<Option<String>>;
    /// What is at `path`.
    fn kind(&mut self, path: &str) -> Result<Kind>;
    /// Creates the directory `path`; `false` when it was there already. Creation is
    /// atomic on every server kind, so it serves as a lock.
    fn make_dir(&mut self, path: &str) -> Result<bool>;
    fn remove_file(&mut self, path: &str) -> Result<()>;
    fn remove_dir(&mut self, path: &str) -> Result<()>;
    /// Names in the directory `path` (without `.` and `..`).
    fn list(&mut self, path: &str) -> Result<Vec<String>>;
    /// Renames `from` to `to`. Over SFTP it fails when `to` exists; over FTP the
    /// server decides (a POSIX server replaces a file, never a directory).
    fn move_to(&mut self, from: &str, to: &str) -> Result<()>;
    /// A small file's whole content (at most [`SMALL`] bytes).
    fn read_small(&mut self, path: &str) -> Result<Vec<u8>>;
    /// Creates or replaces a small file.
    fn write_small(&mut self, path: &str, bytes: &[u8]) -> Result<()>;
    /// Free bytes in the directory `path`, where the server tells.
    fn free(&mut self, path: &str) -> Option<u64>;
    /// `scheme://host:port`, for messages.
    fn what(&self) -> &str;
    /// The time the server takes to answer one command, or `None`.
    fn round_trip(&mut self) -> Option<Duration>;
}

/// Largest file [`Uploader::read_small`] reads.
pub const SMALL: usize = 64 * 1024;

/// What a path on the server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File(u64),
    Dir,
    /// A symbolic link, a device, … (only SFTP can tell).
    Other,
}

/// Where an upload goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place<'a> {
    /// A whole file of this name in the upload's temp dir, uploaded under a name of
    /// its own and renamed (append-merge parts; a release's small files with direct
    /// writes).
    Part(&'a str),
    /// Into the file of this name in the upload's temp dir, at this offset (direct
    /// writes).
    At(&'a str, u64),
}

impl Place<'_> {
    /// Where `part` goes, told by the assembly: its own part file, or `name` (a file
    /// in the temp dir) whole or at `offset`.
    pub fn of<'a>(part_name: &'a str, name: Option<&'a str>, offset: Option<u64>) -> Place<'a> {
        match (name, offset) {
            (None, _) => Place::Part(part_name),
            (Some(n), None) => Place::Part(n),
            (Some(n), Some(o)) => Place::At(n, o),
        }
    }
}

/// How an SFTP server's host key is checked.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    KnownHosts(crate::config::KnownHosts),
    /// `type base64` handed over by the client.
    Exact(String),
}

/// How a host reaches the server, besides the [`ServerSpec`] every host shares.
#[derive(Clone, Debug)]
pub struct Access {
    /// How an `sftp://` server's host key is checked.
    pub trust: ServerTrust,
    /// The SSH key for `sftp://` without a password (`None`: ssh-agent, then
    /// ~/.ssh/id_*).
    pub identity: Option<PathBuf>,
    /// `--stall-timeout`: how long a blocking network call may wait.
    pub io_timeout: std::time::Duration,
}

impl Access {
    /// How this machine reaches the server: host keys as for every login, the merge
    /// login's key for `sftp://` without a password.
    pub fn of(settings: &crate::config::Settings) -> Access {
        Access {
            trust: ServerTrust::KnownHosts(settings.known_hosts.clone()),
            identity: settings.server_identity(),
            io_timeout: settings.io_timeout,
        }
    }
}

/// Attempts per part before the error goes up (to the scheduler, which gives the part
/// to another host).
const ATTEMPTS: u32 = 3;

/// A login on the server that reconnects and retries a failed part, with backoff,
/// a bounded number of times.
pub struct Server {
    /// Names this host's temporary upload names, so two hosts sending the same part
    /// (after a failover) never write the same file: a stalled host may still hold its
    /// file open, and an FTP server may hold a lock on it.
    tag: String,
    uploads: u64,
    spec: ServerSpec,
    upload_id: String,
    access: Access,
    conn: Option<Box<dyn Uploader>>,
    /// This host's pacing, kept across parts and reconnections: a new part or a retry
    /// brings no fresh burst.
    pace: Pacer,
    /// What the server offers, asked at the first login (reconnections do not ask
    /// again: it is the same server).
    offers: Offers,
}

impl Server {
    /// Connects and logs in, creating the temp dir if it is not there yet. For
    /// `sftp://` it also returns the server's host key line, which the client hands to
    /// its relays so they accept exactly that key. `identity` is the SSH key for
    /// `sftp://` without a password (`None`: ssh-agent, then ~/.ssh/id_*).
    pub fn connect(
        spec: &ServerSpec,
        upload_id: &str,
        tag: &str,
        access: Access,
    ) -> Result<(Server, Option<String>)> {
        let (mut conn, key) = open(spec, upload_id, &access)?;
        let offers = conn.offers();
        Ok((
            Server {
                tag: tag.to_string(),
                uploads: 0,
                spec: spec.clone(),
                upload_id: upload_id.to_string(),
                access,
                conn: Some(conn),
                pace: Pacer::new(Rate::new(spec.bwlimit)),
                offers,
            },
            key,
        ))
    }

    /// The shortest of two round trips to the server, one straight after the other (a
    /// command it answers at once), or `None` if it did not answer. Two back to back,
    /// not the login's own commands: those come while every host logs in, and in lab
    /// (c) timing them with one more `NOOP` called a LAN server far in 1 run of 6.
    pub fn round_trip(&mut self) -> Option<Duration> {
        let conn = self.conn.as_mut()?;
        Some(conn.round_trip()?.min(conn.round_trip()?))
    }

    /// What the server offers, as its first login read it.
    pub fn offers(&self) -> &Offers {
        &self.offers
    }

    /// Free bytes in the upload directory, where the server tells (SFTP's
    /// `statvfs@openssh.com`; FTP never does).
    pub fn free(&mut self) -> Option<u64> {
        let dir = self.spec.dir.clone();
        self.conn.as_mut()?.free(&dir)
    }

    /// The live upload rate limit of this login (a relay sets it when its share of a
    /// total limit changes).
    pub fn rate(&self) -> Rate {
        self.pace.rate()
    }

    /// Paces uploads by `rate` from now on instead of `server.bwlimit` (this machine
    /// follows its share of the limits, which the scheduler keeps up to date).
    pub fn pace_with(&mut self, rate: Rate) {
        self.pace.follow(rate);
    }

    /// Uploads one part to `place`, reading it with `open` (called again for each
    /// attempt).
    pub fn put_part(
        &mut self,
        place: Place<'_>,
        len: u64,
        open_source: &mut dyn FnMut() -> Result<Box<dyn Read>>,
        progress: &mut dyn FnMut(u64),
        cancel: &AtomicBool,
    ) -> Result<()> {
        let mut attempt = 1;
        loop {
            let result = (|| -> Result<()> {
                if self.conn.is_none() {
                    self.conn = Some(open(&self.spec, &self.upload_id, &self.access)?.0);
                }
                let conn = self.conn.as_mut().expect("connected above");
                let mut reader = Cancellable {
                    inner: open_source()?,
                    cancel,
                };
                let body = Body {
                    src: &mut reader,
                    len,
                    pace: Some(&mut self.pace),
                    progress,
                };
                match place {
                    Place::Part(name) => {
                        // Upload under a name of our own, then rename into place: a
                        // part name only ever holds a complete, size-checked part.
                        self.uploads += 1;
                        let tmp = crate::server::names::uploading(name, &self.tag, self.uploads);
                        conn.put(&tmp, body)?;
                        conn.rename(&tmp, name)
                    }
                    Place::At(name, offset) => {
                        let file = format!(
                            "{}/{name}",
                            crate::server::names::temp_dir(&self.spec.dir, &self.upload_id)
                        );
                        conn.write_at(&file, offset, body)
                    }
                }
            })();
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt >= ATTEMPTS || cancel.load(Ordering::Relaxed) => {
                    let what = match place {
                        Place::Part(name) => name.to_string(),
                        Place::At(name, offset) => format!("the bytes at {offset} of {name}"),
                    };
                    return Err(e.context(format!("uploading {what} ({attempt} attempt(s))")));
                }
                Err(_) => {
                    // The connection may be broken: start the next attempt on a new one.
                    self.conn = None;
                    std::thread::sleep(Duration::from_millis(500 * 3u64.pow(attempt - 1)));
                    attempt += 1;
                }
            }
        }
    }
}

/// Whether several logins can write into `path` at once (FTP servers may make each
/// upload of a file wait for the others); SFTP: always.
pub fn parallel_writes(
    spec: &ServerSpec,
    upload_id: &str,
    access: &Access,
    path: &str,
) -> Result<bool> {
    match spec.scheme.as_str() {
        "ftp" | "ftps" => ftp::parallel_writes(
            spec,
            upload_id,
            access.io_timeout,
            path,
            Duration::from_millis(1500),
        ),
        _ => Ok(true),
    }
}

/// A new login on the server, without retries: for the assembly's own work there.
pub fn open(
    spec: &ServerSpec,
    upload_id: &str,
    access: &Access,
) -> Result<(Box<dyn Uploader>, Option<String>)> {
    match spec.scheme.as_str() {
        "ftp" | "ftps" => Ok((
            Box::new(ftp::Ftp::connect(spec, upload_id, access.io_timeout)?),
            None,
        )),
        "sftp" => {
            let (up, key) = sftp::SftpUpload::connect(spec, upload_id, access)?;
            Ok((Box::new(up), Some(key)))
        }
        other => anyhow::bail!("unsupported server scheme {other:?}"),
    }
}

/// A reader that stops with an error once `cancel` is set (Ctrl-C, a probe's end).
pub struct Cancellable<'a, R> {
    pub inner: R,
    pub cancel: &'a AtomicBool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

/// The bytes of one upload and how they go: exactly `len` bytes from `src`, no
/// faster than `pace` allows if there is one, `progress` told the running count.
pub struct Body<'a> {
    pub src: &'a mut dyn Read,
    pub len: u64,
    pub pace: Option<&'a mut Pacer>,
    pub progress: &'a mut dyn FnMut(u64),
}

impl Body<'_> {
    /// Writes the body to `dst` in writes of at most [`CHUNK`].
    pub fn copy_to(self, dst: &mut dyn std::io::Write) -> Result<()> {
        let Body {
            src,
            len,
            pace,
            progress,
        } = self;
        copy_exact(src, dst, len, pace, progress)
    }
}

/// Reads exactly `len` bytes from `src` (which starts at `offset` of its file) in
/// pieces of at most [`CHUNK`], handing each to `sink`.
fn read_range(
    src: &mut dyn Read,
    offset: u64,
    len: u64,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK.min(len.max(1) as usize)];
    let mut got = 0u64;
    while got < len {
        let want = buf.len().min((len - got) as usize);
        let n = src
            .read(&mut buf[..want])
            .map_err(|e| anyhow::anyhow!("at {}: {e}", offset + got))?;
        if n == 0 {
            anyhow::bail!(
                "it ended after {} bytes, expected {}",
                offset + got,
                offset + len
            );
        }
        sink(&buf[..n])?;
        got += n as u64;
    }
    Ok(())
}

fn copy_exact(
    src: &mut dyn Read,
    dst: &mut dyn std::io::Write,
    len: u64,
    mut pace: Option<&mut Pacer>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    use anyhow::{bail, Context};
    let mut buf = vec![0u8; CHUNK.min(len.max(1) as usize)];
    let mut sent = 0u64;
    while sent < len {
        let want = buf.len().min((len - sent) as usize);
        let want = match pace.as_deref_mut() {
            Some(p) => p.take(want),
            None => want,
        };
        let n = src.read(&mut buf[..want]).context("reading the part")?;
        if let Some(p) = pace.as_deref_mut() {
            p.refund(want - n);
        }
        if n == 0 {
            bail!("the part ended after {sent} of {len} bytes");
        }
        dst.write_all(&buf[..n]).context("writing to the server")?;
        sent += n as u64;
        progress(sent);
    }
    Ok(())
}
