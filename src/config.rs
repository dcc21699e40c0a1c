//! peers.toml and the command line, resolved once into validated [`Settings`].
//! Nothing touches the network before this succeeds.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::remote::protocol::ServerSpec;
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    merge: Option<RawMerge>,
    #[serde(default)]
    ssh: RawSsh,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: String,
    user: String,
    password_env: Option<String>,
    password_file: Option<String>,
    ca_file: Option<String>,
    assembly: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMerge {
    host: String,
    user: Option<String>,
    dir: String,
    port: Option<u16>,
    identity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    identity: Option<String>,
    known_hosts: Option<String>,
    config: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    host: String,
    user: Option<String>,
    port: Option<u16>,
    identity: Option<String>,
    relayup: Option<String>,
    staging: Option<String>,
}

/// One SSH login: a peer's, or the merge login on the server.
#[derive(Clone, Debug)]
pub struct Login {
    /// Name used in every message: the peer's name, or `server`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private key file; `None` = every identity in ssh-agent, then ~/.ssh/id_*.
    pub identity: Option<PathBuf>,
}

impl Login {
    /// `name (user@host:port)` for messages.
    pub fn describe(&self) -> String {
        format!("{} ({}@{}:{})", self.name, self.user, self.host, self.port)
    }
}

/// A LAN peer that runs `relayup relay` and uploads its share.
#[derive(Clone, Debug)]
pub struct Peer {
    pub login: Login,
    /// How to start relayup on the peer; `None`: `~/.local/bin/relayup` (where
    /// `relayup peers deploy` installs it) if it is there, else `relayup` on its PATH.
    pub relayup: Option<String>,
    /// Staging directory on the peer; `None` = `~/.cache/relayup`.
    pub staging: Option<String>,
}

/// Where `relayup peers deploy` installs relayup on a peer, relative to its home.
pub const DEPLOY_PATH: &str = ".local/bin/relayup";

/// Where `peers deploy` installs relayup on a Windows peer, relative to its home
/// directory: `%LOCALAPPDATA%\relayup\relayup.exe` (as SFTP names it).
pub const WINDOWS_DEPLOY_PATH: &str = "AppData/Local/relayup/relayup.exe";

impl Peer {
    /// The commands that may start the relay on the peer, in the order tried until
    /// one greets (see [`crate::remote::peer::PeerLink::connect`]): the configured
    /// path, else the deployed one (Unix's, then Windows'), else `relayup` on the
    /// PATH. Plain words where the
    /// path allows, which every login shell runs alike (sh, csh, fish, `cmd.exe`,
    /// PowerShell); the deployed path is relative to the home directory, where an SSH
    /// session starts. A configured path with other characters is quoted for a
    /// POSIX shell.
    pub fn relay_commands(&self) -> Vec<String> {
        match &self.relayup {
            Some(path) if plain_word(path) => vec![format!("{path} relay")],
            Some(path) => vec![format!("{} relay", crate::remote::quote::sh_home(path))],
            None => vec![
                format!("{DEPLOY_PATH} relay"),
                format!("{} relay", WINDOWS_DEPLOY_PATH.replace('/', "\\")),
                "relayup relay".to_string(),
            ],
        }
    }
}

/// Whether `s` is one word that sh, csh, fish, `cmd.exe` and PowerShell all take as
/// it is (a leading `~/` is the home directory in the Unix shells).
fn plain_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '\\' | '.' | '_' | '-' | ':' | '+')
        })
        || s.strip_prefix("~/")
            .is_some_and(|rest| !rest.starts_with('~') && plain_word(rest))
}

/// The server-side login that merges parts and checks the MD5.
#[derive(Clone, Debug)]
pub struct Merge {
    pub login: Login,
    /// Filesystem path of `server.url`'s directory, as seen by the merge login.
    pub dir: String,
}

/// How the parts become one file on the server (`[server] assembly`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssemblyKind {
    /// Parts land as files in the temp dir and the `[merge]` SSH login appends them
    /// into one, hashing it in the same pass.
    Merge,
    /// Every host writes its parts at their offsets into one file: no shell login
    /// needed on the server.
    Direct,
}

impl AssemblyKind {
    pub fn name(self) -> &'static str {
        match self {
            AssemblyKind::Merge => "merge",
            AssemblyKind::Direct => "direct",
        }
    }
}

