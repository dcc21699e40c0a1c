//! Uploading parts to the central server, over FTP or SFTP. The client and every relay
//! use the same code, so a part travels the same way whoever sends it.

mod ftp;
pub mod sftp;

use anyhow::Result;
use std::io::Read;

use crate::protocol::ServerSpec;

/// Bytes per write to the server. Big writes matter: libssh2 pipelines only within one
/// write call, and suppaftp's own copy uses 8 KiB.
pub const CHUNK: usize = 1 << 20;

/// The directory, next to the destination, where parts wait for the merge.
pub fn temp_dir(dir: &str, upload_id: &str) -> String {
    format!("{}/.relayup-{upload_id}", dir.trim_end_matches('/'))
}

/// An open, logged-in connection to the server.
pub trait Uploader: Send {
    /// Uploads `len` bytes from `src` as `name` inside the upload's temp dir, calling
    /// `progress` with the running byte count, then checks the size the server reports.
    fn put(
        &mut self,
        name: &str,
        src: &mut dyn Read,
        len: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()>;
}

/// How an SFTP server's host key is checked.
pub enum ServerTrust<'a> {
    KnownHosts(&'a std::path::Path),
    /// `type base64` handed over by the client.
    Exact(&'a str),
}

/// Connects and logs in, creating the temp dir if it is not there yet. For `sftp://`
/// it also returns the server's host key line, which the client hands to its relays so
/// they accept exactly that key. `identity` is the SSH key for `sftp://` without a
/// password (`None`: ssh-agent, then ~/.ssh/id_*).
pub fn connect(
    spec: &ServerSpec,
    upload_id: &str,
    trust: ServerTrust<'_>,
    identity: Option<&std::path::Path>,
) -> Result<(Box<dyn Uploader>, Option<String>)> {
    match spec.scheme.as_str() {
        "ftp" | "ftps" => Ok((Box::new(ftp::Ftp::connect(spec, upload_id)?), None)),
        "sftp" => {
            let (up, key) = sftp::SftpUpload::connect(spec, upload_id, trust, identity)?;
            Ok((Box::new(up), Some(key)))
        }
        other => anyhow::bail!("unsupported server scheme {other:?}"),
    }
}

/// Copies exactly `len` bytes in [`CHUNK`]-sized writes.
pub(crate) fn copy_exact(
    src: &mut dyn Read,
    dst: &mut dyn std::io::Write,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    use anyhow::{bail, Context};
    let mut buf = vec![0u8; CHUNK.min(len.max(1) as usize)];
    let mut sent = 0u64;
    while sent < len {
        let want = buf.len().min((len - sent) as usize);
        let n = src.read(&mut buf[..want]).context("reading the part")?;
        if n == 0 {
            bail!("the part ended after {sent} of {len} bytes");
        }
        dst.write_all(&buf[..n]).context("writing to the server")?;
        sent += n as u64;
        progress(sent);
    }
    Ok(())
}
