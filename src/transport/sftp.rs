//! SFTP uploads (libssh2): large writes, fsync + close checked, size stat'ed after.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::{OpenFlags, OpenType, Session, Sftp};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{temp_dir, Body, Kind, Offers, ServerTrust, Uploader, SMALL};
use crate::config::Login;
use crate::remote::protocol::ServerSpec;
use crate::remote::ssh::{self, Trust};

pub struct SftpUpload {
    _session: Session,
    sftp: Sftp,
    dir: String,
    what: String,
}

impl SftpUpload {
    pub fn connect(
        spec: &ServerSpec,
        upload_id: &str,
        access: &super::Access,
    ) -> Result<(SftpUpload, String)> {
        let login = Login {
            name: "server".into(),
            host: spec.host.clone(),
            port: spec.port,
            user: spec.user.clone(),
            identity: access.identity.clone(),
        };
        let what = format!("sftp://{}:{}", spec.host, spec.port);
        let trust = match &access.trust {
            ServerTrust::KnownHosts(f) => Trust::KnownHosts(f),
            ServerTrust::Exact(k) => Trust::Exact(k),
        };
        let (session, wire) =
            ssh::connect_wired(&login, trust, spec.password.as_ref(), access.io_timeout)?;
        let key = ssh::host_key_line(&session)?;
        let sftp = wire
            .settle(&session, || session.sftp())
            .map_err(|e| anyhow!("{what}: cannot start SFTP: {e}"))?;
        let dir = temp_dir(&spec.dir, upload_id);
        // The temp dir is created by the merge login's pre-flight (paths are absolute,
        // so nothing to enter here).
        Ok((
            SftpUpload {
                _session: session,
                sftp,
                dir,
                what,
            },
            key,
        ))
    }
}

impl Uploader for SftpUpload {
    fn put(&mut self, name: &str, body: Body<'_>) -> Result<()> {
        let what = &self.what;
        let path = format!("{}/{name}", self.dir);
        write_file(&self.sftp, Path::new(&path), body)
            .with_context(|| format!("{what}: uploading {path}"))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let from = format!("{}/{from}", self.dir);
        let to = format!("{}/{to}", self.dir);
        // SFTP v3 (OpenSSH) refuses to rename onto an existing file: remove it first.
        // Harmless here: nobody reads a part before it is reported done.
        let _ = self.sftp.unlink(Path::new(&to));
        self.sftp
            .rename(Path::new(&from), Path::new(&to), None)
            .map_err(|e| anyhow!("{}: renaming {from} to {to} failed: {e}", self.what))
    }

    /// Only what SFTP v3 itself guarantees. libssh2 reads the server's extension list
    /// (`posix-rename@openssh.com`, `fsync@openssh.com`, …) from its version packet but
    /// keeps only posix-rename's version, for its own use; neither its C API nor the
    /// ssh2 crate hands the list out, so whether an extension is there is only learnt
    /// by trying it.
    fn offers(&mut self) -> Offers {
        Offers::sftp()
    }

    /// Opened without `TRUNCATE`: the other hosts' parts stay as they are.
    fn write_at(&mut self, path: &str, offset: u64, body: Body<'_>) -> Result<()> {
        let what = &self.what;
        let len = body.len;
        let p = Path::new(path);
        let mut file = self
            .sftp
            .open_mode(
                p,
                OpenFlags::WRITE | OpenFlags::CREATE,
                0o600,
                OpenType::File,
            )
            .map_err(|e| anyhow!("{what}: cannot open {path}: {e}"))?;
        file.seek(SeekFrom::Start(offset))
            .with_context(|| format!("{what}: seeking in {path}"))?;
        body.copy_to(&mut file)
            .with_context(|| format!("{what}: writing {path} at {offset}"))?;
        let _ = file.fsync();
        file.close()
            .map_err(|e| anyhow!("{what}: closing {path} failed: {e}"))?;
        drop(file);
        let size = self.sftp.stat(p).ok().and_then(|s| s.size);
        match size {
            Some(s) if s >= offset + len => Ok(()),
            _ => bail!(
                "{what}: {path} is {} bytes after writing up to {}",
                size.map_or("?".into(), |s| s.to_string()),
                offset + len
            ),
        }
    }

    fn read_at(
        &mut self,
        path: &str,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let what = &self.what;
        let mut file = self
            .sftp
            .open(Path::new(path))
            .map_err(|e| anyhow!("{what}: cannot open {path}: {e}"))?;
        file.seek(SeekFrom::Start(offset))
            .with_context(|| format!("{what}: seeking in {path}"))?;
        super::read_range(&mut file, offset, len, sink)
            .with_context(|| format!("{what}: reading {path}"))
    }

    /// OpenSSH's SFTP server hashes nothing.
    fn md5_at(&mut self, _: &str, _: u64, _: u64) -> Result<Option<String>> {
        Ok(None)
    }

