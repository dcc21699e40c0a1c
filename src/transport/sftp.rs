//! SFTP uploads (libssh2): large writes, fsync + close checked, size stat'ed after.

use anyhow::{anyhow, bail, Context, Result};
use ssh2::{OpenFlags, OpenType, Session, Sftp};
use std::path::Path;

use super::{temp_dir, Body, Offers, ServerTrust, Uploader};
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
        let session = ssh::connect(&login, trust, spec.password.as_ref(), access.io_timeout)?;
        let key = ssh::host_key_line(&session)?;
        let sftp = session
            .sftp()
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
