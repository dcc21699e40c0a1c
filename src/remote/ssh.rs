//! SSH sessions: connect with timeouts, check the host key against known_hosts, log in,
//! run fixed remote commands. Every other module gets its sessions from here.

mod known_hosts;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use ssh2::{HashType, HostKeyType, MethodType, Session};
use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{home, KnownHosts, Login};
use crate::secret::Secret;
use known_hosts::Verdict;

/// How long to wait for a TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Cipher preference, fastest first; the rest of libssh2's list stays as fallbacks.
const FAST_CIPHERS: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr";

/// How a host key should be checked.
pub enum Trust<'a> {
    /// Against the run's known_hosts files.
    KnownHosts(&'a KnownHosts),
    /// Against one key, `type base64` (what the client hands its relays).
    Exact(&'a str),
}

/// Opens a TCP connection with a timeout, trying every address the name resolves to.
pub fn tcp(host: &str, port: u16, what: &str) -> Result<TcpStream> {
    let addrs = resolve(host, port, what, CONNECT_TIMEOUT, |h, p| {
        (h.as_str(), p).to_socket_addrs().map(|a| a.collect())
    })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true).ok();
                crate::interrupt::watch(&s);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => anyhow!(e).context(format!("{what}: cannot connect to {host}:{port}")),
        None => anyhow!("{what}: {host} resolves to no address"),
    })
}

/// Resolves `host` with `lookup`, giving up after `limit`: the system resolver can
/// block for much longer than any connect timeout (a DNS server that does not answer).
/// A lookup that times out keeps its thread until the resolver returns; it is detached.
fn resolve(
    host: &str,
    port: u16,
    what: &str,
    limit: Duration,
    lookup: impl FnOnce(String, u16) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
) -> Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send(lookup(name, port));
        })
        .with_context(|| format!("{what}: cannot resolve {host}"))?;
    match rx.recv_timeout(limit) {
        Ok(result) => result.with_context(|| format!("{what}: cannot resolve {host}")),
        Err(_) => bail!(
            "{what}: resolving {host} took longer than {} s; check the name and the DNS server, or use an IP address",
            limit.as_secs()
        ),
    }
}

/// Connects, verifies the host key, and logs in as `login.user`. Every blocking call
/// on the session waits at most `io_timeout`.
pub fn connect(
    login: &Login,
    trust: Trust<'_>,
    password: Option<&Secret>,
    io_timeout: Duration,
) -> Result<Session> {
    connect_wired(login, trust, password, io_timeout).map(|(session, _)| session)
}

/// [`connect`], also giving the session's socket, to open its first channels through
/// [`Wire::settle`].
pub fn connect_wired(
    login: &Login,
    trust: Trust<'_>,
    password: Option<&Secret>,
    io_timeout: Duration,
) -> Result<(Session, Wire)> {
    let what = login.describe();
    let stream = tcp(&login.host, login.port, &what).map_err(unreachable)?;
    let wire = Wire(
        stream
            .try_clone()
            .with_context(|| format!("{what}: cannot use the connection"))?,
    );
    let mut session = Session::new().context("creating an SSH session")?;
    session.set_tcp_stream(stream);
    session.set_timeout(io_timeout.as_millis().min(u32::MAX as u128) as u32);
    let prefs = match &trust {
        Trust::KnownHosts(kh) => known_key_types(&HostKeyLookup::new(login, kh)),
        Trust::Exact(line) => line
            .split_whitespace()
            .next()
            .map(|t| vec![t.to_string()])
            .unwrap_or_default(),
    };
    if !prefs.is_empty() {
        // Ask for the key type we know, or a host with two key types reads as changed.
        let algs: Vec<String> = prefs.iter().flat_map(|t| algorithms_for(t)).collect();
        session
            .method_pref(MethodType::HostKey, &algs.join(","))
            .ok();
    }
    // AES-GCM runs on the CPU's AES instructions through OpenSSL and is several times
    // faster than libssh2's default chacha20-poly1305: staging parts over the LAN is
    // bounded by this.
    for dir in [MethodType::CryptCs, MethodType::CryptSc] {
        session.method_pref(dir, FAST_CIPHERS).ok();
    }
    session
        .handshake()
        .with_context(|| format!("{what}: SSH handshake failed (is this an SSH server?)"))
        .map_err(unreachable)?;
    check_host_key(&session, login, &trust)?;
    authenticate(&session, login, password)?;
    Ok((session, wire))
}