/// Everything a send needs, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The file the settings came from, for messages.
    pub path: PathBuf,
    /// Where parts are uploaded, and with which credentials.
    pub server: ServerSpec,
    /// The SSH login on the server used to merge and verify (`[merge]`, optional).
    pub merge: Option<Merge>,
    /// How the parts become one file on the server.
    pub assembly: AssemblyKind,
    /// How SSH host keys are checked: every SSH login of the run gets this.
    pub known_hosts: KnownHosts,
    /// How long any single blocking network call may wait (`--stall-timeout`): a
    /// call that moves no byte for that long fails, and its part goes to another host.
    pub io_timeout: Duration,
    /// The LAN peers, in config order.
    pub peers: Vec<Peer>,
    /// Upload rate limit for all hosts together, bytes per second (`--bwlimit-total`);
    /// the per-host one is `server.bwlimit`.
    pub bwlimit_total: Option<u64>,
    /// `[ssh] identity`, expanded.
    pub default_identity: Option<PathBuf>,
}

impl Settings {
    /// The `[merge]` login, for what only a shell login on the server can do.
    pub fn merge_login(&self) -> Result<&Merge> {
        self.merge.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: no [merge] section: this needs an SSH shell login on the server",
                self.path.display()
            )
        })
    }

    /// The SSH key for an `sftp://` server without a password: the merge login's, else
    /// `[ssh] identity` (`None`: ssh-agent, then ~/.ssh/id_*).
    pub fn server_identity(&self) -> Option<PathBuf> {
        match &self.merge {
            Some(m) => m.login.identity.clone(),
            None => self.default_identity.clone(),
        }
    }

    /// `--peers a,b`: keeps only the peers with these names; an unknown name is an
    /// error that lists the known ones.
    pub fn keep_peers(&mut self, names: &[String]) -> Result<()> {
        for n in names {
            if !self.peers.iter().any(|p| &p.login.name == n) {
                let known: Vec<&str> = self.peers.iter().map(|p| p.login.name.as_str()).collect();
                bail!(
                    "--peers: no peer named {n:?} in {} (peers: {})",
                    self.path.display(),
                    known.join(", ")
                );
            }
        }
        self.peers.retain(|p| names.contains(&p.login.name));
        Ok(())
    }
}

/// Where one SSH login's host keys are looked up, as `~/.ssh/config` says for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostKeyFiles {
    /// The login these rules are for: its name (a peer's, or `server`), host and port.
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `HostKeyAlias`: the name its keys are filed under instead of `[host]:port`.
    pub alias: Option<String>,
    /// `UserKnownHostsFile`, only when peers.toml names no `[ssh] known_hosts`; the
    /// first file gets keys accepted with `--accept-new-host-keys`.
    pub user_files: Option<Vec<PathBuf>>,
    /// `GlobalKnownHostsFile`; `None`: OpenSSH's default, `/etc/ssh/ssh_known_hosts`.
    pub global_files: Option<Vec<PathBuf>>,
}

/// `--stall-timeout`'s default, and the timeout of commands that have no such flag.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How a run checks SSH host keys, resolved once from the config and the command line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KnownHosts {
    /// The user's known_hosts file (`[ssh] known_hosts`, default `~/.ssh/known_hosts`),
    /// checked with the system's; a login's ssh config rules may name others.
    pub file: PathBuf,
    /// What `~/.ssh/config` says about each SSH login's host keys (HostKeyAlias,
    /// UserKnownHostsFile, GlobalKnownHostsFile).
    pub rules: Vec<HostKeyFiles>,
    /// `--accept-new-host-keys`: trust a key seen for the first time and remember it.
    pub accept_new: bool,
}

impl KnownHosts {
    /// The rules for `login`; the first for a login wins (the merge login's, when an
    /// `sftp://` server is the same host). None: the defaults, for a login the config
    /// did not make.
    pub fn rules_for(&self, login: &Login) -> HostKeyFiles {
        self.rules
            .iter()
            .find(|r| r.name == login.name && r.host == login.host && r.port == login.port)
            .cloned()
            .unwrap_or_default()
    }
}

/// Which config file to read: `--config`, else `$RELAYUP_CONFIG`, else
/// `$XDG_CONFIG_HOME/relayup/peers.toml` (`~/.config/relayup/peers.toml`; on Windows
/// `%APPDATA%\relayup\peers.toml`).
pub fn config_path(cli: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = cli {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("RELAYUP_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(crate::platform::config_base()?
        .join("relayup")
        .join("peers.toml"))
}

pub fn home() -> Result<PathBuf> {
    crate::platform::home_dir().ok_or_else(|| anyhow!(crate::platform::HOME_UNSET))
}

/// Expands a leading `~/` to the home directory.
pub fn expand(p: &str) -> Result<PathBuf> {
    match p.strip_prefix("~/") {
        Some(rest) => Ok(home()?.join(rest)),
        None if p == "~" => home(),
        None => Ok(PathBuf::from(p)),
    }
}

/// Reads and validates the config file.
pub fn load(path: &Path) -> Result<Settings> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read config {}; create it from peers.example.toml or pass --config",
            path.display()
        )
    })?;
    parse(&text, path)
}

