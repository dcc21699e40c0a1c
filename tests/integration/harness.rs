//! `TestEnv`: real OpenSSH `sshd` processes (one per peer, one for the server) and a real
//! vsftpd on loopback ports, each peer logging in as its own Unix user, all owned by the
//! test and killed when it ends. Needs root, `sshd` and `vsftpd` (`.ci/run` installs them);
//! a test may add a ProFTPD with `mod_digest` (`.ci/run` unpacks it into [`PROFTPD_DIR`]).

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SERVER_USER: &str = "relayup-t-srv";
pub const PEER_USERS: [&str; 3] = ["relayup-t-p1", "relayup-t-p2", "relayup-t-p3"];
pub const SERVER_PASSWORD: &str = "relayup-test-Pw-7c1e";
/// An account whose login shell is tcsh (as server account and as peer).
pub const CSH_USER: &str = "relayup-t-csh";
/// An upload-only account, as hosting providers give: SFTP into a chroot, no shell
/// (see [`TestEnv::add_sftp_only_server`]). Its home is `/upload`, inside the chroot.
pub const SFTP_ONLY_USER: &str = "relayup-sftponly";
/// Where the chroots of [`TestEnv::add_sftp_only_server`] live: sshd wants every
/// component of a chroot's path root-owned and writable by root alone, which rules
/// out anything under /tmp.
pub const CHROOT_BASE: &str = "/var/lib/relayup-e2e";
/// Where `.ci/run` unpacks Debian's `proftpd-core` (not installed: it conflicts with
/// vsftpd): ProFTPD with `mod_digest`, for the tests of what an FTP server offers.
pub const PROFTPD_DIR: &str = "/var/cache/relayup-ci/proftpd";

fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh")
}

/// Every line of a command's stdout as JSON; panics on a line that is not.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// Rewrites a (config) file with `edit`.
pub fn edit_file(path: &Path, edit: impl FnOnce(&str) -> String) {
    let text = fs::read_to_string(path).unwrap();
    fs::write(path, edit(&text)).unwrap();
}

/// `text` without the lines that start with `prefix` (e.g. `identity = `).
pub fn without_lines(text: &str, prefix: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with(prefix))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A Unix user's uid.
pub fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Creates the test users once per run (idempotent across runs).
fn setup_machine() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the end-to-end tests need root (they create users and start sshd/vsftpd); run them as root, as .ci/run does"
        );
        for bin in ["/usr/sbin/sshd", "/usr/sbin/vsftpd"] {
            assert!(Path::new(bin).exists(), "{bin} is missing: apt-get install openssh-server vsftpd (see .ci/run)");
        }
        for user in PEER_USERS.iter().chain([&SERVER_USER]) {
            if !sh(&format!("id -u {user}")).status.success() {
                let out = sh(&format!("useradd -m -s /bin/bash {user}"));
                assert!(out.status.success(), "useradd {user}: {}", String::from_utf8_lossy(&out.stderr));
            }
            // useradd locks new accounts with '!', and sshd without PAM refuses even key
            // logins to a locked account; '*' means no password but not locked.
            assert!(sh(&format!("usermod -p '*' {user}")).status.success());
        }
        if !sh(&format!("id -u {CSH_USER}")).status.success() {
            let out = sh(&format!("useradd -m -s \"$(command -v tcsh)\" {CSH_USER}"));
            assert!(out.status.success(), "useradd {CSH_USER} (is tcsh installed?): {}", String::from_utf8_lossy(&out.stderr));
        }
        if !sh(&format!("id -u {SFTP_ONLY_USER}")).status.success() {
            // No home on this machine and no shell: sshd chroots the account and runs
            // its SFTP server in-process, so neither is ever used outside the chroot.
            let out = sh(&format!("useradd -M -d /upload -s /usr/sbin/nologin {SFTP_ONLY_USER}"));
            assert!(out.status.success(), "useradd {SFTP_ONLY_USER}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = sh(&format!(
            "echo '{SERVER_USER}:{SERVER_PASSWORD}' | chpasswd && echo '{CSH_USER}:{SERVER_PASSWORD}' | chpasswd \
             && echo '{SFTP_ONLY_USER}:{SERVER_PASSWORD}' | chpasswd"
        ));
        assert!(out.status.success(), "chpasswd: {}", String::from_utf8_lossy(&out.stderr));
        fs::create_dir_all("/run/sshd").unwrap();
        fs::create_dir_all("/var/run/vsftpd/empty").unwrap();
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                e.read_to_string(&mut err).ok();
            }
            panic!("{what} exited with {status} before listening on {port}: {err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on port {port}");
}