/// An SSH session's TCP socket (a second handle on it).
pub struct Wire(#[cfg_attr(not(target_os = "linux"), allow(dead_code))] TcpStream);

/// libssh2's "would block" (`LIBSSH2_ERROR_EAGAIN`).
const EAGAIN: i32 = -37;

impl Wire {
    /// Runs `step`, a request to the server and the wait for its answer (opening a
    /// channel, starting a command, starting SFTP), acknowledging at once every
    /// packet that arrives meanwhile.
    ///
    /// Right after the login OpenSSH's server sends its host keys
    /// (`hostkeys-00@openssh.com`), then holds its next packet, the answer to our
    /// first request, until that one is acknowledged (Nagle: the server sets no
    /// `TCP_NODELAY` without a terminal); Linux delays that acknowledgment by 40 ms
    /// in a request-answer exchange. Every first channel cost those 40 ms. Here the
    /// session waits without blocking and the socket is put back into quick-ACK mode
    /// before each read (Linux only; elsewhere `step` simply blocks).
    pub fn settle<T>(
        &self,
        session: &Session,
        mut step: impl FnMut() -> Result<T, ssh2::Error>,
    ) -> Result<T, ssh2::Error> {
        if !cfg!(target_os = "linux") {
            return step();
        }
        let limit = match session.timeout() {
            0 => None,
            ms => Some(std::time::Instant::now() + Duration::from_millis(ms.into())),
        };
        session.set_blocking(false);
        let result = loop {
            match step() {
                Err(e) if e.code() == ssh2::ErrorCode::Session(EAGAIN) => {
                    self.quick_ack();
                    let left =
                        limit.map(|l| l.saturating_duration_since(std::time::Instant::now()));
                    if left == Some(Duration::ZERO) || !self.wait(session, left) {
                        break Err(ssh2::Error::new(
                            ssh2::ErrorCode::Session(-9),
                            "timed out waiting for the server",
                        ));
                    }
                    self.quick_ack();
                }
                other => break other,
            }
        };
        session.set_blocking(true);
        result
    }

    #[cfg(target_os = "linux")]
    fn quick_ack(&self) {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn quick_ack(&self) {}

    /// Waits until the socket can go the way libssh2 waits for, or `left` passes;
    /// `false` on timeout.
    #[cfg(target_os = "linux")]
    fn wait(&self, session: &Session, left: Option<Duration>) -> bool {
        use std::os::fd::AsRawFd;
        let events = match session.block_directions() {
            ssh2::BlockDirections::Inbound => libc::POLLIN,
            ssh2::BlockDirections::Outbound => libc::POLLOUT,
            _ => libc::POLLIN | libc::POLLOUT,
        };
        let mut fd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = left.map_or(-1, |d| d.as_millis().clamp(1, i32::MAX as u128) as i32);
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut fd, 1, ms) != 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn wait(&self, _: &Session, _: Option<Duration>) -> bool {
        true
    }
}

/// The algorithms to offer for a key type as written in known_hosts.
fn algorithms_for(key_type: &str) -> Vec<String> {
    match key_type {
        "ssh-rsa" => vec![
            "rsa-sha2-512".into(),
            "rsa-sha2-256".into(),
            "ssh-rsa".into(),
        ],
        t => vec![t.to_string()],
    }
}

/// The system-wide known_hosts files OpenSSH reads when the ssh config names none.
pub const GLOBAL_KNOWN_HOSTS: [&str; 2] = ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// Where one login's host key is looked up and, when new and accepted, filed.
struct HostKeyLookup {
    /// The name in known_hosts: the HostKeyAlias, else `host` or `[host]:port`.
    name: String,
    /// Read first; the first one gets accepted keys.
    user_files: Vec<PathBuf>,
    /// Read after the user files; never written.
    global_files: Vec<PathBuf>,
}

impl HostKeyLookup {
    /// `file` is the known_hosts file relayup was given (`[ssh] known_hosts` or its
    /// default); the ssh config's rules for this host replace what they name.
    fn new(login: &Login, kh: &KnownHosts) -> HostKeyLookup {
        let rule = kh.rules_for(login);
        HostKeyLookup {
            name: rule
                .alias
                .unwrap_or_else(|| known_hosts::host_name(&login.host, login.port)),
            user_files: rule.user_files.unwrap_or_else(|| vec![kh.file.clone()]),
            global_files: rule
                .global_files
                .unwrap_or_else(|| GLOBAL_KNOWN_HOSTS.iter().map(PathBuf::from).collect()),
        }
    }

    fn entries(&self) -> Vec<known_hosts::Entry> {
        let files: Vec<PathBuf> = self
            .user_files
            .iter()
            .chain(&self.global_files)
            .cloned()
            .collect();
        known_hosts::entries_for(&files, &self.name)
    }

    /// The user's known_hosts, as named in messages.
    fn user_file(&self) -> String {
        match self.user_files.first() {
            Some(f) => f.display().to_string(),
            None => "~/.ssh/known_hosts".into(),
        }
    }
}

/// Key types known for a host, in the user's and the system's known_hosts (plain and
/// hashed names alike): the host-key algorithms to ask for.
fn known_key_types(lookup: &HostKeyLookup) -> Vec<String> {
    known_hosts::key_types(&lookup.entries())
}

fn key_type_name(t: HostKeyType) -> &'static str {
    match t {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown",
    }
}

/// The session's host key as a known_hosts key field: `type base64`.
pub fn host_key_line(session: &Session) -> Result<String> {
    let (key, kind) = session
        .host_key()
        .ok_or_else(|| anyhow!("server sent no host key"))?;
    Ok(format!(
        "{} {}",
        key_type_name(kind),
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

/// `SHA256:…`, as `ssh-keygen -l` prints it.
pub fn fingerprint(session: &Session) -> String {
    match session.host_key_hash(HashType::Sha256) {
        Some(h) => format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
        ),
        None => "(no fingerprint)".into(),
    }
}

fn check_host_key(session: &Session, login: &Login, trust: &Trust<'_>) -> Result<()> {
    let what = login.describe();
    let (key, kind) = session
        .host_key()
        .ok_or_else(|| anyhow!("{what}: server sent no host key"))?;
    let kind = key_type_name(kind);
    let fp = fingerprint(session);
    let kh = match trust {
        Trust::Exact(expected) => {
            if host_key_line(session)? != expected.trim() {
                bail!("{what}: host key {kind} {fp} is not the one the sending machine trusts; refusing to connect");
            }
            return Ok(());
        }
        Trust::KnownHosts(kh) => kh,
    };
    let lookup = HostKeyLookup::new(login, kh);
    let entries = lookup.entries();
    let name = &lookup.name;
    let problem = |message: String| Err(HostKeyProblem(message).into());
    match known_hosts::verdict(&entries, kind, key) {
        Verdict::Known => Ok(()),
        Verdict::Revoked(e) => problem(format!(
            "{what}: host key {kind} {fp} is marked @revoked for {name} in {}; refusing to connect",
            e.place()
        )),
        Verdict::Changed(e) => problem(format!(
            "{what}: HOST KEY CHANGED (now {kind} {fp}, known {} in {}), which may mean someone is intercepting \
             the connection; if the change is expected, remove the old key with: ssh-keygen -R '{name}' -f {}",
            e.key_type,
            e.place(),
            e.file.display()
        )),
        // The algorithms asked for are the known types, so a server offering another
        // one has none of them any more (or relayup cannot use them): not a changed
        // key, but nothing to accept silently either.
        Verdict::OtherTypes(types) => problem(format!(
            "{what}: host key {kind} {fp} is not known; known_hosts holds only {} for {name}, which the server \
             did not offer; if that fingerprint is right, add it with: {} >> {}",
            types.join(", "),
            keyscan(login, kind, name),
            lookup.user_file()
        )),
        Verdict::Unknown if kh.accept_new => {
            let Some(user_file) = lookup.user_files.first() else {
                return problem(format!(
                    "{what}: host key {kind} {fp} is not known, and UserKnownHostsFile is none, so it cannot be added"
                ));
            };
            add_known_host(user_file, name, &host_key_line(session)?)?;
            crate::progress::warn(&format!(
                "added {what}'s host key {kind} {fp} to {}",
                user_file.display()
            ));
            Ok(())
        }
        Verdict::Unknown => problem(format!(
            "{what}: host key is not known ({kind} {fp}); if that fingerprint is right, add it with \
             --accept-new-host-keys, or: {} >> {}",
            keyscan(login, kind, name),
            lookup.user_file()
        )),
    }
}

/// The command that prints the host's key as a known_hosts line filed under `name`.
fn keyscan(login: &Login, kind: &str, name: &str) -> String {
    let port = if login.port == 22 {
        String::new()
    } else {
        format!("-p {} ", login.port)
    };
    let scan = format!("ssh-keyscan -t {kind} {port}{}", login.host);
    if *name == known_hosts::host_name(&login.host, login.port) {
        scan
    } else {
        // A HostKeyAlias: ssh-keyscan writes the host's own name.
        format!("{scan} | sed 's/^[^ ]*/{name}/'")
    }
}

/// The host could not be reached, or did not speak SSH: before any question of keys
/// or logins (`peers check` tells these apart). Carries the whole message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(String);

fn unreachable(e: anyhow::Error) -> anyhow::Error {
    Unreachable(format!("{e:#}")).into()
}

/// A host key that is unknown, changed or revoked: the whole send stops (exit 3),
/// whichever host it is, before any byte goes there. The message is the error's own,
/// so a printed chain holds no empty link.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HostKeyProblem(String);

/// Appends `name type base64` to known_hosts (created 0600 if missing). Appending, not
/// rewriting, keeps the user's comments and hashed entries as they are.
fn add_known_host(file: &Path, name: &str, key_line: &str) -> Result<()> {
    use std::io::Write;
    static APPEND: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = APPEND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let needs_newline = std::fs::read(file)
        .map(|b| !b.is_empty() && !b.ends_with(b"\n"))
        .unwrap_or(false);
    let mut f = crate::platform::owner_only(std::fs::OpenOptions::new().create(true).append(true))
        .open(file)
        .with_context(|| format!("cannot add a host key to {}", file.display()))?;
    let line = format!(
        "{}{name} {key_line}\n",
        if needs_newline { "\n" } else { "" }
    );
    f.write_all(line.as_bytes())
        .with_context(|| format!("cannot add a host key to {}", file.display()))
}

fn authenticate(session: &Session, login: &Login, password: Option<&Secret>) -> Result<()> {
    let what = login.describe();
    let user = &login.user;
    let mut tried = Vec::new();
    if let Some(pw) = password {
        if session.userauth_password(user, pw.expose()).is_ok() && session.authenticated() {
            return Ok(());
        }
        tried.push("password".to_string());
    }
    if let Some(id) = &login.identity {
        if !id.exists() {
            bail!(
                "{what}: identity file {} does not exist; fix ssh.identity or the host's identity",
                id.display()
            );
        }
        // An encrypted key may be in the agent already: no need to ask then.
        if crate::remote::keys::is_encrypted(id) && agent_auth(session, user, &mut tried) {
            return Ok(());
        }
        if key_auth(session, login, id, &mut tried)? {
            return Ok(());
        }
        bail!(
            "{what}: authentication failed with {}; is its public key in ~{user}/.ssh/authorized_keys there?",
            tried.join(", ")
        );
    }
    if agent_auth(session, user, &mut tried) {
        return Ok(());
    }
    for file in default_identities() {
        if key_auth(session, login, &file, &mut tried)? {
            return Ok(());
        }
    }
    if tried.is_empty() {
        bail!("{what}: no credentials to try: no identity configured, no ssh-agent, no ~/.ssh/id_* key");
    }
    bail!("{what}: authentication failed (tried {})", tried.join(", "))
}

/// Every identity in ssh-agent, one by one (libssh2's userauth_agent stops at the
/// first key).
fn agent_auth(session: &Session, user: &str, tried: &mut Vec<String>) -> bool {
    let Ok(mut agent) = session.agent() else {
        return false;
    };
    if agent.connect().is_err() || agent.list_identities().is_err() {
        return false;
    }
    for identity in agent.identities().unwrap_or_default() {
        if agent.userauth(user, &identity).is_ok() && session.authenticated() {
            return true;
        }
    }
    tried.push("ssh-agent keys".into());
    false
}

/// libssh2's error when it cannot read a private key: for an encrypted key, a wrong
/// passphrase (`LIBSSH2_ERROR_FILE`).
const KEY_FILE_ERROR: i32 = -16;

/// One key file; an encrypted one gets its passphrase from [`crate::remote::keys::passphrase`]
/// (asked on the terminal, three tries). Ok(false): the server did not take it.
fn key_auth(
    session: &Session,
    login: &Login,
    file: &Path,
    tried: &mut Vec<String>,
) -> Result<bool> {
    let user = &login.user;
    if !crate::remote::keys::is_encrypted(file) {
        return Ok(match session.userauth_pubkey_file(user, None, file, None) {
            Ok(()) if session.authenticated() => true,
            Ok(()) => {
                tried.push(format!("key {}", file.display()));
                false
            }
            Err(e) => {
                tried.push(format!("key {} ({})", file.display(), e.message()));
                false
            }
        });
    }
    let mut rejected = None;
    for _ in 0..3 {
        let pass = crate::remote::keys::passphrase(file, rejected.as_ref())
            .map_err(|e| anyhow!("{}: {e}", login.describe()))?;
        match session.userauth_pubkey_file(user, None, file, Some(pass.expose())) {
            Ok(()) if session.authenticated() => return Ok(true),
            Err(e) if e.code() == ssh2::ErrorCode::Session(KEY_FILE_ERROR) => rejected = Some(pass),
            Ok(()) | Err(_) => {
                tried.push(format!("key {}", file.display()));
                return Ok(false);
            }
        }
    }
    bail!(
        "{}: wrong passphrase for key {} (3 tries)",
        login.describe(),
        file.display()
    )
}

fn default_identities() -> Vec<PathBuf> {
    let Ok(home) = home() else { return Vec::new() };
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .filter(|p| p.exists())
        .collect()
}

/// Output of a finished remote command.
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a fixed script under `/bin/sh` and waits for it. The script goes to the shell's
/// stdin, not into the command line: the login shell (tcsh, fish, …) only ever parses
/// `/bin/sh -s`, so an account whose shell is not POSIX works too. `script` must quote
/// every path with [`crate::remote::quote::sh`].
pub fn run(session: &Session, script: &str) -> Result<Output> {
    let ch = start_script(session, None, script, false)?;
    finish(ch)
}

/// Runs `command` as it is (the login shell parses it: plain words only, which
/// every shell, `cmd.exe` and PowerShell included, runs alike) and waits for it.
pub fn run_command(session: &Session, command: &str) -> Result<Output> {
    let mut ch = session
        .channel_session()
        .context("opening an SSH channel")?;
    ch.exec(command).context("starting a remote command")?;
    finish(ch)
}

/// Ends a started command's input, reads its output and its exit status.
fn finish(mut ch: ssh2::Channel) -> Result<Output> {
    ch.send_eof().context("starting a remote command")?;
    // Read stderr merged after stdout: both are small for the commands we run.
    let mut stdout = String::new();
    let mut stderr = String::new();
    ch.read_to_string(&mut stdout)
        .context("reading a remote command's output")?;
    ch.stderr().read_to_string(&mut stderr).ok();
    ch.wait_close().ok();
    let status = ch
        .exit_status()
        .context("reading a remote command's exit status")?;
    // A command killed by a signal has no exit status, which libssh2 reports as 0.
    if let Some(sig) = exit_signal(&ch) {
        bail!(
            "a remote command was killed by signal {sig}{}",
            match stderr.trim() {
                "" => String::new(),
                e => format!(": {e}"),
            }
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Starts `script` under `/bin/sh -s`, written to its stdin as one `{ … }` group, and
/// returns the channel with stdin still open. A script that reads stdin itself must
/// first print a line of its own and the caller must wait for it before writing
/// anything: `sh` may read ahead on a pipe, but only what has been written. With
/// `merge_stderr`, stderr arrives in the same stream as stdout. With the session's
/// `wire`, the channel is opened and the command started through [`Wire::settle`].
pub fn start_script(
    session: &Session,
    wire: Option<&Wire>,
    script: &str,
    merge_stderr: bool,
) -> Result<ssh2::Channel> {
    use std::io::Write;
    let mut ch =
        settled(session, wire, || session.channel_session()).context("opening an SSH channel")?;
    if merge_stderr {
        ch.handle_extended_data(ssh2::ExtendedData::Merge)
            .context("merging a remote command's stderr")?;
    }
    settled(session, wire, || ch.exec("/bin/sh -s")).context("starting a remote command")?;
    ch.write_all(format!("{{\n{script}\n}}\nexit $?\n").as_bytes())
        .context("starting a remote command")?;
    Ok(ch)
}

/// `step` through [`Wire::settle`] if there is a `wire`, else as it is.
fn settled<T>(
    session: &Session,
    wire: Option<&Wire>,
    mut step: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<T, ssh2::Error> {
    match wire {
        Some(w) => w.settle(session, step),
        None => step(),
    }
}

/// The signal that killed a finished remote command (`SIGKILL`, ...), if one did.
/// Read after `wait_close`, as the exit status.
pub fn exit_signal(ch: &ssh2::Channel) -> Option<String> {
    ch.exit_signal()
        .ok()
        .and_then(|s| s.exit_signal)
        .filter(|s| !s.is_empty())
        .map(|s| format!("SIG{}", s.trim_start_matches("SIG")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostKeyFiles;

    fn lookup(name: &str, user: &Path, global: &Path) -> HostKeyLookup {
        HostKeyLookup {
            name: name.into(),
            user_files: vec![user.to_path_buf()],
            global_files: vec![global.to_path_buf()],
        }
    }

    #[test]
    fn resolving_is_bounded_and_its_error_names_the_host() {
        let slow = |_: String, _: u16| {
            std::thread::sleep(Duration::from_secs(30));
            Ok(Vec::new())
        };
        let start = std::time::Instant::now();
        let err = resolve(
            "slow.example",
            22,
            "peer p1",
            Duration::from_millis(200),
            slow,
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("peer p1: resolving slow.example took longer than"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));

        let failing = |_: String, _: u16| Err(std::io::Error::other("no such host"));
        let err = resolve(
            "nope.example",
            22,
            "peer p1",
            Duration::from_secs(5),
            failing,
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "peer p1: cannot resolve nope.example: no such host"
        );

        let never = |_: String, _: u16| -> std::io::Result<Vec<SocketAddr>> {
            panic!("an IP address needs no lookup")
        };
        let addrs = resolve("127.0.0.1", 2222, "x", Duration::from_secs(1), never).unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:2222".parse().unwrap()]);
    }

    #[test]
    fn finds_known_key_types() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kh");
        std::fs::write(
            &f,
            "# comment\nalpha ssh-ed25519 AAAA\n[alpha]:2222 ecdsa-sha2-nistp256 BBBB\nbeta,alpha ssh-rsa CCCC\n@revoked alpha ssh-dss DDDD\n",
        )
        .unwrap();
        let none = dir.path().join("missing");
        assert_eq!(
            known_key_types(&lookup("alpha", &f, &none)),
            vec!["ssh-ed25519", "ssh-rsa"]
        );
        assert_eq!(
            known_key_types(&lookup("[alpha]:2222", &f, &none)),
            vec!["ecdsa-sha2-nistp256"]
        );
        assert!(known_key_types(&lookup("gamma", &f, &none)).is_empty());
        assert!(known_key_types(&lookup("alpha", &none, &none)).is_empty());
        assert_eq!(algorithms_for("ssh-rsa").len(), 3);
    }

    /// The case Debian's default known_hosts makes: the host's only entry is a hashed
    /// RSA one, and it must pin RSA, or the server offers ed25519 and it reads as changed.
    #[test]
    fn hashed_entry_pins_its_key_type() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("known_hosts");
        // `[10.0.0.7]:2222` hashed as `ssh-keygen -H` does: HMAC-SHA1 keyed with the salt.
        let salt = [7u8; 20];
        let name = "[10.0.0.7]:2222";
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(name.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD;
        let field = format!(
            "|1|{}|{}",
            b64.encode(salt),
            b64.encode(mac.finalize().into_bytes())
        );
        std::fs::write(&user, format!("{field} ssh-rsa AAAA\n")).unwrap();
        let none = dir.path().join("missing");
        assert_eq!(
            known_key_types(&lookup(name, &user, &none)),
            vec!["ssh-rsa"]
        );
        assert!(known_key_types(&lookup("[10.0.0.7]:2223", &user, &none)).is_empty());
        // The same from the global file, and under an alias.
        let global = dir.path().join("ssh_known_hosts");
        std::fs::write(&global, "[10.0.0.7]:2222,build-box ssh-ed25519 AAAA\n").unwrap();
        assert_eq!(
            known_key_types(&lookup(name, &user, &global)),
            vec!["ssh-rsa", "ssh-ed25519"]
        );
        assert_eq!(
            known_key_types(&lookup("build-box", &none, &global)),
            vec!["ssh-ed25519"]
        );
    }

    #[test]
    fn lookup_follows_the_ssh_config_rule_for_the_host() {
        let login = |port| Login {
            name: "p".into(),
            host: "10.9.9.9".into(),
            port,
            user: "u".into(),
            identity: None,
        };
        let given = Path::new("/given");
        let kh = KnownHosts {
            file: given.to_path_buf(),
            rules: vec![HostKeyFiles {
                name: "p".into(),
                host: "10.9.9.9".into(),
                port: 2200,
                alias: Some("box".into()),
                user_files: Some(vec!["/u1".into(), "/u2".into()]),
                global_files: Some(vec![]),
            }],
            accept_new: false,
        };
        let l = HostKeyLookup::new(&login(2200), &kh);
        assert_eq!(l.name, "box");
        assert_eq!(l.user_files, [PathBuf::from("/u1"), PathBuf::from("/u2")]);
        assert!(l.global_files.is_empty());
        let other = HostKeyLookup::new(&login(22), &kh);
        assert_eq!(other.name, "10.9.9.9");
        assert_eq!(other.user_files, [given.to_path_buf()]);
        assert_eq!(other.global_files.len(), GLOBAL_KNOWN_HOSTS.len());
        let mut another_peer = login(2200);
        another_peer.name = "q".into();
        assert_eq!(
            HostKeyLookup::new(&another_peer, &kh).name,
            "[10.9.9.9]:2200"
        );
    }

    #[test]
    fn host_key_problem_prints_its_message_only() {
        let e: anyhow::Error = HostKeyProblem("p1: HOST KEY CHANGED".into()).into();
        assert_eq!(format!("{e:#}"), "p1: HOST KEY CHANGED");
        assert!(e.downcast_ref::<HostKeyProblem>().is_some());
    }
}