/// Parses config text; `path` is only used in messages and for permission checks.
pub fn parse(text: &str, path: &Path) -> Result<Settings> {
    let mut raw = read_toml(text, path)?;
    apply_env(&mut raw)?;
    let server = server_spec(&raw.server).with_context(|| at(path, "[server]"))?;
    let known_hosts = expand(
        raw.ssh
            .known_hosts
            .as_deref()
            .unwrap_or("~/.ssh/known_hosts"),
    )?;
    let logins = Logins {
        default_identity: raw.ssh.identity.as_deref().map(expand).transpose()?,
        ssh_config: load_ssh_config(raw.ssh.config.as_deref())?,
    };
    let merge = raw
        .merge
        .as_ref()
        .map(|m| resolve_merge(m, &logins, path))
        .transpose()?;
    let assembly = match (raw.server.assembly.as_deref(), &merge) {
        (None | Some("auto"), Some(_)) | (Some("merge"), Some(_)) => AssemblyKind::Merge,
        (None | Some("auto"), None) | (Some("direct"), _) => AssemblyKind::Direct,
        (Some("merge"), None) => bail!(
            "{}: server.assembly = \"merge\" needs a [merge] section (an SSH login on the server); add one, or use \"direct\"",
            path.display()
        ),
        (Some(other), _) => bail!(
            "{}: server.assembly = {other:?} is not one of \"auto\", \"merge\", \"direct\"",
            path.display()
        ),
    };
    let peers = resolve_peers(&raw.peers, &logins, path)?;
    let host_key_files = host_key_rules(
        &raw,
        &server,
        merge.as_ref(),
        &peers,
        logins.ssh_config.as_ref(),
    )
    .with_context(|| {
        let file = raw.ssh.config.as_deref().unwrap_or("~/.ssh/config");
        format!("{}: ssh config {file}", path.display())
    })?;
    Ok(Settings {
        path: path.to_path_buf(),
        server,
        merge,
        assembly,
        known_hosts: KnownHosts {
            file: known_hosts,
            rules: host_key_files,
            accept_new: false,
        },
        io_timeout: DEFAULT_IO_TIMEOUT,
        peers,
        bwlimit_total: None,
        default_identity: logins.default_identity.clone(),
    })
}

/// `path: field`, the prefix of a message about one part of the config.
fn at(path: &Path, field: &str) -> String {
    format!("{}: {field}", path.display())
}

/// The TOML as written; a syntax error names the file and line.
fn read_toml(text: &str, path: &Path) -> Result<RawConfig> {
    toml::from_str(text).map_err(|e| {
        let place = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                format!(":{line}")
            })
            .unwrap_or_default();
        anyhow!("{}{place}: {}", path.display(), e.message().trim())
    })
}

/// `[merge]`: the merge login, and its directory as an absolute path without a
/// trailing `/`.
fn resolve_merge(m: &RawMerge, logins: &Logins, path: &Path) -> Result<Merge> {
    nonempty(&m.host, "merge.host").with_context(|| at(path, "[merge]"))?;
    if !m.dir.starts_with('/') {
        bail!(
            "{}: merge.dir {:?} must be an absolute path on the server",
            path.display(),
            m.dir
        );
    }
    Ok(Merge {
        login: logins
            .resolve(
                "server",
                &m.host,
                m.user.as_ref(),
                m.port,
                m.identity.as_ref(),
            )
            .with_context(|| at(path, "[merge]"))?,
        dir: match m.dir.trim_end_matches('/') {
            "" => "/".to_string(),
            d => d.to_string(),
        },
    })
}

/// Every `[[peer]]`, in config order, with unique valid names.
fn resolve_peers(raw: &[RawPeer], logins: &Logins, path: &Path) -> Result<Vec<Peer>> {
    let mut peers: Vec<Peer> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let ctx = || at(path, &format!("peer #{} ({:?})", i + 1, p.name));
        valid_name(&p.name).with_context(ctx)?;
        if peers.iter().any(|q| q.login.name == p.name) {
            bail!(
                "{}: two peers are named {:?}; peer names must be unique",
                path.display(),
                p.name
            );
        }
        nonempty(&p.host, "host").with_context(ctx)?;
        if let Some(s) = &p.staging {
            if s.is_empty() || s.contains('\n') {
                Err(anyhow!("staging must be a directory path")).with_context(ctx)?;
            }
        }
        peers.push(Peer {
            login: logins
                .resolve(
                    &p.name,
                    &p.host,
                    p.user.as_ref(),
                    p.port,
                    p.identity.as_ref(),
                )
                .with_context(ctx)?,
            relayup: p.relayup.clone(),
            staging: p.staging.clone(),
        });
    }
    Ok(peers)
}