fn spawn(cmd: &mut Command) -> Child {
    unsafe {
        cmd.pre_exec(|| {
            // Die with the test process, even if it is killed.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon")
}

fn keygen(path: &Path, kind: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// An SFTP-only server account from [`TestEnv::add_sftp_only_server`]: user
/// [`SFTP_ONLY_USER`], password [`SERVER_PASSWORD`] (or the test key), chrooted to
/// `chroot`, where it may write only into `upload`.
pub struct SftpOnly {
    /// Its sshd's loopback port.
    pub port: u16,
    /// The chroot on this machine (root-owned, 0755).
    pub chroot: PathBuf,
    /// The upload directory on this machine (`chroot/upload`, owned by the account).
    pub upload: PathBuf,
    /// The upload directory as the account sees it: `/upload`.
    pub dir_in_chroot: String,
}

/// One simulated office: a server (sshd + vsftpd) and `peers` peers, each its own sshd.
pub struct TestEnv {
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
    children: Vec<Child>,
    /// (port, pid) of each sshd in `children`.
    sshds: Vec<(u16, u32)>,
    /// The vsftpd in `children`, while it runs.
    ftp_pid: Option<u32>,
    /// The chroots of [`TestEnv::add_sftp_only_server`], removed with the test (after
    /// `Drop::drop` has killed their sshds).
    chroots: Vec<tempfile::TempDir>,
    pub ftp_port: u16,
    pub server_ssh_port: u16,
    pub peer_ports: Vec<u16>,
    /// The server's upload directory (also its merge dir).
    pub srv: PathBuf,
    /// Only root can read here: source files, the client key, the config.
    pub private: PathBuf,
}

impl TestEnv {
    pub fn new(peers: usize) -> TestEnv {
        assert!(peers <= PEER_USERS.len());
        setup_machine();
        let tmp = tempfile::Builder::new()
            .prefix("relayup-e2e-")
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        // Others may traverse the root (to reach pub/ and stage/) but not list it.
        chmod(&root, 0o711);
        let public = root.join("pub");
        let private = root.join("priv");
        let srv = root.join("srv");
        let stage = root.join("stage");
        for (d, mode) in [
            (&public, 0o755),
            (&private, 0o700),
            (&srv, 0o755),
            (&stage, 0o1777),
        ] {
            fs::create_dir(d).unwrap();
            chmod(d, mode);
        }
        assert!(sh(&format!("chown {SERVER_USER} {}", srv.display()))
            .status
            .success());
        // The peers run this copy: the build tree may not be readable by them.
        fs::copy(env!("CARGO_BIN_EXE_relayup"), public.join("relayup")).unwrap();
        chmod(&public.join("relayup"), 0o755);

        keygen(&private.join("id_ed25519"), "ed25519");
        fs::copy(
            private.join("id_ed25519.pub"),
            public.join("authorized_keys"),
        )
        .unwrap();
        chmod(&public.join("authorized_keys"), 0o644);

        let mut env = TestEnv {
            root: root.clone(),
            _tmp: tmp,
            children: Vec::new(),
            sshds: Vec::new(),
            ftp_pid: None,
            chroots: Vec::new(),
            ftp_port: free_port(),
            server_ssh_port: 0,
            peer_ports: Vec::new(),
            srv,
            private: private.clone(),
        };
        fs::write(private.join("known_hosts"), "").unwrap();
        env.server_ssh_port = env.add_sshd("server", SERVER_USER, true);
        for (i, user) in PEER_USERS.iter().take(peers).enumerate() {
            let port = env.add_sshd(&format!("p{}", i + 1), user, false);
            env.peer_ports.push(port);
        }

        // A self-signed certificate for 127.0.0.1: vsftpd offers TLS (ftps://) without
        // requiring it, so the same server serves ftp:// tests too.
        // A test CA and a server certificate for 127.0.0.1 signed by it (ftps-ca.pem is
        // what the config's ca_file trusts).
        let cert = private.join("ftps-cert.pem");
        let script = format!(
            "set -e; cd {dir}; exec 2>openssl.log\n\
             openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=relayup-test-ca -keyout ca.key -out ca.pem\n\
             openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout ftps-key.pem -out srv.csr\n\
             printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf\n\
             openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out ftps-cert.pem\n\
             cp ca.pem {public}/ftps-ca.pem\n",
            dir = private.display(),
            public = public.display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "making test certificates: {}",
            fs::read_to_string(private.join("openssl.log")).unwrap_or_default()
        );
        let vsftpd_conf = private.join("vsftpd.conf");
        fs::write(
            &vsftpd_conf,
            format!(
                "listen=YES\nlisten_ipv6=NO\nlisten_port={}\nbackground=NO\n\
                 anonymous_enable=NO\nlocal_enable=YES\nwrite_enable=YES\nlocal_umask=022\n\
                 seccomp_sandbox=NO\nuserlist_enable=NO\nxferlog_enable=NO\nuse_localtime=NO\n\
                 pasv_enable=YES\npasv_min_port=0\npasv_max_port=0\nsecure_chroot_dir=/var/run/vsftpd/empty\n\
                 pam_service_name=vsftpd\nmax_per_ip=0\nmax_clients=0\nconnect_from_port_20=NO\n\
                 ssl_enable=YES\nrsa_cert_file={cert}\nrsa_private_key_file={key}\nallow_anon_ssl=NO\n\
                 force_local_logins_ssl=NO\nforce_local_data_ssl=NO\nssl_tlsv1=YES\nssl_sslv2=NO\nssl_sslv3=NO\n",
                env.ftp_port,
                cert = cert.display(),
                key = private.join("ftps-key.pem").display(),
            ),
        )
        .unwrap();
        env.start_ftp();

        let pass = private.join("server.pass");
        fs::write(&pass, format!("{SERVER_PASSWORD}\n")).unwrap();
        chmod(&pass, 0o600);
        env.write_config("peers.toml", "ftp", &[]);
        env
    }

    /// Starts one more sshd on a free loopback port that lets only `user` in (with the
    /// test key; with the password too if `password`), adds its host key to the
    /// config's known_hosts, and returns its port.
    pub fn add_sshd(&mut self, name: &str, user: &str, password: bool) -> u16 {
        let (port, public) = self.start_sshd(name, user, password, &["ed25519"], "");
        self.add_known_host(port, &public[0]);
        port
    }

    /// Like [`TestEnv::add_sshd`] (key logins only), with `extra` lines of sshd
    /// config.
    pub fn add_sshd_with(&mut self, name: &str, user: &str, extra: &str) -> u16 {
        let (port, public) = self.start_sshd(name, user, false, &["ed25519"], extra);
        self.add_known_host(port, &public[0]);
        port
    }

    /// Adds `[127.0.0.1]:port key` to the config's known_hosts (`key`: `type base64`).
    fn add_known_host(&self, port: u16, key: &str) {
        let mut kh = fs::OpenOptions::new()
            .append(true)
            .open(self.private.join("known_hosts"))
            .unwrap();
        writeln!(kh, "[127.0.0.1]:{port} {key}").unwrap();
    }

    /// Starts an SFTP-only server, the way hosting providers give upload accounts: its
    /// own sshd on a free loopback port (stopped with the test) where
    /// [`SFTP_ONLY_USER`] logs in with [`SERVER_PASSWORD`] or the test key, gets
    /// `internal-sftp` whatever command it asks for (no shell, no TTY, no
    /// forwarding), chrooted to a fresh directory under [`CHROOT_BASE`] (removed with
    /// the test) in which only `upload` is its own. Adds the host key to the config's
    /// known_hosts.
    pub fn add_sftp_only_server(&mut self) -> SftpOnly {
        // sshd refuses a chroot unless it and every directory above it are owned by
        // root and writable by no one else.
        let base = Path::new(CHROOT_BASE);
        fs::create_dir_all(base).unwrap();
        std::os::unix::fs::chown(base, Some(0), Some(0)).unwrap();
        chmod(base, 0o755);
        let dir = tempfile::Builder::new()
            .prefix("chroot-")
            .tempdir_in(base)
            .unwrap();
        let chroot = dir.path().to_path_buf();
        // The account must traverse its root to reach /upload.
        chmod(&chroot, 0o755);
        self.chroots.push(dir);
        let upload = chroot.join("upload");
        fs::create_dir(&upload).unwrap();
        chmod(&upload, 0o755);
        assert!(sh(&format!("chown {SFTP_ONLY_USER}: {}", upload.display()))
            .status
            .success());

        let name = format!("sftponly{}", self.chroots.len());
        let rules = format!(
            "Match User {SFTP_ONLY_USER}\n\
             \tChrootDirectory {chroot}\n\
             \tForceCommand internal-sftp\n\
             \tAllowTcpForwarding no\n\
             \tAllowStreamLocalForwarding no\n\
             \tAllowAgentForwarding no\n\
             \tX11Forwarding no\n\
             \tPermitTunnel no\n\
             \tPermitTTY no\n",
            chroot = chroot.display(),
        );
        let (port, public) = self.start_sshd(&name, SFTP_ONLY_USER, true, &["ed25519"], &rules);
        self.add_known_host(port, &public[0]);
        SftpOnly {
            port,
            chroot,
            upload,
            dir_in_chroot: "/upload".to_string(),
        }
    }

    /// Starts an sshd on a free loopback port with one host key of each of
    /// `key_types`, letting only `user` in; `extra` ends its config (`Match` blocks).
    /// Returns the port and the public keys (`type base64`).
    fn start_sshd(
        &mut self,
        name: &str,
        user: &str,
        password: bool,
        key_types: &[&str],
        extra: &str,
    ) -> (u16, Vec<String>) {
        let port = free_port();
        let mut host_keys = String::new();
        let mut public = Vec::new();
        for kind in key_types {
            let key = self.private.join(format!("host_{name}_{kind}"));
            keygen(&key, kind);
            let line = fs::read_to_string(key.with_extension("pub")).unwrap();
            public.push(
                line.split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            host_keys.push_str(&format!("HostKey {}\n", key.display()));
        }
        let cfg = self.private.join(format!("sshd_{name}.conf"));
        fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\n{host_keys}PidFile none\n\
                 AuthorizedKeysFile {auth}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication {pw}\nKbdInteractiveAuthentication no\n\
                 AllowUsers {user}\nSubsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100\n{extra}",
                auth = self.root.join("pub/authorized_keys").display(),
                pw = if password { "yes" } else { "no" },
            ),
        )
        .unwrap();
        let mut child = spawn(
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&cfg),
        );
        wait_port(port, &mut child, &format!("sshd for {name}"));
        self.sshds.push((port, child.id()));
        self.children.push(child);
        (port, public)
    }

    /// Starts this test's vsftpd (again) on its port.
    pub fn start_ftp(&mut self) {
        let mut child =
            spawn(Command::new("/usr/sbin/vsftpd").arg(self.private.join("vsftpd.conf")));
        wait_port(self.ftp_port, &mut child, "vsftpd");
        self.ftp_pid = Some(child.id());
        self.children.push(child);
    }

    /// Starts a ProFTPD with `mod_digest` (HASH, XMD5, …) beside vsftpd, on a free
    /// loopback port: the same account, password and upload directory. It runs in the
    /// foreground as a child of this test (its command line names the test's dir, and
    /// its sessions are its descendants), so it stops with the test. Returns its port.
    pub fn start_proftpd(&mut self) -> u16 {
        let dir = Path::new(PROFTPD_DIR);
        let bin = dir.join("usr/sbin/proftpd");
        assert!(
            bin.exists(),
            "{} is missing: .ci/run downloads proftpd-core (apt-get download) and unpacks it there with dpkg -x",
            bin.display()
        );
        let port = free_port();
        let p = &self.private;
        let conf = p.join("proftpd.conf");
        fs::write(
            &conf,
            format!(
                "ServerType standalone\nServerName \"relayup test\"\nPort {port}\nUseIPv6 off\n\
                 DefaultAddress 127.0.0.1\nSocketBindTight on\nModulePath {modules}\n\
                 LoadModule mod_digest.c\nUser {SERVER_USER}\nGroup {SERVER_USER}\n\
                 AuthOrder mod_auth_unix.c\nRequireValidShell off\nUseReverseDNS off\n\
                 ScoreboardFile {p}/proftpd.scoreboard\nPidFile {p}/proftpd.pid\n\
                 DelayTable {p}/proftpd.delay\nSystemLog {p}/proftpd.log\nWtmpLog off\n\
                 TransferLog none\nExtendedLog {p}/proftpd.cmds READ,WRITE\nMaxInstances 200\nUmask 022\nAllowOverwrite on\n\
                 AllowStoreRestart on\nDigestEngine on\n",
                modules = dir.join("usr/lib/proftpd").display(),
                p = p.display(),
            ),
        )
        .unwrap();
        let mut child = spawn(Command::new(&bin).arg("-n").arg("-c").arg(&conf));
        wait_port(port, &mut child, "proftpd");
        self.children.push(child);
        port
    }

    /// A config like [`TestEnv::write_config`]'s `ftp://` one, but uploading to the
    /// ProFTPD on `port` (same account and directory, so the merge login is unchanged).
    pub fn write_proftpd_config(&self, name: &str, port: u16) -> PathBuf {
        let path = self.write_config(name, "ftp", &[]);
        let from = format!("ftp://127.0.0.1:{}/", self.ftp_port);
        edit_file(&path, |t| {
            assert!(t.contains(&from), "{t}");
            t.replacen(&from, &format!("ftp://127.0.0.1:{port}/"), 1)
        });
        path
    }

    /// Adds `line` (`key=value`) to this test's vsftpd.conf and restarts vsftpd.
    pub fn set_vsftpd_option(&mut self, line: &str) {
        let conf = self.private.join("vsftpd.conf");
        let mut text = fs::read_to_string(&conf).unwrap();
        text.push_str(line);
        text.push('\n');
        fs::write(&conf, text).unwrap();
        self.stop_ftp();
        self.start_ftp();
    }

    /// Stops this test's vsftpd and every session it serves: a server outage.
    pub fn stop_ftp(&mut self) {
        let pid = self.ftp_pid.take().expect("vsftpd runs");
        self.stop_child(pid);
    }

    /// Stops the server's sshd (on `server_ssh_port`) and every session it serves:
    /// from now on the server has no SSH login at all.
    pub fn stop_server_sshd(&mut self) {
        let port = self.server_ssh_port;
        let pos = self
            .sshds
            .iter()
            .position(|(p, _)| *p == port)
            .expect("the server's sshd runs");
        let (_, pid) = self.sshds.remove(pos);
        self.stop_child(pid);
    }

    /// Kills the daemon `pid` of `children` and all its descendants, and reaps it.
    fn stop_child(&mut self, pid: u32) {
        let pos = self.children.iter().position(|c| c.id() == pid).unwrap();
        let mut child = self.children.remove(pos);
        let family = descendants(pid);
        let _ = child.kill();
        let _ = child.wait();
        for p in family {
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }

    /// Sends `signal` to this test's relays run by peer user `user` (the relay binary's
    /// path is this test's own, so no other test's processes match).
    pub fn signal_relays(&self, signal: &str, user: &str) {
        let pattern = format!("{}/pub/relayup relay", self.root.display());
        let _ = Command::new("pkill")
            .args([signal, "-u", user, "-f", &pattern])
            .status();
    }

    /// Kills every process started through the sshd listening on `port` (its
    /// connections, their shells and relays), leaving that sshd itself and every
    /// other test's processes alone.
    pub fn kill_sessions_of_sshd(&self, port: u16) {
        let daemon = self
            .sshds
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, pid)| *pid)
            .expect("an sshd of this test on that port");
        for pid in descendants(daemon) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }

    /// Writes a config; `broken` lists extra peers as (name, toml lines) for failure tests.
    pub fn write_config(
        &self,
        name: &str,
        scheme: &str,
        extra_peers: &[(&str, String)],
    ) -> PathBuf {
        let url = match scheme {
            "sftp" => format!(
                "sftp://127.0.0.1:{}{}",
                self.server_ssh_port,
                self.srv.display()
            ),
            s => format!("{s}://127.0.0.1:{}{}", self.ftp_port, self.srv.display()),
        };
        let ca = if scheme == "ftps" {
            format!(
                "ca_file = \"{}\"",
                self.root.join("pub/ftps-ca.pem").display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "{server}[merge]\nhost = \"127.0.0.1\"\nport = {mport}\nuser = \"{SERVER_USER}\"\ndir = \"{dir}\"\n\n{rest}",
            server = self.server_section(&url, SERVER_USER, &ca),
            mport = self.server_ssh_port,
            dir = self.srv.display(),
            rest = self.ssh_and_peers(extra_peers),
        );
        self.save_config(name, &text)
    }

    /// A config like [`TestEnv::write_config`]'s `sftp://` one, but uploading to the
    /// SFTP-only account of `s` (into its `/upload`), and without a `[merge]` section:
    /// that server gives no shell login.
    pub fn write_sftp_only_config(&self, name: &str, s: &SftpOnly) -> PathBuf {
        let url = format!("sftp://127.0.0.1:{}{}", s.port, s.dir_in_chroot);
        let text = format!(
            "{server}{rest}",
            server = self.server_section(&url, SFTP_ONLY_USER, ""),
            rest = self.ssh_and_peers(&[]),
        );
        self.save_config(name, &text)
    }

    /// A config's `[server]` section: `url`, `user`, the password file, and `ca`
    /// (a `ca_file = ...` line, or empty).
    fn server_section(&self, url: &str, user: &str, ca: &str) -> String {
        format!(
            "[server]\nurl = \"{url}\"\nuser = \"{user}\"\npassword_file = \"{pass}\"\n{ca}\n",
            pass = self.private.join("server.pass").display(),
        )
    }

    /// A config's `[ssh]` section (the test key, the test's known_hosts), then a
    /// `[[peer]]` for each of this test's peers and for each of `extra_peers`.
    fn ssh_and_peers(&self, extra_peers: &[(&str, String)]) -> String {
        let p = &self.private;
        let mut text = format!(
            "[ssh]\nidentity = \"{key}\"\nknown_hosts = \"{kh}\"\n",
            key = p.join("id_ed25519").display(),
            kh = p.join("known_hosts").display(),
        );
        for (i, port) in self.peer_ports.iter().enumerate() {
            text.push_str(&format!(
                "\n[[peer]]\nname = \"p{n}\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\nrelayup = \"{bin}\"\nstaging = \"{stage}\"\n",
                n = i + 1,
                user = PEER_USERS[i],
                bin = self.root.join("pub/relayup").display(),
                stage = self.staging(i).display(),
            ));
        }
        for (name, lines) in extra_peers {
            text.push_str(&format!("\n[[peer]]\nname = \"{name}\"\n{lines}\n"));
        }
        text
    }

    /// Writes `text` as config `name` in the private dir; returns its path.
    fn save_config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.private.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// Peer `i`'s staging dir (created by its relay, 0700).
    pub fn staging(&self, i: usize) -> PathBuf {
        self.root.join("stage").join(format!("p{}", i + 1))
    }

    /// A random file of `size` bytes in the private dir.
    pub fn random_file(&self, name: &str, size: u64) -> PathBuf {
        let path = self.private.join(name);
        let mut f = fs::File::create(&path).unwrap();
        let mut urandom = fs::File::open("/dev/urandom").unwrap();
        let mut left = size;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = buf.len().min(left as usize);
            use std::io::Read;
            urandom.read_exact(&mut buf[..n]).unwrap();
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        path
    }

    /// Runs relayup with `args` (which need not be UTF-8).
    pub fn relayup<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_relayup"))
            .args(args)
            .env_remove("RELAYUP_CONFIG")
            .env("XDG_STATE_HOME", self.root.join("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `relayup send FILE --config CONFIG EXTRA...`, to completion.
    pub fn send(&self, file: &Path, config: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "send",
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.relayup(&args)
    }

    /// Asserts nothing of relayup's is left: no temp dir on the server, no staged file.
    /// The server removes its temp dir in the background after the rename: allow it
    /// a few seconds.
    pub fn assert_clean(&self) {
        let temp_dirs = || -> Vec<std::ffi::OsString> {
            fs::read_dir(&self.srv)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n.to_string_lossy().starts_with(".relayup-"))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !temp_dirs().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = temp_dirs();
        assert!(left.is_empty(), "temp dir left on the server: {left:?}");
        for i in 0..self.peer_ports.len() {
            if let Ok(rd) = fs::read_dir(self.staging(i)) {
                let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
                assert!(
                    left.is_empty(),
                    "staged files left on peer p{}: {left:?}",
                    i + 1
                );
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // The servers' per-connection processes too: a vsftpd session or an sshd
        // session outlives its daemon otherwise.
        for c in &mut self.children {
            let family = descendants(c.id());
            let _ = c.kill();
            let _ = c.wait();
            for pid in family {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        // Whatever else still names this test's directory (a server session whose
        // daemon was gone first, a relay of this test's binary): this test started it.
        for pid in processes_naming(&self.root) {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Processes (other than this one) whose command line contains `path`.
fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

/// Every process whose chain of parents leads to `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

pub fn md5_file(path: &Path) -> String {
    use md5::{Digest, Md5};
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Md5::digest(&data))
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `relayup send --json` running in the background, its events arriving on a channel.
pub struct Running {
    pub child: Child,
    pub events: std::sync::mpsc::Receiver<serde_json::Value>,
    stderr: std::thread::JoinHandle<String>,
}

impl TestEnv {
    pub fn spawn_send<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Running {
        self.spawn_send_with_state(args, &self.root.join("state"))
    }

    /// Like [`TestEnv::spawn_send`], with its own journal and lock directory: as if
    /// started on another machine, or by another account.
    pub fn spawn_send_with_state<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        state: &Path,
    ) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relayup"))
            .arg("send")
            .args(args)
            .arg("--json")
            .env_remove("RELAYUP_CONFIG")
            .env("XDG_STATE_HOME", state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            use std::io::Read;
            stderr_pipe.read_to_string(&mut s).ok();
            s
        });
        Running {
            child,
            events: rx,
            stderr,
        }
    }
}

impl Running {
    /// Waits for `n` `part_done` events (optionally from `host`); panics after 60 s,
    /// or if the send ends first, with the other events it saw.
    pub fn wait_parts(&self, n: usize, host: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        let mut others = Vec::new();
        while seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match self.events.recv_timeout(left) {
                Ok(ev) => ev,
                Err(e) => {
                    let why = match e {
                        std::sync::mpsc::RecvTimeoutError::Timeout => "none came within 60 s",
                        std::sync::mpsc::RecvTimeoutError::Disconnected => "the send ended",
                    };
                    panic!("waiting for {n} part_done events, saw {seen}: {why}; other events: {others:?}")
                }
            };
            if ev["type"] == "part_done" && host.is_none_or(|h| ev["host"] == h) {
                seen += 1;
            } else if ev["type"] != "progress" {
                others.push(ev.to_string());
            }
        }
    }

    /// Waits for the process to end (at most `limit`); returns status, remaining events, stderr.
    pub fn finish(
        mut self,
        limit: Duration,
    ) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("relayup did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.stderr.join().unwrap();
        let events = self.events.try_iter().collect();
        (status, events, stderr)
    }
}

impl TestEnv {
    /// Starts one more peer (the next user of [`PEER_USERS`]) whose sshd holds one host
    /// key of each type in `key_types` (`ed25519`, `rsa`, `ecdsa`), and returns their
    /// public keys as `type base64`, in that order. No known_hosts file learns them:
    /// the test writes what it needs.
    pub fn add_peer_with_host_keys(&mut self, key_types: &[&str]) -> Vec<String> {
        let n = self.peer_ports.len() + 1;
        let (port, public) =
            self.start_sshd(&format!("p{n}"), PEER_USERS[n - 1], false, key_types, "");
        self.peer_ports.push(port);
        public
    }
}

/// One part of the sizes the tests use (`--part-size 1MiB`).
pub const PART: u64 = 1 << 20;

/// `FILE --config CONFIG --part-size 1MiB EXTRA...`: the arguments of a send in 1 MiB
/// parts (for [`TestEnv::spawn_send`]; FILE may be any bytes).
pub fn send_args(file: &Path, config: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = vec![
        file.into(),
        "--config".into(),
        config.into(),
        "--part-size".into(),
        "1MiB".into(),
    ];
    v.extend(extra.iter().map(std::ffi::OsString::from));
    v
}

/// Waits until `f` holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first event of type `kind`; panics if there is none.
pub fn event<'a>(events: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {events:?}"))
}

/// The hosts that carried bytes, from the `done` event of a `--json` send, sorted.
pub fn hosts_of_done(out: &Output) -> Vec<String> {
    let events = json_lines(out);
    let mut names: Vec<String> = event(&events, "done")["hosts"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, h)| h["bytes"].as_u64().unwrap() > 0)
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

impl TestEnv {
    /// relayup's temp dirs in the server's upload directory.
    pub fn temp_dirs(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.srv)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".relayup-")
            })
            .collect()
    }

    /// The files in every peer's staging dir.
    pub fn staged_files(&self) -> Vec<String> {
        (0..self.peer_ports.len())
            .flat_map(|i| fs::read_dir(self.staging(i)).into_iter().flatten())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// With one peer: a `--json` send of 8 parts with `--strategy equal`, paced at
    /// 1 MiB/s, stopped at the moment part 2 is on the server. The peer's pieces (parts
    /// 2, 3) land while this machine is still sending part 1, so the merge, which goes
    /// in order, cannot have read part 2 yet: the test may change it now. Returns the
    /// send and part 2's path on the server.
    pub fn send_until_part_2_is_on_the_server(&self, config: &Path) -> (Running, PathBuf, PathBuf) {
        let file = self.random_file("f", 8 * PART);
        let run = self.spawn_send(&[
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--strategy",
            "equal",
            "--bwlimit",
            "1MiB",
        ]);
        run.wait_part(2);
        let part = self.temp_dirs()[0].join("2.part");
        (run, file, part)
    }

    /// `relayup peers check --config CONFIG --json EXTRA...`.
    pub fn peers_check(&self, config: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "peers",
            "check",
            "--config",
            config.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        self.relayup(&args)
    }
}

impl Running {
    /// Waits for the `part_done` event of part `index`; panics after 60 s.
    pub fn wait_part(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ev = self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no part_done of part {index} within 60 s"));
            if ev["type"] == "part_done" && ev["part"] == index {
                return;
            }
        }
    }
}
