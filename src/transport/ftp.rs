//! FTP and FTPS uploads (suppaftp), binary mode, large writes, size checked after.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use suppaftp::types::FileType;
use suppaftp::{RustlsConnector, RustlsFtpStream};

use super::{temp_dir, Body, Kind, Offers, Uploader, SMALL};
use crate::remote::protocol::ServerSpec;
use crate::remote::ssh::{tcp, CONNECT_TIMEOUT};
use std::time::Duration;

pub struct Ftp {
    stream: RustlsFtpStream,
    what: String,
    /// The upload's temp dir, entered before the first upload.
    dir: String,
    in_dir: bool,
    /// What `FEAT` said, once asked.
    offers: Option<Offers>,
}

/// A path that can go into an FTP command: no line breaks (they would end the command
/// and start another).
fn checked(path: &str) -> Result<&str> {
    if path.contains(['\r', '\n']) {
        bail!("refusing FTP path with a line break: {path:?}");
    }
    Ok(path)
}

/// The hex digest at the end of the last line of an `XMD5` reply
/// (`250-Computing MD5 digest` / `250 0123…`).
fn xmd5_digest(body: &str) -> Option<String> {
    let last = body.lines().rev().find(|l| !l.trim().is_empty())?;
    let word = last.get(4..)?.split_whitespace().last()?;
    (word.len() == 32 && word.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| word.to_ascii_lowercase())
}

/// A socket timeout, as a read or write past it reports it (`WouldBlock` on Unix).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn timeouts(s: &TcpStream, io_timeout: Duration) -> std::io::Result<()> {
    s.set_read_timeout(Some(io_timeout))?;
    s.set_write_timeout(Some(io_timeout))?;
    s.set_nodelay(true)
}

impl Ftp {
    pub fn connect(spec: &ServerSpec, upload_id: &str, io_timeout: Duration) -> Result<Ftp> {
        let what = format!("{}://{}:{}", spec.scheme, spec.host, spec.port);
        let tcp = tcp(&spec.host, spec.port, &what)?;
        timeouts(&tcp, io_timeout)?;
        let stream = RustlsFtpStream::connect_with_stream(tcp)
            .map_err(|e| anyhow!("{what}: no FTP greeting: {e}"))?;
        // Passive data connections get timeouts too, or a dead server hangs us forever.
        let stream = stream.passive_stream_builder(move |addr| {
            let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .map_err(suppaftp::FtpError::ConnectionError)?;
            // Not watched for interrupts: a watched socket stays open until exit, and
            // the server would never see the end of the upload. The copy loop stops on
            // the interrupt flag instead.
            timeouts(&s, io_timeout).map_err(suppaftp::FtpError::ConnectionError)?;
            Ok(s)
        });
        let mut stream = if spec.scheme == "ftps" {
            let config = tls_config(spec.ca_pem.as_deref())?;
            stream
                .into_secure(RustlsConnector::from(Arc::new(config)), &spec.host)
                .map_err(|e| anyhow!("{what}: TLS (AUTH TLS) failed: {e}"))?
        } else {
            stream
        };
        let password = spec
            .password
            .as_ref()
            .ok_or_else(|| anyhow!("{what}: FTP needs a password"))?;
        stream
            .login(spec.user.as_str(), password.expose())
            .map_err(|e| match e {
                suppaftp::FtpError::ConnectionError(io) if timed_out(&io) => anyhow!(
                    "{what}: no answer to the login as {} within {} s; is the server busy? \
                     --stall-timeout sets how long to wait",
                    spec.user,
                    io_timeout.as_secs()
                ),
                e => anyhow!(
                    "{what}: login as {} failed: {e}; check server.user and the password",
                    spec.user
                ),
            })?;
        // ASCII mode would rewrite line endings inside binary parts.
        stream
            .transfer_type(FileType::Binary)
            .map_err(|e| anyhow!("{what}: TYPE I refused: {e}"))?;
        // The temp dir is created by the merge login's pre-flight, which may not have
        // run yet: enter it at the first upload.
        let dir = temp_dir(&spec.dir, upload_id);
        Ok(Ftp {
            stream,
            what,
            dir,
            in_dir: false,
            offers: None,
        })
    }

    /// Whether the server has the file `path` and its size (`SIZE`).
    fn size_of(&mut self, path: &str) -> Option<u64> {
        self.stream.size(path).ok().map(|s| s as u64)
    }

