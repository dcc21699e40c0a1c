//! The peer side needs no shell: nothing but the relay is ever run on a peer, so a
//! peer whose login runs only `… relay` (as a Windows peer's `cmd.exe` or PowerShell
//! runs only what it understands) takes a send, `peers check` and `clean`.

use crate::harness::{json_lines, md5_file, send_args, text, TestEnv, PART, PEER_USERS};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A peer whose sshd runs every command through a gate that lets through only a
/// command ending in ` relay` or ` --version` (split into words, no shell syntax)
/// and SFTP, and writes anything else to `gate.log`. Returns the config and the log.
fn gated_peer(env: &mut TestEnv) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = env.root.join("pub/gate.log");
    fs::write(&log, "").unwrap();
    fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).unwrap();
    let gate = env.root.join("pub/gate.sh");
    fs::write(
        &gate,
        format!(
            "#!/bin/sh\n\
             case $SSH_ORIGINAL_COMMAND in\n\
               internal-sftp|sftp) exec /usr/lib/openssh/sftp-server ;;\n\
               *' relay'|*' --version') set -f; exec $SSH_ORIGINAL_COMMAND ;;\n\
             esac\n\
             printf '%s\\n' \"$SSH_ORIGINAL_COMMAND\" >> {log}\n\
             echo 'only the relay runs here' >&2\n\
             exit 126\n",
            log = log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&gate, fs::Permissions::from_mode(0o755)).unwrap();
    let port = env.add_sshd_with(
        "gated",
        PEER_USERS[2],
        &format!("ForceCommand {}\n", gate.display()),
    );
    let peer = format!(
        "host = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\nrelayup = \"{bin}\"\nstaging = \"{stage}\"",
        user = PEER_USERS[2],
        bin = env.root.join("pub/relayup").display(),
        stage = env.root.join("stage/g1").display(),
    );
    (env.write_config("g.toml", "ftp", &[("g1", peer)]), log)
}

#[test]
fn a_peer_that_runs_nothing_but_relayup_takes_a_send_a_check_a_clean_and_a_deploy() {
    let mut env = TestEnv::new(0);
    let (config, log) = gated_peer(&mut env);
    let ran = || fs::read_to_string(&log).unwrap();

    // A send: the peer carries parts.
    let file = env.random_file("f", 5 * PART + 3);
    let send_through_g1 = |config: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["--part-size", "1MiB", "--bwlimit", "2MiB", "--json"];
        args.extend_from_slice(extra);
        let out = env.send(&file, config, &args);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            json_lines(&out)
                .iter()
                .any(|e| e["type"] == "part_done" && e["host"] == "g1"),
            "the gated peer carried parts: {}",
            text(&out)
        );
    };
    send_through_g1(&config, &[]);
    assert_eq!(md5_file(&env.srv.join("f")), md5_file(&file));

    // peers check: the version comes from the relay itself.
    let out = env.peers_check(&config, &["--no-rate"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = json_lines(&out);
    let g1 = rows.iter().find(|r| r["name"] == "g1").unwrap();
    assert!(
        g1["relayup"]
            .as_str()
            .unwrap_or_default()
            .starts_with("relayup "),
        "{g1}"
    );

    // clean: a send killed mid-way, then a part left staged (as by a peer that
    // crashed) goes; another send's stays.
    let big = env.random_file("big", 12 * PART);
    let run = env.spawn_send(&send_args(&big, &config, &["--bwlimit", "1MiB"]));
    run.wait_parts(2, None);
    let mut run = run;
    run.child.kill().unwrap();
    let _ = run.finish(Duration::from_secs(10));
    let status = env.relayup(&["status", "--json", "--offline"]);
    let rows = json_lines(&status);
    let id = rows[0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", text(&status)))
        .to_string();
    let stage = env.root.join("stage/g1");
    let mine = stage.join(format!("{id}-zz-3.part"));
    let theirs = stage.join("0123456789abcdef-zz-3.part");
    fs::write(&mine, b"left").unwrap();
    fs::write(&theirs, b"other").unwrap();
    let out = env.relayup(&["clean", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !mine.exists(),
        "the staged part was not cleaned: {}",
        text(&out)
    );
    assert!(theirs.exists(), "another send's part was removed");

    // peers deploy: the platform over SFTP, the copy over SFTP, the copy's
    // `--version`, the rename over SFTP; then a send uses the installed relay.
    let installed = std::path::PathBuf::from(format!("/home/{}/.local/bin/relayup", PEER_USERS[2]));
    struct Uninstall(std::path::PathBuf);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _guard = Uninstall(installed.clone());
    let _ = fs::remove_file(&installed);
    let bare = env.private.join("bare.toml");
    let lines = fs::read_to_string(&config).unwrap();
    let lines: String = lines
        .lines()
        .filter(|l| !l.starts_with("relayup = "))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&bare, lines).unwrap();
    let out = env.relayup(&[
        "peers",
        "deploy",
        "--config",
        bare.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = json_lines(&out);
    assert_eq!(rows[0]["action"], "installed", "{}", text(&out));
    assert_eq!(rows[0]["os"], "Linux x86_64", "{}", text(&out));
    assert!(installed.exists());
    // The deployed relay carries parts.
    send_through_g1(&bare, &["--overwrite"]);

    assert_eq!(ran(), "", "commands other than the relay ran on the peer");
}