/// `RELAYUP_<SECTION>_<KEY>` overrides a key of [server], [merge] or [ssh]
/// (precedence: command line > environment > file).
pub const ENV_KEYS: [&str; 12] = [
    "RELAYUP_SERVER_URL",
    "RELAYUP_SERVER_USER",
    "RELAYUP_SERVER_PASSWORD_ENV",
    "RELAYUP_SERVER_PASSWORD_FILE",
    "RELAYUP_SERVER_CA_FILE",
    "RELAYUP_MERGE_HOST",
    "RELAYUP_MERGE_USER",
    "RELAYUP_MERGE_DIR",
    "RELAYUP_MERGE_PORT",
    "RELAYUP_MERGE_IDENTITY",
    "RELAYUP_SSH_IDENTITY",
    "RELAYUP_SSH_KNOWN_HOSTS",
];

fn apply_env(raw: &mut RawConfig) -> Result<()> {
    apply_overrides(raw, |key| std::env::var_os(key))
}

/// [`apply_env`] with the lookup passed in, so tests need not touch the process
/// environment (shared by every test thread).
fn apply_overrides(
    raw: &mut RawConfig,
    lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<()> {
    for key in ENV_KEYS {
        let Some(v) = lookup(key) else {
            continue;
        };
        let v = v
            .into_string()
            .map_err(|_| anyhow!("${key} is not valid UTF-8"))?;
        match key {
            "RELAYUP_SERVER_URL" => raw.server.url = v,
            "RELAYUP_SERVER_USER" => raw.server.user = v,
            "RELAYUP_SERVER_PASSWORD_ENV" => {
                raw.server.password_env = Some(v);
                raw.server.password_file = None;
            }
            "RELAYUP_SERVER_PASSWORD_FILE" => {
                raw.server.password_file = Some(v);
                raw.server.password_env = None;
            }
            "RELAYUP_SERVER_CA_FILE" => raw.server.ca_file = Some(v),
            "RELAYUP_MERGE_HOST" => raw.merge.get_or_insert_default().host = v,
            "RELAYUP_MERGE_USER" => raw.merge.get_or_insert_default().user = Some(v),
            "RELAYUP_MERGE_DIR" => raw.merge.get_or_insert_default().dir = v,
            "RELAYUP_MERGE_PORT" => {
                raw.merge.get_or_insert_default().port = Some(
                    v.parse()
                        .map_err(|_| anyhow!("${key}={v:?} is not a port number"))?,
                )
            }
            "RELAYUP_MERGE_IDENTITY" => raw.merge.get_or_insert_default().identity = Some(v),
            "RELAYUP_SSH_IDENTITY" => raw.ssh.identity = Some(v),
            "RELAYUP_SSH_KNOWN_HOSTS" => raw.ssh.known_hosts = Some(v),
            _ => unreachable!("every ENV_KEYS entry is handled"),
        }
    }
    Ok(())
}

/// `[ssh] config` (default `~/.ssh/config`), if it exists: libssh2 does not read it.
fn load_ssh_config(file: Option<&str>) -> Result<Option<ssh2_config::SshConfig>> {
    let path = expand(file.unwrap_or("~/.ssh/config"))?;
    let Ok(f) = std::fs::File::open(&path) else {
        if file.is_some() {
            bail!("ssh config {} cannot be read", path.display());
        }
        return Ok(None);
    };
    let mut reader = std::io::BufReader::new(f);
    // ssh2-config keeps the keys it does not interpret itself (UserKnownHostsFile,
    // GlobalKnownHostsFile, HostKeyAlias) only when asked to.
    let rules = ssh2_config::ParseRule::ALLOW_UNKNOWN_FIELDS
        | ssh2_config::ParseRule::ALLOW_UNSUPPORTED_FIELDS;
    ssh2_config::SshConfig::default()
        .parse(&mut reader, rules)
        .map(Some)
        .map_err(|e| anyhow!("ssh config {}: {e}", path.display()))
}

/// What every SSH login of the config falls back on after its own keys.
struct Logins {
    /// `[ssh] identity`.
    default_identity: Option<PathBuf>,
    /// `~/.ssh/config` (or `[ssh] config`), if there is one.
    ssh_config: Option<ssh2_config::SshConfig>,
}

impl Logins {
    /// One SSH login, as `ssh ALIAS` would make it: values in peers.toml first, then
    /// `~/.ssh/config` (HostName, Port, User, IdentityFile), then `[ssh] identity`, then
    /// the defaults (port 22, your user name, ssh-agent and ~/.ssh/id_*).
    fn resolve(
        &self,
        name: &str,
        alias: &str,
        user: Option<&String>,
        port: Option<u16>,
        identity: Option<&String>,
    ) -> Result<Login> {
        let params = self.ssh_config.as_ref().map(|c| c.query(alias));
        let from_ssh =
            |f: fn(&ssh2_config::HostParams) -> Option<String>| params.as_ref().and_then(f);
        let user = match user.cloned().or_else(|| from_ssh(|p| p.user.clone())) {
            Some(u) => u,
            None => {
                current_user().ok_or_else(|| anyhow!("no user given, here or in ~/.ssh/config"))?
            }
        };
        nonempty(&user, "user")?;
        let ssh_identity = params
            .as_ref()
            .and_then(|p| p.identity_file.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| match p.to_str().and_then(|s| s.strip_prefix("~/")) {
                Some(rest) => home().map(|h| h.join(rest)).unwrap_or(p),
                None => p,
            })
            .find(|p| p.exists());
        Ok(Login {
            name: name.to_string(),
            host: from_ssh(|p| p.host_name.clone()).unwrap_or_else(|| alias.to_string()),
            port: port
                .or_else(|| params.as_ref().and_then(|p| p.port))
                .unwrap_or(22),
            user,
            identity: match identity {
                Some(i) => Some(expand(i)?),
                None => ssh_identity.or_else(|| self.default_identity.clone()),
            },
        })
    }
}

/// Where each SSH login's host keys are, as the ssh config says for it: the merge
/// login, the peers (in the order of `peers`), and an `sftp://` server (its URL's host
/// is looked up as `sftp host` would).
fn host_key_rules(
    raw: &RawConfig,
    server: &ServerSpec,
    merge: Option<&Merge>,
    peers: &[Peer],
    ssh: Option<&ssh2_config::SshConfig>,
) -> Result<Vec<HostKeyFiles>> {
    let given = raw.ssh.known_hosts.is_some();
    let mut rules = Vec::new();
    if let (Some(raw_merge), Some(merge)) = (&raw.merge, merge) {
        rules.push(ssh_config_host_keys(
            &raw_merge.host,
            &merge.login,
            ssh,
            given,
        )?);
    }
    for (raw_peer, peer) in raw.peers.iter().zip(peers) {
        rules.push(ssh_config_host_keys(
            &raw_peer.host,
            &peer.login,
            ssh,
            given,
        )?);
    }
    if server.scheme == "sftp" {
        let (host, port, user) = (server.host.clone(), server.port, server.user.clone());
        let sftp = Login {
            name: "server".into(),
            host,
            port,
            user,
            identity: None,
        };
        rules.push(ssh_config_host_keys(&server.host, &sftp, ssh, given)?);
    }
    Ok(rules)
}

/// What the ssh config says about the keys of the host reached as `alias` (the name
/// as peers.toml writes it, which is what `Host` patterns match): `HostKeyAlias`,
/// `GlobalKnownHostsFile`, and `UserKnownHostsFile` unless `[ssh] known_hosts` (or
/// its environment variable) names the file: peers.toml wins.
fn ssh_config_host_keys(
    alias: &str,
    login: &Login,
    ssh: Option<&ssh2_config::SshConfig>,
    known_hosts_given: bool,
) -> Result<HostKeyFiles> {
    let mut files = HostKeyFiles {
        name: login.name.clone(),
        host: login.host.clone(),
        port: login.port,
        ..Default::default()
    };
    let Some(ssh) = ssh else {
        return Ok(files);
    };
    let params = ssh.query(alias);
    // ssh2-config files these under the key's lower-case name.
    let value = |key: &str| {
        params
            .unsupported_fields
            .get(&key.to_ascii_lowercase())
            .filter(|v| !v.is_empty())
    };
    let paths = |key: &str| -> Result<Option<Vec<PathBuf>>> {
        let Some(args) = value(key) else {
            return Ok(None);
        };
        if args.len() == 1 && args[0].eq_ignore_ascii_case("none") {
            return Ok(Some(Vec::new()));
        }
        args.iter()
            .map(|a| {
                ssh_tokens(a, login)
                    .and_then(|a| expand(&a))
                    .with_context(|| format!("{key} {a}"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    };
    files.alias = value("HostKeyAlias").map(|v| v[0].clone());
    files.global_files = paths("GlobalKnownHostsFile")?;
    if !known_hosts_given {
        files.user_files = paths("UserKnownHostsFile")?;
    }
    Ok(files)
}

/// The `%` tokens ssh allows in known_hosts file names: `%d` home, `%u` local user,
/// `%h` host, `%p` port, `%r` remote user, `%%`. Others are refused by name rather
/// than read as a literal file name that ssh would never use.
fn ssh_tokens(value: &str, login: &Login) -> Result<String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('d') => out.push_str(&home()?.to_string_lossy()),
            Some('u') => out.push_str(&current_user().unwrap_or_default()),
            Some('h') => out.push_str(&login.host),
            Some('p') => out.push_str(&login.port.to_string()),
            Some('r') => out.push_str(&login.user),
            other => bail!(
                "the token %{} is not supported in known_hosts file names (use %d, %u, %h, %p, %r or %%)",
                other.map(String::from).unwrap_or_default()
            ),
        }
    }
    Ok(out)
}

/// The local user name, as ssh uses by default.
fn current_user() -> Option<String> {
    crate::platform::current_user()
}

fn nonempty(v: &str, field: &str) -> Result<()> {
    if v.trim().is_empty() {
        bail!("{field} is empty");
    }
    if v.contains(['\r', '\n', '\0']) {
        bail!("{field} contains a line break or NUL");
    }
    Ok(())
}

fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && name != "local";
    if !ok {
        bail!(
            "peer name {name:?} must be 1-64 letters, digits, '.', '_' or '-' (and not \"local\")"
        );
    }
    Ok(())
}

fn server_spec(raw: &RawServer) -> Result<ServerSpec> {
    let (scheme, host, port, dir) = parse_url(&raw.url)?;
    nonempty(&raw.user, "user")?;
    let password = match (&raw.password_env, &raw.password_file) {
        (Some(_), Some(_)) => bail!("give password_env or password_file, not both"),
        (Some(var), None) => {
            let v = std::env::var(var).map_err(|_| {
                anyhow!(
                    "password_env names ${var}, which is not set; export it before running relayup"
                )
            })?;
            Some(Secret::new(v))
        }
        (None, Some(file)) => Some(read_password_file(&expand(file)?)?),
        (None, None) if scheme == "sftp" => None,
        (None, None) => bail!("{scheme}:// needs a password: set password_env or password_file"),
    };
    let ca_pem = match &raw.ca_file {
        Some(_) if scheme != "ftps" => bail!("ca_file applies to ftps:// only"),
        Some(f) => {
            let path = expand(f)?;
            let pem = std::fs::read_to_string(&path)
                .with_context(|| format!("ca_file {}: cannot read it", path.display()))?;
            // It travels to every relay in one bounded protocol message.
            if pem.len() > crate::remote::protocol::MAX_CA_FILE {
                bail!(
                    "ca_file {} is {} bytes, more than the {} relayup accepts; keep only the CA certificates the server needs",
                    path.display(),
                    pem.len(),
                    crate::remote::protocol::MAX_CA_FILE
                );
            }
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                bail!("ca_file {} holds no PEM certificate", path.display());
            }
            Some(pem)
        }
        None => None,
    };
    Ok(ServerSpec {
        scheme,
        host,
        port,
        dir,
        user: raw.user.clone(),
        password,
        host_key: None,
        bwlimit: None,
        ca_pem,
    })
}

