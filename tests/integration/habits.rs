//! Fitting people's habits: peer subsets, completions, man page, colour rules.

use crate::harness::{
    edit_file, hosts_of_done, json_lines, md5_file, text, uid_of, without_lines, TestEnv, PART,
    PEER_USERS,
};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

#[test]
fn peers_subset_and_no_peers() {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 8 * PART);
    let base = ["--json", "--part-size", "1MiB", "--overwrite"];
    let mut args = base.to_vec();
    args.extend(["--peers", "p2,p3", "--bwlimit", "4MiB"]);
    let out = env.send(&file, &config, &args);
    assert!(out.status.success(), "{}", text(&out));
    let used = hosts_of_done(&out);
    assert!(
        !used.contains(&"p1".to_string()),
        "p1 was not asked: {used:?}"
    );
    assert!(
        used.contains(&"p2".to_string()) || used.contains(&"p3".to_string()),
        "{used:?}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));

    let mut args = base.to_vec();
    args.push("--no-peers");
    let out = env.send(&file, &config, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(hosts_of_done(&out), ["local"]);
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));

    let mut args = base.to_vec();
    args.extend(["--peers", "p1,nobody"]);
    let out = env.send(&file, &config, &args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
}

#[test]
fn environment_overrides_a_config_key() {
    let env = TestEnv::new(0);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 1000);
    let out = Command::new(env!("CARGO_BIN_EXE_relayup"))
        .args([
            "send",
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--no-progress",
        ])
        .env("RELAYUP_MERGE_DIR", "/nonexistent/dir")
        .env("XDG_STATE_HOME", env.root.join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dir"),
        "{}",
        text(&out)
    );
}

#[test]
fn completions_and_man_page() {
    let bin = env!("CARGO_BIN_EXE_relayup");
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains("relayup") && s.contains("strategy") && s.contains("check"),
            "{shell}: {s}"
        );
    }
    let out = Command::new(bin).arg("man").output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && s.contains(".TH relayup") && s.contains("send"),
        "{s}"
    );
    let out = Command::new(bin).args(["send", "--help"]).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("--bwlimit") && s.contains("--peers") && s.contains("--accept-new-host-keys"),
        "{s}"
    );
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
}