    /// Whether `path` is a directory: `CWD` into it works. Leaves the temp dir, so the
    /// next part upload enters it again.
    fn is_dir(&mut self, path: &str) -> bool {
        self.in_dir = false;
        self.stream.cwd(path).is_ok()
    }
}

/// Whether two logins can write into `path` at once. vsftpd, by default
/// (`lock_upload_files=YES`), makes an upload wait until no other upload of the file
/// is open, and withholds its `150` reply meanwhile. One login opens an upload at
/// offset 1 and holds it; a second one at offset 1 must be let in within `wait`.
/// Neither writes a byte.
pub fn parallel_writes(
    spec: &ServerSpec,
    upload_id: &str,
    io_timeout: Duration,
    path: &str,
    wait: Duration,
) -> Result<bool> {
    let path = checked(path)?;
    let mut a = Ftp::connect(spec, upload_id, io_timeout)?;
    // The second login gets the usual timeout (a busy server may take seconds to log
    // in); only its wait for the upload's `150` is cut short.
    let mut b = Ftp::connect(spec, upload_id, io_timeout)?;
    b.stream
        .get_ref()
        .set_read_timeout(Some(wait))
        .with_context(|| format!("{}: setting a timeout", b.what))?;
    let what = a.what.clone();
    a.stream.resume_transfer(1).ok();
    let held = a
        .stream
        .put_with_stream(path)
        .map_err(|e| anyhow!("{what}: REST 1 + STOR {path} refused: {e}"))?;
    b.stream.resume_transfer(1).ok();
    let parallel = match b.stream.put_with_stream(path) {
        Ok(data) => data.finish().is_ok(),
        Err(_) => false,
    };
    held.finish()
        .map_err(|e| anyhow!("{what}: empty write to {path} not confirmed: {e}"))?;
    Ok(parallel)
}

