//! The SFTP-only, chrooted server account of the harness, driven with OpenSSH's own
//! clients: files go into its upload directory, a shell command never runs. And the
//! harness's other server switches: its sshd stopped, a vsftpd option set.

use crate::harness::*;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The client options every login here uses: no user config, no agent, the test's
/// known_hosts only, a host key that must match it.
fn common_opts(env: &TestEnv) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        format!(
            "UserKnownHostsFile={}",
            env.private.join("known_hosts").display()
        ),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "IdentityAgent=none".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
    ]
}

/// The options of a login with the test key only.
fn key_opts(env: &TestEnv) -> Vec<String> {
    let mut v = common_opts(env);
    v.extend([
        "-i".into(),
        env.private.join("id_ed25519").display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
    ]);
    v
}

/// `sftp -b -` with the test key, `batch` on its stdin.
fn sftp_batch(env: &TestEnv, port: u16, batch: &str) -> Output {
    let mut child = Command::new("sftp")
        .args(key_opts(env))
        .arg("-P")
        .arg(port.to_string())
        .args(["-b", "-"])
        .arg(format!("{SFTP_ONLY_USER}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `ssh -p port USER@127.0.0.1 'echo hi'` with `opts`, its stdin empty.
fn ssh_echo(opts: &[String], port: u16, envs: &[(&str, &Path)]) -> Output {
    Command::new("ssh")
        .args(opts)
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{SFTP_ONLY_USER}@127.0.0.1"))
        .arg("echo hi")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `ssh_echo`'s output when the login succeeded but ran no command.
fn assert_refused(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert!(
        stdout.contains("allows sftp connections only"),
        "{}",
        text(out)
    );
    assert!(!stdout.lines().any(|l| l == "hi"), "{}", text(out));
}

#[test]
fn sftp_only_account_gives_files_but_no_shell() {
    let mut env = TestEnv::new(0);
    let s = env.add_sftp_only_server();
    assert_eq!(s.dir_in_chroot, "/upload");
    assert_eq!(s.upload, s.chroot.join("upload"));

    // A file put into /upload arrives in the upload directory on this machine.
    let file = env.random_file("payload", 100_000);
    let out = sftp_batch(
        &env,
        s.port,
        &format!("put {} /upload/payload.bin\n", file.display()),
    );
    assert!(out.status.success(), "{}", text(&out));
    let arrived = s.upload.join("payload.bin");
    assert_eq!(md5_file(&arrived), md5_file(&file));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&arrived).unwrap().uid(),
        uid_of(SFTP_ONLY_USER)
    );

    // The account's / is the chroot: it holds only upload/, and is not writable.
    let out = sftp_batch(&env, s.port, "ls -1 /\n");
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("/upload"), "{}", text(&out));
    assert!(!listed.contains("/etc"), "{}", text(&out));
    let out = sftp_batch(&env, s.port, &format!("put {} /escape\n", file.display()));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!s.chroot.join("escape").exists());

    // A command is refused: the login succeeds (with the key, and with the password),
    // but `ForceCommand internal-sftp` in a chroot answers anything other than the
    // sftp subsystem with a notice and status 1 (255 would be a failed login).
    let out = ssh_echo(&key_opts(&env), s.port, &[]);
    assert_refused(&out);

    let askpass = env.private.join("askpass");
    fs::write(&askpass, format!("#!/bin/sh\necho '{SERVER_PASSWORD}'\n")).unwrap();
    fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut opts = common_opts(&env);
    opts.extend(
        [
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
        ]
        .map(String::from),
    );
    let out = ssh_echo(
        &opts,
        s.port,
        &[
            ("SSH_ASKPASS", askpass.as_path()),
            ("SSH_ASKPASS_REQUIRE", Path::new("force")),
        ],
    );
    assert_refused(&out);

    // The config for that account: the upload dir as the account sees it, no [merge].
    let config = env.write_sftp_only_config("sftponly.toml", &s);
    let t = fs::read_to_string(&config).unwrap();
    assert!(
        t.contains(&format!("url = \"sftp://127.0.0.1:{}/upload\"", s.port)),
        "{t}"
    );
    assert!(t.contains(&format!("user = \"{SFTP_ONLY_USER}\"")), "{t}");
    assert!(t.contains("[ssh]"), "{t}");
    assert!(!t.contains("[merge]"), "{t}");

    // Without the server's own sshd, the SFTP-only server still serves.
    let server_port = env.server_ssh_port;
    env.stop_server_sshd();
    assert!(std::net::TcpStream::connect(("127.0.0.1", server_port)).is_err());
    let out = sftp_batch(&env, s.port, "ls /upload\n");
    assert!(out.status.success(), "{}", text(&out));

    let chroot = s.chroot.clone();
    drop(env);
    assert!(!chroot.exists(), "{} left behind", chroot.display());
}

#[test]
fn vsftpd_option_applies_after_restart() {
    let mut env = TestEnv::new(0);
    env.set_vsftpd_option("ftpd_banner=relayup banner test");
    let stream = std::net::TcpStream::connect(("127.0.0.1", env.ftp_port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut greeting).unwrap();
    assert_eq!(greeting.trim_end(), "220 relayup banner test");
}