    /// By `lstat`: a symbolic link is [`Kind::Other`], never followed.
    fn kind(&mut self, path: &str) -> Result<Kind> {
        match self.sftp.lstat(Path::new(path)) {
            Ok(st) if st.is_dir() => Ok(Kind::Dir),
            Ok(st) if st.is_file() => Ok(Kind::File(st.size.unwrap_or(0))),
            Ok(_) => Ok(Kind::Other),
            // SSH_FX_NO_SUCH_FILE
            Err(e) if e.code() == ssh2::ErrorCode::SFTP(2) => Ok(Kind::Missing),
            Err(e) => Err(anyhow!("{}: cannot stat {path}: {e}", self.what)),
        }
    }

    fn make_dir(&mut self, path: &str) -> Result<bool> {
        match self.sftp.mkdir(Path::new(path), 0o700) {
            Ok(()) => Ok(true),
            Err(e) => match self.kind(path)? {
                Kind::Dir => Ok(false),
                _ => Err(anyhow!("{}: cannot create {path}: {e}", self.what)),
            },
        }
    }

    fn remove_file(&mut self, path: &str) -> Result<()> {
        self.sftp
            .unlink(Path::new(path))
            .map_err(|e| anyhow!("{}: cannot remove {path}: {e}", self.what))
    }

    fn remove_dir(&mut self, path: &str) -> Result<()> {
        self.sftp
            .rmdir(Path::new(path))
            .map_err(|e| anyhow!("{}: cannot remove {path}: {e}", self.what))
    }

    fn list(&mut self, path: &str) -> Result<Vec<String>> {
        let entries = self
            .sftp
            .readdir(Path::new(path))
            .map_err(|e| anyhow!("{}: cannot list {path}: {e}", self.what))?;
        Ok(entries
            .iter()
            .filter_map(|(p, _)| p.file_name()?.to_str().map(String::from))
            .filter(|n| n != "." && n != "..")
            .collect())
    }

    /// SFTP v3 rename: OpenSSH links the new name and fails if it exists.
    fn move_to(&mut self, from: &str, to: &str) -> Result<()> {
        self.sftp
            .rename(Path::new(from), Path::new(to), None)
            .map_err(|e| anyhow!("{}: renaming {from} to {to} failed: {e}", self.what))
    }

    fn read_small(&mut self, path: &str) -> Result<Vec<u8>> {
        let what = &self.what;
        let mut file = self
            .sftp
            .open(Path::new(path))
            .map_err(|e| anyhow!("{what}: cannot read {path}: {e}"))?;
        let mut out = Vec::new();
        (&mut file)
            .take(SMALL as u64 + 1)
            .read_to_end(&mut out)
            .with_context(|| format!("{what}: reading {path}"))?;
        if out.len() > SMALL {
            bail!("{what}: {path} is larger than {SMALL} bytes");
        }
        Ok(out)
    }

    fn write_small(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let what = &self.what;
        let mut file = self
            .sftp
            .open_mode(
                Path::new(path),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                0o600,
                OpenType::File,
            )
            .map_err(|e| anyhow!("{what}: cannot create {path}: {e}"))?;
        file.write_all(bytes)
            .with_context(|| format!("{what}: writing {path}"))?;
        file.close()
            .map_err(|e| anyhow!("{what}: closing {path} failed: {e}"))
    }

    /// `fstatvfs@openssh.com` on the directory, where the server has it. OpenSSH answers
    /// it only for a file handle: the directory is opened as a file, read-only, which
    /// POSIX allows.
    fn free(&mut self, path: &str) -> Option<u64> {
        let mut dir = self.sftp.open(Path::new(path)).ok()?;
        let st = dir.statvfs().ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    fn round_trip(&mut self) -> Option<std::time::Duration> {
        let t = std::time::Instant::now();
        self.sftp.realpath(Path::new(".")).ok()?;
        Some(t.elapsed())
    }

    fn what(&self) -> &str {
        &self.what
    }
}

/// Writes `body` to `path` (mode 0600), then fsync, close and stat: `File`'s drop
/// would swallow a failed close.
pub fn write_file(sftp: &Sftp, path: &Path, body: Body<'_>) -> Result<()> {
    let len = body.len;
    let mut file = sftp
        .open_mode(
            path,
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            0o600,
            OpenType::File,
        )
        .map_err(|e| anyhow!("cannot create it: {e}"))?;
    body.copy_to(&mut file)?;
    // Not every server has fsync@openssh.com; close and the size check still run.
    let _ = file.fsync();
    file.close()
        .map_err(|e| anyhow!("closing it failed: {e}"))?;
    drop(file);
    let size = sftp
        .stat(path)
        .map_err(|e| anyhow!("cannot stat it: {e}"))?
        .size;
    if size != Some(len) {
        bail!(
            "it is {} bytes after writing, expected {len}",
            size.map_or("?".into(), |s| s.to_string())
        );
    }
    Ok(())
}
