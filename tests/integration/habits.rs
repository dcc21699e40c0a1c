//! Fitting people's habits: peer subsets, completions, man page, colour rules.

use crate::harness::{md5_file, text, TestEnv};
use std::process::Command;

const PART: u64 = 1 << 20;

fn hosts_of_done(out: &std::process::Output) -> Vec<String> {
    let done: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "done")
        .expect("a done event");
    let mut names: Vec<String> = done["hosts"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, h)| h["bytes"].as_u64().unwrap() > 0)
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn peers_subset_and_no_peers() {
    let env = TestEnv::new(3);
    let config = env.write_config("c.toml", "ftp", &[]);
    let file = env.random_file("f", 8 * PART);
    let base = [
        "send",
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--json",
        "--part-size",
        "1MiB",
        "--overwrite",
    ];
    let mut args = base.to_vec();
    args.extend(["--peers", "p2,p3", "--bwlimit", "4MiB"]);
    let out = env.relayup(&args);
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
    let out = env.relayup(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(hosts_of_done(&out), ["local"]);
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));

    let mut args = base.to_vec();
    args.extend(["--peers", "p1,nobody"]);
    let out = env.relayup(&args);
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
    let out = env.relayup(&[
        "send",
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--dest",
        "c",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b));
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
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
    let text_cfg = std::fs::read_to_string(&config).unwrap();
    // No [ssh] identity either: the key comes from the ssh config's IdentityFile.
    let text_cfg: String = text_cfg
        .lines()
        .filter(|l| !l.starts_with("identity = "))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
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
        );
    std::fs::write(&config, text_cfg).unwrap();
    let file = env.random_file("f", 6 * PART);
    let out = env.relayup(&[
        "send",
        file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--json",
        "--part-size",
        "1MiB",
        "--peers",
        "alias",
        "--bwlimit",
        "4MiB",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        hosts_of_done(&out).contains(&"alias".to_string()),
        "{}",
        text(&out)
    );
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));
}