#[test]
fn progress_on_a_terminal_has_colour_only_without_no_color_and_piped_output_has_none() {
    let env = TestEnv::new(1);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 4 * PART);
    let run = |no_color: bool, dest: &str| {
        // `script` gives relayup a terminal, as a person at a shell would.
        let cmd = format!(
            "{} send {} --config {} --dest {dest} --part-size 1MiB --bwlimit 4MiB",
            env!("CARGO_BIN_EXE_relayup"),
            file.display(),
            config.display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env("XDG_STATE_HOME", env.root.join("state"))
            .env("TERM", "xterm");
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = run(false, "a");
    assert!(
        coloured.contains("\x1b[1m"),
        "bars are bold on a terminal: {coloured:?}"
    );
    let plain = run(true, "b");
    assert!(!plain.contains("\x1b[1m"), "NO_COLOR: {plain:?}");
    assert!(plain.contains("verified on the server"));
    // Piped: no escape sequences at all, and nothing but JSON on stdout.
    let out = env.send(&file, &config, &["--dest", "c", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b));
    json_lines(&out);
}

#[test]
fn a_peer_can_be_just_an_alias_from_ssh_config() {
    let env = TestEnv::new(1);
    let ssh_config = env.private.join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host peer-one\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n",
            env.peer_ports[0],
            crate::harness::PEER_USERS[0],
            env.private.join("id_ed25519").display()
        ),
    )
    .unwrap();
    let alias = format!(
        "host = \"peer-one\"\nrelayup = \"{}\"\nstaging = \"{}\"",
        env.root.join("pub/relayup").display(),
        env.root.join("stage/alias").display()
    );
    let config = env.write_config("c.toml", "ftp", &[("alias", alias)]);
    // No [ssh] identity either: the key comes from the ssh config's IdentityFile.
    edit_file(&config, |t| {
        without_lines(t, "identity = ")
            .replace(
                "[ssh]\n",
                &format!("[ssh]\nconfig = \"{}\"\n", ssh_config.display()),
            )
            .replace(
                "[merge]\n",
                &format!(
                    "[merge]\nidentity = \"{}\"\n",
                    env.private.join("id_ed25519").display()
                ),
            )
    });
    let file = env.random_file("f", 6 * PART);
    let out = env.send(
        &file,
        &config,
        &[
            "--json",
            "--part-size",
            "1MiB",
            "--peers",
            "alias",
            "--bwlimit",
            "4MiB",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        hosts_of_done(&out).contains(&"alias".to_string()),
        "{}",
        text(&out)
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

#[test]
fn peers_deploy_installs_this_binary_where_relayup_is_missing() {
    let env = TestEnv::new(2);
    let installed: Vec<std::path::PathBuf> = PEER_USERS[..2]
        .iter()
        .map(|u| std::path::PathBuf::from(format!("/home/{u}/.local/bin/relayup")))
        .collect();
    struct Uninstall(Vec<std::path::PathBuf>);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let _guard = Uninstall(installed.clone());
    for p in &installed {
        let _ = std::fs::remove_file(p);
    }
    // Peers configured without `relayup = ...`: on their PATH there is none.
    let config = env.write_config("c.toml", "ftp", &[]);
    edit_file(&config, |t| without_lines(t, "relayup = "));
    let file = env.random_file("f", 8 * PART);
    let send = [
        "--json",
        "--part-size",
        "1MiB",
        "--bwlimit",
        "4MiB",
        "--overwrite",
    ];
    let out = env.send(&file, &config, &send);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("p1 left out") && stderr.contains("relayup peers deploy"),
        "the missing relayup points to deploy: {stderr}"
    );

    let cfg = config.to_str().unwrap();
    let out = env.relayup(&["peers", "deploy", "--config", cfg]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.matches("installed").count(), 2, "{table}");
    let ours = std::fs::read(env!("CARGO_BIN_EXE_relayup")).unwrap();
    for (p, user) in installed.iter().zip(PEER_USERS) {
        let meta = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(meta.uid(), uid_of(user), "owned by the peer's user");
        assert!(std::fs::read(p).unwrap() == ours, "the very same binary");
    }

    let out = env.relayup(&["peers", "deploy", "--config", cfg, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    for v in json_lines(&out) {
        assert_eq!(v["action"], "up to date", "{v}");
        assert_eq!(
            v["before"],
            format!("relayup {}", env!("CARGO_PKG_VERSION")).as_str()
        );
    }
    let out = env.relayup(&[
        "peers", "deploy", "--config", cfg, "--peers", "p2", "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("installed") && !table.contains("p1 "),
        "{table}"
    );
    let out = env.relayup(&["peers", "deploy", "--config", cfg, "--peers", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // Now the same send uses the peers, with the installed relayup.
    let out = env.send(&file, &config, &send);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("left out"));
    let used = hosts_of_done(&out);
    assert!(used.iter().any(|h| h.starts_with('p')), "{used:?}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

#[test]
fn an_encrypted_key_asks_for_its_passphrase_on_a_terminal_only() {
    let env = TestEnv::new(2);
    // A second key, encrypted, that every account (merge, peers) accepts.
    let key = env.private.join("enc_key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "correct horse battery", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut ak = std::fs::OpenOptions::new()
        .append(true)
        .open(env.root.join("pub/authorized_keys"))
        .unwrap();
    std::io::Write::write_all(&mut ak, pubkey.as_bytes()).unwrap();
    let config = env.write_config("c.toml", "ftp", &[]);
    let plain_key = env.private.join("id_ed25519");
    edit_file(&config, |t| {
        let t = t.replace(
            &format!("identity = \"{}\"", plain_key.display()),
            &format!("identity = \"{}\"", key.display()),
        );
        assert!(t.contains("enc_key"));
        t
    });
    let file = env.random_file("f", 4 * PART);
    let cmd = format!(
        "{} send {} --config {} --part-size 1MiB --bwlimit 4MiB --json",
        env!("CARGO_BIN_EXE_relayup"),
        file.display(),
        config.display()
    );

    // No terminal (a cron job, a CI runner): nobody to ask, so a clear hint.
    let mut c = Command::new("sh");
    c.args(["-c", &cmd])
        .env("XDG_STATE_HOME", env.root.join("state"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(std::process::Stdio::null());
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::setsid(); // no controlling terminal
            Ok(())
        });
    }
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is encrypted and there is no terminal") && stderr.contains("ssh-add"),
        "{stderr}"
    );
    assert!(!env.srv.join("f").exists());

    // On a terminal: asked there, a wrong answer asked again, and one right answer
    // serves every login that uses the key.
    let mut c = Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"])
        .env("XDG_STATE_HOME", env.root.join("state"))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"not it\ncorrect horse battery\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(all.matches("Enter passphrase for key").count(), 2, "{all}");
    assert_eq!(all.matches("wrong passphrase").count(), 1, "{all}");
    let done: serde_json::Value = all
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "done")
        .unwrap_or_else(|| panic!("no done event: {all}"));
    let peers_used = done["hosts"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, h)| k.starts_with('p') && h["bytes"].as_u64().unwrap() > 0)
        .count();
    assert!(peers_used > 0, "peers logged in with the key too: {done}");
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

#[test]
fn ssh_agent_every_identity_is_tried() {
    let env = TestEnv::new(2);
    // An agent holding a key no account accepts first, then the test key.
    let sock = env.private.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(start.elapsed().as_secs() < 10, "ssh-agent did not start");
        if let Ok(Some(s)) = agent.try_wait() {
            panic!("ssh-agent exited: {s}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _agent = Kill(agent);
    let decoy = env.private.join("decoy");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "decoy", "-f"])
        .arg(&decoy)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for key in [decoy, env.private.join("id_ed25519")] {
        let out = Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-add: {}", text(&out));
    }
    let out = Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.lines().count() == 2 && listed.lines().next().unwrap().contains("decoy"),
        "the agent offers the decoy first: {listed}"
    );
    // No identity in the config: logins go to the agent.
    let config = env.write_config("c.toml", "ftp", &[]);
    edit_file(&config, |t| without_lines(t, "identity = "));
    let file = env.random_file("f", 4 * PART);
    let send = |agent: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_relayup"));
        c.args(["send", file.to_str().unwrap(), "--config"])
            .arg(&config)
            .args([
                "--json",
                "--part-size",
                "1MiB",
                "--bwlimit",
                "4MiB",
                "--overwrite",
            ])
            .env("XDG_STATE_HOME", env.root.join("state"))
            // No ~/.ssh/id_* of the user running the tests either.
            .env("HOME", env.root.join("nohome"))
            .env_remove("SSH_AUTH_SOCK");
        if agent {
            c.env("SSH_AUTH_SOCK", &sock);
        }
        c.output().unwrap()
    };
    let out = send(false);
    assert_eq!(
        out.status.code(),
        Some(3),
        "without the agent: {}",
        text(&out)
    );
    let out = send(true);
    assert!(out.status.success(), "{}", text(&out));
    let used = hosts_of_done(&out);
    assert!(
        used.iter().any(|h| h.starts_with('p')),
        "peers logged in through the agent's second key: {used:?}"
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}

/// A file of one part goes from this machine at once: a peer could only take that
/// part from it, after its login and relay start.
#[test]
fn a_file_of_one_part_is_sent_without_the_peers() {
    let env = TestEnv::new(2);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("small", PART);
    let out = env.send(&file, &config, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    let start = events.iter().find(|e| e["type"] == "start").unwrap();
    assert_eq!(start["hosts"], serde_json::json!(["local"]), "{start}");
    assert_eq!(hosts_of_done(&out), ["local"]);
    assert_eq!(md5_file(&env.srv.join("small")), md5_file(&file));
    // Two parts: the peers take part again.
    let file = env.random_file("two", 3 * PART);
    let out = env.send(&file, &config, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let events = json_lines(&out);
    let start = events.iter().find(|e| e["type"] == "start").unwrap();
    assert_eq!(start["hosts"].as_array().unwrap().len(), 3, "{start}");
}