fn read_password_file(path: &Path) -> Result<Secret> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("password_file {}: cannot read it", path.display()))?;
    if !crate::platform::is_private_file(&meta) {
        bail!(
            "password_file {} is readable by others; run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("password_file {}: cannot read it", path.display()))?;
    let pw = text.strip_suffix('\n').unwrap_or(&text);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        bail!("password_file {} is empty", path.display());
    }
    Ok(Secret::new(pw))
}

/// Splits `scheme://host[:port]/path` (no user or password in the URL: they have
/// their own keys). The path is taken literally as an absolute directory.
pub fn parse_url(url: &str) -> Result<(String, String, u16, String)> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        anyhow!("url {url:?} must look like ftp://host/dir, ftps://host/dir or sftp://host/dir")
    })?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "ftp" | "ftps" => 21,
        "sftp" => 22,
        other => bail!("url scheme {other:?} is not supported; use ftp://, ftps:// or sftp://"),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        bail!("url must not contain a user or password; use server.user and password_env/password_file");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow!("url {url:?}: unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| anyhow!("url {url:?}: bad port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => bail!("url {url:?}: unexpected {after:?} after the address"),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| anyhow!("url {url:?}: bad port {p:?}"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        bail!("url {url:?} has no host");
    }
    if path.contains(['\r', '\n', '\0']) {
        bail!("url {url:?}: the path contains a line break or NUL");
    }
    let dir = path.trim_end_matches('/');
    let dir = if dir.is_empty() { "/" } else { dir };
    Ok((scheme, host, port, dir.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_command_is_plain_words_every_shell_runs_alike() {
        for word in [
            "/opt/relayup/bin/relayup",
            "~/bin/relayup",
            "C:\\Tools\\relayup.exe",
            "bin/relayup-0.1",
        ] {
            assert!(plain_word(word), "{word}");
        }
        for word in ["", "-x", "/a b/relayup", "$(id)", "a;b", "~user/x", "a\"b"] {
            assert!(!plain_word(word), "{word}");
        }
    }

    const MIN: &str = r#"
[server]
url = "sftp://srv.example/up"
user = "deploy"
[merge]
host = "srv.example"
user = "deploy"
dir = "/srv/up"
"#;

    #[test]
    fn merge_is_optional_and_chooses_the_assembly() {
        let with = parse(MIN, Path::new("t.toml")).unwrap();
        assert_eq!(with.assembly, AssemblyKind::Merge);
        let without_text = MIN.split("[merge]").next().unwrap().to_string();
        let without = parse(&without_text, Path::new("t.toml")).unwrap();
        assert!(without.merge.is_none());
        assert_eq!(without.assembly, AssemblyKind::Direct);
        let forced = MIN.replace(
            "user = \"deploy\"\n[merge]",
            "user = \"deploy\"\nassembly = \"direct\"\n[merge]",
        );
        assert_eq!(
            parse(&forced, Path::new("t.toml")).unwrap().assembly,
            AssemblyKind::Direct
        );
        let err = parse(
            &without_text.replace(
                "user = \"deploy\"\n",
                "user = \"deploy\"\nassembly = \"merge\"\n",
            ),
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("needs a [merge] section"),
            "{err:#}"
        );
        let err = parse(
            &without_text.replace(
                "user = \"deploy\"\n",
                "user = \"deploy\"\nassembly = \"append\"\n",
            ),
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("\"append\" is not one of"),
            "{err:#}"
        );
    }

    #[test]
    fn minimal_config() {
        let s = parse(MIN, Path::new("t.toml")).unwrap();
        assert_eq!(s.server.scheme, "sftp");
        assert_eq!(s.server.port, 22);
        assert_eq!(s.server.dir, "/up");
        assert!(s.server.password.is_none());
        assert_eq!(s.merge.as_ref().unwrap().login.port, 22);
        assert!(s.peers.is_empty());
    }

    #[test]
    fn example_configs_parse() {
        // Every example .toml in the repo must load (with its password variable set).
        std::env::set_var("RELAYUP_SERVER_PASSWORD", "example");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seen = 0;
        for entry in std::fs::read_dir(root).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") && p.file_name().unwrap() != "Cargo.toml"
            {
                let s = load(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                assert!(!s.peers.is_empty(), "{} shows peers", p.display());
                seen += 1;
            }
        }
        assert!(seen >= 1, "peers.example.toml is in the repo");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MIN.replace(
            "user = \"deploy\"\n[merge]",
            "user = \"deploy\"\npasword = \"x\"\n[merge]",
        );
        let err = format!("{:#}", parse(&text, Path::new("t.toml")).unwrap_err());
        assert!(err.contains("pasword"), "{err}");
        assert!(err.contains("t.toml:"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            (MIN.replace("sftp://srv.example/up", "http://x/y"), "scheme"),
            (MIN.replace("sftp://srv.example/up", "ftp://x/y"), "needs a password"),
            (MIN.replace("sftp://srv.example/up", "sftp://u:p@x/y"), "must not contain a user"),
            (MIN.replace("dir = \"/srv/up\"", "dir = \"srv/up\""), "absolute"),
            (format!("{MIN}\n[[peer]]\nname = \"a b\"\nhost = \"h\"\nuser = \"u\"\n"), "peer name"),
            (format!("{MIN}\n[[peer]]\nname = \"local\"\nhost = \"h\"\nuser = \"u\"\n"), "peer name"),
            (
                format!("{MIN}\n[[peer]]\nname = \"a\"\nhost = \"h\"\nuser = \"u\"\n[[peer]]\nname = \"a\"\nhost = \"h2\"\nuser = \"u\"\n"),
                "unique",
            ),
            (
                MIN.replace("user = \"deploy\"\n[merge]", "user = \"deploy\"\npassword_env = \"RELAYUP_TEST_UNSET_VAR\"\n[merge]"),
                "RELAYUP_TEST_UNSET_VAR",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", parse(&text, Path::new("t.toml")).unwrap_err());
            assert!(err.contains(want), "expected {want:?} in {err:?}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let raw = |port: &str| {
            let mut raw: RawConfig = toml::from_str(MIN).unwrap();
            let port = port.to_string();
            apply_overrides(&mut raw, |k| match k {
                "RELAYUP_MERGE_DIR" => Some("/from/env".into()),
                "RELAYUP_MERGE_PORT" => Some(port.clone().into()),
                _ => None,
            })
            .map(|_| raw)
        };
        let r = raw("2222").unwrap();
        let m = r.merge.as_ref().unwrap();
        assert_eq!((m.dir.as_str(), m.port), ("/from/env", Some(2222)));
        let err = format!("{:#}", raw("lots").unwrap_err());
        assert!(err.contains("RELAYUP_MERGE_PORT"), "{err}");
    }

    #[test]
    fn ssh_config_fills_what_peers_toml_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_alice");
        std::fs::write(&key, "key").unwrap();
        let cfg = dir.path().join("ssh_config");
        std::fs::write(
            &cfg,
            format!("Host alice-pc\n  HostName 10.1.2.3\n  Port 2200\n  User relay\n  IdentityFile {}\n", key.display()),
        )
        .unwrap();
        let text = format!(
            "{MIN}[ssh]\nconfig = '{}'\n[[peer]]\nname = \"alice\"\nhost = \"alice-pc\"\n[[peer]]\nname = \"bob\"\nhost = \"alice-pc\"\nuser = \"bob\"\nport = 22\n",
            cfg.display()
        );
        let s = parse(&text, Path::new("t.toml")).unwrap();
        let a = &s.peers[0].login;
        assert_eq!(
            (a.host.as_str(), a.port, a.user.as_str()),
            ("10.1.2.3", 2200, "relay")
        );
        assert_eq!(a.identity.as_deref(), Some(key.as_path()));
        let b = &s.peers[1].login;
        assert_eq!(
            (b.port, b.user.as_str()),
            (22, "bob"),
            "peers.toml wins over ssh config"
        );
        let missing = text.replace(cfg.to_str().unwrap(), "/nonexistent/ssh_config");
        assert!(
            format!("{:#}", parse(&missing, Path::new("t.toml")).unwrap_err())
                .contains("/nonexistent/ssh_config")
        );
    }

    #[test]
    fn ssh_config_says_where_host_keys_are() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("ssh_config");
        std::fs::write(
            &cfg,
            "Host alice-pc\n  HostName 10.1.2.3\n  Port 2200\n  HostKeyAlias alice-keys\n\
             \x20 UserKnownHostsFile ~/kh1 /abs/kh2\n  GlobalKnownHostsFile none\n\
             Host *\n  UserKnownHostsFile /x/%h-%p-%r%%\n  GlobalKnownHostsFile /etc/site_known_hosts\n",
        )
        .unwrap();
        let text = format!(
            "{MIN}[ssh]\nconfig = '{}'\n[[peer]]\nname = \"alice\"\nhost = \"alice-pc\"\nuser = \"a\"\n\
             [[peer]]\nname = \"bob\"\nhost = \"bob-pc\"\nuser = \"b\"\n",
            cfg.display()
        );
        let s = parse(&text, Path::new("t.toml")).unwrap();
        let rule = |host: &str| {
            s.known_hosts
                .rules
                .iter()
                .find(|r| r.host == host)
                .unwrap_or_else(|| panic!("no rule for {host}: {:?}", s.known_hosts.rules))
                .clone()
        };
        let alice = rule("10.1.2.3");
        assert_eq!(
            (alice.port, alice.alias.as_deref()),
            (2200, Some("alice-keys"))
        );
        assert_eq!(
            alice.user_files,
            Some(vec![home().unwrap().join("kh1"), PathBuf::from("/abs/kh2")])
        );
        assert_eq!(alice.global_files, Some(vec![]), "none: no global file");
        let bob = rule("bob-pc");
        assert_eq!(bob.alias, None);
        assert_eq!(bob.user_files, Some(vec![PathBuf::from("/x/bob-pc-22-b%")]));
        assert_eq!(
            bob.global_files,
            Some(vec![PathBuf::from("/etc/site_known_hosts")])
        );
        assert!(
            s.known_hosts.rules.iter().any(|r| r.host == "srv.example"),
            "the merge login and the sftp:// server have rules too"
        );

        // [ssh] known_hosts in peers.toml wins over UserKnownHostsFile, not over the rest.
        let given = text.replace("[ssh]\n", "[ssh]\nknown_hosts = \"/k\"\n");
        let s = parse(&given, Path::new("t.toml")).unwrap();
        let alice = s.known_hosts.rules.iter().find(|r| r.port == 2200).unwrap();
        assert_eq!(alice.user_files, None);
        assert_eq!(alice.alias.as_deref(), Some("alice-keys"));
        assert_eq!(s.known_hosts.file, PathBuf::from("/k"));

        std::fs::write(&cfg, "Host *\n  UserKnownHostsFile /x/%C\n").unwrap();
        let err = format!("{:#}", parse(&text, Path::new("t.toml")).unwrap_err());
        assert!(
            err.contains(&format!(
                "t.toml: ssh config {}: UserKnownHostsFile /x/%C: the token %C",
                cfg.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("ftp://h/a/b/").unwrap(),
            ("ftp".into(), "h".into(), 21, "/a/b".into())
        );
        assert_eq!(
            parse_url("FTPS://h:990").unwrap(),
            ("ftps".into(), "h".into(), 990, "/".into())
        );
        assert_eq!(
            parse_url("sftp://[::1]:2222/x").unwrap(),
            ("sftp".into(), "::1".into(), 2222, "/x".into())
        );
        assert!(parse_url("ftp://h:notaport/x").is_err());
        assert!(parse_url("ftp:///x").is_err());
        assert!(parse_url("h/x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", read_password_file(&f).unwrap_err());
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&f).unwrap().expose(), "s3cret");
    }
}