/// The system's root certificates, plus `ca_pem` (server.ca_file) for a server with
/// its own CA or a self-signed certificate.
fn tls_config(ca_pem: Option<&str>) -> Result<suppaftp::rustls::ClientConfig> {
    use suppaftp::rustls::pki_types::pem::PemObject;
    use suppaftp::rustls::pki_types::CertificateDer;
    let mut roots = suppaftp::rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        roots.add(cert).ok();
    }
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.context("parsing server.ca_file")?)
                .context("adding server.ca_file")?;
        }
    }
    Ok(suppaftp::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Uploader for Ftp {
    fn put(&mut self, name: &str, body: Body<'_>) -> Result<()> {
        let len = body.len;
        if name.contains(['\r', '\n']) {
            bail!("refusing FTP file name with a line break");
        }
        let what = &self.what;
        if !self.in_dir {
            let dir = &self.dir;
            self.stream
                .cwd(dir)
                .map_err(|e| anyhow!("{what}: cannot enter {dir}: {e}; does the path of server.url name the same directory as merge.dir?"))?;
            self.in_dir = true;
        }
        let mut data = self
            .stream
            .put_with_stream(name)
            .map_err(|e| anyhow!("{what}: STOR {name} refused: {e}"))?;
        body.copy_to(&mut data)
            .with_context(|| format!("{what}: uploading {name}"))?;
        data.finish()
            .map_err(|e| anyhow!("{what}: upload of {name} not confirmed: {e}"))?;
        // A cut data connection can look like success: trust only the size.
        let size = self
            .stream
            .size(name)
            .map_err(|e| anyhow!("{what}: SIZE {name} failed: {e}"))?;
        if size as u64 != len {
            bail!("{what}: {name} is {size} bytes on the server, expected {len}");
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let what = &self.what;
        self.stream
            .rename(from, to)
            .map_err(|e| anyhow!("{what}: renaming {from} to {to} failed: {e}"))
    }

    fn offers(&mut self) -> Offers {
        // FEAT is answered before or after login alike; a server without it (RFC 959
        // only) replies 500 on one line, which leaves the control connection in step.
        let offers = self
            .stream
            .feat()
            .map(|features| Offers::from_feat(&features))
            .unwrap_or_default();
        self.offers = Some(offers.clone());
        offers
    }

    /// `REST offset` + `STOR`. A `STOR` at offset 0 truncates the file on every FTP
    /// server, which would destroy the parts already written: the file is created
    /// with its first byte (see `server::direct`), so a write at 0 skips that byte
    /// and starts at 1.
    fn write_at(&mut self, path: &str, offset: u64, body: Body<'_>) -> Result<()> {
        let path = checked(path)?;
        let what = self.what.clone();
        let Body {
            src,
            len,
            pace,
            progress,
        } = body;
        let (mut offset, mut len, mut skipped) = (offset, len, 0);
        if offset == 0 && len > 0 {
            let mut first = [0u8; 1];
            src.read_exact(&mut first).context("reading the part")?;
            progress(1);
            (offset, len, skipped) = (1, len - 1, 1);
        }
        if len == 0 {
            return Ok(());
        }
        self.stream
            .resume_transfer(offset as usize)
            .map_err(|e| anyhow!("{what}: REST {offset} refused: {e}"))?;
        let mut data = self
            .stream
            .put_with_stream(path)
            .map_err(|e| anyhow!("{what}: REST {offset} + STOR {path} refused: {e}"))?;
        let mut shifted = |n: u64| progress(n + skipped);
        Body {
            src,
            len,
            pace,
            progress: &mut shifted,
        }
        .copy_to(&mut data)
        .with_context(|| format!("{what}: writing {path} at {offset}"))?;
        data.finish()
            .map_err(|e| anyhow!("{what}: write to {path} at {offset} not confirmed: {e}"))?;
        // A cut data connection can look like success; the size shows at least that
        // the file reaches the end of this write (the verification shows the rest).
        match self.size_of(path) {
            Some(size) if size >= offset + len => Ok(()),
            Some(size) => bail!(
                "{what}: {path} is {size} bytes after writing up to {}",
                offset + len
            ),
            None => bail!("{what}: SIZE {path} failed after writing"),
        }
    }

    fn read_at(
        &mut self,
        path: &str,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let path = checked(path)?;
        let what = self.what.clone();
        self.stream
            .resume_transfer(offset as usize)
            .map_err(|e| anyhow!("{what}: REST {offset} refused: {e}"))?;
        let mut data = self
            .stream
            .retr_as_stream(path)
            .map_err(|e| anyhow!("{what}: REST {offset} + RETR {path} refused: {e}"))?;
        super::read_range(&mut data, offset, len, sink)
            .with_context(|| format!("{what}: reading {path}"))?;
        // Closing the data connection before the end of the file makes the server
        // answer 426 instead of 226: both end the transfer, in step.
        match data.finish() {
            Ok(()) => Ok(()),
            Err(suppaftp::FtpError::UnexpectedResponse(r))
                if r.status == suppaftp::Status::TransferAborted =>
            {
                Ok(())
            }
            Err(e) => Err(anyhow!("{what}: reading {path} not confirmed: {e}")),
        }
    }

    /// `XMD5 path start end` (end exclusive), where `FEAT` offers it. ProFTPD's `HASH`
    /// ignores `RANG` (it answers with the whole file's range), so `HASH` is not used
    /// for ranges.
    fn md5_at(&mut self, path: &str, offset: u64, len: u64) -> Result<Option<String>> {
        let offers = match &self.offers {
            Some(o) => o.clone(),
            None => Uploader::offers(self),
        };
        if !offers.xmd5 {
            return Ok(None);
        }
        let path = checked(path)?;
        if path.contains(' ') {
            // XMD5 takes the path and the range as words: a space would be ambiguous.
            return Ok(None);
        }
        let what = &self.what;
        let reply = self
            .stream
            .custom_command(
                format!("XMD5 {path} {offset} {}", offset + len),
                &[
                    suppaftp::Status::RequestedFileActionOk,
                    suppaftp::Status::File,
                ],
            )
            .map_err(|e| anyhow!("{what}: XMD5 {path} {offset} {} failed: {e}", offset + len))?;
        let body = String::from_utf8_lossy(&reply.body).to_string();
        xmd5_digest(&body)
            .map(Some)
            .ok_or_else(|| anyhow!("{what}: unreadable XMD5 reply {:?}", body.trim()))
    }

    fn kind(&mut self, path: &str) -> Result<Kind> {
        let path = checked(path)?;
        if let Some(size) = self.size_of(path) {
            return Ok(Kind::File(size));
        }
        Ok(if self.is_dir(path) {
            Kind::Dir
        } else {
            Kind::Missing
        })
    }

    fn make_dir(&mut self, path: &str) -> Result<bool> {
        let path = checked(path)?;
        match self.stream.mkdir(path) {
            Ok(()) => Ok(true),
            Err(e) if self.is_dir(path) => {
                let _ = e;
                Ok(false)
            }
            Err(e) => Err(anyhow!("{}: cannot create {path}: {e}", self.what)),
        }
    }

    fn remove_file(&mut self, path: &str) -> Result<()> {
        let path = checked(path)?;
        self.stream
            .rm(path)
            .map_err(|e| anyhow!("{}: cannot remove {path}: {e}", self.what))
    }

    fn remove_dir(&mut self, path: &str) -> Result<()> {
        let path = checked(path)?;
        self.in_dir = false;
        let _ = self.stream.cwd("/");
        self.stream
            .rmdir(path)
            .map_err(|e| anyhow!("{}: cannot remove {path}: {e}", self.what))
    }

    fn list(&mut self, path: &str) -> Result<Vec<String>> {
        let path = checked(path)?;
        let names = self
            .stream
            .nlst(Some(path))
            .map_err(|e| anyhow!("{}: cannot list {path}: {e}", self.what))?;
        // Servers answer with bare names or with paths: keep the last component.
        Ok(names
            .iter()
            .map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect())
    }

    fn move_to(&mut self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (checked(from)?, checked(to)?);
        self.stream
            .rename(from, to)
            .map_err(|e| anyhow!("{}: renaming {from} to {to} failed: {e}", self.what))
    }

    fn read_small(&mut self, path: &str) -> Result<Vec<u8>> {
        let path = checked(path)?;
        let what = self.what.clone();
        self.stream.resume_transfer(0).ok();
        let mut data = self
            .stream
            .retr_as_stream(path)
            .map_err(|e| anyhow!("{what}: cannot read {path}: {e}"))?;
        let mut out = Vec::new();
        (&mut data)
            .take(SMALL as u64 + 1)
            .read_to_end(&mut out)
            .with_context(|| format!("{what}: reading {path}"))?;
        let too_big = out.len() > SMALL;
        match data.finish() {
            Ok(()) => {}
            Err(suppaftp::FtpError::UnexpectedResponse(r))
                if too_big && r.status == suppaftp::Status::TransferAborted => {}
            Err(e) => bail!("{what}: reading {path} not confirmed: {e}"),
        }
        if too_big {
            bail!("{what}: {path} is larger than {SMALL} bytes");
        }
        Ok(out)
    }

    fn write_small(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let path = checked(path)?;
        let what = self.what.clone();
        let mut data = self
            .stream
            .put_with_stream(path)
            .map_err(|e| anyhow!("{what}: STOR {path} refused: {e}"))?;
        data.write_all(bytes)
            .with_context(|| format!("{what}: writing {path}"))?;
        data.finish()
            .map_err(|e| anyhow!("{what}: writing {path} not confirmed: {e}"))?;
        match self.size_of(path) {
            Some(s) if s == bytes.len() as u64 => Ok(()),
            _ => bail!(
                "{what}: {path} does not have the {} bytes written",
                bytes.len()
            ),
        }
    }

    /// FTP does not tell.
    fn free(&mut self, _: &str) -> Option<u64> {
        None
    }

    fn round_trip(&mut self) -> Option<Duration> {
        let t = std::time::Instant::now();
        self.stream.noop().ok()?;
        Some(t.elapsed())
    }

    fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for Ftp {
    fn drop(&mut self) {
        let _ = self.stream.quit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_digest_of_an_xmd5_reply() {
        // ProFTPD 1.3.8 with mod_digest: a `250-` line first, the digest in upper case.
        assert_eq!(
            xmd5_digest("250-Computing MD5 digest\r\n250 081E7E31BBF91638D412D75A88ECC4BD\r\n")
                .as_deref(),
            Some("081e7e31bbf91638d412d75a88ecc4bd")
        );
        assert_eq!(xmd5_digest("250 nothing here\r\n"), None);
        assert_eq!(xmd5_digest(""), None);
    }

    #[test]
    fn no_line_breaks_in_paths() {
        assert!(checked("/up/a b").is_ok());
        assert!(checked("/up/a\r\nDELE x").is_err());
    }
}
