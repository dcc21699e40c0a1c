//! FTP and FTPS uploads (suppaftp), binary mode, large writes, size checked after.

use anyhow::{anyhow, bail, Context, Result};
use std::net::TcpStream;
use std::sync::Arc;
use suppaftp::types::FileType;
use suppaftp::{RustlsConnector, RustlsFtpStream};

use super::{temp_dir, Body, Offers, Uploader};
use crate::remote::protocol::ServerSpec;
use crate::remote::ssh::{tcp, CONNECT_TIMEOUT};
use std::time::Duration;

pub struct Ftp {
    stream: RustlsFtpStream,
    what: String,
    /// The upload's temp dir, entered before the first upload.
    dir: String,
    in_dir: bool,
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
            .map_err(|e| {
                anyhow!(
                    "{what}: login as {} failed: {e}; check server.user and the password",
                    spec.user
                )
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
        })
    }
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
        self.stream
            .feat()
            .map(|features| Offers::from_feat(&features))
            .unwrap_or_default()
    }
}

impl Drop for Ftp {
    fn drop(&mut self) {
        let _ = self.stream.quit();
    }
}
