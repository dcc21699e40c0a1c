//! Host keys as OpenSSH sees them: hashed known_hosts entries (Debian's and Ubuntu's
//! default), keys of several types on one host, and the known_hosts keys of the ssh
//! config (UserKnownHostsFile, GlobalKnownHostsFile, HostKeyAlias).

use crate::harness::{edit_file, hosts_of_done, md5_file, text, TestEnv, PART, PEER_USERS};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Hashes every host name in `file` as `ssh-keygen -H` does for Debian's ssh.
fn hash_known_hosts(file: &Path) {
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -H: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hashed = fs::read_to_string(file).unwrap();
    assert!(
        hashed.lines().all(|l| l.starts_with("|1|")),
        "not hashed: {hashed}"
    );
}

/// The harness's known_hosts lines for the server only (`[127.0.0.1]:port type key`).
fn server_lines(env: &TestEnv) -> String {
    let port = format!("[127.0.0.1]:{} ", env.server_ssh_port);
    fs::read_to_string(env.private.join("known_hosts"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&port))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A fresh `type base64` key of `kind` that no sshd here holds.
fn stranger_key(env: &TestEnv, kind: &str) -> String {
    let path = env.private.join(format!("stranger_{kind}"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = fs::read_to_string(path.with_extension("pub")).unwrap();
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Points the config's `[ssh] known_hosts` at `file`.
fn use_known_hosts(config: &Path, env: &TestEnv, file: &Path) {
    let harness = env.private.join("known_hosts");
    edit_file(config, |t| {
        t.replace(
            &format!("known_hosts = \"{}\"", harness.display()),
            &format!("known_hosts = \"{}\"", file.display()),
        )
    });
}

/// A send through the peer named `peer` only, with `--strategy equal` so it carries a
/// share; asserts it is verified on the server and that `peer` carried bytes.
fn assert_sends_through(env: &TestEnv, config: &Path, peer: &str, extra: &[&str]) {
    let file = env.random_file("f", 4 * PART);
    let mut args = vec![
        "--json",
        "--strategy",
        "equal",
        "--peers",
        peer,
        "--overwrite",
    ];
    args.extend_from_slice(extra);
    let out = env.send(&file, config, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        hosts_of_done(&out).contains(&peer.to_string()),
        "{peer} carried no bytes: {}",
        text(&out)
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

/// The error line, asserted to hold no empty `: ` link in its chain.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("relayup: error: "))
        .unwrap_or_else(|| panic!("no error line: {}", text(out)))
        .to_string();
    assert!(
        !line.starts_with("relayup: error: :") && !line.contains(": : "),
        "empty context in: {line}"
    );
    line
}

/// A peer with ed25519 and RSA host keys; known_hosts holds only a hashed RSA entry.
fn two_key_peer_with_hashed_rsa_entry(
    rsa_entry: impl FnOnce(&TestEnv, &str) -> String,
) -> (TestEnv, PathBuf) {
    let mut env = TestEnv::new(0);
    let keys = env.add_peer_with_host_keys(&["ed25519", "rsa"]);
    assert!(keys[1].starts_with("ssh-rsa "));
    let kh = env.private.join("known_hosts_hashed");
    fs::write(
        &kh,
        format!(
            "{}[127.0.0.1]:{} {}\n",
            server_lines(&env),
            env.peer_ports[0],
            rsa_entry(&env, &keys[1])
        ),
    )
    .unwrap();
    hash_known_hosts(&kh);
    let config = env.write_config("c.toml", "ftp", &[]);
    use_known_hosts(&config, &env, &kh);
    (env, config)
}

#[test]
fn hashed_rsa_entry_for_a_peer_that_also_has_ed25519_is_not_a_changed_key() {
    let (env, config) = two_key_peer_with_hashed_rsa_entry(|_, rsa| rsa.to_string());
    assert_sends_through(&env, &config, "p1", &[]);
}

#[test]
fn changed_rsa_key_in_a_hashed_entry_stops_the_send() {
    let (env, config) = two_key_peer_with_hashed_rsa_entry(|env, _| stranger_key(env, "rsa"));
    let file = env.random_file("f", 4 * PART);
    let out = env.send(&file, &config, &["--strategy", "equal"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let line = error_line(&out);
    assert!(
        line.starts_with("relayup: error: p1 (") && line.contains("HOST KEY CHANGED"),
        "{line}"
    );
    assert!(line.contains("ssh-keygen -R"), "{line}");
    assert!(
        !env.srv.join("f").exists(),
        "nothing may reach the destination"
    );
}

/// An ssh config for peer `alias-host` reaching p1, with `extra` lines in its block.
fn alias_config(env: &TestEnv, extra: &str) -> PathBuf {
    let ssh_config = env.private.join("ssh_config");
    fs::write(
        &ssh_config,
        format!(
            "Host alias-host\n  HostName 127.0.0.1\n  Port {}\n  User {}\n{extra}",
            env.peer_ports[0], PEER_USERS[0]
        ),
    )
    .unwrap();
    let alias = format!(
        "host = \"alias-host\"\nrelayup = \"{}\"\nstaging = \"{}\"",
        env.root.join("pub/relayup").display(),
        env.root.join("stage/alias").display()
    );
    let config = env.write_config("c.toml", "ftp", &[("alias", alias)]);
    edit_file(&config, |t| {
        t.replace(
            "[ssh]\n",
            &format!("[ssh]\nconfig = \"{}\"\n", ssh_config.display()),
        )
    });
    config
}

#[test]
fn host_key_alias_names_the_key_in_known_hosts() {
    let env = TestEnv::new(1);
    let config = alias_config(&env, "  HostKeyAlias shared-box\n");
    let kh = env.private.join("known_hosts_alias");
    fs::write(&kh, server_lines(&env)).unwrap();
    use_known_hosts(&config, &env, &kh);

    // Accepted on first use: filed under the alias, not under [127.0.0.1]:port.
    assert_sends_through(&env, &config, "alias", &["--accept-new-host-keys"]);
    let learned = fs::read_to_string(&kh).unwrap();
    assert!(
        learned
            .lines()
            .any(|l| l.starts_with("shared-box ssh-ed25519 ")),
        "{learned}"
    );
    assert!(
        !learned.contains(&format!("]:{}", env.peer_ports[0])),
        "{learned}"
    );

    // Known from then on, hashed or not; the same key under its address alone is not
    // what ssh would look up.
    hash_known_hosts(&kh);
    assert_sends_through(&env, &config, "alias", &[]);

    // A different key under the alias is a changed key.
    fs::write(
        &kh,
        format!(
            "{}shared-box {}\n",
            server_lines(&env),
            stranger_key(&env, "ed25519")
        ),
    )
    .unwrap();
    let file = env.random_file("g", 3 * PART);
    let out = env.send(&file, &config, &["--peers", "alias"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let line = error_line(&out);
    assert!(
        line.contains("HOST KEY CHANGED") && line.contains("'shared-box'"),
        "{line}"
    );
}

#[test]
fn known_hosts_files_named_in_ssh_config_and_the_global_file_are_read() {
    let env = TestEnv::new(1);
    let user_file = env.private.join("user_known_hosts");
    let global_file = env.private.join("global_known_hosts");
    fs::write(&user_file, server_lines(&env)).unwrap();
    let peer = fs::read_to_string(env.private.join("known_hosts"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("[127.0.0.1]:{} ", env.peer_ports[0])))
        .unwrap()
        .to_string();
    fs::write(&global_file, format!("{peer}\n")).unwrap();
    hash_known_hosts(&global_file);
    let ssh_config = env.private.join("ssh_config");
    fs::write(
        &ssh_config,
        format!(
            "Host *\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile {}\n",
            user_file.display(),
            global_file.display()
        ),
    )
    .unwrap();
    let config = env.write_config("c.toml", "ftp", &[]);
    edit_file(&config, |t| {
        t.lines()
            .filter(|l| !l.starts_with("known_hosts = "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace(
                "[ssh]\n",
                &format!("[ssh]\nconfig = \"{}\"\n", ssh_config.display()),
            )
    });
    // The server from UserKnownHostsFile, the peer from GlobalKnownHostsFile.
    assert_sends_through(&env, &config, "p1", &[]);

    // `[ssh] known_hosts` in peers.toml wins over UserKnownHostsFile: an empty one
    // knows no server key (the global file still knows the peer's).
    let empty = env.private.join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    edit_file(&config, |t| {
        t.replace(
            "[ssh]\n",
            &format!("[ssh]\nknown_hosts = \"{}\"\n", empty.display()),
        )
    });
    let file = env.random_file("g", 2 * PART);
    let out = env.send(&file, &config, &["--peers", "p1"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let line = error_line(&out);
    assert!(
        line.contains("host key is not known") && line.contains(&empty.display().to_string()),
        "{line}"
    );
}
